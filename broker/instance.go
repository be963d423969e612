package broker

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/internal/rate"
	"github.com/roosthub/roost/tenants"
)

// listenerID names the one listener of every instance: the ingress.
const listenerID = "ingress"

// instance is one tenant's broker.
type instance struct {
	tenant string
	server *mqtt.Server
	log    *slog.Logger
	// env is the hub around the instance, as far as it sees it; dir is
	// the directory, exporter writes to Kafka (nil: no export).
	env      env
	dir      *directoryCache
	exporter Exporter
	// limitsOff skips the publish quotas and metering: only for the
	// benchmark that measures what they cost.
	limitsOff bool
	// drops folds what mochi drops for clients that do not keep up into
	// queue_dropped events (see drops.go).
	drops dropNotes
	// boundsInflight: mochi's bound on in-flight messages is lifted, and
	// overQueued keeps clean sessions to max_queued instead.
	boundsInflight bool

	// wills holds the Wills waiting out their delay; see will.go.
	wills wills

	// withdrawWills is set as the instance shuts down (unless the hub sends
	// Wills on shutdown): the Wills of the clients it disconnects go
	// nowhere.
	withdrawWills atomic.Bool

	// conns counts device connections handed to the instance and not yet
	// ended, holds everything that keeps it running (those connections, API
	// publishes in progress, live views), watches the live views and
	// watchers them per person. The hub changes them under its lock, so
	// the reaper and a newcomer never disagree about whether the instance
	// is in use.
	conns, holds, watches int
	watchers              map[string]int
	lastActive            time.Time
	// sysRetained is the number of retained $SYS messages, which do not
	// count as something worth keeping the instance for (none, unless
	// mochi's event loop could not be quietened: see sweep.go).
	sysRetained int
	// expiry runs mochi's expiry only while something may expire (see
	// sweep.go).
	expiry expiryLoop

	rules listCache[tenants.ACLRule]
	// rulesGen is bumped each time rules is forgotten (see aclGen).
	rulesGen atomic.Uint64
	exports  listCache[*dataout.Rule]
	// exportCompiler compiles exports again after a change, only those
	// whose condition or projection is new.
	exportCompiler dataout.Compiler
	// exportErrs counts, per export rule, messages Kafka refused.
	errMu      sync.Mutex
	exportErrs map[string]int64

	// live is the tenant's live device connections.
	live presence
	// cmds is the commands waiting for their replies (command.go).
	cmds commandWaiters

	closeOnce sync.Once

	// persist writes sessions through to the hub's store; nil without one.
	persist *persistence
	// out is the tenant's outboxes (outbox.go); nil without delivery.
	out *outbox
	// spread says the tenant is served by every node of the fleet, and
	// routes is its part in the fabric (spread.go).
	spread, home bool
	// widening is set once its home decided to widen it (wide.go).
	widening atomic.Bool
	// anywhere: its persistent sessions live on any node (anywhere.go).
	anywhere bool
	routes   *spreadRoutes
	// anywhereN counts its sessions living anywhere, for max_sessions.
	anywhereN anywhereSessions
	// caughtUp, at a home whose fabric catches up when it joins, is
	// closed once it did (see awaitCatchUp); nil: nothing to wait for.
	caughtUp <-chan struct{}
	restored struct {
		clients  []storage.Client
		subs     []storage.Subscription
		inflight []storage.Message
		retained []storage.Message
	}
	// inlineMu serialises API publishes, so that inlineErr tells the one in
	// progress whether the store took it.
	inlineMu  sync.Mutex
	inlineErr error

	// q is the tenant's quotas as they are now; see quota.go.
	q            atomic.Pointer[tenants.Quotas]
	billsOverage atomic.Bool
	// deny is the tenant's deny_action as it is now; see deny.go.
	deny        atomic.Pointer[tenants.DenyAction]
	connectRate rate.Bucket
	publishRate rate.Bucket
	// evalBudget is the tenant's share of this node's CPU for evaluating
	// its rules, the outbox's and the Kafka export's (dataout.Budget).
	evalBudget dataout.Budget
	// meter counts the tenant's usage; it outlives the instance.
	meter *meter
}

// loadRestore reads the tenant's stored sessions for mochi's Stored* calls.
func (inst *instance) loadRestore() error {
	c, s, i, r, err := inst.persist.restore()
	if err != nil {
		return fmt.Errorf("restore sessions of %s: %w", inst.tenant, err)
	}
	inst.restored.clients, inst.restored.subs, inst.restored.inflight, inst.restored.retained = c, s, i, r
	return nil
}

