// Package redisretry tells the Redis errors after which a command that
// must not run twice can still be sent again: those that say Redis did
// not run it. Roost sends such commands (a session store's append, a
// fabric's send) on clients that never retry on their own, since
// go-redis also retries after a connection failed once the command was
// written, when Redis may have run it.
package redisretry

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// Attempts is how many times a command Redis did not run is sent in all.
const Attempts = 3

// Unrun reports whether err says Redis did not run the command: a reply
// refusing it before it ran (the server loading its data, a replica or
// a master without its replicas refusing writes, a cluster moving
// slots, too many clients), or no connection to be had from the pool. A
// connection's failure or a timeout is not: the command may have run.
func Unrun(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, goredis.ErrPoolTimeout) {
		return true
	}
	s := err.Error()
	for _, p := range []string{"LOADING ", "READONLY ", "MASTERDOWN ", "CLUSTERDOWN ", "TRYAGAIN ", "NOREPLICAS ", "ERR max number of clients reached"} {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// Wait waits before attempt n+1 (n from 1): 50 ms, then 200 ms; it
// returns ctx's error if ctx ends first.
func Wait(ctx context.Context, n int) error {
	t := time.NewTimer(50 * time.Millisecond << (2 * (n - 1)))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// CheckClosedTLS makes the pool of a client with opts see, over TLS as it
// does over TCP, a connection the server closed (an idle timeout, a
// restart), and dial again instead of failing the next command on it with
// EOF; for a command never sent twice (an append, a send), that failure
// reached its caller. go-redis checks a pooled connection before each use
// by peeking at its socket (a FIN: closed; bytes: something unasked, not
// healthy), but only a connection that is a syscall.Conn, which *tls.Conn
// is not. The connections the dialer set here makes expose the TCP socket
// beneath for that peek alone, once they have been read from (before, the
// server's TLS 1.3 session tickets wait there unread: a connection the
// pool opened ahead would look unhealthy); reads and writes go through
// TLS. A TLS record waiting on a used idle connection (an alert before
// the close) makes it unhealthy, and it is dialled again. The client
// speaks RESP2: under RESP3 the pool reads such a record through TLS,
// with no deadline, to see whether it is a push. The dialer keeps
// go-redis's own: the handshake within DialTimeout (5 s if unset) and
// the context, TCP keep-alives. Without TLS, or with a dialer of the
// caller's, opts is left as it is. Call it before the client is made.
//
// The fix upstream: the pool's check unwrapping tls.Conn (NetConn), and
// not reading a waiting record through TLS without a deadline.
func CheckClosedTLS(opts *goredis.Options) {
	if opts.TLSConfig == nil || opts.Dialer != nil {
		return
	}
	timeout := opts.DialTimeout
	if timeout == 0 {
		timeout = 5 * time.Second // go-redis's default, which it sets on its own copy of opts
	}
	d := &tls.Dialer{
		NetDialer: &net.Dialer{Timeout: max(timeout, 0), KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 5 * time.Second, Count: 3}},
		Config:    opts.TLSConfig,
	}
	opts.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if tc, ok := c.(*tls.Conn); ok {
			if raw, ok := tc.NetConn().(syscall.Conn); ok {
				return &peekableTLS{Conn: tc, raw: raw}, nil
			}
		}
		return c, nil
	}
	opts.Protocol = 2
}

// peekableTLS is a TLS connection whose socket the pool's health check
// can peek at (syscall.Conn) once it has been read from.
type peekableTLS struct {
	*tls.Conn
	raw  syscall.Conn
	read atomic.Bool
}

func (c *peekableTLS) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.read.Store(true)
	}
	return n, err
}

func (c *peekableTLS) SyscallConn() (syscall.RawConn, error) {
	rc, err := c.raw.SyscallConn()
	if err != nil || c.read.Load() {
		return rc, err
	}
	return unread{rc}, nil
}

// unread is the socket of a connection never read from: what waits there
// is the handshake's tail, so a peek sees nothing.
type unread struct{ syscall.RawConn }

func (unread) Read(func(fd uintptr) bool) error { return nil }
