package kafka

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/roosthub/roost/broker/fabric"
)

// Tenant is one tenant's broker on this node, as an owner in the fabric.
type Tenant struct {
	f       *Fabric
	name    string
	owner   string
	home    bool
	deliver func(fabric.Message) error
	part    int32

	// mu guards the owner's own filters; the state record of its shared
	// ones is produced under it, so that they reach the log in the order
	// they changed.
	mu      sync.Mutex
	filters map[string]bool
	local   *mqtt.TopicsIndex
	shared  []string // as last written to the log
	readyAt sync.Once
	ready   chan struct{}
	routes  atomic.Int64 // own filters and known shared routes, for Stats

	// Set on the reading goroutine (next, under f.mu), read by run.
	queue       chan item
	next        int64 // the next offset of the partition this owner needs
	stalled     atomic.Bool
	resumeAsked atomic.Bool

	// run's own.
	view        *view
	deliverFrom int64 // before it, records only tell the others' routes
	catchUp     int64 // the log's end when a home joined: below it, a catch-up
	processed   int64 // every record before it was delivered or had nothing here
	committed   int64
	committedAt time.Time
	// caughtUp is closed once processed reaches catchUp (see CaughtUp).
	caughtUp   chan struct{}
	caughtOnce sync.Once

	ctx  context.Context
	stop context.CancelFunc
	done chan struct{}
	once sync.Once
}

// item is a record of the owner's tenant, or a mark: every record of the
// partition before it was handed over.
type item struct {
	rec  *kgo.Record
	mark int64
}

func newIndex() *mqtt.TopicsIndex { return mqtt.NewTopicsIndex() }

// Owner is the name this broker has among the tenant's owners.
func (t *Tenant) Owner() string { return t.owner }

// Add notes this owner's filter before the SUBACK of its first subscriber
// here. A plain filter costs nothing in Kafka (every owner reads the whole
// log); a shared one is written to the log, acknowledged by every in-sync
// replica, before Add returns.
func (t *Tenant) Add(ctx context.Context, filter string) error {
	return t.change(ctx, func() { t.filters[filter] = true }, isShared(filter))
}

// Remove forgets the filter once its last subscriber here is gone.
func (t *Tenant) Remove(ctx context.Context, filter string) error {
	return t.change(ctx, func() { delete(t.filters, filter) }, isShared(filter))
}

// Replace sets this owner's filters to exactly those given: a home taking
// over sets those of the sessions it restored. Its shared ones are always
// written, replacing whatever an earlier owner of the same name left.
func (t *Tenant) Replace(ctx context.Context, filters []string) error {
	return t.change(ctx, func() {
		t.filters = map[string]bool{}
		for _, f := range filters {
			t.filters[f] = true
		}
	}, true)
}

func isShared(filter string) bool { return strings.HasPrefix(filter, "$share/") }

// change applies a change to the filters, and writes the shared ones if
// write; then reading may start.
func (t *Tenant) change(ctx context.Context, apply func(), write bool) error {
	t.mu.Lock()
	apply()
	index := newIndex()
	var shared []string
	for f := range t.filters {
		index.Subscribe(t.owner, packets.Subscription{Filter: f})
		if isShared(f) {
			shared = append(shared, f)
		}
	}
	slices.Sort(shared)
	t.local = index
	var wait func() error
	if write {
		wait = t.produceState(ctx, shared)
	}
	t.mu.Unlock()
	t.countRoutes()
	var err error
	if wait != nil {
		err = wait()
	}
	t.readyAt.Do(func() { close(t.ready) })
	if err != nil {
		return fmt.Errorf("fabric: write routes: %w", err)
	}
	return nil
}

// produceState hands the owner's shared filters to the client, with t.mu
// held, and returns the wait for Kafka's answer.
func (t *Tenant) produceState(ctx context.Context, shared []string) func() error {
	t.shared = shared
	rec := &kgo.Record{Topic: t.f.cfg.Topic, Partition: t.part, Key: []byte(t.name), Value: encodeState(t.owner, shared), Timestamp: time.Now()}
	return t.f.write(ctx, rec)
}

