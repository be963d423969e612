package api_test

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestQueuedCommandRoutes: a queued command answers 202 with its id and
// expiry; GET …/commands/{id} says queued, then replied with the device's
// reply (a device online answers at once), or expired for one whose ttl
// passed; a ttl out of bounds or without queue is 400; a viewer reads
// one but cannot send one; another tenant's device of the same name does
// not have it, and another tenant's user gets 404.
func TestQueuedCommandRoutes(t *testing.T) {
	e := newEnv(t)
	u, bob := e.signup("owner"), e.signup("bob")
	e.mustTenant(u, "acme")
	e.mustTenant(bob, "other")
	e.mustDevice(u.token, "acme", "away")
	e.mustDevice(bob.token, "other", "d1")
	replyingDevice(t, e, "acme", "d1", e.mustDevice(u.token, "acme", "d1"))
	send := func(tok, device string, body map[string]any) response {
		return e.do("POST", "/v1/tenants/acme/devices/"+device+"/commands", tok, body)
	}
	get := func(tok, tenant, device, id string) response {
		return e.do("GET", "/v1/tenants/"+tenant+"/devices/"+device+"/commands/"+id, tok, nil)
	}

	before := time.Now()
	r := send(u.token, "d1", map[string]any{"name": "blink", "payload": "twice", "queue": true, "ttl": 600})
	want(t, r, 202, "a queued command to an online device")
	id := r.str("id")
	if exp, err := time.Parse(time.RFC3339Nano, r.str("expires_at")); err != nil || exp.Before(before.Add(599*time.Second)) || exp.After(time.Now().Add(601*time.Second)) {
		t.Errorf("expires_at %q (%v), want about ten minutes ahead", r.str("expires_at"), err)
	}
	var got response
	eventually(t, 20*time.Second, "the queued command's reply is recorded", func() bool {
		got = get(u.token, "acme", "d1", id)
		return got.status == 200 && got.str("status") == "replied"
	})
	if m := got.json(); m["payload"] != "ok:twice" || m["encoding"] != "utf-8" || m["replied_at"] == nil || m["created_at"] == nil || m["name"] != "blink" {
		t.Errorf("the replied command: %s", got.body)
	}
	if got.header.Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control %q, want no-store", got.header.Get("Cache-Control"))
	}

	// A device away: queued until its ttl (here a second) passes, then
	// expired.
	r = send(u.token, "away", map[string]any{"name": "later", "queue": true, "ttl": 3600})
	want(t, r, 202, "a queued command to a device away")
	if g := get(u.token, "acme", "away", r.str("id")); g.str("status") != "queued" || g.json()["payload"] != nil || g.json()["replied_at"] != nil {
		t.Errorf("queued for an hour: %s, want queued without a payload", g.body)
	}
	r = send(u.token, "away", map[string]any{"name": "brief", "queue": true, "ttl": 1})
	want(t, r, 202, "a queued command of a second")
	brief := r.str("id")
	eventually(t, 20*time.Second, "the brief command expires", func() bool {
		return get(u.token, "acme", "away", brief).str("status") == "expired"
	})

	// Bad ttls; a command that waited is not kept.
	for _, tc := range []struct {
		what string
		body map[string]any
	}{
		{"ttl without queue", map[string]any{"name": "x", "ttl": 60}},
		{"ttl 0", map[string]any{"name": "x", "queue": true, "ttl": 0}},
		{"ttl over a day", map[string]any{"name": "x", "queue": true, "ttl": 86401}},
	} {
		wantProblem(t, send(u.token, "d1", tc.body), 400, "invalid", "ttl", tc.what)
	}
	r = send(u.token, "d1", map[string]any{"name": "now", "timeout": 15})
	want(t, r, 200, "a command that waits")
	wantProblem(t, get(u.token, "acme", "d1", r.str("id")), 404, "not_found", "", "a command that waited")
	wantProblem(t, get(u.token, "acme", "d1", "nope"), 404, "not_found", "", "an unknown command")
	wantProblem(t, get(u.token, "acme", "nobody", id), 404, "not_found", "", "an unknown device")
	wantProblem(t, get(u.token, "acme", "away", id), 404, "not_found", "", "d1's command as away's")

	// Roles and tenants.
	_, viewer := e.mustKey(u.token, "acme", "viewer")
	if g := get(viewer, "acme", "d1", id); g.status != 200 || g.str("status") != "replied" {
		t.Errorf("a viewer reads a command: %d %s, want 200 (viewers read every tenant route)", g.status, g.body)
	}
	wantProblem(t, send(viewer, "away", map[string]any{"name": "x", "queue": true}), 403, "forbidden", "", "a viewer queues a command")
	if g := get(bob.token, "acme", "d1", id); g.status != http.StatusNotFound {
		t.Errorf("bob reads acme's command: %d, want 404", g.status)
	}
	if g := get(bob.token, "other", "d1", id); g.status != http.StatusNotFound {
		t.Errorf("acme's command under other's d1: %d, want 404", g.status)
	}
}

