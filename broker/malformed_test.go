package broker_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/broker"
)

// connectBytes is a CONNECT for username/password with the client id and
// protocol version given.
func connectBytes(t testing.TB, version byte, username, password, clientID string) []byte {
	t.Helper()
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: version,
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: clientID,
			UsernameFlag: true, Username: []byte(username), PasswordFlag: true, Password: []byte(password),
		},
	}
	var b bytes.Buffer
	if err := pk.ConnectEncode(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// exchange dials, writes each chunk and returns everything read until the
// server closes the connection (or within is up: then closed is false).
func exchange(t *testing.T, addr string, within time.Duration, chunks ...[]byte) (got []byte, closed bool) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, ch := range chunks {
		if _, err := c.Write(ch); err != nil {
			break
		}
	}
	c.SetReadDeadline(time.Now().Add(within))
	got, err = io.ReadAll(c)
	var ne net.Error
	if err != nil && (!asNetErr(err, &ne) || !ne.Timeout()) {
		return got, true // reset by the server: closed too
	}
	return got, err == nil
}

func asNetErr(err error, ne *net.Error) bool {
	e, ok := err.(net.Error)
	if ok {
		*ne = e
	}
	return ok
}

// guard is a connection in another tenant that must survive whatever the
// test does, and keep receiving.
func guard(t *testing.T, s *stack) func() {
	t.Helper()
	s.tenant("bystander")
	sub := mustV5(t, s.addr, "bystander/watch", s.device("bystander", "watch"), "watch")
	sub.sub(t, "alive", 1)
	pub := mustV3(t, s.addr, "bystander/pub", s.device("bystander", "pub"), "pub", true)
	return func() {
		t.Helper()
		pub.pub(t, "alive", "still here", 1, false)
		sub.expect(t, "alive", "still here")
	}
}

// TestTruncatedSubscribeV5 sends the SUBSCRIBE that panics mochi v2.7.9's
// decoder (upstream #501). Only that connection ends.
func TestTruncatedSubscribeV5(t *testing.T) {
	s := newStack(t)
	stillAlive := guard(t, s)
	s.tenant("acme")
	secret := s.device("acme", "d1")
	watcher := mustV5(t, s.addr, "acme/watcher", s.device("acme", "watcher"), "watcher")
	watcher.sub(t, "wills/#", 1)

	conn := connectBytes(t, 5, "acme/d1", secret, "d1")
	got, closed := exchange(t, s.addr, 5*time.Second, conn, []byte{0x82, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, 0x61})
	if !closed {
		t.Fatal("the connection stayed open after a malformed SUBSCRIBE")
	}
	if len(got) < 4 || got[0] != 0x20 || got[3] != 0x00 {
		t.Errorf("the CONNECT was not accepted first: % x", got)
	}
	eventually(t, 2*time.Second, "the connection is gone from presence", func() bool { return len(s.hub.Connections("acme", "d1")) == 0 })
	stillAlive()
	// The device can connect again: no ghost holds its client id.
	mustV5(t, s.addr, "acme/d1", secret, "d1")
	if bytes.Contains([]byte(s.logs.String()), []byte("panic")) {
		t.Errorf("a panic was logged:\n%s", s.logs)
	}
}

// TestEveryPacketTruncated sends every client packet mochi's test tables
// know, valid ones cut at every byte: once with the stream simply ending,
// once re-framed so that the short body is a whole (malformed) packet.
func TestEveryPacketTruncated(t *testing.T) {
	if testing.Short() {
		t.Skip("sends thousands of connections")
	}
	s := newStack(t, func(c *broker.Config) { c.ConnectTimeout = 2 * time.Second })
	stillAlive := guard(t, s)
	s.tenant("acme")
	secret := s.device("acme", "d1")
	connect := map[byte][]byte{4: connectBytes(t, 4, "acme/d1", secret, "d1"), 5: connectBytes(t, 5, "acme/d1", secret, "d1")}

	type attempt struct{ chunks [][]byte }
	var attempts []attempt
	for _, typ := range []byte{packets.Connect, packets.Publish, packets.Puback, packets.Pubrec, packets.Pubrel, packets.Pubcomp,
		packets.Subscribe, packets.Unsubscribe, packets.Pingreq, packets.Disconnect, packets.Auth} {
		for _, tc := range packets.TPacketData[typ] {
			if tc.Expect != nil || tc.FailFirst != nil || tc.Packet == nil || len(tc.RawBytes) < 2 || (tc.Group != "" && tc.Group != "decode") {
				continue
			}
			version := tc.Packet.ProtocolVersion
			if version != 5 {
				version = 4
			}
			raw := tc.RawBytes
			for cut := 1; cut < len(raw); cut++ {
				variants := [][]byte{raw[:cut]}
				if hdr := headerLen(raw); cut >= hdr {
					variants = append(variants, reframe(raw[0], raw[hdr:cut]))
				}
				for _, v := range variants {
					if typ == packets.Connect {
						attempts = append(attempts, attempt{[][]byte{v}})
					} else {
						attempts = append(attempts, attempt{[][]byte{connect[version], v}})
					}
				}
			}
		}
	}
	if len(attempts) < 500 {
		t.Fatalf("only %d truncations built; the packet tables changed?", len(attempts))
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for _, a := range attempts {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			exchange(t, s.addr, 300*time.Millisecond, a.chunks...)
		}()
	}
	wg.Wait()
	t.Logf("%d truncated packets sent", len(attempts))
	stillAlive()
	mustV5(t, s.addr, "acme/d1", secret, "d1")
	if bytes.Contains([]byte(s.logs.String()), []byte("panic serving")) {
		t.Errorf("a panic was recovered while serving; the wrapper should have stopped it")
	}
}

