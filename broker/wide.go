package broker

import (
	"context"
	"time"

	"github.com/roosthub/roost/broker/fabric"
)

// A tenant of a fleet starts on one node, its home, which every other node
// forwards its connections to (forward.go): the cheap path, right for most
// tenants. Once its connections at the home pass Config.WidenAt and its
// max_nodes quota is above one, the home widens it: from then on it is
// served by up to max_nodes nodes — the home and the others ranking first
// for it by rendezvous hashing (cluster.WideSet) — each serving the
// devices that connect to it as one of the tenant's owners in the Fabric
// (spread.go), its persistent sessions on any of them (anywhere.go). A node
// outside the set forwards the tenant's connections to one of them, at
// random, so that devices behind one load balancer spread over them.
//
// Widening restarts the home's broker once: it stores its sessions as it
// closes, and its devices reconnect to any of the tenant's nodes, where
// their sessions resume from the store (nothing acknowledged is lost, as
// when a node drains). Each node serving a wide tenant says so every
// spreadEvery; a tenant every node stopped serving (idle) starts on one
// node again. Lowering max_nodes narrows it: the nodes no longer among its
// nodes stop their brokers, and their devices reconnect to the others.

// widenRetry is how long a home waits before it tries again to widen a
// tenant it failed to widen: each try disconnects the tenant's devices.
const widenRetry = 5 * time.Minute

// spreadEvery is how often a node says which wide tenants it serves, and
// learns which it should stop serving.
const spreadEvery = 2 * time.Second

// wide reports whether the tenant is served by several nodes: every
// tenant where the fabric spreads them all (or outside a fleet, for tests),
// else those their home widened.
func (h *Hub) wide(tenant string) bool {
	switch {
	case h.cfg.Fabric == nil:
		return false
	case h.cfg.Cluster == nil || h.cfg.SpreadAll:
		return true
	}
	return h.cfg.Cluster.Wide(tenant)
}

// mayWiden reports whether this node widens tenants: in a fleet whose
// fabric carries persistent sessions to any node, with a threshold.
func (h *Hub) mayWiden() bool {
	return h.cfg.Cluster != nil && h.cfg.Fabric != nil && !h.cfg.SpreadAll && h.cfg.WidenAt > 0 && h.sessionsAnywhere()
}

// maxNodes is how many nodes the tenant may be served by.
func maxNodes(inst *instance) int {
	return int(clamp(inst.quotas().MaxNodes, 1, 1024))
}

// maybeWiden widens a tenant whose home this node is once its
// connections here pass the threshold, if its quota allows (once: a home
// that failed to widen it tries again with its next broker).
func (h *Hub) maybeWiden(inst *instance, conns int) {
	if inst.spread || conns <= h.cfg.WidenAt || maxNodes(inst) <= 1 || !h.cfg.Cluster.Holds(inst.tenant) {
		return
	}
	if failed, ok := h.widenFailed.Load(inst.tenant); ok && h.now().Sub(failed.(time.Time)) < widenRetry {
		return
	}
	if !inst.widening.CompareAndSwap(false, true) {
		return
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		h.widen(inst)
	}()
}

// widen has a tenant served by its home alone served by several nodes. In
// this order, so that no other node serves it before its sessions can be
// found there: its broker here stops (its sessions stored) and none starts
// meanwhile (its connections, here or forwarded, are refused with 0x88 and
// come back); the routes of its stored sessions are written; its width is
// recorded, from when the other nodes serve it; its broker starts here as
// one of its nodes, holding the Wills its sessions wait to send.
func (h *Hub) widen(inst *instance) {
	seeder, ok := h.cfg.Fabric.(interface {
		SeedSessions(ctx context.Context, tenant string, seeds []fabric.Seed) ([]string, error)
	})
	if !ok || inst.persist == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	t, found, err := h.dir.tenant(ctx, inst.tenant)
	if err != nil || !found {
		return
	}
	width := maxNodes(inst)
	resume, ok := h.reg.suspend(inst, "the tenant widens to several nodes")
	if !ok {
		return
	}
	defer resume()
	failed := true
	defer func() {
		if failed {
			h.widenFailed.Store(inst.tenant, h.now())
		} else {
			h.widenFailed.Delete(inst.tenant)
		}
	}()
	sessions, err := inst.persist.st.Sessions(ctx, inst.tenant)
	if err != nil {
		inst.log.Warn("widen the tenant: read its sessions (it stays on this node)", "err", err)
		return
	}
	seeds := make([]fabric.Seed, 0, len(sessions))
	wills := map[string]restoredWill{}
	for _, s := range sessions {
		sd := fabric.Seed{ClientID: s.ClientID}
		for _, sub := range s.Subscriptions {
			sd.Filters = append(sd.Filters, fabric.SessionFilter{Filter: sub.Filter, QoS: sub.QoS, NoLocal: sub.NoLocal})
		}
		seeds = append(seeds, sd)
		if s.Will != nil {
			wills[s.ClientID] = restoredWill{device: s.Device, clientID: s.ClientID, will: s.Will, left: s.DisconnectedAt}
		}
	}
	seeded, err := seeder.SeedSessions(ctx, inst.tenant, seeds)
	if err != nil {
		inst.log.Warn("widen the tenant: write its sessions' routes (it stays on this node)", "err", err)
		return
	}
	if err := h.cfg.Cluster.Widen(ctx, inst.tenant, width); err != nil {
		inst.log.Warn("widen the tenant (it stays on this node)", "err", err)
		return
	}
	failed = false
	resume()
	wide, err := h.reg.acquire(t)
	if err != nil {
		inst.log.Warn("start the widened tenant's broker (it starts with the next connection)", "err", err)
		return
	}
	defer h.reg.release(wide)
	for _, id := range seeded {
		if w, ok := wills[id]; ok {
			wide.holdRestoredWill(w)
		}
	}
	inst.log.Info("tenant widened: its sessions' routes are written, and its other nodes serve it too", "width", width, "sessions", len(seeded))
}

// checkSpread tells the fleet which wide tenants this node serves, stops
// those it should no longer serve, and, for those it is the home of, sets
// their width to their max_nodes as it is now.
func (h *Hub) checkSpread() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var wide []string
	for _, inst := range h.reg.all() {
		if !inst.spread {
			continue
		}
		wide = append(wide, inst.tenant)
		if n := maxNodes(inst); h.cfg.Cluster.Holds(inst.tenant) && h.cfg.Cluster.Width(inst.tenant) != n {
			if err := h.cfg.Cluster.Widen(ctx, inst.tenant, n); err != nil {
				inst.log.Warn("set the tenant's width to its max_nodes", "max_nodes", n, "err", err)
			}
		}
	}
	if len(wide) == 0 {
		return
	}
	stop, err := h.cfg.Cluster.Spread(ctx, wide)
	if err != nil {
		h.log.Warn("say which wide tenants this node serves", "err", err)
		return
	}
	for _, t := range stop {
		if inst := h.reg.running(t); inst != nil && inst.spread {
			h.reg.stop(inst, "the tenant is served by other nodes now")
		}
	}
}
