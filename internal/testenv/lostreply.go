package testenv

import (
	"context"
	"io"
	"net"
	"sync"
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

// RefusingDialer dials connections that refuse one request as a server
// that did not run it would: the first request written on any of them
// that request matches is not sent, and reply (a raw reply, such as a
// RESP error "-READONLY ...\r\n") is read in its stead. refused reports
// whether that happened.
func RefusingDialer(request func([]byte) bool, reply string) (dial func(ctx context.Context, network, addr string) (net.Conn, error), refused func() bool) {
	var done atomic.Bool
	var d net.Dialer
	dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &refusingConn{Conn: c, done: &done, request: request, reply: reply}, nil
	}
	return dial, done.Load
}

type refusingConn struct {
	net.Conn
	done    *atomic.Bool
	request func([]byte) bool
	reply   string
	mu      sync.Mutex
	pending []byte // the reply still to be read
}

func (c *refusingConn) Write(p []byte) (int, error) {
	if !c.done.Load() && c.request(p) && c.done.CompareAndSwap(false, true) {
		c.mu.Lock()
		c.pending = []byte(c.reply)
		c.mu.Unlock()
		return len(p), nil
	}
	return c.Conn.Write(p)
}

func (c *refusingConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		c.mu.Unlock()
		return n, nil
	}
	c.mu.Unlock()
	return c.Conn.Read(p)
}