// sysInterval is mochi's $SYS interval: $SYS is per tenant and nobody may
// read it, so it is refreshed about once a year instead of every second
// (should mochi's event loop not be quietened: see sweep.go).
const sysInterval = 365 * 24 * 3600

func newInstance(h *Hub, t tenants.Tenant) (*instance, error) {
	q := t.Quotas()
	caps := mqtt.NewDefaultServerCapabilities()
	// max_packet_size is enforced by deviceConn, which reads the quota as
	// it is now; mochi's own limit would stay what it was at start.
	caps.MaximumPacketSize = 0
	caps.MaximumSessionExpiryInterval = uint32(clamp(q.MaxSessionExpiry, 0, math.MaxUint32))
	caps.MaximumInflight = uint16(clamp(q.MaxQueued, 1, math.MaxUint16))
	if h.cfg.Sessions != nil {
		// persistence keeps queues to max_queued as it is now; mochi's
		// limit only has to be above it. Clean sessions are kept to it
		// by overQueued (see drops.go).
		caps.MaximumInflight = math.MaxUint16
	}
	// mochi allocates each client's queue of pending writes whole as it
	// connects, 8 bytes a place. It is not made smaller for small plans:
	// mochi drops a message, of any QoS, that finds it full (Server.
	// publishToClient), and a clean session loses it, acknowledged to its
	// publisher. What can arrive for one client at once is a tenant's
	// whole publish burst (tenant_publish_rate for burstSeconds: 1,000 on
	// the free plan). 1,024 (8 KiB) instead of mochi's 8,192 (64 KiB).
	caps.MaximumClientWritesPending = 1024
	caps.TopicAliasMaximum = 64
	// mochi would otherwise copy a PUBLISH's properties (its user
	// properties, the internal tag among them) into the PUBACK or PUBREC.
	caps.Compatibilities.NoInheritedPropertiesOnAck = true
	log := h.log.With("tenant", t.Slug)
	// mochi makes its inline client (HTTP publishes) as New runs, with a
	// queue of pending writes like any client's. Nothing is ever queued
	// for it: its subscriptions are handlers, not queued deliveries. So
	// it is made with none, 8 KiB less per instance, and the devices'
	// clients, made from the same capabilities once the server serves,
	// with theirs.
	pending := caps.MaximumClientWritesPending
	caps.MaximumClientWritesPending = 0
	var inst *instance // mochi logs only once it serves, after inst is set
	srv := mqtt.New(&mqtt.Options{
		Capabilities:           caps,
		InlineClient:           true,
		SysTopicResendInterval: sysInterval,
		// mochi reads through a bufio.Reader of its own on top of the
		// deviceConn, which hands it the stream frame by frame and
		// buffers what the socket gave: bufio's smallest (16 bytes, not
		// 2 KiB a connection) costs no extra read, as a body at least
		// that long is read straight into mochi's packet.
		ClientNetReadBufferSize: 16,
		Logger:                  mochiLogger(log, func(clientID string) { inst.dropped(clientID, dropInflight) }),
	})
	caps.MaximumClientWritesPending = pending
	inst = &instance{tenant: t.Slug, server: srv, log: log, env: hubEnv{h, t.Slug}, dir: h.dir, exporter: h.cfg.Exporter, limitsOff: h.limitsOff,
		lastActive: h.now(), exportErrs: map[string]int64{},
		watchers: map[string]int{}}
	inst.boundsInflight = caps.MaximumInflight == math.MaxUint16
	inst.setQuotas(t)
	inst.meter = h.meterOf(t.Slug)
	inst.live.meter = inst.meter
	home := true
	if h.wide(t.Slug) {
		inst.spread = true
		home = h.fabricHome(t.Slug)
		inst.anywhere = h.sessionsAnywhere()
	}
	inst.home = home
	if h.cfg.Sessions != nil {
		inst.persist = newPersistence(h.cfg.Sessions, t.Slug, srv, inst, log)
		inst.persist.retainedOnly = !home || inst.anywhere
		inst.persist.anywhere = inst.anywhere
		inst.persist.spread = inst.spread
	}
	inst.out = newOutbox(inst, h)
	if err := addHooks(inst); err != nil {
		return nil, err
	}
	if err := srv.AddHook(&expiryHook{inst: inst}, nil); err != nil {
		return nil, err
	}
	if err := srv.AddListener(&handoff{srv: srv, wills: h.cfg.WillsOnShutdown, withdraw: &inst.withdrawWills}); err != nil {
		return nil, err
	}
	if err := srv.Serve(); err != nil {
		return nil, fmt.Errorf("start broker for %s: %w", t.Slug, err)
	}
	inst.quietLoop()
	// mochi keeps its $SYS values as retained messages; nobody else can
	// publish under $SYS, so their number stays what it is now.
	for topic := range srv.Topics.Retained.GetAll() {
		if strings.HasPrefix(topic, "$SYS") {
			inst.sysRetained++
		}
	}
	inst.restored.clients, inst.restored.subs, inst.restored.inflight, inst.restored.retained = nil, nil, nil, nil
	if inst.spread {
		if err := inst.joinFabric(h.cfg.Fabric, home); err != nil {
			srv.Close()
			return nil, fmt.Errorf("join %s's other nodes: %w", t.Slug, err)
		}
	}
	inst.out.start()
	if inst.persist != nil {
		for _, w := range inst.persist.wills {
			inst.holdRestoredWill(w)
		}
		inst.persist.wills = nil
	}
	return inst, nil
}

