package broker

import (
	"bufio"
	"bytes"
	"io"
	"testing"
	"time"
)

func TestFrameBuffered(t *testing.T) {
	big := append([]byte{0x30, 0x80, 0x01}, make([]byte, 128)...) // remaining length 128: two length bytes
	for _, tc := range []struct {
		name string
		in   []byte
		want bool
	}{
		{name: "nothing", in: nil, want: false},
		{name: "first byte only", in: []byte{0xC0}, want: false},
		{name: "PINGREQ", in: []byte{0xC0, 0}, want: true},
		{name: "PUBACK whole", in: []byte{0x40, 2, 0, 1}, want: true},
		{name: "PUBACK less its last byte", in: []byte{0x40, 2, 0}, want: false},
		{name: "two-byte length, whole", in: big, want: true},
		{name: "two-byte length, one byte short", in: big[:len(big)-1], want: false},
		{name: "length cut after its first byte", in: big[:2], want: false},
		{name: "length of five bytes", in: []byte{0x30, 0x80, 0x80, 0x80, 0x80, 0x01}, want: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := frameBuffered(tc.in); got != tc.want {
				t.Errorf("frameBuffered(% x) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
}

// TestBatchUnsentGoesOutInTheLinger: what is batched when the connection
// is closed from elsewhere, mid-burst, reaches the client in the lingering
// close, before the end of the stream.
func TestBatchUnsentGoesOutInTheLinger(t *testing.T) {
	server, client := tcpPair(t)
	dc := newDeviceConn(server, bufio.NewReader(server), nil, identity{version: 4}, nil, time.Second)
	dc.acked.Store(true)
	dc.batch.burst.Store(true) // the reader is in a burst
	// A batch already begun, dated ahead so that no pause of the test
	// (a loaded machine, the race detector) makes it batchHold old and
	// sends it at once.
	dc.batch.out = batchBuffers.Get().(*[]byte)
	dc.batch.since = time.Now().Add(time.Hour)
	dc.batch.held.Store(true)
	puback := []byte{0x40, 2, 0, 1}
	if n, err := dc.Write(puback); n != len(puback) || err != nil {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(puback))
	}
	if n := dc.batch.writes.Load(); n != 0 {
		t.Fatalf("%d socket writes during the burst, want 0", n)
	}
	dc.Close()
	in := &ingress{lingering: make(chan struct{}, 1)}
	closed := make(chan struct{})
	go func() { in.closeServed(dc); close(closed) }()
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(client)
	if err != nil || !bytes.Equal(got, puback) {
		t.Errorf("client read % x (%v), want % x and the end of the stream", got, err, puback)
	}
	client.Close()
	<-closed
}
