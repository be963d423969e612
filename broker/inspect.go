package broker

import (
	"context"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/dataplane"
)

// Session describes a device's sessions in its tenant's broker here: the
// client ids it is connected with and the persistent sessions waiting for
// it, with their subscriptions and queues. A tenant whose broker is not
// running here has none.
func (h *Hub) Session(ctx context.Context, tenant, device string) (dataplane.Session, error) {
	out := dataplane.Session{Device: device, Sessions: []dataplane.ClientSession{}}
	inst := h.reg.running(tenant)
	if inst == nil {
		return out, nil
	}
	connected := map[string]bool{}
	for _, cl := range inst.live.clients(device) {
		connected[cl.ID] = true
	}
	ids := map[string]bool{}
	for id := range connected {
		ids[id] = true
	}
	if inst.persist != nil {
		for _, id := range inst.persist.clientIDs(device) {
			ids[id] = true
		}
	}
	for _, id := range slices.Sorted(maps.Keys(ids)) {
		cs := dataplane.ClientSession{ClientID: id, Connected: connected[id], Subscriptions: []dataplane.Subscription{}}
		if cl, ok := inst.server.Clients.Get(id); ok && !cl.Net.Inline {
			for _, sub := range cl.State.Subscriptions.GetAll() {
				cs.Subscriptions = append(cs.Subscriptions, dataplane.Subscription{Filter: sub.Filter, QoS: sub.Qos,
					NoLocal: sub.NoLocal, RetainAsPublished: sub.RetainAsPublished, RetainHandling: sub.RetainHandling})
			}
			slices.SortFunc(cs.Subscriptions, func(a, b dataplane.Subscription) int { return strings.Compare(a.Filter, b.Filter) })
		}
		if inst.persist != nil {
			cs.Persistent, cs.Queue = inst.persist.sessionQueue(ctx, id)
		}
		out.Sessions = append(out.Sessions, cs)
	}
	return out, nil
}

// PurgeQueue drops every message queued for a device's persistent
// sessions in its tenant's broker here, connected or not, but those the
// client acknowledged with PUBREC (they only wait for their PUBREL), and
// returns how many it dropped.
func (h *Hub) PurgeQueue(ctx context.Context, tenant, device string) (int, error) {
	t, err := h.activeTenant(ctx, tenant)
	if err != nil {
		return 0, err
	}
	inst, err := h.reg.acquire(t)
	if err != nil {
		return 0, err
	}
	defer h.reg.release(inst)
	if inst.persist == nil {
		return 0, nil
	}
	n := 0
	for _, id := range inst.persist.clientIDs(device) {
		n += inst.persist.purge(ctx, id)
	}
	if n > 0 {
		inst.log.Info("queue purged", "device", device, "dropped", n)
	}
	return n, nil
}

// clientIDs are the client ids of a device's sessions this broker tracks.
func (p *persistence) clientIDs(device string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var ids []string
	for id, d := range p.devices {
		if d == device {
			ids = append(ids, id)
		}
	}
	return ids
}

// sessionQueue reports whether a client id has a persistent session here,
// and what its queue holds.
func (p *persistence) sessionQueue(ctx context.Context, clientID string) (bool, dataplane.SessionQueue) {
	p.mu.Lock()
	_, tracked := p.devices[clientID]
	persistent := tracked || p.stored[clientID]
	q := dataplane.SessionQueue{Queued: len(p.outstanding[clientID])}
	p.mu.Unlock()
	if !persistent {
		return false, q
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	info, err := p.st.QueueInfo(ctx, p.tenant, clientID)
	if err != nil || info.Len == 0 {
		return true, q
	}
	oldest := info.Oldest
	q.Oldest = &oldest
	// The newest is the last number given, unless it was acknowledged
	// already; then the queue is read to its end.
	last, err := p.st.Read(ctx, p.tenant, clientID, info.MaxSeq-1, 1)
	if err == nil && len(last) == 0 {
		last, err = p.st.Read(ctx, p.tenant, clientID, info.MinSeq-1, info.Len)
	}
	if err == nil && len(last) > 0 {
		newest := last[len(last)-1].Created
		q.Newest = &newest
	}
	return true, q
}

// purge drops a session's queued messages, as makeRoom drops the oldest
// of a full queue: from what this broker tracks, from mochi's inflight
// messages (waiting for an offline client, or sent and not yet
// acknowledged) and from the store. Messages the client acknowledged with
// PUBREC stay: they only wait for their PUBREL.
func (p *persistence) purge(ctx context.Context, clientID string) int {
	p.mu.Lock()
	var drop, keep []uint64
	for _, seq := range p.outstanding[clientID] {
		if p.marks[clientID][seq].released {
			keep = append(keep, seq)
		} else {
			drop = append(drop, seq)
		}
	}
	if len(drop) == 0 {
		p.mu.Unlock()
		return 0
	}
	p.outstanding[clientID] = keep
	for _, seq := range drop {
		p.unqueued(clientID, seq)
		delete(p.marks[clientID], seq)
	}
	for id, seq := range p.inflight[clientID] {
		if !slices.Contains(keep, seq) {
			delete(p.inflight[clientID], id)
		}
	}
	if cl, ok := p.server.Clients.Get(clientID); ok {
		// Every PUBLISH mochi holds for the client is one of its queued
		// messages; a PUBREL it holds is for one the client has. One the
		// client may hold keeps its packet id (see dropDelivery), but
		// for a delivery withheld, never written.
		for _, pk := range cl.State.Inflight.GetAll(false) {
			if pk.FixedHeader.Type != packets.Publish {
				continue
			}
			if pubID, ok := pubIDOf(pk); ok && p.unsend[clientID][pubID] != nil {
				if cl.State.Inflight.Delete(pk.PacketID) {
					atomic.AddInt64(&p.server.Info.Inflight, -1)
				}
				continue
			}
			p.dropDelivery(cl, pk.PacketID)
		}
	}
	p.mu.Unlock()
	e := p.epoch(clientID)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := p.st.Ack(ctx, p.tenant, clientID, e, drop)
	for _, seq := range drop {
		p.deleted(clientID, seq)
	}
	if err != nil {
		p.failed(clientID, e, "purge the queue", err)
	}
	return len(drop)
}
