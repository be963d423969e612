package broker

import (
	"container/heap"
	"container/list"
	"context"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/roosthub/roost/transport"
)

// Connections in handshake — accepted, not yet past their CONNECT (a TLS
// handshake, a PROXY header, a WebSocket upgrade, the CONNECT itself, its
// authentication) — cost a socket, a goroutine and buffers while they may
// be nobody's device at all. They are bounded three ways, so that one
// address or one tenant's endpoint cannot take the slots everybody else
// needs:
//
//   - per source address (an IPv6 address's /64: one host's share) — at
//     the bound the newcomer is refused, unless the address's oldest
//     handshake is stale (older than half the CONNECT timeout: no honest
//     device takes that long), which is closed to make room;
//   - per tenant endpoint (SNI <tenant>.<domain>, known once TLS is done)
//     — at the bound the oldest handshake of the endpoint's heaviest
//     address is closed if that address holds more than the newcomer's,
//     else as above;
//   - in all — likewise: the heaviest address pays, not the newcomer.
//
// Behind a balancer speaking the PROXY protocol (and on the forwarding
// port) the address a connection comes from is the balancer's (the
// forwarding node's) until its header is read: until then it waits in a
// pool of its own, as large as the main one, where at the bound the
// newcomer is refused unless the oldest is stale; once the header is read
// it enters the main pool as a newcomer from the address the header
// names.
//
// Attempts are bounded in rate too, per address and per endpoint, before
// any work is done for them: see attemptRate.
type handshakes struct {
	max, perAddress, perEndpoint int
	staleAfter                   time.Duration
	// addressRate and endpointRate bound connection attempts a second per
	// source address and per tenant endpoint; nil: no bound.
	addressRate, endpointRate *attemptRate
	log                       *slog.Logger
	now                       func() time.Time // time.Now; tests set it

	mu        sync.Mutex
	closed    bool
	all       pool                  // connections in handshake whose address is known
	waiting   pool                  // those whose PROXY or forwarding header is not read yet, by the balancer's address
	endpoints map[string]*pool      // those that reached a tenant's endpoint, by tenant
	byConn    map[net.Conn]*pending // every one counted, by the connection as accepted
	dropped   [nDropReasons]int64
	unlogged  [nDropReasons]int64
	lastLog   time.Time
}

// dropReason is why a connection in handshake was refused or closed.
type dropReason int

const (
	refusedPerAddress dropReason = iota
	shedPerAddress
	refusedPerEndpoint
	shedPerEndpoint
	refusedTotal
	shedTotal
	refusedAwaitingHeader
	shedAwaitingHeader
	refusedRatePerAddress  // over the attempt rate of its address, before any work
	refusedRatePerEndpoint // over the attempt rate of the endpoint its ClientHello names
	refusedNodeFull        // the node holds MaxNodeConnections (see nodelimit.go)
	nDropReasons
)

var dropReasonNames = [nDropReasons]string{"refused_per_address", "shed_per_address", "refused_per_endpoint", "shed_per_endpoint",
	"refused_total", "shed_total", "refused_awaiting_header", "shed_awaiting_header", "refused_rate_per_address", "refused_rate_per_endpoint",
	"refused_node_full"}

func (r dropReason) String() string { return dropReasonNames[r] }

func newHandshakes(max, perAddress, perEndpoint int, staleAfter time.Duration, log *slog.Logger) *handshakes {
	return &handshakes{
		max: max, perAddress: perAddress, perEndpoint: perEndpoint, staleAfter: staleAfter, log: log, now: time.Now,
		all:       newPool(),
		waiting:   newPool(),
		endpoints: map[string]*pool{},
		byConn:    map[net.Conn]*pending{},
	}
}

// pending is one connection in handshake.
type pending struct {
	source   string   // the key of the address it comes from
	addr     net.Addr // the address source was made from
	endpoint string   // the tenant endpoint it reached; "" if none
	start    time.Time
	// conn is what closing sheds it: the connection as accepted, below
	// TLS, so that closing never waits on a TLS alert.
	conn net.Conn
	// ctx ends when the handshake is over or shed: what the connection
	// waits on (its directory lookups, a delayed answer) ends with it.
	ctx     context.Context
	cancel  context.CancelFunc
	inAll   *list.Element // its place in its source's queue in all (or waiting)
	inEp    *list.Element // and in its endpoint's
	waiting bool          // for its PROXY or forwarding header: in waiting, not all
	gone    bool          // no longer counted
	// forwarded: it comes from another node of the fleet, which charged
	// the device's address its attempt (see attemptRate).
	forwarded bool
	// chargedSource and chargedEndpoint are the address and endpoint
	// whose attempt rates it took a token from, to give back if it
	// becomes a connection.
	chargedSource, chargedEndpoint string
}

