package broker_test

import (
	"encoding/json"
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

	if _, err := s.store.AdminUpdateTenant(ctx, "acme", tenants.AdminTenantUpdate{Suspended: &no}); err != nil {
		t.Fatal(err)
	}
	relay.Emit(events.Event{Time: time.Now().UTC(), Tenant: "acme", Type: events.BillingResumed})
	has(events.BillingResumed)
	mustV5(t, s.addr, "acme/d1", secret, "d1") // resumed: devices connect again
}
