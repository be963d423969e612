package broker_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/tenants"
	"github.com/roosthub/roost/transport"
)

// scraped is the value of the hub's metric name whose label has value,
// read as Prometheus reads it.
func scraped(t *testing.T, hub *broker.Hub, name, label, value string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(hub.Collector(0))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetGauge().GetValue() + m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no metric %s{%s=%q}", name, label, value)
	return 0
}

// dialFrom opens a TCP connection to addr from the loopback address ip.
func dialFrom(t *testing.T, ip, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, ip, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// lookWithin is how long judge gives the server to close a connection it
// refuses: long for a busy machine, well short of the CONNECT timeout
// (10s by default), past which the server closes every silent
// connection.
const lookWithin = 3 * time.Second

// closedBy reports whether the server closed c, on which nothing more was
// sent, by deadline: refused before it read anything (more).
func closedBy(c net.Conn, deadline time.Time) bool {
	c.SetReadDeadline(deadline)
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// judge opens n connections from ip to addr, each sending prepare's bytes
// (if any) and then nothing, all before any is looked at, and returns how
// many the server left open and how many it closed at once.
func judge(t *testing.T, ip, addr string, n int, prepare func(i int, c net.Conn)) (open, refused int) {
	t.Helper()
	conns, reset := dialAll(t, ip, addr, n, prepare)
	open, refused = look(conns)
	return open, refused + reset
}

// dialAll opens n connections from ip to addr, each sending prepare's
// bytes (if any), and returns them, and how many were reset before the
// dial returned (refused at once too).
func dialAll(t *testing.T, ip, addr string, n int, prepare func(i int, c net.Conn)) (conns []net.Conn, reset int) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 2 * time.Second}
	for i := range n {
		c, err := d.Dial("tcp", addr)
		if errors.Is(err, syscall.ECONNRESET) {
			reset++
			continue
		}
		if err != nil {
			t.Fatalf("dial %s from %s: %v", addr, ip, err)
		}
		t.Cleanup(func() { c.Close() })
		if prepare != nil {
			prepare(i, c)
		}
		conns = append(conns, c)
	}
	return conns, reset
}

// look waits on every connection at once, lookWithin, and returns how
// many the server left open and how many it closed.
func look(conns []net.Conn) (open, refused int) {
	deadline := time.Now().Add(lookWithin)
	closed := make([]bool, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			closed[i] = closedBy(c, deadline)
		}()
	}
	wg.Wait()
	for _, c := range closed {
		if c {
			refused++
		} else {
			open++
		}
	}
	return open, refused
}

// judgeTimed is judge for a rate: it also waits until judged, the
// server's count of the attempts it admitted or refused, reaches n, and
// returns how long the attempts took from the first dial to then, the
// time in which the rate gave tokens back.
func judgeTimed(t *testing.T, ip, addr string, n int, prepare func(i int, c net.Conn), judged func() int) (open, refused int, took time.Duration) {
	t.Helper()
	start := time.Now()
	conns, reset := dialAll(t, ip, addr, n, prepare)
	eventually(t, 10*time.Second, "the server judged every attempt", func() bool { return judged() >= n })
	took = time.Since(start)
	open, refused = look(conns)
	return open, refused + reset, took
}

// refill is how many tokens a rate of one a second gives in d, at most.
func refill(d time.Duration) int { return int(math.Ceil(d.Seconds())) }

