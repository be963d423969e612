package broker_test

import (
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// TestExportEvents: a Kafka export rule on $events exports each event it
// matches once, as JSON — even while a device of the tenant subscribes to
// the event's topic, so the hub also publishes it inside the tenant —
// keyed by its device; a billing event (no device) after the rule's
// condition; another tenant's rule on $events/# gets none of acme's. While
// Kafka refuses, the rule's errors count the events it lost.
func TestExportEvents(t *testing.T) {
	exp := &fakeExporter{}
	s := newStack(t, func(c *broker.Config) { c.Exporter = exp })
	s.tenant("acme")
	s.tenant("other")
	s.rules("acme", allow(tenants.ActionAll, "$events/#"), allow(tenants.ActionAll, "#"))
	for _, r := range []struct {
		tenant string
		in     tenants.ExportRuleInput
	}{
		{"acme", tenants.ExportRuleInput{Filter: "$events/presence/#", Topic: "presence"}},
		{"acme", tenants.ExportRuleInput{Filter: "$events/billing/#", Topic: "billing", Condition: `payload.type == "payment_failed"`}},
		{"other", tenants.ExportRuleInput{Filter: "$events/#", Topic: "events"}},
	} {
		if _, err := s.store.CreateExportRule(ctx, r.tenant, r.in); err != nil {
			t.Fatal(err)
		}
	}
	spy := mustV5(t, s.addr, user("acme", "spy"), s.device("acme", "spy"), "spy")
	spy.sub(t, "$events/#", 1)
	d2 := mustV5(t, s.addr, user("acme", "d2"), s.device("acme", "d2"), "d2")
	d2.Disconnect(&paho.Disconnect{})
	// The spy has the disconnect once the hub published it in the tenant,
	// after its export hook saw it.
	deadline := time.After(20 * time.Second)
	for seen := false; !seen; {
		select {
		case m := <-spy.msgs:
			seen = m.Topic == "$events/presence/disconnected/d2"
		case <-deadline:
			t.Fatal("the spy got no disconnect of d2 within 20s")
		}
	}
	// taken waits for a record on topic with header mqtt_topic, then
	// returns every record so far.
	taken := func(topic, mqttTopic string) []broker.ExportMessage {
		t.Helper()
		end := time.Now().Add(20 * time.Second)
		for {
			got := exp.taken()
			for _, m := range got {
				if m.Topic == topic && m.Headers["mqtt_topic"] == mqttTopic {
					return got
				}
			}
			if time.Now().After(end) {
				t.Fatalf("no record on %s for %s within 20s: %+v", topic, mqttTopic, got)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	got := taken("roost.acme.presence", "$events/presence/disconnected/d2")
	counts := map[string]int{}
	for _, m := range got {
		if m.Topic != "roost.acme.presence" {
			t.Errorf("exported to %s (%s), want roost.acme.presence alone", m.Topic, m.Headers["mqtt_topic"])
		}
		counts[m.Headers["mqtt_topic"]]++
		if m.Headers["mqtt_topic"] == "$events/presence/disconnected/d2" {
			if string(m.Key) != "d2" || m.Headers["device"] != "d2" || m.Headers["event"] != "disconnected" || m.Headers["content_type"] != "application/json" {
				t.Errorf("d2's disconnect: key %q headers %v", m.Key, m.Headers)
			}
		}
	}
	for _, topic := range []string{"$events/presence/connected/d2", "$events/presence/disconnected/d2"} {
		if counts[topic] != 1 {
			t.Errorf("%s exported %d times, want once", topic, counts[topic])
		}
	}

	// Billing's events: the condition lets payment_failed through alone.
	for _, typ := range []string{events.PaymentSucceeded, events.PaymentFailed} {
		if err := s.hub.PublishEvent(ctx, events.Event{Tenant: "acme", Type: typ}); err != nil {
			t.Fatal(err)
		}
	}
	got = taken("roost.acme.billing", "$events/billing/payment_failed")
	n := 0
	for _, m := range got {
		if m.Topic == "roost.acme.billing" {
			n++
			if m.Headers["mqtt_topic"] != "$events/billing/payment_failed" || len(m.Key) != 0 {
				t.Errorf("billing record: key %q headers %v", m.Key, m.Headers)
			}
		}
	}
	if n != 1 {
		t.Errorf("%d billing records, want payment_failed alone", n)
	}

	// Kafka refuses: the event is lost and counted in its rule's errors.
	exp.mu.Lock()
	exp.down = true
	exp.mu.Unlock()
	if err := s.hub.PublishEvent(ctx, events.Event{Tenant: "acme", Type: events.PaymentFailed}); err != nil {
		t.Fatal(err)
	}
	rules, err := s.store.ExportRules(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	billing := rules[1].ID
	for end := time.Now().Add(20 * time.Second); s.hub.ExportErrors("acme")[billing] != 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("errors of the billing rule: %v, want 1 within 20s", s.hub.ExportErrors("acme"))
		}
	}
}
