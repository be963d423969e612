package storetest

import (
	"slices"
	"testing"

	"github.com/roosthub/roost/tenants"
)

// testDeviceGroups: a device is in many groups; devices are listed by
// group and by metadata (every filter must hold), only in their tenant;
// groups are listed with counts; an update replaces a device's groups.
func testDeviceGroups(t *testing.T, s *tenants.Store, reopen func() *tenants.Store) {
	owner := mustAccount(t, s, "grouper@example.com")
	mustTenant(t, s, owner, "grouper")
	mustTenant(t, s, owner, "other")
	create := func(tenant, name string, groups []string, md map[string]string) {
		t.Helper()
		if _, _, err := s.CreateDevice(ctx, tenant, tenants.DeviceInput{Name: name, Groups: groups, Metadata: md}); err != nil {
			t.Fatalf("CreateDevice(%s): %v", name, err)
		}
	}
	create("grouper", "a", []string{"lab", "ops"}, map[string]string{"room": "r1", "floor": "2"})
	create("grouper", "b", []string{"lab"}, map[string]string{"room": "r2", "floor": "2"})
	create("grouper", "c", nil, map[string]string{"room": "r1"})
	create("other", "x", []string{"lab", "secret"}, map[string]string{"room": "r1"})

	names := func(f tenants.DeviceFilter, p tenants.Page) ([]string, string) {
		t.Helper()
		ds, next, err := s.FilterDevices(ctx, "grouper", f, p)
		if err != nil {
			t.Fatalf("FilterDevices(%+v): %v", f, err)
		}
		out := []string{}
		for _, d := range ds {
			out = append(out, d.Name)
		}
		return out, next
	}
	tests := []struct {
		f    tenants.DeviceFilter
		want []string
	}{
		{tenants.DeviceFilter{}, []string{"a", "b", "c"}},
		{tenants.DeviceFilter{Group: "lab"}, []string{"a", "b"}},
		{tenants.DeviceFilter{Group: "ops"}, []string{"a"}},
		{tenants.DeviceFilter{Group: "secret"}, []string{}},
		{tenants.DeviceFilter{Metadata: map[string]string{"room": "r1"}}, []string{"a", "c"}},
		{tenants.DeviceFilter{Metadata: map[string]string{"room": "r1", "floor": "2"}}, []string{"a"}},
		{tenants.DeviceFilter{Metadata: map[string]string{"room": "r1"}, Group: "lab"}, []string{"a"}},
		{tenants.DeviceFilter{Metadata: map[string]string{"nope": "r1"}}, []string{}},
		{tenants.DeviceFilter{Metadata: map[string]string{"room": "'; DROP TABLE devices; --"}}, []string{}},
	}
	for _, tc := range tests {
		if got, _ := names(tc.f, tenants.Page{}); !slices.Equal(got, tc.want) {
			t.Errorf("FilterDevices(%+v): got %v, want %v", tc.f, got, tc.want)
		}
	}
	first, next := names(tenants.DeviceFilter{Group: "lab"}, tenants.Page{Limit: 1})
	rest, _ := names(tenants.DeviceFilter{Group: "lab"}, tenants.Page{Limit: 1, Cursor: next})
	if !slices.Equal(first, []string{"a"}) || !slices.Equal(rest, []string{"b"}) {
		t.Errorf("pages by group: %v then %v, want [a] then [b]", first, rest)
	}
	_, _, err := s.FilterDevices(ctx, "grouper", tenants.DeviceFilter{Group: "Bad/Group"}, tenants.Page{})
	wantField(t, "filter by a malformed group", err, "group")

	gs, _, err := s.Groups(ctx, "grouper", tenants.Page{})
	if err != nil {
		t.Fatal(err)
	}
	want := []tenants.Group{{Name: "lab", Devices: 2}, {Name: "ops", Devices: 1}}
	if !slices.Equal(gs, want) {
		t.Errorf("Groups: got %v, want %v", gs, want)
	}
	if members, err := s.GroupDevices(ctx, "grouper", "lab"); err != nil || !slices.Equal(members, []string{"a", "b"}) {
		t.Errorf("GroupDevices(lab): got %v (%v), want [a b]", members, err)
	}

	groups := []string{"ops", "field"}
	d, err := s.UpdateDevice(ctx, "grouper", "b", tenants.DeviceUpdate{Groups: &groups})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(d.Groups, []string{"field", "ops"}) {
		t.Errorf("updated groups: got %v, want [field ops]", d.Groups)
	}
	bad := []string{"ok", "Not OK"}
	_, err = s.UpdateDevice(ctx, "grouper", "b", tenants.DeviceUpdate{Groups: &bad})
	wantField(t, "update with a malformed group", err, "groups")
	if reopen != nil {
		s = reopen()
	}
	got, err := s.Device(ctx, "grouper", "b")
	if err != nil || !slices.Equal(got.Groups, []string{"field", "ops"}) {
		t.Errorf("device b after reopen: groups %v (%v), want [field ops]", got.Groups, err)
	}
	if got, _ := s.Device(ctx, "grouper", "c"); got.Groups == nil {
		t.Error("a device in no group has groups null, want []")
	}
	gs, _, _ = s.Groups(ctx, "grouper", tenants.Page{Limit: 2})
	want = []tenants.Group{{Name: "field", Devices: 1}, {Name: "lab", Devices: 1}}
	if !slices.Equal(gs, want) {
		t.Errorf("Groups after the update, first page of 2: got %v, want %v", gs, want)
	}
}

