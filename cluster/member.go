package cluster

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/internal/lru"
	"github.com/roosthub/roost/tenants"
)

// A node announces itself every announceEvery and counts as up for
// liveFor after it last did; it reads the node list every refreshEvery.
const (
	announceEvery = 3 * time.Second
	liveFor       = tenants.NodeLiveFor
	refreshEvery  = time.Second
)

// Member is a data-plane node's part in the fleet: it announces the node,
// and places tenants (broker.Cluster). A tenant's home is the node holding
// its row in the store; a tenant without a live home goes to the node that
// ranks first for it by rendezvous hashing over the nodes up and not
// draining, so that every node agrees without talking, and a node joining
// or leaving moves only its own share. A home keeps its tenants while it
// lives (no rebalancing: a tenant moves when its broker stops for being
// idle, or when its home drains or dies).
type Member struct {
	cfg    MemberConfig
	key    []byte
	client *http.Client

	stripes [64]sync.Mutex // one per tenant hash: a tenant's claim and release do not interleave
	liveMu  sync.Mutex     // see liveForwarders

	mu          sync.Mutex
	held        map[string]bool
	nodes       []tenants.Node // up, as last read
	nodesRead   time.Time
	forwardedTo map[string]bool // nodes this one forwarded connections to
	// homes are the tenants' homes as last read, for while Postgres does
	// not answer: a tenant living on a node still up is still forwarded.
	homes *lru.Cache[string, string]
	// wide are the tenants served by several nodes as last read, this one
	// among them or not (see Wide).
	wide map[string]tenants.Placement
	// live are the nodes liveForwarders last read, at liveAt.
	live   []tenants.Node
	liveAt time.Time
	// outside counts the Spread checks in a row that found this node
	// outside a wide tenant's set.
	outside  map[string]int
	draining bool
	onLost   func(tenant string)
	stop     context.CancelFunc
	stopped  chan struct{}

	// base is the origin of the monotonic clock the lease is measured on;
	// leaseUntil is when, on it, the node's lease may lapse (with Leases).
	base       time.Time
	leaseUntil atomic.Int64
	// fencedAt counts the times this node found its lease lapsed.
	lapses atomic.Int64
}

// MemberConfig is what a Member needs.
type MemberConfig struct {
	Store *tenants.Store
	ID    string
	// URL is where control planes and other nodes reach the node's
	// internal API; ForwardAddr is where other nodes forward device
	// connections to it.
	URL, ForwardAddr string
	// Token is the operator token: it authorises calls to the internal
	// API, and the key signing forwarded connections derives from it.
	Token string
	Log   *slog.Logger
	Now   func() time.Time
	// Leases, if set, are the nodes' leases (see Leases): the node serves
	// only while its own is current, and takes over a tenant only once its
	// home's is gone. Without them a node counts as up for liveFor after
	// it last announced itself in the directory.
	Leases Leases
}

// NewMember returns the node's Member; Start announces it.
func NewMember(cfg MemberConfig) *Member {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Member{cfg: cfg, key: ForwardKey(cfg.Token), held: map[string]bool{}, forwardedTo: map[string]bool{}, wide: map[string]tenants.Placement{}, outside: map[string]int{},
		homes: lru.New[string, string](100_000), client: &http.Client{Timeout: callTimeout}, base: time.Now()}
}

var _ broker.Cluster = (*Member)(nil)

// ForwardKey is the key forwarded connections are signed with, derived
// from the operator token every node of a fleet has.
func ForwardKey(token string) []byte {
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte("roost: forwarded device connections"))
	return m.Sum(nil)
}

// OnLost sets what to do with a tenant this node finds another node holds
// (it was taken for dead meanwhile): stop its broker here.
func (m *Member) OnLost(fn func(tenant string)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.onLost = fn
}

