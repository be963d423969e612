package broker

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/roosthub/roost/transport"
)

// tcpPair is a connected pair of loopback TCP connections.
func tcpPair(t *testing.T) (server, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

// flood writes to c until a write fails, and then says how.
func flood(c net.Conn) <-chan error {
	done := make(chan error, 1)
	go func() {
		b := make([]byte, 4096)
		for {
			if _, err := c.Write(b); err != nil {
				done <- err
				return
			}
		}
	}()
	return done
}

// TestLingerCloseIsBounded: a client that keeps writing and never closes
// holds a lingering close no longer than its deadline, and has no more
// than the limit read from it; it gets the server's last bytes and then
// EOF, and its writes fail only once the linger is over.
func TestLingerCloseIsBounded(t *testing.T) {
	server, client := tcpPair(t)
	writing := flood(client)
	start := time.Now()
	dropped := lingerClose(server, []byte("last words"), start.Add(300*time.Millisecond), 64<<10)
	if took := time.Since(start); took < 250*time.Millisecond || took > time.Second {
		t.Errorf("linger took %v, want the deadline's 300ms", took)
	}
	if dropped != 64<<10 {
		t.Errorf("dropped %d bytes, want the limit, %d", dropped, 64<<10)
	}
	got, err := io.ReadAll(bufio.NewReader(io.LimitReader(client, 100)))
	if string(got) != "last words" {
		t.Errorf("client read %q (%v), want the last words and EOF", got, err)
	}
	select {
	case <-writing:
	case <-time.After(5 * time.Second):
		t.Fatal("the client's writes still succeed after the close")
	}
}

// TestLingerCloseEndsWithTheClient: a client that closes its side ends the
// linger at once.
func TestLingerCloseEndsWithTheClient(t *testing.T) {
	server, client := tcpPair(t)
	client.Write(make([]byte, 1000))
	go func() {
		io.ReadAll(client) // the server's FIN
		client.Close()
	}()
	start := time.Now()
	dropped := lingerClose(server, nil, start.Add(5*time.Second), 1<<20)
	if took := time.Since(start); took > time.Second {
		t.Errorf("linger took %v after the client closed, want it to end at once", took)
	}
	if dropped != 1000 {
		t.Errorf("dropped %d bytes, want the client's 1000", dropped)
	}
}

// TestLingerCloseTLSIsBounded: over TLS to a client that reads nothing, the
// close_notify cannot be written; crypto/tls would wait 5s for it, the
// linger no longer than its deadline.
func TestLingerCloseTLSIsBounded(t *testing.T) {
	files, err := transport.DevCertificates(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := transport.LoadCertificate(files.Cert, files.Key, nil)
	if err != nil {
		t.Fatal(err)
	}
	rawServer, rawClient := net.Pipe() // unbuffered: a client that stops reading blocks every write
	server := tls.Server(rawServer, transport.ServerConfig(cert))
	client := tls.Client(rawClient, &tls.Config{InsecureSkipVerify: true})
	defer client.Close()
	go client.Handshake()
	if err := server.Handshake(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	lingerClose(server, []byte("last words"), start.Add(200*time.Millisecond), 1<<20)
	if took := time.Since(start); took > time.Second {
		t.Errorf("linger over TLS to a client that reads nothing took %v, want the deadline's 200ms", took)
	}
}

// TestCloseServedBounds: a connection whose client ended first is closed
// at once; so is one past maxLingering lingering connections.
func TestCloseServedBounds(t *testing.T) {
	for _, tc := range []struct {
		name     string
		peerDone bool
		full     bool
	}{
		{name: "client ended first", peerDone: true},
		{name: "too many lingering", full: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := &ingress{lingering: make(chan struct{}, 1)}
			if tc.full {
				in.lingering <- struct{}{}
			}
			server, client := tcpPair(t)
			flood(client)
			dc := newDeviceConn(server, bufio.NewReader(server), nil, identity{}, nil, 0)
			dc.peerDone.Store(tc.peerDone)
			start := time.Now()
			in.closeServed(dc)
			if took := time.Since(start); took > 100*time.Millisecond {
				t.Errorf("closeServed took %v, want an immediate close", took)
			}
			if _, err := server.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
				t.Errorf("read after closeServed: %v, want the connection closed", err)
			}
		})
	}
}

// TestDeviceConnClose: Close wakes a reader blocked on the connection and
// fails later reads, writes and deadline moves, without closing the
// socket.
func TestDeviceConnClose(t *testing.T) {
	server, client := tcpPair(t)
	dc := newDeviceConn(server, bufio.NewReader(server), nil, identity{}, nil, 0)
	read := make(chan error, 1)
	go func() {
		_, err := dc.Read(make([]byte, 10))
		read <- err
	}()
	time.Sleep(50 * time.Millisecond)
	dc.Close()
	select {
	case err := <-read:
		if err == nil {
			t.Error("blocked read returned no error after Close")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not wake the blocked reader")
	}
	dc.SetDeadline(time.Now().Add(time.Hour))
	client.Write([]byte("more"))
	if _, err := dc.Read(make([]byte, 10)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read after Close: %v, want net.ErrClosed", err)
	}
	if _, err := dc.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after Close: %v, want net.ErrClosed", err)
	}
	if dc.peerDone.Load() {
		t.Error("the wake-up after Close counted as the client's end")
	}
	// The socket is still open: the linger reads what the client sent.
	server.SetReadDeadline(time.Now().Add(time.Second))
	if n, err := server.Read(make([]byte, 10)); n != 4 || err != nil {
		t.Errorf("raw read after Close: %d bytes, %v; want the client's 4", n, err)
	}
}
