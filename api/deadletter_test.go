package api_test

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/roosthub/roost/tenants"
)

// TestDeadLetters: messages a rule sends to a failing receiver are
// retried to the horizon (half a second here), then show in the
// destination's status and its dead letters, paged; an admin replays them
// (delivered once the receiver recovers) and purges; viewers read but
// neither replay nor purge; another tenant cannot reach them.
func TestDeadLetters(t *testing.T) {
	e := newEnvWith(t, allowLoopback(t))
	owner := e.signup("owner")
	e.mustTenant(owner, "acme")
	e.mustTenant(owner, "other")
	_, viewerKey := e.mustKey(owner.token, "acme", tenants.RoleViewer)
	base := "/v1/tenants/acme/destinations"
	id, rc := failingWebhook(t, e, owner.token)

	const n = 3
	for i := range n {
		want(t, e.do("POST", "/v1/tenants/acme/messages", owner.token, map[string]any{"topic": "sensors/temp", "payload": fmt.Sprint(20 + i), "qos": 1}), 202, "publish")
	}
	var status map[string]any
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := e.do("GET", base+"/"+id, viewerKey, nil)
		want(t, r, 200, "get destination")
		status, _ = r.json()["status"].(map[string]any)
		if status != nil && status["dead_letters"] == float64(n) && status["failed"] == float64(n) && status["backlog"] == float64(0) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %d dead letters within 10s: %s", n, r.body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if status["failed"] != float64(n) || status["backlog"] != float64(0) || status["last_error_at"] == nil || status["last_success"] != nil {
		t.Errorf("status %v, want %d failed, nothing waiting, a last error, no success", status, n)
	}
	if recent, _ := status["recent"].([]any); len(recent) == 0 || recent[0].(map[string]any)["outcome"] != "dead" {
		t.Errorf("recent attempts %v, want the newest given up", status["recent"])
	}
	if req, bad := rc.counts(); req < 2 || bad != 0 {
		t.Errorf("receiver: %d requests (%d badly signed), want retries, all signed", req, bad)
	}

	page := e.do("GET", base+"/"+id+"/dead-letters?limit=2", viewerKey, nil)
	want(t, page, 200, "first page of dead letters")
	items := asSlice(page.json()["items"])
	if len(items) != 2 || page.str("next_cursor") == "" {
		t.Fatalf("first page: %s, want 2 items and a cursor", page.body)
	}
	first := items[0].(map[string]any)
	if p, _ := base64.StdEncoding.DecodeString(first["payload_base64"].(string)); string(p) != "20" || first["topic"] != "sensors/temp" || first["device"] != "api" {
		t.Errorf("first dead letter: %v", first)
	}
	rest := e.do("GET", base+"/"+id+"/dead-letters?cursor="+page.str("next_cursor"), viewerKey, nil)
	want(t, rest, 200, "second page")
	if got := asSlice(rest.json()["items"]); len(got) != n-2 {
		t.Errorf("second page: %s, want %d items", rest.body, n-2)
	}
	wantProblem(t, e.do("GET", base+"/"+id+"/dead-letters?limit=0", viewerKey, nil), 400, "invalid", "limit", "limit 0")
	wantProblem(t, e.do("GET", base+"/"+id+"/dead-letters?cursor=x", viewerKey, nil), 400, "invalid", "cursor", "a made-up cursor")
	wantProblem(t, e.do("GET", "/v1/tenants/other/destinations/"+id+"/dead-letters", owner.token, nil), 404, "not_found", "", "acme's destination from another tenant")
	wantProblem(t, e.do("POST", "/v1/tenants/other/destinations/"+id+"/dead-letters/replay", owner.token, nil), 404, "not_found", "", "replay acme's from another tenant")
	wantProblem(t, e.do("POST", base+"/"+id+"/dead-letters/replay", viewerKey, nil), 403, "forbidden", "", "a viewer replays")
	wantProblem(t, e.do("DELETE", base+"/"+id+"/dead-letters", viewerKey, nil), 403, "forbidden", "", "a viewer purges")

	rc.set(rc.secret, http.StatusNoContent)
	r := e.do("POST", base+"/"+id+"/dead-letters/replay", owner.token, nil)
	want(t, r, 200, "replay")
	if r.json()["replayed"] != float64(n) {
		t.Errorf("replay: %s, want %d replayed", r.body, n)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		st := e.do("GET", base+"/"+id, owner.token, nil).json()["status"].(map[string]any)
		if st["delivered"] == float64(n) && st["dead_letters"] == float64(0) && st["backlog"] == float64(0) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replayed messages not delivered within 10s: %v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	r = e.do("DELETE", base+"/"+id+"/dead-letters", owner.token, nil)
	want(t, r, 200, "purge")
	if r.json()["purged"] != float64(0) {
		t.Errorf("purge of none: %s", r.body)
	}
}