func clamp(v, lo, hi int64) int64 { return min(max(v, lo), hi) }

// mochiLogger passes on mochi's warnings and errors, tagged with the tenant;
// its informational lines (one per start and stop) are not worth a line
// per tenant. Each kind of line is passed on at most once a minute per
// client (see foldedLog): mochi warns once for every message it drops for
// a client whose in-flight messages reached max_queued ("client store
// quota reached"), so one device that subscribes and stops reading would
// otherwise write a line for each message published to it.
//
// Each "client store quota reached" goes to inflightFull with the client's
// id, folded or not (see drops.go).
func mochiLogger(log *slog.Logger, inflightFull func(clientID string)) *slog.Logger {
	return slog.New(levelFilter{log.Handler(), slog.LevelWarn, &foldedLog{seen: map[string]*foldedLine{}}, inflightFull})
}

// mochiFoldEvery is how often a line of one kind for one client passes.
const mochiFoldEvery = time.Minute

// maxFolded bounds the kinds and clients foldedLog remembers; past it, it
// starts again.
const maxFolded = 10_000

// foldedLog remembers, by message and client, when a line last passed and
// how many were held back since; the next to pass says so ("folded").
type foldedLog struct {
	mu   sync.Mutex
	seen map[string]*foldedLine
}

type foldedLine struct {
	last   time.Time
	folded int
}

// pass reports whether a line may pass now, and how many of its kind were
// held back before it.
func (f *foldedLog) pass(key string, now time.Time) (bool, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.seen[key]
	if e == nil {
		if len(f.seen) >= maxFolded {
			clear(f.seen)
		}
		f.seen[key] = &foldedLine{last: now}
		return true, 0
	}
	if now.Sub(e.last) < mochiFoldEvery {
		e.folded++
		return false, 0
	}
	n := e.folded
	e.last, e.folded = now, 0
	return true, n
}

type levelFilter struct {
	slog.Handler
	min          slog.Level
	fold         *foldedLog
	inflightFull func(clientID string)
}

func (f levelFilter) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= f.min && f.Handler.Enabled(ctx, l)
}

func (f levelFilter) Handle(ctx context.Context, r slog.Record) error {
	key := r.Message
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "client" {
			key += "\x00" + a.Value.String()
			if r.Message == mochiInflightFull && f.inflightFull != nil {
				f.inflightFull(a.Value.String())
			}
			return false
		}
		return true
	})
	ok, folded := f.fold.pass(key, r.Time)
	if !ok {
		return nil
	}
	if folded > 0 {
		r.AddAttrs(slog.Int("folded", folded))
	}
	return f.Handler.Handle(ctx, r)
}

func (f levelFilter) WithAttrs(a []slog.Attr) slog.Handler {
	return levelFilter{f.Handler.WithAttrs(a), f.min, f.fold, f.inflightFull}
}

func (f levelFilter) WithGroup(n string) slog.Handler {
	return levelFilter{f.Handler.WithGroup(n), f.min, f.fold, f.inflightFull}
}

// handoff is the listener every instance registers for the connections the
// ingress hands it. It listens on nothing, but being registered makes
// mochi's Close disconnect those clients (see DESIGN §5).
//
// It disconnects them itself rather than through the function mochi hands
// it: mochi v2.7.9's Clients.GetByListener takes the clients' read lock
// twice (through Len), so a client leaving at that moment (its Delete
// waiting for the write lock in between) deadlocks the instance's Close.
//
// Unless wills is set, the clients' Wills are withdrawn first: a broker
// shutting down is not its devices going away. (They are withdrawn through
// the hook's OnWill rather than by clearing each client's Will flag: mochi
// writes that field without synchronisation as a client leaves.)
type handoff struct {
	srv      *mqtt.Server
	wills    bool
	withdraw *atomic.Bool
}