// renew writes the owner's shared filters again, so that the others keep
// counting them.
func (t *Tenant) renew() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.shared) == 0 {
		return
	}
	rec := &kgo.Record{Topic: t.f.cfg.Topic, Partition: t.part, Key: []byte(t.name), Value: encodeState(t.owner, t.shared), Timestamp: time.Now()}
	t.f.cl.TryProduce(context.Background(), rec, func(_ *kgo.Record, err error) {
		if err != nil {
			t.f.cfg.Log.Warn("fabric: renew shared routes", "tenant", t.name, "err", err)
		}
	})
}

func (t *Tenant) countRoutes() {
	t.mu.Lock()
	n := len(t.filters)
	t.mu.Unlock()
	t.routes.Store(int64(n) + t.view.count.Load())
}

func (t *Tenant) index() *mqtt.TopicsIndex {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.local
}

// Send appends a message to the tenant's log, where every other owner
// reads it, and returns 1. A QoS 1 or 2 message is sent before Send
// returns, acknowledged by every in-sync replica (acks=all), or Send fails;
// a QoS 0 one is handed to the client and sent in order with the others.
// Kafka out of reach fails a send after ctx or SendTimeout, whichever
// comes first; a write whose answer was lost as Kafka went away fails too,
// though Kafka may have taken it (the publisher is refused, and may publish
// again: at least once). The shared groups
// servedHere says this node has a member of are served here only.
func (t *Tenant) Send(ctx context.Context, m fabric.Message, servedHere func(group string) bool) (int, error) {
	var served []string
	if servedHere != nil {
		for g := range t.index().Subscribers(m.Topic).Shared {
			if servedHere(g) {
				served = append(served, g)
			}
		}
		slices.Sort(served)
	}
	rec := &kgo.Record{Topic: t.f.cfg.Topic, Partition: t.part, Key: []byte(t.name), Value: encodeMessage(t.owner, m, served), Timestamp: time.Now()}
	if m.QoS == 0 {
		t.f.cl.TryProduce(context.Background(), rec, func(_ *kgo.Record, err error) {
			if err != nil {
				t.f.failed.Add(1)
				return
			}
			t.f.sent.Add(1)
		})
		return 1, nil
	}
	if err := t.f.write(ctx, rec)(); err != nil {
		t.f.failed.Add(1)
		return 0, fmt.Errorf("fabric: send: %w", err)
	}
	t.f.sent.Add(1)
	return 1, nil
}

// Leave stops reading. A home commits what it delivered; a node's shared
// routes are withdrawn. A home's stay, for the next home.
func (t *Tenant) Leave() {
	t.once.Do(func() {
		t.f.control(func() { t.f.detach(t) })
		t.f.mu.Lock()
		if t.f.tenants[t.name] == t {
			delete(t.f.tenants, t.name)
		}
		t.f.mu.Unlock()
		t.stop()
		<-t.done
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if t.home {
			if t.processed > t.committed {
				if err := t.f.commit(ctx, t, t.processed); err != nil {
					t.f.cfg.Log.Warn("fabric: commit the home's place as it leaves (the next home delivers some again)", "tenant", t.name, "err", err)
				}
			}
			return
		}
		t.mu.Lock()
		var wait func() error
		if len(t.shared) > 0 {
			wait = t.produceState(ctx, nil)
		}
		t.mu.Unlock()
		if wait != nil {
			if err := wait(); err != nil {
				t.f.cfg.Log.Warn("fabric: withdraw shared routes (they lapse)", "tenant", t.name, "err", err)
			}
		}
	})
}

// run delivers the owner's records in order, once its routes are set.
func (t *Tenant) run() {
	defer close(t.done)
	select {
	case <-t.ready:
	case <-t.ctx.Done():
		return
	}
	tick := time.NewTicker(t.f.cfg.CommitEvery)
	defer tick.Stop()
	for {
		select {
		case it := <-t.queue:
			if !t.handle(it) {
				return
			}
			if len(t.queue) == 0 {
				t.idle(false)
			}
		case <-tick.C:
			t.idle(true)
		case <-t.ctx.Done():
			return
		}
	}
}

// idle commits a home's place, and asks for what the owner was passed
// over for.
func (t *Tenant) idle(tick bool) {
	if t.home && t.processed > t.committed && (tick || time.Since(t.committedAt) >= t.f.cfg.CommitEvery) {
		ctx, cancel := context.WithTimeout(t.ctx, 5*time.Second)
		err := t.f.commit(ctx, t, t.processed)
		cancel()
		if err != nil {
			if t.ctx.Err() == nil {
				t.f.cfg.Log.Warn("fabric: commit the home's place", "tenant", t.name, "err", err)
			}
		} else {
			t.committed, t.committedAt = t.processed, time.Now()
		}
	}
	if len(t.queue) == 0 && t.stalled.Load() && t.resumeAsked.CompareAndSwap(false, true) {
		t.f.request(func() { t.f.resume(t) })
	}
}

