package web_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// TestConsoleDeviceGroups: devices are created with groups, listed by
// group and by a metadata key=value, the next page keeps the filters, and
// an access rule may name a group.
func TestConsoleDeviceGroups(t *testing.T) {
	s := newStack(t)
	b := s.browser()
	b.signup("grouper")
	b.tenant("grouper")
	b.get("/tenants/grouper/devices")
	for _, d := range []struct{ name, groups, md string }{
		{"a", "lab, ops", "room=r1"},
		{"b", "lab", "room=r2"},
		{"c", "", "room=r1"},
	} {
		if a := b.post("/tenants/grouper/devices", url.Values{"name": {d.name}, "groups": {d.groups}, "metadata": {d.md}}); a.status != http.StatusSeeOther {
			t.Fatalf("create %s: %d %s", d.name, a.status, a.body)
		}
	}
	a := b.post("/tenants/grouper/devices", url.Values{"name": {"d"}, "groups": {"Bad/Group"}})
	if a.status != http.StatusBadRequest || !strings.Contains(a.body, `id="groups" name="groups" value="Bad/Group" aria-invalid="true"`) {
		t.Errorf("a malformed group: got %d, want 400 with the field marked", a.status)
	}
	listed := func(query string) []string {
		t.Helper()
		a := b.get("/tenants/grouper/devices" + query)
		if a.status != http.StatusOK {
			t.Fatalf("devices%s: %d", query, a.status)
		}
		var out []string
		for _, n := range []string{"a", "b", "c"} {
			if strings.Contains(a.body, `href="/tenants/grouper/devices/`+n+`"`) {
				out = append(out, n)
			}
		}
		return out
	}
	for query, want := range map[string]string{
		"":                          "a b c",
		"?group=lab":                "a b",
		"?meta=room%3Dr1":           "a c",
		"?group=lab&meta=room%3Dr1": "a",
		"?group=nobody":             "",
	} {
		if got := strings.Join(listed(query), " "); got != want {
			t.Errorf("devices%s: got %q, want %q", query, got, want)
		}
	}
	if a := b.get("/tenants/grouper/devices?group=Bad%2FGroup"); a.status != http.StatusOK || !strings.Contains(a.body, "must be a group name") {
		t.Errorf("a malformed group filter: got %d, want 200 saying why nothing is listed", a.status)
	}
	if a := b.get("/tenants/grouper/devices/a"); !strings.Contains(a.body, `href="/tenants/grouper/devices?group=ops">ops</a>`) {
		t.Error("device a's page does not link its group ops")
	}

	// Rules naming a group.
	b.get("/tenants/grouper/acl")
	if a := b.post("/tenants/grouper/acl", url.Values{"effect": {"allow"}, "action": {"all"}, "topic": {"rooms/${metadata.room}/#"}, "device": {"*"}, "group": {"lab"}}); a.status != http.StatusSeeOther {
		t.Fatalf("a group rule: %d %s", a.status, a.body)
	}
	if a := b.get("/tenants/grouper/acl"); !strings.Contains(a.body, "group lab") || !strings.Contains(a.body, "rooms/${metadata.room}/#") {
		t.Error("the rules page does not show the group rule")
	}
	if a := b.post("/tenants/grouper/acl", url.Values{"effect": {"allow"}, "action": {"all"}, "topic": {"x/${metadata}"}, "device": {"*"}}); a.status != http.StatusBadRequest {
		t.Errorf("a rule with an unknown placeholder: got %d, want 400", a.status)
	}
}

// TestConsoleCAProvisioning: an admin marks a CA to provision unknown
// devices with groups and metadata, and unmarks it; a bad group comes back
// with the reason.
func TestConsoleCAProvisioning(t *testing.T) {
	s := newStack(t)
	b := s.browser()
	b.signup("owner")
	b.tenant("acme")
	b.get("/tenants/acme/cas")
	if a := b.post("/tenants/acme/cas", url.Values{"certificate": {caPEM(t, "Fleet CA")}}); a.status != http.StatusSeeOther {
		t.Fatalf("add a CA: %d", a.status)
	}
	cas, err := s.store.CAs(context.Background(), "acme")
	if err != nil || len(cas) != 1 {
		t.Fatalf("CAs: %v (%v)", cas, err)
	}
	path := "/tenants/acme/cas/" + cas[0].ID + "/provisioning"
	if a := b.get("/tenants/acme/cas"); !strings.Contains(a.body, "refused") || !strings.Contains(a.body, `action="`+path+`"`) {
		t.Fatal("the CA page does not offer to provision")
	}
	if a := b.post(path, url.Values{"provision": {"on"}, "groups": {"Bad/Group"}}); a.status != http.StatusBadRequest || !strings.Contains(a.body, "not a group name") {
		t.Errorf("a bad group: got %d, want 400 with the reason", a.status)
	}
	if a := b.post(path, url.Values{"provision": {"on"}, "groups": {"fleet, lab"}, "metadata": {"model=m1"}}); a.status != http.StatusSeeOther {
		t.Fatalf("mark: %d %s", a.status, a.body)
	}
	cas, _ = s.store.CAs(context.Background(), "acme")
	if p := cas[0].Provisioning; p == nil || strings.Join(p.Groups, ",") != "fleet,lab" || p.Metadata["model"] != "m1" {
		t.Fatalf("marked: %+v", p)
	}
	if a := b.get("/tenants/acme/cas"); !strings.Contains(a.body, "registered on first connection</span>, groups fleet, lab, model=m1") {
		t.Error("the CA page does not show the template")
	}
	if a := b.post(path, url.Values{"provision": {"off"}}); a.status != http.StatusSeeOther {
		t.Fatalf("unmark: %d", a.status)
	}
	if cas, _ = s.store.CAs(context.Background(), "acme"); cas[0].Provisioning != nil {
		t.Error("unmarked CA still provisions")
	}
}
