package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// TestShadowAPI: GET and PATCH of a device's shadow, the delta, null
// deletes, optimistic concurrency, the size quota, bad bodies and an
// unknown device; every answer is checked against the spec by the harness.
func TestShadowAPI(t *testing.T) {
	e := newEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	e.mustDevice(u.token, "acme", "d1")
	tok := u.token
	base := "/v1/tenants/acme/devices/d1/shadow"

	r := e.do("GET", base, tok, nil)
	want(t, r, 200, "empty shadow")
	if v := r.json()["version"]; v != float64(0) {
		t.Errorf("empty shadow version = %v, want 0: %s", v, r.body)
	}
	r = e.do("PATCH", base, tok, map[string]any{"state": map[string]any{"desired": map[string]any{"led": "on", "cfg": map[string]any{"rate": 5}}}})
	want(t, r, 200, "set desired")
	state := r.json()["state"].(map[string]any)
	if d := state["delta"].(map[string]any); d["led"] != "on" || r.json()["version"] != float64(1) {
		t.Errorf("after desired: got %s, want delta.led on, version 1", r.body)
	}
	md := r.json()["metadata"].(map[string]any)["desired"].(map[string]any)
	if ts, ok := md["led"].(map[string]any)["timestamp"].(float64); !ok || ts < 1e9 {
		t.Errorf("metadata.desired.led = %v, want a unix timestamp", md["led"])
	}
	wantProblem(t, e.do("PATCH", base, tok, map[string]any{"state": map[string]any{"desired": map[string]any{"led": "off"}}, "version": 0}), 409, "conflict", "", "stale version")
	r = e.do("PATCH", base, tok, map[string]any{"state": map[string]any{"desired": map[string]any{"led": nil}}, "version": 1})
	want(t, r, 200, "delete a key at the current version")
	if _, ok := r.json()["state"].(map[string]any)["desired"].(map[string]any)["led"]; ok || r.json()["version"] != float64(2) {
		t.Errorf("after delete: got %s, want no led, version 2", r.body)
	}
	r = e.do("PATCH", base, tok, map[string]any{"state": map[string]any{"reported": map[string]any{"blob": strings.Repeat("x", 9000)}}})
	wantProblem(t, r, 403, "quota_exceeded", "", "shadow over max_shadow_bytes")
	if r.json()["quota"] != "max_shadow_bytes" {
		t.Errorf("oversized shadow names %v, want max_shadow_bytes: %s", r.json()["quota"], r.body)
	}
	wantProblem(t, e.do("PATCH", base, tok, map[string]any{"state": map[string]any{"desired": []int{1}}}), 400, "invalid", "state.desired", "desired not an object")
	wantProblem(t, e.do("PATCH", base, tok, map[string]any{"state": map[string]any{}}), 400, "invalid", "state", "empty state")
	wantProblem(t, e.do("PATCH", base, tok, map[string]any{"state": map[string]any{"desired": map[string]any{}}, "owner": "x"}), 400, "unknown_field", "owner", "unknown field")
	wantProblem(t, e.do("GET", "/v1/tenants/acme/devices/nobody/shadow", tok, nil), 404, "not_found", "", "unknown device's shadow")
	wantProblem(t, e.do("PATCH", "/v1/tenants/acme/devices/nobody/shadow", tok, map[string]any{"state": map[string]any{"desired": map[string]any{"a": 1}}}), 404, "not_found", "", "unknown device's update")

	r = e.do("GET", "/v1/tenants/acme/events?type=shadow_updated", tok, nil)
	want(t, r, 200, "shadow events")
	if n := len(r.json()["items"].([]any)); n != 2 {
		t.Errorf("shadow_updated events = %d, want 2: %s", n, r.body)
	}
}

// shadowMessage is a message a device got on its shadow topics, with the
// time it arrived (an answer may come before the HTTP response that
// caused it).
type shadowMessage struct {
	topic   string
	payload []byte
	body    map[string]any
	at      time.Time
}

