package broker

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/broker/store"
	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// Delivery configures the delivery of rules with a destination (webhooks):
// the outbox. Without it, such rules deliver nothing.
type Delivery struct {
	// Rules reads a tenant's rules (all of them: only those with a
	// destination are the outbox's) and its destinations.
	Rules interface {
		Rules(ctx context.Context, tenant string) ([]tenants.ExportRule, error)
		Destination(ctx context.Context, tenant, id string) (tenants.Destination, error)
		// Destinations lists the tenant's destinations, read with its
		// rules for their own outbox_policy.
		Destinations(ctx context.Context, tenant string) ([]tenants.Destination, error)
		// DestinationRuleTenants lists the tenants with a rule with a
		// destination: those whose outboxes resume (see resumeOutboxes).
		DestinationRuleTenants(ctx context.Context) ([]string, error)
		// GoneOutboxes lists deleted destinations (of tenants deleted or
		// not) whose outboxes may still be in the session store;
		// ForgetOutbox forgets one once they are deleted (see
		// sweepOutboxes).
		GoneOutboxes(ctx context.Context, limit int) ([]tenants.OutboxRef, error)
		ForgetOutbox(ctx context.Context, tenant, id string) error
		// ResealDestination writes a destination's values sealed again
		// under the current key (see dataout.Sealer.Refresh).
		ResealDestination(ctx context.Context, tenant, id string, from, to tenants.Sealed) (bool, error)
	}
	// Sealer opens a destination's secret and headers; Sender sends.
	Sealer *dataout.Sealer
	Sender interface {
		Send(ctx context.Context, w dataout.Webhook, b dataout.Batch) dataout.Attempt
	}
	// Batch is the most messages one request carries: 100 if zero.
	Batch int
	// Policy is the retry schedule (its Horizon: ROOST_WEBHOOK_RETRY_HORIZON).
	Policy dataout.Policy
	// Poll is how often a spread tenant's home looks for messages other
	// nodes added to its outboxes: 1s if zero. An outbox this node
	// appends to is woken at once.
	Poll time.Duration
	// MaxOutbox bounds each destination's outbox when the tenant's
	// max_outbox quota is 0: 100,000 if zero.
	MaxOutbox int64
	// Resume is how often the hub looks for outboxes with messages
	// waiting whose tenant's broker is not running here, although this
	// node is the tenant's home (after a restart, or once it took the
	// tenant over), and starts it: 30s if zero.
	Resume time.Duration
	// Linger is how long a worker woken by a new message waits for more
	// before it sends, so that a steady flow goes in batches rather than
	// a request per message: 5ms if zero, none if negative.
	Linger time.Duration
}

// DefaultWebhookBatch is how many messages one webhook request carries at
// most, unless configured.
const DefaultWebhookBatch = 100

// WebhookBatchBytes bounds the payloads one request (or produce to a
// tenant's Kafka) carries, whatever the count: a message larger than it
// goes alone. Counted in messages only, a batch of a plan's largest (1
// MiB) would be a body of 133 MB, built by each of a tenant's
// destinations' workers at once (one message may match a rule of each of
// its 50), and refused by most receivers.
const WebhookBatchBytes = 1 << 20

// withinBytes is the first of msgs whose payloads add up to at most max
// bytes, one at least. The others are cleared: the batch being sent does
// not keep their payloads.
func withinBytes(msgs []store.Queued, max int) []store.Queued {
	n, total := 0, 0
	for ; n < len(msgs); n++ {
		if total += len(msgs[n].Payload); n > 0 && total > max {
			break
		}
	}
	clear(msgs[n:])
	return msgs[:n]
}

// The outbox of a tenant's destination is a queue in the session store
// under a client id no MQTT client can have (MQTT strings never hold
// U+0000, see seqProperty): outboxID for the messages waiting to be
// delivered, deadID for those whose delivery gave up (the dead letters).
// The worker delivering an outbox claims its id, so that a worker on
// another node (one that lost the tenant) is fenced.
func outboxID(dest string) string { return "\x00out:" + dest }
func deadID(dest string) string   { return "\x00dead:" + dest }

// outboxHook appends a publish matching a rule with a destination to that
// destination's outbox before the publisher is acknowledged.
type outboxHook struct {
	mqtt.HookBase
	inst *instance
}

var _ mqtt.Hook = (*outboxHook)(nil)

func (h *outboxHook) ID() string { return "roost-outbox" }

func (h *outboxHook) Provides(b byte) bool { return b == mqtt.OnPublish }

// OnPublish refuses a QoS 1 or 2 publish whose outbox could not take it:
// the store failed, or the outbox is full under the refuse policy.
func (h *outboxHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if remote(pk) {
		return pk, nil // put in its outboxes where it arrived
	}
	if strings.HasPrefix(pk.TopicName, "$events/") {
		// An event the hub publishes for the tenant's subscribers: it was
		// put in the outboxes as it was raised (appendEvent), and no
		// device publishes under $events.
		return pk, nil
	}
	// Only a device's connection defers its write to the store hook: its
	// publishes go through the hooks one at a time, on its reader. The
	// hub's own inline client publishes from several goroutines.
	var deferTo *deviceConn
	if dc, device := cl.Net.Conn.(*deviceConn); device && h.inst.persist != nil && !cl.Net.Inline {
		deferTo = dc
		dc.outboxWrite = nil // a refused publish's, never made
	}
	err := h.inst.out.append(cl, pk, deferTo)
	if err == nil || pk.FixedHeader.Qos == 0 {
		return pk, nil
	}
	if full := (*outboxFull)(nil); errors.As(err, &full) {
		device := "api"
		if dc, ok := cl.Net.Conn.(*deviceConn); ok {
			device = dc.id.device
		}
		h.inst.quotaHit(device, cl.ID, "max_outbox", full.limit)
	}
	return h.inst.refusePublish(cl, pk, err)
}

