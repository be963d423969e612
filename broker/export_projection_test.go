package broker_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/tenants"
)

// TestExportProjection: an operator-Kafka rule's projection is the
// record's value (JSON, said so in its content_type header), for messages
// and for events; a rule without one exports the payload as it was; a
// message the projection cannot be evaluated for is not exported by it.
func TestExportProjection(t *testing.T) {
	exp := &fakeExporter{}
	s := newStack(t, func(c *broker.Config) { c.Exporter = exp })
	s.tenant("acme")
	for _, in := range []tenants.ExportRuleInput{
		{Filter: "sensors/#", Topic: "shaped", Projection: `{"t": payload.temp, "room": metadata.room}`},
		{Filter: "sensors/#", Topic: "plain"},
		{Filter: "$events/presence/#", Topic: "presence", Projection: `{"who": payload.device, "what": payload.type}`},
	} {
		if _, err := s.store.CreateExportRule(ctx, "acme", in); err != nil {
			t.Fatal(err)
		}
	}
	s.rules("acme", allow(tenants.ActionAll, "#"))
	secret := s.device("acme", "pub")
	if _, err := s.store.UpdateDevice(ctx, "acme", "pub", tenants.DeviceUpdate{Metadata: &map[string]string{"room": "lab"}}); err != nil {
		t.Fatal(err)
	}
	pub := mustV5(t, s.addr, user("acme", "pub"), secret, "pub")
	pub.pub(t, "sensors/a", `{"temp": 21.5, "raw": 1}`, 1, false)
	pub.pub(t, "sensors/a", `{"humidity": 40}`, 1, false) // no temp: not shaped, not exported by that rule
	d2 := mustV5(t, s.addr, user("acme", "d2"), s.device("acme", "d2"), "d2")
	d2.Disconnect(&paho.Disconnect{})

	values := map[string][]string{}
	deadline := time.Now().Add(20 * time.Second)
	for {
		values = map[string][]string{}
		for _, m := range exp.taken() {
			values[m.Topic] = append(values[m.Topic], string(m.Value))
			if m.Topic == "roost.acme.shaped" && m.Headers["content_type"] != "application/json" {
				t.Errorf("a shaped record's headers: %v", m.Headers)
			}
		}
		if len(values["roost.acme.plain"]) == 2 && slices.Contains(values["roost.acme.presence"], `{"what":"disconnected","who":"d2"}`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("records within 20s: %v", values)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := values["roost.acme.shaped"]; len(got) != 1 || got[0] != `{"room":"lab","t":21.5}` {
		t.Errorf("shaped records: %q", got)
	}
	if got := values["roost.acme.plain"]; got[0] != `{"temp": 21.5, "raw": 1}` || got[1] != `{"humidity": 40}` {
		t.Errorf("plain records: %q", got)
	}
	for _, v := range values["roost.acme.presence"] {
		if !strings.HasPrefix(v, `{"what":"`) {
			t.Errorf("a presence record not shaped: %s", v)
		}
	}
}

// TestExportRulesCompiledOnceEach: as the outbox's (see
// TestOutboxRulesCompiledOnceEach), an operator-Kafka rule whose
// condition is as it was is not compiled again when another rule is
// added: a publish after the change does not wait for it.
func TestExportRulesCompiledOnceEach(t *testing.T) {
	exp := &fakeExporter{}
	s := newStack(t, func(c *broker.Config) { c.Exporter = exp })
	s.tenant("acme")
	nested := strings.Repeat("[", 43) + strings.Repeat("]", 43)
	slow := strings.Repeat(nested+" == [] || ", 42) + "payload.temp > 0"
	for _, cond := range []string{slow, slow + " || false"} {
		if _, err := s.store.CreateExportRule(ctx, "acme", tenants.ExportRuleInput{Filter: "sensors/#", Topic: "hot", Condition: cond}); err != nil {
			t.Fatal(err)
		}
	}
	s.rules("acme", allow(tenants.ActionAll, "#"))
	pub := mustV5(t, s.addr, user("acme", "pub"), s.device("acme", "pub"), "pub")
	publish := func(payload string) time.Duration {
		t.Helper()
		start := time.Now()
		if r := pub.pub(t, "sensors/a", payload, 1, false); r.ReasonCode != 0 {
			t.Fatalf("publish %s: PUBACK 0x%02x, want 0", payload, r.ReasonCode)
		}
		return time.Since(start)
	}
	first := publish(`{"temp":1}`) // compiles both rules
	if _, err := s.store.CreateExportRule(ctx, "acme", tenants.ExportRuleInput{Filter: "other/#", Topic: "other"}); err != nil {
		t.Fatal(err)
	}
	if second := publish(`{"temp":2}`); second > first/4 {
		t.Errorf("the publish after a rule was added took %v, the first (compiling the rules) %v: want the rules not compiled again",
			second.Round(time.Millisecond), first.Round(time.Millisecond))
	}
	if n := len(exp.taken()); n != 4 {
		t.Errorf("%d records exported, want 4 (both messages by both rules)", n)
	}
}
