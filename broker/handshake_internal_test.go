package broker

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeConn is a connection that only knows whether it was closed.
type fakeConn struct {
	net.Conn
	name   string
	closed bool
}

func (c *fakeConn) Close() error { c.closed = true; return nil }

func tcpAddr(ip string) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000} }

// handshakeTable drives a handshakes table with a settable clock.
type handshakeTable struct {
	t     *testing.T
	hs    *handshakes
	clock time.Time
	conns map[string]*fakeConn
	ps    map[string]*pending
}

func newHandshakeTable(t *testing.T, max, perAddress, perEndpoint int) *handshakeTable {
	tb := &handshakeTable{t: t, clock: time.Unix(1_700_000_000, 0), conns: map[string]*fakeConn{}, ps: map[string]*pending{}}
	tb.hs = newHandshakes(max, perAddress, perEndpoint, 5*time.Second, discardLog())
	tb.hs.now = func() time.Time { return tb.clock }
	return tb
}

// enter opens connection name from ip, one millisecond after the last.
func (tb *handshakeTable) enter(name, ip string) bool {
	tb.clock = tb.clock.Add(time.Millisecond)
	c := &fakeConn{name: name}
	provisional := strings.HasPrefix(ip, "via ")
	p, ok := tb.hs.enter(c, tcpAddr(strings.TrimPrefix(ip, "via ")), provisional)
	tb.conns[name] = c
	if ok {
		tb.ps[name] = p
	}
	return ok
}

