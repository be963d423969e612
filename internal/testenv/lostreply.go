package testenv

import (
	"context"
	"io"
	"net"
	"sync/atomic"
	"time"
)

// LosingReplyDialer dials connections that lose one reply: the first
// request written on any of them that request matches is sent, and the
// connection then waits until ran reports the server has run it (up to
// 5 s) and breaks before the reply is read, as a network failure would
// after the server ran a command. For testing a client's retries.
func LosingReplyDialer(request func([]byte) bool, ran func() bool) func(ctx context.Context, network, addr string) (net.Conn, error) {
	lost := &atomic.Bool{}
	var d net.Dialer
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &losingConn{Conn: c, lost: lost, request: request, ran: ran}, nil
	}
}

type losingConn struct {
	net.Conn
	lost    *atomic.Bool // the one reply is lost already
	armed   atomic.Bool  // this connection's next read is that reply
	request func([]byte) bool
	ran     func() bool
}

func (c *losingConn) Write(p []byte) (int, error) {
	if !c.lost.Load() && c.request(p) && c.lost.CompareAndSwap(false, true) {
		c.armed.Store(true)
	}
	return c.Conn.Write(p)
}

func (c *losingConn) Read(p []byte) (int, error) {
	if c.armed.CompareAndSwap(true, false) {
		for deadline := time.Now().Add(5 * time.Second); !c.ran() && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		c.Conn.Close()
		return 0, io.ErrUnexpectedEOF
	}
	return c.Conn.Read(p)
}