// TestAttemptRateFromOneAddress: connection attempts from one address over
// its rate are closed as they are accepted, before a byte is read (these
// send nothing at all); the metric counts them by reason and the log sums
// them in one line; a device from another address connects meanwhile.
func TestAttemptRateFromOneAddress(t *testing.T) {
	s := newStack(t, func(c *broker.Config) { c.HandshakeRatePerAddress, c.HandshakeBurstPerAddress = 1, 10 })
	s.tenant("acme")
	secret := s.device("acme", "d1")

	open, refused, took := judgeTimed(t, "127.0.0.2", s.addr, 30, nil, func() int {
		return s.hub.Handshakes() + int(scraped(t, s.hub, "roost_handshakes_dropped_total", "reason", "refused_rate_per_address"))
	})
	// The burst, and the tokens refilled while they were dialed.
	if most := 10 + refill(took); open < 10 || open > most || open+refused != 30 {
		t.Errorf("of 30 silent attempts from one address in %v: %d left open, %d closed at once; want the burst of 10 open, at most %d, and the rest closed", took.Round(time.Millisecond), open, refused, most)
	}
	if got := scraped(t, s.hub, "roost_handshakes_dropped_total", "reason", "refused_rate_per_address"); got != float64(refused) {
		t.Errorf("roost_handshakes_dropped_total{reason=refused_rate_per_address} = %v, want %d", got, refused)
	}
	if code, err := connackV5(dialFrom(t, "127.0.0.3", s.addr), "acme/d1", secret, "d1"); code != 0 || err != nil {
		t.Errorf("a device from another address: CONNACK 0x%02x (%v), want 0", code, err)
	}
	if got := scraped(t, s.hub, "roost_handshake_rate_keys", "scope", "address"); got != 2 {
		t.Errorf("roost_handshake_rate_keys{scope=address} = %v, want 2 (127.0.0.2 and 127.0.0.3)", got)
	}
	logs := s.logs.String()
	if n := strings.Count(logs, "refused_rate_per_address="); n != 1 {
		t.Errorf("the refusals were logged in %d lines, want one summary:\n%s", n, tail(logs, 2000))
	}
}

// TestAttemptRateGivesBackAdmitted: attempts that become connections give
// their token back, so that valid devices behind one address (a NAT after
// an outage) connect far past the burst; failed attempts keep theirs, and
// once they have spent the burst the next attempt is refused unread.
func TestAttemptRateGivesBackAdmitted(t *testing.T) {
	s := newStack(t, func(c *broker.Config) { c.HandshakeRatePerAddress, c.HandshakeBurstPerAddress = 1, 5 })
	s.tenant("acme")
	secret := s.device("acme", "d1")
	for i := range 30 {
		if code, err := connackV5(dialFrom(t, "127.0.0.4", s.addr), "acme/d1", secret, "d1"); code != 0 || err != nil {
			t.Fatalf("valid device %d of 30 from one address, burst 5: CONNACK 0x%02x (%v), want 0", i, code, err)
		}
	}
	var codes []string
	start := time.Now()
	for range 5 {
		code, err := connackV5(dialFrom(t, "127.0.0.4", s.addr), "acme/d1", "wrong", "d1")
		codes = append(codes, fmt.Sprintf("0x%02x %v", code, err))
	}
	if want := strings.Repeat("0x86 <nil> ", 5); strings.Join(codes, " ")+" " != want {
		t.Errorf("5 failed attempts within the burst: got %v, want 0x86 each", codes)
	}
	// The rate refills a token a second from the first failure on: the
	// next five attempts may have as many as whole seconds passed (none,
	// unless the machine is slow), and would all be open had the failures
	// given theirs back.
	eventually(t, 5*time.Second, "the failed attempts' handshakes over", func() bool { return broker.SourceHandshakes(s.hub, "127.0.0.4") == 0 })
	conns, reset := dialAll(t, "127.0.0.4", s.addr, 5, nil)
	eventually(t, 10*time.Second, "the server judged every attempt", func() bool {
		return broker.SourceHandshakes(s.hub, "127.0.0.4")+int(scraped(t, s.hub, "roost_handshakes_dropped_total", "reason", "refused_rate_per_address")) >= 5
	})
	took := time.Since(start)
	open, refused := look(conns)
	if most := int(took.Seconds()); open > most || open+refused+reset != 5 {
		t.Errorf("of 5 attempts after 5 failures spent the burst, %v after the first: %d left open, %d closed at once; want at most %d open (the tokens refilled)", took.Round(time.Millisecond), open, refused+reset, most)
	}
}

// TestAttemptRateBeforeTLS: on the TLS listener, attempts over the rate
// are closed before the server waits for a ClientHello; a device from
// another address completes its handshake and connects.
func TestAttemptRateBeforeTLS(t *testing.T) {
	s := newStack(t, func(c *broker.Config) { c.HandshakeRatePerAddress, c.HandshakeBurstPerAddress = 1, 3 })
	tlsAddr, roots := serveTLS(t, s.hub)
	s.tenant("acme")
	secret := s.device("acme", "d1")
	open, refused, took := judgeTimed(t, "127.0.0.5", tlsAddr, 12, nil, func() int {
		return s.hub.Handshakes() + int(scraped(t, s.hub, "roost_handshakes_dropped_total", "reason", "refused_rate_per_address"))
	})
	if most := 3 + refill(took); open < 3 || open > most || open+refused != 12 {
		t.Errorf("of 12 attempts from one address at the TLS port in %v: %d waited for a ClientHello, %d closed at once; want the burst of 3 waiting, at most %d", took.Round(time.Millisecond), open, refused, most)
	}
	conn := tls.Client(dialFrom(t, "127.0.0.6", tlsAddr), &tls.Config{RootCAs: roots, ServerName: "localhost"})
	if code, err := connackRaw(conn, connectBytes(t, 5, "acme/d1", secret, "d1"), 5); code != 0 || err != nil {
		t.Errorf("a device over TLS from another address: CONNACK 0x%02x (%v), want 0", code, err)
	}
}

