package broker

import (
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/internal/rate"
	"github.com/roosthub/roost/tenants"
)

// The data plane enforces each quota of DESIGN §3 where it applies, reading
// the tenant's quotas as they are now: a change made by the operator reaches
// existing connections at their next packet.
//
//	max_connections      CONNACK 0x97 (3.1.1: 0x03)
//	max_sessions         per node: a CONNECT that would make a session more than it keeps
//	                     (connected, and persistent ones waiting): CONNACK 0x97 (3.1.1: 0x03)
//	connect_rate         CONNACK 0x9F (3.1.1: 0x03), per tenant
//	publish_rate         per connection; v5 DISCONNECT 0x96, 3.1.1 acknowledged and dropped
//	tenant_publish_rate  the same, across the tenant's connections
//	bandwidth_in/out     per connection; reads and writes are slowed, nothing is dropped
//	max_packet_size      CONNACK 0x95 / DISCONNECT 0x95 (3.1.1: the connection closes)
//	max_subscriptions    per connection; SUBACK 0x97 (3.1.1: 0x80) for filters over it
//	max_retained         per tenant; v5 QoS 1 PUBACK 0x97, otherwise DISCONNECT 0x97 (3.1.1: closes)
//	max_queued           per offline session; see persistence.makeRoom
//	max_session_expiry   a longer requested expiry is cut to it
//	max_keepalive        a longer keep-alive, or none (0), is cut to it: v5 CONNACK Server Keep Alive;
//	                     the connection closes after 1.5 × max_keepalive without a packet
//	messages_per_month   in and out; the free plan refuses publishes past it like max_retained
//	                     (API: 403), paid plans go on and bill the excess
//
// Every limit hit raises a quota_exceeded event naming the quota and limit,
// at most once a second per device and quota.

// Rate quotas allow a burst of one second's worth before they refuse.
const burstSeconds = 1

var (
	quotaConnections    = refusal{0x97, 0x03, "quota exceeded: max_connections"}
	quotaDevices        = refusal{0x97, 0x03, "quota exceeded: max_devices"}
	quotaSessions       = refusal{0x97, 0x03, "quota exceeded: max_sessions"}
	connectRateExceeded = refusal{0x9F, 0x03, "connection rate exceeded"}
)

// quotaHook applies the quotas a tenant's devices meet inside its broker
// and meters what they send and receive (the ingress applies the others
// before a connection gets here; see Hub.admit).
type quotaHook struct {
	mqtt.HookBase
	inst *instance
}

func (h *quotaHook) ID() string { return "roost-quotas" }

var quotaHookEvents = provides(mqtt.OnConnect, mqtt.OnPacketRead, mqtt.OnSubscribe, mqtt.OnSubscribed, mqtt.OnPublish, mqtt.OnPublished)

func (h *quotaHook) Provides(b byte) bool { return quotaHookEvents.has(b) }

// OnConnect cuts a requested session expiry to max_session_expiry, and a
// keep-alive longer than max_keepalive, or none (0), to max_keepalive.
// mochi then tells an MQTT 5 client in its CONNACK (Server Keep Alive),
// which it must keep to [MQTT-3.2.2-21], and closes any connection silent
// for 1.5 times the keep-alive [MQTT-3.1.2-22]: a 3.1.1 client cannot be
// told, and is held to it all the same. The keep-alive is set once, at
// connect: a client keeps to what it was told.
func (h *quotaHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if limit := h.inst.maxSessionExpiry(); cl.Properties.Props.SessionExpiryInterval > limit {
		cl.Properties.Props.SessionExpiryInterval = limit
	}
	if limit := h.inst.maxKeepalive(); limit > 0 && (cl.State.Keepalive == 0 || cl.State.Keepalive > limit) {
		cl.State.Keepalive, cl.State.ServerKeepalive = limit, true
	}
	return nil
}

// OnPacketRead cuts a DISCONNECT's session expiry to max_session_expiry:
// mochi takes it as it comes, so a client could keep its session forever
// by raising it as it leaves.
func (h *quotaHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type == packets.Disconnect {
		if limit := h.inst.maxSessionExpiry(); pk.Properties.SessionExpiryInterval > limit {
			pk.Properties.SessionExpiryInterval = limit
		}
	}
	return pk, nil
}