// testGroupACL: a rule names a group; the store's check uses the device's
// registered groups and metadata.
func testGroupACL(t *testing.T, s *tenants.Store, reopen func() *tenants.Store) {
	owner := mustAccount(t, s, "policy@example.com")
	mustTenant(t, s, owner, "policy")
	if _, _, err := s.CreateDevice(ctx, "policy", tenants.DeviceInput{Name: "d1", Groups: []string{"lab"}, Metadata: map[string]string{"room": "r1"}}); err != nil {
		t.Fatal(err)
	}
	mustDevice(t, s, "policy", "d2")
	rules, _ := s.ACLRules(ctx, "policy")
	for _, r := range rules {
		if err := s.DeleteACLRule(ctx, "policy", r.ID); err != nil {
			t.Fatal(err)
		}
	}
	r, err := s.CreateACLRule(ctx, "policy", tenants.ACLRuleInput{Effect: tenants.Allow, Action: tenants.ActionAll, Topic: "rooms/${metadata.room}/#", Group: "lab"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Group != "lab" || r.Device != tenants.AnyDevice {
		t.Errorf("rule: group %q device %q, want lab and *", r.Group, r.Device)
	}
	_, err = s.CreateACLRule(ctx, "policy", tenants.ACLRuleInput{Effect: tenants.Allow, Action: tenants.ActionAll, Topic: "#", Group: "lab", Device: "d1"})
	wantField(t, "a rule naming a device and a group", err, "group")
	_, err = s.CreateACLRule(ctx, "policy", tenants.ACLRuleInput{Effect: tenants.Allow, Action: tenants.ActionAll, Topic: "${metadata}/#"})
	wantField(t, "a rule with an unknown placeholder", err, "topic")
	if reopen != nil {
		s = reopen()
	}
	rules, _ = s.ACLRules(ctx, "policy")
	if len(rules) != 1 || rules[0].Group != "lab" {
		t.Fatalf("rules after reopen: %+v, want the one group rule", rules)
	}
	for _, tc := range []struct {
		device, topic string
		want          bool
	}{
		{"d1", "rooms/r1/t", true},
		{"d1", "rooms/r2/t", false},
		{"d2", "rooms/r1/t", false},
		{"ghost", "rooms/r1/t", false},
	} {
		ok, _, err := s.CheckACL(ctx, "policy", tenants.ACLCheck{Device: tc.device, Action: tenants.ActionPublish, Topic: tc.topic})
		if err != nil || ok != tc.want {
			t.Errorf("CheckACL(%s, %s): got %v (%v), want %v", tc.device, tc.topic, ok, err, tc.want)
		}
	}
}
