package broker

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/roosthub/roost/transport"
)

// A connection the server ends is closed with a linger: what was written
// last (a DISCONNECT and its reason code) is followed by the end of the
// write side (a WebSocket close frame, a TLS close_notify, a TCP FIN), and
// what the client still sends is read and dropped for a short while before
// the socket is closed.
//
// Closing a TCP socket that has unread input makes the kernel answer with
// a reset (RST) instead of a FIN, and so does any segment arriving after
// the close. A client still sending when the server decides to disconnect
// it (a burst of publishes, its reader on another thread) gets the reset
// right behind the DISCONNECT: its next write fails, and a client library
// that treats a failed write as the end of the connection (paho.golang
// does) closes it before its reader has read the DISCONNECT; some stacks
// (Windows) also drop whatever the application has not read yet when the
// reset arrives. The client then sees "connection reset" instead of the
// reason code. After the half-close, the client reads the DISCONNECT and
// then EOF, and its writes go on succeeding until the socket is closed.
//
// mochi v2.7.9 closes the connection itself, right after writing the
// DISCONNECT (Server.DisconnectClient → Client.Stop → net.Conn.Close),
// from whichever goroutine found the reason. The fix upstream would be a
// lingering close in Client.Stop for a connection that has a CloseWrite
// method (half-close, then drain with a deadline off the caller's
// goroutine). Here the deviceConn's Close only ends it for mochi (see
// deviceConn.Close), and the connection's own goroutine closes the socket
// with closeServed once mochi is done with it.
//
// The linger cannot be made to pin resources: it is bounded in time
// (lingerTime) and in what is read (lingerBytes; past it the client is
// held back by TCP flow control instead of being read), it uses the
// goroutine that served the connection rather than a new one, and at most
// maxLingering connections linger at once; past that a connection is
// closed at once, as before.
const (
	lingerTime   = time.Second
	lingerBytes  = 256 << 10
	maxLingering = 1024
)

// closeServed closes a connection its tenant's broker is done with,
// lingering if the server ended it while the client's side was open. An
// MQTT 5 client the server ended the connection for, and told nothing,
// is sent a DISCONNECT with the reason first (see deviceConn.farewell).
func (in *ingress) closeServed(dc *deviceConn) {
	dc.Close()
	if dc.peerDone.Load() {
		dc.Conn.Close()
		return
	}
	// What is still batched goes first: the connection was closed from
	// elsewhere while its reader was in a burst.
	last := append(dc.unsent(), dc.farewell()...)
	if len(last) == 0 {
		last = nil
	}
	select {
	case in.lingering <- struct{}{}:
	default:
		if last == nil {
			dc.Conn.Close()
		} else {
			lingerClose(dc.Conn, last, time.Now().Add(lingerTime/10), 0)
		}
		return
	}
	defer func() { <-in.lingering }()
	lingerClose(dc.Conn, last, time.Now().Add(lingerTime), lingerBytes)
}

// lingerClose writes last, ends c's write side, reads and drops what
// arrives until the client closes its side, deadline, or limit bytes, and
// then closes c; it returns the number of bytes dropped. Past limit it
// stops reading and waits for the deadline: the client may go on writing
// until its window is full, and still has until then to read what was
// sent to it. A limit of 0 closes c once its write side is ended.
func lingerClose(c net.Conn, last []byte, deadline time.Time, limit int) (dropped int) {
	defer c.Close()
	raw := physical(c)
	// The deadline bounds everything below, also the close_notify that
	// crypto/tls sends with a deadline of its own (5s): then the socket
	// is closed, whatever is blocked on it.
	cut := time.AfterFunc(time.Until(deadline), func() { raw.Close() })
	defer cut.Stop()
	// Close left deadlines in the past, to wake mochi's reader and writer;
	// a WebSocket keeps its own.
	c.SetDeadline(deadline)
	raw.SetDeadline(deadline)
	if len(last) > 0 {
		c.Write(last)
	}
	closeWrite(c)
	if limit == 0 {
		return 0
	}

	buf := drainBuffers.Get().(*[drainBufferSize]byte)
	defer drainBuffers.Put(buf)
	for dropped < limit {
		n, err := raw.Read(buf[:min(len(buf), limit-dropped)])
		dropped += n
		if err != nil {
			return dropped
		}
	}
	time.Sleep(time.Until(deadline))
	return dropped
}

// closeWrite ends the write side of each layer of c, from the top: a
// WebSocket's close frame, TLS's close_notify, then TCP's FIN.
func closeWrite(c net.Conn) {
	for ; c != nil; c = transport.Unwrap(c) {
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	}
}

// peerEnded reports whether a read error means the client ended its side
// of the connection or went silent past its keep-alive.
func peerEnded(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, os.ErrDeadlineExceeded)
}

const drainBufferSize = 16 << 10

var drainBuffers = sync.Pool{New: func() any { return new([drainBufferSize]byte) }}
