package broker

import (
	"context"
	"time"
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
// connections here pass the threshold, if its quota allows.
func (h *Hub) maybeWiden(inst *instance, conns int) {
	if inst.spread || conns <= h.cfg.WidenAt || maxNodes(inst) <= 1 || !inst.widening.CompareAndSwap(false, true) {
		return
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		h.widen(inst)
	}()
}

// widen records the tenant's new width and restarts its broker here as
// one of its nodes.
func (h *Hub) widen(inst *instance) {
	ctx, cancel := context.WithTimeout(context.Background(), h.cfg.ConnectTimeout)
	defer cancel()
	width := maxNodes(inst)
	if err := h.cfg.Cluster.Widen(ctx, inst.tenant, width); err != nil {
		inst.log.Warn("widen the tenant: it stays on this node for now", "err", err)
		inst.widening.Store(false)
		return
	}
	inst.log.Info("tenant widened: its broker restarts to serve it with its other nodes", "width", width)
	h.reg.restart(inst, "the tenant widened to several nodes")
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
