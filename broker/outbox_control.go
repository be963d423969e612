package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/roosthub/roost/broker/store"
	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

var _ dataplane.Deliveries = (*Hub)(nil)

// errNoOutbox: the hub keeps no outboxes (no session store or no delivery
// configured).
var errNoOutbox = errors.New("this data plane delivers no webhooks: it has no session store or no delivery configured")

func (h *Hub) outboxStore() (SessionStore, error) {
	if h.cfg.Sessions == nil || h.cfg.Delivery == nil {
		return nil, fmt.Errorf("%w: %w", tenants.ErrUnavailable, errNoOutbox)
	}
	return h.cfg.Sessions, nil
}

// DeliveryStatus reports a destination's outbox: read from the store, with
// the counts of the tenant's running broker.
func (h *Hub) DeliveryStatus(ctx context.Context, tenant, destination string) (dataplane.DeliveryStatus, error) {
	st, err := h.outboxStore()
	if err != nil {
		return dataplane.DeliveryStatus{}, err
	}
	out, err := st.QueueInfo(ctx, tenant, outboxID(destination))
	if err != nil {
		return dataplane.DeliveryStatus{}, err
	}
	dead, err := st.QueueInfo(ctx, tenant, deadID(destination))
	if err != nil {
		return dataplane.DeliveryStatus{}, err
	}
	s := dataplane.DeliveryStatus{Backlog: out.Len, DeadLetters: dead.Len}
	if out.Len > 0 && !out.Oldest.IsZero() {
		s.Lag = max(0, h.now().Sub(out.Oldest).Seconds())
	}
	if inst := h.reg.running(tenant); inst != nil && inst.out != nil {
		inst.out.mu.Lock()
		q := inst.out.dests[destination]
		inst.out.mu.Unlock()
		if q != nil {
			s.Delivered, s.Failed, s.Dropped = q.delivered.Load(), q.failed.Load(), q.dropped.Load()
			q.mu.Lock()
			s.LastSuccess, s.LastError, s.LastErrorText = timePtr(q.lastSuccess), timePtr(q.lastError), q.lastErrText
			s.Recent = q.recentAttempts()
			q.mu.Unlock()
		}
	}
	return s, nil
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

// DeadLetters lists a destination's dead letters after seq after, at most
// limit and DeadLetterPageBytes of payloads; more reports a page cut
// short by its bytes.
func (h *Hub) DeadLetters(ctx context.Context, tenant, destination string, after uint64, limit int) ([]dataplane.DeadLetter, bool, error) {
	st, err := h.outboxStore()
	if err != nil {
		return nil, false, err
	}
	// Read a few at a time, and no further than a page's bytes: a page of
	// 200 of a plan's largest messages would be 200 MiB in memory, and in
	// the answer, for each request a viewer makes.
	var out []dataplane.DeadLetter
	total := 0
	for len(out) < limit {
		want := min(limit-len(out), deadReadAhead)
		qs, err := st.Read(ctx, tenant, deadID(destination), after, want)
		if err != nil {
			return nil, false, err
		}
		for _, q := range qs {
			if total += len(q.Payload); len(out) > 0 && total > DeadLetterPageBytes {
				return out, true, nil
			}
			m := webhookMessage(q)
			out = append(out, dataplane.DeadLetter{Seq: q.Seq, ID: m.ID, Topic: m.Topic, Payload: m.Payload, QoS: m.QoS, Device: m.Device, ClientID: m.ClientID, Time: m.Time.UTC()})
			after = q.Seq
		}
		if len(qs) < want {
			break // the last of them
		}
	}
	return out, false, nil
}

// DeadLetterPageBytes bounds the payloads of one page of dead letters,
// whatever its limit: a message larger than it is a page alone. The page
// cut short says so (DeadLetters' more), and the next one starts after it.
const DeadLetterPageBytes = WebhookBatchBytes

// deadReadAhead is how many dead letters DeadLetters reads at a time.
const deadReadAhead = 16

// deadPage is how many dead letters a replay or purge moves per write.
const deadPage = 500

// ReplayDeadLetters moves a destination's dead letters back to its outbox,
// in order: appended there first, then deleted, so that a failure in
// between delivers some twice, never loses one. The dead letters' queue is
// claimed for it: a replay or purge running at the same time elsewhere is
// fenced and stops.
func (h *Hub) ReplayDeadLetters(ctx context.Context, tenant, destination string) (int, error) {
	n, err := h.moveDead(ctx, tenant, destination, func(st SessionStore, qs []store.Queued) error {
		items := make([]store.Item, len(qs))
		for i, q := range qs {
			items[i] = store.Item{ClientID: outboxID(destination), Message: q.Message}
		}
		_, err := st.Append(ctx, tenant, items, store.Receipt{})
		return err
	})
	if n > 0 {
		inst := h.reg.running(tenant)
		switch {
		case inst != nil && inst.out != nil:
			q := inst.out.queue(destination)
			q.backlog.Add(int64(n))
			inst.out.wake(q)
		case inst == nil && (h.cfg.Cluster == nil || h.cfg.Cluster.Holds(tenant)):
			h.startTenant(ctx, tenant) // its worker delivers them
		}
	}
	return n, err
}

// PurgeDeadLetters deletes a destination's dead letters.
func (h *Hub) PurgeDeadLetters(ctx context.Context, tenant, destination string) (int, error) {
	return h.moveDead(ctx, tenant, destination, func(SessionStore, []store.Queued) error { return nil })
}

// moveDead hands each page of dead letters to fn, then deletes it.
func (h *Hub) moveDead(ctx context.Context, tenant, destination string, fn func(SessionStore, []store.Queued) error) (int, error) {
	st, err := h.outboxStore()
	if err != nil {
		return 0, err
	}
	epoch, err := st.Claim(ctx, tenant, deadID(destination))
	if err != nil {
		return 0, err
	}
	n := 0
	for {
		qs, err := st.Read(ctx, tenant, deadID(destination), 0, deadPage)
		if err != nil || len(qs) == 0 {
			return n, err
		}
		if err := fn(st, qs); err != nil {
			return n, err
		}
		seqs := make([]uint64, len(qs))
		for i, q := range qs {
			seqs[i] = q.Seq
		}
		if err := st.Ack(ctx, tenant, deadID(destination), epoch, seqs); err != nil {
			if errors.Is(err, store.ErrFenced) {
				return n, fmt.Errorf("dead letters being replayed or purged at the same time: %w", tenants.ErrConflict)
			}
			return n, err
		}
		n += len(qs)
	}
}

// resumeOutboxes starts the broker of each tenant whose outboxes hold
// messages while it is not running here, although this node is its home:
// after a restart, or once this node took the tenant over, its outboxes
// are delivered without waiting for a device to connect. Its broker then
// stays up while they hold messages (see outbox.busy).
//
// It also deletes the outboxes and dead letters of deleted destinations
// (see SweepOutboxes).
func (h *Hub) resumeOutboxes() {
	d := h.cfg.Delivery
	if d == nil || h.cfg.Sessions == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := h.SweepOutboxes(ctx); err != nil {
		h.log.Error("delete deleted destinations' outboxes", "err", err)
	}
	slugs, err := d.Rules.DestinationRuleTenants(ctx)
	if err != nil {
		h.log.Error("list the tenants with webhook rules", "err", err)
		return
	}
	for _, slug := range slugs {
		if h.reg.running(slug) != nil || (h.cfg.Cluster != nil && !h.cfg.Cluster.Holds(slug)) {
			continue
		}
		waiting, err := h.outboxWaiting(ctx, slug)
		if err != nil {
			h.log.Error("read a tenant's outboxes", "tenant", slug, "err", err)
			continue
		}
		if waiting {
			h.startTenant(ctx, slug)
		}
	}
}

// outboxWaiting reports whether one of a tenant's destinations' outboxes
// holds a message.
func (h *Hub) outboxWaiting(ctx context.Context, tenant string) (bool, error) {
	rules, err := h.cfg.Delivery.Rules.Rules(ctx, tenant)
	if err != nil {
		return false, err
	}
	for _, r := range rules {
		if r.Destination == "" {
			continue
		}
		info, err := h.cfg.Sessions.QueueInfo(ctx, tenant, outboxID(r.Destination))
		if err != nil {
			return false, err
		}
		if info.Len > 0 {
			return true, nil
		}
	}
	return false, nil
}

// startTenant starts a tenant's broker here, unless it is gone; it stops
// again once idle, like any. A suspended tenant's outboxes are delivered
// without its broker (dormantOutbox).
func (h *Hub) startTenant(ctx context.Context, slug string) {
	t, found, err := h.dir.tenant(ctx, slug)
	if err != nil || !found {
		return
	}
	if t.Suspended {
		h.dormantOutbox(t)
		return
	}
	inst, err := h.reg.acquire(t)
	if err != nil {
		h.log.Info("start a tenant's broker for its outboxes", "tenant", slug, "err", err)
		return
	}
	h.reg.release(inst)
}

// SweepOutboxes deletes the outboxes, dead letters and retry records (see
// retryID) of destinations
// deleted since (alone, or with their tenant), which would otherwise stay
// in the session store for ever, and returns how many destinations' it
// deleted. The directory remembers every destination that had an outbox
// until this forgets it; the hub runs it with resumeOutboxes, on every
// node (it is idempotent: each queue is claimed, then deleted, so a
// worker still delivering it elsewhere is fenced).
func (h *Hub) SweepOutboxes(ctx context.Context) (int, error) {
	st, err := h.outboxStore()
	if err != nil {
		return 0, err
	}
	n := 0
	for {
		gone, err := h.cfg.Delivery.Rules.GoneOutboxes(ctx, 100)
		if err != nil || len(gone) == 0 {
			return n, err
		}
		for _, g := range gone {
			for _, q := range []string{outboxID(g.Destination), deadID(g.Destination), retryID(g.Destination)} {
				epoch, err := st.Claim(ctx, g.Tenant, q)
				if err != nil {
					return n, err
				}
				if err := st.DeleteSession(ctx, g.Tenant, q, epoch); err != nil {
					return n, err
				}
			}
			if err := h.cfg.Delivery.Rules.ForgetOutbox(ctx, g.Tenant, g.Destination); err != nil {
				return n, err
			}
			h.log.Info("deleted destination's outbox and dead letters deleted", "tenant", g.Tenant, "destination", g.Destination)
			n++
		}
	}
}