// firstByte records the first byte a connection reads: a TLS record's
// type (0x16 a handshake message such as ServerHello, 0x15 an alert).
type firstByte struct {
	net.Conn
	b []byte
}

func (c *firstByte) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if len(c.b) == 0 && n > 0 {
		c.b = append(c.b, p[0])
	}
	return n, err
}

// tlsTo does a TLS handshake naming sni from ip; it returns the
// connection, what the server sent first and the handshake's error.
func tlsTo(t *testing.T, ip, addr, sni string, roots *x509.CertPool) (*tls.Conn, byte, error) {
	t.Helper()
	fb := &firstByte{Conn: dialFrom(t, ip, addr)}
	tc := tls.Client(fb, &tls.Config{RootCAs: roots, ServerName: sni})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	err := tc.HandshakeContext(ctx)
	var first byte
	if len(fb.b) > 0 {
		first = fb.b[0]
	}
	return tc, first, err
}

// TestAttemptRateAtEndpoint: TLS handshakes naming one tenant's endpoint
// (SNI victim.localhost), from many addresses, over the endpoint's rate
// end at the ClientHello: the server answers with an alert and never sends
// its ServerHello (no key exchange, no signature). The tenant's devices
// that connect give their token back; another tenant's endpoint is
// unaffected.
func TestAttemptRateAtEndpoint(t *testing.T) {
	s := newStack(t, func(c *broker.Config) {
		c.Domain = "localhost"
		c.HandshakeRatePerEndpoint, c.HandshakeBurstPerEndpoint = 1, 3
	})
	tlsAddr, roots := serveTLS(t, s.hub)
	s.tenant("victim")
	s.tenant("other")
	victim, other := s.device("victim", "d1"), s.device("other", "d1")
	for i := range 10 {
		tc, _, err := tlsTo(t, "127.0.0.7", tlsAddr, "victim.localhost", roots)
		if err != nil {
			t.Fatalf("valid device %d of 10 at an endpoint of burst 3: TLS: %v", i, err)
		}
		if code, err := connackRaw(tc, connectBytes(t, 5, "d1", victim, "d1"), 5); code != 0 || err != nil {
			t.Fatalf("valid device %d of 10 at an endpoint of burst 3: CONNACK 0x%02x (%v), want 0", i, code, err)
		}
	}
	completed, alerted := 0, 0
	start := time.Now()
	for i := range 10 {
		_, first, err := tlsTo(t, fmt.Sprintf("127.0.1.%d", i+1), tlsAddr, "victim.localhost", roots)
		switch {
		case err == nil:
			completed++ // then silent: its token stays spent
		case first == 0x15 && strings.Contains(err.Error(), "internal error"):
			alerted++
		default:
			t.Errorf("handshake %d: first byte 0x%02x, %v; want it complete, or an alert before any ServerHello", i, first, err)
		}
	}
	// The burst, and the tokens refilled while they were tried.
	took := time.Since(start)
	if most := 3 + refill(took); completed < 3 || completed > most || completed+alerted != 10 {
		t.Errorf("of 10 handshakes from 10 addresses at one endpoint in %v: %d completed, %d ended at the ClientHello; want the burst of 3 completed, at most %d", took.Round(time.Millisecond), completed, alerted, most)
	}
	if got := scraped(t, s.hub, "roost_handshakes_dropped_total", "reason", "refused_rate_per_endpoint"); got != float64(alerted) {
		t.Errorf("roost_handshakes_dropped_total{reason=refused_rate_per_endpoint} = %v, want %d", got, alerted)
	}
	tc, _, err := tlsTo(t, "127.0.0.8", tlsAddr, "other.localhost", roots)
	if err != nil {
		t.Fatalf("another tenant's endpoint: TLS: %v", err)
	}
	if code, err := connackRaw(tc, connectBytes(t, 5, "d1", other, "d1"), 5); code != 0 || err != nil {
		t.Errorf("another tenant's endpoint: CONNACK 0x%02x (%v), want 0", code, err)
	}
}