func headerLen(raw []byte) int {
	n := 1
	for n < len(raw) && n < 5 {
		n++
		if raw[n-1]&0x80 == 0 {
			break
		}
	}
	return n
}

func reframe(b0 byte, body []byte) []byte {
	out := []byte{b0}
	n := len(body)
	for {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		out = append(out, b)
		if n == 0 {
			break
		}
	}
	return append(out, body...)
}

// TestHugeConnect: a CONNECT announcing 200 MB is closed once its header is
// read, without waiting for (or allocating) the body.
func TestHugeConnect(t *testing.T) {
	s := newStack(t)
	stillAlive := guard(t, s)
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	got, closed := exchange(t, s.addr, 5*time.Second, []byte{0x10, 0x80, 0x80, 0x80, 0x64}, bytes.Repeat([]byte{0}, 64<<10))
	if !closed || len(got) != 0 {
		t.Fatalf("got % x (closed %v), want the connection closed without a CONNACK", got, closed)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("closing took %v: the server waited for the body", d)
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grown := int64(after.TotalAlloc) - int64(before.TotalAlloc); grown > 1<<20 {
		t.Errorf("allocated %d bytes around a 200 MB CONNECT header; want under 1 MB", grown)
	}
	stillAlive()
}

// TestFirstPacketNotConnect: anything but CONNECT first is closed without a
// word.
func TestFirstPacketNotConnect(t *testing.T) {
	s := newStack(t)
	for _, first := range [][]byte{{0xC0, 0x00}, {0x30, 0x03, 0x00, 0x01, 'a'}, []byte("GET / HTTP/1.1\r\n\r\n"), {0x10, 0xff, 0xff, 0xff, 0xff, 0x7f}} {
		got, closed := exchange(t, s.addr, 5*time.Second, first)
		if !closed || len(got) != 0 {
			t.Errorf("first bytes % x: got % x (closed %v), want a silent close", first, got, closed)
		}
	}
}

// TestSilentSockets: a thousand connections that never send anything are
// all closed at the CONNECT deadline, and cost little while they wait.
// (They come from one address: its bounds, in handshake and in attempt
// rate, are lifted to measure them all. The deadline is 3 s, so that the
// first are not closed before the last are accepted on a busy machine.)
func TestSilentSockets(t *testing.T) {
	s := newStack(t, func(c *broker.Config) {
		c.ConnectTimeout, c.HandshakesPerAddress, c.HandshakeRatePerAddress = 3*time.Second, 2000, -1
	})
	stillAlive := guard(t, s)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	goroutines := runtime.NumGoroutine()

	const n = 1000
	conns := make([]net.Conn, 0, n)
	for range n {
		c, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	eventually(t, 5*time.Second, "all silent sockets accepted", func() bool { return runtime.NumGoroutine() >= goroutines+n })
	runtime.GC()
	var during runtime.MemStats
	runtime.ReadMemStats(&during)
	if per := (int64(during.HeapInuse) - int64(before.HeapInuse)) / n; per > 16<<10 {
		t.Errorf("each waiting socket holds %d bytes of heap; want under 16 KiB", per)
	}
	var wg sync.WaitGroup
	closedCount := make(chan bool, n)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err := c.Read(make([]byte, 1))
			var ne net.Error
			closedCount <- err != nil && !(asNetErr(err, &ne) && ne.Timeout())
		}()
	}
	wg.Wait()
	close(closedCount)
	closed := 0
	for c := range closedCount {
		if c {
			closed++
		}
	}
	if closed != n {
		t.Errorf("%d of %d silent sockets closed by the server", closed, n)
	}
	stillAlive()
	eventually(t, 5*time.Second, "handshake goroutines gone", func() bool { return runtime.NumGoroutine() <= goroutines+20 })
}