// TestDeadLetterPagesBounded: a page of dead letters carries at most 1
// MiB of payloads whatever its limit, and one cut short has a next_cursor,
// from which the rest follow, each once.
func TestDeadLetterPagesBounded(t *testing.T) {
	e := newEnvWith(t, allowLoopback(t))
	owner := e.signup("owner")
	e.mustTenant(owner, "acme")
	base := "/v1/tenants/acme/destinations"
	id, _ := failingWebhook(t, e, owner.token)

	// Ten of 120 KiB (the free plan's packets are up to 128 KiB): eight
	// fit in a page of 1 MiB.
	const n, size = 10, 120 << 10
	for i := range n {
		payload := strings.Repeat(fmt.Sprint(i), size)
		want(t, e.do("POST", "/v1/tenants/acme/messages", owner.token, map[string]any{"topic": "sensors/temp", "payload": payload, "qos": 1}), 202, "publish")
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		st, _ := e.do("GET", base+"/"+id, owner.token, nil).json()["status"].(map[string]any)
		if st != nil && st["dead_letters"] == float64(n) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %d dead letters within 15s: %v", n, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	var got []string
	var pages []int
	cursor := ""
	for range n {
		page := e.do("GET", base+"/"+id+"/dead-letters?limit=50&cursor="+cursor, owner.token, nil)
		want(t, page, 200, "a page of dead letters")
		items := asSlice(page.json()["items"])
		pages = append(pages, len(items))
		for _, it := range items {
			p, _ := base64.StdEncoding.DecodeString(it.(map[string]any)["payload_base64"].(string))
			got = append(got, string(p[:1]))
		}
		if cursor = page.str("next_cursor"); cursor == "" {
			break
		}
	}
	if fmt.Sprint(pages) != "[8 2]" {
		t.Errorf("pages of %v dead letters, want [8 2]: eight of 120 KiB in 1 MiB", pages)
	}
	if strings.Join(got, "") != "0123456789" {
		t.Errorf("dead letters over the pages: %v, want each of the ten once, in order", got)
	}
}

// TestOutboxPolicy: the tenant's outbox_policy is drop_oldest until an
// admin sets refuse; another value is a 400 naming the field; a viewer
// cannot change it; max_outbox is among the quotas.
func TestOutboxPolicy(t *testing.T) {
	e := newEnv(t)
	owner := e.signup("owner")
	e.mustTenant(owner, "acme")
	_, viewerKey := e.mustKey(owner.token, "acme", tenants.RoleViewer)
	if got := e.do("GET", "/v1/tenants/acme", owner.token, nil).str("outbox_policy"); got != "drop_oldest" {
		t.Errorf("a new tenant's outbox_policy: %q, want drop_oldest", got)
	}
	r := e.do("PATCH", "/v1/tenants/acme", owner.token, map[string]string{"outbox_policy": "refuse"})
	want(t, r, 200, "set outbox_policy")
	if r.str("outbox_policy") != "refuse" {
		t.Errorf("after the PATCH: %s", r.body)
	}
	wantProblem(t, e.do("PATCH", "/v1/tenants/acme", owner.token, map[string]string{"outbox_policy": "drop_newest"}), 400, "invalid", "outbox_policy", "an unknown outbox policy")
	wantProblem(t, e.do("PATCH", "/v1/tenants/acme", viewerKey, map[string]string{"outbox_policy": "drop_oldest"}), 403, "forbidden", "", "a viewer sets outbox_policy")
	q := e.do("GET", "/v1/tenants/acme/quotas", owner.token, nil)
	want(t, q, 200, "quotas")
	if !strings.Contains(string(q.body), `"max_outbox":10000`) {
		t.Errorf("quotas lack max_outbox 10000 (free plan): %s", q.body)
	}
}

// failingWebhook makes acme a webhook destination whose receiver answers
// 500, and a rule sending sensors/# there: its id, and the receiver.
func failingWebhook(t *testing.T, e *env, token string) (string, *hookReceiver) {
	t.Helper()
	rc := newHookReceiver(t)
	r := e.do("POST", "/v1/tenants/acme/destinations", token, map[string]any{"name": "ingest", "type": "webhook", "url": rc.URL + "/roost"})
	want(t, r, 201, "create destination")
	rc.set(r.str("secret"), http.StatusInternalServerError)
	want(t, e.do("POST", "/v1/tenants/acme/rules", token, map[string]string{"filter": "sensors/#", "destination": "ingest"}), 201, "rule")
	return r.str("id"), rc
}
