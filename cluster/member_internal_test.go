package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
)

func node(id string) tenants.Node {
	return tenants.Node{ID: id, ForwardAddr: id + ":1884"}
}

// TestPick: every tenant goes to one node, the same whatever the order of
// the list; three nodes share 3,000 tenants about evenly; a node leaving
// moves only its own tenants.
func TestPick(t *testing.T) {
	three := []tenants.Node{node("a"), node("b"), node("c")}
	count := map[string]int{}
	before := map[string]string{}
	for i := range 3000 {
		tenant := fmt.Sprintf("tenant-%d", i)
		n, ok := Pick(tenant, three)
		if !ok {
			t.Fatal("no pick among three nodes")
		}
		shuffled := append([]tenants.Node{}, three...)
		rand.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		if again, _ := Pick(tenant, shuffled); again.ID != n.ID {
			t.Fatalf("%s: %s, then %s from the same nodes in another order", tenant, n.ID, again.ID)
		}
		count[n.ID]++
		before[tenant] = n.ID
	}
	for id, n := range count {
		if n < 850 || n > 1150 {
			t.Errorf("node %s got %d of 3000 tenants", id, n)
		}
	}
	moved := 0
	for tenant, was := range before {
		now, _ := Pick(tenant, three[:2])
		switch {
		case was != "c" && now.ID != was:
			t.Fatalf("%s moved from %s to %s when c left", tenant, was, now.ID)
		case was == "c":
			moved++
		}
	}
	t.Logf("shares %v; %d tenants moved when c left", count, moved)
	if _, ok := Pick("x", nil); ok {
		t.Error("a pick among no nodes")
	}
}

// fleet is members on one directory with one clock.
type fleet struct {
	t     *testing.T
	store *tenants.Store
	clock *testenv.Clock
}

