package broker

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/roosthub/roost/broker/fabric"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// Config is what the data plane needs.
type Config struct {
	Directory Directory
	// Changes delivers the directory's committed changes; nil means none
	// (entries then live for CacheTTL).
	Changes interface {
		Subscribe(func(tenants.Change)) (cancel func())
	}
	Log *slog.Logger

	// ConnectTimeout bounds the wait for the first packet: 10s if zero.
	ConnectTimeout time.Duration
	// MaxConnectSize caps the first packet before it is read: 512 KiB if
	// zero (room for 64 KiB usernames and passwords and a Will).
	MaxConnectSize int
	// WriteTimeout bounds each write to a client: 5s if zero.
	WriteTimeout time.Duration
	// IdleTimeout is how long an instance with nothing in it stays up: 5m
	// if zero.
	IdleTimeout time.Duration
	// MaxHandshakes bounds connections not yet past CONNECT (a TLS
	// handshake, a PROXY header, the CONNECT, its authentication): 10,000
	// if zero. When they are all taken, the oldest handshake of the
	// address holding the most is closed to make room (see handshakes).
	MaxHandshakes int
	// MaxNodeConnections bounds the device connections this node holds at
	// once, in handshake, served or forwarded: past it a connection is
	// closed as it is accepted (see nodelimit.go). Zero: the process's
	// open-file limit less a reserve (a tenth of it, 64 to 2,048);
	// negative: no bound.
	MaxNodeConnections int
	// HandshakesPerAddress bounds those from one source address (an IPv6
	// address's /64): 256 if zero. A fleet behind one NAT connects that
	// many devices at once, and more as each handshake ends.
	HandshakesPerAddress int
	// HandshakesPerEndpoint bounds those that reached one tenant's own
	// endpoint (SNI <tenant>.<Domain>): 2,500 if zero, a quarter of the
	// default MaxHandshakes, so that a flood aimed at one tenant leaves
	// the rest to the others.
	HandshakesPerEndpoint int
	// HandshakeRatePerAddress bounds the connection attempts a second from
	// one source address, with bursts of HandshakeBurstPerAddress: 100
	// and 500 if zero; a negative rate is no bound. Attempts over it are
	// closed as they are accepted, before anything is read (see
	// attemptRate); an attempt that becomes a connection gives its token
	// back.
	HandshakeRatePerAddress, HandshakeBurstPerAddress int
	// HandshakeRatePerEndpoint and HandshakeBurstPerEndpoint bound those
	// to one tenant's own endpoint, checked at the TLS ClientHello of the
	// listeners given Hub.TLSConfig: 500 a second and 2,500 if zero;
	// negative: no bound.
	HandshakeRatePerEndpoint, HandshakeBurstPerEndpoint int
	// MaxWatches bounds a tenant's open live views (the console's), and
	// MaxWatchesEach one person's: 20 and 3 if zero.
	MaxWatches, MaxWatchesEach int
	// CacheSize and CacheTTL shape the directory cache: 100,000 devices and
	// 5 minutes if zero.
	CacheSize int
	CacheTTL  time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Sessions keeps persistent sessions, their queues and retained
	// messages across restarts; nil keeps them in memory only.
	Sessions SessionStore
	// Events receives lifecycle events; nil discards them.
	Events events.Sink
	// Exporter writes messages matching export rules to Kafka; nil leaves
	// export rules without effect.
	Exporter Exporter
	// Delivery delivers the messages matching rules with a destination
	// (webhooks) through outboxes in Sessions (outbox.go); nil, or no
	// Sessions, leaves such rules without effect.
	Delivery *Delivery
	// Usage records metered usage; nil counts it in memory only.
	Usage UsageStore
	// UsageInterval is how often usage is recorded: 1s if zero.
	UsageInterval time.Duration
	// Domain gives each tenant an endpoint of its own: a TLS connection
	// whose SNI is <tenant>.<Domain> belongs to that tenant before its
	// CONNECT, its username may be just the device's name, and a username
	// naming another tenant is refused. Empty: off.
	Domain string
	// WillsOnShutdown sends the Wills of the clients a closing hub
	// disconnects. Off by default: a server going away is not the device
	// going away, and its session resumes on another node.
	WillsOnShutdown bool
	// Cluster places tenants on the nodes of a fleet; nil runs every
	// tenant here.
	Cluster Cluster
	// Fabric spreads every tenant over the nodes of a fleet (see
	// spread.go): clean sessions are served on the node they connect to,
	// persistent ones at the tenant's home (the node the Cluster places it
	// on). nil: a tenant runs on its home alone. It needs a shared
	// session store.
	Fabric fabric.Node
	// FabricHome, without a Cluster, makes this hub the home of every
	// tenant it spreads (for tests of a fleet without one).
	FabricHome bool
	// SpreadAll serves every tenant on every node of the fleet (with a
	// Fabric). Otherwise a tenant is served by its home alone until its
	// connections there pass WidenAt and its max_nodes quota is above one,
	// when it widens to that many nodes (see wide.go); 0 never widens.
	SpreadAll bool
	WidenAt   int
}

