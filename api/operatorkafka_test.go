package api_test

import (
	"context"
	"strings"
	"testing"

	"github.com/roosthub/roost/api"
	"github.com/roosthub/roost/tenants"
)

func withOperatorKafka(c *api.Config) { c.OperatorKafka = true }

// TestOperatorKafkaDestination: with the operator's Kafka configured, the
// built-in destination operator-kafka is listed first, read-only; a rule
// naming it with a topic is stored as the Kafka export rule it always was
// (what the data plane's export reads), and every rule's delivery names
// what delivers.
func TestOperatorKafkaDestination(t *testing.T) {
	e := newEnvWith(t, withOperatorKafka)
	owner := e.signup("owner")
	e.mustTenant(owner, "acme")
	_, viewerKey := e.mustKey(owner.token, "acme", tenants.RoleViewer)
	base := "/v1/tenants/acme/destinations"
	hookID := e.mustDestination(owner.token, "acme", "ingest")

	for _, tok := range []string{owner.token, viewerKey} {
		items := asSlice(e.do("GET", base, tok, nil).json()["items"])
		if len(items) != 2 {
			t.Fatalf("destinations: %v, want operator-kafka and ingest", items)
		}
		if d := items[0].(map[string]any); d["id"] != tenants.OperatorKafka || d["name"] != tenants.OperatorKafka || d["type"] != "operator_kafka" {
			t.Errorf("first destination: %v, want the built-in operator-kafka", d)
		}
		if d := items[1].(map[string]any); d["id"] != hookID {
			t.Errorf("second destination: %v, want %s", d, hookID)
		}
	}
	r := e.do("GET", base+"/operator-kafka", viewerKey, nil)
	want(t, r, 200, "get operator-kafka")
	if m := r.json(); m["type"] != "operator_kafka" || m["status"] != nil {
		t.Errorf("operator-kafka: %s, want type operator_kafka, status null", r.body)
	}

	// Read-only, with the reason; viewers are refused before that.
	for _, c := range []struct {
		method, path string
		body         any
	}{
		{"PATCH", base + "/operator-kafka", map[string]string{"name": "mine"}},
		{"DELETE", base + "/operator-kafka", nil},
		{"POST", base + "/operator-kafka/secret", nil},
		{"POST", base + "/operator-kafka/test", nil},
	} {
		r := e.do(c.method, c.path, owner.token, c.body)
		wantProblem(t, r, 409, "conflict", "", c.method+" "+c.path)
		if !strings.Contains(r.str("detail"), "built into the hub") {
			t.Errorf("%s %s: %s, want the reason", c.method, c.path, r.body)
		}
		wantProblem(t, e.do(c.method, c.path, viewerKey, c.body), 403, "forbidden", "", "a viewer: "+c.method+" "+c.path)
	}
	// The name and the type are the hub's.
	wantProblem(t, e.do("POST", base, owner.token, map[string]string{"name": "operator-kafka", "type": "webhook", "url": "https://a.example.com/"}),
		400, "invalid", "name", "a webhook named operator-kafka")
	wantProblem(t, e.do("PATCH", base+"/"+hookID, owner.token, map[string]string{"name": "operator-kafka"}), 400, "invalid", "name", "a rename to operator-kafka")
	wantProblem(t, e.do("POST", base, owner.token, map[string]string{"name": "mine", "type": "operator_kafka"}), 400, "invalid", "type", "a tenant's operator_kafka")

	// A rule to operator-kafka is a Kafka export rule.
	rule := e.do("POST", "/v1/tenants/acme/rules", owner.token, map[string]string{"filter": "sensors/#", "destination": "operator-kafka", "topic": "telemetry"})
	want(t, rule, 201, "a rule to operator-kafka")
	if m := rule.json(); m["destination"] != tenants.OperatorKafka || m["kafka_topic"] != "roost.acme.telemetry" || m["delivery"] != "operator_kafka" {
		t.Errorf("rule: %s", rule.body)
	}
	exported, err := e.store.ExportRules(context.Background(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	if len(exported) != 1 || exported[0].ID != rule.str("id") || exported[0].Topic != "telemetry" || exported[0].Destination != "" {
		t.Errorf("the data plane's export rules: %+v, want the rule with topic telemetry", exported)
	}
	// Today's form: a topic alone, reported the same way.
	old := e.do("POST", "/v1/tenants/acme/rules", owner.token, map[string]string{"filter": "alarms/#", "topic": "alarms"})
	want(t, old, 201, "a rule with a topic only")
	if old.str("destination") != tenants.OperatorKafka || old.str("delivery") != "operator_kafka" {
		t.Errorf("rule with a topic only: %s", old.body)
	}
	hook := e.do("POST", "/v1/tenants/acme/rules", owner.token, map[string]string{"filter": "sensors/#", "destination": "ingest"})
	want(t, hook, 201, "a webhook rule")
	kd := e.do("POST", base, owner.token, map[string]any{"name": "plant", "type": "kafka",
		"kafka": map[string]any{"brokers": []string{"kafka.example.com:9093"}, "topic": "t", "tls": true}})
	want(t, kd, 201, "a Kafka destination")
	kr := e.do("POST", "/v1/tenants/acme/rules", owner.token, map[string]string{"filter": "sensors/#", "destination": "plant"})
	want(t, kr, 201, "a rule to the tenant's Kafka")
	if kr.str("delivery") != "kafka" || kr.str("destination") != kd.str("id") {
		t.Errorf("rule to the tenant's Kafka: %s, want delivery kafka", kr.body)
	}

	wantDelivery := map[string]string{rule.str("id"): "operator_kafka", old.str("id"): "operator_kafka", hook.str("id"): "webhook", kr.str("id"): "kafka"}
	list := asSlice(e.do("GET", "/v1/tenants/acme/rules", viewerKey, nil).json()["items"])
	if len(list) != len(wantDelivery) {
		t.Fatalf("rules: %v", list)
	}
	for _, it := range list {
		m := it.(map[string]any)
		if m["delivery"] != wantDelivery[m["id"].(string)] {
			t.Errorf("rule %v: delivery %v, want %s", m["id"], m["delivery"], wantDelivery[m["id"].(string)])
		}
		if m["delivery"] == "operator_kafka" && m["destination"] != tenants.OperatorKafka {
			t.Errorf("rule %v: destination %v, want operator-kafka", m["id"], m["destination"])
		}
	}

	// A dry run says the same.
	tr := e.do("POST", "/v1/tenants/acme/rules/test", viewerKey, map[string]any{
		"rule":    map[string]string{"filter": "sensors/#", "destination": "operator-kafka", "topic": "telemetry"},
		"message": map[string]string{"topic": "sensors/a"}})
	want(t, tr, 200, "test a rule to operator-kafka")
	if m := tr.json(); m["matched"] != true || m["delivery"] != "operator_kafka" || m["destination"] != tenants.OperatorKafka || m["kafka_topic"] != "roost.acme.telemetry" {
		t.Errorf("rule test: %s", tr.body)
	}
	tr = e.do("POST", "/v1/tenants/acme/rules/test", viewerKey, map[string]any{"rule_id": kr.str("id"), "message": map[string]string{"topic": "sensors/a"}})
	if tr.str("delivery") != "kafka" {
		t.Errorf("rule test of the Kafka destination's rule: %s", tr.body)
	}

	// Refusals.
	rules := "/v1/tenants/acme/rules"
	wantProblem(t, e.do("POST", rules, owner.token, map[string]string{"filter": "#", "destination": "operator-kafka"}), 400, "invalid", "topic", "operator-kafka without a topic")
	wantProblem(t, e.do("POST", rules, owner.token, map[string]string{"filter": "#", "destination": "operator-kafka", "topic": "t", "condition": "payload.temp >"}),
		400, "invalid", "condition", "operator-kafka with a condition that does not compile")
	wantProblem(t, e.do("POST", rules, owner.token, map[string]string{"filter": "$SYS/#", "destination": "operator-kafka", "topic": "t"}),
		400, "invalid", "filter", "operator-kafka on $SYS")
	wantProblem(t, e.do("POST", rules, owner.token, map[string]string{"filter": "$roost/#", "destination": "operator-kafka", "topic": "t"}),
		400, "invalid", "filter", "operator-kafka on $roost")
	wantProblem(t, e.do("POST", rules, owner.token, map[string]string{"filter": "#", "destination": "operator-kafka", "topic": "../x"}),
		400, "invalid", "topic", "operator-kafka with a bad topic")
	wantProblem(t, e.do("POST", rules, owner.token, map[string]string{"filter": "#", "destination": "ingest", "topic": "t"}),
		400, "invalid", "destination", "a topic with a webhook")
	wantProblem(t, e.do("POST", rules, viewerKey, map[string]string{"filter": "#", "destination": "operator-kafka", "topic": "t"}),
		403, "forbidden", "", "a viewer's rule to operator-kafka")

	// A rule to operator-kafka may match events, with a condition.
	ev := e.do("POST", rules, owner.token, map[string]string{"filter": "$events/presence/#", "destination": "operator-kafka", "topic": "presence",
		"condition": `payload.type == "disconnected"`})
	want(t, ev, 201, "a rule to operator-kafka on $events")
	if ev.str("delivery") != "operator_kafka" || ev.str("kafka_topic") != "roost.acme.presence" {
		t.Errorf("rule on $events: %s", ev.body)
	}
	for _, c := range []struct {
		payload string
		matched bool
	}{{`{"type":"disconnected","device":"d1"}`, true}, {`{"type":"connected","device":"d1"}`, false}} {
		tr := e.do("POST", rules+"/test", viewerKey, map[string]any{"rule_id": ev.str("id"),
			"message": map[string]string{"topic": "$events/presence/disconnected/d1", "payload": c.payload}})
		want(t, tr, 200, "test the rule on $events")
		if tr.json()["matched"] != c.matched || tr.str("delivery") != "operator_kafka" {
			t.Errorf("test the rule on $events with %s: %s, want matched %v", c.payload, tr.body, c.matched)
		}
	}

	// Another tenant's users see none of it.
	stranger := e.signup("stranger")
	e.mustTenant(stranger, "other")
	want(t, e.do("GET", base+"/operator-kafka", stranger.token, nil), 404, "a stranger reads acme's operator-kafka")
	want(t, e.do("DELETE", base+"/operator-kafka", stranger.token, nil), 404, "a stranger deletes acme's operator-kafka")
	if items := asSlice(e.do("GET", "/v1/tenants/other/rules", stranger.token, nil).json()["items"]); len(items) != 0 {
		t.Errorf("the other tenant's rules: %v", items)
	}
	if items := asSlice(e.do("GET", "/v1/tenants/other/destinations", stranger.token, nil).json()["items"]); len(items) != 1 {
		t.Errorf("the other tenant's destinations: %v, want operator-kafka alone", items)
	}
}

// TestOperatorKafkaNotConfigured: without the operator's Kafka the
// built-in destination is not listed nor found, its writes are still
// refused, and rules with a topic are stored as before (they export once
// the hub has Kafka).
func TestOperatorKafkaNotConfigured(t *testing.T) {
	e := newEnv(t)
	owner := e.signup("owner")
	e.mustTenant(owner, "acme")
	base := "/v1/tenants/acme/destinations"
	if items := asSlice(e.do("GET", base, owner.token, nil).json()["items"]); len(items) != 0 {
		t.Errorf("destinations: %v, want none", items)
	}
	want(t, e.do("GET", base+"/operator-kafka", owner.token, nil), 404, "operator-kafka without Kafka")
	wantProblem(t, e.do("DELETE", base+"/operator-kafka", owner.token, nil), 409, "conflict", "", "delete operator-kafka without Kafka")
	r := e.do("POST", "/v1/tenants/acme/rules", owner.token, map[string]string{"filter": "#", "destination": "operator-kafka", "topic": "t"})
	want(t, r, 201, "a rule to operator-kafka without Kafka")
	if r.str("delivery") != "operator_kafka" {
		t.Errorf("rule: %s", r.body)
	}
}
