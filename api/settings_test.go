package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/roosthub/roost/tenants"
)

// TestTenantDenyAction: admins and owners set deny_action through PATCH
// of the tenant (its name and queue policy stay the owners'); a bad value
// is a problem naming the field; the change is audited; another tenant's
// setting is its own. Every answer is checked against openapi.yaml.
func TestTenantDenyAction(t *testing.T) {
	e := newEnv(t)
	owner, admin, viewer := e.signup("owner"), e.signup("admin"), e.signup("viewer")
	e.mustTenant(owner, "acme")
	e.mustTenant(owner, "other")
	want(t, e.do("POST", "/v1/tenants/acme/members", owner.token, map[string]string{"email": admin.email, "role": "admin"}), 202, "add admin")
	want(t, e.do("POST", "/v1/tenants/acme/members", owner.token, map[string]string{"email": viewer.email, "role": "viewer"}), 202, "add viewer")
	adminKeyID, adminKey := e.mustKey(owner.token, "acme", tenants.RoleAdmin)
	_, viewerKey := e.mustKey(owner.token, "acme", tenants.RoleViewer)
	deny := func(tok string) string {
		t.Helper()
		r := e.do("GET", "/v1/tenants/acme", tok, nil)
		want(t, r, 200, "get tenant")
		return r.str("deny_action")
	}
	if got := deny(owner.token); got != "ignore" {
		t.Errorf("a new tenant's deny_action: %q, want ignore", got)
	}

	for who, tok := range map[string]string{"admin": admin.token, "admin key": adminKey, "owner": owner.token} {
		for _, v := range []string{"disconnect", "ignore"} {
			r := e.do("PATCH", "/v1/tenants/acme", tok, map[string]any{"deny_action": v})
			want(t, r, 200, who+" sets deny_action "+v)
			if r.str("deny_action") != v || deny(viewer.token) != v {
				t.Errorf("%s set deny_action %s: answer %s, read back %q", who, v, r.body, deny(viewer.token))
			}
		}
	}

	// Renaming and the queue policy stay the owners': nothing of a refused
	// update changes.
	for _, body := range []map[string]any{
		{"name": "Renamed"}, {"queue_policy": "drop_newest"}, {"name": "Renamed", "deny_action": "disconnect"},
	} {
		for who, tok := range map[string]string{"admin": admin.token, "admin key": adminKey} {
			wantProblem(t, e.do("PATCH", "/v1/tenants/acme", tok, body), 403, "forbidden", "", who+" PATCH "+toJSON(body))
		}
	}
	for who, tok := range map[string]string{"viewer": viewer.token, "viewer key": viewerKey} {
		wantProblem(t, e.do("PATCH", "/v1/tenants/acme", tok, map[string]any{"deny_action": "disconnect"}), 403, "forbidden", "", who+" sets deny_action")
	}
	r := e.do("GET", "/v1/tenants/acme", owner.token, nil)
	if r.str("deny_action") != "ignore" || r.str("name") != "acme" || r.str("queue_policy") != "drop_oldest" {
		t.Errorf("after refused updates: %s", r.body)
	}

	// Bad input is a problem naming the field.
	for _, tc := range []struct {
		body        map[string]any
		code, field string
	}{
		{map[string]any{"deny_action": "explode"}, "invalid", "deny_action"},
		{map[string]any{"deny_action": "Ignore"}, "invalid", "deny_action"},
		{map[string]any{"deny_action": ""}, "invalid", "deny_action"},
		{map[string]any{"deny_action": 1}, "invalid", "deny_action"},
		{map[string]any{"deny_action": []string{"ignore"}}, "invalid", "deny_action"},
		{map[string]any{"deny_actions": "ignore"}, "unknown_field", "deny_actions"},
	} {
		for who, tok := range map[string]string{"owner": owner.token, "admin": admin.token} {
			wantProblem(t, e.do("PATCH", "/v1/tenants/acme", tok, tc.body), 400, tc.code, tc.field, who+" PATCH "+toJSON(tc.body))
		}
	}

	// Another tenant's is its own.
	want(t, e.do("PATCH", "/v1/tenants/other", owner.token, map[string]any{"deny_action": "disconnect"}), 200, "other: disconnect")
	if got := deny(owner.token); got != "ignore" {
		t.Errorf("acme's deny_action after other's changed: %q", got)
	}

	// Audited, by whoever changed it.
	actors := map[string]int{}
	for _, it := range asSlice(e.do("GET", "/v1/tenants/acme/audit?limit=200", owner.token, nil).json()["items"]) {
		if a := it.(map[string]any); a["action"] == "tenant.update" {
			actors[a["actor"].(string)]++
		}
	}
	if actors["account:"+admin.id] != 2 || actors["api_key:"+adminKeyID] != 2 || actors["account:"+owner.id] != 2 {
		t.Errorf("tenant.update audit entries by actor: %v, want 2 each by the admin, the admin key and the owner", actors)
	}
}

