package api_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// TestDataPlaneRoutes: device status, disconnect and publish over HTTP
// against a real device connected over MQTT.
func TestDataPlaneRoutes(t *testing.T) {
	e := newEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	secret := e.mustDevice(u.token, "acme", "d1")
	status := "/v1/tenants/acme/devices/d1/status"

	r := e.do("GET", status, u.token, nil)
	want(t, r, 200, "status offline")
	if r.json()["online"] != false || len(asSlice(r.json()["connections"])) != 0 {
		t.Errorf("offline status: got %s", r.body)
	}

	msgs := make(chan *paho.Publish, 10)
	discs := make(chan *paho.Disconnect, 1)
	c, err := e.dialMQTT(t, "acme/d1", secret, "d1", paho.ClientConfig{
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			msgs <- pr.Packet
			return true, nil
		}},
		OnServerDisconnect: func(d *paho.Disconnect) { discs <- d },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "cmd/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}

	r = e.do("GET", status, u.token, nil)
	want(t, r, 200, "status online")
	conns := asSlice(r.json()["connections"])
	if r.json()["online"] != true || len(conns) != 1 || conns[0].(map[string]any)["client_id"] != "d1" || r.json()["last_seen_at"] == nil {
		t.Errorf("online status: got %s", r.body)
	}
	// An online device is seen now, by the API's clock.
	e.clock.Advance(time.Hour)
	r = e.do("GET", status, u.token, nil)
	if seen, err := time.Parse(time.RFC3339Nano, r.str("last_seen_at")); err != nil || !seen.Equal(e.clock.Now()) {
		t.Errorf("an online device's last_seen_at: got %s, want %s", r.str("last_seen_at"), e.clock.Now().UTC().Format(time.RFC3339Nano))
	}

	r = e.do("POST", "/v1/tenants/acme/messages", u.token, map[string]any{"topic": "cmd/reboot", "payload": "now", "qos": 1})
	want(t, r, 202, "publish")
	if r.json()["bytes"] != float64(3) {
		t.Errorf("publish answer: %s", r.body)
	}
	expectMsg := func(topic, payload string) {
		t.Helper()
		select {
		case m := <-msgs:
			if m.Topic != topic || string(m.Payload) != payload {
				t.Errorf("got %s %q, want %s %q", m.Topic, m.Payload, topic, payload)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no message on %s", topic)
		}
	}
	expectMsg("cmd/reboot", "now")
	want(t, e.do("POST", "/v1/tenants/acme/messages", u.token, map[string]any{"topic": "cmd/bin", "payload": "AAEC/w==", "encoding": "base64"}), 202, "base64 publish")
	expectMsg("cmd/bin", "\x00\x01\x02\xff")

	for _, bad := range []struct {
		body  map[string]any
		field string
	}{
		{map[string]any{"topic": "cmd/+", "payload": "x"}, "topic"},
		{map[string]any{"topic": "$SYS/x", "payload": "x"}, "topic"},
		{map[string]any{"topic": "cmd/x", "payload": "x", "qos": 3}, "qos"},
		{map[string]any{"topic": "cmd/x", "payload": "%%%", "encoding": "base64"}, "payload"},
		{map[string]any{"topic": "cmd/x", "payload": "x", "encoding": "hex"}, "encoding"},
	} {
		wantProblem(t, e.do("POST", "/v1/tenants/acme/messages", u.token, bad.body), 400, "invalid", bad.field, "publish "+bad.field)
	}
	big := strings.Repeat("x", 129*1024)
	r = e.do("POST", "/v1/tenants/acme/messages", u.token, map[string]any{"topic": "cmd/x", "payload": big})
	wantProblem(t, r, 403, "quota_exceeded", "", "publish over max_packet_size")
	if r.json()["quota"] != "max_packet_size" {
		t.Errorf("quota problem: %s", r.body)
	}

	r = e.do("POST", "/v1/tenants/acme/devices/d1/disconnect", u.token, nil)
	want(t, r, 200, "disconnect")
	if r.json()["disconnected"] != float64(1) {
		t.Errorf("disconnect: got %s", r.body)
	}
	select {
	case d := <-discs:
		if d.ReasonCode != 0x98 {
			t.Errorf("DISCONNECT reason 0x%02x, want 0x98", d.ReasonCode)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the device was not disconnected")
	}
	wantProblem(t, e.do("GET", "/v1/tenants/acme/devices/ghost/status", u.token, nil), 404, "not_found", "", "status of an unknown device")
	wantProblem(t, e.do("POST", "/v1/tenants/acme/devices/ghost/disconnect", u.token, nil), 404, "not_found", "", "disconnect of an unknown device")
}

// TestEventsRoute: a tenant reads its own recent events, newest first,
// filtered by type; another tenant sees none of them.
func TestEventsRoute(t *testing.T) {
	e := newEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	e.mustTenant(u, "other")
	secret := e.mustDevice(u.token, "acme", "d1")
	dial := func(password string) error {
		c, err := e.dialMQTT(t, "acme/d1", password, "d1", paho.ClientConfig{})
		if err == nil {
			c.Disconnect(&paho.Disconnect{})
		}
		return err
	}
	if dial("wrong") == nil {
		t.Fatal("a wrong secret was accepted")
	}
	if err := dial(secret); err != nil {
		t.Fatal(err)
	}
	var types []string
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		r := e.do("GET", "/v1/tenants/acme/events", u.token, nil)
		want(t, r, 200, "events")
		types = nil
		for _, it := range asSlice(r.json()["items"]) {
			types = append(types, it.(map[string]any)["type"].(string))
		}
		if len(types) >= 3 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if strings.Join(types, ",") != "disconnected,connected,auth_failed" {
		t.Errorf("events newest first: %v", types)
	}
	r := e.do("GET", "/v1/tenants/acme/events?type=auth_failed&limit=5", u.token, nil)
	want(t, r, 200, "events by type")
	if items := asSlice(r.json()["items"]); len(items) != 1 || items[0].(map[string]any)["device"] != "d1" {
		t.Errorf("auth_failed events: %s", r.body)
	}
	want(t, e.do("GET", "/v1/tenants/acme/events?type=nonsense", u.token, nil), 400, "unknown type")
	r = e.do("GET", "/v1/tenants/other/events", u.token, nil)
	want(t, r, 200, "another tenant's events")
	if items := asSlice(r.json()["items"]); len(items) != 0 {
		t.Errorf("another tenant sees events: %s", r.body)
	}
}

// TestUsageRoute: messages published over MQTT and the API show in the
// tenant's usage within 5 seconds, exactly, in hourly and daily buckets;
// another tenant's usage is its own.
func TestUsageRoute(t *testing.T) {
	e := newEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	e.mustTenant(u, "other")
	secret := e.mustDevice(u.token, "acme", "d1")
	c, err := e.dialMQTT(t, "acme/d1", secret, "d1", paho.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(&paho.Disconnect{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, p := range []string{"a", "bb", "ccc"} {
		if _, err := c.Publish(ctx, &paho.Publish{Topic: "t", QoS: 1, Payload: []byte(p)}); err != nil {
			t.Fatal(err)
		}
	}
	want(t, e.do("POST", "/v1/tenants/acme/messages", u.token, map[string]any{"topic": "t", "payload": "dddd", "qos": 0}), 202, "publish")

	var item map[string]any
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		r := e.do("GET", "/v1/tenants/acme/usage", u.token, nil)
		want(t, r, 200, "usage")
		if items := asSlice(r.json()["items"]); len(items) == 1 {
			item = items[0].(map[string]any)
			if item["messages_in"] == float64(4) {
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if item == nil || item["messages_in"] != float64(4) || item["bytes_in"] != float64(10) || item["peak_connections"] != float64(1) {
		t.Fatalf("usage within 5s: %v", item)
	}
	r := e.do("GET", "/v1/tenants/acme/usage?granularity=day&from="+time.Now().UTC().Add(-72*time.Hour).Format(time.RFC3339), u.token, nil)
	want(t, r, 200, "daily usage")
	if items := asSlice(r.json()["items"]); len(items) != 1 || items[0].(map[string]any)["messages_in"] != float64(4) {
		t.Errorf("daily usage: %s", r.body)
	}
	r = e.do("GET", "/v1/tenants/other/usage", u.token, nil)
	want(t, r, 200, "other's usage")
	if items := asSlice(r.json()["items"]); len(items) != 0 {
		t.Errorf("another tenant's usage shows acme's messages: %s", r.body)
	}
	for _, q := range []string{"granularity=week", "from=yesterday", "from=2020-01-01T00:00:00Z", "from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z"} {
		want(t, e.do("GET", "/v1/tenants/acme/usage?"+q, u.token, nil), 400, q)
	}
}

// dialMQTT connects an MQTT 5 client to the env's data plane with a clean
// session; cfg may set handlers.
func (e *env) dialMQTT(t *testing.T, username, password, clientID string, cfg paho.ClientConfig) (*paho.Client, error) {
	t.Helper()
	conn, err := net.Dial("tcp", e.mqttAddr)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Conn = conn
	c := paho.NewClient(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = c.Connect(ctx, &paho.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: true, Username: username, UsernameFlag: true,
		Password: []byte(password), PasswordFlag: true})
	return c, err
}

// TestPublishQuotas: a message published through the API takes from the
// same quotas as one from a device: a retained one from max_retained (403),
// each from tenant_publish_rate (429 with Retry-After), and either hit is a
// quota_exceeded event. Another tenant's allowance is untouched.
func TestPublishQuotas(t *testing.T) {
	e := newEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	e.mustTenant(u, "other")
	want(t, e.do("PATCH", "/v1/admin/tenants/acme", adminToken, map[string]any{
		"quotas": map[string]any{"max_retained": 1, "tenant_publish_rate": 5},
	}), 200, "set acme's quotas")

	publish := func(tenant, topic string, retain bool) response {
		return e.do("POST", "/v1/tenants/"+tenant+"/messages", u.token, map[string]any{"topic": topic, "payload": "x", "retain": retain})
	}
	want(t, publish("acme", "cfg/a", true), 202, "first retained message")
	r := publish("acme", "cfg/b", true)
	wantProblem(t, r, 403, "quota_exceeded", "", "a second retained topic over max_retained=1")
	if r.json()["quota"] != "max_retained" {
		t.Errorf("quota problem: %s", r.body)
	}
	want(t, publish("acme", "cfg/a", true), 202, "replacing the retained message")

	var limited response
	for range 20 {
		if r := publish("acme", "t", false); r.status != 202 {
			limited = r
			break
		}
	}
	if limited.status == 0 {
		t.Fatal("20 publishes at once with tenant_publish_rate=5: none refused")
	}
	wantProblem(t, limited, 429, "quota_exceeded", "", "over tenant_publish_rate")
	if limited.json()["quota"] != "tenant_publish_rate" || limited.header.Get("Retry-After") == "" {
		t.Errorf("rate problem: %s (Retry-After %q)", limited.body, limited.header.Get("Retry-After"))
	}
	for range 6 {
		want(t, publish("other", "t", true), 202, "another tenant's publish")
	}

	// Events are stored off the publish path: wait for them.
	seen := map[any]bool{}
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline) && !(seen["max_retained"] && seen["tenant_publish_rate"]); time.Sleep(20 * time.Millisecond) {
		r = e.do("GET", "/v1/tenants/acme/events?type=quota_exceeded", u.token, nil)
		want(t, r, 200, "events")
		for _, ev := range asSlice(r.json()["items"]) {
			seen[ev.(map[string]any)["quota"]] = true
		}
	}
	if !seen["max_retained"] || !seen["tenant_publish_rate"] {
		t.Errorf("quota_exceeded events: got %s, want max_retained and tenant_publish_rate", r.body)
	}
}