// Start announces the node now, then keeps announcing it, reading the
// node list and checking its claims until Retire.
func (m *Member) Start(ctx context.Context) error {
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err := m.announce(actx)
	if err == nil {
		err = m.refresh(actx)
	}
	if err == nil && m.cfg.Leases != nil {
		err = m.renewLease(actx)
	}
	cancel()
	if err != nil {
		return fmt.Errorf("announce this data-plane node: %w", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	m.mu.Lock()
	m.stop, m.stopped = stop, stopped
	m.mu.Unlock()
	var wg sync.WaitGroup
	wg.Go(func() { m.run(ctx) })
	if m.cfg.Leases != nil {
		wg.Go(func() { m.renewLeases(ctx) })
	}
	go func() {
		wg.Wait()
		close(stopped)
	}()
	return nil
}

// leaseMargin is how long before its lease's end, as the node measures
// it, the node stops serving: room for the clocks' drift over a lease.
const leaseMargin = 500 * time.Millisecond

// mono is the time on the node's monotonic clock.
func (m *Member) mono() time.Duration { return time.Since(m.base) }

// renewLease renews the node's lease and, measured from before it asked,
// serves until the lease may lapse.
func (m *Member) renewLease(ctx context.Context) error {
	asked := m.mono()
	if err := m.cfg.Leases.Renew(ctx, m.cfg.ID); err != nil {
		return err
	}
	m.leaseUntil.Store(int64(asked + m.cfg.Leases.Time() - leaseMargin))
	return nil
}

// renewLeases renews the lease four times per lease, apart from the
// directory's loop: Postgres away must not stop a node. A node that finds
// its lease lapsed (paused, or cut off from Redis) renews it, waits for a
// takeover decided meanwhile to be written, and reads its claims again
// before it serves: it stops the tenants it lost first. Until the directory
// answers it stays fenced.
func (m *Member) renewLeases(ctx context.Context) {
	every := m.cfg.Leases.Time() / 4
	tick := time.NewTicker(every)
	defer tick.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		lapsed := !m.Serving()
		asked := m.mono()
		rctx, cancel := context.WithTimeout(ctx, every)
		err := m.cfg.Leases.Renew(rctx, m.cfg.ID)
		cancel()
		if err != nil {
			if !failing && ctx.Err() == nil {
				m.cfg.Log.Warn("this node cannot renew its lease; it serves its tenants until the lease may lapse, then acknowledges nothing until it renews it", "err", err)
				failing = true
			}
			continue
		}
		if failing {
			m.cfg.Log.Info("this node renews its lease again")
			failing = false
		}
		if lapsed {
			m.lapses.Add(1)
			m.cfg.Log.Warn("this node's lease had lapsed: it reads its claims again before it serves")
			sleep(ctx, every)
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := m.checkClaims(cctx)
			if err == nil {
				err = m.renewLease(cctx) // measured afresh, after the wait
			}
			cancel()
			if err != nil {
				m.cfg.Log.Warn("this node's lease had lapsed and it cannot yet tell which tenants it still holds: it stays fenced", "err", err)
			}
			continue
		}
		m.leaseUntil.Store(int64(asked + m.cfg.Leases.Time() - leaseMargin))
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// Serving reports whether the node may serve its tenants now: without
// leases always; with them while its own lease is current, as it measures
// it (see Leases).
func (m *Member) Serving() bool {
	return m.cfg.Leases == nil || int64(m.mono()) < m.leaseUntil.Load()
}

// Lapses is how many times this node found its lease lapsed.
func (m *Member) Lapses() int64 { return m.lapses.Load() }

func (m *Member) run(ctx context.Context) {
	refresh := time.NewTicker(refreshEvery)
	defer refresh.Stop()
	lastAnnounce := m.cfg.Now()
	failing := false // logged once per outage, not once a second
	for {
		select {
		case <-ctx.Done():
			return
		case <-refresh.C:
		}
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		var err error
		if m.cfg.Now().Sub(lastAnnounce) >= announceEvery {
			if err = m.announce(actx); err == nil {
				lastAnnounce = m.cfg.Now()
				m.checkClaims(actx)
			}
		}
		if err == nil {
			err = m.refresh(actx)
		}
		cancel()
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			m.cfg.Log.Warn("this data-plane node cannot announce itself or read the others; it keeps its tenants and forwards to the homes it knows", "err", err)
			failing = true
		case err == nil && failing:
			m.cfg.Log.Info("this data-plane node announces itself again")
			failing = false
		}
	}
}

func (m *Member) announce(ctx context.Context) error {
	m.mu.Lock()
	draining := m.draining
	m.mu.Unlock()
	return m.cfg.Store.AnnounceNode(ctx, tenants.Node{ID: m.cfg.ID, URL: m.cfg.URL, ForwardAddr: m.cfg.ForwardAddr, Draining: draining})
}

func (m *Member) refresh(ctx context.Context) error {
	nodes, err := m.cfg.Store.Nodes(ctx, m.cfg.Now().Add(-liveFor))
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.nodes, m.nodesRead = nodes, m.cfg.Now()
	for id := range m.forwardedTo {
		if _, up := find(nodes, id); !up {
			delete(m.forwardedTo, id) // gone: nothing forwarded to it lives on
		}
	}
	m.mu.Unlock()
	return nil
}

// checkClaims looks for tenants this node holds whose claim another node
// took (this node was not announcing for liveFor: a pause, a partition),
// and stops their brokers here.
func (m *Member) checkClaims(ctx context.Context) error {
	stored, err := m.cfg.Store.TenantsHeldBy(ctx, m.cfg.ID)
	if err != nil {
		return err
	}
	m.mu.Lock()
	var gone []string
	for t := range m.held {
		if _, ok := slices.BinarySearch(stored, t); !ok {
			gone = append(gone, t)
		}
	}
	m.mu.Unlock()
	for _, t := range gone {
		// Read again under the tenant's lock: a claim made since the list
		// was read is not a loss.
		s := m.stripe(t)
		s.Lock()
		home, err := m.cfg.Store.TenantHome(ctx, t)
		if err == nil && home == "" && m.Holds(t) {
			// Nobody holds it: this node still runs it, and claims it again.
			home, err = m.cfg.Store.ClaimTenant(ctx, t, m.cfg.ID, m.cfg.Now().Add(-liveFor))
		}
		lost := err == nil && home != m.cfg.ID && m.Holds(t)
		if lost {
			m.forget(t)
		}
		s.Unlock()
		if lost {
			m.cfg.Log.Warn("another node holds a tenant this node was running; stopping it here", "tenant", t, "home", home)
			m.mu.Lock()
			fn := m.onLost
			m.mu.Unlock()
			if fn != nil {
				fn(t)
			}
		}
	}
	return nil
}

func (m *Member) stripe(tenant string) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte(tenant))
	return &m.stripes[h.Sum32()%uint32(len(m.stripes))]
}