// TestDenyActionReachesDevices: deny_action set through the API reaches a
// device connected before the change, without a reconnect: under
// disconnect its denied QoS 1 publish closes its (3.1.1) connection, under
// ignore it is acknowledged.
func TestDenyActionReachesDevices(t *testing.T) {
	e := newEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	want(t, e.do("POST", "/v1/tenants/acme/acl/rules", u.token, map[string]any{"effect": "deny", "action": "publish", "topic": "secret/#", "position": 0}), 201, "deny rule")
	connect := func(name string) (paho3.Client, chan error) {
		t.Helper()
		secret := e.mustDevice(u.token, "acme", name)
		lost := make(chan error, 1)
		c := paho3.NewClient(paho3.NewClientOptions().AddBroker("tcp://" + e.mqttAddr).SetUsername("acme/" + name).SetPassword(secret).
			SetClientID(name).SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).
			SetConnectionLostHandler(func(_ paho3.Client, err error) { lost <- err }))
		if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("connect %s: %v", name, tok.Error())
		}
		t.Cleanup(func() { c.Disconnect(100) })
		return c, lost
	}
	acked := func(c paho3.Client) bool {
		tok := c.Publish("secret/x", 1, false, "denied")
		return tok.WaitTimeout(2*time.Second) && tok.Error() == nil
	}

	before, lost := connect("before")
	if !acked(before) {
		t.Fatal("ignore: a denied QoS 1 publish was not acknowledged")
	}
	want(t, e.do("PATCH", "/v1/tenants/acme", u.token, map[string]any{"deny_action": "disconnect"}), 200, "disconnect")
	// The change reaches the broker within moments: publish until it does.
	deadline := time.Now().Add(5 * time.Second)
	for closed := false; !closed; {
		if time.Now().After(deadline) {
			t.Fatal("disconnect: a denied publish of a device connected before the change never closed it")
		}
		before.Publish("secret/x", 1, false, "denied")
		select {
		case <-lost:
			closed = true
		case <-time.After(200 * time.Millisecond):
		}
	}

	// Back to ignore: a device connected under disconnect is acknowledged.
	during, lost := connect("during")
	want(t, e.do("PATCH", "/v1/tenants/acme", u.token, map[string]any{"deny_action": "ignore"}), 200, "ignore")
	// Probe with throwaway devices until the broker has it, so that
	// "during" is only asked once it applies.
	applied := false
	for i := 0; i < 25 && !applied; i++ {
		probe, _ := connect(fmt.Sprintf("probe%d", i))
		applied = acked(probe)
	}
	if !applied {
		t.Fatal("ignore: never applied")
	}
	if !acked(during) {
		t.Error("after the change back to ignore, a denied publish of a device connected before it was not acknowledged")
	}
	select {
	case err := <-lost:
		t.Errorf("ignore: the connection from before the change ended: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
}

// TestMaxKeepaliveQuota: max_keepalive is a quota like the others: each
// plan's value, an operator override, and a device's CONNACK announcing
// it.
func TestMaxKeepaliveQuota(t *testing.T) {
	e := newEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	secret := e.mustDevice(u.token, "acme", "d1")
	r := e.do("GET", "/v1/tenants/acme/quotas", u.token, nil)
	want(t, r, 200, "quotas")
	if got := r.json()["quotas"].(map[string]any)["max_keepalive"]; got != float64(tenants.PlanQuotas(tenants.PlanFree).MaxKeepalive) || got != float64(300) {
		t.Errorf("free plan's max_keepalive: %v, want 300", got)
	}
	for plan, v := range map[string]float64{"pro": 600, "business": 1200, "enterprise": 3600} {
		want(t, e.do("PATCH", "/v1/admin/tenants/acme", adminToken, map[string]any{"plan": plan}), 200, plan)
		if got := e.do("GET", "/v1/tenants/acme/quotas", u.token, nil).json()["quotas"].(map[string]any)["max_keepalive"]; got != v {
			t.Errorf("%s plan's max_keepalive: %v, want %v", plan, got, v)
		}
	}
	want(t, e.do("PATCH", "/v1/admin/tenants/acme", adminToken, map[string]any{"quotas": map[string]any{"max_keepalive": 45}}), 200, "override")
	wantProblem(t, e.do("PATCH", "/v1/admin/tenants/acme", adminToken, map[string]any{"quotas": map[string]any{"max_keepalive": -1}}), 400, "invalid", "quotas.max_keepalive", "a negative max_keepalive")

	conn, err := net.Dial("tcp", e.mqttAddr)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ca, err := c.Connect(ctx, &paho.Connect{ClientID: "d1", KeepAlive: 0, CleanStart: true, Username: "acme/d1", UsernameFlag: true,
		Password: []byte(secret), PasswordFlag: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(&paho.Disconnect{})
	if ka := ca.Properties.ServerKeepAlive; ka == nil || *ka != 45 {
		t.Errorf("CONNACK Server Keep Alive %v for a client asking none, want 45", ka)
	}
}

func toJSON(v any) string { b, _ := json.Marshal(v); return string(b) }
