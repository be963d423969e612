package broker_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// TestOutboxSuspendedTenantEvents: a suspended tenant's billing_suspended,
// relayed as billing relays it, reaches its webhook rule (a real receiver,
// signed) without its broker starting: its devices stay refused (0x8A),
// and no broker of it runs. Once resumed, its billing_resumed reaches the
// same rule through its broker.
func TestOutboxSuspendedTenantEvents(t *testing.T) {
	s := newOutboxStack(t, time.Minute)
	s.tenant("acme")
	rc := newWebhookReceiver(t)
	s.destination("acme", "hook", rc, "$events/billing/#", "")
	// Another tenant's rule on the same filter hears none of acme's.
	s.tenant("globex")
	other := newWebhookReceiver(t)
	s.destination("globex", "hook", other, "$events/billing/#", "")
	secret := s.device("acme", "d1")
	yes, no := true, false
	if _, err := s.store.AdminUpdateTenant(ctx, "acme", tenants.AdminTenantUpdate{Suspended: &yes}); err != nil {
		t.Fatal(err)
	}
	relay := events.NewRelay(s.hub.PublishEvent, nil)
	defer relay.Close()
	// has waits for an event of type typ at the receiver.
	has := func(typ string) {
		t.Helper()
		eventually(t, 20*time.Second, "the receiver has "+typ, func() bool {
			for _, m := range rc.messages() {
				var e events.Event
				if m.Topic == "$events/billing/"+typ && json.Unmarshal(m.Payload, &e) == nil && e.Type == typ && e.Tenant == "acme" {
					return true
				}
			}
			return false
		})
	}
	relay.Emit(events.Event{Time: time.Now().UTC(), Tenant: "acme", Type: events.BillingSuspended, Reason: "payment failed"})
	has(events.BillingSuspended)
	if _, running := broker.DenyActionOf(s.hub, "acme"); running {
		t.Error("the suspended tenant's broker runs")
	}
	if code := refusedV5(t, s.addr, "acme/d1", secret, "d1"); code != 0x8A {
		t.Errorf("connect while suspended: got 0x%02x, want 0x8A", code)
	}
	if _, running := broker.DenyActionOf(s.hub, "acme"); running {
		t.Error("the suspended tenant's broker runs after a refused connect")
	}
	if _, unsigned := rc.counts(); unsigned != 0 {
		t.Errorf("%d requests failed the signature check", unsigned)
	}
	// A rule added while suspended is in force for its dormant outboxes.
	late := newWebhookReceiver(t)
	s.destination("acme", "late", late, "$events/billing/spend_warning", "")
	relay.Emit(events.Event{Time: time.Now().UTC(), Tenant: "acme", Type: events.SpendWarning, Limit: 100})
	eventually(t, 20*time.Second, "the rule added while suspended has the spend_warning", func() bool {
		for _, m := range late.messages() {
			if m.Topic == "$events/billing/spend_warning" {
				return true
			}
		}
		return false
	})

	if _, err := s.store.AdminUpdateTenant(ctx, "acme", tenants.AdminTenantUpdate{Suspended: &no}); err != nil {
		t.Fatal(err)
	}
	relay.Emit(events.Event{Time: time.Now().UTC(), Tenant: "acme", Type: events.BillingResumed})
	has(events.BillingResumed)
	mustV5(t, s.addr, "acme/d1", secret, "d1") // resumed: devices connect again
	if got := other.messages(); len(got) != 0 {
		t.Errorf("globex's rule received %d of acme's events, e.g. %s", len(got), got[0].Topic)
	}
}

// TestOutboxSuspendedAfterRestart: after a restart (a new hub on the same
// session store), a suspended tenant's outbox that holds messages
// (acknowledged before the suspension) is delivered although its broker
// does not start: no broker of it runs, and its devices stay refused.
func TestOutboxSuspendedAfterRestart(t *testing.T) {
	s := newOutboxStack(t, time.Hour)
	s.tenant("acme")
	rc := newWebhookReceiver(t)
	rc.answer(http.StatusServiceUnavailable)
	s.destination("acme", "hook", rc, "sensors/#", "")
	secret := s.device("acme", "pub")
	pub := mustV5(t, s.addr, "acme/pub", secret, "pub")
	const n = 5
	for i := range n {
		pub.pub(t, "sensors/temp", fmt.Sprint(i), 1, false)
	}
	sessions, delivery := broker.SessionsOf(s.hub), broker.DeliveryOf(s.hub)
	s.hub.Close()
	yes := true
	if _, err := s.store.AdminUpdateTenant(ctx, "acme", tenants.AdminTenantUpdate{Suspended: &yes}); err != nil {
		t.Fatal(err)
	}
	rc.answer(http.StatusOK)
	hub2, addr2 := serveHub(t, broker.Config{Directory: s.store, Changes: s.store.Changes(), Usage: s.store, Sessions: sessions, Delivery: delivery})
	eventually(t, 20*time.Second, "the suspended tenant's outbox is delivered", func() bool { return len(rc.messages()) >= n })
	if _, running := broker.DenyActionOf(hub2, "acme"); running {
		t.Error("the suspended tenant's broker runs")
	}
	if code := refusedV5(t, addr2, "acme/pub", secret, "pub"); code != 0x8A {
		t.Errorf("connect while suspended: got 0x%02x, want 0x8A", code)
	}
}
