package broker

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/broker/store"
	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

// onChange is called by the directory after each committed change. It drops
// what the cache holds at once, so the next connect reads the change, and
// queues the work on live connections.
func (h *Hub) onChange(c tenants.Change) {
	h.dir.invalidate(c)
	if c.Kind == tenants.Resync {
		h.resync()
		return
	}
	if c.Kind == tenants.ACLChanged || c.Kind == tenants.ExportChanged {
		if inst := h.running(c.Tenant); inst != nil {
			if c.Kind == tenants.ACLChanged {
				inst.forgetRules()
			} else {
				inst.exports.forget()
			}
		}
		return
	}
	select {
	case h.changes <- c:
	default:
		// The worker is behind; do not hold up the control plane.
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			h.apply(c)
		}()
	}
}

func (h *Hub) applyChanges() {
	defer h.wg.Done()
	for {
		select {
		case <-h.done:
			return
		case c := <-h.changes:
			h.apply(c)
		}
	}
}

// apply brings live connections in line with a change: a deleted tenant's
// broker stops; a suspended tenant's devices are disconnected; a device that
// was deleted, disabled, given a new secret or bound to another client id
// loses the connections that no longer qualify.
func (h *Hub) apply(c tenants.Change) {
	inst := h.running(c.Tenant)
	if c.Kind == tenants.TenantDeleted {
		if inst != nil {
			h.stop(inst, "tenant deleted")
		}
		h.purge(c.Tenant)
		return
	}
	if inst == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), h.cfg.ConnectTimeout)
	defer cancel()
	switch c.Kind {
	case tenants.TenantChanged:
		t, found, err := h.dir.tenant(ctx, c.Tenant)
		switch {
		case err != nil:
			h.log.Error("apply change", "tenant", c.Tenant, "err", err)
		case !found:
			h.stop(inst, "tenant deleted")
		case t.Suspended:
			inst.setQuotas(t)
			for _, cl := range inst.server.Clients.GetAll() {
				if _, ok := cl.Net.Conn.(*deviceConn); ok && !cl.Closed() {
					inst.kick(cl, packets.ErrAdministrativeAction)
				}
			}
			inst.log.Info("tenant suspended: devices disconnected")
		default:
			// Plan or quota changes: live connections follow at their next
			// packet.
			inst.setQuotas(t)
		}
	case tenants.CAChanged:
		// Connections admitted by a CA the tenant no longer trusts end.
		for _, cl := range inst.server.Clients.GetAll() {
			dc, ok := cl.Net.Conn.(*deviceConn)
			if !ok || cl.Closed() || dc.id.ca == "" {
				continue
			}
			stands, err := h.credentialStands(ctx, dc.id, tenants.Device{})
			if err != nil {
				h.retryLater(c, err)
				return
			}
			if !stands {
				inst.kick(cl, packets.ErrAdministrativeAction)
				inst.log.Info("device disconnected: its CA was removed", "device", dc.id.device, "client_id", cl.ID)
			}
		}
	case tenants.DeviceChanged:
		clients := inst.clientsOf(c.Device)
		if len(clients) == 0 {
			return
		}
		d, found, err := h.dir.device(ctx, c.Tenant, c.Device)
		if err != nil {
			h.retryLater(c, err)
			return
		}
		for _, cl := range clients {
			dc := cl.Net.Conn.(*deviceConn)
			stands, err := h.credentialStands(ctx, dc.id, d)
			if err != nil {
				h.retryLater(c, err)
				return
			}
			if !found || !d.Enabled || !stands || (d.ClientIDs == tenants.ClientIDsExact && cl.ID != d.Name) {
				inst.kick(cl, packets.ErrAdministrativeAction)
				inst.log.Info("device disconnected after a change", "device", c.Device, "client_id", cl.ID)
			}
		}
	}
}

// retryLater applies a change again in a second: checking live connections
// against it failed (the directory did not answer), and a revoked
// credential must not stay connected for want of a retry.
func (h *Hub) retryLater(c tenants.Change, err error) {
	h.log.Warn("apply change: retrying in 1s", "kind", c.Kind, "tenant", c.Tenant, "device", c.Device, "err", err)
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		select {
		case <-h.done:
		case <-time.After(time.Second):
			h.apply(c)
		}
	}()
}

// purge deletes what the session store keeps for a deleted tenant: its
// sessions, their queues and its retained messages.
func (h *Hub) purge(tenant string) {
	if h.cfg.Sessions == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sessions, retained, err := store.PurgeTenant(ctx, h.cfg.Sessions, tenant)
	if err != nil {
		h.log.Error("purge a deleted tenant's sessions", "tenant", tenant, "err", err)
		return
	}
	h.log.Info("deleted tenant purged", "tenant", tenant, "sessions", sessions, "retained", retained)
}

