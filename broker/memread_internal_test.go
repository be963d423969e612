package broker

import (
	"testing"
)

// TestRawReadAllocatesNothing: a read of a plain TCP socket, whether it
// finds input at once or waits for it, allocates nothing: the function the
// socket is read with is the inbuf's, made on its first read, and what it
// reads is kept in the inbuf. (A closure made at each read cost three or
// four allocations a read, several a connect.)
func TestRawReadAllocatesNothing(t *testing.T) {
	server, client := tcpPair(t)
	in := newInbuf(server, nil)
	if in.raw == nil {
		t.Skip("reads without a buffer need a unix socket")
	}
	p := make([]byte, readBufSize) // a read this large goes straight into p: no pooled buffer
	msg := []byte{0x42}
	send := make(chan struct{})
	defer close(send)
	go func() {
		for range send {
			client.Write(msg)
		}
	}()
	read := func() {
		send <- struct{}{}
		if n, err := in.Read(p); n != 1 || err != nil || p[0] != 0x42 {
			t.Fatalf("read: got %d bytes (%x), %v; want 1 byte 42", n, p[:max(n, 0)], err)
		}
	}
	read() // makes the inbuf's read function
	if n := testing.AllocsPerRun(200, read); n != 0 {
		t.Errorf("a raw read allocates %v times, want 0", n)
	}
}