// handle takes one item; false if the owner left before a home could
// deliver it.
func (t *Tenant) handle(it item) bool {
	if it.rec == nil {
		t.advance(it.mark)
		return true
	}
	r := it.rec
	if !t.take(r) {
		return false
	}
	t.advance(r.Offset + 1)
	return true
}

// advance notes every record before offset delivered (or nothing here).
func (t *Tenant) advance(offset int64) {
	t.processed = max(t.processed, offset)
	if t.processed >= t.catchUp {
		t.caughtOnce.Do(func() { close(t.caughtUp) })
	}
}

// CaughtUp is closed once the owner delivered its tenant's log up to where
// it ended when the owner joined: at once for a node, which starts at the
// end; for a home, once it delivered what the home before it left
// uncommitted. Until then, what is published at the home must wait: its
// broker would deliver it to a persistent session before the older
// messages for that session still being read from the log.
func (t *Tenant) CaughtUp() <-chan struct{} { return t.caughtUp }

// take handles one record of the tenant's log; false if the owner left
// before a home could deliver it.
func (t *Tenant) take(r *kgo.Record) bool {
	rec, err := decode(r.Value)
	if err != nil {
		t.f.cfg.Log.Error("fabric: a record that is no message; skipped", "tenant", t.name, "offset", r.Offset, "err", err)
		return true
	}
	if rec.origin == t.owner {
		return true // sent from here (or by the home before this one)
	}
	if rec.state {
		t.view.set(rec.origin, rec.filters, r.Timestamp)
		t.countRoutes()
		return true
	}
	t.view.touch(rec.origin, r.Timestamp)
	if r.Offset < t.deliverFrom {
		return true
	}
	m, ok := t.decide(rec, r)
	if !ok {
		return true
	}
	backoff := 50 * time.Millisecond
	for {
		err := t.deliver(m)
		if err == nil {
			t.f.received.Add(1)
			return true
		}
		if !t.home {
			t.f.dropped.Add(1)
			t.f.cfg.Log.Warn("fabric: deliver a message from another node (its clean subscribers here miss it)", "tenant", t.name, "topic", m.Topic, "err", err)
			return true
		}
		t.f.cfg.Log.Warn("fabric: deliver a message from another node; again", "tenant", t.name, "topic", m.Topic, "err", err)
		t.idle(true) // what came before is delivered: commit it
		sleep(t.ctx, backoff)
		if t.ctx.Err() != nil {
			return false
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// decide says whether a message is for this owner, and with which shared
// groups: those whose member here wins over the others the log names.
func (t *Tenant) decide(rec record, r *kgo.Record) (fabric.Message, bool) {
	m := rec.msg
	local := t.index().Subscribers(m.Topic)
	known := t.view.index.Subscribers(m.Topic)
	for g := range local.Shared {
		if slices.Contains(rec.served, g) {
			continue
		}
		if t.wins(g, known.Shared[g], rec.origin, r) {
			m.Groups = append(m.Groups, g)
		}
	}
	slices.Sort(m.Groups)
	if r.Offset < t.catchUp && m.Retain {
		// The origin stored it before it was acknowledged, so this
		// broker has it, or a later one, from the store: only deliver
		// it, as a home catching up.
		m.Retain = false
	}
	return m, m.Retain || len(local.Subscriptions) > 0 || len(m.Groups) > 0
}

// wins reports whether this owner, a member of group, serves a message:
// it has the highest hash of the members the log names (still present by
// the message's time), the publisher's owner aside.
func (t *Tenant) wins(group string, members map[string]packets.Subscription, origin string, r *kgo.Record) bool {
	place := fmt.Sprintf("%d:%d", r.Partition, r.Offset)
	mine := score(t.owner, group, place)
	for owner := range members {
		if owner == t.owner || owner == origin || !t.view.present(owner, r.Timestamp, t.f.cfg.Lease) {
			continue
		}
		if s := score(owner, group, place); s > mine || s == mine && owner > t.owner {
			return false
		}
	}
	return true
}