// TestPingreqWithBody: a PINGREQ has no body [MQTT-3.12.1]; one with a
// body is malformed, and ends the connection (MQTT 5: DISCONNECT 0x81)
// instead of being answered.
func TestPingreqWithBody(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	secret := s.device("acme", "d")
	for _, version := range []byte{4, 5} {
		got, closed := exchange(t, s.addr, 2*time.Second, connectBytes(t, version, "acme/d", secret, "d"), []byte{0xC0, 0x01, 0x00})
		if !closed {
			t.Fatalf("v%d: a PINGREQ with a body left the connection open", version)
		}
		if len(got) < 4 || got[0] != packets.Connack<<4 || got[3] != 0 {
			t.Fatalf("v%d: got % x, want a successful CONNACK first", version, got)
		}
		rest := got[2+int(got[1]):]
		switch {
		case bytes.Contains(rest, []byte{packets.Pingresp << 4, 0}):
			t.Fatalf("v%d: a PINGREQ with a body was answered: % x", version, rest)
		case version == 5 && (len(rest) < 3 || rest[0] != packets.Disconnect<<4 || rest[2] != packets.ErrMalformedPacket.Code):
			t.Fatalf("v5: got % x after the CONNACK, want DISCONNECT 0x81", rest)
		}
	}
	// A well-formed one is answered.
	got, _ := exchange(t, s.addr, 500*time.Millisecond, connectBytes(t, 4, "acme/d", secret, "d"), []byte{0xC0, 0x00})
	if !bytes.HasSuffix(got, []byte{packets.Pingresp << 4, 0}) {
		t.Fatalf("PINGREQ: got % x, want a PINGRESP", got)
	}
}

// TestAnnouncedConnectNotHeld: connections whose CONNECT header announces
// the largest CONNECT the ingress takes (512 KiB) and that send nothing
// more hold little heap each while they wait: the body's buffer grows as
// bytes come, where it was allocated whole (250 such sockets held 128 MiB).
// They are closed at the CONNECT deadline like any silent socket.
func TestAnnouncedConnectNotHeld(t *testing.T) {
	s := newStack(t, func(c *broker.Config) {
		c.ConnectTimeout, c.HandshakesPerAddress, c.HandshakeRatePerAddress = 2*time.Second, 2000, -1
	})
	stillAlive := guard(t, s)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	goroutines := runtime.NumGoroutine()

	const n = 250
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		// CONNECT, remaining length 524,287, and one byte of its body.
		if _, err := c.Write([]byte{0x10, 0xff, 0xff, 0x1f, 0x00}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 5*time.Second, "all sockets accepted", func() bool { return runtime.NumGoroutine() >= goroutines+n })
	time.Sleep(300 * time.Millisecond) // for the ingress to read each header
	runtime.GC()
	var during runtime.MemStats
	runtime.ReadMemStats(&during)
	if per := (int64(during.HeapInuse) - int64(before.HeapInuse)) / n; per > 48<<10 {
		t.Errorf("each socket that announced 512 KiB holds %d KiB of heap; want under 48 KiB", per>>10)
	}
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		var ne net.Error
		if _, err := c.Read(make([]byte, 1)); err == nil || (asNetErr(err, &ne) && ne.Timeout()) {
			t.Fatalf("a socket that announced a CONNECT and sent nothing more: %v, want it closed by the server", err)
		}
	}
	stillAlive()
}

// TestLargeConnect: a CONNECT of some 300 KiB, within the tenant's
// max_packet_size, is read whole across the growth of the ingress's
// buffer: MQTT bounds each field to 64 KiB, so the bulk is user properties
// (five of 60 KiB), and the Will's payload (60 KiB) comes after them. The
// Will, sent when the connection drops, is the one the device set.
func TestLargeConnect(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	liftRates(t, s, "acme")
	s.setQuota("acme", "max_packet_size", 1<<20)
	sub := mustV5(t, s.addr, user("acme", "sub"), s.device("acme", "sub"), "sub")
	sub.sub(t, "wills/big", 1)
	will := make([]byte, 60<<10)
	for i := range will {
		will[i] = byte(i * 7)
	}
	big := mustV5(t, s.addr, user("acme", "big"), s.device("acme", "big"), "big", func(c *paho.Connect) {
		c.WillMessage = &paho.WillMessage{Topic: "wills/big", QoS: 1, Payload: will}
		c.Properties = &paho.ConnectProperties{}
		for i := range 5 {
			c.Properties.User.Add(fmt.Sprintf("bulk%d", i), strings.Repeat(fmt.Sprint(i), 60<<10))
		}
	})
	big.conn.Close() // without DISCONNECT: the Will goes
	select {
	case m := <-sub.msgs:
		if m.Topic != "wills/big" || !bytes.Equal(m.Payload, will) {
			t.Fatalf("got %s with %d bytes, want wills/big with the %d bytes of the Will", m.Topic, len(m.Payload), len(will))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no Will within 5s")
	}
}
