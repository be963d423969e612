package api_test

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// TestRulesMatchEvents: a rule with a destination and a filter on
// $events/... delivers the tenant's lifecycle events to its webhook, as
// messages on their $events topics with the event as JSON payload; its
// condition sees the event's fields. A rule on # does not get events (a
// leading wildcard never matches $ topics), another tenant's events never
// come, and only rules with a destination take $events filters.
func TestRulesMatchEvents(t *testing.T) {
	e := newEnvWith(t, allowLoopback(t))
	owner := e.signup("owner")
	e.mustTenant(owner, "acme")
	e.mustTenant(owner, "other")
	rc := newHookReceiver(t)
	r := e.do("POST", "/v1/tenants/acme/destinations", owner.token, map[string]any{"name": "ingest", "type": "webhook", "url": rc.URL + "/roost"})
	want(t, r, 201, "create destination")
	rc.set(r.str("secret"), http.StatusNoContent)
	want(t, e.do("POST", "/v1/tenants/acme/rules", owner.token, map[string]string{
		"filter": "$events/presence/#", "destination": "ingest", "condition": `payload.type == "disconnected" && device == "d1"`}), 201, "events rule")
	want(t, e.do("POST", "/v1/tenants/acme/rules", owner.token, map[string]string{"filter": "#", "destination": "ingest"}), 201, "rule on #")
	want(t, e.do("POST", "/v1/tenants/acme/rules", owner.token, map[string]string{"filter": "$events/#", "topic": "events"}), 201, "a Kafka rule on $events")
	wantProblem(t, e.do("POST", "/v1/tenants/acme/rules", owner.token, map[string]string{"filter": "$SYS/#", "topic": "events"}), 400, "invalid", "filter", "a Kafka rule on $SYS")
	wantProblem(t, e.do("POST", "/v1/tenants/acme/rules", owner.token, map[string]string{"filter": "$SYS/#", "destination": "ingest"}), 400, "invalid", "filter", "a rule on $SYS")

	connect := func(tenant, device string) {
		t.Helper()
		secret := e.mustDevice(owner.token, tenant, device)
		c, err := e.dialMQTT(t, tenant+"/"+device, secret, device, paho.ClientConfig{})
		if err != nil {
			t.Fatal(err)
		}
		c.Disconnect(&paho.Disconnect{})
	}
	connect("other", "d1")
	connect("acme", "d2")
	connect("acme", "d1")

	type wireMsg struct {
		Topic    string
		Device   string
		Encoding string `json:"payload_encoding"`
		Payload  struct {
			Type, Tenant, Device string
		}
	}
	var got []wireMsg
	deadline := time.Now().Add(10 * time.Second)
	for len(got) == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		rc.mu.Lock()
		for _, b := range rc.bodies {
			var batch struct{ Messages []wireMsg }
			if err := json.Unmarshal(b, &batch); err != nil {
				t.Fatalf("webhook body: %v: %s", err, b)
			}
			got = append(got, batch.Messages...)
		}
		rc.mu.Unlock()
	}
	time.Sleep(300 * time.Millisecond) // anything else would have come by now
	rc.mu.Lock()
	n := len(rc.bodies)
	rc.mu.Unlock()
	if len(got) != 1 || n != 1 {
		t.Fatalf("delivered %+v in %d requests, want acme's d1 disconnect alone", got, n)
	}
	m := got[0]
	if m.Topic != "$events/presence/disconnected/d1" || m.Device != "d1" || m.Encoding != "json" ||
		m.Payload.Type != "disconnected" || m.Payload.Tenant != "acme" || m.Payload.Device != "d1" {
		t.Errorf("delivered %+v, want acme's d1 disconnect on its $events topic", m)
	}
	if _, bad := rc.counts(); bad != 0 {
		t.Errorf("%d requests badly signed", bad)
	}
}