// ID is the node's id.
func (m *Member) ID() string { return m.cfg.ID }

// Key signs forwarded connections.
func (m *Member) Key() []byte { return m.key }

// Holds reports whether this node holds the tenant.
func (m *Member) Holds(tenant string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.held[tenant]
}

func (m *Member) forget(tenant string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.held, tenant)
}

// upNodes is the node list, read again if the last read is stale.
func (m *Member) upNodes(ctx context.Context) ([]tenants.Node, error) {
	m.mu.Lock()
	nodes, read := m.nodes, m.nodesRead
	m.mu.Unlock()
	if m.cfg.Now().Sub(read) <= 2*refreshEvery {
		return nodes, nil
	}
	if err := m.refresh(ctx); err != nil {
		if read.IsZero() {
			return nil, err
		}
		return nodes, nil // the last list is the best guess while Postgres does not answer
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.nodes, nil
}

// errDraining refuses tenants a draining node does not hold.
var errDraining = errors.New("this node is draining")

// Place says where the tenant runs (see broker.Cluster).
func (m *Member) Place(ctx context.Context, tenant string, chosen bool) (string, error) {
	if m.Holds(tenant) {
		return "", nil
	}
	s := m.stripe(tenant)
	s.Lock()
	defer s.Unlock()
	if m.Holds(tenant) {
		return "", nil
	}
	p, held, err := m.cfg.Store.TenantPlacement(ctx, tenant)
	home := p.Home
	if err != nil {
		// Postgres does not answer: a tenant whose home was known and is
		// still up (as far as the last node list says) is forwarded there.
		nodes, _ := m.upNodes(ctx)
		if n, ok := find(nodes, m.lastHome(tenant)); ok && n.ID != m.cfg.ID && !n.Draining {
			return m.forwardTo(n), nil
		}
		return "", err
	}
	switch {
	case held && home.ID == m.cfg.ID:
		m.hold(tenant)
		m.noteWide(tenant, p)
		return "", nil
	case held && m.homeUp(ctx, home):
		m.noteHome(tenant, home.ID)
		m.noteWide(tenant, p)
		if p.Width > 1 {
			return m.placeWide(ctx, tenant, p, chosen)
		}
		if home.Draining {
			return "", broker.ErrMoving
		}
		return m.forwardTo(home), nil
	}
	// No live node holds the tenant. The node list is read afresh: the
	// one kept may still have a node that has just retired.
	m.mu.Lock()
	draining := m.draining
	m.mu.Unlock()
	if draining {
		return "", errDraining
	}
	if err := m.refresh(ctx); err != nil {
		return "", err
	}
	m.mu.Lock()
	nodes := m.nodes
	m.mu.Unlock()
	if !chosen {
		if n, ok := Pick(tenant, m.leased(ctx, forwarders(nodes))); ok && n.ID != m.cfg.ID {
			return m.forwardTo(n), nil
		}
	}
	var id string
	if held && m.cfg.Leases != nil {
		// The home's lease is gone: it serves nothing (see Leases), and
		// the tenant is taken from it, by one node only.
		id, err = m.cfg.Store.TakeTenant(ctx, tenant, home.ID, m.cfg.ID)
	} else {
		id, err = m.cfg.Store.ClaimTenant(ctx, tenant, m.cfg.ID, m.cfg.Now().Add(-liveFor))
	}
	if err != nil {
		return "", err
	}
	m.noteHome(tenant, id)
	if id == m.cfg.ID {
		m.hold(tenant)
		// A wide tenant stays wide under its new home.
		if p, ok, err := m.cfg.Store.TenantPlacement(ctx, tenant); err == nil && ok {
			m.noteWide(tenant, p)
		}
		m.cfg.Log.Info("tenant placed on this node", "tenant", tenant)
		return "", nil
	}
	// Another node claimed it first.
	if n, ok := find(nodes, id); ok && !n.Draining {
		return m.forwardTo(n), nil
	}
	return "", broker.ErrMoving
}

// placeWide is Place for a tenant served by several nodes whose home is
// another: "" if this node is one of them, or was chosen by another (any
// node serves a wide tenant correctly; the set only spreads it), else the
// forwarding address of one of them, picked at random so that the
// connections this node forwards spread over them.
func (m *Member) placeWide(ctx context.Context, tenant string, p tenants.Placement, chosen bool) (string, error) {
	if chosen {
		return "", nil
	}
	set := WideSet(tenant, p, m.liveForwarders(ctx))
	if slices.ContainsFunc(set, func(n tenants.Node) bool { return n.ID == m.cfg.ID }) {
		return "", nil
	}
	for _, i := range rand.Perm(len(set)) {
		if n := set[i]; n.ID == p.Home.ID || m.homeUp(ctx, n) {
			return m.forwardTo(n), nil
		}
	}
	return m.forwardTo(p.Home), nil
}

// WideSet lists the nodes that serve a wide tenant: its home, and the
// Width-1 other nodes ranking first for it by rendezvous hashing, so that
// every node picks the same ones from the same list and a node joining or
// leaving moves only its own share.
func WideSet(tenant string, p tenants.Placement, nodes []tenants.Node) []tenants.Node {
	set := []tenants.Node{p.Home}
	if h, ok := find(nodes, p.Home.ID); ok {
		set[0] = h
	}
	others := slices.DeleteFunc(slices.Clone(nodes), func(n tenants.Node) bool { return n.ID == p.Home.ID })
	// Ranked by forwarding address, which a node keeps when it restarts
	// (its id is new each time): a rolling restart moves no tenant.
	slices.SortFunc(others, func(a, b tenants.Node) int {
		sa, sb := score(tenant, cmp.Or(a.ForwardAddr, a.ID)), score(tenant, cmp.Or(b.ForwardAddr, b.ID))
		switch {
		case sa > sb:
			return -1
		case sa < sb:
			return 1
		}
		return strings.Compare(a.ID, b.ID)
	})
	return append(set, others[:min(len(others), p.Width-1)]...)
}

// liveForwarders are the nodes that take tenants (forwarders) whose lease
// is held, as read at most liveEvery ago: a node that died leaves the wide
// tenants' sets as soon as its lease is gone, not once the directory
// forgets it (a node that restarts comes back under a new id).
func (m *Member) liveForwarders(ctx context.Context) []tenants.Node {
	m.liveMu.Lock() // one reading at a time: a flood of connects waits for it
	defer m.liveMu.Unlock()
	m.mu.Lock()
	nodes, live, at := m.nodes, m.live, m.liveAt
	m.mu.Unlock()
	if live != nil && time.Since(at) < liveEvery {
		return live
	}
	live = m.leased(ctx, forwarders(nodes))
	m.mu.Lock()
	m.live, m.liveAt = live, time.Now()
	m.mu.Unlock()
	return live
}

// liveEvery is how long liveForwarders keeps what it read.
const liveEvery = 500 * time.Millisecond

// Wide reports whether the tenant is served by several nodes, as last read
// here (see broker.Cluster).
func (m *Member) Wide(tenant string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.wide[tenant].Width > 1
}

// Width is how many nodes serve the tenant, as last read here.
func (m *Member) Width(tenant string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return max(1, m.wide[tenant].Width)
}

func (m *Member) noteWide(tenant string, p tenants.Placement) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p.Width > 1 {
		m.wide[tenant] = p
	} else {
		delete(m.wide, tenant)
	}
}