// outbox is a tenant's outboxes on this node: it appends the tenant's
// matching publishes and, where the tenant is at home, runs one delivery
// worker per destination.
type outbox struct {
	cfg    *Delivery
	st     SessionStore
	tenant string
	log    *slog.Logger
	now    func() time.Time
	// quotas are the tenant's quotas now; policy its outbox_policy now.
	quotas func() tenants.Quotas
	policy func(ctx context.Context) tenants.OutboxPolicy
	device func(ctx context.Context, name string) (tenants.Device, bool, error)
	// serving reports whether the node may still acknowledge (its lease
	// held); refusedForLease counts an acknowledgement it withheld.
	serving         func() bool
	refusedForLease func()
	// raise raises one of the tenant's events.
	raise func(events.Event)
	// budget is the tenant's share of the node's CPU for its rules.
	budget *dataout.Budget
	// deliver: this node runs the workers (the tenant's home); poll: other
	// nodes append too (a spread tenant), so the workers look now and then.
	deliver, poll bool

	rules atomic.Pointer[outboxRules]
	// rulesMu orders forget after a load in progress (see listCache).
	rulesMu sync.Mutex
	// compiler compiles the rules again after a change, only those whose
	// condition or projection is new.
	compiler dataout.Compiler
	// hooks caches each destination opened for sending, until a change of
	// the tenant's rules or destinations (gen counts them) or a failed
	// attempt.
	hooks sync.Map // destination id → dataout.Webhook
	gen   atomic.Uint64

	// idPrefix and nextID name messages for receivers' deduplication.
	idPrefix string
	nextID   atomic.Uint64

	mu      sync.Mutex
	dests   map[string]*destQueue
	stopped bool
	stop    chan struct{}
	wg      sync.WaitGroup
}

// outboxRules is a tenant's destination rules, compiled. stale ones were
// dropped by a change: they are read again, and used only if that fails.
type outboxRules struct {
	set         *dataout.RuleSet
	none, stale bool
	// policies are the destinations' own outbox_policy, and limits their
	// own max_outbox, where they have one (the tenant's serves the
	// others; a limit above the tenant's quota is the quota).
	policies map[string]tenants.OutboxPolicy
	limits   map[string]int64
}

// destQueue is one destination's outbox as this node knows it.
type destQueue struct {
	id   string
	out  string // outboxID(id)
	wake chan struct{}
	// backlog is the outbox's length as last read, plus what was appended
	// here since; known once read.
	backlog atomic.Int64
	known   atomic.Bool
	readAt  atomic.Int64 // unix nanoseconds
	// delivered, failed (moved to the dead letters) and dropped (by
	// drop_oldest, or its destination deleted) count messages since the
	// tenant's broker started here.
	delivered, failed, dropped atomic.Int64

	// drops folds the drops into outbox_dropped events (see noteDropped).
	drops dropNote

	// worker: a worker runs for the outbox here; fenced: one was fenced
	// (another node's claimed the outbox), and none starts here again.
	// Both under the outbox's mu.
	worker, fenced bool

	mu          sync.Mutex
	lastSuccess time.Time
	lastError   time.Time
	lastErrText string
	// recent rings the last attempts: recent[next-1] the newest, n of
	// them set.
	recent  [dataplane.RecentAttempts]dataplane.DeliveryAttempt
	next, n int
}

// noteAttempt rings an attempt in. Called with q.mu held.
func (q *destQueue) noteAttempt(a dataplane.DeliveryAttempt) {
	q.recent[q.next] = a
	q.next = (q.next + 1) % len(q.recent)
	q.n = min(q.n+1, len(q.recent))
}

// recentAttempts returns the ringed attempts, newest first. Called with
// q.mu held.
func (q *destQueue) recentAttempts() []dataplane.DeliveryAttempt {
	out := make([]dataplane.DeliveryAttempt, q.n)
	for i := range out {
		out[i] = q.recent[(q.next-1-i+2*len(q.recent))%len(q.recent)]
	}
	return out
}

func newOutbox(inst *instance, h *Hub) *outbox {
	o := h.outboxOf(inst.tenant, inst.log, inst.quotas, inst.home, inst.spread)
	if o != nil {
		o.budget = &inst.evalBudget // shared with the Kafka export's rules
	}
	return o
}

// outboxOf is a tenant's outboxes on this node, whether its broker runs
// (newOutbox) or not (a suspended tenant's: newDormantOutbox); nil without
// a delivery configuration or a session store. deliver: its workers run
// here; poll: they look into the store for what other nodes queued.
func (h *Hub) outboxOf(tenant string, log *slog.Logger, quotas func() tenants.Quotas, deliver, poll bool) *outbox {
	d := h.cfg.Delivery
	st := h.cfg.Sessions
	if d == nil || st == nil {
		return nil
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	env := hubEnv{h, tenant}
	return &outbox{
		cfg: d, st: st, tenant: tenant, log: log, now: h.now,
		quotas: quotas,
		policy: func(ctx context.Context) tenants.OutboxPolicy {
			if t, found, err := h.dir.tenant(ctx, tenant); err == nil && found && t.OutboxPolicy != "" {
				return t.OutboxPolicy
			}
			return tenants.OutboxDropOldest
		},
		device: func(ctx context.Context, name string) (tenants.Device, bool, error) {
			return h.dir.device(ctx, tenant, name)
		},
		serving:         env.serving,
		refusedForLease: env.refusedForLease,
		raise:           env.emit,
		deliver:         deliver,
		poll:            poll,
		idPrefix:        hex.EncodeToString(b[:]),
		budget:          new(dataout.Budget),
		dests:           map[string]*destQueue{},
		stop:            make(chan struct{}),
	}
}

// start starts a worker for each destination a rule names, so that what
// an outbox held when the tenant's broker last stopped is delivered. It
// reads the rules in the background: the broker's start does not wait.
func (o *outbox) start() {
	if o == nil || !o.deliver {
		return
	}
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		o.startWorkers()
	}()
}