// closed lists the connections the table closed so far (shed), by name;
// those it refuses are the caller's to close.
func (tb *handshakeTable) closed() []string {
	var out []string
	for n, c := range tb.conns {
		if c.closed {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

func TestSourceOf(t *testing.T) {
	for _, tc := range []struct {
		addr net.Addr
		want string
	}{
		{tcpAddr("192.0.2.7"), "192.0.2.7"},
		{tcpAddr("::ffff:192.0.2.7"), "192.0.2.7"},
		{tcpAddr("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64"},
		{tcpAddr("2001:db8:1:2:ffff::1"), "2001:db8:1:2::/64"},
		{&net.UnixAddr{Name: "@x", Net: "unix"}, "@x"},
		{nil, ""},
	} {
		if got := sourceOf(tc.addr); got != tc.want {
			t.Errorf("sourceOf(%v) = %q, want %q", tc.addr, got, tc.want)
		}
	}
}

// TestHandshakesPerAddress: an address at its bound has newcomers refused
// while its handshakes are fresh, and its oldest closed once stale; other
// addresses are not touched.
func TestHandshakesPerAddress(t *testing.T) {
	tb := newHandshakeTable(t, 100, 3, 100)
	for i := range 3 {
		if !tb.enter(fmt.Sprintf("a%d", i), "192.0.2.1") {
			t.Fatalf("a%d refused under the bound", i)
		}
	}
	if tb.enter("a3", "192.0.2.1") {
		t.Error("a fourth from one address entered, want it refused (the others are fresh)")
	}
	if !tb.enter("b0", "192.0.2.2") {
		t.Error("another address refused")
	}
	tb.clock = tb.clock.Add(6 * time.Second)
	if !tb.enter("a4", "192.0.2.1") {
		t.Error("a newcomer refused while the address's oldest is stale")
	}
	if got, want := tb.closed(), []string{"a0"}; !slices.Equal(got, want) {
		t.Errorf("closed %v, want %v (shed as stale; the refused a3 is the caller's to close)", got, want)
	}
	if n := tb.hs.count(); n != 4 {
		t.Errorf("count %d, want 4", n)
	}
	// Leaving frees a slot; a second leave changes nothing.
	tb.hs.leave(tb.ps["a1"])
	tb.hs.leave(tb.ps["a1"])
	if !tb.enter("a5", "192.0.2.1") || tb.hs.count() != 4 {
		t.Errorf("after a leave: count %d, want 4 with a5 in", tb.hs.count())
	}
}

// TestHandshakesTotal: when every slot is taken, the oldest handshake of
// the address holding the most is closed for a newcomer from a lighter
// one, and a newcomer from the heaviest is refused.
func TestHandshakesTotal(t *testing.T) {
	tb := newHandshakeTable(t, 6, 4, 100)
	for i := range 4 {
		tb.enter(fmt.Sprintf("heavy%d", i), "192.0.2.1")
	}
	tb.enter("mid0", "192.0.2.2")
	tb.enter("mid1", "192.0.2.2")
	if !tb.enter("light0", "192.0.2.3") {
		t.Fatal("a newcomer from a new address refused, want the heaviest to pay")
	}
	if !tb.enter("light1", "192.0.2.3") {
		t.Fatal("second newcomer from a light address refused")
	}
	if got, want := tb.closed(), []string{"heavy0", "heavy1"}; !slices.Equal(got, want) {
		t.Errorf("closed %v, want %v", got, want)
	}
	// Now 2, 2, 2: the newcomer's address is as heavy as any; its own
	// handshakes are fresh, so it is refused.
	if tb.enter("light2", "192.0.2.3") {
		t.Error("a newcomer from an address as heavy as the heaviest entered a full table")
	}
	// Ties go to the address whose oldest handshake is oldest.
	if !tb.enter("new0", "192.0.2.4") {
		t.Fatal("a newcomer from a new address refused")
	}
	if got := tb.closed(); !slices.Contains(got, "heavy2") {
		t.Errorf("closed %v, want heavy2 (oldest of the tied heaviest)", got)
	}
	if n := tb.hs.count(); n != 6 {
		t.Errorf("count %d, want 6", n)
	}
}

// TestHandshakesPerEndpoint: a tenant endpoint holds at most its bound;
// its heaviest address pays for a lighter newcomer; other endpoints and
// connections without one are not touched.
func TestHandshakesPerEndpoint(t *testing.T) {
	tb := newHandshakeTable(t, 100, 10, 3)
	for i, ip := range []string{"192.0.2.1", "192.0.2.1", "192.0.2.2"} {
		name := fmt.Sprintf("v%d", i)
		tb.enter(name, ip)
		if !tb.hs.enterEndpoint(tb.ps[name], "victim") {
			t.Fatalf("%s refused at the endpoint under its bound", name)
		}
	}
	tb.enter("flood", "192.0.2.1")
	if tb.hs.enterEndpoint(tb.ps["flood"], "victim") {
		t.Error("a newcomer from an address as heavy as any entered the full endpoint")
	}
	tb.enter("device", "192.0.2.3")
	if !tb.hs.enterEndpoint(tb.ps["device"], "victim") {
		t.Error("a newcomer from a new address refused at the full endpoint")
	}
	tb.enter("other", "192.0.2.1")
	if !tb.hs.enterEndpoint(tb.ps["other"], "other") {
		t.Error("another tenant's endpoint refused")
	}
	if got, want := tb.closed(), []string{"v0"}; !slices.Equal(got, want) {
		t.Errorf("closed %v, want %v", got, want)
	}
	// A connection refused at its endpoint is no longer counted anywhere.
	if n := tb.hs.count(); n != 4 {
		t.Errorf("count %d, want 4", n)
	}
}

// TestHandshakesRekey: a connection counted under the balancer's address
// moves to the address its PROXY header names, and is refused there if
// that address is full.
func TestHandshakesRekey(t *testing.T) {
	tb := newHandshakeTable(t, 100, 2, 100)
	tb.enter("x0", "192.0.2.9")
	tb.enter("x1", "192.0.2.9")
	tb.enter("lb0", "10.0.0.1")
	tb.enter("lb1", "10.0.0.1")
	if !tb.hs.rekey(tb.ps["lb0"], tcpAddr("198.51.100.1")) {
		t.Fatal("rekey to a fresh address refused")
	}
	if !tb.enter("lb2", "10.0.0.1") {
		t.Error("the balancer's address is still full after a rekey")
	}
	if tb.hs.rekey(tb.ps["lb1"], tcpAddr("192.0.2.9")) {
		t.Error("rekey onto a full address accepted")
	}
	if n := tb.hs.count(); n != 4 {
		t.Errorf("count %d, want 4 (x0, x1, lb0, lb2)", n)
	}
	// Before its PROXY header is read a connection counts only in all,
	// under its balancer's address: many may wait at once.
	for i := range 5 {
		if !tb.enter(fmt.Sprintf("via%d", i), "via 10.0.0.2") {
			t.Errorf("via%d refused: no per-address bound applies before the header", i)
		}
	}
	if !tb.hs.rekey(tb.ps["via0"], tcpAddr("10.0.0.2")) || !tb.hs.rekey(tb.ps["via1"], tcpAddr("10.0.0.2")) {
		t.Error("a balancer's own health checks (no address in the header) refused under the bound")
	}
	if tb.hs.rekey(tb.ps["via2"], tcpAddr("10.0.0.2")) {
		t.Error("a third under the balancer's own address accepted over the bound of 2")
	}
}

// TestHandshakesClose: closing closes everything in handshake and refuses
// what comes after.
func TestHandshakesClose(t *testing.T) {
	tb := newHandshakeTable(t, 100, 10, 10)
	tb.enter("a", "192.0.2.1")
	tb.enter("b", "192.0.2.2")
	tb.hs.enterEndpoint(tb.ps["b"], "acme")
	tb.hs.close()
	if got := tb.closed(); len(got) != 2 {
		t.Errorf("closed %v, want a and b", got)
	}
	if tb.enter("c", "192.0.2.3") {
		t.Error("entered after close")
	}
	if tb.hs.count() != 0 || len(tb.hs.endpoints) != 0 {
		t.Errorf("count %d, endpoints %v after close", tb.hs.count(), tb.hs.endpoints)
	}
}

// TestHandshakesLogOnce: a flood is logged once, then summed at most once
// a minute.
func TestHandshakesLogOnce(t *testing.T) {
	tb := newHandshakeTable(t, 100, 1, 100)
	var logs strings.Builder
	tb.hs.log = newTextLogger(&logs)
	tb.enter("first", "192.0.2.1")
	for i := range 1000 {
		tb.enter(fmt.Sprintf("f%d", i), "192.0.2.1")
	}
	if n := strings.Count(logs.String(), "refused or closed"); n != 1 {
		t.Errorf("%d log lines for a flood within a minute, want 1:\n%s", n, logs.String())
	}
	tb.clock = tb.clock.Add(time.Minute)
	tb.enter("later", "192.0.2.1")
	if n := strings.Count(logs.String(), "refused or closed"); n != 2 || !strings.Contains(logs.String(), "refused_per_address=999 shed_per_address=1") {
		t.Errorf("after a minute: want a second line summing the 999 refused meanwhile and the stale one shed now:\n%s", logs.String())
	}
	if d := tb.hs.drops(); d[refusedPerAddress] != 1000 || d[shedPerAddress] != 1 {
		t.Errorf("drops %v, want 1000 refused and 1 shed per address", d)
	}
}

func newTextLogger(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

// TestHandshakesRekeyShed: a connection shed while it waited for its
// header, or while it was in handshake under its own address, is refused
// when rekeyed: let on, it would be authenticated (its CONNECT may wait in
// the header reader's buffer) with its failures counted under the
// balancer's address.
func TestHandshakesRekeyShed(t *testing.T) {
	tb := newHandshakeTable(t, 2, 2, 100)
	tb.enter("w0", "via 10.0.0.3")
	tb.enter("w1", "via 10.0.0.3")
	tb.clock = tb.clock.Add(6 * time.Second) // stale (the table's staleAfter is 5 s)
	if !tb.enter("w2", "via 10.0.0.3") || !slices.Equal(tb.closed(), []string{"w0"}) {
		t.Fatalf("closed %v to make room for w2, want w0, the oldest, stale", tb.closed())
	}
	if tb.hs.rekey(tb.ps["w0"], tcpAddr("198.51.100.7")) {
		t.Error("a connection shed while it waited for its header was let on by the header")
	}
	if !tb.hs.rekey(tb.ps["w1"], tcpAddr("198.51.100.8")) {
		t.Error("a connection not shed was refused by its header")
	}

	// Under its own address: a plain TCP connection is rekeyed with the
	// address it was accepted with.
	tb = newHandshakeTable(t, 100, 1, 100)
	tb.enter("a0", "192.0.2.1")
	a0 := tb.ps["a0"]
	tb.clock = tb.clock.Add(6 * time.Second)
	if !tb.enter("a1", "192.0.2.1") || !slices.Equal(tb.closed(), []string{"a0"}) {
		t.Fatalf("closed %v to make room for a1, want a0, stale", tb.closed())
	}
	if tb.hs.rekey(a0, a0.addr) {
		t.Error("a shed connection was let on under its own address (the same address value)")
	}
	if tb.hs.rekey(a0, tcpAddr("192.0.2.1")) {
		t.Error("a shed connection was let on under its own address (an equal address)")
	}
	if n := tb.hs.count(); n != 1 {
		t.Errorf("count %d, want 1 (a1)", n)
	}
	if !tb.hs.rekey(tb.ps["a1"], tb.ps["a1"].addr) {
		t.Error("a connection in handshake under its own address was refused")
	}
}

// TestHandshakesRekeyWhileShed: connections waiting for their headers are
// rekeyed while newcomers shed them, at once. Each is either let on (and
// counted), or refused because it was shed (closed), and the count is
// what was let on and the newcomers.
// Under the race detector this also checks that rekey reads what the
// shedder writes under the lock.
func TestHandshakesRekeyWhileShed(t *testing.T) {
	const n = 64
	clock := time.Unix(1_700_000_000, 0) // fixed: read from every goroutine
	hs := newHandshakes(n, n, n, 5*time.Second, discardLog())
	hs.now = func() time.Time { return clock }
	conns := make([]*fakeConn, n)
	ps := make([]*pending, n)
	for i := range n {
		conns[i] = &fakeConn{name: fmt.Sprint(i)}
		p, ok := hs.enter(conns[i], tcpAddr("10.0.0.1"), true)
		if !ok {
			t.Fatalf("waiting connection %d refused", i)
		}
		ps[i] = p
	}
	newcomers := make([]*fakeConn, n/2)
	for i := range newcomers {
		newcomers[i] = &fakeConn{name: fmt.Sprint("new", i)}
	}
	let := make([]bool, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			let[i] = hs.rekey(ps[i], tcpAddr(fmt.Sprintf("198.51.100.%d", i+1)))
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-start
		// Each from a balancer of its own: the pool is full, and the
		// heaviest address's oldest is shed for it.
		for i, c := range newcomers {
			if _, ok := hs.enter(c, tcpAddr(fmt.Sprintf("10.0.1.%d", i+1)), true); !ok {
				t.Errorf("newcomer %d refused", i)
			}
		}
	}()
	close(start)
	wg.Wait()
	stillIn := 0
	for i, p := range ps {
		switch {
		case !let[i] && !conns[i].closed:
			t.Errorf("connection %d refused by rekey but not shed", i)
		case let[i] && p.gone:
			// Let on, it is in the main pool, where nothing sheds here.
			t.Errorf("connection %d let on by rekey after it was shed", i)
		case let[i]:
			stillIn++
		}
	}
	if got, want := hs.count(), stillIn+len(newcomers); got != want {
		t.Errorf("count %d, want %d (%d let on, %d newcomers)", got, want, stillIn, len(newcomers))
	}
}

// TestHandshakesRekeyOwnAddressWhileShed: plain connections, rekeyed with
// the address they were accepted with (as the ingress does with every
// one), while newcomers from that address shed the oldest of them. Those
// not shed are let on; one refused was shed. Under the race detector this
// checks that rekey reads p.gone under the lock the shedder sets it
// under, on the path that leaves the connection as it is.
func TestHandshakesRekeyOwnAddressWhileShed(t *testing.T) {
	const n = 64
	clock := time.Unix(1_700_000_000, 0)             // fixed: read from every goroutine
	hs := newHandshakes(10*n, n, n, 0, discardLog()) // staleAfter 0: every handshake is stale
	hs.now = func() time.Time { return clock }
	conns := make([]*fakeConn, n)
	ps := make([]*pending, n)
	for i := range n {
		conns[i] = &fakeConn{name: fmt.Sprint(i)}
		p, ok := hs.enter(conns[i], tcpAddr("192.0.2.1"), false)
		if !ok {
			t.Fatalf("connection %d refused", i)
		}
		ps[i] = p
	}
	let := make([]bool, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			let[i] = hs.rekey(ps[i], ps[i].addr)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-start
		// The address is at its bound: each newcomer sheds its oldest.
		for i := range n / 2 {
			if _, ok := hs.enter(&fakeConn{name: fmt.Sprint("new", i)}, tcpAddr("192.0.2.1"), false); !ok {
				t.Errorf("newcomer %d refused", i)
			}
		}
	}()
	close(start)
	wg.Wait()
	for i := range n {
		shed := i < n/2 // the oldest half
		switch {
		case conns[i].closed != shed:
			t.Errorf("connection %d closed %v, want %v (the %d oldest are shed)", i, conns[i].closed, shed, n/2)
		case !let[i] && !shed:
			t.Errorf("connection %d refused by rekey but not shed", i)
		}
	}
	if got := hs.count(); got != n {
		t.Errorf("count %d, want %d", got, n)
	}
}