// Widen has a tenant this node holds served by width nodes from now on: 1
// narrows it back to this one (the others stop their brokers at their
// next Spread).
func (m *Member) Widen(ctx context.Context, tenant string, width int) error {
	s := m.stripe(tenant)
	s.Lock()
	defer s.Unlock()
	if !m.Holds(tenant) {
		return fmt.Errorf("widen %s: this node does not hold it", tenant)
	}
	ok, err := m.cfg.Store.SpreadTenant(ctx, tenant, m.cfg.ID, width)
	switch {
	case err != nil:
		return err
	case !ok:
		return fmt.Errorf("widen %s: another node holds it", tenant)
	}
	m.noteWide(tenant, tenants.Placement{Home: tenants.Node{ID: m.cfg.ID}, Width: width})
	m.cfg.Log.Info("tenant's width set", "tenant", tenant, "width", width)
	return nil
}

// outsideChecks is how many Spread checks in a row must find this node
// outside a wide tenant's set before it stops serving it: nodes may see
// the others' leases differently for a moment.
const outsideChecks = 2

// Spread tells the fleet that this node still serves these tenants as one
// of several, and returns those it should stop serving: no longer wide,
// or served by other nodes now. A wide tenant whose home is gone gets this
// node as its home.
func (m *Member) Spread(ctx context.Context, ts []string) (stop []string, err error) {
	ps, err := m.cfg.Store.TouchSpread(ctx, ts)
	if err != nil {
		return nil, err
	}
	nodes := m.liveForwarders(ctx)
	m.mu.Lock()
	draining := m.draining
	m.mu.Unlock()
	for _, t := range ts {
		p, wide := ps[t]
		in := true
		switch {
		case !wide:
			m.noteWide(t, tenants.Placement{})
			if !m.Holds(t) {
				stop = append(stop, t)
			}
		case draining:
			// It takes no tenant; its brokers stop as it retires.
		case p.Home.ID == "" || p.Home.ID != m.cfg.ID && m.cfg.Leases != nil && !m.homeUp(ctx, p.Home):
			// Its home stopped its broker, or died, while this node
			// serves it: one of its nodes takes it (its sessions expire
			// there, and API publishes go there).
			if _, err := m.Place(ctx, t, true); err != nil {
				m.cfg.Log.Warn("a wide tenant without a home", "tenant", t, "err", err)
			}
		case p.Home.ID != m.cfg.ID:
			m.noteWide(t, p)
			set := WideSet(t, p, nodes)
			in = slices.ContainsFunc(set, func(n tenants.Node) bool { return n.ID == m.cfg.ID })
		}
		m.mu.Lock()
		if in {
			delete(m.outside, t)
		} else if m.outside[t]++; m.outside[t] >= outsideChecks {
			delete(m.outside, t)
			stop = append(stop, t)
		}
		m.mu.Unlock()
	}
	return stop, nil
}