func (o *outbox) startWorkers() {
	var rules []tenants.ExportRule
	for retry := 1; ; retry++ {
		ctx, cancel := storeCtx()
		var err error
		rules, err = o.cfg.Rules.Rules(ctx, o.tenant)
		cancel()
		if err == nil {
			break
		}
		o.log.Error("read rules for the outbox", "err", err)
		select {
		case <-o.stop:
			return
		case <-time.After(min(time.Duration(retry)*time.Second, 30*time.Second)):
		}
	}
	for _, r := range rules {
		if r.Destination != "" {
			o.queue(r.Destination)
		}
	}
}

// close stops the workers and waits for them.
func (o *outbox) close() {
	if o == nil {
		return
	}
	o.mu.Lock()
	if !o.stopped {
		o.stopped = true
		close(o.stop)
	}
	o.mu.Unlock()
	o.wg.Wait()
}

// forget drops the compiled rules: the tenant's rules changed.
func (o *outbox) forget() {
	if o == nil {
		return
	}
	o.rulesMu.Lock()
	if r := o.rules.Load(); r != nil && !r.stale {
		o.rules.Store(&outboxRules{set: r.set, none: r.none, stale: true, policies: r.policies, limits: r.limits})
	}
	o.rulesMu.Unlock()
	o.gen.Add(1)
	o.hooks.Clear()
	o.mu.Lock()
	for _, q := range o.dests {
		o.wake(q) // an idle worker checks that its destination still exists
	}
	o.mu.Unlock()
}