// sessionsAnywhere reports whether a spread tenant's persistent sessions
// live on any node: the fabric routes to them, and there is a shared
// session store.
func (h *Hub) sessionsAnywhere() bool {
	s, ok := h.cfg.Fabric.(interface{ Sessions() bool })
	return ok && s.Sessions() && h.cfg.Sessions != nil
}

// fabricHome reports whether this node is the spread tenant's home.
func (h *Hub) fabricHome(tenant string) bool {
	if h.cfg.Cluster == nil {
		return h.cfg.FabricHome
	}
	return h.cfg.Cluster.Holds(tenant)
}

// Hub is the data plane of one node. It is made of parts, each a type of
// its own: the ingress takes device connections to their tenant's broker
// (ingress.go), the registry runs the tenants' brokers (registry.go), the
// forwarder sends connections to another node of a fleet (forward.go), the
// change applier applies directory changes to live connections
// (changes.go). The hub puts them together, answers the control plane
// (control.go), meters usage (meter.go), publishes events (events.go) and
// exports metrics (metrics.go).
type Hub struct {
	cfg Config
	log *slog.Logger
	dir *directoryCache
	now func() time.Time

	in      *ingress
	reg     *registry
	fwd     *forwarder // nil outside a fleet
	changes *changeApplier

	cancelSub func()
	closeOnce sync.Once
	// done is closed as the hub closes; wg counts its own goroutines.
	done chan struct{}
	wg   sync.WaitGroup

	eventPubs     chan events.Event
	eventsDropped atomic.Int64
	// eventExports is the events waiting for the operator's Kafka (nil
	// without an Exporter; export.go).
	eventExports chan eventExport
	// eventShares is each tenant's share of it (maxTenantEventExports).
	eventShares eventShares
	// dormant is the suspended tenants' outboxes delivering without their
	// brokers (tenant → *dormantOutbox; outbox_suspended.go).
	dormant   sync.Map
	dormantMu sync.Mutex
	// widenFailed is when this node last failed to widen each tenant
	// (wide.go).
	widenFailed sync.Map
	// fencedWrites counts session-store writes refused because another
	// owner had claimed the session.
	fencedWrites atomic.Int64
	// leaseRefused counts publishes refused while this node's lease may
	// have lapsed (see Cluster.Serving).
	leaseRefused atomic.Int64

	meters sync.Map // tenant → *meter
	// limitsOff skips the publish quotas and metering: only for the
	// benchmark that measures what they cost.
	limitsOff bool
	// denialWindow is how often a device's denied publishes to one topic
	// raise an event (nanoseconds; denialEvery but in tests).
	denialWindow atomic.Int64

	seenMu sync.Mutex
	seen   map[deviceKey]time.Time // last-seen times not yet written
}

