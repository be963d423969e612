package web_test

import (
	"context"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

// TestRetainedPage: the retained page lists the tenant's retained
// messages by filter, refuses a reserved filter next to the field, lists
// no $-topic through #, and lets an admin (not a viewer) clear one.
func TestRetainedPage(t *testing.T) {
	s := newStack(t)
	owner, viewer := s.browser(), s.browser()
	owner.signup("owner")
	viewerEmail := viewer.signup("viewer")
	owner.tenant("acme")
	owner.get("/tenants/acme/members")
	if a := owner.post("/tenants/acme/members", url.Values{"email": {viewerEmail}, "role": {"viewer"}}); a.status != http.StatusSeeOther {
		t.Fatalf("add the viewer: %d", a.status)
	}
	for _, m := range []dataplane.Message{
		{Topic: "lights/a", Payload: []byte("on <b>"), Retain: true},
		{Topic: "doors/a", Payload: []byte("shut"), Retain: true},
		{Topic: "$local/x", Payload: []byte("dollar"), Retain: true},
	} {
		if err := s.hub.Publish(context.Background(), "acme", m); err != nil {
			t.Fatal(err)
		}
	}
	a := viewer.get("/tenants/acme/retained")
	if a.status != http.StatusOK || !strings.Contains(a.body, "lights/a") || !strings.Contains(a.body, "doors/a") || strings.Contains(a.body, "$local/x") {
		t.Fatalf("retained page: %d, want lights/a and doors/a and no $-topic:\n%s", a.status, a.body)
	}
	if !strings.Contains(a.body, "on &lt;b&gt;") {
		t.Error("the payload preview is not escaped")
	}
	if strings.Contains(a.body, "/tenants/acme/retained/delete") {
		t.Error("the viewer's page offers to delete")
	}
	if a = viewer.get("/tenants/acme/retained?filter=" + url.QueryEscape("lights/#")); !strings.Contains(a.body, "lights/a") || strings.Contains(a.body, "doors/a") {
		t.Errorf("lights/# shows the wrong messages:\n%s", a.body)
	}
	if a = viewer.get("/tenants/acme/retained?filter=" + url.QueryEscape("$SYS/#")); a.status != http.StatusBadRequest || !strings.Contains(a.body, "reserved") {
		t.Errorf("a reserved filter: %d, want 400 saying reserved", a.status)
	}
	if a = viewer.post("/tenants/acme/retained/delete", url.Values{"topic": {"lights/a"}}); a.status != http.StatusForbidden {
		t.Errorf("the viewer deletes: %d, want 403", a.status)
	}
	owner.get("/tenants/acme/retained")
	if a = owner.post("/tenants/acme/retained/delete", url.Values{"topic": {"lights/#"}}); a.status != http.StatusBadRequest {
		t.Errorf("delete by wildcard: %d, want 400", a.status)
	}
	if a = owner.post("/tenants/acme/retained/delete", url.Values{"topic": {"lights/a"}, "filter": {"lights/#"}}); a.status != http.StatusSeeOther ||
		a.location != "/tenants/acme/retained?filter=lights%2F%23&done=retained-deleted" {
		t.Fatalf("the owner deletes: %d %s", a.status, a.location)
	}
	if a = owner.get(a.location); strings.Contains(a.body, "lights/a") || !strings.Contains(a.body, "Retained message cleared") {
		t.Errorf("after the delete the page still lists lights/a, or says nothing")
	}
}

// TestDeviceSessionSection: the device page shows each session's
// subscriptions and queue; an admin purges the queue.
func TestDeviceSessionSection(t *testing.T) {
	s := newStack(t)
	b := s.browser()
	b.signup("owner")
	b.tenant("acme")
	secret := b.device("acme", "d1", "")
	if a := b.get("/tenants/acme/devices/d1"); !strings.Contains(a.body, "No session") {
		t.Errorf("a device never connected: no 'No session'")
	}
	conn, err := net.DialTimeout("tcp", s.mqttAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Connect(ctx, &paho.Connect{ClientID: "d1", KeepAlive: 30, CleanStart: false, Username: "acme/d1", UsernameFlag: true,
		Password: []byte(secret), PasswordFlag: true, Properties: &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(3600)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "cmd/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	a := b.get("/tenants/acme/devices/d1")
	if !strings.Contains(a.body, `id="session-d1"`) || !strings.Contains(a.body, "<code>cmd/#</code>") || !strings.Contains(a.body, "persistent") {
		t.Fatalf("the device page lacks the session:\n%s", a.body)
	}
	c.Disconnect(&paho.Disconnect{})
	for _, p := range []string{"one", "two"} {
		if err := s.hub.Publish(context.Background(), "acme", dataplane.Message{Topic: "cmd/x", Payload: []byte(p), QoS: 1}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for a = b.get("/tenants/acme/devices/d1"); !strings.Contains(a.body, "Queue: 2 messages"); a = b.get("/tenants/acme/devices/d1") {
		if time.Now().After(deadline) {
			t.Fatalf("the device page does not show 2 queued messages:\n%s", a.body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if a = b.post("/tenants/acme/devices/d1/queue/purge", nil); a.status != http.StatusSeeOther {
		t.Fatalf("purge: %d", a.status)
	}
	if a = b.get(a.location); !strings.Contains(a.body, "Queue: 0 messages") || !strings.Contains(a.body, "queued messages were dropped") {
		t.Errorf("after the purge:\n%s", a.body)
	}
}

// TestDeviceCommandForm: an admin sends a command from the device page
// and reads the device's reply there; a bad name is said next to its
// field; a device not connected is said so.
func TestDeviceCommandForm(t *testing.T) {
	s := newStack(t)
	b := s.browser()
	b.signup("owner")
	b.tenant("acme")
	secret := b.device("acme", "d1", "")
	b.device("acme", "d2", "")
	cmds := make(chan *paho.Publish, 10)
	conn, err := net.DialTimeout("tcp", s.mqttAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn, OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
		cmds <- pr.Packet
		return true, nil
	}}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Connect(ctx, &paho.Connect{ClientID: "d1", KeepAlive: 30, CleanStart: true, Username: "acme/d1", UsernameFlag: true,
		Password: []byte(secret), PasswordFlag: true}); err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(&paho.Disconnect{})
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "$roost/commands/d1/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	go func() {
		m := <-cmds
		rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c.Publish(rctx, &paho.Publish{Topic: m.Properties.ResponseTopic, QoS: 1, Payload: []byte("rebooting <now>"),
			Properties: &paho.PublishProperties{CorrelationData: m.Properties.CorrelationData}})
	}()
	b.get("/tenants/acme/devices/d1")
	a := b.post("/tenants/acme/devices/d1/command", url.Values{"command_name": {"reboot"}, "command_payload": {"soon"}, "command_timeout": {"15"}})
	if a.status != http.StatusOK || !strings.Contains(a.body, "d1 replied in") || !strings.Contains(a.body, "rebooting &lt;now&gt;") {
		t.Fatalf("command from the console: %d\n%s", a.status, a.body)
	}
	if a = b.post("/tenants/acme/devices/d1/command", url.Values{"command_name": {"a/b"}}); a.status != http.StatusBadRequest || !strings.Contains(a.body, `id="command_name" name="command_name" required maxlength="64" placeholder="reboot" value="a/b" aria-invalid="true"`) {
		t.Errorf("a bad name: %d, want 400 with the field marked", a.status)
	}
	if a = b.post("/tenants/acme/devices/d1/command", url.Values{"command_name": {"x"}, "command_timeout": {"600"}}); a.status != http.StatusBadRequest {
		t.Errorf("a timeout of 600 s: %d, want 400", a.status)
	}
	if a = b.post("/tenants/acme/devices/d2/command", url.Values{"command_name": {"reboot"}}); a.status != http.StatusOK || !strings.Contains(a.body, "d2 is not connected") {
		t.Errorf("a command to an offline device: %d", a.status)
	}
	// The one command sent is audited, by the person who sent it.
	es, _, err := s.store.AuditWhere(context.Background(), "acme", tenants.AuditFilter{Action: "device.command"}, tenants.Page{})
	if err != nil || len(es) != 1 || !strings.HasPrefix(es[0].Object, "device:d1/command:reboot/") || !strings.HasPrefix(es[0].Actor, "account:") {
		t.Errorf("device.command audit entries %+v (%v), want d1's reboot by an account", es, err)
	}
}
