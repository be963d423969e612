package broker

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"
)

// TestSpliceDropsDeviceNotReading: a forwarded device that stops reading
// while staying connected (and silent) does not hold the forwarding node's
// splice once its home gave up writing to it: each write to the device is
// bounded, and the splice ends, its connections closed.
func TestSpliceDropsDeviceNotReading(t *testing.T) {
	conn, device := tcpPair(t) // the device's connection at the forwarding node, and the device
	home, up := tcpPair(t)     // the home's end, and the forwarding node's connection to it
	f := &forwarder{writeTimeout: 500 * time.Millisecond, forwards: map[net.Conn]struct{}{}}
	conn.SetDeadline(time.Now().Add(time.Second)) // the handshake's, as the ingress leaves it
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		f.splice(conn, bufio.NewReader(conn), up, func() {})
	}()
	// The home writes until a write of its own times out, then gives up
	// on the device, as it does for a client that does not read.
	go func() {
		chunk := make([]byte, 64<<10)
		for {
			home.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
			if _, err := home.Write(chunk); err != nil {
				home.Close()
				return
			}
		}
	}()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the splice of a device that stopped reading still runs 10s on, after its home gave up")
	}
	if n := f.count(); n != 0 {
		t.Errorf("the forwarder tracks %d connections, want 0", n)
	}
	device.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, device); err != nil {
		t.Errorf("the device's connection: %v, want it closed by the forwarding node", err)
	}
}
