package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// A suspended tenant's broker does not run: its devices are refused, and
// nothing starts it (see activeTenant). Yet billing tells it why it was
// suspended (billing_suspended), and what it raises for it meanwhile, and
// the tenant's rules with a destination are how its systems hear that.
// So an event published in a suspended tenant (PublishEvent) goes into
// the outboxes of its rules that match it, and a dormant outbox delivers
// them: the tenant's outboxes without its broker — no MQTT service, no
// $events topic, no export to the operator's Kafka, only delivery, as a
// running broker's outbox workers deliver (claimed, in order, retried to
// the horizon, then dead letters). It delivers what else was waiting in
// those outboxes too (acknowledged before the suspension). It stops once
// its outboxes are empty and it was unused for the idle timeout (the
// reaper, reapDormant), or as the tenant's broker starts (on resume), which
// takes its outboxes over. Where the suspended tenant's broker still runs
// here (it stops once idle), the event goes into that broker's outboxes
// instead.

// dormantOutbox is a suspended tenant's outboxes, delivering.
type dormantOutbox struct {
	o *outbox
	// used is when it was last given an event; under the hub's
	// dormantMu.
	used time.Time
}

// publishSuspended puts an event published in a suspended tenant into the
// outboxes of its rules with a destination, delivered by its broker's
// outbox if it still runs here, else by a dormant outbox.
func (h *Hub) publishSuspended(ctx context.Context, t tenants.Tenant, e events.Event) error {
	if h.cfg.Delivery == nil || h.cfg.Sessions == nil {
		return nil // no outboxes here: no rule with a destination delivers
	}
	if err := h.fwd.placeHere(ctx, t.Slug); err != nil {
		return err
	}
	if e.Time.IsZero() {
		e.Time = h.now().UTC()
	}
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if inst := h.reg.running(t.Slug); inst != nil {
		if err := inst.out.appendEvent(e, b); err != nil {
			return fmt.Errorf("put an event in the outbox: %w", err)
		}
		return nil
	}
	o := h.dormantOutbox(t)
	if o == nil {
		// The tenant's broker started meanwhile (resumed): it delivers.
		return h.publishSuspendedRunning(t.Slug, e, b)
	}
	if err := o.appendEvent(e, b); err != nil {
		return fmt.Errorf("put an event in the outbox: %w", err)
	}
	if h.dormantClosed(o) {
		// Taken over by the tenant's broker as it was written: its
		// workers may have read their outboxes before; they look again.
		if inst := h.reg.running(t.Slug); inst != nil {
			inst.out.wakeAll()
		}
	}
	return nil
}

// publishSuspendedRunning puts the event in the outboxes of the tenant's
// running broker, if one runs; otherwise in the store for the next to
// deliver (resumeOutboxes starts one).
func (h *Hub) publishSuspendedRunning(tenant string, e events.Event, b []byte) error {
	if inst := h.reg.running(tenant); inst != nil {
		return inst.out.appendEvent(e, b)
	}
	return nil
}

// dormantOutbox returns the tenant's dormant outbox, started; nil if the
// tenant's broker runs here (its outboxes deliver).
func (h *Hub) dormantOutbox(t tenants.Tenant) *outbox {
	if v, ok := h.dormant.Load(t.Slug); ok {
		d := v.(*dormantOutbox)
		h.dormantMu.Lock()
		d.used = h.now()
		h.dormantMu.Unlock()
		return d.o
	}
	o := h.newDormantOutbox(t)
	if o == nil {
		return nil // no outboxes here (no delivery or session store)
	}
	d := &dormantOutbox{o: o, used: h.now()}
	if v, loaded := h.dormant.LoadOrStore(t.Slug, d); loaded {
		return v.(*dormantOutbox).o
	}
	// A broker of the tenant's starting closes the dormant outbox first
	// (wakeTenant): checked after it was stored, a broker that is not
	// running yet will close it, and one running already is seen here.
	if h.reg.running(t.Slug) != nil {
		h.dormant.CompareAndDelete(t.Slug, d)
		d.o.close()
		return nil
	}
	d.o.log.Info("tenant suspended: its outboxes deliver without its broker")
	d.o.start()
	return d.o
}

// newDormantOutbox is an outbox of a tenant whose broker does not run,
// under the quotas it had as it was read.
func (h *Hub) newDormantOutbox(t tenants.Tenant) *outbox {
	q := t.Quotas()
	wide := h.wide(t.Slug)
	return h.outboxOf(t.Slug, h.log.With("tenant", t.Slug, "dormant", true), func() tenants.Quotas { return q },
		!wide || h.fabricHome(t.Slug), wide)
}

// wakeTenant closes the tenant's dormant outbox, if any, before its
// broker starts here: the broker's outboxes take over (claiming them
// again). It runs under the registry's lock; closing waits only for the
// workers to see their context end.
func (h *Hub) wakeTenant(tenant string) {
	if v, ok := h.dormant.LoadAndDelete(tenant); ok {
		v.(*dormantOutbox).o.close()
		h.log.Info("tenant's broker starts: its dormant outboxes stop", "tenant", tenant)
	}
}

// dormantClosed reports whether o was closed (taken over).
func (h *Hub) dormantClosed(o *outbox) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.stopped
}

// reapDormant stops the dormant outboxes that have nothing left to deliver
// and were unused for the idle timeout, and gives their tenants up (in a
// fleet) unless their brokers started.
func (h *Hub) reapDormant() {
	now := h.now()
	h.dormant.Range(func(k, v any) bool {
		d := v.(*dormantOutbox)
		h.dormantMu.Lock()
		idle := now.Sub(d.used) >= h.cfg.IdleTimeout
		h.dormantMu.Unlock()
		if !idle || d.o.busy() {
			return true
		}
		if h.dormant.CompareAndDelete(k, d) {
			d.o.close()
			d.o.log.Info("dormant outboxes stopped: nothing left to deliver")
			h.reg.giveUp(k.(string))
		}
		return true
	})
}

// closeDormant stops every dormant outbox, as the hub closes.
func (h *Hub) closeDormant() {
	h.dormant.Range(func(k, v any) bool {
		if h.dormant.CompareAndDelete(k, v) {
			v.(*dormantOutbox).o.close()
		}
		return true
	})
}

// wakeAll wakes every worker of the outbox, to read its outbox again.
func (o *outbox) wakeAll() {
	if o == nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, q := range o.dests {
		o.wake(q)
	}
}
