package api_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/golang-jwt/jwt/v5"

	"github.com/roosthub/roost/api"
	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
)

// TestEveryRoute walks the happy path of every route as a new user would.
func TestEveryRoute(t *testing.T) {
	e := newEnv(t)
	want(t, e.do("GET", "/healthz", "", nil), 200, "healthz")
	want(t, e.do("GET", "/readyz", "", nil), 200, "readyz")
	spec := e.do("GET", "/openapi.yaml", "", nil)
	want(t, spec, 200, "openapi.yaml")
	if !strings.HasPrefix(string(spec.body), "openapi: 3") {
		t.Errorf("/openapi.yaml does not serve the spec")
	}

	r := e.do("POST", "/v1/signup", "", map[string]string{"email": "Ada@Example.com", "password": "correct horse battery"})
	want(t, r, 201, "signup")
	e.verifyEmail(r.json()["account"].(map[string]any)["id"].(string))
	r = e.do("POST", "/v1/login", "", map[string]string{"email": "ada@example.com", "password": "correct horse battery"})
	want(t, r, 200, "login")
	tok := r.str("token")
	r = e.do("GET", "/v1/me", tok, nil)
	want(t, r, 200, "me")
	if r.json()["kind"] != "account" || r.json()["account"].(map[string]any)["email"] != "ada@example.com" {
		t.Errorf("me: got %s", r.body)
	}

	r = e.do("POST", "/v1/tenants", tok, map[string]string{"slug": "acme", "name": "Acme"})
	want(t, r, 201, "create tenant")
	if r.header.Get("Location") != "/v1/tenants/acme" || r.str("role") != "owner" || r.str("plan") != "free" {
		t.Errorf("create tenant: got %s (Location %q)", r.body, r.header.Get("Location"))
	}
	r = e.do("GET", "/v1/tenants", tok, nil)
	want(t, r, 200, "list tenants")
	if items := r.json()["items"].([]any); len(items) != 1 {
		t.Errorf("list tenants: got %s", r.body)
	}
	want(t, e.do("GET", "/v1/tenants/acme", tok, nil), 200, "get tenant")
	r = e.do("PATCH", "/v1/tenants/acme", tok, map[string]string{"name": "Acme Inc"})
	want(t, r, 200, "rename tenant")
	if r.str("name") != "Acme Inc" {
		t.Errorf("rename: got %s", r.body)
	}

	r = e.do("POST", "/v1/tenants/acme/devices", tok, map[string]any{"name": "sensor-1", "metadata": map[string]string{"room": "lab"}})
	want(t, r, 201, "create device")
	if r.str("username") != "acme/sensor-1" || len(r.str("secret")) < 22 {
		t.Errorf("create device: got %s", r.body)
	}
	// Device keys for token authentication.
	r = e.do("POST", "/v1/tenants/acme/devices/sensor-1/keys", tok, map[string]string{"public_key": testPublicKey})
	want(t, r, 201, "register device key")
	if r.str("algorithm") != "ES256" || len(r.str("fingerprint")) != 64 {
		t.Errorf("device key: got %s", r.body)
	}
	dkID := r.str("id")
	r = e.do("POST", "/v1/tenants/acme/devices/sensor-1/keys", tok, map[string]string{"public_key": testPublicKey2})
	if want(t, r, 201, "register an Ed25519 key"); r.str("algorithm") != "EdDSA" {
		t.Errorf("Ed25519 key: got %s", r.body)
	}
	wantProblem(t, e.do("POST", "/v1/tenants/acme/devices/sensor-1/keys", tok, map[string]string{"public_key": testPublicKey}), 409, "conflict", "", "the same key twice")
	wantProblem(t, e.do("POST", "/v1/tenants/acme/devices/sensor-1/keys", tok, map[string]string{"public_key": "not a key"}), 400, "invalid", "public_key", "not a key")
	wantProblem(t, e.do("GET", "/v1/tenants/acme/devices/nobody/keys", tok, nil), 404, "not_found", "", "keys of an unknown device")
	r = e.do("GET", "/v1/tenants/acme/devices/sensor-1/keys", tok, nil)
	if want(t, r, 200, "list device keys"); len(r.json()["items"].([]any)) != 2 {
		t.Errorf("device keys: got %s", r.body)
	}
	want(t, e.do("DELETE", "/v1/tenants/acme/devices/sensor-1/keys/"+dkID, tok, nil), 204, "delete device key")

	// X.509: the tenant's CAs and certificates pinned to a device.
	r = e.do("POST", "/v1/tenants/acme/cas", tok, map[string]string{"certificate": testCA})
	want(t, r, 201, "register a CA")
	if !strings.Contains(r.str("subject"), "Test devices CA") {
		t.Errorf("CA: got %s", r.body)
	}
	caID := r.str("id")
	wantProblem(t, e.do("POST", "/v1/tenants/acme/cas", tok, map[string]string{"certificate": testCA}), 409, "conflict", "", "the same CA twice")
	wantProblem(t, e.do("POST", "/v1/tenants/acme/cas", tok, map[string]string{"certificate": "nope"}), 400, "invalid", "certificate", "not a certificate")
	want(t, e.do("GET", "/v1/tenants/acme/cas", tok, nil), 200, "list CAs")
	r = e.do("POST", "/v1/tenants/acme/devices/sensor-1/certificates", tok, map[string]string{"fingerprint": strings.ToUpper(testFingerprint)})
	want(t, r, 201, "pin a fingerprint")
	if r.str("fingerprint") != testFingerprint {
		t.Errorf("pinned fingerprint: got %s", r.body)
	}
	certID := r.str("id")
	wantProblem(t, e.do("POST", "/v1/tenants/acme/devices/sensor-1/certificates", tok, map[string]string{}), 400, "invalid", "certificate", "neither certificate nor fingerprint")
	want(t, e.do("GET", "/v1/tenants/acme/devices/sensor-1/certificates", tok, nil), 200, "list device certificates")
	want(t, e.do("DELETE", "/v1/tenants/acme/devices/sensor-1/certificates/"+certID, tok, nil), 204, "unpin")
	want(t, e.do("DELETE", "/v1/tenants/acme/cas/"+caID, tok, nil), 204, "delete CA")
	wantProblem(t, e.do("DELETE", "/v1/tenants/acme/cas/"+caID, tok, nil), 404, "not_found", "", "delete the CA twice")
	wantProblem(t, e.do("DELETE", "/v1/tenants/acme/devices/sensor-1/keys/"+dkID, tok, nil), 404, "not_found", "", "delete it twice")
	want(t, e.do("GET", "/v1/tenants/acme/devices", tok, nil), 200, "list devices")
	r = e.do("GET", "/v1/tenants/acme/devices/sensor-1", tok, nil)
	want(t, r, 200, "get device")
	if _, has := r.json()["secret"]; has {
		t.Errorf("get device shows a secret: %s", r.body)
	}
	r = e.do("PATCH", "/v1/tenants/acme/devices/sensor-1", tok, map[string]any{"enabled": false, "client_ids": "any"})
	want(t, r, 200, "update device")
	if r.json()["enabled"] != false || r.str("client_ids") != "any" {
		t.Errorf("update device: got %s", r.body)
	}
	r = e.do("POST", "/v1/tenants/acme/devices/sensor-1/secret", tok, nil)
	want(t, r, 200, "rotate secret")
	if len(r.str("secret")) < 22 {
		t.Errorf("rotate: got %s", r.body)
	}

	r = e.do("GET", "/v1/tenants/acme/acl/rules", tok, nil)
	want(t, r, 200, "list rules")
	if items := r.json()["items"].([]any); len(items) != 1 || items[0].(map[string]any)["topic"] != "#" {
		t.Errorf("new tenant's rules: got %s", r.body)
	}
	r = e.do("POST", "/v1/tenants/acme/acl/rules", tok, map[string]any{"effect": "deny", "action": "publish", "topic": "alarms/#", "position": 0})
	want(t, r, 201, "create rule")
	ruleID := r.str("id")
	r = e.do("POST", "/v1/tenants/acme/acl/check", tok, map[string]string{"device": "sensor-1", "action": "publish", "topic": "alarms/fire"})
	want(t, r, 200, "check")
	if r.json()["allowed"] != false || r.json()["rule"].(map[string]any)["id"] != ruleID {
		t.Errorf("check: got %s, want denied by %s", r.body, ruleID)
	}
	want(t, e.do("DELETE", "/v1/tenants/acme/acl/rules/"+ruleID, tok, nil), 204, "delete rule")
	r = e.do("POST", "/v1/tenants/acme/acl/check", tok, map[string]string{"device": "sensor-1", "action": "publish", "topic": "alarms/fire"})
	if r.json()["allowed"] != true {
		t.Errorf("check after delete: got %s", r.body)
	}

	keyID, key := e.mustKey(tok, "acme", tenants.RoleViewer)
	r = e.do("GET", "/v1/me", key, nil)
	want(t, r, 200, "me with key")
	if r.json()["kind"] != "api_key" {
		t.Errorf("me with key: got %s", r.body)
	}
	r = e.do("GET", "/v1/tenants", key, nil)
	want(t, r, 200, "tenants with key")
	if items := r.json()["items"].([]any); len(items) != 1 || items[0].(map[string]any)["role"] != "viewer" {
		t.Errorf("tenants with key: got %s", r.body)
	}
	want(t, e.do("GET", "/v1/tenants/acme/api-keys", tok, nil), 200, "list keys")
	want(t, e.do("DELETE", "/v1/tenants/acme/api-keys/"+keyID, tok, nil), 204, "revoke key")
	want(t, e.do("GET", "/v1/me", key, nil), 401, "revoked key")

	bob := e.signup("bob")
	r = e.do("POST", "/v1/tenants/acme/members", tok, map[string]string{"email": bob.email, "role": "admin"})
	want(t, r, 202, "add member")
	want(t, e.do("GET", "/v1/tenants/acme/members", tok, nil), 200, "list members")
	want(t, e.do("GET", "/v1/tenants/acme", bob.token, nil), 200, "member sees the tenant")
	want(t, e.do("DELETE", "/v1/tenants/acme/members/"+bob.id, tok, nil), 204, "remove member")
	want(t, e.do("GET", "/v1/tenants/acme", bob.token, nil), 404, "removed member")

	r = e.do("POST", "/v1/tenants/acme/rules", tok, map[string]string{"filter": "sensors/#", "topic": "telemetry"})
	want(t, r, 201, "create export rule")
	if r.str("kafka_topic") != "roost.acme.telemetry" {
		t.Errorf("export rule: got %s", r.body)
	}
	expID := r.str("id")
	r = e.do("GET", "/v1/tenants/acme/rules", tok, nil)
	want(t, r, 200, "list export rules")
	if items := asSlice(r.json()["items"]); len(items) != 1 || items[0].(map[string]any)["errors"] != float64(0) {
		t.Errorf("export rules: got %s", r.body)
	}
	wantProblem(t, e.do("POST", "/v1/tenants/acme/rules", tok, map[string]string{"filter": "a/#/b", "topic": "t"}), 400, "invalid", "filter", "bad export filter")
	wantProblem(t, e.do("POST", "/v1/tenants/acme/rules", tok, map[string]string{"filter": "#", "topic": "../x"}), 400, "invalid", "topic", "bad export topic")
	want(t, e.do("DELETE", "/v1/tenants/acme/rules/"+expID, tok, nil), 204, "delete export rule")

	r = e.do("GET", "/v1/tenants/acme/quotas", tok, nil)
	want(t, r, 200, "quotas")
	if q := r.json()["quotas"].(map[string]any); q["max_devices"] != float64(100) || q["max_packet_size"] != float64(128*1024) {
		t.Errorf("free plan quotas: got %s", r.body)
	}
	r = e.do("GET", "/v1/tenants/acme/audit", tok, nil)
	want(t, r, 200, "audit")
	if n := len(r.json()["items"].([]any)); n < 8 {
		t.Errorf("audit has %d entries, want every change so far", n)
	}

	want(t, e.do("GET", "/v1/admin/tenants", adminToken, nil), 200, "admin list")
	want(t, e.do("GET", "/v1/admin/tenants/acme", adminToken, nil), 200, "admin get")
	r = e.do("PATCH", "/v1/admin/tenants/acme", adminToken, map[string]any{"plan": "pro", "quotas": map[string]any{"max_devices": 5}})
	want(t, r, 200, "admin patch")
	r = e.do("GET", "/v1/tenants/acme/quotas", tok, nil)
	if m := r.json(); m["plan"] != "pro" || m["quotas"].(map[string]any)["max_devices"] != float64(5) {
		t.Errorf("quotas after admin patch: got %s", r.body)
	}
	r = e.do("GET", "/v1/me", adminToken, nil)
	if r.json()["kind"] != "operator" {
		t.Errorf("me as operator: got %s", r.body)
	}

	want(t, e.do("DELETE", "/v1/tenants/acme/devices/sensor-1", tok, nil), 204, "delete device")
	want(t, e.do("DELETE", "/v1/tenants/acme", tok, nil), 204, "delete tenant")
	want(t, e.do("GET", "/v1/tenants/acme", tok, nil), 404, "deleted tenant")
}