// homeUp reports whether a tenant's home may still serve it: with leases
// while its lease is held (whatever the directory says: a node cut off from
// Postgres but not from Redis keeps its tenants), and while Redis does not
// answer (a home is never taken on a guess); without leases while it
// announces itself.
func (m *Member) homeUp(ctx context.Context, n tenants.Node) bool {
	if m.cfg.Leases != nil {
		held, err := m.cfg.Leases.Held(ctx, n.ID)
		return held || err != nil
	}
	return m.up(n)
}

// leased keeps the nodes whose lease is held (all of them without leases,
// or if Redis does not answer).
func (m *Member) leased(ctx context.Context, nodes []tenants.Node) []tenants.Node {
	if m.cfg.Leases == nil {
		return nodes
	}
	out := nodes[:0:0]
	for _, n := range nodes {
		held, err := m.cfg.Leases.Held(ctx, n.ID)
		if err != nil {
			return nodes
		}
		if held || n.ID == m.cfg.ID {
			out = append(out, n)
		}
	}
	return out
}

// up reports whether a node announced itself recently enough to count.
func (m *Member) up(n tenants.Node) bool {
	return !n.SeenAt.Before(m.cfg.Now().Add(-liveFor))
}

func (m *Member) noteHome(tenant, node string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if node == "" {
		m.homes.Remove(tenant)
	} else {
		m.homes.Add(tenant, node)
	}
}

