package broker

import (
	"math"
	"time"

	"github.com/roosthub/roost/tenants"
)

// SetLimitsOff turns the publish quotas and metering off or on, for the
// benchmark that compares the data plane with and without them.
func SetLimitsOff(h *Hub, off bool) { h.limitsOff = off }

// DenyActionOf returns the deny_action a tenant's running broker applies;
// false if it is not running.
func DenyActionOf(h *Hub, tenant string) (tenants.DenyAction, bool) {
	inst := h.reg.running(tenant)
	if inst == nil {
		return "", false
	}
	return inst.denyAction(), true
}

// SetDenialWindow sets how often a device's denied publishes to one topic
// raise an event.
func SetDenialWindow(h *Hub, d time.Duration) { h.denialWindow.Store(int64(d)) }

// LoseInflight drops the QoS 1 and 2 messages a connected client is being
// sent from mochi's state, as mochi itself does with a full write queue,
// leaving them in the session's store queue; it returns how many.
func LoseInflight(h *Hub, tenant, clientID string) int {
	inst := h.reg.running(tenant)
	cl, ok := inst.server.Clients.Get(clientID)
	if !ok {
		return 0
	}
	n := 0
	for _, pk := range cl.State.Inflight.GetAll(false) {
		if cl.State.Inflight.Delete(pk.PacketID) {
			n++
		}
	}
	return n
}

// Sweep runs the hub's periodic housekeeping now.
func Sweep(h *Hub) { h.reapIdle() }

// Routing is the number of a tenant's publishes mochi has not finished
// routing (their tags are still kept).
func Routing(h *Hub, tenant string) int {
	p := h.reg.running(tenant).persist
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pubs)
}

// RemoteRouted waits until a message from another node being handed to
// the tenant's broker, if one is, has been routed (mochi retains a
// message, then picks its subscribers: a subscriber arriving in between
// gets it twice, retained and live, as MQTT allows).
func RemoteRouted(h *Hub, tenant string) {
	inst := h.reg.running(tenant)
	inst.inlineMu.Lock()
	inst.inlineMu.Unlock()
}

// DefaultNodeConnections is defaultNodeConnections, for its test.
func DefaultNodeConnections(openFiles uint64) int { return defaultNodeConnections(openFiles) }

// HoldsSession reports whether the tenant's running broker holds a session
// (connected or not) for clientID; false if it is not running.
func HoldsSession(h *Hub, tenant, clientID string) bool {
	inst := h.reg.running(tenant)
	if inst == nil {
		return false
	}
	_, ok := inst.server.Clients.Get(clientID)
	return ok
}

// SpendRuleCPU takes d from the running tenant's share of the node's CPU
// for its rules (dataout.Budget), as rules that took so long would.
func SpendRuleCPU(h *Hub, tenant string, d time.Duration) {
	h.reg.running(tenant).evalBudget.Spend(d)
}

// InflightLen is the number of QoS 1 and 2 messages mochi holds for a
// connected client: sent and not acknowledged, or waiting for its Receive
// Maximum; -1 if the client is unknown. Reservations (packet ids the client
// may hold messages dropped since under) are not messages.
func InflightLen(h *Hub, tenant, clientID string) int {
	cl, ok := h.reg.running(tenant).server.Clients.Get(clientID)
	if !ok {
		return -1
	}
	n := 0
	for _, pk := range cl.State.Inflight.GetAll(false) {
		if !isReservation(pk) {
			n++
		}
	}
	return n
}

// AdvancePacketIDs gives a client's packet ids away, unused, until the
// next one mochi gives it is next (if next is free then): its packet id
// counter comes round as 65,535 deliveries would bring it round. It asks
// mochi for them as a delivery does (Client.NextPacketID).
func AdvancePacketIDs(h *Hub, tenant, clientID string, next uint16) {
	cl, ok := h.reg.running(tenant).server.Clients.Get(clientID)
	if !ok {
		return
	}
	before := uint32(next) - 1
	if before == 0 {
		before = math.MaxUint16
	}
	for range math.MaxUint16 {
		if id, err := cl.NextPacketID(); err != nil || id == before {
			return
		}
	}
}