// testPublicKey and testPublicKey2 are public keys to register for devices
// (ECDSA P-256 and Ed25519).
const (
	testPublicKey = `-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE7A7zkp0yWXN0ExeQnVhN8Qs+/4sO
V6HZQGf2Ayj8U5Vscz+JS9gdrCNgdxvKjJ9JM3O4W2UKglmQee6IJzdMVQ==
-----END PUBLIC KEY-----
`
	testPublicKey2 = `-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAGoCB9ttoh1qH4g2qu/JbRMFpCEq6XbPNZizekTpJZFA=
-----END PUBLIC KEY-----
`
)

// testCA is a CA certificate (ECDSA P-256, valid until 2036).
const testCA = `-----BEGIN CERTIFICATE-----
MIIBmjCCAT+gAwIBAgIUK/fK2ZFtzNNqAmcMQekUJo+k3tswCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPVGVzdCBkZXZpY2VzIENBMB4XDTI2MTEyNjAxMzEwNVoXDTM2
MTEyMzAxMzEwNVowGjEYMBYGA1UEAwwPVGVzdCBkZXZpY2VzIENBMFkwEwYHKoZI
zj0CAQYIKoZIzj0DAQcDQgAEPyfs+ZQQFzmmE+0WxDuz9EPdL8kj40Fkog4RCVuT
9dANQ/I2A/cMQ9ajc6fZydGC5oe+iNxEbBgSD/caFumWfKNjMGEwHQYDVR0OBBYE
FOX+ujeRBy/xa5STbqgQa2HNMH2QMB8GA1UdIwQYMBaAFOX+ujeRBy/xa5STbqgQ
a2HNMH2QMA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgIEMAoGCCqGSM49
BAMCA0kAMEYCIQD3SfeaA81i9nSHV6uXWGgRW37aoyDB/SHriG2cPCOhEQIhAPvb
ouuS2cpg2SoCLVAZ5eX7gArXbs5cFJ4S9OIyY5zC
-----END CERTIFICATE-----
`