// OnSubscribe notes the filters of a SUBSCRIBE over max_subscriptions.
func (h *quotaHook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if dc, ok := cl.Net.Conn.(*deviceConn); ok {
		h.inst.overSubscriptions(cl, dc, pk)
	}
	return pk
}

// OnSubscribed gives the filters over max_subscriptions their code.
func (h *quotaHook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	if dc, ok := cl.Net.Conn.(*deviceConn); ok {
		h.inst.capSubscriptions(cl, dc, pk, reasonCodes)
	}
}

// OnPublish applies the publish rates, max_retained and messages_per_month
// to a device's publish (inject applies them to the hub's own).
func (h *quotaHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if !h.inst.env.serving() && !remote(pk) {
		// This node's lease may have lapsed: another may hold the tenant
		// by now. Nothing is acknowledged; a QoS 0 message is dropped. A
		// message from another node acknowledges nothing here: it is
		// delivered.
		h.inst.env.refusedForLease()
		if pk.FixedHeader.Qos == 0 {
			return pk, packets.ErrRejectPacket
		}
		return h.inst.refusePublish(cl, pk, errLeaseLapsed)
	}
	dc, ok := cl.Net.Conn.(*deviceConn)
	if !ok || h.inst.limitsOff {
		return pk, nil
	}
	if err := h.inst.checkPublish(cl, dc); err != nil {
		return pk, err
	}
	if limit, ok := h.inst.checkRetained(pk); !ok {
		h.inst.quotaHit(dc.id.device, cl.ID, "max_retained", limit)
		return h.inst.refusePublish(cl, pk, packets.ErrQuotaExceeded)
	}
	if limit, over := h.inst.monthExhausted(); over {
		h.inst.quotaHit(dc.id.device, cl.ID, "messages_per_month", limit)
		return h.inst.refusePublish(cl, pk, packets.ErrQuotaExceeded)
	}
	return pk, nil
}

// errLeaseLapsed refuses a publish while the node's lease may have lapsed.
var errLeaseLapsed = fmt.Errorf("%w: this node's lease may have lapsed", packets.ErrServerUnavailable)

// OnPublished meters a message the tenant accepted (not the hub's own
// $events).
func (h *quotaHook) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	if !pk.Ignore && !h.inst.limitsOff && !(cl.Net.Inline && (strings.HasPrefix(pk.TopicName, "$events/") || remote(pk))) {
		h.inst.meter.in(len(pk.Payload))
	}
}

// encode (see encodeHook) meters what is sent to devices, and has a v5 CONNACK
// announce the limits mochi enforces but does not announce, so that
// clients keep to them instead of being disconnected for breaking them.
func (h *quotaHook) encode(cl *mqtt.Client, pk *packets.Packet) {
	switch {
	case pk.FixedHeader.Type == packets.Publish:
		if _, ok := cl.Net.Conn.(*deviceConn); ok && !h.inst.limitsOff {
			h.inst.meter.out(len(pk.Payload))
		}
	case pk.FixedHeader.Type == packets.Connack && pk.ProtocolVersion == 5 && pk.ReasonCode < 0x80:
		q := h.inst.quotas()
		pk.Properties.MaximumPacketSize = uint32(clamp(q.MaxPacketSize, 1, math.MaxUint32))
		pk.Properties.TopicAliasMaximum = h.inst.server.Options.Capabilities.TopicAliasMaximum
		if cl.Properties.Props.SessionExpiryIntervalFlag {
			// The expiry in force, max_session_expiry applied.
			pk.Properties.SessionExpiryInterval = cl.Properties.Props.SessionExpiryInterval
			pk.Properties.SessionExpiryIntervalFlag = true
		}
	}
}

// maxSessionExpiry is max_session_expiry as MQTT carries it.
func (inst *instance) maxSessionExpiry() uint32 {
	return uint32(clamp(inst.quotas().MaxSessionExpiry, 0, math.MaxUint32))
}

