package api_test

import (
	"strings"
	"testing"
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
