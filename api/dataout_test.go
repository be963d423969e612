package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roosthub/roost/api"
	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
)

// hookReceiver is a real HTTP receiver under the test's control: it
// checks each request's signature with the secret it is told, and answers
// with status.
type hookReceiver struct {
	*httptest.Server
	mu      sync.Mutex
	secret  string
	status  int
	got     []http.Header
	bodies  [][]byte
	badSigs int
}

func newHookReceiver(t *testing.T) *hookReceiver {
	t.Helper()
	h := &hookReceiver{status: http.StatusNoContent}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		defer h.mu.Unlock()
		h.got, h.bodies = append(h.got, r.Header.Clone()), append(h.bodies, body)
		if dataout.Verify(h.secret, r.Header.Get("Roost-Signature"), body, time.Now(), 5*time.Minute) != nil {
			h.badSigs++
		}
		w.WriteHeader(h.status)
	}))
	t.Cleanup(h.Close)
	return h
}

func (h *hookReceiver) set(secret string, status int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.secret, h.status = secret, status
}

func (h *hookReceiver) counts() (requests, badSigs int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.got), h.badSigs
}

// allowLoopback lets the API's webhooks reach 127.0.0.1, as
// ROOST_WEBHOOK_ALLOW_HOSTS=127.0.0.1 does.
func allowLoopback(t *testing.T) func(*api.Config) {
	return func(cfg *api.Config) {
		g, err := dataout.NewGuard("127.0.0.1", false)
		if err != nil {
			t.Fatal(err)
		}
		s, err := dataout.NewSender(dataout.SenderConfig{Guard: g, Timeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		cfg.Webhooks = s
	}
}

// TestDestinations walks a webhook destination's life: made with its
// secret shown once, read by a viewer without secret or header values,
// tested against a real receiver that checks the signature, renamed,
// rotated (the old secret stops signing), refused deletion while a rule
// uses it, deleted; every write audited.
func TestDestinations(t *testing.T) {
	e := newEnvWith(t, allowLoopback(t))
	owner := e.signup("owner")
	e.mustTenant(owner, "acme")
	_, viewerKey := e.mustKey(owner.token, "acme", tenants.RoleViewer)
	rc := newHookReceiver(t)
	base := "/v1/tenants/acme/destinations"

	r := e.do("POST", base, owner.token, map[string]any{"name": "ingest", "type": "webhook", "url": rc.URL + "/roost",
		"headers": map[string]string{"authorization": "Bearer receiver-token-123"}})
	want(t, r, 201, "create destination")
	id, secret := r.str("id"), r.str("secret")
	if !strings.HasPrefix(id, "dst_") || !strings.HasPrefix(secret, "whsec_") || r.header.Get("Location") != base+"/"+id {
		t.Fatalf("created: %s (Location %q)", r.body, r.header.Get("Location"))
	}
	if hs := r.json()["headers"].([]any); len(hs) != 1 || hs[0] != "Authorization" {
		t.Errorf("header names: %v, want [Authorization]", hs)
	}
	stored, err := e.store.Destination(context.Background(), "acme", id)
	if err != nil || strings.Contains(stored.Sealed.Secret, secret) || strings.Contains(stored.Sealed.Headers, "receiver-token-123") || stored.Sealed.Secret == "" {
		t.Errorf("stored in the clear or not at all: %+v, %v", stored.Sealed, err)
	}
	e.bodies = &testenv.Buffer{} // from here on the secret and header value must not show

	// The send test: signed, with the headers, answered with the status.
	rc.set(secret, 204)
	r = e.do("POST", base+"/"+id+"/test", owner.token, nil)
	want(t, r, 200, "send test")
	if m := r.json(); m["delivered"] != true || m["status"] != float64(204) || m["error"] != nil {
		t.Errorf("send test: %s", r.body)
	}
	if n, bad := rc.counts(); n != 1 || bad != 0 {
		t.Fatalf("receiver: %d requests, %d badly signed; want 1, 0", n, bad)
	}
	if got := rc.got[0].Get("Authorization"); got != "Bearer receiver-token-123" {
		t.Errorf("the receiver got Authorization %q", got)
	}
	var sent map[string]any
	json.Unmarshal(rc.bodies[0], &sent)
	if sent["tenant"] != "acme" || sent["destination"] != id || len(asSlice(sent["messages"])) != 1 {
		t.Errorf("sample body: %s", rc.bodies[0])
	}
	rc.set(secret, 500)
	r = e.do("POST", base+"/"+id+"/test", owner.token, nil)
	if m := r.json(); m["delivered"] != false || m["status"] != float64(500) || m["error"].(map[string]any)["kind"] != "status" {
		t.Errorf("send test to a failing receiver: %s", r.body)
	}

	// Viewers read, without the URL's path (often a credential); nobody
	// reads the secret or the header values again.
	for _, tok := range []string{owner.token, viewerKey} {
		want(t, e.do("GET", base, tok, nil), 200, "list destinations")
		want(t, e.do("GET", base+"/"+id, tok, nil), 200, "get destination")
	}
	if got := e.do("GET", base+"/"+id, owner.token, nil).str("url"); got != rc.URL+"/roost" {
		t.Errorf("the owner sees url %q, want %s/roost", got, rc.URL)
	}
	if got := e.do("GET", base+"/"+id, viewerKey, nil).str("url"); got != rc.URL+"/…" {
		t.Errorf("a viewer sees url %q, want %s/… (no path)", got, rc.URL)
	}
	if list := e.do("GET", base, viewerKey, nil); strings.Contains(string(list.body), "/roost") {
		t.Errorf("a viewer's list shows the URL's path: %s", list.body)
	}
	wantProblem(t, e.do("POST", base+"/"+id+"/test", viewerKey, nil), 403, "forbidden", "", "a viewer sends a test")

	// Its header values would go wherever a new host is: they are wanted
	// again. Within its origin they stay.
	wantProblem(t, e.do("PATCH", base+"/"+id, owner.token, map[string]any{"url": "http://127.0.0.1:1/roost"}), 400, "invalid", "headers", "move the URL to another port without the headers")
	want(t, e.do("PATCH", base+"/"+id, owner.token, map[string]any{"url": rc.URL + "/roost?v=2"}), 200, "move the URL within its origin")
	if got := e.do("GET", base+"/"+id, owner.token, nil).json()["headers"]; len(got.([]any)) != 1 {
		t.Errorf("headers after a move within the origin: %v", got)
	}
	r = e.do("PATCH", base+"/"+id, owner.token, map[string]any{"name": "ingest-v2", "headers": map[string]string{}})
	want(t, r, 200, "rename, drop headers")
	if r.str("name") != "ingest-v2" || len(r.json()["headers"].([]any)) != 0 {
		t.Errorf("patched: %s", r.body)
	}
	r = e.do("POST", base+"/"+id+"/secret", owner.token, nil)
	want(t, r, 200, "rotate the secret")
	rotated := r.str("secret")
	if rotated == secret || !strings.HasPrefix(rotated, "whsec_") {
		t.Fatalf("rotated secret %q", rotated)
	}
	rc.set(secret, 204) // the receiver still trusts the old secret
	e.do("POST", base+"/"+id+"/test", owner.token, nil)
	if _, bad := rc.counts(); bad != 1 {
		t.Errorf("after rotation, %d requests failed the old secret, want 1", bad)
	}
	rc.set(rotated, 204)
	if r := e.do("POST", base+"/"+id+"/test", owner.token, nil); r.json()["delivered"] != true {
		t.Errorf("send test with the rotated secret: %s", r.body)
	}
	e.bodies = &testenv.Buffer{}

	// A rule uses it by name; it cannot go until the rule does.
	rule := e.do("POST", "/v1/tenants/acme/rules", owner.token, map[string]string{"filter": "sensors/#", "destination": "ingest-v2", "condition": "payload.temp > 30"})
	want(t, rule, 201, "a rule to the destination")
	if rule.str("destination") != id || rule.str("delivery") != "webhook" {
		t.Errorf("rule: %s, want destination %s and delivery pending", rule.body, id)
	}
	wantProblem(t, e.do("DELETE", base+"/"+id, owner.token, nil), 409, "conflict", "", "delete a destination a rule uses")
	want(t, e.do("DELETE", "/v1/tenants/acme/rules/"+rule.str("id"), owner.token, nil), 204, "delete the rule")
	want(t, e.do("DELETE", base+"/"+id, owner.token, nil), 204, "delete the destination")
	wantProblem(t, e.do("GET", base+"/"+id, owner.token, nil), 404, "not_found", "", "the deleted destination")

	for _, s := range []string{secret, rotated, "receiver-token-123"} {
		if strings.Contains(e.bodies.String(), s) {
			t.Errorf("%q appeared in a later response", s)
		}
		if strings.Contains(e.logs.String(), s) {
			t.Errorf("%q appeared in the log", s)
		}
	}
	audit := string(e.do("GET", "/v1/tenants/acme/audit", owner.token, nil).body)
	for _, a := range []string{"destination.create", "destination.update", "destination.rotate_secret", "destination.delete"} {
		if !strings.Contains(audit, a) {
			t.Errorf("the audit log lacks %s", a)
		}
	}
}

// TestDestinationOutboxPolicy: a destination may have an outbox_policy of
// its own (drop_oldest or refuse), set at creation or by PATCH, which ""
// hands back to the tenant's; another value is a 400 naming the field; a
// viewer cannot set it, nor another tenant's admin.
func TestDestinationOutboxPolicy(t *testing.T) {
	e := newEnvWith(t, allowLoopback(t))
	owner := e.signup("owner")
	e.mustTenant(owner, "acme")
	stranger := e.signup("stranger")
	e.mustTenant(stranger, "globex")
	_, viewerKey := e.mustKey(owner.token, "acme", tenants.RoleViewer)
	rc := newHookReceiver(t)
	base := "/v1/tenants/acme/destinations"

	wantProblem(t, e.do("POST", base, owner.token, map[string]any{"name": "x", "type": "webhook", "url": rc.URL, "outbox_policy": "sometimes"}),
		400, "invalid", "outbox_policy", "create with an unknown outbox_policy")
	r := e.do("POST", base, owner.token, map[string]any{"name": "billing", "type": "webhook", "url": rc.URL, "outbox_policy": "refuse"})
	want(t, r, 201, "create with outbox_policy refuse")
	id := r.str("id")
	if r.str("outbox_policy") != "refuse" {
		t.Errorf("created: %s, want outbox_policy refuse", r.body)
	}
	if got := e.do("GET", base+"/"+id, viewerKey, nil).str("outbox_policy"); got != "refuse" {
		t.Errorf("a viewer reads outbox_policy %q, want refuse", got)
	}
	wantProblem(t, e.do("PATCH", base+"/"+id, owner.token, map[string]any{"outbox_policy": "later"}), 400, "invalid", "outbox_policy", "PATCH an unknown outbox_policy")
	wantProblem(t, e.do("PATCH", base+"/"+id, viewerKey, map[string]any{"outbox_policy": "drop_oldest"}), 403, "forbidden", "", "a viewer sets it")
	if r := e.do("PATCH", "/v1/tenants/acme/destinations/"+id, stranger.token, map[string]any{"outbox_policy": "drop_oldest"}); r.status != 403 && r.status != 404 {
		t.Errorf("another tenant's admin: %d %s, want 403 or 404", r.status, r.body)
	}
	if r := e.do("PATCH", "/v1/tenants/globex/destinations/"+id, stranger.token, map[string]any{"outbox_policy": "drop_oldest"}); r.status != 404 {
		t.Errorf("acme's destination through globex: %d %s, want 404", r.status, r.body)
	}
	if d, _ := e.store.Destination(context.Background(), "acme", id); d.OutboxPolicy != tenants.OutboxRefuse {
		t.Errorf("after the refused changes: %q, want refuse", d.OutboxPolicy)
	}
	r = e.do("PATCH", base+"/"+id, owner.token, map[string]any{"outbox_policy": "drop_oldest"})
	want(t, r, 200, "PATCH outbox_policy drop_oldest")
	if r.str("outbox_policy") != "drop_oldest" {
		t.Errorf("patched: %s", r.body)
	}
	r = e.do("PATCH", base+"/"+id, owner.token, map[string]any{"name": "billing-v2"})
	want(t, r, 200, "PATCH the name")
	if r.str("outbox_policy") != "drop_oldest" {
		t.Errorf("a PATCH of the name changed the policy: %s", r.body)
	}
	r = e.do("PATCH", base+"/"+id, owner.token, map[string]any{"outbox_policy": ""})
	want(t, r, 200, "PATCH outbox_policy back to the tenant's")
	if _, set := r.json()["outbox_policy"]; set {
		t.Errorf("back to the tenant's: %s, want no outbox_policy", r.body)
	}

	// Its own max_outbox likewise.
	for _, bad := range []int64{-1, tenants.MaxDestinationOutbox + 1} {
		wantProblem(t, e.do("PATCH", base+"/"+id, owner.token, map[string]any{"max_outbox": bad}), 400, "invalid", "max_outbox", fmt.Sprintf("max_outbox %d", bad))
	}
	r = e.do("PATCH", base+"/"+id, owner.token, map[string]any{"max_outbox": 500})
	want(t, r, 200, "PATCH max_outbox")
	if r.json()["max_outbox"] != float64(500) {
		t.Errorf("patched: %s, want max_outbox 500", r.body)
	}
	r = e.do("PATCH", base+"/"+id, owner.token, map[string]any{"max_outbox": 0})
	want(t, r, 200, "PATCH max_outbox back to the quota")
	if _, set := r.json()["max_outbox"]; set {
		t.Errorf("back to the quota: %s, want no max_outbox", r.body)
	}
	r = e.do("POST", base, owner.token, map[string]any{"name": "bounded", "type": "webhook", "url": rc.URL, "max_outbox": 10})
	want(t, r, 201, "create with max_outbox")
	if r.json()["max_outbox"] != float64(10) {
		t.Errorf("created: %s, want max_outbox 10", r.body)
	}
}

// TestPublishIntoFullOutbox: an API publish that a destination's full
// outbox refuses (its own max_outbox and refuse) is a 403 quota_exceeded
// naming max_outbox and the limit that applied, not a 500.
func TestPublishIntoFullOutbox(t *testing.T) {
	e := newEnvWith(t, allowLoopback(t))
	owner := e.signup("owner")
	e.mustTenant(owner, "acme")
	rc := newHookReceiver(t)
	rc.set("", http.StatusServiceUnavailable) // nothing leaves the outbox
	r := e.do("POST", "/v1/tenants/acme/destinations", owner.token, map[string]any{"name": "strict", "type": "webhook", "url": rc.URL,
		"outbox_policy": "refuse", "max_outbox": 1})
	want(t, r, 201, "create the destination")
	want(t, e.do("POST", "/v1/tenants/acme/rules", owner.token, map[string]string{"filter": "sensors/#", "destination": "strict"}), 201, "a rule to it")
	msg := map[string]any{"topic": "sensors/t", "payload": "1", "qos": 1}
	want(t, e.do("POST", "/v1/tenants/acme/messages", owner.token, msg), 202, "the first publish")
	r = e.do("POST", "/v1/tenants/acme/messages", owner.token, msg)
	wantProblem(t, r, 403, "quota_exceeded", "", "a publish into the full outbox")
	if m := r.json(); m["quota"] != "max_outbox" || m["limit"] != float64(1) {
		t.Errorf("the refusal: %s, want quota max_outbox, limit 1", r.body)
	}
}

// TestDestinationAddresses: URLs into the hub's own network are refused
// at creation when literal, and at connection when a name resolves there;
// plain http needs the host allowed (or development).
func TestDestinationAddresses(t *testing.T) {
	e := newEnv(t) // no allow list: the production default
	owner := e.signup("owner")
	e.mustTenant(owner, "acme")
	rc := newHookReceiver(t)
	port := rc.URL[strings.LastIndex(rc.URL, ":")+1:]
	base := "/v1/tenants/acme/destinations"
	for _, tc := range []struct {
		name, url string
	}{
		{"loopback", "https://127.0.0.1:" + port + "/"},
		{"IPv6 loopback", "https://[::1]/"},
		{"metadata service", "https://169.254.169.254/latest/meta-data/"},
		{"private", "https://10.0.0.8/hook"},
		{"CGNAT", "https://100.64.1.1/hook"},
		{"plain http", "http://hooks.example.com/"},
		{"credentials in the URL", "https://user:pw@hooks.example.com/"},
		{"not a URL", "hooks.example.com"},
	} {
		r := e.do("POST", base, owner.token, map[string]string{"name": "x", "type": "webhook", "url": tc.url})
		wantProblem(t, r, 400, "invalid", "url", tc.name)
	}
	wantProblem(t, e.do("POST", base, owner.token, map[string]string{"name": "x", "type": "mqtt", "url": "https://a.example.com"}), 400, "invalid", "type", "an unknown type")
	wantProblem(t, e.do("POST", base, owner.token, map[string]string{"name": "x", "type": "kafka", "url": "https://a.example.com"}), 400, "invalid", "url", "type kafka with a url")
	wantProblem(t, e.do("POST", base, owner.token, map[string]any{"name": "x", "type": "webhook", "url": "https://a.example.com", "headers": map[string]string{"Roost-Signature": "forged"}}), 400, "invalid", "headers", "a forged signature header")
	wantProblem(t, e.do("POST", base, owner.token, map[string]any{"name": "x", "type": "webhook", "url": "https://a.example.com", "secret": "mine"}), 400, "unknown_field", "secret", "a chosen secret")

	// A name resolving to loopback passes the URL check and is refused
	// when the hub connects: the receiver sees nothing.
	id := e.do("POST", base, owner.token, map[string]string{"name": "sneaky", "type": "webhook", "url": "https://localhost:" + port + "/"}).str("id")
	r := e.do("POST", base+"/"+id+"/test", owner.token, nil)
	want(t, r, 200, "send test to a name resolving to loopback")
	if m := r.json(); m["delivered"] != false || m["error"].(map[string]any)["kind"] != "refused_address" {
		t.Errorf("send test to localhost: %s", r.body)
	}
	// Nor is the tenant told where the name led: that would map the hub's
	// internal names.
	if body := string(r.body); strings.Contains(body, "127.0.0.1") || strings.Contains(body, "::1") {
		t.Errorf("send test to localhost names the address it resolved to: %s", r.body)
	}
	wantProblem(t, e.do("PATCH", base+"/"+id, owner.token, map[string]string{"url": "https://192.168.0.1/"}), 400, "invalid", "url", "patch to a private address")
	if n, _ := rc.counts(); n != 0 {
		t.Errorf("the receiver got %d requests, want none", n)
	}
}

// TestRuleConditions: a rule's condition is compiled when the rule is
// made, and one that does not compile is a problem pointing into it;
// rules/test runs rules inline or by id against a sample message, with
// the device's metadata, sending nothing.
func TestRuleConditions(t *testing.T) {
	e := newEnvWith(t, allowLoopback(t))
	owner := e.signup("owner")
	e.mustTenant(owner, "acme")
	_, viewerKey := e.mustKey(owner.token, "acme", tenants.RoleViewer)
	want(t, e.do("POST", "/v1/tenants/acme/devices", owner.token, map[string]any{"name": "sensor-1", "metadata": map[string]string{"room": "lab"}}), 201, "device")
	rc := newHookReceiver(t)
	dest := e.do("POST", "/v1/tenants/acme/destinations", owner.token, map[string]string{"name": "ingest", "type": "webhook", "url": rc.URL})
	destID := dest.str("id")

	r := e.do("POST", "/v1/tenants/acme/rules", owner.token, map[string]string{"filter": "sensors/#", "destination": "ingest", "condition": "payload.temp > 30 &&\n  devise == \"x\""})
	wantProblem(t, r, 400, "invalid", "condition", "a condition with an undeclared name")
	if m := r.json(); m["line"] != float64(2) || m["column"] != float64(3) || !strings.Contains(r.str("detail"), "devise") {
		t.Errorf("problem: %s, want line 2 column 3 naming devise", r.body)
	}
	r = e.do("POST", "/v1/tenants/acme/rules", owner.token, map[string]string{"filter": "sensors/#", "destination": "ingest", "condition": "payload.temp >"})
	wantProblem(t, r, 400, "invalid", "condition", "a syntax error")
	if r.json()["column"] != float64(15) {
		t.Errorf("syntax error problem: %s, want column 15", r.body)
	}
	wantProblem(t, e.do("POST", "/v1/tenants/acme/rules", owner.token, map[string]string{"filter": "#", "destination": "nope"}), 400, "invalid", "destination", "an unknown destination")
	wantProblem(t, e.do("POST", "/v1/tenants/acme/rules", owner.token, map[string]string{"filter": "#", "topic": "t", "condition": "payload.temp >"}), 400, "invalid", "condition", "a Kafka rule's condition that does not compile")
	wantProblem(t, e.do("POST", "/v1/tenants/acme/rules", owner.token, map[string]string{"filter": "#", "topic": "t", "destination": "ingest"}), 400, "invalid", "destination", "both a topic and a destination")

	rule := e.do("POST", "/v1/tenants/acme/rules", owner.token, map[string]string{"filter": "sensors/+/temp", "destination": destID, "condition": `payload.temp > 30 && metadata.room == "lab"`})
	want(t, rule, 201, "a rule with a condition")
	list := e.do("GET", "/v1/tenants/acme/rules", viewerKey, nil)
	if items := asSlice(list.json()["items"]); len(items) != 1 || items[0].(map[string]any)["delivery"] != "webhook" {
		t.Errorf("rules: %s", list.body)
	}

	test := func(body map[string]any) map[string]any {
		t.Helper()
		r := e.do("POST", "/v1/tenants/acme/rules/test", viewerKey, body)
		want(t, r, 200, "rules/test")
		return r.json()
	}
	hot := map[string]any{"topic": "sensors/sensor-1/temp", "payload": `{"temp": 31.5}`, "qos": 1, "device": "sensor-1"}
	m := test(map[string]any{"rule_id": rule.str("id"), "message": hot})
	if m["matched"] != true || m["destination"] != destID {
		t.Fatalf("a hot reading by rule id: %v", m)
	}
	body := m["body"].(map[string]any)
	msgs := asSlice(body["messages"])
	if len(msgs) != 1 || msgs[0].(map[string]any)["payload"].(map[string]any)["temp"] != 31.5 || msgs[0].(map[string]any)["payload_encoding"] != "json" {
		t.Errorf("what would be sent: %v", body)
	}
	cold := map[string]any{"topic": "sensors/sensor-1/temp", "payload": `{"temp": 12}`, "device": "sensor-1"}
	if m := test(map[string]any{"rule_id": rule.str("id"), "message": cold}); m["matched"] != false || m["reason"] != "the condition is false" || m["body"] != nil {
		t.Errorf("a cold reading: %v", m)
	}
	if m := test(map[string]any{"rule_id": rule.str("id"), "message": map[string]any{"topic": "other/x", "payload": `{"temp": 40}`}}); m["matched"] != false || m["reason"] != "the topic does not match the filter" {
		t.Errorf("another topic: %v", m)
	}
	if m := test(map[string]any{"rule_id": rule.str("id"), "message": map[string]any{"topic": "sensors/x/temp", "payload": "not json"}}); m["matched"] != false || !strings.Contains(m["reason"].(string), "could not be evaluated") {
		t.Errorf("a text payload against payload.temp: %v", m)
	}
	inline := map[string]any{"filter": "#", "destination": "ingest", "condition": `string(payload) == "on" && topic_levels[0] == "lights"`}
	if m := test(map[string]any{"rule": inline, "message": map[string]any{"topic": "lights/1", "payload_base64": "b24="}}); m["matched"] != true {
		t.Errorf("an inline rule on a binary payload: %v", m)
	}
	wantProblem(t, e.do("POST", "/v1/tenants/acme/rules/test", viewerKey, map[string]any{"rule": map[string]any{"filter": "#", "destination": "ingest", "condition": "qos == "}, "message": hot}), 400, "invalid", "rule.condition", "an inline rule that does not compile")
	wantProblem(t, e.do("POST", "/v1/tenants/acme/rules/test", viewerKey, map[string]any{"message": hot}), 400, "invalid", "rule", "no rule")
	wantProblem(t, e.do("POST", "/v1/tenants/acme/rules/test", viewerKey, map[string]any{"rule_id": "exp_nope", "message": hot}), 400, "invalid", "rule_id", "an unknown rule")
	wantProblem(t, e.do("POST", "/v1/tenants/acme/rules/test", viewerKey, map[string]any{"rule_id": rule.str("id"), "message": map[string]any{"topic": "a/+"}}), 400, "invalid", "message.topic", "a wildcard topic")
	wantProblem(t, e.do("POST", "/v1/tenants/acme/rules/test", viewerKey, map[string]any{"rule_id": rule.str("id"), "message": map[string]any{"topic": "a", "device": "ghost"}}), 400, "invalid", "message.device", "an unknown device")
	if n, _ := rc.counts(); n != 0 {
		t.Errorf("rules/test sent %d requests, want none", n)
	}
}

// TestSendTestThrottle: ten send tests a minute per tenant, then 429 with
// Retry-After; another tenant has its own ten; a minute later it works.
func TestSendTestThrottle(t *testing.T) {
	e := newEnvWith(t, allowLoopback(t))
	owner := e.signup("owner")
	e.mustTenant(owner, "acme")
	e.mustTenant(owner, "globex")
	rc := newHookReceiver(t)
	ids := map[string]string{}
	for _, tn := range []string{"acme", "globex"} {
		r := e.do("POST", "/v1/tenants/"+tn+"/destinations", owner.token, map[string]string{"name": "hook", "type": "webhook", "url": rc.URL})
		want(t, r, 201, "create destination")
		ids[tn] = r.str("id")
	}
	for i := range 10 {
		want(t, e.do("POST", "/v1/tenants/acme/destinations/"+ids["acme"]+"/test", owner.token, nil), 200, fmt.Sprintf("send test %d", i+1))
	}
	r := e.do("POST", "/v1/tenants/acme/destinations/"+ids["acme"]+"/test", owner.token, nil)
	wantProblem(t, r, 429, "too_many_attempts", "", "the eleventh send test in a minute")
	if r.header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	want(t, e.do("POST", "/v1/tenants/globex/destinations/"+ids["globex"]+"/test", owner.token, nil), 200, "another tenant's send test")
	if n, _ := rc.counts(); n != 11 {
		t.Errorf("the receiver got %d requests, want 11", n)
	}
	e.clock.Advance(61 * time.Second)
	want(t, e.do("POST", "/v1/tenants/acme/destinations/"+ids["acme"]+"/test", owner.token, nil), 200, "a minute later")
}

// TestDestinationKeyChanged: a secret sealed under an earlier operator
// token makes the send test a 409 asking to rotate; rotating mends it.
func TestDestinationKeyChanged(t *testing.T) {
	e := newEnvWith(t, allowLoopback(t))
	owner := e.signup("owner")
	e.mustTenant(owner, "acme")
	rc := newHookReceiver(t)
	old, err := dataout.NewSealer(dataout.KeyFromToken("rop_an-earlier-operator-token"))
	if err != nil {
		t.Fatal(err)
	}
	id := tenants.NewDestinationID()
	if _, err := e.store.CreateDestination(tenants.WithActor(context.Background(), "test"), "acme", id,
		tenants.DestinationInput{Name: "old", Type: "webhook", URL: rc.URL}, tenants.Sealed{Secret: old.SealSecret("acme", id, "whsec_old")}); err != nil {
		t.Fatal(err)
	}
	r := e.do("POST", "/v1/tenants/acme/destinations/"+id+"/test", owner.token, nil)
	wantProblem(t, r, 409, "conflict", "", "send test with a secret sealed under another key")
	if !strings.Contains(r.str("detail"), "rotate") {
		t.Errorf("the problem does not say to rotate: %s", r.body)
	}
	secret := e.do("POST", "/v1/tenants/acme/destinations/"+id+"/secret", owner.token, nil).str("secret")
	rc.set(secret, 204)
	if r := e.do("POST", "/v1/tenants/acme/destinations/"+id+"/test", owner.token, nil); r.json()["delivered"] != true {
		t.Errorf("after rotating: %s", r.body)
	}
}

// TestRuleProjection: a rule's projection is compiled when the rule is
// made (a mistake is a problem with its line and column), stored and
// listed, and shapes what rules/test says would be sent; one that cannot
// be evaluated for a message is the reason it does not match.
func TestRuleProjection(t *testing.T) {
	e := newEnvWith(t, allowLoopback(t))
	owner := e.signup("owner")
	e.mustTenant(owner, "acme")
	_, viewerKey := e.mustKey(owner.token, "acme", tenants.RoleViewer)
	want(t, e.do("POST", "/v1/tenants/acme/devices", owner.token, map[string]any{"name": "sensor-1", "metadata": map[string]string{"room": "lab"}}), 201, "device")
	rc := newHookReceiver(t)
	want(t, e.do("POST", "/v1/tenants/acme/destinations", owner.token, map[string]string{"name": "ingest", "type": "webhook", "url": rc.URL}), 201, "destination")

	r := e.do("POST", "/v1/tenants/acme/rules", owner.token, map[string]string{"filter": "sensors/#", "destination": "ingest", "projection": "{\"t\": payload.temp,\n  \"r\": romm}"})
	wantProblem(t, r, 400, "invalid", "projection", "a projection with an undeclared name")
	if m := r.json(); m["line"] != float64(2) || m["column"] != float64(8) || !strings.Contains(r.str("detail"), "romm") {
		t.Errorf("problem: %s, want line 2 column 8 naming romm", r.body)
	}
	wantProblem(t, e.do("POST", "/v1/tenants/acme/rules", owner.token, map[string]string{"filter": "#", "topic": "t", "projection": "{1: 2}"}), 400, "invalid", "projection", "a projection whose map keys are not strings")
	wantProblem(t, e.do("POST", "/v1/tenants/acme/rules", owner.token, map[string]string{"filter": "#", "destination": "ingest", "projection": strings.Repeat(" ", 4097)}), 400, "invalid", "projection", "a projection too long")

	const projection = `{"t": payload.temp, "room": metadata.room, "device": device}`
	rule := e.do("POST", "/v1/tenants/acme/rules", owner.token, map[string]string{"filter": "sensors/+/temp", "destination": "ingest", "condition": "payload.temp > 30", "projection": projection})
	want(t, rule, 201, "a rule with a projection")
	if rule.str("projection") != projection {
		t.Errorf("created: %s", rule.body)
	}
	if items := asSlice(e.do("GET", "/v1/tenants/acme/rules", viewerKey, nil).json()["items"]); len(items) != 1 || items[0].(map[string]any)["projection"] != projection {
		t.Errorf("listed: %v", items)
	}

	test := func(body map[string]any) map[string]any {
		t.Helper()
		r := e.do("POST", "/v1/tenants/acme/rules/test", viewerKey, body)
		want(t, r, 200, "rules/test")
		return r.json()
	}
	m := test(map[string]any{"rule_id": rule.str("id"), "message": map[string]any{"topic": "sensors/sensor-1/temp", "payload": `{"temp": 31.5, "raw": "x"}`, "device": "sensor-1"}})
	shaped := map[string]any{"t": 31.5, "room": "lab", "device": "sensor-1"}
	if m["matched"] != true || !reflect.DeepEqual(m["payload"], shaped) {
		t.Fatalf("a hot reading: %v, want payload %v", m, shaped)
	}
	if sent := asSlice(m["body"].(map[string]any)["messages"])[0].(map[string]any); !reflect.DeepEqual(sent["payload"], shaped) || sent["payload_encoding"] != "json" {
		t.Errorf("what would be sent: %v", sent)
	}
	if m := test(map[string]any{"rule_id": rule.str("id"), "message": map[string]any{"topic": "sensors/sensor-1/temp", "payload": `{"temp": 12}`}}); m["matched"] != false || m["payload"] != nil {
		t.Errorf("a cold reading: %v", m)
	}
	inline := map[string]any{"filter": "#", "destination": "ingest", "projection": `{"v": payload.value}`}
	if m := test(map[string]any{"rule": inline, "message": map[string]any{"topic": "x", "payload": `{"other": 1}`}}); m["matched"] != false ||
		!strings.HasPrefix(m["reason"].(string), "the projection could not be evaluated: ") {
		t.Errorf("a projection missing its field: %v", m)
	}
	wantProblem(t, e.do("POST", "/v1/tenants/acme/rules/test", viewerKey, map[string]any{"rule": map[string]any{"filter": "#", "destination": "ingest", "projection": "{"},
		"message": map[string]any{"topic": "x"}}), 400, "invalid", "rule.projection", "an inline projection that does not compile")
	if n, _ := rc.counts(); n != 0 {
		t.Errorf("rules/test sent %d requests, want none", n)
	}
}

// TestRuleTestsBudget: a tenant whose rule tests have used their share of
// the API process's CPU (more than a test can wait for) gets 429 with
// Retry-After; another tenant's tests are not held back, and once the
// share has caught up the tenant's tests run again.
func TestRuleTestsBudget(t *testing.T) {
	e := newEnv(t)
	owner := e.signup("owner")
	e.mustTenant(owner, "acme")
	e.mustTenant(owner, "beta")
	body := map[string]any{"rule": map[string]string{"filter": "#", "topic": "t", "condition": "payload.temp > 30"},
		"message": map[string]any{"topic": "x", "payload": `{"temp": 31}`}}
	want(t, e.do("POST", "/v1/tenants/acme/rules/test", owner.token, body), 200, "within the share")
	api.SpendRuleTests(e.api, "acme", time.Hour)
	r := e.do("POST", "/v1/tenants/acme/rules/test", owner.token, body)
	wantProblem(t, r, 429, "too_many_attempts", "", "over the share")
	if r.header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	want(t, e.do("POST", "/v1/tenants/beta/rules/test", owner.token, body), 200, "another tenant")
	api.SpendRuleTests(e.api, "acme", -time.Hour-time.Second)
	want(t, e.do("POST", "/v1/tenants/acme/rules/test", owner.token, body), 200, "the share caught up")
}

// TestRulesBudgetCountsCompiling: compiling a rule is part of what its
// tenant's share of the API process's CPU pays for. A condition and a
// projection of nested list literals take a tenth of a second or more to
// compile and microseconds to evaluate: a viewer key sending them to
// rules/test in a loop (or on as many connections as it likes), or an
// admin's key to POST …/rules (refused after compiling, here for an
// unknown destination, or past the 100 rules), is held to the share, 429
// once it is spent, as one evaluating costly rules is.
func TestRulesBudgetCountsCompiling(t *testing.T) {
	nested := strings.Repeat("[", 43) + strings.Repeat("]", 43)
	rule := func(to, name string) map[string]string {
		return map[string]string{"filter": "#", to: name,
			"condition":  strings.Repeat(nested+" == [] || ", 42) + "true",
			"projection": "[" + strings.Repeat(nested+", ", 42) + "[]]"}
	}
	for _, c := range []struct {
		name, path string
		role       tenants.Role
		body       any
		status     int
	}{
		{"rules/test", "/v1/tenants/acme/rules/test", tenants.RoleViewer, map[string]any{"rule": rule("topic", "t"), "message": map[string]any{"topic": "x"}}, 200},
		{"POST rules", "/v1/tenants/acme/rules", tenants.RoleAdmin, rule("destination", "nowhere"), 400},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			owner := e.signup("owner")
			e.mustTenant(owner, "acme")
			_, key := e.mustKey(owner.token, "acme", c.role)
			// The share is dataout.EvalShare of a second a second, with
			// dataout.EvalBurst saved: about 1.7 s of compiling in a row
			// spends it, after a few requests here (a single one under
			// -race on a busy machine), and the next is refused.
			start := time.Now()
			for n := 1; ; n++ {
				r := e.do("POST", c.path, key, c.body)
				if r.status == http.StatusTooManyRequests {
					wantProblem(t, r, 429, "too_many_attempts", "", c.name+" past the share")
					break
				}
				want(t, r, c.status, c.name+" within the share")
				if d := time.Since(start); n >= 40 || n >= 2 && d > 15*time.Second {
					t.Fatalf("%d requests took %v compiling, none refused; want 429 past the tenant's share (%v a second, %v saved)",
						n, d.Round(time.Millisecond), dataout.EvalShare, dataout.EvalBurst)
				}
			}
		})
	}
}