// sourceOf is the key under which an address's handshakes are counted:
// the IPv4 address, or the /64 an IPv6 address is in (one host, or one
// subscriber's network, holds a whole /64).
func sourceOf(a net.Addr) string {
	if a == nil {
		return ""
	}
	var ip net.IP
	switch v := a.(type) {
	case *net.TCPAddr:
		ip = v.IP
	default:
		host, _, err := net.SplitHostPort(a.String())
		if err != nil {
			return a.String()
		}
		if ip = net.ParseIP(host); ip == nil {
			return host
		}
	}
	if ip4 := ip.To4(); ip4 != nil {
		return ip4.String()
	}
	return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
}

// sameAddr reports whether a and b are the same TCP address, by pointer:
// a connection's RemoteAddr returns the one it was accepted with each
// time. Other kinds of address are not compared (their dynamic types need
// not be comparable), and then the caller compares their sources.
func sameAddr(a, b net.Addr) bool {
	x, ok := a.(*net.TCPAddr)
	y, ok2 := b.(*net.TCPAddr)
	return ok && ok2 && x == y
}

// enter counts a new connection from addr, or refuses it (false: the
// caller closes it). conn is the connection as accepted. provisional says
// addr is a balancer's, until a PROXY header names the device's.
func (hs *handshakes) enter(conn net.Conn, addr net.Addr, provisional bool) (*pending, bool) {
	return hs.enterFrom(conn, addr, provisional, false)
}

// enterFrom is enter; forwarded says the connection comes from another
// node of the fleet (its header names the device).
func (hs *handshakes) enterFrom(conn net.Conn, addr net.Addr, provisional, forwarded bool) (*pending, bool) {
	source := sourceOf(addr)
	now := hs.now()
	hs.mu.Lock()
	if hs.closed {
		hs.mu.Unlock()
		return nil, false
	}
	// The attempt rate first: a refusal there costs nobody else a slot.
	if !provisional && !hs.addressRate.take(source, now) {
		hs.noteLocked(refusedRatePerAddress, source, now)
		hs.mu.Unlock()
		return nil, false
	}
	var shed []*pending
	var ok bool
	if provisional {
		shed, ok = hs.makeRoomLocked(&hs.waiting, source, now, -1, refusedAwaitingHeader, shedAwaitingHeader)
	} else {
		shed, ok = hs.makeRoomLocked(&hs.all, source, now, hs.perAddress, refusedTotal, shedTotal)
	}
	var p *pending
	if ok {
		ctx, cancel := context.WithCancel(context.Background())
		p = &pending{source: source, addr: addr, start: now, conn: conn, ctx: ctx, cancel: cancel, waiting: provisional, forwarded: forwarded}
		if provisional {
			p.inAll = hs.waiting.add(p)
		} else {
			p.inAll = hs.all.add(p)
			if hs.addressRate != nil {
				p.chargedSource = source
			}
		}
		hs.byConn[conn] = p
	}
	hs.mu.Unlock()
	closeAll(shed)
	return p, ok
}

// makeRoomLocked makes room in pl (all, or waiting) for a connection from
// source, or says it is refused: at perAddress (-1: none) the source's
// oldest is closed if stale; when pl is full, the victim victimLocked
// picks. It returns what it dropped, to be closed outside the lock.
func (hs *handshakes) makeRoomLocked(pl *pool, source string, now time.Time, perAddress int, refused, shedFull dropReason) ([]*pending, bool) {
	var shed []*pending
	if perAddress >= 0 && pl.count(source) >= perAddress {
		old := pl.oldest(source)
		if !hs.stale(old, now) {
			hs.noteLocked(refusedPerAddress, source, now)
			return shed, false
		}
		hs.dropLocked(old)
		hs.noteLocked(shedPerAddress, source, now)
		shed = append(shed, old)
	}
	if pl.n >= hs.max {
		victim := hs.victimLocked(pl, source, now)
		if victim == nil {
			hs.noteLocked(refused, source, now)
			return shed, false
		}
		hs.dropLocked(victim)
		hs.noteLocked(shedFull, victim.source, now)
		shed = append(shed, victim)
	}
	return shed, true
}