// testFingerprint is a SHA-256 fingerprint to pin to a device.
const testFingerprint = "ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12"

// fill puts ids into a route pattern.
func fill(route string, ids map[string]string) string {
	for k, v := range ids {
		route = strings.ReplaceAll(route, "{"+k+"}", v)
	}
	return route
}

// attackBodies are valid bodies for each writing route, so that a request
// that got past the tenant check would succeed: a 404 means isolation, not a
// bad body.
func attackBodies(memberEmail string) map[string]any {
	return map[string]any{
		"PATCH /v1/tenants/{tenant}/":                             map[string]string{"name": "pwned"},
		"POST /v1/tenants/{tenant}/devices":                       map[string]string{"name": "evil"},
		"PATCH /v1/tenants/{tenant}/devices/{device}":             map[string]any{"enabled": false},
		"POST /v1/tenants/{tenant}/acl/rules":                     map[string]any{"effect": "deny", "action": "all", "topic": "#", "position": 0},
		"POST /v1/tenants/{tenant}/acl/check":                     map[string]string{"device": "a-dev", "action": "publish", "topic": "x"},
		"POST /v1/tenants/{tenant}/api-keys":                      map[string]string{"name": "evil", "role": "viewer"},
		"POST /v1/tenants/{tenant}/members":                       map[string]string{"email": memberEmail, "role": "owner"},
		"POST /v1/tenants/{tenant}/devices/{device}/secret":       nil,
		"POST /v1/tenants/{tenant}/messages":                      map[string]any{"topic": "x", "payload": "hi"},
		"POST /v1/tenants/{tenant}/rules":                         map[string]string{"filter": "#", "topic": "evil"},
		"POST /v1/tenants/{tenant}/devices/{device}/keys":         map[string]string{"public_key": testPublicKey},
		"POST /v1/tenants/{tenant}/devices/{device}/certificates": map[string]string{"fingerprint": testFingerprint},
		"POST /v1/tenants/{tenant}/cas":                           map[string]string{"certificate": testCA},
		"POST /v1/tenants/{tenant}/destinations":                  map[string]string{"name": "evil", "type": "webhook", "url": "https://evil.example.com/"},
		"PATCH /v1/tenants/{tenant}/destinations/{id}":            map[string]string{"url": "https://evil.example.com/"},
		"POST /v1/tenants/{tenant}/rules/test":                    map[string]any{"rule": map[string]string{"filter": "#", "topic": "t"}, "message": map[string]string{"topic": "x"}},
		"PATCH /v1/tenants/{tenant}/devices/{device}/shadow":      map[string]any{"state": map[string]any{"desired": map[string]string{"led": "pwned"}}},
		"POST /v1/tenants/{tenant}/groups/{group}/messages":       map[string]any{"topic": "x/${device}", "payload": "hi"},
		"POST /v1/tenants/{tenant}/devices:import":                "name\nevil\n",
		"PATCH /v1/tenants/{tenant}/cas/{id}":                     map[string]any{"provisioning": map[string]any{"groups": []string{"pwned"}}},
		"POST /v1/tenants/{tenant}/devices/{device}/commands":     map[string]any{"name": "pwned", "queue": true},
	}
}