func newFleet(t *testing.T, databaseURL string) *fleet {
	ctx := context.Background()
	store, err := tenants.Open(ctx, databaseURL, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	if _, err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	f := &fleet{t: t, store: store, clock: testenv.NewClock(time.Now())}
	store.SetClock(f.clock.Now)
	return f
}

func (f *fleet) member(id string) *Member {
	m := NewMember(MemberConfig{Store: f.store, ID: id, URL: "http://" + id, ForwardAddr: id + ":1884", Token: "t", Now: f.clock.Now})
	if err := m.announce(context.Background()); err != nil {
		f.t.Fatal(err)
	}
	return m
}

// see has each member read the node list.
func see(t *testing.T, ms ...*Member) {
	for _, m := range ms {
		if err := m.refresh(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

// tenantFor finds a tenant name Pick gives to the node.
func tenantFor(t *testing.T, id string, nodes []tenants.Node) string {
	for i := 0; ; i++ {
		tenant := fmt.Sprintf("t%d", i)
		if n, _ := Pick(tenant, nodes); n.ID == id {
			return tenant
		}
	}
}

// TestPlacement runs placement on both directories: SQLite (one process)
// and Postgres (a fleet).
func TestPlacement(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { testPlacement(t, "") })
	t.Run("postgres", func(t *testing.T) { testPlacement(t, testenv.PostgresURL(t)) })
}

// testPlacement: a tenant without a home is forwarded to the node Pick
// gives, which claims it; claims made at once by two nodes have one
// winner; a draining home makes others wait (ErrMoving) and takes no new
// tenants, and once it retires its tenants go elsewhere; a node taken for
// dead loses its tenants to a live node, and finds out (OnLost); a release
// frees only the node's own claim.
func testPlacement(t *testing.T, databaseURL string) {
	ctx := context.Background()
	f := newFleet(t, databaseURL)
	a, b := f.member("a"), f.member("b")
	see(t, a, b)
	home := func(tenant string) string {
		id, err := f.store.TenantHome(ctx, tenant)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	place := func(m *Member, tenant string, chosen bool) string {
		t.Helper()
		addr, err := m.Place(ctx, tenant, chosen)
		if err != nil {
			t.Fatalf("%s places %s: %v", m.ID(), tenant, err)
		}
		return addr
	}

	ta := tenantFor(t, "a", []tenants.Node{node("a"), node("b")})
	if addr := place(b, ta, false); addr != "a:1884" || home(ta) != "" {
		t.Fatalf("b forwards %s to %q (home %q), want a:1884 and no claim yet", ta, addr, home(ta))
	}
	if addr := place(a, ta, false); addr != "" || !a.Holds(ta) || home(ta) != "a" {
		t.Fatalf("a places %s at %q, holds %v, home %q", ta, addr, a.Holds(ta), home(ta))
	}
	if addr := place(b, ta, true); addr != "a:1884" || b.Holds(ta) {
		t.Fatalf("b, chosen for %s that a holds: %q", ta, addr)
	}

	// Two nodes claiming at once: one wins, the other forwards to it.
	var wg sync.WaitGroup
	got := make([][2]string, 40)
	for i := range got {
		tenant := fmt.Sprintf("race-%d", i)
		for j, m := range []*Member{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				addr, err := m.Place(ctx, tenant, true)
				if err != nil {
					t.Errorf("%s: %v", tenant, err)
				}
				got[i][j] = addr
			}()
		}
	}
	wg.Wait()
	for i, g := range got {
		tenant := fmt.Sprintf("race-%d", i)
		switch h := home(tenant); {
		case h == "a" && g == [2]string{"", "a:1884"}, h == "b" && g == [2]string{"b:1884", ""}:
		default:
			t.Errorf("%s: a got %q, b got %q, home %q", tenant, g[0], g[1], h)
		}
		if a.Holds(tenant) == b.Holds(tenant) {
			t.Errorf("%s: both or neither hold it", tenant)
		}
	}

	// a drains: its tenants wait for it; it takes no new one.
	if err := a.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	// (b's node list is from before: what b answers comes from the
	// directory as it is now.)
	if _, err := b.Place(ctx, ta, false); !errors.Is(err, broker.ErrMoving) {
		t.Errorf("a tenant of a draining node: %v, want ErrMoving", err)
	}
	fresh := tenantFor(t, "a", []tenants.Node{node("a"), node("b")}) + "-fresh"
	if _, err := a.Place(ctx, fresh, true); err == nil {
		t.Error("a draining node took a new tenant")
	}
	for range 5 {
		tenant := fmt.Sprintf("new-%d", rand.Int())
		if addr := place(b, tenant, false); addr != "" {
			t.Errorf("b forwards a new tenant to %q while a drains", addr)
		}
	}
	if err := a.Retire(ctx); err != nil {
		t.Fatal(err)
	}
	// b's node list still has a: a tenant a would have been picked for
	// goes to b all the same.
	if addr := place(b, ta, false); addr != "" || home(ta) != "b" {
		t.Errorf("after a retired, %s: %q, home %q", ta, addr, home(ta))
	}

	// c stops announcing (paused, cut off): after liveFor, b takes its
	// tenant, and c, back, finds out.
	c := f.member("c")
	see(t, b, c)
	if addr := place(c, "paused", true); addr != "" {
		t.Fatalf("c claims: %q", addr)
	}
	var lost []string
	c.OnLost(func(tenant string) { lost = append(lost, tenant) })
	f.clock.Advance(liveFor + time.Second)
	if err := b.announce(ctx); err != nil {
		t.Fatal(err)
	}
	see(t, b)
	if addr := place(b, "paused", false); addr != "" || home("paused") != "b" {
		t.Fatalf("b, with c taken for dead: %q, home %q", addr, home("paused"))
	}
	c.checkClaims(ctx)
	if len(lost) != 1 || lost[0] != "paused" || c.Holds("paused") {
		t.Errorf("c lost %v, still holds: %v", lost, c.Holds("paused"))
	}
	// A claim that vanished (nobody holds the tenant) is made again by the
	// node still running it, not given up.
	if addr := place(b, "orphan", true); addr != "" {
		t.Fatalf("b claims: %q", addr)
	}
	if err := f.store.ReleaseTenant(ctx, "orphan", "b"); err != nil {
		t.Fatal(err)
	}
	b.checkClaims(ctx)
	if !b.Holds("orphan") || home("orphan") != "b" {
		t.Errorf("a vanished claim: b holds %v, home %q", b.Holds("orphan"), home("orphan"))
	}
	// A node's release frees only its own claim.
	c.Release("paused")
	if home("paused") != "b" {
		t.Errorf("c's release freed b's claim: home %q", home("paused"))
	}
	b.Release("paused")
	if home("paused") != "" || b.Holds("paused") {
		t.Errorf("b's release: home %q", home("paused"))
	}
}

// TestPlacementWithoutPostgres: while the directory does not answer, a
// tenant whose home was seen is still forwarded there; one never seen is
// refused (nothing can be claimed).
func TestPlacementWithoutPostgres(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t, "")
	x, y := f.member("x"), f.member("y")
	see(t, x, y)
	if addr, err := y.Place(ctx, "kept", true); err != nil || addr != "" {
		t.Fatalf("y claims: %q, %v", addr, err)
	}
	if addr, err := x.Place(ctx, "kept", false); err != nil || addr != "y:1884" {
		t.Fatalf("x forwards: %q, %v", addr, err)
	}
	f.store.Close()
	f.clock.Advance(3 * refreshEvery) // the node list is stale and cannot be read again
	if addr, err := x.Place(ctx, "kept", false); err != nil || addr != "y:1884" {
		t.Errorf("without the directory, a tenant whose home was seen: %q, %v", addr, err)
	}
	if addr, err := x.Place(ctx, "unseen", false); err == nil {
		t.Errorf("without the directory, a tenant never seen was placed at %q", addr)
	}
	if addr, err := y.Place(ctx, "kept", false); err != nil || addr != "" {
		t.Errorf("its home still runs it: %q, %v", addr, err)
	}
}

// TestLeases: with leases in Redis, a paused home stops serving before its
// lease can be seen gone; another node then takes its tenant at once,
// although the directory still counts the home as up; two nodes taking it
// at once have one winner; the home, back, finds its lease lapsed, learns
// it lost the tenant (OnLost), and serves again only after that.
func TestLeases(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t, testenv.PostgresURL(t))
	prefix := fmt.Sprintf("roost-lease-%d", rand.Int())
	open := func(id string) *Member {
		l, err := NewRedisLeases(ctx, testenv.RedisURL(t), prefix, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		m := NewMember(MemberConfig{Store: f.store, ID: id, URL: "http://" + id, ForwardAddr: id + ":1884", Token: "t", Now: f.clock.Now, Leases: l, Log: slog.New(slog.NewTextHandler(t.Output(), nil))})
		if err := m.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if m.stop != nil {
				m.stop()
			}
		})
		return m
	}
	a, b, c := open("a"), open("b"), open("c")
	see(t, a, b, c)
	if addr, err := a.Place(ctx, "acme", true); err != nil || addr != "" || !a.Serving() {
		t.Fatalf("a places acme: %q, %v, serving %v", addr, err, a.Serving())
	}
	var lost []string
	var mu sync.Mutex
	a.OnLost(func(tenant string) { mu.Lock(); lost = append(lost, tenant); mu.Unlock() })

	// a is paused: it renews nothing.
	a.stop()
	<-a.stopped
	for a.Serving() {
		time.Sleep(10 * time.Millisecond)
	}
	if held, err := a.cfg.Leases.Held(ctx, "a"); err != nil || !held {
		t.Fatalf("a stopped serving only after its lease was gone (held %v, %v)", held, err)
	}
	eventually(t, 3*time.Second, "a's lease gone", func() bool {
		held, err := a.cfg.Leases.Held(ctx, "a")
		return err == nil && !held
	})
	// The directory still has a as up (its clock has not moved); b and c
	// take acme at once: one wins, the other forwards to it.
	var wg sync.WaitGroup
	addrs := make([]string, 2)
	for i, m := range []*Member{b, c} {
		wg.Go(func() {
			addr, err := m.Place(ctx, "acme", true)
			if err != nil {
				t.Errorf("%s places acme: %v", m.ID(), err)
			}
			addrs[i] = addr
		})
	}
	wg.Wait()
	home, err := f.store.TenantHome(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case home == "b" && addrs[0] == "" && addrs[1] == "b:1884":
	case home == "c" && addrs[1] == "" && addrs[0] == "c:1884":
	default:
		t.Fatalf("after a's lease lapsed: home %q, b got %q, c got %q", home, addrs[0], addrs[1])
	}
	// a comes back: its lease had lapsed; it stops acme before it serves.
	actx, stop := context.WithCancel(context.Background())
	t.Cleanup(stop)
	go a.renewLeases(actx)
	eventually(t, 10*time.Second, "a serving again", a.Serving)
	mu.Lock()
	defer mu.Unlock()
	if len(lost) != 1 || lost[0] != "acme" || a.Holds("acme") {
		t.Errorf("a, back: lost %v, holds acme %v", lost, a.Holds("acme"))
	}
	if a.Lapses() != 1 {
		t.Errorf("a counted %d lapses, want 1", a.Lapses())
	}
}

