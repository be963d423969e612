package api_test

import (
	"context"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

func names(r response) []string {
	out := []string{}
	for _, it := range asSlice(r.json()["items"]) {
		out = append(out, it.(map[string]any)["name"].(string))
	}
	return out
}

// TestDeviceGroupsAPI: devices carry groups and metadata; the list filters
// by group and metadata; groups are listed with counts; a viewer reads but
// does not publish; a publish to a group reaches each device on its own
// topic, over a real MQTT connection.
func TestDeviceGroupsAPI(t *testing.T) {
	e := newEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	create := func(body map[string]any) response {
		return e.do("POST", "/v1/tenants/acme/devices", u.token, body)
	}
	r := create(map[string]any{"name": "a", "groups": []string{"ops", "lab", "lab"}, "metadata": map[string]string{"room": "r1", "floor": "2"}})
	want(t, r, 201, "device a")
	if g := asSlice(r.json()["groups"]); len(g) != 2 || g[0] != "lab" || g[1] != "ops" {
		t.Errorf("a's groups: got %v, want [lab ops]", g)
	}
	secretA := r.str("secret")
	want(t, create(map[string]any{"name": "b", "groups": []string{"lab"}, "metadata": map[string]string{"room": "r2"}}), 201, "device b")
	want(t, create(map[string]any{"name": "c", "metadata": map[string]string{"room": "r1"}}), 201, "device c")
	wantProblem(t, create(map[string]any{"name": "d", "groups": []string{"Not/A/Group"}}), 400, "invalid", "groups", "a malformed group")

	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"", []string{"a", "b", "c"}},
		{"?group=lab", []string{"a", "b"}},
		{"?metadata.room=r1", []string{"a", "c"}},
		{"?group=lab&metadata.room=r1", []string{"a"}},
		{"?metadata.room=r1&metadata.floor=2", []string{"a"}},
		{"?metadata.room=" + url.QueryEscape("r1' OR '1'='1"), []string{}},
		{"?group=nobody", []string{}},
	} {
		r := e.do("GET", "/v1/tenants/acme/devices"+tc.query, u.token, nil)
		want(t, r, 200, "list "+tc.query)
		if got := names(r); !slices.Equal(got, tc.want) {
			t.Errorf("devices%s: got %v, want %v", tc.query, got, tc.want)
		}
	}
	wantProblem(t, e.do("GET", "/v1/tenants/acme/devices?group=Bad%2FGroup", u.token, nil), 400, "invalid", "group", "filter by a malformed group")
	wantProblem(t, e.do("GET", "/v1/tenants/acme/devices?metadata.=x", u.token, nil), 400, "invalid", "metadata.", "an empty metadata key")

	r = e.do("GET", "/v1/tenants/acme/groups", u.token, nil)
	want(t, r, 200, "groups")
	items := asSlice(r.json()["items"])
	if len(items) != 2 || items[0].(map[string]any)["name"] != "lab" || items[0].(map[string]any)["devices"] != float64(2) ||
		items[1].(map[string]any)["name"] != "ops" || items[1].(map[string]any)["devices"] != float64(1) {
		t.Errorf("groups: got %s, want lab 2 and ops 1", r.body)
	}

	// a listens on its own topic.
	msgs := make(chan *paho.Publish, 10)
	c, err := e.dialMQTT(t, "acme/a", secretA, "a", paho.ClientConfig{
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			msgs <- pr.Packet
			return true, nil
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/+/in", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	_, viewer := e.mustKey(u.token, "acme", "viewer")
	publish := "/v1/tenants/acme/groups/lab/messages"
	body := map[string]any{"topic": "devices/${device}/in", "payload": "hello", "qos": 1}
	wantProblem(t, e.do("POST", publish, viewer, body), 403, "forbidden", "", "a viewer publishes to a group")
	wantProblem(t, e.do("POST", publish, u.token, map[string]any{"topic": "devices/all", "payload": "x"}), 400, "invalid", "topic", "a topic without ${device}")
	wantProblem(t, e.do("POST", publish, u.token, map[string]any{"topic": "devices/${device}/+", "payload": "x"}), 400, "invalid", "topic", "a wildcard topic")
	wantProblem(t, e.do("POST", publish, u.token, map[string]any{"topic": "$SYS/${device}", "payload": "x"}), 400, "invalid", "topic", "a reserved topic")
	wantProblem(t, e.do("POST", "/v1/tenants/acme/groups/empty/messages", u.token, body), 404, "not_found", "", "a group with no device")
	r = e.do("POST", publish, u.token, body)
	want(t, r, 202, "publish to lab")
	if m := r.json(); m["devices"] != float64(2) || m["published"] != float64(2) || m["stopped"] != nil {
		t.Errorf("group publish: got %s, want 2 of 2", r.body)
	}
	got := map[string]bool{}
	for deadline := time.After(20 * time.Second); len(got) < 2; {
		select {
		case m := <-msgs:
			if string(m.Payload) != "hello" {
				t.Errorf("message on %s: %q, want hello", m.Topic, m.Payload)
			}
			got[m.Topic] = true
		case <-deadline:
			t.Fatalf("messages after the group publish: got %v, want devices/a/in and devices/b/in", got)
		}
	}
	if !got["devices/a/in"] || !got["devices/b/in"] {
		t.Errorf("topics: got %v, want devices/a/in and devices/b/in", got)
	}

	// Over tenant_publish_rate part way: 202 saying where it stopped.
	want(t, e.do("PATCH", "/v1/admin/tenants/acme", adminToken, map[string]any{"quotas": map[string]any{"tenant_publish_rate": 1}}), 200, "rate 1")
	var part response
	for range 20 {
		if r := e.do("POST", publish, u.token, body); r.status == 202 && r.json()["stopped"] != nil {
			part = r
			break
		} else if r.status != 202 && r.status != 429 {
			t.Fatalf("group publish at rate 1: got %d %s", r.status, r.body)
		}
	}
	if part.status == 0 {
		t.Fatal("20 group publishes at tenant_publish_rate=1: none stopped part way")
	}
	if m := part.json(); m["published"] != float64(1) || m["stopped"].(map[string]any)["device"] != "b" || m["stopped"].(map[string]any)["status"] != float64(429) {
		t.Errorf("stopped part way: got %s, want 1 published, stopped at b with 429", part.body)
	}
}