// victimLocked picks the connection to close so that one from source may
// enter a full pool: the oldest of the heaviest address, if it holds
// more than source does; else source's own oldest, if it is stale; else
// none, and the newcomer is refused.
func (hs *handshakes) victimLocked(pl *pool, source string, now time.Time) *pending {
	if top := pl.heaviest(); top != nil && top.q.Len() > pl.count(source) {
		return top.q.Front().Value.(*pending)
	}
	if old := pl.oldest(source); hs.stale(old, now) {
		return old
	}
	return nil
}

func (hs *handshakes) stale(p *pending, now time.Time) bool {
	return p != nil && now.Sub(p.start) >= hs.staleAfter
}

// rekey counts p under the address a PROXY or forwarding header named,
// as a newcomer there; false if it is refused, or was shed meanwhile (the
// caller closes it).
//
// A connection counted under the very address it is asked about (a plain
// TCP connection: every connection the ingress handles is asked) is left
// as it is without formatting the address again.
//
// A shed connection is closed below its wrappers, but what a wrapper read
// before that is still read from it: a PROXY header's reader holds the
// CONNECT that came with the header. Let on, it would be authenticated
// with p still under the balancer's address, where its failure would be
// counted against everyone behind the balancer. p.gone is read under
// hs.mu, which the shedder holds to set it. leave sets it too, once the
// handshake is over or the connection closed: no caller rekeys after.
func (hs *handshakes) rekey(p *pending, addr net.Addr) bool {
	hs.mu.Lock()
	if p.gone {
		hs.mu.Unlock()
		return false
	}
	if !p.waiting && sameAddr(addr, p.addr) {
		hs.mu.Unlock()
		return true
	}
	hs.mu.Unlock()
	source := sourceOf(addr)
	now := hs.now()
	hs.mu.Lock()
	if p.gone {
		hs.mu.Unlock()
		return false
	}
	if !p.waiting && source == p.source {
		hs.mu.Unlock()
		return true
	}
	// The device's address is known now: its attempt rate (unless
	// another node charged it, forwarding the connection).
	if p.waiting && !p.forwarded {
		if !hs.addressRate.take(source, now) {
			hs.dropLocked(p)
			hs.noteLocked(refusedRatePerAddress, source, now)
			hs.mu.Unlock()
			return false
		}
		if hs.addressRate != nil {
			p.chargedSource = source
		}
	}
	endpoint := p.endpoint
	hs.unlinkLocked(p)
	shed, ok := hs.makeRoomLocked(&hs.all, source, now, hs.perAddress, refusedTotal, shedTotal)
	if ok {
		p.source, p.addr, p.waiting = source, addr, false
		p.inAll = hs.all.add(p)
		if endpoint != "" {
			p.endpoint = endpoint
			p.inEp = hs.endpoint(endpoint).add(p)
		}
	} else {
		p.gone = true
		delete(hs.byConn, p.conn)
	}
	hs.mu.Unlock()
	closeAll(shed)
	return ok
}

// endpoint is the pool of a tenant's endpoint, made if need be.
func (hs *handshakes) endpoint(tenant string) *pool {
	ep := hs.endpoints[tenant]
	if ep == nil {
		np := newPool()
		ep = &np
		hs.endpoints[tenant] = ep
	}
	return ep
}

// enterEndpoint counts p against the tenant endpoint it reached; false if
// it is refused there (the caller closes it).
func (hs *handshakes) enterEndpoint(p *pending, tenant string) bool {
	now := hs.now()
	hs.mu.Lock()
	if p.gone || p.inEp != nil {
		hs.mu.Unlock()
		return true
	}
	ep := hs.endpoint(tenant)
	var shed []*pending
	if ep.n >= hs.perEndpoint {
		victim := hs.victimLocked(ep, p.source, now)
		if victim == nil {
			hs.dropLocked(p)
			hs.noteLocked(refusedPerEndpoint, p.source, now)
			if ep.n == 0 {
				delete(hs.endpoints, tenant)
			}
			hs.mu.Unlock()
			return false
		}
		hs.dropLocked(victim)
		hs.noteLocked(shedPerEndpoint, victim.source, now)
		shed = append(shed, victim)
	}
	p.endpoint = tenant
	p.inEp = hs.endpoint(tenant).add(p)
	hs.mu.Unlock()
	closeAll(shed)
	return true
}