func (m *Member) lastHome(tenant string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	home, _ := m.homes.Get(tenant)
	return home
}

func (m *Member) hold(tenant string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.held[tenant] = true
}

func (m *Member) forwardTo(n tenants.Node) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.forwardedTo[n.ID] = true
	return n.ForwardAddr
}

// Release gives the tenant up.
func (m *Member) Release(tenant string) {
	s := m.stripe(tenant)
	s.Lock()
	defer s.Unlock()
	m.forget(tenant)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.cfg.Store.ReleaseTenant(ctx, tenant, m.cfg.ID); err != nil {
		// The claim stays until the node retires or is taken for dead;
		// meanwhile other nodes forward the tenant here, and it starts
		// here again.
		m.cfg.Log.Warn("release a tenant", "tenant", tenant, "err", err)
		return
	}
	m.cfg.Log.Info("tenant released by this node", "tenant", tenant)
}

// Drain marks the node as draining: it keeps its tenants until Retire,
// other nodes wait for them meanwhile, and it takes no new ones.
func (m *Member) Drain(ctx context.Context) error {
	m.mu.Lock()
	m.draining = true
	m.mu.Unlock()
	return m.cfg.Store.DrainNode(ctx, m.cfg.ID)
}

// Leaving asks every node this one forwarded connections to to end them.
func (m *Member) Leaving(ctx context.Context) {
	m.mu.Lock()
	ids := make([]string, 0, len(m.forwardedTo))
	for id := range m.forwardedTo {
		ids = append(ids, id)
	}
	nodes := m.nodes
	m.mu.Unlock()
	var wg sync.WaitGroup
	for _, id := range ids {
		n, ok := find(nodes, id)
		if !ok {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, n.URL+Prefix+"/forwarded/"+url.PathEscape(m.cfg.ID)+"/close", nil)
			req.Header.Set("Authorization", "Bearer "+m.cfg.Token)
			resp, err := m.client.Do(req)
			if err != nil {
				m.cfg.Log.Warn("ask a node to end the connections forwarded to it", "node", id, "err", err)
				return
			}
			resp.Body.Close()
		}()
	}
	wg.Wait()
}

// Retire takes the node out of the fleet: its claims and its row go (its
// brokers must have stopped and stored their sessions), and it stops
// announcing.
func (m *Member) Retire(ctx context.Context) error {
	m.mu.Lock()
	stop, stopped := m.stop, m.stopped
	m.held = map[string]bool{}
	m.mu.Unlock()
	if stop != nil {
		stop()
		<-stopped
	}
	if m.cfg.Leases != nil {
		// Its tenants may be taken over at once.
		m.leaseUntil.Store(0)
		if err := m.cfg.Leases.Drop(ctx, m.cfg.ID); err != nil {
			m.cfg.Log.Warn("drop this node's lease (it lapses by itself)", "err", err)
		}
	}
	return m.cfg.Store.RetireNode(ctx, m.cfg.ID)
}

func find(nodes []tenants.Node, id string) (tenants.Node, bool) {
	if id == "" {
		return tenants.Node{}, false
	}
	i := slices.IndexFunc(nodes, func(n tenants.Node) bool { return n.ID == id })
	if i < 0 {
		return tenants.Node{}, false
	}
	return nodes[i], true
}

// forwarders are the nodes that take tenants: up, not draining, and
// reachable for forwarded connections.
func forwarders(nodes []tenants.Node) []tenants.Node {
	var out []tenants.Node
	for _, n := range nodes {
		if !n.Draining && n.ForwardAddr != "" {
			out = append(out, n)
		}
	}
	return out
}

// Pick is the node a tenant without a home goes to: the one scoring
// highest for it (rendezvous hashing), so that every node and control
// plane picks the same one from the same list.
func Pick(tenant string, nodes []tenants.Node) (tenants.Node, bool) {
	var best tenants.Node
	var bestScore uint64
	found := false
	for _, n := range nodes {
		score := score(tenant, n.ID)
		if !found || score > bestScore || score == bestScore && n.ID < best.ID {
			best, bestScore, found = n, score, true
		}
	}
	return best, found
}

// score is a node's rendezvous score for a tenant.
func score(tenant, node string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(tenant))
	h.Write([]byte{0})
	h.Write([]byte(node))
	return mix(h.Sum64())
}

// mix spreads FNV's output (a finaliser from MurmurHash3): similar inputs
// differ in their low bits only.
func mix(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}
