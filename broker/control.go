package broker

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
	"github.com/roosthub/roost/transport"
)

// Connections lists a device's live connections; none if its tenant's
// broker is not running.
func (h *Hub) Connections(tenant, device string) []dataplane.Connection {
	inst := h.reg.running(tenant)
	if inst == nil {
		return nil
	}
	return inst.live.connections(device)
}

// Disconnect ends every live connection of a device and returns how many
// there were. MQTT 5 clients are told 0x98 (administrative action).
func (h *Hub) Disconnect(tenant, device string) int {
	inst := h.reg.running(tenant)
	if inst == nil {
		return 0
	}
	clients := inst.live.clients(device)
	for _, cl := range clients {
		inst.kick(cl, packets.ErrAdministrativeAction)
	}
	return len(clients)
}

// Queue reports what a device's persistent sessions hold: zero values when
// its tenant's broker is not running or keeps no sessions.
func (h *Hub) Queue(tenant, device string) dataplane.QueueStats {
	inst := h.reg.running(tenant)
	if inst == nil || inst.persist == nil {
		return dataplane.QueueStats{}
	}
	return inst.persist.queueStats(device)
}

// Publish publishes a message into a tenant's broker, starting it if needed,
// through the checks and quotas a device's publish passes (see inject). It
// is delivered to every subscriber whose rules allow it; access rules for
// the sender are the caller's business (the API checks roles).
func (h *Hub) Publish(ctx context.Context, tenant string, m dataplane.Message) error {
	if err := publishTopic(m.Topic); err != nil {
		return err
	}
	if m.QoS > 2 {
		return &tenants.FieldError{Field: "qos", Message: "must be 0, 1 or 2"}
	}
	t, err := h.activeTenant(ctx, tenant)
	if err != nil {
		return err
	}
	inst, err := h.reg.acquire(t)
	if err != nil {
		return err
	}
	defer h.reg.release(inst)
	return inst.inject(publisher{}, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: m.QoS, Retain: m.Retain},
		TopicName:   m.Topic,
		Payload:     m.Payload,
	})
}

// ExportErrors returns, per export rule of a tenant, how many messages
// Kafka refused since the data plane started.
func (h *Hub) ExportErrors(tenant string) map[string]int64 {
	inst := h.reg.running(tenant)
	if inst == nil {
		return nil
	}
	return inst.exportErrors()
}

// Throttled is the number of the tenant's publishes refused for a rate
// quota since the hub started.
func (h *Hub) Throttled(tenant string) int64 {
	if m, ok := h.meters.Load(tenant); ok {
		return m.(*meter).throttled.Load()
	}
	return 0
}

// Quotas returns the quotas the tenant's running broker enforces; false
// if none is running (the next one starts with the tenant's current ones).
func (h *Hub) Quotas(tenant string) (tenants.Quotas, bool) {
	if inst := h.reg.running(tenant); inst != nil {
		return inst.quotas(), true
	}
	return tenants.Quotas{}, false
}

// activeTenant returns a tenant that exists and is not suspended.
func (h *Hub) activeTenant(ctx context.Context, tenant string) (tenants.Tenant, error) {
	t, found, err := h.dir.tenant(ctx, tenant)
	switch {
	case err != nil:
		return tenants.Tenant{}, err
	case !found:
		return tenants.Tenant{}, fmt.Errorf("tenant %s: %w", tenant, tenants.ErrNotFound)
	case t.Suspended:
		return tenants.Tenant{}, fmt.Errorf("tenant %s is suspended: %w", tenant, tenants.ErrForbidden)
	}
	return t, h.fwd.placeHere(ctx, tenant)
}

// watchIDs numbers watchers: mochi keys inline subscriptions by filter and
// identifier.
var watchIDs atomic.Int64

