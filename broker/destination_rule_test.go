package broker_test

import (
	"testing"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/tenants"
)

// TestDestinationRuleNotExported: a rule with a destination (delivered by
// the outbox, not yet built) is not a Kafka export rule: a publish it
// matches is acknowledged and delivered as usual and nothing goes to
// Kafka, while the tenant's Kafka rule beside it still exports.
func TestDestinationRuleNotExported(t *testing.T) {
	exp := &fakeExporter{}
	s := newStack(t, func(c *broker.Config) { c.Exporter = exp })
	s.tenant("acme")
	id := tenants.NewDestinationID()
	if _, err := s.store.CreateDestination(ctx, "acme", id, tenants.DestinationInput{Name: "hook", Type: "webhook", URL: "https://hooks.example.com/"},
		tenants.Sealed{Secret: "sealed"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.store.CreateExportRule(ctx, "acme", tenants.ExportRuleInput{Filter: "#", Destination: "hook", Condition: "true"}); err != nil {
		t.Fatal(err)
	}
	pub := mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub")
	sub := mustV5(t, s.addr, "acme/sub", s.device("acme", "sub"), "sub")
	sub.sub(t, "sensors/#", 1)
	if r := pub.pub(t, "sensors/temp", "21.5", 1, false); r.ReasonCode != 0 {
		t.Fatalf("PUBACK 0x%02x, want 0", r.ReasonCode)
	}
	sub.expect(t, "sensors/temp", "21.5")
	if got := exp.taken(); len(got) != 0 {
		t.Fatalf("a destination rule exported to Kafka: %+v", got)
	}
	if _, err := s.store.CreateExportRule(ctx, "acme", tenants.ExportRuleInput{Filter: "sensors/#", Topic: "telemetry"}); err != nil {
		t.Fatal(err)
	}
	pub.pub(t, "sensors/temp", "22", 1, false)
	got := exp.taken()
	if len(got) != 1 || got[0].Topic != tenants.ExportTopic("acme", "telemetry") {
		t.Errorf("after adding a Kafka rule, exported %+v, want one message to roost.acme.telemetry", got)
	}
}