// nextShadow waits up to 20 s for the message on topic that carries
// version, setting aside others and earlier versions: each change
// announced reads the shadow when it is applied, so a write's delta may
// be told again, late, by an earlier write's announcement.
func nextShadow(t *testing.T, msgs <-chan shadowMessage, topic string, version int64) shadowMessage {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case m := <-msgs:
			if m.topic != topic {
				continue
			}
			if err := json.Unmarshal(m.payload, &m.body); err != nil {
				t.Fatalf("%s: %q is not JSON: %v", topic, m.payload, err)
			}
			v, ok := m.body["version"].(float64)
			if !ok {
				t.Fatalf("%s without a version: %s", topic, jsonOf(m.body))
			}
			if int64(v) > version {
				t.Fatalf("%s: version %d, want %d (one write, one version)", topic, int64(v), version)
			}
			if int64(v) == version {
				return m
			}
		case <-deadline:
			t.Fatalf("no %s with version %d within 20s", topic, version)
		}
	}
}

func jsonOf(v any) string { b, _ := json.Marshal(v); return string(b) }

// TestShadowRoundTrip measures a shadow's two paths, each 200 times in a
// row (docs/benchmarks.md records them): an MQTT 5 device's update until
// its update/accepted with the new version, and a desired change through
// PATCH …/shadow until the device gets its update/delta. It fails only if
// an answer does not come or carries the wrong version or state.
func TestShadowRoundTrip(t *testing.T) {
	if testing.Short() {
		t.Skip("a measurement")
	}
	e := newEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	want(t, e.do("PATCH", "/v1/admin/tenants/acme", adminToken, map[string]any{
		"quotas": map[string]any{"tenant_publish_rate": 1_000_000, "publish_rate": 1_000_000}}), 200, "lift the rates")
	secret := e.mustDevice(u.token, "acme", "d1")
	msgs := make(chan shadowMessage, 1000)
	c, err := e.dialMQTT(t, "acme/d1", secret, "d1", paho.ClientConfig{
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			msgs <- shadowMessage{topic: pr.Packet.Topic, payload: pr.Packet.Payload, at: time.Now()}
			return true, nil
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{
		{Topic: "$roost/shadow/d1/update/accepted", QoS: 1}, {Topic: "$roost/shadow/d1/update/delta", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	const n = 200
	version := int64(0)

	took := make([]time.Duration, 0, n)
	for i := range n {
		version++
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		_, err := c.Publish(ctx, &paho.Publish{Topic: "$roost/shadow/d1/update", QoS: 1, Payload: fmt.Appendf(nil, `{"state":{"reported":{"n":%d}}}`, i)})
		cancel()
		if err != nil {
			t.Fatalf("update %d: %v", i, err)
		}
		m := nextShadow(t, msgs, "$roost/shadow/d1/update/accepted", version)
		took = append(took, m.at.Sub(start))
		if got := jsonOf(m.body["state"].(map[string]any)["reported"]); got != fmt.Sprintf(`{"n":%d}`, i) {
			t.Fatalf("update %d: accepted reported %s, want {\"n\":%d}", i, got, i)
		}
	}
	slices.Sort(took)
	t.Logf("shadow update round trip over MQTT 5, %d sequential updates: p50 %v, p99 %v", n, took[n/2], took[n*99/100])

	// The desired key is one the device never reports, so every change
	// leaves a delta.
	took = took[:0]
	for i := range n {
		version++
		start := time.Now()
		r := e.do("PATCH", "/v1/tenants/acme/devices/d1/shadow", u.token, map[string]any{"state": map[string]any{"desired": map[string]any{"target": i}}})
		want(t, r, 200, fmt.Sprintf("desired change %d", i))
		if r.json()["version"] != float64(version) {
			t.Fatalf("desired change %d: version %v, want %d", i, r.json()["version"], version)
		}
		m := nextShadow(t, msgs, "$roost/shadow/d1/update/delta", version)
		took = append(took, m.at.Sub(start))
		if got := jsonOf(m.body["state"]); got != fmt.Sprintf(`{"target":%d}`, i) {
			t.Fatalf("desired change %d: delta %s, want {\"target\":%d}", i, got, i)
		}
	}
	slices.Sort(took)
	t.Logf("desired change through PATCH …/shadow until the device's delta, %d in a row: p50 %v, p99 %v", n, took[n/2], took[n*99/100])
}