// wake wakes a destination's worker, if it waits for messages.
func (o *outbox) wake(q *destQueue) {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// gone ends the outbox of a deleted destination: its dead letters are
// deleted, and no worker starts for it again here.
func (o *outbox) gone(ctx context.Context, q *destQueue, log *slog.Logger) {
	o.mu.Lock()
	q.fenced = true // not fenced, but as final
	o.mu.Unlock()
	epoch, err := o.st.Claim(ctx, o.tenant, deadID(q.id))
	if err != nil {
		log.Error("claim a deleted destination's dead letters", "err", err)
		return
	}
	n := 0
	for {
		qs, err := o.st.Read(ctx, o.tenant, deadID(q.id), 0, deadPage)
		if err != nil || len(qs) == 0 {
			if err != nil {
				log.Error("read a deleted destination's dead letters", "err", err)
			}
			break
		}
		seqs := make([]uint64, len(qs))
		for i, m := range qs {
			seqs[i] = m.Seq
		}
		if err := o.st.Ack(ctx, o.tenant, deadID(q.id), epoch, seqs); err != nil {
			log.Error("delete a deleted destination's dead letters", "err", err)
			break
		}
		n += len(qs)
	}
	log.Info("destination deleted: its outbox is closed", "dead_letters_deleted", n)
}

// errDirectoryDown is what a destination's status says when the
// directory could not be read for it.
var errDirectoryDown = errors.New("the destination could not be read from the directory; delivery is retried")

// webhook returns a destination opened for sending: from the cache, or
// read from the directory and opened. gone is true when the destination
// no longer exists.
func (o *outbox) webhook(ctx context.Context, id string) (wh dataout.Webhook, gone bool, a dataout.Attempt) {
	if v, ok := o.hooks.Load(id); ok {
		return v.(dataout.Webhook), false, dataout.Attempt{}
	}
	gen := o.gen.Load()
	d, err := o.cfg.Rules.Destination(ctx, o.tenant, id)
	switch {
	case errors.Is(err, tenants.ErrNotFound):
		return wh, true, dataout.Attempt{}
	case err != nil:
		// The status shows the text to every member: not the database's
		// address or user, which its errors name.
		o.log.Warn("read a destination to deliver to", "destination", id, "err", err)
		return wh, false, dataout.Attempt{Kind: "directory", Err: errDirectoryDown}
	}
	if wh, err = o.cfg.Sealer.Webhook(o.tenant, d); err != nil {
		return wh, false, dataout.Attempt{Kind: "secret", Err: err}
	}
	// Sealed under an earlier operator token still in the key ring: sealed
	// again under the current one, so that the old token can go.
	if err := o.cfg.Sealer.Refresh(ctx, o.cfg.Rules, o.tenant, d); err != nil {
		o.log.Warn("seal a destination's secrets under the current key", "destination", id, "err", err)
	}
	if o.gen.Load() == gen {
		o.hooks.Store(id, wh)
	}
	return wh, false, dataout.Attempt{}
}

// busy reports whether a worker here has messages to deliver, which keep
// the tenant's broker running.
func (o *outbox) busy() bool {
	if o == nil || !o.deliver {
		return false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, q := range o.dests {
		if q.backlog.Load() > 0 {
			return true
		}
	}
	return false
}

// figures sums the counts of the tenant's outboxes here, for metrics.
func (o *outbox) figures() (delivered, failed, dropped, backlog int64) {
	if o == nil {
		return 0, 0, 0, 0
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, q := range o.dests {
		delivered += q.delivered.Load()
		failed += q.failed.Load()
		dropped += q.dropped.Load()
		if o.deliver {
			backlog += max(0, q.backlog.Load())
		}
	}
	return delivered, failed, dropped, backlog
}

// compiled returns the tenant's destination rules, compiled, reading them
// if a change dropped them. If the directory cannot be read, the rules as
// they were before the change serve (a node that lost the directory goes
// on as it was); with none read yet, the publish is refused.
func (o *outbox) compiled() (*outboxRules, error) {
	if r := o.rules.Load(); r != nil && !r.stale {
		return r, nil
	}
	o.rulesMu.Lock()
	defer o.rulesMu.Unlock()
	old := o.rules.Load()
	if old != nil && !old.stale {
		return old, nil
	}
	ctx, cancel := storeCtx()
	defer cancel()
	all, err := o.cfg.Rules.Rules(ctx, o.tenant)
	if err != nil {
		if old != nil {
			o.log.Warn("read rules for the outbox; the rules read before serve", "err", err)
			return old, nil
		}
		return nil, err
	}
	var dest []tenants.ExportRule
	for _, r := range all {
		if r.Destination != "" {
			dest = append(dest, r)
		}
	}
	set, errs := o.compiler.CompileRules(dest)
	set = set.WithBudget(o.budget)
	for _, err := range errs {
		o.log.Error("compile a rule", "err", err)
	}
	r := &outboxRules{set: set, none: len(dest) == 0}
	if !r.none {
		// Read with the rules: a change of a destination is a change of
		// the rules (tenants.ExportChanged), which drops them.
		ds, err := o.cfg.Rules.Destinations(ctx, o.tenant)
		if err != nil {
			if old != nil {
				o.log.Warn("read destinations for the outbox; the rules read before serve", "err", err)
				return old, nil
			}
			// The rules serve with the tenant's policy for every
			// destination, and are read again at the next publish: a
			// publish is not refused for want of a destination's own
			// policy.
			o.log.Warn("read destinations for the outbox; the tenant's outbox_policy serves for each until they are read", "err", err)
			r.stale = true
			o.rules.Store(r)
			return r, nil
		}
		for _, d := range ds {
			if d.OutboxPolicy != "" {
				if r.policies == nil {
					r.policies = map[string]tenants.OutboxPolicy{}
				}
				r.policies[d.ID] = d.OutboxPolicy
			}
			if d.MaxOutbox > 0 {
				if r.limits == nil {
					r.limits = map[string]int64{}
				}
				r.limits[d.ID] = d.MaxOutbox
			}
		}
	}
	o.rules.Store(r)
	return r, nil
}

// errOutboxFull refuses a publish whose outbox is full under the refuse
// policy: quota exceeded (0x97).
var errOutboxFull = packets.ErrQuotaExceeded

// errRulesBusy refuses a QoS 1 or 2 publish whose tenant's rules have
// used their share of the node's CPU (dataout.ErrBudget) for longer than
// the publish could wait: 0x97, quota exceeded.
var errRulesBusy = packets.ErrQuotaExceeded

// outboxFull is errOutboxFull with the limit the outbox was full at (the
// destination's own max_outbox, or the tenant's).
type outboxFull struct{ limit int64 }

func (e *outboxFull) Error() string { return errOutboxFull.Error() }
func (e *outboxFull) Unwrap() error { return errOutboxFull }

// append puts a publish in the outbox of every destination whose rule it
// matches, in one write. A QoS 0 publish is appended too, but nothing
// refuses it: its publisher is never told.
//
// Where the tenant keeps sessions (inst.persist), the write of a QoS 1 or
// 2 publish is not made here but handed to the store hook, which makes it
// with the publish's copies for persistent sessions, in the one Append
// that precedes the acknowledgement (see persistence.beforeAck): one
// durable write per publish, not two. deferTo, if not nil, is the device
// connection whose outboxWrite takes the write to hand over.
func (o *outbox) append(cl *mqtt.Client, pk packets.Packet, deferTo *deviceConn) error {
	if o == nil {
		return nil
	}
	rules, err := o.compiled()
	if err != nil {
		o.log.Error("read rules for the outbox", "err", err)
		return errNotStored
	}
	if rules.none || !rules.set.MatchesTopic(pk.TopicName) {
		return nil
	}
	ctx, cancel := storeCtx()
	defer cancel()
	device := "api"
	if dc, ok := cl.Net.Conn.(*deviceConn); ok {
		device = dc.id.device
	}
	now := o.now()
	in := dataout.Input{Topic: pk.TopicName, Payload: pk.Payload, QoS: pk.FixedHeader.Qos, Device: device, ClientID: cl.ID, Time: now}
	if !cl.Net.Inline {
		o.addMetadata(ctx, &in)
	}
	msg := store.Message{Topic: pk.TopicName, Payload: pk.Payload, QoS: pk.FixedHeader.Qos, Retain: pk.FixedHeader.Retain, Created: now}
	w, err := o.enqueue(ctx, rules, in, msg, pk.FixedHeader.Qos > 0)
	if err != nil || w == nil {
		return err
	}
	if deferTo != nil && pk.FixedHeader.Qos > 0 {
		deferTo.outboxWrite = w
		return nil
	}
	if dc, ok := cl.Net.Conn.(*deviceConn); ok && !cl.Net.Inline && pk.FixedHeader.Qos == 0 {
		// Nothing waits for a QoS 0 publish's write; it is queued with
		// the connection's others, in order (see durable.go).
		if err := dc.commitBehind(w, false); err != nil {
			return errNotStored
		}
		return nil
	}
	if err := w.commit(ctx); err != nil {
		o.log.Error("append to outbox", "topic", pk.TopicName, "destinations", len(w.items), "err", err)
		return errNotStored
	}
	return nil
}

// takePending returns and forgets the outbox write the client's publish
// left for the store hook, nil if none.
func takePending(cl *mqtt.Client) *outboxWrite {
	dc, ok := cl.Net.Conn.(*deviceConn)
	if !ok || cl.Net.Inline {
		return nil
	}
	w := dc.outboxWrite
	dc.outboxWrite = nil
	return w
}

// addMetadata gives a rule's input its device's metadata, if the device
// is found.
func (o *outbox) addMetadata(ctx context.Context, in *dataout.Input) {
	if in.Device == "" {
		return
	}
	if d, found, err := o.device(ctx, in.Device); err == nil && found {
		in.Metadata = d.Metadata
	}
}

// outboxWrite is a message for the outboxes of the destinations whose
// rules matched it: the items of one store write, and what follows it.
type outboxWrite struct {
	o      *outbox
	queues []*destQueue
	items  []store.Item
	// one and oneQueue hold items and queues for one destination, the
	// most common case, in the write's own allocation.
	one      [1]store.Item
	oneQueue [1]*destQueue
}

// commit makes the write alone.
func (w *outboxWrite) commit(ctx context.Context) error {
	if _, err := w.o.st.Append(ctx, w.o.tenant, w.items, store.Receipt{}); err != nil {
		return err
	}
	w.written()
	return nil
}

// commitBeforeAck makes the write of a publish's outbox copy before its
// publisher is acknowledged. A device's QoS 1 publish is queued on its
// connection, whose reader reads on while what it writes next waits for
// the write (see durable.go); any other is written now, after the
// connection's queued writes. logged reports whether a failure was
// logged already.
func (w *outboxWrite) commitBeforeAck(cl *mqtt.Client, qos byte) (logged bool, err error) {
	if dc, ok := cl.Net.Conn.(*deviceConn); ok && !cl.Net.Inline {
		if qos == 1 && durableBehind.Load() {
			return true, dc.commitBehind(w, true)
		}
		if err := dc.settle(); err != nil {
			return true, err
		}
	}
	ctx, cancel := storeCtx()
	defer cancel()
	return false, w.commit(ctx)
}

// durableBehind turns the queued writes of QoS 1 publishes off when false
// (the reader then waits for each), for the tests and benchmarks that
// compare (SetDurableBehind in the tests).
var durableBehind atomic.Bool

func init() { durableBehind.Store(true) }

// written counts the message into its outboxes, once the store has it,
// and wakes their workers.
func (w *outboxWrite) written() {
	for _, q := range w.queues {
		q.backlog.Add(1)
		w.o.wake(q)
	}
}

// enqueue decides which outboxes take msg: those of the destinations
// whose rules match in, each once, with the payload the first matching
// rule's projection makes, if it has one. A full outbox under the refuse policy
// refuses the message (errOutboxFull) if refusable (a QoS 1 or 2
// publish, whose publisher is told), and otherwise drops it there
// (counted); under drop_oldest its worker trims it to the limit. It
// returns the write to make, nil if no outbox takes the message.
func (o *outbox) enqueue(ctx context.Context, rules *outboxRules, in dataout.Input, msg store.Message, refusable bool) (*outboxWrite, error) {
	w := &outboxWrite{o: o}
	queues := w.oneQueue[:0]
	var tenantPolicy tenants.OutboxPolicy
	quota := o.limit()
	var matched [4]dataout.Match
	var droppedBuf [4]*destQueue
	dropped := droppedBuf[:0] // full outboxes that did not take it: once each
	var payloads [][]byte     // each queue's payload where a projection made one; nil while none did
	for _, m := range rules.set.AppendMatches(ctx, matched[:0], in) {
		if m.Err != nil {
			if refusable && errors.Is(m.Err, dataout.ErrBudget) {
				// Sent again, it is evaluated once the tenant's rules
				// are within their share: not lost for want of CPU.
				return nil, errRulesBusy
			}
			o.log.Debug("rule condition or projection not evaluated", "rule", m.Rule.ID, "topic", in.Topic, "err", m.Err)
			continue
		}
		q := o.queue(m.Rule.Destination)
		if slices.Contains(queues, q) || slices.Contains(dropped, q) {
			continue
		}
		limit := rules.limit(q.id, quota)
		if o.backlogOf(ctx, q) >= limit {
			policy := rules.policies[q.id] // its own, else the tenant's
			if policy == "" {
				if tenantPolicy == "" {
					tenantPolicy = o.policy(ctx)
				}
				policy = tenantPolicy
			}
			if policy == tenants.OutboxRefuse {
				if refusable {
					o.log.Info("outbox full: publish refused", "destination", q.id, "limit", limit)
					return nil, &outboxFull{limit: limit}
				}
				// Nothing tells a QoS 0 publisher, or an event's raiser:
				// the tenant hears of it (outbox_dropped).
				o.noteDropped(q, 1, tenants.OutboxRefuse, limit)
				dropped = append(dropped, q)
				continue
			}
			// drop_oldest: the worker trims the outbox to the limit.
		}
		queues = append(queues, q)
		if m.Payload != nil && payloads == nil {
			payloads = make([][]byte, len(queues)-1, len(queues))
		}
		if payloads != nil {
			payloads = append(payloads, m.Payload)
		}
	}
	if len(queues) == 0 {
		return nil, nil
	}
	msg.Properties = o.encodeOrigin(o.nextID.Add(1), in.Device, in.ClientID)
	w.queues = queues
	w.items = w.one[:0]
	if len(queues) > 1 {
		w.items = make([]store.Item, 0, len(queues))
	}
	for i, q := range queues {
		it := store.Item{ClientID: q.out, Message: msg}
		if payloads != nil && payloads[i] != nil {
			it.Message.Payload = payloads[i] // the rule's projection
		}
		w.items = append(w.items, it)
	}
	return w, nil
}

// limit is the most messages one destination's outbox holds.
func (o *outbox) limit() int64 {
	if n := o.quotas().MaxOutbox; n > 0 {
		return n
	}
	if o.cfg.MaxOutbox > 0 {
		return o.cfg.MaxOutbox
	}
	return 100_000
}

// backlogOf is an outbox's length: as its worker here knows it, or, where
// another node delivers, as read from the store at most once a second.
func (o *outbox) backlogOf(ctx context.Context, q *destQueue) int64 {
	fresh := q.known.Load() && (o.deliver || o.now().UnixNano()-q.readAt.Load() < int64(time.Second))
	if !fresh {
		info, err := o.st.QueueInfo(ctx, o.tenant, q.out)
		if err == nil {
			q.backlog.Store(int64(info.Len))
			q.readAt.Store(o.now().UnixNano())
			q.known.Store(true)
		}
	}
	return q.backlog.Load()
}

// queue returns a destination's outbox, starting its worker here if this
// node delivers.
func (o *outbox) queue(id string) *destQueue {
	o.mu.Lock()
	defer o.mu.Unlock()
	q := o.dests[id]
	if q == nil {
		q = &destQueue{id: id, out: outboxID(id), wake: make(chan struct{}, 1)}
		o.dests[id] = q
	}
	if o.deliver && !q.worker && !q.fenced && !o.stopped {
		q.worker = true
		o.wg.Add(1)
		go o.run(q)
	}
	return q
}

// encodeOrigin encodes what a webhook message says beyond the MQTT
// message (its id, device and client id) as the queued message's
// properties, opaque to the store. The id is the outbox's prefix, a dash
// and n in base 36.
func (o *outbox) encodeOrigin(n uint64, device, clientID string) []byte {
	var num [16]byte
	id := strconv.AppendUint(num[:0], n, 36)
	idLen := len(o.idPrefix) + 1 + len(id)
	b := make([]byte, 0, 1+3*binary.MaxVarintLen16+idLen+len(device)+len(clientID))
	b = append(b, 1)
	b = binary.AppendUvarint(b, uint64(idLen))
	b = append(append(append(b, o.idPrefix...), '-'), id...)
	for _, s := range [...]string{device, clientID} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return b
}

func decodeOrigin(b []byte) (id, device, clientID string, ok bool) {
	if len(b) == 0 || b[0] != 1 {
		return "", "", "", false
	}
	// One string for the three: they are parts of it.
	s := string(b)
	var out [3]string
	at := 1
	for i := range out {
		n, k := binary.Uvarint(b[at:])
		if k <= 0 || uint64(len(b)-at-k) < n {
			return "", "", "", false
		}
		at += k
		out[i] = s[at : at+int(n)]
		at += int(n)
	}
	return out[0], out[1], out[2], true
}

// webhookMessage is a queued message as its destination receives it.
func webhookMessage(q store.Queued) dataout.Message {
	id, device, clientID, ok := decodeOrigin(q.Properties)
	if !ok {
		id = "seq-" + strconv.FormatUint(q.Seq, 10)
	}
	return dataout.Message{ID: id, Topic: q.Topic, Payload: q.Payload, QoS: q.QoS, Retain: q.Retain, Device: device, ClientID: clientID, Time: q.Created}
}

// errStopped ends a worker's wait: the tenant's broker is stopping.
var errStopped = errors.New("outbox stopped")

// wait waits for d, a wake when wake is true, or the outbox to stop.
func (o *outbox) wait(q *destQueue, d time.Duration, wake bool) error {
	var timer <-chan time.Time
	if d >= 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		timer = t.C
	}
	var wakeC <-chan struct{}
	if wake {
		wakeC = q.wake
	}
	select {
	case <-o.stop:
		return errStopped
	case <-timer:
	case <-wakeC:
	}
	return nil
}

// run delivers one destination's outbox, in order, a batch at a time,
// until the outbox stops or another worker claims it. An empty outbox
// waits for a wake (and, for a spread tenant, polls), costing nothing.
func (o *outbox) run(q *destQueue) {
	defer o.wg.Done()
	fenced := false
	defer func() {
		o.mu.Lock()
		q.worker, q.fenced = false, q.fenced || fenced
		o.mu.Unlock()
	}()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-o.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	log := o.log.With("destination", q.id)
	var epoch uint64
	for retry := 1; ; retry++ {
		var err error
		if epoch, err = o.st.Claim(ctx, o.tenant, q.out); err == nil {
			break
		}
		log.Error("claim outbox", "err", err)
		if o.wait(q, o.cfg.Policy.Backoff(retry), false) != nil {
			return
		}
	}
	batch := o.cfg.Batch
	if batch <= 0 {
		batch = DefaultWebhookBatch
	}
	idle := time.Duration(-1)
	if o.poll {
		idle = o.cfg.Poll
		if idle <= 0 {
			idle = time.Second
		}
	}
	linger := o.cfg.Linger
	if linger == 0 {
		linger = 5 * time.Millisecond
	}
	// retry is the batch at the head being retried, as the store keeps it
	// (see retryState): read once the outbox is claimed, so that a batch
	// tried before a restart keeps its first attempt and its messages.
	rs := &retryStore{st: o.st, tenant: o.tenant, id: retryID(q.id), log: log}
	var retry retryState
	for n := 1; ; n++ {
		var err error
		if retry, err = rs.load(ctx); err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		log.Error("read the outbox's retry", "err", err)
		if o.wait(q, o.cfg.Policy.Backoff(n), false) != nil {
			return
		}
	}
	// endRetry forgets the retry once its batch left the outbox. A record
	// it could not delete names a batch no longer at the head: the next
	// worker drops it (batchOf).
	endRetry := func() bool {
		err := rs.clear(ctx, &retry)
		switch {
		case errors.Is(err, store.ErrFenced):
			log.Info("outbox claimed by another worker; this one stops")
			fenced = true
			return false
		case err != nil && ctx.Err() == nil:
			log.Error("delete the outbox's retry", "err", err)
		}
		return true
	}
	var (
		failures int // store failures in a row
		// refreshed is when the outbox's length was last read from the
		// store: at start, and for a spread tenant every few seconds
		// (other nodes append to it). In between it is counted here:
		// reading it is a scan in the embedded store.
		refreshed time.Time
		// head is the number of the last message that left the outbox
		// here; reads start after it. Every back-end makes appends to one
		// queue visible in the order of their numbers (numbering and
		// writing are one step), so none is passed over; and the embedded
		// store's reads then skip the deleted messages' tombstones instead
		// of walking them.
		head uint64
	)
	for {
		if refreshed.IsZero() || (o.poll && o.now().Sub(refreshed) > 5*time.Second) {
			o.refresh(ctx, q)
			refreshed = o.now()
		}
		if err := o.trim(ctx, q, epoch, &head); errors.Is(err, store.ErrFenced) {
			log.Info("outbox claimed by another worker; this one stops")
			fenced = true
			return
		}
		msgs, err := o.st.Read(ctx, o.tenant, q.out, head, batch)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			log.Error("read outbox", "err", err)
			if o.wait(q, o.cfg.Policy.Backoff(failures), false) != nil {
				return
			}
			continue
		}
		failures = 0
		msgs, retrying := retry.batchOf(msgs)
		if !retrying {
			msgs = withinBytes(msgs, WebhookBatchBytes) // a batch retried was cut so when first sent
		}
		if !retrying && !retry.first.IsZero() && !endRetry() {
			return
		}
		if len(msgs) == 0 {
			if !o.poll {
				// Empty: what was counted here may have drifted (an
				// append counted between the read and now is counted
				// again by the next read's acknowledgement, at worst).
				q.backlog.Store(0)
			}
			if o.wait(q, idle, true) != nil {
				return
			}
			if _, cached := o.hooks.Load(q.id); !cached {
				// Woken after a change of the tenant's rules or
				// destinations (or with nothing sent yet): a deleted
				// destination's worker clears its dead letters and ends.
				if _, gone, _ := o.webhook(ctx, q.id); gone {
					o.gone(ctx, q, log)
					return
				}
			}
			if linger > 0 && o.wait(q, linger, false) != nil {
				return
			}
			continue
		}
		outcome, at := o.attempt(ctx, q, msgs, &retry.first, &retry.attempts)
		if ctx.Err() != nil {
			return
		}
		seqs := seqsOf(msgs)
		retry.from, retry.to = seqs[0], seqs[len(seqs)-1]
		switch outcome {
		case dataout.Delivered:
			err = o.st.Ack(ctx, o.tenant, q.out, epoch, seqs)
			if err == nil {
				q.delivered.Add(int64(len(msgs)))
				if !endRetry() {
					return
				}
			}
		case dataout.Dead:
			err = o.bury(ctx, q, epoch, msgs, seqs)
			if err == nil {
				q.failed.Add(int64(len(msgs)))
				log.Warn("batch past the retry horizon: moved to the dead letters", "messages", len(msgs))
				if !endRetry() { // else still past its horizon: buried at its next attempt
					return
				}
			}
		case "gone":
			err = o.st.Ack(ctx, o.tenant, q.out, epoch, seqs)
			if err == nil {
				q.dropped.Add(int64(len(msgs)))
				log.Info("destination deleted: its outbox is dropped", "messages", len(msgs))
				if !endRetry() {
					return
				}
				// Dropped a batch at a time; the dead letters go once the
				// outbox is empty (above).
				o.wake(q)
			}
		default: // retry at at; meanwhile, drop_oldest keeps the outbox to its limit
			// The batch is kept, with its first attempt, before the wait:
			// a restart retries the same messages to the same horizon.
			if err := rs.save(ctx, &retry); errors.Is(err, store.ErrFenced) {
				log.Info("outbox claimed by another worker; this one stops")
				fenced = true
				return
			} else if err != nil && ctx.Err() == nil {
				// Retried all the same; a restart would start its
				// horizon again.
				log.Error("keep the outbox's retry", "err", err)
			}
			for d := at.Sub(o.now()); d > 0; d = at.Sub(o.now()) {
				if o.wait(q, d, true) != nil {
					return
				}
				if err := o.trim(ctx, q, epoch, &head); errors.Is(err, store.ErrFenced) {
					log.Info("outbox claimed by another worker; this one stops")
					fenced = true
					return
				}
			}
			continue
		}
		switch {
		case errors.Is(err, store.ErrFenced):
			log.Info("outbox claimed by another worker; this one stops")
			fenced = true
			return
		case err != nil:
			if ctx.Err() != nil {
				return
			}
			failures++
			log.Error("acknowledge outbox messages", "err", err)
			if o.wait(q, o.cfg.Policy.Backoff(failures), false) != nil {
				return
			}
		default:
			q.backlog.Add(-int64(len(msgs)))
			head = max(head, msgs[len(msgs)-1].Seq)
			// A batch short of full emptied the outbox: what came during
			// its request is a flow's next few messages, so the worker
			// lingers for more, as when woken, rather than send them at
			// once in a request of their own (at a publisher's pace, a
			// request, a read and an acknowledgement for every few
			// messages).
			if outcome == dataout.Delivered && len(msgs) < batch && linger > 0 && o.wait(q, linger, false) != nil {
				return
			}
		}
	}
}

// attempt sends a batch once and decides what becomes of it: delivered,
// dead, "gone" (its destination was deleted), or retried at the time
// returned.
func (o *outbox) attempt(ctx context.Context, q *destQueue, msgs []store.Queued, first *time.Time, attempts *int) (dataout.Outcome, time.Time) {
	now := o.now()
	if first.IsZero() {
		*first = now
	}
	*attempts++
	wh, gone, a := o.webhook(ctx, q.id)
	if gone {
		return "gone", time.Time{}
	}
	if a.Err == nil {
		b := dataout.Batch{Tenant: o.tenant, Destination: q.id, Messages: make([]dataout.Message, len(msgs))}
		for i, m := range msgs {
			b.Messages[i] = webhookMessage(m)
		}
		a = o.cfg.Sender.Send(ctx, wh, b)
	}
	if !a.OK() {
		// Read the destination again for the next attempt: its URL or
		// secret may have changed without this node hearing of it.
		o.hooks.Delete(q.id)
	}
	now = o.now()
	dec := o.cfg.Policy.Decide(*first, *attempts, now, a)
	note := dataplane.DeliveryAttempt{At: now.UTC(), Messages: len(msgs), Attempt: *attempts, Outcome: string(dec.Outcome), Status: a.Status,
		LatencyMS: float64(a.Latency.Microseconds()) / 1000}
	q.mu.Lock()
	if a.OK() {
		q.lastSuccess = now
	} else {
		q.lastError, q.lastErrText = now, attemptText(a)
		note.Error = q.lastErrText
	}
	q.noteAttempt(note)
	q.mu.Unlock()
	return dec.Outcome, dec.At
}

// attemptText says why an attempt failed, for the destination's status.
func attemptText(a dataout.Attempt) string {
	switch {
	case a.Err != nil:
		return string(a.Kind) + ": " + a.Err.Error()
	default:
		return "status " + strconv.Itoa(a.Status)
	}
}

// bury moves messages from the outbox to the dead letters: appended there
// first, then acknowledged, so that a failure in between leaves them in
// both (delivered twice at worst), never in neither.
func (o *outbox) bury(ctx context.Context, q *destQueue, epoch uint64, msgs []store.Queued, seqs []uint64) error {
	items := make([]store.Item, len(msgs))
	for i, m := range msgs {
		items[i] = store.Item{ClientID: deadID(q.id), Message: m.Message}
	}
	if _, err := o.st.Append(ctx, o.tenant, items, store.Receipt{}); err != nil {
		return err
	}
	return o.st.Ack(ctx, o.tenant, q.out, epoch, seqs)
}

// refresh reads an outbox's length and oldest message from the store.
func (o *outbox) refresh(ctx context.Context, q *destQueue) {
	info, err := o.st.QueueInfo(ctx, o.tenant, q.out)
	if err != nil {
		return
	}
	q.backlog.Store(int64(info.Len))
	q.readAt.Store(o.now().UnixNano())
	q.known.Store(true)
}

// limit is the most messages the outbox of destination id holds: its own
// max_outbox if it has one below quota (the tenant's), else quota.
func (r *outboxRules) limit(id string, quota int64) int64 {
	if n := r.limits[id]; n > 0 && n < quota {
		return n
	}
	return quota
}

// policyOf is q's outbox_policy as the rules last read say: its own, or
// the tenant's.
func (o *outbox) policyOf(ctx context.Context, q *destQueue) tenants.OutboxPolicy {
	if r := o.rules.Load(); r != nil {
		if p := r.policies[q.id]; p != "" {
			return p
		}
	}
	return o.policy(ctx)
}

// limitOf is limit for q as the rules last read say (stale ones keep
// their limits), or the tenant's quota if none were read: it never reads
// the directory, so a worker does not wait on it.
func (o *outbox) limitOf(q *destQueue) int64 {
	quota := o.limit()
	if r := o.rules.Load(); r != nil {
		return r.limit(q.id, quota)
	}
	return quota
}

// trim drops the oldest messages of an outbox over its limit, under the
// drop_oldest policy (under refuse, appends stop at the limit).
// It reads after head and moves head past what it dropped.
//
// Under refuse the messages waiting were acknowledged as kept: a bound of
// the destination's own lowered below them only stops new appends, and
// the outbox is trimmed to the tenant's quota alone (as when appends made
// at once on several connections or nodes overshoot it).
func (o *outbox) trim(ctx context.Context, q *destQueue, epoch uint64, head *uint64) error {
	limit := o.limitOf(q)
	if quota := o.limit(); limit < quota && q.backlog.Load() > limit && o.policyOf(ctx, q) == tenants.OutboxRefuse {
		limit = quota
	}
	over := q.backlog.Load() - limit
	if over <= 0 {
		return nil
	}
	msgs, err := o.st.Read(ctx, o.tenant, q.out, *head, int(min(over, 10_000)))
	if err != nil || len(msgs) == 0 {
		return err
	}
	seqs := make([]uint64, len(msgs))
	for i, m := range msgs {
		seqs[i] = m.Seq
	}
	if err := o.st.Ack(ctx, o.tenant, q.out, epoch, seqs); err != nil {
		return err
	}
	o.noteDropped(q, int64(len(msgs)), tenants.OutboxDropOldest, limit)
	q.backlog.Add(-int64(len(msgs)))
	*head = max(*head, msgs[len(msgs)-1].Seq)
	o.log.Info("outbox full: oldest messages dropped", "destination", q.id, "messages", len(msgs), "limit", limit)
	return nil
}

// noteDropped counts n messages q's full outbox (of limit) did not keep,
// how (see events.OutboxDropped), and tells the tenant through an
// outbox_dropped event: the first at once, then at most one a minute per
// destination, carrying how many drops it stands for (as a slow client's queue_dropped, see drops.go),
// so that a flood into a full outbox cannot flood the tenant's events.
// Drops after the last event wait for the next drop a minute on to be
// told; the destination's status counts each at once.
func (o *outbox) noteDropped(q *destQueue, n int64, how tenants.OutboxPolicy, limit int64) {
	q.dropped.Add(n)
	count, raise := q.drops.add(n, o.now())
	if !raise || o.raise == nil {
		return
	}
	o.raise(events.Event{Tenant: o.tenant, Type: events.OutboxDropped, Destination: q.id, Reason: string(how),
		Quota: "max_outbox", Limit: limit, Count: count})
}