// leave stops counting p: its handshake is over, whatever the outcome. A
// second leave does nothing.
func (hs *handshakes) leave(p *pending) {
	hs.mu.Lock()
	if !p.gone {
		hs.dropLocked(p)
	}
	hs.mu.Unlock()
	p.cancel()
}

// dropLocked stops counting p.
func (hs *handshakes) dropLocked(p *pending) {
	hs.unlinkLocked(p)
	p.gone = true
	delete(hs.byConn, p.conn)
}

// unlinkLocked takes p out of every pool it is in.
func (hs *handshakes) unlinkLocked(p *pending) {
	if p.waiting {
		hs.waiting.remove(p, p.inAll)
	} else {
		hs.all.remove(p, p.inAll)
	}
	p.inAll = nil
	if p.inEp != nil {
		ep := hs.endpoints[p.endpoint]
		ep.remove(p, p.inEp)
		if ep.n == 0 {
			delete(hs.endpoints, p.endpoint)
		}
		p.inEp, p.endpoint = nil, ""
	}
}

// closeAll closes connections dropped to make room, outside the lock.
func closeAll(ps []*pending) {
	for _, p := range ps {
		p.cancel()
		p.conn.Close()
	}
}

// noteLocked counts a refusal or a shed connection, and logs the first
// and then a summary at most once a minute: a flood is logged, one line
// a minute, not one per connection.
func (hs *handshakes) noteLocked(r dropReason, source string, now time.Time) {
	hs.dropped[r]++
	hs.unlogged[r]++
	if now.Sub(hs.lastLog) < time.Minute {
		return
	}
	hs.lastLog = now
	attrs := []any{"last_source", source, "in_handshake", hs.all.n}
	if top := hs.all.heaviest(); top != nil {
		attrs = append(attrs, "heaviest_source", top.key, "heaviest_count", top.q.Len())
	}
	for i, n := range hs.unlogged {
		if n > 0 {
			attrs = append(attrs, dropReason(i).String(), n)
		}
	}
	hs.unlogged = [nDropReasons]int64{}
	hs.log.Warn("connections in handshake refused or closed to make room, or attempts refused over their rate (a flood, or a bound too low; counts since the last such line)", attrs...)
}

// refuseNodeFull counts a connection refused because the node holds as
// many as it may (see nodelimit.go).
func (hs *handshakes) refuseNodeFull(addr net.Addr) {
	now := hs.now()
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.noteLocked(refusedNodeFull, sourceOf(addr), now)
}

// close sheds every connection in handshake and refuses new ones.
func (hs *handshakes) close() {
	hs.mu.Lock()
	hs.closed = true
	var ps []*pending
	for _, pl := range []*pool{&hs.all, &hs.waiting} {
		for _, sq := range pl.sources {
			for e := sq.q.Front(); e != nil; e = e.Next() {
				ps = append(ps, e.Value.(*pending))
			}
		}
	}
	for _, p := range ps {
		hs.dropLocked(p)
	}
	hs.mu.Unlock()
	closeAll(ps)
}

// count is the number of connections in handshake.
func (hs *handshakes) count() int {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	return hs.all.n + hs.waiting.n
}

// drops returns how many connections were refused or shed, by reason,
// since the start.
func (hs *handshakes) drops() [nDropReasons]int64 {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	return hs.dropped
}

// pool is a set of connections in handshake grouped by source address,
// which can name the address holding the most.
type pool struct {
	n       int
	sources map[string]*sourceQueue
	heap    sourceHeap
}

// sourceQueue is one address's connections in a pool, oldest first.
type sourceQueue struct {
	key   string
	q     list.List // of *pending
	index int       // in the pool's heap
}

func newPool() pool { return pool{sources: map[string]*sourceQueue{}} }

func (pl *pool) count(source string) int {
	if sq := pl.sources[source]; sq != nil {
		return sq.q.Len()
	}
	return 0
}

func (pl *pool) oldest(source string) *pending {
	if sq := pl.sources[source]; sq != nil {
		return sq.q.Front().Value.(*pending)
	}
	return nil
}

// heaviest is the address holding the most connections (of those that
// hold as many, the one with the oldest); nil if the pool is empty.
func (pl *pool) heaviest() *sourceQueue {
	if len(pl.heap) == 0 {
		return nil
	}
	return pl.heap[0]
}

