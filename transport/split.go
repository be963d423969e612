package transport

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"sync"
	"time"
)

// Split shares one TLS listener between MQTT and HTTP (MQTT over
// WebSocket), as on a single port 443: a connection that negotiated ALPN
// "mqtt", or whose first byte opens an MQTT CONNECT, is MQTT; anything else
// is HTTP. The handshake and the first byte are awaited, within timeout,
// in a goroutine of the connection's own, so a slow client holds up no
// other. Closing either listener closes ln and both.
func Split(ln net.Listener, timeout time.Duration) (mqtt, web net.Listener) {
	s := &splitter{ln: ln, timeout: timeout, done: make(chan struct{})}
	s.mqtt = &half{s: s, conns: make(chan net.Conn)}
	s.web = &half{s: s, conns: make(chan net.Conn)}
	go s.accept()
	return s.mqtt, s.web
}

type splitter struct {
	ln        net.Listener
	timeout   time.Duration
	mqtt, web *half
	done      chan struct{}
	once      sync.Once
	err       error
}

func (s *splitter) close() error {
	s.once.Do(func() {
		close(s.done)
		s.err = s.ln.Close()
	})
	return s.err
}

// accept hands each connection to route until ln is closed. An error to
// wait out (out of descriptors: see AcceptRetryable) is waited out, up to
// a second at a time; any other ends it, and closes both halves.
func (s *splitter) accept() {
	defer s.close()
	var backoff time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if !AcceptRetryable(err) {
				return
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			select {
			case <-time.After(backoff):
			case <-s.done:
				return
			}
			continue
		}
		backoff = 0
		go s.route(c)
	}
}

func (s *splitter) route(c net.Conn) {
	c.SetDeadline(time.Now().Add(s.timeout))
	if tc, ok := c.(*tls.Conn); ok {
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			c.Close()
			return
		}
		if tc.ConnectionState().NegotiatedProtocol == ALPN {
			c.SetDeadline(time.Time{})
			s.mqtt.deliver(c)
			return
		}
	}
	r := bufio.NewReaderSize(c, 512)
	first, err := r.Peek(1)
	if err != nil {
		c.Close()
		return
	}
	c.SetDeadline(time.Time{})
	pc := &peekedConn{Conn: c, r: r}
	if first[0] == 0x10 { // CONNECT
		s.mqtt.deliver(pc)
	} else {
		s.web.deliver(pc)
	}
}

// half is one side of a split listener.
type half struct {
	s     *splitter
	conns chan net.Conn
}

func (h *half) deliver(c net.Conn) {
	select {
	case h.conns <- c:
	case <-h.s.done:
		c.Close()
	}
}

func (h *half) Accept() (net.Conn, error) {
	select {
	case c := <-h.conns:
		return c, nil
	case <-h.s.done:
		return nil, net.ErrClosed
	}
}

func (h *half) Close() error   { return h.s.close() }
func (h *half) Addr() net.Addr { return h.s.ln.Addr() }

// peekedConn reads first what was read to tell the protocol apart.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) {
	if c.r == nil {
		return c.Conn.Read(p)
	}
	if c.r.Buffered() == 0 {
		c.r = nil
		return c.Conn.Read(p)
	}
	return c.r.Read(p)
}