// TestAttemptRateBehindProxy: behind a balancer speaking the PROXY
// protocol, the rate applies to the address each header names, never to
// the balancer's: one client address over its rate is closed as soon as
// its header is read, while as many attempts as that from other clients
// through the same balancer all wait for their CONNECT.
func TestAttemptRateBehindProxy(t *testing.T) {
	s := newStack(t, func(c *broker.Config) { c.HandshakeRatePerAddress, c.HandshakeBurstPerAddress = 1, 5 })
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.hub.Serve(transport.ProxyListener(raw, 2*time.Second))
	header := func(ip func(int) string) func(int, net.Conn) {
		return func(i int, c net.Conn) { fmt.Fprintf(c, "PROXY TCP4 %s 10.0.0.1 40000 1883\r\n", ip(i)) }
	}
	open, refused, took := judgeTimed(t, "127.0.0.1", raw.Addr().String(), 15, header(func(int) string { return "203.0.113.7" }), func() int {
		return broker.SourceHandshakes(s.hub, "203.0.113.7") + int(scraped(t, s.hub, "roost_handshakes_dropped_total", "reason", "refused_rate_per_address"))
	})
	if most := 5 + refill(took); open < 5 || open > most || open+refused != 15 {
		t.Errorf("of 15 attempts naming one client in %v: %d open, %d closed after the header; want the burst of 5 open, at most %d", took.Round(time.Millisecond), open, refused, most)
	}
	open, refused = judge(t, "127.0.0.1", raw.Addr().String(), 20, header(func(i int) string { return fmt.Sprintf("198.51.100.%d", i+1) }))
	if open != 20 {
		t.Errorf("of 20 attempts naming 20 clients through one balancer: %d open, %d closed; want every one open", open, refused)
	}
}

// TestAttemptRateForwarded: a connection forwarded by another node of the
// fleet is not charged again at its home (the node the device reached
// charged its address), and never to the forwarding node's address: many
// devices forwarded from one node all wait for their CONNECT.
func TestAttemptRateForwarded(t *testing.T) {
	s := newStack(t, func(c *broker.Config) { c.HandshakeRatePerAddress, c.HandshakeBurstPerAddress = 1, 3 })
	key := bytes.Repeat([]byte{7}, 32)
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.hub.Serve(transport.ForwardListener(raw, key, 2*time.Second))
	open, refused := judge(t, "127.0.0.1", raw.Addr().String(), 15, func(i int, c net.Conn) {
		f := transport.Forwarded{Origin: "node-a", Remote: &net.TCPAddr{IP: net.ParseIP("203.0.113.9"), Port: 40000 + i}}
		if err := transport.WriteForwardHeader(c, f, key, time.Now()); err != nil {
			t.Fatal(err)
		}
	})
	if open != 15 {
		t.Errorf("of 15 connections forwarded for one device address, rate burst 3: %d open, %d closed; want all open", open, refused)
	}
	if got := scraped(t, s.hub, "roost_handshakes_dropped_total", "reason", "refused_rate_per_address"); got != 0 {
		t.Errorf("refused_rate_per_address = %v, want 0", got)
	}
}

// BenchmarkConnectAttemptRates: what the pre-accept attempt rates cost a
// connect that succeeds: connections through the ingress, 64 dialing at
// once from one address, each closed once its CONNACK arrives, with the
// rates off and on (on: each attempt takes a token at accept and gives it
// back when admitted). Compare connects/s.
//
//	go test -run '^$' -bench ConnectAttemptRates -benchtime 3000x -count 3 ./broker
func BenchmarkConnectAttemptRates(b *testing.B) {
	for _, mode := range []string{"off", "on"} {
		b.Run(mode, func(b *testing.B) {
			s := newStack(b, func(c *broker.Config) {
				c.Log = slog.New(slog.DiscardHandler)
				if mode == "off" {
					c.HandshakeRatePerAddress, c.HandshakeRatePerEndpoint = -1, -1
				}
			})
			s.tenant("bench")
			liftRates(b, s, "bench")
			s.setQuota("bench", "max_connections", 1<<40) // closed connections may linger a moment
			secret := s.device("bench", "d", tenants.ClientIDsAny)
			connectAll(b, s.addr, "bench/d", secret)
		})
	}
}