func (pl *pool) add(p *pending) *list.Element {
	sq := pl.sources[p.source]
	if sq == nil {
		sq = &sourceQueue{key: p.source}
		pl.sources[p.source] = sq
		e := sq.q.PushBack(p)
		heap.Push(&pl.heap, sq)
		pl.n++
		return e
	}
	e := sq.q.PushBack(p)
	heap.Fix(&pl.heap, sq.index)
	pl.n++
	return e
}

func (pl *pool) remove(p *pending, e *list.Element) {
	sq := pl.sources[p.source]
	if sq == nil || e == nil {
		return
	}
	sq.q.Remove(e)
	pl.n--
	if sq.q.Len() == 0 {
		heap.Remove(&pl.heap, sq.index)
		delete(pl.sources, p.source)
		return
	}
	heap.Fix(&pl.heap, sq.index)
}

// sourceHeap orders addresses by how many connections they hold, most
// first, then by their oldest connection, oldest first.
type sourceHeap []*sourceQueue

func (h sourceHeap) Len() int { return len(h) }
func (h sourceHeap) Less(i, j int) bool {
	a, b := h[i], h[j]
	if a.q.Len() != b.q.Len() {
		return a.q.Len() > b.q.Len()
	}
	return a.q.Front().Value.(*pending).start.Before(b.q.Front().Value.(*pending).start)
}
func (h sourceHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *sourceHeap) Push(x any) {
	sq := x.(*sourceQueue)
	sq.index = len(*h)
	*h = append(*h, sq)
}
func (h *sourceHeap) Pop() any {
	old := *h
	sq := old[len(old)-1]
	*h = old[:len(old)-1]
	return sq
}

// gate counts the connections a listener accepts as in handshake from the
// moment they are accepted: see Hub.Gate.
type gate struct {
	net.Listener
	hs *handshakes
	in *ingress
}

// Gate returns ln counting each connection it accepts as in handshake at
// once, bounded like the connections Serve accepts. Give it the listeners
// whose connections do work before the hub sees them: below TLS on a port
// shared with WebSocket (transport.Split does the TLS handshake itself),
// and below the WebSocket servers (whose connections reach ServeConn only
// after TLS and the HTTP upgrade). The count ends when the hub is done
// with the handshake, or the connection is closed before.
func (h *Hub) Gate(ln net.Listener) net.Listener { return &gate{Listener: ln, hs: h.in.hs, in: h.in} }

func (g *gate) Accept() (net.Conn, error) {
	for {
		c, err := g.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if g.in.full() {
			g.hs.refuseNodeFull(physical(c).RemoteAddr())
			refuse(c)
			continue
		}
		provisional := transport.HeaderPending(c)
		p, ok := g.hs.enterFrom(c, physical(c).RemoteAddr(), provisional, transport.Forwarding(c))
		if !ok {
			refuse(c)
			continue
		}
		gc := &gatedConn{Conn: c, p: p, hs: g.hs}
		gc.rekeyed.Store(!provisional)
		return gc, nil
	}
}

// gatedConn is a connection a gate counts until the hub is done with its
// handshake or it closes.
type gatedConn struct {
	net.Conn
	p       *pending
	hs      *handshakes
	rekeyed atomic.Bool // counted under its own address, not its balancer's
}

// Read moves the count to the device's address once the first read has
// read its PROXY header.
func (c *gatedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if !c.rekeyed.Load() && !transport.HeaderPending(c.Conn) {
		c.rekeyed.Store(true)
		if !c.hs.rekey(c.p, c.Conn.RemoteAddr()) {
			c.Conn.Close()
			return 0, net.ErrClosed
		}
	}
	return n, err
}

func (c *gatedConn) Close() error {
	c.hs.leave(c.p)
	return c.Conn.Close()
}

// NetConn is the connection the listener accepted.
func (c *gatedConn) NetConn() net.Conn { return c.Conn }

// gatedBelow finds the gate's count under a connection's wrappers.
func gatedBelow(c net.Conn) *gatedConn {
	for c != nil {
		if g, ok := c.(*gatedConn); ok {
			return g
		}
		c = transport.Unwrap(c)
	}
	return nil
}

// physical is the connection under every wrapper: the one to close to end
// a connection at once, and whose address is known without reading.
func physical(c net.Conn) net.Conn {
	for {
		next := transport.Unwrap(c)
		if next == nil {
			return c
		}
		c = next
	}
}
