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

	"github.com/roosthub/roost/tenants"
)

// TestConsoleDenyAction: the tenant's settings page shows its deny action
// to every member; admins and owners change it (audited, as through the
// API), a viewer is offered no form and refused; a bad value is said next
// to the field; another tenant's is its own.
func TestConsoleDenyAction(t *testing.T) {
	s := newStack(t)
	owner, admin, viewer := s.browser(), s.browser(), s.browser()
	owner.signup("owner")
	adminEmail, viewerEmail := admin.signup("admin"), viewer.signup("viewer")
	owner.tenant("acme")
	owner.tenant("other")
	owner.get("/tenants/acme/members")
	for email, role := range map[string]string{adminEmail: "admin", viewerEmail: "viewer"} {
		if a := owner.post("/tenants/acme/members", url.Values{"email": {email}, "role": {role}}); a.status != http.StatusSeeOther {
			t.Fatalf("add %s: %d", role, a.status)
		}
	}
	denyAction := func(tenant string) tenants.DenyAction {
		t.Helper()
		tn, err := s.store.Tenant(t.Context(), tenant)
		if err != nil {
			t.Fatal(err)
		}
		return tn.DenyAction
	}

	a := viewer.get("/tenants/acme/settings")
	if a.status != http.StatusOK || !strings.Contains(a.body, `<dd id="deny-action">ignore</dd>`) {
		t.Fatalf("the viewer's settings page: %d, deny action not shown as ignore", a.status)
	}
	if strings.Contains(a.body, `name="deny_action"`) {
		t.Error("the viewer's settings page offers the form")
	}
	if a := viewer.post("/tenants/acme/settings", url.Values{"deny_action": {"disconnect"}}); a.status != http.StatusForbidden {
		t.Errorf("the viewer sets the deny action: %d, want 403", a.status)
	}

	for who, b := range map[string]*browser{"admin": admin, "owner": owner} {
		for _, v := range []tenants.DenyAction{tenants.DenyDisconnect, tenants.DenyIgnore} {
			page := b.get("/tenants/acme/settings")
			if !strings.Contains(page.body, `<select id="deny_action" name="deny_action">`) {
				t.Fatalf("the %s's settings page has no deny action form", who)
			}
			a := b.post("/tenants/acme/settings", url.Values{"deny_action": {string(v)}})
			if a.status != http.StatusSeeOther || a.location != "/tenants/acme/settings?done=saved" {
				t.Fatalf("the %s sets %s: %d %s", who, v, a.status, a.location)
			}
			if got := denyAction("acme"); got != v {
				t.Errorf("after the %s set %s: %s", who, v, got)
			}
			if page := b.get(a.location); !strings.Contains(page.body, "Saved.") || !strings.Contains(page.body, `<option selected>`+string(v)+`</option>`) {
				t.Errorf("the page after the %s set %s does not show it", who, v)
			}
		}
	}

	a = owner.post("/tenants/acme/settings", url.Values{"deny_action": {"explode"}})
	if a.status != http.StatusBadRequest || !strings.Contains(a.body, "must be ignore or disconnect") || !strings.Contains(a.body, `class="field-error"`) {
		t.Errorf("a bad deny action: %d, no message next to the field", a.status)
	}
	if got, other := denyAction("acme"), denyAction("other"); got != tenants.DenyIgnore || other != tenants.DenyIgnore {
		t.Errorf("after a refused value: acme %s, other %s, want ignore both", got, other)
	}

	// A denied publish shows on the events page, with its topic.
	if a := owner.post("/tenants/acme/acl", url.Values{"effect": {"deny"}, "action": {"publish"}, "topic": {"secret/#"}, "device": {"*"}, "position": {"0"}}); a.status != http.StatusSeeOther {
		t.Fatalf("deny rule: %d", a.status)
	}
	secret := owner.device("acme", "d1", "")
	conn, err := net.Dial("tcp", s.mqttAddr)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := c.Connect(ctx, &paho.Connect{ClientID: "d1", KeepAlive: 30, CleanStart: true, Username: "acme/d1", UsernameFlag: true, Password: []byte(secret), PasswordFlag: true}); err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(&paho.Disconnect{})
	if r, _ := c.Publish(ctx, &paho.Publish{Topic: "secret/plans", QoS: 1, Payload: []byte("x")}); r == nil || r.ReasonCode != 0x87 {
		t.Fatalf("denied publish answered %+v, want 0x87", r)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		page := viewer.get("/tenants/acme/events?type=publish_denied")
		if strings.Contains(page.body, "<td>publish_denied</td><td>d1</td>") && strings.Contains(page.body, "<code>secret/plans</code>") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the events page does not show the denied publish:\n%s", page.body)
		}
	}

	es, _, err := s.store.Audit(t.Context(), "acme", tenants.Page{Limit: 200})
	if err != nil {
		t.Fatal(err)
	}
	updates := 0
	for _, e := range es {
		if e.Action == "tenant.update" {
			updates++
		}
	}
	if updates != 4 {
		t.Errorf("tenant.update audit entries: %d, want 4", updates)
	}
}