// New starts the data plane; Serve gives it listeners.
func New(cfg Config) (*Hub, error) {
	if cfg.Directory == nil {
		return nil, errors.New("broker: no directory")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Events == nil {
		cfg.Events = discard{}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&cfg.ConnectTimeout, 10*time.Second)
	def(&cfg.WriteTimeout, 5*time.Second)
	def(&cfg.IdleTimeout, 5*time.Minute)
	def(&cfg.CacheTTL, 5*time.Minute)
	def(&cfg.UsageInterval, time.Second)
	if cfg.MaxConnectSize == 0 {
		cfg.MaxConnectSize = 512 << 10
	}
	if cfg.MaxHandshakes == 0 {
		cfg.MaxHandshakes = 10_000
	}
	if cfg.HandshakesPerAddress == 0 {
		cfg.HandshakesPerAddress = 256
	}
	if cfg.MaxNodeConnections == 0 {
		cfg.MaxNodeConnections = defaultNodeConnections(openFileLimit())
	}
	if cfg.HandshakesPerEndpoint == 0 {
		cfg.HandshakesPerEndpoint = 2_500
	}
	for _, r := range []struct {
		rate, burst *int
		defRate     int
		defBurst    int
	}{{&cfg.HandshakeRatePerAddress, &cfg.HandshakeBurstPerAddress, 100, 500}, {&cfg.HandshakeRatePerEndpoint, &cfg.HandshakeBurstPerEndpoint, 500, 2_500}} {
		if *r.rate == 0 {
			*r.rate = r.defRate
		}
		if *r.burst <= 0 {
			*r.burst = r.defBurst
		}
	}
	if cfg.MaxWatches == 0 {
		cfg.MaxWatches = 20
	}
	if cfg.MaxWatchesEach == 0 {
		cfg.MaxWatchesEach = 3
	}
	if cfg.CacheSize == 0 {
		cfg.CacheSize = 100_000
	}
	h := &Hub{
		cfg:       cfg,
		log:       cfg.Log,
		dir:       newDirectoryCache(cfg.Directory, cfg.CacheSize, cfg.CacheTTL, cfg.ConnectTimeout, cfg.Now),
		now:       cfg.Now,
		eventPubs: make(chan events.Event, 4096),
		done:      make(chan struct{}),
		seen:      map[deviceKey]time.Time{},
	}
	h.denialWindow.Store(int64(denialEvery))
	h.reg = newRegistry(cfg, func(t tenants.Tenant) (*instance, error) {
		h.wakeTenant(t.Slug) // its dormant outboxes, if suspended until now
		return newInstance(h, t)
	})
	h.changes = newChangeApplier(cfg, h.dir, h.reg)
	h.changes.exportChanged = func(tenant string) {
		// A suspended tenant's outboxes deliver its events by its rules,
		// and keep its destinations' policies: they read them again.
		if v, ok := h.dormant.Load(tenant); ok {
			v.(*dormantOutbox).o.forget()
		}
	}
	if cfg.Cluster != nil {
		h.fwd = newForwarder(cfg, h.dir, h.done)
		h.fwd.running = func(tenant string) bool { return h.reg.running(tenant) != nil }
		h.fwd.anywhere = h.cfg.Fabric != nil && h.sessionsAnywhere()
		h.fwd.runningWide = func(tenant string) bool {
			inst := h.reg.running(tenant)
			return inst != nil && inst.spread
		}
	}
	h.reg.wide = h.wide
	if h.mayWiden() {
		h.reg.connected = h.maybeWiden
	}
	h.in = &ingress{
		cfg: cfg, log: cfg.Log, now: cfg.Now, dir: h.dir, reg: h.reg, fwd: h.fwd, done: h.done,
		hs:   newHandshakes(cfg.MaxHandshakes, cfg.HandshakesPerAddress, cfg.HandshakesPerEndpoint, cfg.ConnectTimeout/2, cfg.Log),
		auth: newAuthLimit(cfg.Now),
		emit: h.emit, meterOf: h.meterOf, quotaHit: h.quotaHit,
		lingering: make(chan struct{}, maxLingering),
	}
	h.in.hs.addressRate = newAttemptRate(cfg.HandshakeRatePerAddress, cfg.HandshakeBurstPerAddress)
	h.in.hs.endpointRate = newAttemptRate(cfg.HandshakeRatePerEndpoint, cfg.HandshakeBurstPerEndpoint)
	if cfg.Changes != nil {
		h.cancelSub = cfg.Changes.Subscribe(h.changes.onChange)
	}
	h.wg.Add(2)
	go h.publishEvents()
	if cfg.Exporter != nil {
		h.eventExports = make(chan eventExport, maxEventExports)
		h.wg.Add(1)
		go h.exportEvents()
	}
	go func() {
		defer h.wg.Done()
		h.changes.run(h.done)
	}()
	h.every(min(h.cfg.IdleTimeout/2, 30*time.Second), h.reapIdle)
	h.every(time.Second, h.flushSeen)
	h.every(time.Second, h.sweep)
	if h.cfg.Cluster != nil && h.cfg.Fabric != nil && !h.cfg.SpreadAll {
		h.every(spreadEvery, h.checkSpread)
	}
	h.wg.Go(h.recordUsageLoop)
	if d := h.cfg.Delivery; d != nil && h.cfg.Sessions != nil {
		h.wg.Go(h.resumeOutboxes) // at once, for what a restart left
		h.every(cmp.Or(d.Resume, 30*time.Second), h.resumeOutboxes)
	}
	return h, nil
}

// Close stops accepting, disconnects every client and stops every instance.
// A second Close does nothing.
func (h *Hub) Close() error {
	h.closeOnce.Do(func() {
		close(h.done)
		now := h.now()
		h.meters.Range(func(_, v any) bool { v.(*meter).accrue(now); return true })
		h.reg.refuse()
		h.in.close()
		if h.fwd != nil {
			h.fwd.close()
		}
		if h.cancelSub != nil {
			h.cancelSub()
		}
		h.reg.close()
		h.closeDormant()
		h.in.wait()
		h.wg.Wait()
		// What was noted since the last flushes.
		h.flushSeen()
		h.flushUsage(true)
	})
	return nil
}

// Serve accepts MQTT connections on ln until Close. It returns nil once the
// hub is closed.
func (h *Hub) Serve(ln net.Listener) error { return h.in.serve(ln) }

// ServeConn serves one device connection that arrived some other way than
// a listener given to Serve (MQTT over WebSocket), and returns when it ends.
func (h *Hub) ServeConn(conn net.Conn) { h.in.serveConn(conn) }

// every runs fn every d until the hub closes.
func (h *Hub) every(d time.Duration, fn func()) {
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		tick := time.NewTicker(d)
		defer tick.Stop()
		for {
			select {
			case <-h.done:
				return
			case <-tick.C:
				fn()
			}
		}
	}()
}