// maxKeepalive is max_keepalive as MQTT carries it; 0 for no bound.
func (inst *instance) maxKeepalive() uint16 {
	return uint16(clamp(inst.quotas().MaxKeepalive, 0, math.MaxUint16))
}

// quotas returns the tenant's quotas as they are now.
func (inst *instance) quotas() tenants.Quotas { return *inst.q.Load() }

// setQuotas takes the tenant's quotas and settings as they are now: at
// start, and after each change to the tenant.
func (inst *instance) setQuotas(t tenants.Tenant) {
	q := t.Quotas()
	inst.q.Store(&q)
	inst.billsOverage.Store(t.BillsOverage())
	inst.setDenyAction(t.DenyAction)
}

// connectAllowed takes a connection from the tenant's connect rate.
func (inst *instance) connectAllowed(now time.Time) bool {
	r := float64(inst.quotas().ConnectRate)
	return inst.connectRate.Allow(now, 1, r, r*burstSeconds)
}

// quotaHit counts a limit hit and raises its event.
// newSessionOver reports whether a connection for clientID would make the
// tenant's broker keep more than max_sessions sessions: clientID is none of
// those it keeps (connected, or waiting for their client), and it keeps
// max_sessions already. A client id not given (the broker assigns one) is
// a new session. Connections admitted at once may pass it by a few. Where
// sessions live on any node the waiting ones are not kept here: the
// tenant's across its nodes are bounded too (sessionsAnywhereOver).
func (inst *instance) newSessionOver(clientID string) bool {
	limit := inst.quotas().MaxSessions
	if limit <= 0 {
		return false
	}
	if clientID != "" {
		if _, ok := inst.server.Clients.Get(clientID); ok {
			return false
		}
	}
	kept := int64(inst.server.Clients.Len())
	if inst.server.Options.InlineClient {
		kept-- // the broker's own, for the hub's publishes
	}
	if kept >= limit {
		return true
	}
	if inst.anywhere && inst.routes != nil && inst.routes.sess != nil {
		// Waiting sessions are in the store, not here: they are counted
		// across the tenant's nodes, up to what those nodes would keep.
		nodes := max(1, inst.quotas().MaxNodes)
		return inst.sessionsAnywhereOver(clientID, min(limit, math.MaxInt64/nodes)*nodes)
	}
	return false
}

// anywhereSessions is the count of a tenant's sessions living on any node,
// as last read from the fabric, plus the new ones let in since.
type anywhereSessions struct {
	mu   sync.Mutex
	n    int64
	read time.Time
}

// sessionsAnywhereOver reports whether a connection for clientID would make
// the tenant keep more than bound sessions where they live on any node:
// clientID has none there, and the tenant has bound already. Below the
// bound, a count read within the last second serves without a round trip;
// at it, each connection asks whether its client id has a session.
func (inst *instance) sessionsAnywhereOver(clientID string, bound int64) bool {
	c, now := &inst.anywhereN, time.Now()
	c.mu.Lock()
	if !c.read.IsZero() && now.Sub(c.read) < time.Second && c.n < bound {
		c.n++ // taken as new until the next read
		c.mu.Unlock()
		return false
	}
	c.mu.Unlock()
	ctx, cancel := routeCtx()
	defer cancel()
	n, known, err := inst.routes.sess.CountSessions(ctx, clientID)
	if err != nil {
		// The connection's own fabric calls fail it while the fabric
		// is away; the count is not what refuses it.
		inst.log.Warn("count the tenant's sessions for max_sessions", "err", err)
		return false
	}
	over := !known && n >= bound
	c.mu.Lock()
	c.n, c.read = n, now
	if !known && !over {
		c.n++
	}
	c.mu.Unlock()
	return over
}

func (inst *instance) quotaHit(device, clientID, quota string, limit int64) {
	inst.env.quotaHit(device, clientID, quota, limit)
}