// TestCrossTenantMatrix calls every tenant route of the router with tenant
// A's ids as users of tenant B: an account that owns B and an admin key of
// B. Every call must answer 404, and A must be untouched afterwards.
func TestCrossTenantMatrix(t *testing.T) {
	e := newEnv(t)
	alice, bob := e.signup("alice"), e.signup("bob")
	e.mustTenant(alice, "tenant-a")
	e.mustTenant(bob, "tenant-b")
	secretA := e.mustDevice(alice.token, "tenant-a", "a-dev")
	e.mustDevice(bob.token, "tenant-b", "b-dev")
	aKeyID, _ := e.mustKey(alice.token, "tenant-a", tenants.RoleViewer)
	rules := e.do("GET", "/v1/tenants/tenant-a/acl/rules", alice.token, nil).json()["items"].([]any)
	aRuleID := rules[0].(map[string]any)["id"].(string)
	exp := e.do("POST", "/v1/tenants/tenant-a/rules", alice.token, map[string]string{"filter": "#", "topic": "all"})
	want(t, exp, 201, "create export rule")
	aExportID := exp.str("id")
	dk := e.do("POST", "/v1/tenants/tenant-a/devices/a-dev/keys", alice.token, map[string]string{"public_key": testPublicKey})
	want(t, dk, 201, "register device key")
	aDeviceKeyID := dk.str("id")
	dc := e.do("POST", "/v1/tenants/tenant-a/devices/a-dev/certificates", alice.token, map[string]string{"fingerprint": testFingerprint})
	want(t, dc, 201, "pin a device certificate")
	aCertID := dc.str("id")
	ca := e.do("POST", "/v1/tenants/tenant-a/cas", alice.token, map[string]string{"certificate": testCA})
	want(t, ca, 201, "register a CA")
	aCAID := ca.str("id")
	aDestID := e.mustDestination(alice.token, "tenant-a", "a-hook")
	inv := e.do("POST", "/v1/tenants/tenant-a/invites", alice.token, map[string]string{"email": "invited@example.com", "role": "viewer"})
	want(t, inv, 201, "invite to tenant A")
	aInviteID := inv.str("id")
	want(t, e.do("PATCH", "/v1/tenants/tenant-a/devices/a-dev", alice.token, map[string]any{"groups": []string{"a-group"}}), 200, "put a-dev in a group")
	cmd := e.do("POST", "/v1/tenants/tenant-a/devices/a-dev/commands", alice.token, map[string]any{"name": "a-cmd", "queue": true})
	want(t, cmd, 202, "queue a command for a-dev")
	aCommandID := cmd.str("id")
	_, bobKey := e.mustKey(bob.token, "tenant-b", tenants.RoleOwner)
	before := snapshot(e, alice.token, "tenant-a")
	e.bodies = &testenv.Buffer{} // from here on, A's secret must not show

	bodies := attackBodies(bob.email)
	calls := 0
	err := chi.Walk(e.api.Router(), func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		if !strings.Contains(route, "{tenant}") || strings.HasPrefix(route, "/v1/admin/") {
			return nil
		}
		id := aRuleID
		if strings.Contains(route, "/api-keys/") {
			id = aKeyID
		}
		if strings.HasPrefix(route, "/v1/tenants/{tenant}/rules/") {
			id = aExportID
		}
		if strings.Contains(route, "/keys/") {
			id = aDeviceKeyID
		}
		if strings.Contains(route, "/certificates/") {
			id = aCertID
		}
		if strings.Contains(route, "/cas/") {
			id = aCAID
		}
		if strings.Contains(route, "/destinations/") {
			id = aDestID
		}
		if strings.Contains(route, "/invites/") {
			id = aInviteID
		}
		if strings.Contains(route, "/commands/") {
			id = aCommandID
		}
		aIDs := map[string]string{"tenant": "tenant-a", "device": "a-dev", "id": id, "account": alice.id, "group": "a-group"}
		paths := []string{fill(route, aIDs)}
		// B's own tenant in the path with A's object ids.
		if strings.Contains(route, "{device}") || strings.Contains(route, "{id}") || strings.Contains(route, "{account}") || strings.Contains(route, "{group}") {
			bPath := map[string]string{"tenant": "tenant-b"}
			for k, v := range aIDs {
				if k != "tenant" {
					bPath[k] = v
				}
			}
			paths = append(paths, fill(route, bPath))
		}
		body := bodies[method+" "+route]
		if body == nil && (method == "POST" || method == "PATCH") {
			body = map[string]any{}
		}
		for _, p := range paths {
			for who, tok := range map[string]string{"bob's session": bob.token, "bob's owner key": bobKey} {
				r := e.do(method, p, tok, body)
				calls++
				if r.status != http.StatusNotFound {
					t.Errorf("%s %s as %s: got %d %s, want 404", method, p, who, r.status, r.body)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if calls < 40 {
		t.Errorf("the matrix made only %d calls", calls)
	}
	if after := snapshot(e, alice.token, "tenant-a"); after != before {
		t.Errorf("tenant A changed under B's calls:\nbefore %s\nafter  %s", before, after)
	}
	if strings.Contains(e.bodies.String(), secretA) {
		t.Error("A's device secret appeared in a response")
	}
}

// snapshot renders everything a tenant holds, to compare before and after.
func snapshot(e *env, tok, tenant string) string {
	var b strings.Builder
	for _, p := range []string{"", "/devices", "/acl/rules", "/api-keys", "/members", "/rules", "/devices/a-dev/keys", "/devices/a-dev/certificates", "/devices/a-dev/shadow", "/cas", "/destinations", "/mfa", "/invites", "/groups"} {
		r := e.do("GET", "/v1/tenants/"+tenant+p, tok, nil)
		if r.status != http.StatusOK { // a problem carries a request id
			fmt.Fprintf(&b, "%s=%d\n", p, r.status)
			continue
		}
		var v any
		json.Unmarshal(r.body, &v)
		if m, ok := v.(map[string]any); ok {
			delete(m, "updated_at")
			for _, it := range asSlice(m["items"]) {
				delete(it.(map[string]any), "last_used_at")
			}
		}
		j, _ := json.Marshal(v)
		fmt.Fprintf(&b, "%s=%s\n", p, j)
	}
	return b.String()
}

func asSlice(v any) []any { s, _ := v.([]any); return s }

// TestMassAssignment: fields a caller may not set are rejected, and nothing
// changes.
func TestMassAssignment(t *testing.T) {
	e := newEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	e.mustDevice(u.token, "acme", "d1")
	before := snapshot(e, u.token, "acme")
	for _, tc := range []struct{ path, field string }{
		{"/v1/tenants/acme", "tenant"}, {"/v1/tenants/acme", "plan"}, {"/v1/tenants/acme", "role"},
		{"/v1/tenants/acme", "id"}, {"/v1/tenants/acme", "slug"}, {"/v1/tenants/acme", "suspended"},
		{"/v1/tenants/acme", "quota_overrides"},
		{"/v1/tenants/acme/devices/d1", "tenant"}, {"/v1/tenants/acme/devices/d1", "name"},
		{"/v1/tenants/acme/devices/d1", "id"}, {"/v1/tenants/acme/devices/d1", "role"},
		{"/v1/tenants/acme/devices/d1", "plan"}, {"/v1/tenants/acme/devices/d1", "secret"},
		{"/v1/tenants/acme/devices/d1", "username"},
	} {
		r := e.do("PATCH", tc.path, u.token, map[string]any{tc.field: "enterprise"})
		wantProblem(t, r, 400, "unknown_field", tc.field, "PATCH "+tc.path+" with "+tc.field)
	}
	if after := snapshot(e, u.token, "acme"); after != before {
		t.Errorf("mass assignment changed the tenant:\nbefore %s\nafter  %s", before, after)
	}
	r := e.do("POST", "/v1/tenants/acme/api-keys", u.token, map[string]string{"name": "k", "tenant": "other"})
	wantProblem(t, r, 400, "unknown_field", "tenant", "api key with a tenant field")
}

// TestViewerCannotWrite: a viewer member and a viewer key may read every
// tenant route but write none.
func TestViewerCannotWrite(t *testing.T) {
	e := newEnv(t)
	owner, viewer := e.signup("owner"), e.signup("viewer")
	e.mustTenant(owner, "acme")
	e.mustDevice(owner.token, "acme", "a-dev")
	want(t, e.do("POST", "/v1/tenants/acme/members", owner.token, map[string]string{"email": viewer.email, "role": "viewer"}), 202, "add viewer")
	keyID, viewerKey := e.mustKey(owner.token, "acme", tenants.RoleViewer)
	destID := e.mustDestination(owner.token, "acme", "hook")
	cmd := e.do("POST", "/v1/tenants/acme/devices/a-dev/commands", owner.token, map[string]any{"name": "c", "queue": true})
	want(t, cmd, 202, "queue a command for a-dev")
	rules := e.do("GET", "/v1/tenants/acme/acl/rules", owner.token, nil).json()["items"].([]any)
	ids := map[string]string{"tenant": "acme", "device": "a-dev", "account": owner.id}
	// A retained message for GET …/retained/message?topic=x to read.
	want(t, e.do("POST", "/v1/tenants/acme/messages", owner.token, map[string]any{"topic": "x", "payload": "y", "retain": true}), 202, "retain x")
	before := snapshot(e, owner.token, "acme")
	bodies := attackBodies(viewer.email)
	err := chi.Walk(e.api.Router(), func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		if !strings.Contains(route, "{tenant}") || strings.HasPrefix(route, "/v1/admin/") {
			return nil
		}
		ids["id"] = rules[0].(map[string]any)["id"].(string)
		if strings.Contains(route, "/api-keys/") {
			ids["id"] = keyID
		}
		if strings.Contains(route, "/destinations/") {
			ids["id"] = destID
		}
		if strings.Contains(route, "/commands/") {
			ids["id"] = cmd.str("id")
		}
		path := fill(route, ids)
		if strings.HasSuffix(route, "/retained/message") {
			path += "?topic=x"
		}
		body := bodies[method+" "+route]
		if body == nil && (method == "POST" || method == "PATCH") {
			body = map[string]any{}
		}
		read := method == "GET" || strings.HasSuffix(route, "/acl/check") || strings.HasSuffix(route, "/rules/test")
		if strings.HasSuffix(route, "/stream") { // it does not end: read its start
			for who, tok := range map[string]string{"viewer member": viewer.token, "viewer key": viewerKey} {
				s := e.openStream(path+"?filter=%23&events=1", tok, "")
				if s.status != 200 {
					t.Errorf("GET %s as %s: got %d, want 200", path, who, s.status)
				}
				s.close()
			}
			return nil
		}
		for who, tok := range map[string]string{"viewer member": viewer.token, "viewer key": viewerKey} {
			r := e.do(method, path, tok, body)
			switch {
			case read && r.status != 200:
				t.Errorf("%s %s as %s: got %d %s, want 200", method, path, who, r.status, r.body)
			case !read && r.status != 403:
				t.Errorf("%s %s as %s: got %d %s, want 403", method, path, who, r.status, r.body)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if after := snapshot(e, owner.token, "acme"); after != before {
		t.Errorf("viewers changed the tenant:\nbefore %s\nafter  %s", before, after)
	}
	// An admin cannot mint an owner key or make an owner.
	admin := e.signup("admin")
	want(t, e.do("POST", "/v1/tenants/acme/members", owner.token, map[string]string{"email": admin.email, "role": "admin"}), 202, "add admin")
	wantProblem(t, e.do("POST", "/v1/tenants/acme/api-keys", admin.token, map[string]string{"name": "k", "role": "owner"}), 403, "forbidden", "role", "admin mints an owner key")
	wantProblem(t, e.do("POST", "/v1/tenants/acme/members", admin.token, map[string]string{"email": viewer.email, "role": "owner"}), 403, "forbidden", "", "admin adds an owner")
	wantProblem(t, e.do("DELETE", "/v1/tenants/acme/members/"+owner.id, admin.token, nil), 403, "forbidden", "", "admin removes the owner")
	wantProblem(t, e.do("DELETE", "/v1/tenants/acme", admin.token, nil), 403, "forbidden", "", "admin deletes the tenant")
	wantProblem(t, e.do("DELETE", "/v1/tenants/acme/members/"+owner.id, owner.token, nil), 409, "conflict", "", "the last owner leaves")
}

// TestAdminRoutes: only the operator token opens /v1/admin.
func TestAdminRoutes(t *testing.T) {
	e := newEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	_, key := e.mustKey(u.token, "acme", tenants.RoleOwner)
	for _, tc := range []struct{ method, path string }{
		{"GET", "/v1/admin/tenants"}, {"GET", "/v1/admin/tenants/acme"}, {"PATCH", "/v1/admin/tenants/acme"},
		{"DELETE", "/v1/admin/tenants/acme"}, {"POST", "/v1/admin/tenants/acme/impersonate"}, {"GET", "/v1/admin/stats"},
	} {
		var body any
		switch tc.method {
		case "PATCH":
			body = map[string]any{"suspended": true}
		case "POST":
			body = map[string]any{"reason": "x"}
		}
		wantProblem(t, e.do(tc.method, tc.path, u.token, body), 403, "forbidden", "", tc.path+" as a tenant owner")
		wantProblem(t, e.do(tc.method, tc.path, key, body), 403, "forbidden", "", tc.path+" with an owner key")
		wantProblem(t, e.do(tc.method, tc.path, "", body), 401, "unauthorized", "", tc.path+" without a token")
		wantProblem(t, e.do(tc.method, tc.path, adminToken+"x", body), 401, "unauthorized", "", tc.path+" with a wrong token")
	}
	if r := e.do("GET", "/v1/admin/tenants/acme", adminToken, nil); r.json()["suspended"] != false {
		t.Errorf("a refused PATCH suspended the tenant: %s", r.body)
	}
	wantProblem(t, e.do("GET", "/v1/admin/tenants/nope", adminToken, nil), 404, "not_found", "", "unknown tenant")
	wantProblem(t, e.do("PATCH", "/v1/admin/tenants/acme", adminToken, map[string]any{"plan": "gold"}), 400, "invalid", "plan", "unknown plan")
	wantProblem(t, e.do("PATCH", "/v1/admin/tenants/acme", adminToken, map[string]any{"quotas": map[string]any{"max_wings": 1}}), 400, "invalid", "quotas.max_wings", "unknown quota")
	// The operator token is for the admin API only.
	wantProblem(t, e.do("POST", "/v1/tenants", adminToken, map[string]string{"slug": "ops"}), 403, "forbidden", "", "operator creates a tenant")
	want(t, e.do("GET", "/v1/tenants/acme", adminToken, nil), 404, "operator on a tenant route")
}

// TestAdminAPI: search with usage, stats, audited impersonation that
// reaches one tenant for 15 minutes, deletion.
func TestAdminAPI(t *testing.T) {
	e := newEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	e.mustTenant(u, "globex")
	e.mustDevice(u.token, "acme", "d1")
	e.mustDevice(u.token, "acme", "d2")
	if _, err := e.store.AddUsage(context.Background(), []tenants.UsageDelta{{Tenant: "acme", Hour: e.clock.Now(), Usage: tenants.Usage{MessagesIn: 40, MessagesOut: 2}}}); err != nil {
		t.Fatal(err)
	}
	r := e.do("GET", "/v1/admin/tenants?q=ACM", adminToken, nil)
	want(t, r, 200, "search tenants")
	items := r.json()["items"].([]any)
	if len(items) != 1 {
		t.Fatalf("search acm: %s", r.body)
	}
	if a := items[0].(map[string]any); a["slug"] != "acme" || a["devices"] != float64(2) || a["messages_this_month"] != float64(42) {
		t.Errorf("acme as listed: %v", a)
	}
	if r := e.do("GET", "/v1/admin/tenants", adminToken, nil); len(r.json()["items"].([]any)) != 2 {
		t.Errorf("all tenants: %s", r.body)
	}
	r = e.do("GET", "/v1/admin/stats", adminToken, nil)
	want(t, r, 200, "stats")
	if m := r.json(); m["tenants"] != float64(2) || m["devices"] != float64(2) || m["messages_this_month"] != float64(42) ||
		m["tenants_by_plan"].(map[string]any)["free"] != float64(2) || m["connections"] != float64(0) {
		t.Errorf("stats: %s", r.body)
	}

	// Impersonation: a reason is required; the token is an owner of acme
	// only; what it does is audited as the operator's.
	wantProblem(t, e.do("POST", "/v1/admin/tenants/acme/impersonate", adminToken, map[string]string{"reason": " "}), 400, "invalid", "reason", "no reason")
	wantProblem(t, e.do("POST", "/v1/admin/tenants/nope/impersonate", adminToken, map[string]string{"reason": "ticket 42"}), 404, "not_found", "", "unknown tenant")
	r = e.do("POST", "/v1/admin/tenants/acme/impersonate", adminToken, map[string]string{"reason": "ticket 42: devices refused"})
	want(t, r, 201, "impersonate")
	imp := r.str("token")
	want(t, e.do("GET", "/v1/tenants/acme/devices", imp, nil), 200, "impersonating: list devices")
	want(t, e.do("PATCH", "/v1/tenants/acme/devices/d1", imp, map[string]any{"enabled": false}), 200, "impersonating: disable a device")
	want(t, e.do("GET", "/v1/tenants/globex", imp, nil), 404, "impersonating: another tenant")
	wantProblem(t, e.do("GET", "/v1/admin/stats", imp, nil), 403, "forbidden", "", "impersonating: the admin API")
	audit := e.do("GET", "/v1/tenants/acme/audit", u.token, nil).json()["items"].([]any)
	var seen []string
	for _, a := range audit {
		m := a.(map[string]any)
		seen = append(seen, fmt.Sprint(m["action"], " by ", m["actor"], " on ", m["object"]))
	}
	joined := strings.Join(seen, "\n")
	if !strings.Contains(joined, "tenant.impersonate by operator on reason:ticket 42: devices refused") ||
		!strings.Contains(joined, "device.update by operator(impersonating)") {
		t.Errorf("audit log:\n%s", joined)
	}
	// The access log names who acted, by route, never by token.
	logs := e.logs.String()
	for _, want := range []string{`route=/v1/tenants/{tenant}/devices/{device} status=200`, `actor=operator(impersonating)`, `actor=operator`} {
		if !strings.Contains(logs, want) {
			t.Errorf("the access log lacks %s:\n%s", want, logs[max(0, len(logs)-600):])
		}
	}
	if strings.Contains(logs, imp) {
		t.Error("the impersonation token is in the log")
	}
	e.clock.Advance(16 * time.Minute)
	wantProblem(t, e.do("GET", "/v1/tenants/acme/devices", imp, nil), 401, "unauthorized", "", "an expired impersonation token")

	// Deletion.
	want(t, e.do("DELETE", "/v1/admin/tenants/globex", adminToken, nil), 204, "delete a tenant")
	wantProblem(t, e.do("GET", "/v1/admin/tenants/globex", adminToken, nil), 404, "not_found", "", "the deleted tenant")
	wantProblem(t, e.do("DELETE", "/v1/admin/tenants/globex", adminToken, nil), 404, "not_found", "", "delete it twice")
	u2 := e.signup("newcomer")
	wantProblem(t, e.do("POST", "/v1/tenants", u2.token, map[string]string{"slug": "globex"}), 409, "conflict", "", "reuse a deleted tenant's slug")
}

// TestSecretsShownOnce: a device secret, an API key and a password appear in
// the one response that hands them out and nowhere after: not in any later
// response and not in the log.
func TestSecretsShownOnce(t *testing.T) {
	e := newEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	r := e.do("POST", "/v1/tenants/acme/devices", u.token, map[string]string{"name": "d1"})
	secret := r.str("secret")
	r = e.do("POST", "/v1/tenants/acme/devices/d1/secret", u.token, nil)
	rotated := r.str("secret")
	_, key := e.mustKey(u.token, "acme", tenants.RoleAdmin)
	e.bodies = &testenv.Buffer{} // from here on, nothing may show them

	for _, p := range []string{"/v1/tenants/acme/devices", "/v1/tenants/acme/devices/d1", "/v1/tenants/acme/api-keys",
		"/v1/tenants/acme/audit", "/v1/tenants/acme", "/v1/me"} {
		want(t, e.do("GET", p, u.token, nil), 200, p)
		want(t, e.do("GET", p, key, nil), 200, p+" with key")
	}
	want(t, e.do("GET", "/v1/admin/tenants/acme", adminToken, nil), 200, "admin get")
	e.do("POST", "/v1/login", "", map[string]string{"email": u.email, "password": "wrong but long enough"})
	for what, s := range map[string]string{"first device secret": secret, "rotated device secret": rotated, "api key": key} {
		if strings.Contains(e.bodies.String(), s) {
			t.Errorf("the %s appeared in a later response", what)
		}
		if strings.Contains(e.logs.String(), s) {
			t.Errorf("the %s appeared in the log", what)
		}
	}
	for _, s := range []string{"correct horse battery", "wrong but long enough", u.token} {
		if strings.Contains(e.logs.String(), s) {
			t.Errorf("%q appeared in the log", s)
		}
	}
	if !strings.Contains(e.logs.String(), "route=/v1/tenants/{tenant}/devices/{device}") {
		t.Errorf("the log has no request lines to check:\n%s", e.logs.String())
	}
}

// TestBadInput: malformed requests get 4xx problems that say what is wrong.
func TestBadInput(t *testing.T) {
	e := newEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	devices := "/v1/tenants/acme/devices"
	cases := []struct {
		name        string
		body        any
		status      int
		code, field string
		contentType string
	}{
		{"malformed JSON", `{"name": `, 400, "bad_json", "", ""},
		{"not JSON", `name=d1`, 400, "bad_json", "", ""},
		{"empty body", ``, 400, "bad_json", "", ""},
		{"two objects", `{"name":"a"}{"name":"b"}`, 400, "bad_json", "", ""},
		{"array", `[]`, 400, "invalid", "", ""},
		{"wrong type", `{"name": 5}`, 400, "invalid", "name", ""},
		{"unknown field", `{"name":"d1","colour":"red"}`, 400, "unknown_field", "colour", ""},
		{"invalid name", `{"name":"a/b"}`, 400, "invalid", "name", ""},
		{"wildcard name", `{"name":"a+"}`, 400, "invalid", "name", ""},
		{"long name", `{"name":"` + strings.Repeat("x", 129) + `"}`, 400, "invalid", "name", ""},
		{"bad metadata", `{"name":"d1","metadata":{"k":1}}`, 400, "invalid", "metadata", ""},
		{"oversized", `{"name":"d1","metadata":{"k":"` + strings.Repeat("x", 70<<10) + `"}}`, 413, "body_too_large", "", ""},
		{"form content type", `{"name":"d1"}`, 415, "unsupported_media_type", "", "application/x-www-form-urlencoded"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", e.url+devices, strings.NewReader(tc.body.(string)))
			req.Header.Set("Authorization", "Bearer "+u.token)
			ct := "application/json"
			if tc.contentType != "" {
				ct = tc.contentType
			}
			req.Header.Set("Content-Type", ct)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var b strings.Builder
			fmt.Fprint(&b, "")
			buf := make([]byte, 1<<16)
			n, _ := resp.Body.Read(buf)
			r := response{status: resp.StatusCode, header: resp.Header, body: buf[:n]}
			e.validate(req, r)
			wantProblem(t, r, tc.status, tc.code, tc.field, tc.name)
		})
	}
	for _, tc := range []struct {
		path  string
		body  any
		field string
	}{
		{"/v1/tenants", map[string]string{"slug": "Bad_Slug"}, "slug"},
		{"/v1/tenants", map[string]string{"slug": "ab"}, "slug"},
		{"/v1/tenants", map[string]string{"slug": "асме"}, "slug"},
		{"/v1/signup", map[string]string{"email": "nope", "password": "long enough pass"}, "email"},
		{"/v1/signup", map[string]string{"email": "x@example.com", "password": "short"}, "password"},
		{"/v1/tenants/acme/acl/rules", map[string]any{"effect": "allow", "action": "all", "topic": "a/#/b"}, "topic"},
		{"/v1/tenants/acme/acl/rules", map[string]any{"effect": "allow", "action": "all", "topic": "$SYS/#"}, "topic"},
		{"/v1/tenants/acme/acl/check", map[string]any{"device": "d1", "action": "publish", "topic": "a/#"}, "topic"},
		{"/v1/tenants/acme/acl/check", map[string]any{"device": "d1", "action": "all", "topic": "a"}, "action"},
		{"/v1/tenants/acme/api-keys", map[string]any{"name": "k", "role": "root"}, "role"},
	} {
		tok := u.token
		if tc.path == "/v1/signup" {
			tok = ""
		}
		wantProblem(t, e.do("POST", tc.path, tok, tc.body), 400, "invalid", tc.field, fmt.Sprintf("POST %s %v", tc.path, tc.body))
	}
	wantProblem(t, e.do("GET", devices+"?limit=0", u.token, nil), 400, "invalid", "limit", "limit 0")
	wantProblem(t, e.do("GET", devices+"?limit=abc", u.token, nil), 400, "invalid", "limit", "limit abc")
	wantProblem(t, e.do("GET", devices+"?cursor=!!!", u.token, nil), 400, "invalid", "cursor", "bad cursor")
	wantProblem(t, e.do("GET", "/v1/tenants/acme/devices/nope", u.token, nil), 404, "not_found", "", "unknown device")
	wantProblem(t, e.do("POST", "/v1/tenants", u.token, map[string]string{"slug": "acme"}), 409, "conflict", "", "taken slug")
	if r := e.do("GET", "/v1/nope", u.token, nil); r.status != 404 || r.header.Get("Content-Type") != "application/problem+json" {
		t.Errorf("unknown route: got %d %s", r.status, r.body)
	}
	if r := e.do("PUT", devices, u.token, nil); r.status != 405 || r.header.Get("Content-Type") != "application/problem+json" {
		t.Errorf("wrong method: got %d %s", r.status, r.body)
	}
}

// TestDeviceQuota: the max_devices quota is a problem naming the quota.
func TestDeviceQuota(t *testing.T) {
	e := newEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	want(t, e.do("PATCH", "/v1/admin/tenants/acme", adminToken, map[string]any{"quotas": map[string]any{"max_devices": 1}}), 200, "set quota")
	e.mustDevice(u.token, "acme", "d1")
	r := e.do("POST", "/v1/tenants/acme/devices", u.token, map[string]string{"name": "d2"})
	wantProblem(t, r, 403, "quota_exceeded", "", "second device")
	if m := r.json(); m["quota"] != "max_devices" || m["limit"] != float64(1) {
		t.Errorf("quota problem: got %s, want quota max_devices, limit 1", r.body)
	}
}

// TestAPIKeyLimit: a tenant's key past tenants.MaxAPIKeys is a 403
// quota_exceeded naming api_keys and the limit, as other caps are.
func TestAPIKeyLimit(t *testing.T) {
	e := newEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	for i := range tenants.MaxAPIKeys - 1 {
		if _, _, err := e.store.CreateAPIKey(context.Background(), "acme", tenants.APIKeyInput{Name: fmt.Sprintf("k%d", i)}, ""); err != nil {
			t.Fatal(err)
		}
	}
	e.mustKey(u.token, "acme", tenants.RoleViewer)
	r := e.do("POST", "/v1/tenants/acme/api-keys", u.token, map[string]string{"name": "one too many"})
	wantProblem(t, r, 403, "quota_exceeded", "", "a key past the limit")
	if m := r.json(); m["quota"] != "api_keys" || m["limit"] != float64(tenants.MaxAPIKeys) {
		t.Errorf("quota problem: got %s, want quota api_keys, limit %d", r.body, tenants.MaxAPIKeys)
	}
}

// TestConcurrentSlug: two accounts race for one slug over HTTP.
func TestConcurrentSlug(t *testing.T) {
	e := newEnv(t)
	for i := range 5 {
		a, b := e.signup("a"), e.signup("b") // fresh ones: each owns few free tenants
		slug := fmt.Sprintf("race-%d", i)
		var wg sync.WaitGroup
		statuses := make([]int, 2)
		for j, u := range []user{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				statuses[j] = e.do("POST", "/v1/tenants", u.token, map[string]string{"slug": slug}).status
			}()
		}
		wg.Wait()
		if !(statuses[0] == 201 && statuses[1] == 409) && !(statuses[0] == 409 && statuses[1] == 201) {
			t.Fatalf("race for %s: got %v, want one 201 and one 409", slug, statuses)
		}
	}
}

// TestLoginLockout: after five failures in a row an account must wait, even
// with the right password; the wait doubles; it ends by itself.
func TestLoginLockout(t *testing.T) {
	e := newEnv(t)
	u := e.signup("victim")
	right := map[string]string{"email": u.email, "password": "correct horse battery"}
	wrong := map[string]string{"email": u.email, "password": "not the password"}
	for i := range 5 {
		wantProblem(t, e.do("POST", "/v1/login", "", wrong), 401, "unauthorized", "", fmt.Sprintf("failure %d", i+1))
	}
	r := e.do("POST", "/v1/login", "", right)
	wantProblem(t, r, 429, "too_many_attempts", "", "right password while locked")
	if r.header.Get("Retry-After") != "1" {
		t.Errorf("Retry-After: got %q, want 1", r.header.Get("Retry-After"))
	}
	e.clock.Advance(1100 * time.Millisecond)
	wantProblem(t, e.do("POST", "/v1/login", "", wrong), 401, "unauthorized", "", "sixth failure")
	r = e.do("POST", "/v1/login", "", right)
	if r.status != 429 || r.header.Get("Retry-After") != "2" {
		t.Errorf("after the sixth failure: got %d Retry-After %q, want 429 and 2", r.status, r.header.Get("Retry-After"))
	}
	e.clock.Advance(2100 * time.Millisecond)
	want(t, e.do("POST", "/v1/login", "", right), 200, "right password after the wait")
	// A success resets the streak.
	wantProblem(t, e.do("POST", "/v1/login", "", wrong), 401, "unauthorized", "", "failure after success")
	want(t, e.do("POST", "/v1/login", "", right), 200, "one failure does not lock")

	// Unknown emails and wrong passwords get the same answer.
	r1 := e.do("POST", "/v1/login", "", map[string]string{"email": "nobody@example.com", "password": "whatever it is"})
	r2 := e.do("POST", "/v1/login", "", wrong)
	if r1.status != r2.status || r1.str("detail") != r2.str("detail") {
		t.Errorf("unknown email %d %q vs wrong password %d %q: want the same", r1.status, r1.str("detail"), r2.status, r2.str("detail"))
	}
}

// TestLoginHourlyCap: at most 100 failures an hour are evaluated per account,
// however they are spaced.
func TestLoginHourlyCap(t *testing.T) {
	e := newEnv(t)
	u := e.signup("victim")
	wrong := map[string]string{"email": u.email, "password": "not the password"}
	evaluated := 0
	for range 150 {
		r := e.do("POST", "/v1/login", "", wrong)
		if r.status == 401 {
			evaluated++
		}
		e.clock.Advance(20 * time.Second) // past any backoff below the cap
		// Successes reset the streak but not the hourly count.
		if evaluated%4 == 0 {
			e.do("POST", "/v1/login", "", map[string]string{"email": u.email, "password": "correct horse battery"})
		}
	}
	if evaluated > 100 {
		t.Errorf("%d failures evaluated within the hour, want at most 100", evaluated)
	}
	if evaluated < 50 {
		t.Errorf("only %d failures evaluated; the test does not reach the cap", evaluated)
	}
}

// TestSessionTokens: tokens with another algorithm, key, audience or an
// expired time are refused.
func TestSessionTokens(t *testing.T) {
	e := newEnv(t)
	u := e.signup("owner")
	claims := func(exp time.Time) jwt.RegisteredClaims {
		return jwt.RegisteredClaims{Issuer: "roost", Audience: jwt.ClaimStrings{"roost-api"}, Subject: u.id, ExpiresAt: jwt.NewNumericDate(exp)}
	}
	sign := func(m jwt.SigningMethod, key any, c jwt.Claims) string {
		s, err := jwt.NewWithClaims(m, c).SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	good := []byte(strings.Repeat("k", 32))
	future := e.clock.Now().Add(time.Hour)
	none := sign(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claims(future))
	hs512 := sign(jwt.SigningMethodHS512, good, claims(future))
	otherKey := sign(jwt.SigningMethodHS256, []byte(strings.Repeat("x", 32)), claims(future))
	expired := sign(jwt.SigningMethodHS256, good, claims(e.clock.Now().Add(-time.Minute)))
	wrongAud := jwt.RegisteredClaims{Issuer: "roost", Audience: jwt.ClaimStrings{"other"}, Subject: u.id, ExpiresAt: jwt.NewNumericDate(future)}
	noExp := jwt.RegisteredClaims{Issuer: "roost", Audience: jwt.ClaimStrings{"roost-api"}, Subject: u.id}
	for name, tok := range map[string]string{
		"alg none": none, "HS512": hs512, "other key": otherKey, "expired": expired,
		"other audience": sign(jwt.SigningMethodHS256, good, wrongAud), "no expiry": sign(jwt.SigningMethodHS256, good, noExp),
		"garbage": "abc.def.ghi", "api-key shaped": "rk_" + base64.RawURLEncoding.EncodeToString([]byte("nope")),
	} {
		wantProblem(t, e.do("GET", "/v1/me", tok, nil), 401, "unauthorized", "", name)
	}
	// Signed with the right key, but naming no session the server keeps:
	// a session exists only as its record.
	wantProblem(t, e.do("GET", "/v1/me", sign(jwt.SigningMethodHS256, good, claims(future)), nil), 401, "unauthorized", "", "a well-made token of no session")
	want(t, e.do("GET", "/v1/me", u.token, nil), 200, "the session's own token")
	e.clock.Advance(13 * time.Hour)
	wantProblem(t, e.do("GET", "/v1/me", u.token, nil), 401, "unauthorized", "", "a session past its 12h")
}

// TestPagination pages through devices with limit and cursor.
func TestPagination(t *testing.T) {
	e := newEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	for i := range 5 {
		e.mustDevice(u.token, "acme", fmt.Sprintf("d%d", i))
	}
	var names []string
	path := "/v1/tenants/acme/devices?limit=2"
	for range 5 {
		r := e.do("GET", path, u.token, nil)
		want(t, r, 200, path)
		for _, it := range asSlice(r.json()["items"]) {
			names = append(names, it.(map[string]any)["name"].(string))
		}
		next := r.str("next_cursor")
		if next == "" {
			break
		}
		path = "/v1/tenants/acme/devices?limit=2&cursor=" + next
	}
	if got := strings.Join(names, ","); got != "d0,d1,d2,d3,d4" {
		t.Errorf("pages: got %s, want d0..d4", got)
	}
	for range 3 {
		e.do("POST", "/v1/tenants/acme/acl/rules", u.token, map[string]any{"effect": "allow", "action": "publish", "topic": "x"})
	}
	r := e.do("GET", "/v1/tenants/acme/acl/rules?limit=3", u.token, nil)
	r2 := e.do("GET", "/v1/tenants/acme/acl/rules?limit=3&cursor="+r.str("next_cursor"), u.token, nil)
	if len(asSlice(r.json()["items"])) != 3 || len(asSlice(r2.json()["items"])) != 1 || r2.str("next_cursor") != "" {
		t.Errorf("rule pages: got %s then %s", r.body, r2.body)
	}
}

// TestLoginPerAddress: guessing across many accounts from one address is
// slowed too, after twenty failures in a row.
func TestLoginPerAddress(t *testing.T) {
	e := newEnv(t)
	for i := range 20 {
		r := e.do("POST", "/v1/login", "", map[string]string{"email": fmt.Sprintf("user%d@example.com", i), "password": "guess guess guess"})
		wantProblem(t, r, 401, "unauthorized", "", fmt.Sprintf("guess %d", i))
	}
	r := e.do("POST", "/v1/login", "", map[string]string{"email": "fresh@example.com", "password": "guess guess guess"})
	wantProblem(t, r, 429, "too_many_attempts", "", "21st guess from one address")
}

// TestSignupLimit: one address creates at most 30 accounts an hour.
func TestSignupLimit(t *testing.T) {
	e := newEnv(t)
	for i := range 30 {
		r := e.do("POST", "/v1/signup", "", map[string]string{"email": fmt.Sprintf("s%d@example.com", i), "password": "correct horse battery"})
		want(t, r, 201, fmt.Sprintf("signup %d", i))
	}
	r := e.do("POST", "/v1/signup", "", map[string]string{"email": "s30@example.com", "password": "correct horse battery"})
	wantProblem(t, r, 429, "too_many_attempts", "", "31st signup")
	e.clock.Advance(61 * time.Minute)
	for i := 30; i < 35; i++ {
		r := e.do("POST", "/v1/signup", "", map[string]string{"email": fmt.Sprintf("s%d@example.com", i), "password": "correct horse battery"})
		want(t, r, 201, fmt.Sprintf("signup %d an hour later", i))
	}
}

// TestReadyShared: /readyz, which anyone may ask, asks the store once for
// a flood of probes, and its answer is still the store's (503 when the
// store fails, once the answer before is a second old).
func TestReadyShared(t *testing.T) {
	var checks atomic.Int32
	var down atomic.Bool
	e := newEnvWith(t, func(c *api.Config) {
		c.Ready = func(context.Context) error {
			checks.Add(1)
			if down.Load() {
				return errors.New("the store does not answer")
			}
			return nil
		}
	})
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() { want(t, e.do("GET", "/readyz", "", nil), 200, "readyz") })
	}
	wg.Wait()
	if n := checks.Load(); n != 1 {
		t.Errorf("50 probes at once asked the store %d times, want once", n)
	}
	down.Store(true)
	time.Sleep(1100 * time.Millisecond)
	wantProblem(t, e.do("GET", "/readyz", "", nil), 503, "not_ready", "", "the store down")
}
