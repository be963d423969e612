package web_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/roosthub/roost/tenants"
	"github.com/roosthub/roost/web"
)

// TestWebhooksPageOperatorKafka: with the operator's Kafka configured, the
// webhooks page lists the built-in operator-kafka first, read-only (no
// send test, no delete), with its rules (a rule with a Kafka topic, one
// on $events) and their Kafka topics; an admin adds a rule to it with a
// Kafka topic, and one without a topic comes back with the error on that
// field. Another tenant's page shows its own operator-kafka and none of
// acme's rules. Without the operator's Kafka none of it is shown.
func TestWebhooksPageOperatorKafka(t *testing.T) {
	s := newStackWith(t, func(c *web.Config) { c.OperatorKafka = true })
	b := s.browser()
	b.signup("owner")
	b.tenant("acme")
	b.tenant("other")
	a := b.get("/tenants/acme/webhooks")
	if a.status != http.StatusOK || strings.Contains(a.body, "No destinations yet") || !strings.Contains(a.body, "<b>operator-kafka</b>") ||
		!strings.Contains(a.body, "roost.acme.&lt;topic&gt;") || !strings.Contains(a.body, `id="rule_topic"`) {
		t.Fatalf("webhooks page without rules: %d, want operator-kafka and the rule form's Kafka topic:\n%s", a.status, a.body)
	}
	for _, forbidden := range []string{"Send a test message to operator-kafka", "Delete the destination operator-kafka"} {
		if strings.Contains(a.body, forbidden) {
			t.Errorf("the page offers %q on the built-in destination", forbidden)
		}
	}

	// A rule made through the API's store with a topic alone is
	// operator-kafka's; one on $events is added from the page.
	ctx := tenants.WithActor(context.Background(), "test")
	if _, err := s.store.CreateExportRule(ctx, "acme", tenants.ExportRuleInput{Filter: "sensors/#", Topic: "telemetry"}); err != nil {
		t.Fatal(err)
	}
	a = b.post("/tenants/acme/webhooks/rules", url.Values{"filter": {"$events/#"}, "destination": {tenants.OperatorKafka}, "rule_topic": {"events"},
		"condition": {`payload.type == "disconnected"`}})
	if a.status != http.StatusSeeOther {
		t.Fatalf("add a rule to operator-kafka: %d, want 303:\n%s", a.status, a.body)
	}
	rules, err := s.store.ExportRules(context.Background(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != 2 || rules[1].Filter != "$events/#" || rules[1].Topic != "events" || rules[1].Destination != "" || rules[1].Condition == "" {
		t.Errorf("acme's Kafka export rules: %+v, want sensors/# and the $events/# rule to roost.acme.events", rules)
	}
	a = b.get("/tenants/acme/webhooks")
	for _, want := range []string{"<code>sensors/#</code>", "<code>roost.acme.telemetry</code>", "<code>$events/#</code>", "<code>roost.acme.events</code>",
		`aria-label="Delete the rule $events/# to operator-kafka"`} {
		if !strings.Contains(a.body, want) {
			t.Errorf("the page lacks %q:\n%s", want, a.body)
		}
	}
	if !strings.Contains(a.body, "<small>operator_kafka</small>") || !strings.Contains(a.body, "</code></small></td><td>2</td>") {
		t.Errorf("the operator-kafka row does not count its 2 rules:\n%s", a.body)
	}

	// Without a topic: the error is on the Kafka topic field.
	a = b.post("/tenants/acme/webhooks/rules", url.Values{"filter": {"alarms/#"}, "destination": {tenants.OperatorKafka}})
	if a.status != http.StatusBadRequest || !strings.Contains(a.body, `id="rule_topic" name="rule_topic" value="" placeholder="telemetry" aria-invalid="true"`) {
		t.Errorf("a rule to operator-kafka without a topic: %d, want 400 with the error on rule_topic:\n%s", a.status, a.body)
	}

	// The other tenant: its own operator-kafka, none of acme's rules.
	a = b.get("/tenants/other/webhooks")
	if !strings.Contains(a.body, "roost.other.&lt;topic&gt;") || strings.Contains(a.body, "roost.acme.") || strings.Contains(a.body, "$events/#") {
		t.Errorf("the other tenant's page:\n%s", a.body)
	}

	// Without the operator's Kafka: no built-in destination, no topic field.
	s2 := newStack(t)
	b2 := s2.browser()
	b2.signup("owner")
	b2.tenant("acme")
	if a := b2.get("/tenants/acme/webhooks"); strings.Contains(a.body, "operator-kafka") || strings.Contains(a.body, "rule_topic") || !strings.Contains(a.body, "No destinations yet") {
		t.Errorf("the page without the operator's Kafka:\n%s", a.body)
	}
}