// quotaHit counts a limit hit on the tenant's meter and raises the event,
// at most once a second per device and quota.
func (h *Hub) quotaHit(tenant, device, clientID, quota string, limit int64) {
	m, now := h.meterOf(tenant), h.now()
	k := device + "\x00" + quota
	m.hitMu.Lock()
	m.hits[quota]++
	last, seen := m.lastHit[k]
	if seen && now.Sub(last) < time.Second {
		m.hitMu.Unlock()
		return
	}
	if len(m.lastHit) > 10_000 {
		clear(m.lastHit)
	}
	m.lastHit[k] = now
	m.hitMu.Unlock()
	h.log.Info("quota exceeded", "tenant", tenant, "device", device, "quota", quota, "limit", limit)
	h.emit(events.Event{Tenant: tenant, Type: events.QuotaExceeded, Device: device, ClientID: clientID, Quota: quota, Limit: limit})
}

// QuotaHits is how often the tenant hit a quota since the hub started.
func (h *Hub) QuotaHits(tenant, quota string) int64 {
	v, ok := h.meters.Load(tenant)
	if !ok {
		return 0
	}
	m := v.(*meter)
	m.hitMu.Lock()
	defer m.hitMu.Unlock()
	return m.hits[quota]
}

// connLimits is what a connection keeps to enforce its own quotas.
type connLimits struct {
	publish rate.Bucket
	in, out rate.Bucket

	// A 3.1.1 connection whose publishes are dropped for a rate stops
	// being read for a while, doubling with each drop in a row (1ms to
	// 1s): TCP pushes back on the client, and a flood costs the hub
	// little. Both are touched only by the connection's reader.
	penalty     time.Duration
	pausedUntil time.Time

	// deny is the reader's state about the PUBLISH being processed, for
	// the tenant's deny_action (see deny.go).
	deny denyState
	// loggedDeep is set once a filter of this connection's was refused
	// for its levels and logged (see shallowFilters).
	loggedDeep bool

	// refuse holds the filters of the SUBSCRIBE being processed that are
	// over max_subscriptions; read by the ACL check of that SUBSCRIBE. The
	// same check is asked for every delivery, where it is nil: one atomic
	// load, no lock.
	refuse atomic.Pointer[map[string]bool]

	mu sync.Mutex
	// subscribing holds the filters of the SUBSCRIBE being processed,
	// so that their ACL check is not taken for a delivery (isDelivery).
	subscribing map[string]bool
}

// checkPublish applies the publish rates to a device's publish. It returns
// nil to go on, or the error for mochi: a v5 client is disconnected with
// 0x96, a 3.1.1 client's message is acknowledged and dropped (3.1.1 has no
// way to say why).
func (inst *instance) checkPublish(cl *mqtt.Client, dc *deviceConn) error {
	q, now := inst.quotas(), inst.env.now()
	quota, limit := "", int64(0)
	if r := float64(q.PublishRate); !dc.limits.publish.Allow(now, 1, r, r*burstSeconds) {
		quota, limit = "publish_rate", q.PublishRate
	} else if r := float64(q.TenantPublishRate); !inst.publishRate.Allow(now, 1, r, r*burstSeconds) {
		quota, limit = "tenant_publish_rate", q.TenantPublishRate
	}
	if quota == "" {
		dc.limits.penalty = 0
		return nil
	}
	inst.quotaHit(dc.id.device, cl.ID, quota, limit)
	inst.meter.throttled.Add(1)
	if cl.Properties.ProtocolVersion == 5 {
		inst.kick(cl, packets.ErrMessageRateTooHigh)
		return packets.ErrRejectPacket
	}
	dc.limits.penalty = min(max(2*dc.limits.penalty, time.Millisecond), time.Second)
	dc.limits.pausedUntil = now.Add(dc.limits.penalty)
	return packets.CodeSuccessIgnore
}

// monthExhausted reports whether the tenant has used its messages_per_month
// on a plan that blocks rather than bills the excess.
func (inst *instance) monthExhausted() (int64, bool) {
	limit := inst.quotas().MessagesPerMonth
	if inst.billsOverage.Load() {
		return limit, false
	}
	return limit, inst.meter.month.Load() >= limit
}