// Watch hands fn each message published in the tenant on a topic matching
// filter (retained ones first) until ctx ends, for the console's live view.
// fn runs on the publisher's goroutine and must not block. The watcher (the
// person watching) and the tenant each have a bound on open views (see
// acquireWatch); a view keeps the tenant's broker running but takes nothing
// from its devices' max_connections. ACLs are the caller's business (the
// console lets any member of the tenant watch).
func (h *Hub) Watch(ctx context.Context, tenant, watcher, filter string, fn func(dataplane.Message)) error {
	if err := tenants.ValidateFilter(filter); err != nil {
		return &tenants.FieldError{Field: "filter", Message: err.Error()}
	}
	if reserved(filter) {
		return &tenants.FieldError{Field: "filter", Message: "filters under $SYS, $events, $roost and $share are reserved"}
	}
	t, err := h.activeTenant(ctx, tenant)
	if err != nil {
		return err
	}
	inst, err := h.reg.acquireWatch(t, watcher)
	if err != nil {
		return err
	}
	id := int(watchIDs.Add(1) % (1 << 28)) // mochi's subscription identifiers are < 2^28
	err = inst.server.Subscribe(filter, id, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		if strings.HasPrefix(pk.TopicName, "$") && !strings.HasPrefix(filter, "$") {
			// A $-topic reached the view through a leading wildcard, which
			// must not match it [MQTT-4.7.2-1]; mochi hands $events and
			// other $-topics to an inline subscription to # all the same.
			return
		}
		fn(dataplane.Message{Topic: pk.TopicName, Payload: pk.Payload, QoS: pk.FixedHeader.Qos, Retain: pk.FixedHeader.Retain, Sender: pk.Origin})
	})
	if err != nil {
		h.reg.releaseWatch(inst, watcher)
		return err
	}
	// In a spread fleet the view needs its route, as a device's
	// subscription does, to see what is published on the other nodes.
	routeKey := watchRouteKey(id)
	if err := inst.routeWatch(filter, routeKey); err != nil {
		inst.server.Unsubscribe(filter, id)
		h.reg.releaseWatch(inst, watcher)
		return fmt.Errorf("route the live view: %w: %w", err, tenants.ErrUnavailable)
	}
	go func() {
		<-ctx.Done()
		inst.server.Unsubscribe(filter, id)
		if inst.routes != nil {
			inst.unroute(filter, routeKey)
		}
		h.reg.releaseWatch(inst, watcher)
	}()
	return nil
}

// ConnectionCount is the number of the tenant's live device connections.
func (h *Hub) ConnectionCount(tenant string) int {
	inst := h.reg.running(tenant)
	if inst == nil {
		return 0
	}
	return inst.live.count()
}

// Stats is the hub's totals over every tenant.
func (h *Hub) Stats() dataplane.Stats {
	var st dataplane.Stats
	for _, inst := range h.reg.all() {
		st.Connections += inst.live.count()
	}
	return st
}

var _ dataplane.DataPlane = (*Hub)(nil)

// CloseForwarded disconnects the devices another node forwarded here, as
// for a server shutdown: that node is draining. MQTT 5 clients are told
// 0x8B; their Wills are not sent unless the hub sends Wills on shutdown.
func (h *Hub) CloseForwarded(origin string) int {
	insts := h.reg.all()
	n := 0
	for _, inst := range insts {
		fs := inst.live.conns(func(dc *deviceConn) bool { return transport.ForwardOrigin(dc.Conn) == origin })
		for dc, cl := range fs {
			if !h.cfg.WillsOnShutdown {
				dc.withdrawWill.Store(true)
			}
			inst.kick(cl, packets.ErrServerShuttingDown)
		}
		n += len(fs)
	}
	return n
}

// Evict stops a tenant's broker here because another node holds it now
// (this node was taken for dead): its devices reconnect and are forwarded
// to the new home.
func (h *Hub) Evict(tenant string) {
	if inst := h.reg.running(tenant); inst != nil {
		h.reg.stop(inst, "another node holds the tenant now")
	}
}

// Forwards is the number of device connections this node is forwarding to
// other nodes.
func (h *Hub) Forwards() int {
	if h.fwd == nil {
		return 0
	}
	return h.fwd.count()
}

func (h *Hub) forwardedTotal() int64 {
	if h.fwd == nil {
		return 0
	}
	return h.fwd.total.Load()
}