func (*handoff) Init(*slog.Logger) error     { return nil }
func (*handoff) Serve(listeners.EstablishFn) {}
func (*handoff) ID() string                  { return listenerID }
func (*handoff) Address() string             { return "" }
func (*handoff) Protocol() string            { return "mqtt" }
func (h *handoff) Close(listeners.CloseFn) {
	if !h.wills && h.withdraw != nil {
		h.withdraw.Store(true)
	}
	for _, cl := range h.srv.Clients.GetAll() {
		if cl.Net.Listener == listenerID && !cl.Closed() {
			h.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
}

// serve runs one connection until it ends. A panic in mochi while serving it
// is recovered and logged, and only this connection is closed; any state
// mochi left behind for it is removed.
func (inst *instance) serve(dc *deviceConn) {
	defer func() {
		if v := recover(); v != nil {
			inst.log.Error("panic serving connection", "device", dc.id.device, "remote", dc.RemoteAddr().String(),
				"panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			inst.removeGhost(dc)
		}
		dc.Close()
		// The connection's outbox writes end with it (see durable.go).
		dc.settle()
	}()
	if err := inst.server.EstablishConnection(listenerID, dc); err != nil {
		inst.log.Debug("connection ended", "device", dc.id.device, "err", err)
	}
	// mochi skips the disconnect hook when a connection fails between
	// OnConnect and its CONNACK; presence must not outlive it.
	inst.live.drop(dc)
}

// removeGhost removes a client whose connection panicked: mochi would keep
// it subscribed, collecting messages, with no Will and no disconnect hook.
func (inst *instance) removeGhost(dc *deviceConn) {
	for _, cl := range inst.server.Clients.GetAll() {
		if cl.Net.Conn == net.Conn(dc) {
			inst.server.UnsubscribeClient(cl)
			inst.server.Clients.Delete(cl.ID)
			cl.Stop(packets.ErrUnspecifiedError)
			inst.live.drop(dc)
		}
	}
}

// aclRules returns the tenant's rules, read once and kept until a change.
func (inst *instance) aclRules() ([]tenants.ACLRule, error) {
	return inst.rules.get(func() ([]tenants.ACLRule, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return inst.dir.dir.ACLRules(ctx, inst.tenant)
	})
}

// forgetRules drops the cached rules after a change; the next check reads
// them again. The connections' read decisions made before are stale from
// then on (see mayReceive).
func (inst *instance) forgetRules() {
	inst.rules.forget()
	inst.rulesGen.Add(1)
}

// aclGen identifies what an ACL decision read: the tenant's rules and the
// directory's devices. A decision taken after aclGen returned a value
// stands while aclGen still returns it.
type aclGen struct{ rules, dir uint64 }

func (inst *instance) aclGen() aclGen {
	return aclGen{rules: inst.rulesGen.Load(), dir: inst.dir.gen.Load()}
}

// allowed decides an ACL question for a device, denying if the rules cannot
// be read.
//
// Rules that name a group or use ${group} or ${metadata.…} are decided on
// the device as the directory has it now (cached until a change to the
// device, as its credentials are): a change of its groups or metadata
// applies to a live connection from its next publish or delivery. A device
// that cannot be read is denied: deciding without its groups could skip a
// deny rule.
func (inst *instance) allowed(device string, action tenants.Action, topic string) bool {
	ok, _, _ := inst.decide(device, action, topic)
	return ok
}

// decide is allowed, telling also whether the decision read the device
// (a rule names a group or metadata) and whether the directory answered
// (a decision made without it is not one to keep).
func (inst *instance) decide(device string, action tenants.Action, topic string) (ok, readDevice, answered bool) {
	rules, err := inst.aclRules()
	if err != nil {
		inst.log.Error("read acl rules", "err", err)
		return false, false, false
	}
	sub := tenants.ACLSubject{Device: device}
	readDevice = tenants.NeedsSubject(rules)
	if readDevice {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		d, found, err := inst.dir.device(ctx, inst.tenant, device)
		cancel()
		if err != nil {
			inst.log.Error("read device for acl", "device", device, "err", err)
			return false, true, false
		}
		if !found {
			return false, true, true
		}
		sub = d.Subject()
	}
	ok, _ = tenants.CheckACL(rules, sub, action, topic)
	return ok, readDevice, true
}

// kick disconnects a client, telling a v5 client why.
func (inst *instance) kick(cl *mqtt.Client, why packets.Code) {
	inst.server.DisconnectClient(cl, why)
}

// end closes a client's connection for a protocol or quota error: an MQTT 5
// client is told why with a DISCONNECT, a 3.1.1 one (which has no server
// DISCONNECT) is just closed.
func (inst *instance) end(cl *mqtt.Client, why packets.Code) { endConn(inst.server, cl, why) }

func endConn(server *mqtt.Server, cl *mqtt.Client, why packets.Code) {
	if cl.Properties.ProtocolVersion == 5 {
		server.DisconnectClient(cl, why)
		return
	}
	cl.Stop(why)
}

// close stops the instance once, disconnecting every client.
func (inst *instance) close() {
	inst.closeOnce.Do(func() {
		inst.stopWills()
		inst.out.close()
		inst.server.Close()
		inst.leaveFabric()
	})
}

// idle reports whether the instance holds nothing worth keeping: no
// connection, no session waiting for its client, no retained message.
func (inst *instance) idle() bool {
	sessions := inst.server.Clients.Len()
	if _, ok := inst.server.Clients.Get(mqtt.InlineClientId); ok {
		sessions-- // the inline client, used for HTTP publishes, is always there
	}
	// Retained messages hold an instance only if they are nowhere else;
	// with a session store they are restored when it starts again.
	retained := inst.persist == nil && inst.server.Topics.Retained.Len() > inst.sysRetained
	return inst.holds == 0 && sessions == 0 && !retained && inst.heldWills() == 0 && !inst.out.busy()
}

// env is what a tenant's broker sees of the hub around it.
type env interface {
	// now is the hub's clock.
	now() time.Time
	// emit raises an event (stamped with the clock).
	emit(events.Event)
	// quotaHit counts a device's hit of a quota and raises its event.
	quotaHit(device, clientID, quota string, limit int64)
	// publishDenied counts a device's denied publish and raises its event
	// (folding repeats; see denials).
	publishDenied(device, clientID, remote, topic, reason string)
	// touch notes that a device was seen.
	touch(device string, at time.Time)
	// qualifies checks an admitted connection against the directory as it
	// is now: nil, or the refusal it gets now.
	qualifies(id identity, clientID string) *refusal
	// fenced counts a session-store write refused as fenced.
	fenced()
	// serving reports whether the node may serve its tenants now (see
	// Cluster.Serving).
	serving() bool
	// refusedForLease counts a publish refused while the lease may have
	// lapsed.
	refusedForLease()
}

// hubEnv is a hub as one tenant's broker sees it.
type hubEnv struct {
	h      *Hub
	tenant string
}

func (e hubEnv) now() time.Time       { return e.h.now() }
func (e hubEnv) emit(ev events.Event) { e.h.emit(ev) }
func (e hubEnv) quotaHit(device, clientID, quota string, limit int64) {
	e.h.quotaHit(e.tenant, device, clientID, quota, limit)
}
func (e hubEnv) publishDenied(device, clientID, remote, topic, reason string) {
	e.h.publishDenied(e.tenant, device, clientID, remote, topic, reason)
}
func (e hubEnv) touch(device string, at time.Time) { e.h.touch(e.tenant, device, at) }
func (e hubEnv) qualifies(id identity, clientID string) *refusal {
	return e.h.qualifies(id, clientID)
}
func (e hubEnv) fenced()          { e.h.fencedWrites.Add(1) }
func (e hubEnv) refusedForLease() { e.h.leaseRefused.Add(1) }
func (e hubEnv) serving() bool {
	return e.h.cfg.Cluster == nil || e.h.cfg.Cluster.Serving()
}

// The instance is its persistence's sessionHost.

func (inst *instance) mayRead(cl *mqtt.Client, topic string) bool {
	return inst.hookACL(cl, topic, false)
}

func (inst *instance) queuePolicy(ctx context.Context) tenants.QueuePolicy {
	if t, found, err := inst.dir.tenant(ctx, inst.tenant); err == nil && found && t.QueuePolicy != "" {
		return t.QueuePolicy
	}
	return tenants.DropOldest
}

// raise raises an event not about one client.
func (inst *instance) raise(e events.Event) { inst.env.emit(e) }

func (inst *instance) fenced() { inst.env.fenced() }