func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestWideSet: a wide tenant's nodes are its home and the width-1 others
// ranking first for it, whatever the order of the list; a node leaving
// changes the set only if it was in it; a width over the nodes takes all.
func TestWideSet(t *testing.T) {
	nodes := []tenants.Node{node("a"), node("b"), node("c"), node("d"), node("e")}
	ids := func(ns []tenants.Node) []string {
		var out []string
		for _, n := range ns {
			out = append(out, n.ID)
		}
		return out
	}
	count := map[string]int{}
	for i := range 1000 {
		tenant := fmt.Sprintf("tenant-%d", i)
		p := tenants.Placement{Home: tenants.Node{ID: "c"}, Width: 3}
		set := WideSet(tenant, p, nodes)
		if len(set) != 3 || set[0].ID != "c" || set[0].ForwardAddr != "c:1884" {
			t.Fatalf("%s: set %v, want the home c first and two others", tenant, ids(set))
		}
		shuffled := slices.Clone(nodes)
		rand.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		if again := WideSet(tenant, p, shuffled); !slices.Equal(ids(again), ids(set)) {
			t.Fatalf("%s: %v, then %v from the same nodes in another order", tenant, ids(set), ids(again))
		}
		for _, n := range set[1:] {
			count[n.ID]++
		}
		without := slices.DeleteFunc(slices.Clone(nodes), func(n tenants.Node) bool { return n.ID == "e" })
		after := WideSet(tenant, p, without)
		if !slices.Contains(ids(set), "e") && !slices.Equal(ids(after), ids(set)) {
			t.Fatalf("%s: set %v became %v when e, not in it, left", tenant, ids(set), ids(after))
		}
	}
	for _, id := range []string{"a", "b", "d", "e"} {
		if n := count[id]; n < 400 || n > 600 {
			t.Errorf("node %s is among 1000 tenants' two other nodes %d times, want about 500", id, n)
		}
	}
	if set := WideSet("t", tenants.Placement{Home: tenants.Node{ID: "a"}, Width: 9}, nodes); len(set) != 5 {
		t.Errorf("a width of 9 over 5 nodes: %v", ids(set))
	}
	if set := WideSet("t", tenants.Placement{Home: tenants.Node{ID: "gone"}, Width: 2}, nodes); len(set) != 2 || set[0].ID != "gone" {
		t.Errorf("a home missing from the list: %v, want it first and one other", ids(set))
	}
}

