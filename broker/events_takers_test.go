package broker_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// TestEventsReachEachTaker: the hub encodes an event only when something
// in its tenant takes it, so each taker alone must still get a device's
// connected and disconnected events, as JSON: a subscriber to $events, a
// rule with a destination, an export rule to the operator's Kafka; and
// with none of them, the events are still recorded (the hub's sink, which
// GET /events and the console read).
func TestEventsReachEachTaker(t *testing.T) {
	// connectAndLeave connects a new device of acme and disconnects it.
	connectAndLeave := func(t *testing.T, s *stack, name string) {
		t.Helper()
		c := mustV5(t, s.addr, user("acme", name), s.device("acme", name), name)
		c.Disconnect(&paho.Disconnect{})
	}
	// isEvent reports whether topic is the one of acme's event typ about
	// device, and fails the test if the payload is not that event.
	isEvent := func(t *testing.T, topic string, payload []byte, typ, device string) bool {
		t.Helper()
		if topic != "$events/presence/"+typ+"/"+device {
			return false
		}
		var e events.Event
		if err := json.Unmarshal(payload, &e); err != nil {
			t.Errorf("payload on %s: %q: %v", topic, payload, err)
			return false
		}
		if e.Tenant != "acme" || e.Type != typ || e.Device != device || e.Time.IsZero() {
			t.Errorf("payload on %s: got %+v, want acme's %s of %s with a time", topic, e, typ, device)
		}
		return true
	}

	t.Run("none", func(t *testing.T) {
		log := events.NewMemory(100)
		s := newStack(t, func(c *broker.Config) { c.Events = log })
		s.tenant("acme")
		connectAndLeave(t, s, "d2")
		eventually(t, 10*time.Second, "d2's connected and disconnected recorded", func() bool {
			es := log.Recent("acme")
			return len(es) == 2 && es[0].Type == events.Connected && es[1].Type == events.Disconnected && es[1].Device == "d2"
		})
	})

	t.Run("subscriber", func(t *testing.T) {
		log := events.NewMemory(100)
		s := newStack(t, func(c *broker.Config) { c.Events = log })
		s.tenant("acme")
		s.rules("acme", allow(tenants.ActionAll, "$events/#"), allow(tenants.ActionAll, "#"))
		// Nobody listens to d1's events (they are recorded all the same);
		// the spy, subscribed after them, hears d2's.
		connectAndLeave(t, s, "d1")
		eventually(t, 10*time.Second, "d1's events recorded", func() bool { return len(log.Recent("acme")) == 2 })
		spy := mustV5(t, s.addr, user("acme", "spy"), s.device("acme", "spy"), "spy")
		spy.sub(t, "$events/presence/+/d2", 0)
		connectAndLeave(t, s, "d2")
		deadline := time.After(20 * time.Second)
		for _, typ := range []string{events.Connected, events.Disconnected} {
			select {
			case m := <-spy.msgs:
				if !isEvent(t, m.Topic, m.Payload, typ, "d2") {
					t.Fatalf("the spy got %s %q, want d2's %s", m.Topic, m.Payload, typ)
				}
			case <-deadline:
				t.Fatalf("the spy got no %s of d2 within 20s", typ)
			}
		}
	})

	t.Run("destination", func(t *testing.T) {
		s := newOutboxStack(t, time.Minute)
		s.tenant("acme")
		rc := newWebhookReceiver(t)
		s.destination("acme", "hook", rc, "$events/presence/#", "")
		connectAndLeave(t, s.stack, "d2")
		eventually(t, 20*time.Second, "the receiver has d2's connected and disconnected", func() bool {
			var connected, disconnected bool
			for _, m := range rc.messages() {
				connected = connected || isEvent(t, m.Topic, []byte(m.Payload), events.Connected, "d2")
				disconnected = disconnected || isEvent(t, m.Topic, []byte(m.Payload), events.Disconnected, "d2")
			}
			return connected && disconnected
		})
	})

	t.Run("export", func(t *testing.T) {
		exp := &fakeExporter{}
		s := newStack(t, func(c *broker.Config) { c.Exporter = exp })
		s.tenant("acme")
		if _, err := s.store.CreateExportRule(ctx, "acme", tenants.ExportRuleInput{Filter: "$events/presence/#", Topic: "presence"}); err != nil {
			t.Fatal(err)
		}
		connectAndLeave(t, s, "d2")
		eventually(t, 20*time.Second, "the exporter has d2's connected and disconnected", func() bool {
			var connected, disconnected bool
			for _, m := range exp.taken() {
				if m.Topic != "roost.acme.presence" {
					continue
				}
				connected = connected || isEvent(t, m.Headers["mqtt_topic"], m.Value, events.Connected, "d2")
				disconnected = disconnected || isEvent(t, m.Headers["mqtt_topic"], m.Value, events.Disconnected, "d2")
			}
			return connected && disconnected
		})
	})
}
