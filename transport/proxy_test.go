package transport

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

func proxyV2(cmd, fam byte, addrs []byte) string {
	h := append([]byte{}, proxyV2Sig...)
	h = append(h, 0x20|cmd, fam, 0, 0)
	binary.BigEndian.PutUint16(h[14:], uint16(len(addrs)))
	return string(append(h, addrs...))
}

func TestProxyHeaders(t *testing.T) {
	v4 := []byte{203, 0, 113, 7, 10, 0, 0, 1, 0x9c, 0x40, 0x07, 0x5b}
	v6 := make([]byte, 36)
	copy(v6, net.ParseIP("2001:db8::7"))
	binary.BigEndian.PutUint16(v6[32:], 40000)
	for _, tc := range []struct {
		name, header, remote string // remote "" means the connection's own
		bad                  bool
	}{
		{"v1 tcp4", "PROXY TCP4 203.0.113.7 10.0.0.1 40000 1883\r\n", "203.0.113.7:40000", false},
		{"v1 tcp6", "PROXY TCP6 2001:db8::7 2001:db8::1 40000 1883\r\n", "[2001:db8::7]:40000", false},
		{"v1 unknown", "PROXY UNKNOWN\r\n", "", false},
		{"v2 tcp4", proxyV2(1, 0x11, v4), "203.0.113.7:40000", false},
		{"v2 tcp6", proxyV2(1, 0x21, v6), "[2001:db8::7]:40000", false},
		{"v2 local", proxyV2(0, 0x00, nil), "", false},
		{"v2 with TLVs", proxyV2(1, 0x11, append(v4, 0x04, 0, 1, 'x')), "203.0.113.7:40000", false},
		{"none", "\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c", "", true},
		{"v1 tcp4 with an IPv6 source", "PROXY TCP4 2001:db8::7 10.0.0.1 40000 1883\r\n", "", true},
		{"v1 bad port", "PROXY TCP4 203.0.113.7 10.0.0.1 99999 1883\r\n", "", true},
		{"v1 too long", "PROXY TCP4 " + string(make([]byte, 120)) + "\r\n", "", true},
		{"v1 udp", "PROXY UDP4 203.0.113.7 10.0.0.1 40000 1883\r\n", "", true},
		{"v2 short", proxyV2(1, 0x11, v4[:6]), "", true},
		{"v2 bad version", "\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + string(v4), "", true},
		{"v2 udp", proxyV2(1, 0x12, v4), "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			pl := ProxyListener(ln, time.Second)
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write([]byte(tc.header + "after"))
			s, err := pl.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			b := make([]byte, 5)
			_, err = io.ReadFull(s, b)
			if tc.bad {
				if !errors.Is(err, ErrProxyHeader) {
					t.Errorf("read %q, %v; want ErrProxyHeader", b, err)
				}
				return
			}
			if err != nil || string(b) != "after" {
				t.Fatalf("read %q, %v", b, err)
			}
			want := tc.remote
			if want == "" {
				want = c.LocalAddr().String()
			}
			if got := s.RemoteAddr().String(); got != want {
				t.Errorf("RemoteAddr %s, want %s", got, want)
			}
		})
	}
}

// TestProxyHeaderKeepsTheUsersDeadline: a deadline set before the header
// is read still holds after it (the hub bounds the wait for CONNECT so),
// and a client that sends nothing is given up at the header timeout.
func TestProxyHeaderKeepsTheUsersDeadline(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pl := ProxyListener(ln, 5*time.Second)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("PROXY UNKNOWN\r\n"))
	s, err := pl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	start := time.Now()
	_, err = s.Read(make([]byte, 1))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || time.Since(start) > 3*time.Second {
		t.Errorf("read after the header: %v after %v; want the user's deadline", err, time.Since(start))
	}

	pl = ProxyListener(ln, 300*time.Millisecond)
	silent, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	s2, err := pl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	start = time.Now()
	if _, err := s2.Read(make([]byte, 1)); !errors.Is(err, ErrProxyHeader) || time.Since(start) > 3*time.Second {
		t.Errorf("silent client: %v after %v", err, time.Since(start))
	}
}