// TestCommandAudit: every command published through the API — replied,
// timed out or queued — is in the tenant's audit log as device.command,
// naming the device, the command and its id, by the key that sent it; a
// command to a device offline (nothing sent) or refused is not; another
// tenant's log has none of them.
func TestCommandAudit(t *testing.T) {
	e := newEnv(t)
	u, bob := e.signup("owner"), e.signup("bob")
	e.mustTenant(u, "acme")
	e.mustTenant(bob, "other")
	e.mustDevice(u.token, "acme", "away")
	replyingDevice(t, e, "acme", "d1", e.mustDevice(u.token, "acme", "d1"))
	keyID, key := e.mustKey(u.token, "acme", "admin")
	send := func(device string, body map[string]any) response {
		return e.do("POST", "/v1/tenants/acme/devices/"+device+"/commands", key, body)
	}
	var sent []string
	r := send("d1", map[string]any{"name": "ping", "timeout": 15})
	want(t, r, 200, "a replied command")
	sent = append(sent, "device:d1/command:ping/"+r.str("id"))
	r = send("d1", map[string]any{"name": "mute", "timeout": 0.2})
	wantProblem(t, r, 504, "command_timeout", "", "a command timing out")
	r = send("away", map[string]any{"name": "later", "queue": true})
	want(t, r, 202, "a queued command")
	sent = append(sent, "device:away/command:later/"+r.str("id"))
	wantProblem(t, send("away", map[string]any{"name": "now"}), 409, "device_offline", "", "a command to a device offline")
	wantProblem(t, send("d1", map[string]any{"name": "a/b"}), 400, "invalid", "name", "a bad command")

	r = e.do("GET", "/v1/tenants/acme/audit?action=device.command", u.token, nil)
	want(t, r, 200, "the audit log's commands")
	var objects []string
	for _, it := range asSlice(r.json()["items"]) {
		m := it.(map[string]any)
		if m["actor"] != "api_key:"+keyID {
			t.Errorf("audit entry %v: actor %v, want api_key:%s", m["object"], m["actor"], keyID)
		}
		objects = append(objects, m["object"].(string))
	}
	// Three published (the timed-out one's id is not in its 504): newest
	// first.
	if len(objects) != 3 || objects[0] != sent[1] || objects[2] != sent[0] || !strings.HasPrefix(objects[1], "device:d1/command:mute/") {
		t.Errorf("device.command entries %v, want %s, the timed-out mute, %s (newest first)", objects, sent[1], sent[0])
	}
	r = e.do("GET", "/v1/tenants/other/audit?action=device.command", bob.token, nil)
	if items := asSlice(r.json()["items"]); len(items) != 0 {
		t.Errorf("other's audit log has acme's commands: %s", r.body)
	}
}

// TestPendingCommandsQuota: max_pending_commands is a plan quota (the
// quotas route shows it) the operator overrides; a tenant past it gets a
// 429 quota_exceeded naming it, with Retry-After until the first pending
// command expires, and nothing is published or audited; a command that
// gets its reply stops being pending; another tenant is unaffected.
func TestPendingCommandsQuota(t *testing.T) {
	e := newEnv(t)
	u, bob := e.signup("owner"), e.signup("bob")
	e.mustTenant(u, "acme")
	e.mustTenant(bob, "other")
	e.mustDevice(u.token, "acme", "away")
	e.mustDevice(bob.token, "other", "away")
	r := e.do("GET", "/v1/tenants/acme/quotas", u.token, nil)
	want(t, r, 200, "quotas")
	if q, _ := r.json()["quotas"].(map[string]any); q == nil || q["max_pending_commands"] != float64(100) {
		t.Fatalf("free plan's max_pending_commands: %s, want 100", r.body)
	}
	want(t, e.do("PATCH", "/v1/admin/tenants/acme", adminToken, map[string]any{"quotas": map[string]any{"max_pending_commands": 2}}), 200, "max_pending_commands 2")
	queue := func(tok, tenant string, ttl int) response {
		return e.do("POST", "/v1/tenants/"+tenant+"/devices/away/commands", tok, map[string]any{"name": "x", "queue": true, "ttl": ttl})
	}
	want(t, queue(u.token, "acme", 300), 202, "first pending command")
	want(t, queue(u.token, "acme", 600), 202, "second pending command")
	r = queue(u.token, "acme", 60)
	wantProblem(t, r, 429, "quota_exceeded", "", "a third pending command")
	if m := r.json(); m["quota"] != "max_pending_commands" || m["limit"] != float64(2) {
		t.Errorf("the problem: %s, want quota max_pending_commands and limit 2", r.body)
	}
	if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 290 || ra > 300 {
		t.Errorf("Retry-After %q, want about 300 (the first pending command's expiry)", r.header.Get("Retry-After"))
	}
	for i := range 3 {
		want(t, queue(bob.token, "other", 3600), 202, "other's command while acme is full "+string(rune('1'+i)))
	}
	if r := e.do("GET", "/v1/tenants/acme/audit?action=device.command", u.token, nil); len(asSlice(r.json()["items"])) != 2 {
		t.Errorf("audited commands: %s, want the two sent", r.body)
	}

	// A device that replies frees its command: with other's quota at 4
	// and three pending, a queued command to it is the fourth until its
	// reply is recorded.
	want(t, e.do("PATCH", "/v1/admin/tenants/other", adminToken, map[string]any{"quotas": map[string]any{"max_pending_commands": 4}}), 200, "other at 4")
	replyingDevice(t, e, "other", "d1", e.mustDevice(bob.token, "other", "d1"))
	r = e.do("POST", "/v1/tenants/other/devices/d1/commands", bob.token, map[string]any{"name": "y", "queue": true})
	want(t, r, 202, "the fourth pending command of other, to a device that replies")
	id := r.str("id")
	eventually(t, 20*time.Second, "the reply is recorded", func() bool {
		return e.do("GET", "/v1/tenants/other/devices/d1/commands/"+id, bob.token, nil).str("status") == "replied"
	})
	want(t, queue(bob.token, "other", 3600), 202, "a command once the replied one is no longer pending")
	wantProblem(t, queue(bob.token, "other", 60), 429, "quota_exceeded", "", "other past its 4")
}