// TestWiden runs widening on Postgres: only the home widens a tenant; the
// other nodes then place it on its set (here, or forwarded to one of it);
// Spread keeps it wide while a node serves it, tells a node outside the
// set to stop (at its second check in a row), and narrowing tells every
// node but the home at once; a wide tenant
// whose home released it gets a new home that knows it is wide; an
// untouched width goes stale after SpreadLiveFor.
func TestWiden(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t, testenv.PostgresURL(t))
	a, b, c := f.member("a"), f.member("b"), f.member("c")
	see(t, a, b, c)
	three := []tenants.Node{node("a"), node("b"), node("c")}
	tenant := tenantFor(t, "a", three)
	if addr, err := a.Place(ctx, tenant, false); err != nil || addr != "" {
		t.Fatalf("a places %s: %q, %v", tenant, addr, err)
	}
	if err := b.Widen(ctx, tenant, 2); err == nil {
		t.Fatal("b, not the home, widened the tenant")
	}
	if addr, _ := b.Place(ctx, tenant, false); addr != "a:1884" || b.Wide(tenant) {
		t.Fatalf("before widening b forwards to %q (wide %v), want a:1884", addr, b.Wide(tenant))
	}
	if err := a.Widen(ctx, tenant, 2); err != nil {
		t.Fatal(err)
	}
	if !a.Wide(tenant) || a.Width(tenant) != 2 {
		t.Fatalf("the home after widening: wide %v, width %d", a.Wide(tenant), a.Width(tenant))
	}
	set := WideSet(tenant, tenants.Placement{Home: node("a"), Width: 2}, three)
	in, out := b, c
	if set[1].ID == "c" {
		in, out = c, b
	}
	if addr, err := in.Place(ctx, tenant, false); err != nil || addr != "" || !in.Wide(tenant) || in.Holds(tenant) {
		t.Fatalf("%s, in the set: %q, %v, wide %v, holds %v", in.ID(), addr, err, in.Wide(tenant), in.Holds(tenant))
	}
	addr, err := out.Place(ctx, tenant, false)
	if err != nil || (addr != "a:1884" && addr != in.ID()+":1884") {
		t.Fatalf("%s, outside the set, forwards to %q (%v), want a node of %v", out.ID(), addr, err, set)
	}
	if addr, _ := out.Place(ctx, tenant, true); addr != "" {
		t.Errorf("%s, chosen by another node, forwards to %q: a wide tenant is served anywhere", out.ID(), addr)
	}
	for _, m := range []*Member{a, in} {
		if stop, err := m.Spread(ctx, []string{tenant}); err != nil || len(stop) != 0 {
			t.Errorf("%s serving the wide tenant: stop %v, %v", m.ID(), stop, err)
		}
	}
	if stop, _ := out.Spread(ctx, []string{tenant}); len(stop) != 0 {
		t.Errorf("%s, outside the set at one check: stop %v, want none yet (views may differ for a moment)", out.ID(), stop)
	}
	if stop, _ := out.Spread(ctx, []string{tenant}); !slices.Equal(stop, []string{tenant}) {
		t.Errorf("%s, outside the set at a second check: stop %v, want the tenant", out.ID(), stop)
	}

	// Narrowed: every node but the home stops.
	if err := a.Widen(ctx, tenant, 1); err != nil {
		t.Fatal(err)
	}
	if stop, _ := in.Spread(ctx, []string{tenant}); !slices.Equal(stop, []string{tenant}) || in.Wide(tenant) {
		t.Errorf("%s once narrowed: stop %v, wide %v", in.ID(), stop, in.Wide(tenant))
	}
	if stop, _ := a.Spread(ctx, []string{tenant}); len(stop) != 0 {
		t.Errorf("the home once narrowed: stop %v", stop)
	}

	// Wide again, then the home releases it while another node serves it:
	// that node becomes its home, still wide.
	if err := a.Widen(ctx, tenant, 3); err != nil {
		t.Fatal(err)
	}
	a.Release(tenant)
	if stop, err := b.Spread(ctx, []string{tenant}); err != nil || len(stop) != 0 {
		t.Fatalf("b serving a wide tenant without a home: stop %v, %v", stop, err)
	}
	if !b.Holds(tenant) || !b.Wide(tenant) || b.Width(tenant) != 3 {
		t.Errorf("b after the home released the wide tenant: holds %v, wide %v, width %d", b.Holds(tenant), b.Wide(tenant), b.Width(tenant))
	}

	// Nobody says it serves the tenant for SpreadLiveFor (Postgres was
	// away): it stays wide while its home holds it, and a node saying so
	// again keeps it wide.
	f.clock.Advance(tenants.SpreadLiveFor + time.Second)
	if p, _, err := f.store.TenantPlacement(ctx, tenant); err != nil || p.Width != 3 {
		t.Errorf("a width untouched for %s while its home holds it: %d, %v; want 3", tenants.SpreadLiveFor, p.Width, err)
	}
	if stop, err := a.Spread(ctx, []string{tenant}); err != nil || len(stop) != 0 {
		t.Errorf("a, in the set after the pause: stop %v, %v", stop, err)
	}
	// Its home gives it up and nobody serves it for SpreadLiveFor: the
	// next node to place it starts it on one node.
	b.Release(tenant)
	f.clock.Advance(tenants.SpreadLiveFor + time.Second)
	see(t, a, b, c)
	if addr, err := c.Place(ctx, tenant, true); err != nil || addr != "" {
		t.Fatalf("c places %s afresh: %q, %v", tenant, addr, err)
	}
	if p, _, err := f.store.TenantPlacement(ctx, tenant); err != nil || p.Width != 1 || c.Wide(tenant) {
		t.Errorf("placed afresh after nobody served it for %s: width %d (wide here %v), %v; want 1", tenants.SpreadLiveFor, p.Width, c.Wide(tenant), err)
	}
	if stop, _ := a.Spread(ctx, []string{tenant}); !slices.Equal(stop, []string{tenant}) {
		t.Errorf("a, still running the tenant once it started afresh narrow: stop %v, want it", stop)
	}
}