// reapIdle stops the instances that have held nothing for the idle
// timeout, and has the others check their connected sessions (see
// reconcile).
func (h *Hub) reapIdle() {
	h.reg.reapIdle()
	h.reapDormant()
	for _, inst := range h.reg.all() {
		if inst.persist != nil {
			inst.persist.sweep(time.Now().Add(-time.Minute), inst.catchUp) // mochi's clock: the wall clock
		}
		inst.resyncRoutes()
		if inst.anywhere && h.cfg.Cluster != nil && !h.cfg.Cluster.Holds(inst.tenant) {
			// The home may have stopped (idle) or died while this node
			// still serves the tenant: one node keeps it (and ends its
			// sessions that expire), whoever takes it first.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			h.cfg.Cluster.Place(ctx, inst.tenant, true)
			cancel()
		}
		if h.fabricHome(inst.tenant) {
			inst.expireAway(time.Now())
		}
	}
}

// Handshakes is the number of connections not yet past their CONNECT.
func (h *Hub) Handshakes() int { return h.in.hs.count() }

// Instances is the number of running tenant brokers.
func (h *Hub) Instances() int { return h.reg.count() }

type discard struct{}

func (discard) Emit(events.Event) {}

// qualifies checks an admitted connection against the directory as it is
// now (see directoryCache.qualifies), returning the refusal if it no longer
// qualifies; a directory that does not answer refuses it as unavailable.
func (h *Hub) qualifies(id identity, clientID string) *refusal {
	// Each directory read it may wait for is bounded by the CONNECT
	// timeout (see lookup); an answer from the cache sets no timer.
	ref, err := h.dir.qualifies(context.Background(), id, clientID)
	if err != nil {
		return &serverUnavailable
	}
	return ref
}
