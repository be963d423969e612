package transport

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ProxyListener expects every connection to start with a PROXY protocol
// header (version 1 or 2, as HAProxy and cloud load balancers send it), and
// reports the client address it names as the connection's RemoteAddr, so
// that rate limits, presence and logs see the device, not the balancer. The
// header is read on the connection's first Read or RemoteAddr, within
// timeout; a connection without a valid one fails its first Read. Only a
// listener that can be reached through the balancer alone should accept
// the header: anyone else could claim any address.
func ProxyListener(ln net.Listener, timeout time.Duration) net.Listener {
	return &proxyListener{Listener: ln, timeout: timeout}
}

type proxyListener struct {
	net.Listener
	timeout time.Duration
	key     []byte // the nodes' key: a forwarded connection's header (see ForwardListener)
}

func (l *proxyListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &proxyConn{Conn: c, timeout: l.timeout, key: l.key}, nil
}

// ErrProxyHeader is the error of a connection whose PROXY header is
// missing or malformed.
var ErrProxyHeader = errors.New("PROXY protocol header missing or malformed")

type proxyConn struct {
	net.Conn
	timeout time.Duration
	key     []byte    // set for a forwarded connection
	fwd     Forwarded // what its header said

	once   sync.Once
	read   atomic.Bool // the header is read (or failed)
	r      *bufio.Reader
	remote net.Addr
	err    error

	mu       sync.Mutex
	deadline time.Time // the read deadline the connection's user set
}

func (c *proxyConn) header() {
	c.once.Do(func() {
		c.mu.Lock()
		user := c.deadline
		c.mu.Unlock()
		d := time.Now().Add(c.timeout)
		if !user.IsZero() && user.Before(d) {
			d = user
		}
		c.Conn.SetReadDeadline(d)
		c.r = bufio.NewReaderSize(c.Conn, 256)
		if c.key != nil {
			c.fwd, c.err = readForwardHeader(c.r, c.key, time.Now())
			if c.err != nil {
				c.fwd = Forwarded{} // nothing in it is to be believed
			}
			c.remote = cmp.Or[net.Addr](c.fwd.Remote, c.Conn.RemoteAddr())
		} else {
			c.remote, c.err = readProxyHeader(c.r, c.Conn.RemoteAddr())
		}
		c.mu.Lock()
		c.Conn.SetReadDeadline(c.deadline)
		c.mu.Unlock()
		c.read.Store(true)
	})
}

// HeaderPending reports whether c (or a connection it wraps) still has to
// read a PROXY or forwarding header: until then its RemoteAddr waits for
// the header, and the address its listener saw is the balancer's or the
// forwarding node's, not the device's.
func HeaderPending(c net.Conn) bool {
	for c != nil {
		if pc, ok := c.(*proxyConn); ok {
			return !pc.read.Load()
		}
		c = Unwrap(c)
	}
	return false
}

func (c *proxyConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline = t
	return c.Conn.SetReadDeadline(t)
}

func (c *proxyConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline = t
	return c.Conn.SetDeadline(t)
}

func (c *proxyConn) Read(p []byte) (int, error) {
	c.header()
	if c.err != nil {
		return 0, c.err
	}
	if c.r != nil && c.r.Buffered() > 0 {
		return c.r.Read(p)
	}
	return c.Conn.Read(p)
}

func (c *proxyConn) RemoteAddr() net.Addr {
	c.header()
	return c.remote
}

var proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")

// readProxyHeader reads a PROXY header and returns the client address it
// names; LOCAL (v2) and UNKNOWN (v1) headers, sent by the balancer's own
// health checks, leave the connection's own address.
func readProxyHeader(r *bufio.Reader, own net.Addr) (net.Addr, error) {
	start, err := r.Peek(12)
	if err != nil {
		return own, fmt.Errorf("%w: %v", ErrProxyHeader, err)
	}
	switch {
	case bytes.Equal(start, proxyV2Sig):
		return readProxyV2(r, own)
	case bytes.HasPrefix(start, []byte("PROXY ")):
		return readProxyV1(r, own)
	}
	return own, ErrProxyHeader
}

func readProxyV1(r *bufio.Reader, own net.Addr) (net.Addr, error) {
	// At most 107 bytes with its CRLF.
	var line []byte
	for len(line) < 107 {
		b, err := r.ReadByte()
		if err != nil {
			return own, fmt.Errorf("%w: %v", ErrProxyHeader, err)
		}
		line = append(line, b)
		if bytes.HasSuffix(line, []byte("\r\n")) {
			break
		}
	}
	if !bytes.HasSuffix(line, []byte("\r\n")) {
		return own, ErrProxyHeader
	}
	f := strings.Split(string(line[:len(line)-2]), " ")
	if len(f) == 2 && f[1] == "UNKNOWN" {
		return own, nil
	}
	if len(f) != 6 || (f[1] != "TCP4" && f[1] != "TCP6") {
		return own, ErrProxyHeader
	}
	ip := net.ParseIP(f[2])
	port, err := strconv.ParseUint(f[4], 10, 16)
	if ip == nil || err != nil || (f[1] == "TCP4") != (ip.To4() != nil) || net.ParseIP(f[3]) == nil {
		return own, ErrProxyHeader
	}
	if _, err := strconv.ParseUint(f[5], 10, 16); err != nil {
		return own, ErrProxyHeader
	}
	return &net.TCPAddr{IP: ip, Port: int(port)}, nil
}

func readProxyV2(r *bufio.Reader, own net.Addr) (net.Addr, error) {
	var h [16]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return own, fmt.Errorf("%w: %v", ErrProxyHeader, err)
	}
	if h[12]>>4 != 2 {
		return own, ErrProxyHeader
	}
	n := int(binary.BigEndian.Uint16(h[14:]))
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return own, fmt.Errorf("%w: %v", ErrProxyHeader, err)
	}
	switch h[12] & 0xF {
	case 0: // LOCAL
		return own, nil
	case 1: // PROXY
	default:
		return own, ErrProxyHeader
	}
	switch h[13] {
	case 0x11: // TCP over IPv4
		if n < 12 {
			return own, ErrProxyHeader
		}
		return &net.TCPAddr{IP: net.IP(body[0:4]), Port: int(binary.BigEndian.Uint16(body[8:]))}, nil
	case 0x21: // TCP over IPv6
		if n < 36 {
			return own, ErrProxyHeader
		}
		return &net.TCPAddr{IP: net.IP(body[0:16]), Port: int(binary.BigEndian.Uint16(body[32:]))}, nil
	case 0x00: // UNSPEC
		return own, nil
	}
	return own, ErrProxyHeader
}