// checkRetained refuses a retained message that would take the tenant past
// max_retained; replacing or clearing one is always allowed.
func (inst *instance) checkRetained(pk packets.Packet) (int64, bool) {
	if !pk.FixedHeader.Retain || len(pk.Payload) == 0 {
		return 0, true
	}
	limit := inst.quotas().MaxRetained
	if _, ok := inst.server.Topics.Retained.Get(pk.TopicName); ok {
		return limit, true
	}
	return limit, int64(inst.server.Topics.Retained.Len()-inst.sysRetained) < limit
}

// overSubscriptions marks the new filters of a SUBSCRIBE that would take
// the connection past max_subscriptions; mochi's ACL check of each filter
// then refuses them, and capSubscriptions gives them 0x97.
func (inst *instance) overSubscriptions(cl *mqtt.Client, dc *deviceConn, pk packets.Packet) {
	limit := inst.quotas().MaxSubscriptions
	have := int64(cl.State.Subscriptions.Len())
	var refuse map[string]bool
	for _, f := range pk.Filters {
		if _, exists := cl.State.Subscriptions.Get(f.Filter); exists {
			continue
		}
		if have < limit {
			have++
			continue
		}
		if refuse == nil {
			refuse = map[string]bool{}
		}
		refuse[f.Filter] = true
	}
	if refuse == nil {
		dc.limits.refuse.Store(nil)
	} else {
		dc.limits.refuse.Store(&refuse)
	}
}

// refusedFilter reports whether the SUBSCRIBE being processed is over the
// quota for this filter.
func (dc *deviceConn) refusedFilter(filter string) bool {
	refuse := dc.limits.refuse.Load()
	return refuse != nil && (*refuse)[filter]
}

// capSubscriptions gives the refused filters their reason code and raises
// the event.
func (inst *instance) capSubscriptions(cl *mqtt.Client, dc *deviceConn, pk packets.Packet, codes []byte) {
	p := dc.limits.refuse.Swap(nil)
	if p == nil {
		return
	}
	refuse := *p
	code := packets.ErrQuotaExceeded.Code
	if cl.Properties.ProtocolVersion < 5 {
		code = packets.ErrUnspecifiedError.Code
	}
	for i, f := range pk.Filters {
		if i < len(codes) && refuse[f.Filter] {
			codes[i] = code
		}
	}
	inst.quotaHit(dc.id.device, cl.ID, "max_subscriptions", inst.quotas().MaxSubscriptions)
}

// throttleRead and throttleWrite slow a connection to its bandwidth quota;
// throttleRead also waits out a rate penalty.
func (dc *deviceConn) throttleRead(n int) {
	if dc.inst == nil || n <= 0 {
		return
	}
	now := time.Now()
	if wait := dc.limits.pausedUntil.Sub(now); wait > 0 {
		dc.flushBatch() // nothing batched waits out the sleep; an error ends the connection at the next frame
		time.Sleep(wait)
	}
	r := float64(dc.inst.quotas().BandwidthIn)
	if wait := dc.limits.in.Reserve(now, float64(n), r, r*burstSeconds); wait > 0 {
		dc.flushBatch()
		time.Sleep(wait)
	}
}

// throttleWrite returns the time after any wait.
func (dc *deviceConn) throttleWrite(now time.Time, n int) time.Time {
	if dc.inst == nil || n <= 0 {
		return now
	}
	r := float64(dc.inst.quotas().BandwidthOut)
	if wait := dc.limits.out.Reserve(now, float64(n), r, r*burstSeconds); wait > 0 {
		time.Sleep(wait)
		return time.Now()
	}
	return now
}

// maxPacket is the tenant's max_packet_size as it is now; 0 for none.
func (dc *deviceConn) maxPacket() int {
	if dc.inst == nil {
		return dc.fixedMax
	}
	return int(min(dc.inst.quotas().MaxPacketSize, 1<<31-1))
}

// tooLarge disconnects the client whose packet is over max_packet_size,
// telling a v5 client why.
func (inst *instance) tooLarge(dc *deviceConn) {
	inst.quotaHit(dc.id.device, dc.id.clientID, "max_packet_size", inst.quotas().MaxPacketSize)
	if cl, ok := inst.live.clientOf(dc); ok {
		inst.kick(cl, packets.ErrPacketTooLarge)
	}
}