// resync checks everything live against the directory after changes may
// have been missed: each running tenant's rules, exports and quotas, its
// CAs, and each connected device.
func (h *Hub) resync() {
	h.mu.Lock()
	insts := make([]*instance, 0, len(h.instances))
	for _, inst := range h.instances {
		insts = append(insts, inst)
	}
	h.mu.Unlock()
	for _, inst := range insts {
		inst.forgetRules()
		inst.exports.forget()
		for _, c := range []tenants.Change{{Kind: tenants.TenantChanged, Tenant: inst.tenant}, {Kind: tenants.CAChanged, Tenant: inst.tenant}} {
			h.onChange(c)
		}
		inst.presenceMu.Lock()
		devices := make([]string, 0, len(inst.byDevice))
		for d := range inst.byDevice {
			devices = append(devices, d)
		}
		inst.presenceMu.Unlock()
		for _, d := range devices {
			h.onChange(tenants.Change{Kind: tenants.DeviceChanged, Tenant: inst.tenant, Device: d})
		}
	}
}

// stop takes an instance out of service and closes it.
func (h *Hub) stop(inst *instance, why string) {
	h.mu.Lock()
	if h.instances[inst.tenant] == inst {
		delete(h.instances, inst.tenant)
	}
	h.mu.Unlock()
	inst.close()
	inst.log.Info("tenant broker stopped: " + why)
	h.giveUp(inst.tenant)
}

// Connections lists a device's live connections; none if its tenant's
// broker is not running.
func (h *Hub) Connections(tenant, device string) []dataplane.Connection {
	inst := h.running(tenant)
	if inst == nil {
		return nil
	}
	return inst.connections(device)
}

// Disconnect ends every live connection of a device and returns how many
// there were. MQTT 5 clients are told 0x98 (administrative action).
func (h *Hub) Disconnect(tenant, device string) int {
	inst := h.running(tenant)
	if inst == nil {
		return 0
	}
	clients := inst.clientsOf(device)
	for _, cl := range clients {
		inst.kick(cl, packets.ErrAdministrativeAction)
	}
	return len(clients)
}

// Queue reports what a device's persistent sessions hold: zero values when
// its tenant's broker is not running or keeps no sessions.
func (h *Hub) Queue(tenant, device string) dataplane.QueueStats {
	inst := h.running(tenant)
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
	inst, err := h.acquire(t)
	if err != nil {
		return err
	}
	defer h.release(inst)
	return inst.inject(publisher{}, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: m.QoS, Retain: m.Retain},
		TopicName:   m.Topic,
		Payload:     m.Payload,
	})
}

// ExportErrors returns, per export rule of a tenant, how many messages
// Kafka refused since the data plane started.
func (h *Hub) ExportErrors(tenant string) map[string]int64 {
	inst := h.running(tenant)
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
	if inst := h.running(tenant); inst != nil {
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
	return t, h.placeHere(ctx, tenant)
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
	if strings.HasPrefix(filter, "$") {
		return &tenants.FieldError{Field: "filter", Message: "filters starting with $ are reserved"}
	}
	t, err := h.activeTenant(ctx, tenant)
	if err != nil {
		return err
	}
	inst, err := h.acquireWatch(t, watcher)
	if err != nil {
		return err
	}
	id := int(watchIDs.Add(1) % (1 << 28)) // mochi's subscription identifiers are < 2^28
	err = inst.server.Subscribe(filter, id, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		fn(dataplane.Message{Topic: pk.TopicName, Payload: pk.Payload, QoS: pk.FixedHeader.Qos, Retain: pk.FixedHeader.Retain})
	})
	if err != nil {
		h.releaseWatch(inst, watcher)
		return err
	}
	go func() {
		<-ctx.Done()
		inst.server.Unsubscribe(filter, id)
		h.releaseWatch(inst, watcher)
	}()
	return nil
}

// ConnectionCount is the number of the tenant's live device connections.
func (h *Hub) ConnectionCount(tenant string) int {
	inst := h.running(tenant)
	if inst == nil {
		return 0
	}
	inst.presenceMu.Lock()
	defer inst.presenceMu.Unlock()
	n := 0
	for _, ps := range inst.byDevice {
		n += len(ps)
	}
	return n
}

// Stats is the hub's totals over every tenant.
func (h *Hub) Stats() dataplane.Stats {
	h.mu.Lock()
	slugs := make([]string, 0, len(h.instances))
	for slug := range h.instances {
		slugs = append(slugs, slug)
	}
	h.mu.Unlock()
	var st dataplane.Stats
	for _, slug := range slugs {
		st.Connections += h.ConnectionCount(slug)
	}
	return st
}

var _ dataplane.DataPlane = (*Hub)(nil)
