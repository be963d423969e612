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
// after the server ran a command. For testing a client's retries. lost
// reports whether the reply was lost once ran had reported the request
// run.
func LosingReplyDialer(request func([]byte) bool, ran func() bool) (dial func(ctx context.Context, network, addr string) (net.Conn, error), lost func() bool) {
	state := &lostState{}
	var d net.Dialer
	dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &losingConn{Conn: c, state: state, request: request, ran: ran}, nil
	}
	return dial, state.afterRun.Load
}

type lostState struct {
	lost     atomic.Bool // the one reply is lost already, or about to be
	afterRun atomic.Bool // it was lost once the request had run
}

type losingConn struct {
	net.Conn
	state   *lostState
	armed   atomic.Bool // this connection's next read is that reply
	request func([]byte) bool
	ran     func() bool
}

func (c *losingConn) Write(p []byte) (int, error) {
	if !c.state.lost.Load() && c.request(p) && c.state.lost.CompareAndSwap(false, true) {
		c.armed.Store(true)
	}
	return c.Conn.Write(p)
}

func (c *losingConn) Read(p []byte) (int, error) {
	if c.armed.CompareAndSwap(true, false) {
		ran := c.ran()
		for deadline := time.Now().Add(5 * time.Second); !ran && time.Now().Before(deadline); ran = c.ran() {
			time.Sleep(time.Millisecond)
		}
		c.state.afterRun.Store(ran)
		c.Conn.Close()
		return 0, io.ErrUnexpectedEOF
	}
	return c.Conn.Read(p)
}
