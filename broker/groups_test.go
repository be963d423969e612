package broker_test

import (
	"testing"

	"github.com/roosthub/roost/tenants"
)

// TestGroupACLWithMetadata: rules that name a group or use ${group} and
// ${metadata.<key>} decide by each device's groups and metadata, over real
// MQTT 5 and 3.1.1 connections; a value with a wildcard or a slash, an
// empty one or a missing key never widens a rule; a change of a device's
// metadata or groups applies to its live connection.
func TestGroupACLWithMetadata(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	mk := func(name string, groups []string, md map[string]string) string {
		t.Helper()
		_, secret, err := s.store.CreateDevice(ctx, "acme", tenants.DeviceInput{Name: name, Groups: groups, Metadata: md})
		if err != nil {
			t.Fatal(err)
		}
		return secret
	}
	d1 := mustV5(t, s.addr, "acme/d1", mk("d1", []string{"lab"}, map[string]string{"room": "r1"}), "d1")
	wild := mustV5(t, s.addr, "acme/wild", mk("wild", nil, map[string]string{"room": "+"}), "wild")
	hash := mustV3(t, s.addr, "acme/hash", mk("hash", nil, map[string]string{"room": "#"}), "hash", true)
	slash := mustV5(t, s.addr, "acme/slash", mk("slash", nil, map[string]string{"room": "a/b"}), "slash")
	empty := mustV5(t, s.addr, "acme/empty", mk("empty", nil, map[string]string{"room": ""}), "empty")
	bare := mustV5(t, s.addr, "acme/bare", mk("bare", nil, nil), "bare")
	obs := mustV5(t, s.addr, "acme/obs", mk("obs", nil, nil), "obs")
	s.rules("acme",
		deny(tenants.ActionAll, "vault/${metadata.room}/#"),
		tenants.ACLRuleInput{Effect: tenants.Allow, Action: tenants.ActionAll, Topic: "#", Device: "obs"},
		tenants.ACLRuleInput{Effect: tenants.Allow, Action: tenants.ActionAll, Topic: "lab/#", Group: "lab"},
		allow(tenants.ActionAll, "rooms/${metadata.room}/#"),
		allow(tenants.ActionSubscribe, "groups/${group}/in"),
		allow(tenants.ActionAll, "vault/#"),
	)
	const refused = 0x87
	pubs := []struct {
		who   *v5
		name  string
		topic string
		want  byte
	}{
		{d1, "d1", "rooms/r1/t", 0},
		{d1, "d1", "rooms/r2/t", refused},
		{d1, "d1", "lab/x", 0},
		{bare, "bare", "lab/x", refused},
		{wild, "wild", "rooms/x/t", refused},
		{slash, "slash", "rooms/a/b/t", refused},
		{slash, "slash", "rooms/a/t", refused},
		{empty, "empty", "rooms//t", refused},
		{bare, "bare", "rooms//t", refused},
		{d1, "d1", "vault/r1/x", refused},     // the deny rule, with d1's room
		{d1, "d1", "vault/r2/x", 0},           // another room: the allow after it
		{bare, "bare", "vault/r2/x", refused}, // no room: the deny covers every room
		{wild, "wild", "vault/r2/x", refused}, // a wildcard room: likewise
	}
	for _, tc := range pubs {
		if r := tc.who.pub(t, tc.topic, "m", 1, false); r.ReasonCode != tc.want {
			t.Errorf("%s publishes %s: got 0x%02x, want 0x%02x", tc.name, tc.topic, r.ReasonCode, tc.want)
		}
	}
	subs := []struct {
		who    *v5
		name   string
		filter string
		want   byte
	}{
		{d1, "d1", "rooms/r1/#", 1},
		{d1, "d1", "rooms/+/#", refused},
		{d1, "d1", "groups/lab/in", 1},
		{d1, "d1", "groups/ops/in", refused},
		{bare, "bare", "groups/+/in", refused},
		{wild, "wild", "rooms/+/#", refused},
		{wild, "wild", "rooms/#", refused},
		{slash, "slash", "rooms/a/#", refused},
		{empty, "empty", "rooms/+/#", refused},
	}
	for _, tc := range subs {
		if got := tc.who.sub(t, tc.filter, 1); got != tc.want {
			t.Errorf("%s subscribes %s: got 0x%02x, want 0x%02x", tc.name, tc.filter, got, tc.want)
		}
	}
	for _, f := range []string{"rooms/#", "rooms/+/#"} {
		if got := hash.subCode(t, f, 1); got != 0x80 {
			t.Errorf("hash (3.1.1, room #) subscribes %s: got 0x%02x, want 0x80", f, got)
		}
	}

	// Live: d1 reads rooms/r1/# and lab/#; its room moves to r2.
	if got := d1.sub(t, "lab/#", 1); got != 1 {
		t.Fatalf("d1 subscribes lab/#: got 0x%02x", got)
	}
	obs.pub(t, "rooms/r1/a", "before", 1, false)
	d1.expect(t, "rooms/r1/a", "before")
	md := map[string]string{"room": "r2"}
	if _, err := s.store.UpdateDevice(ctx, "acme", "d1", tenants.DeviceUpdate{Metadata: &md}); err != nil {
		t.Fatal(err)
	}
	obs.pub(t, "rooms/r1/a", "hidden", 1, false) // the topic read just before, in its old room
	obs.pub(t, "lab/marker", "after", 1, false)
	d1.expect(t, "lab/marker", "after") // rooms/r1/b was not delivered: its room is r2 now
	if r := d1.pub(t, "rooms/r1/t", "m", 1, false); r.ReasonCode != refused {
		t.Errorf("d1 publishes to its old room: got 0x%02x, want 0x87", r.ReasonCode)
	}
	if r := d1.pub(t, "rooms/r2/t", "m", 1, false); r.ReasonCode != 0 {
		t.Errorf("d1 publishes to its new room: got 0x%02x, want 0", r.ReasonCode)
	}
	// Out of the lab group: the group rule no longer applies.
	none := []string{}
	if _, err := s.store.UpdateDevice(ctx, "acme", "d1", tenants.DeviceUpdate{Groups: &none}); err != nil {
		t.Fatal(err)
	}
	if r := d1.pub(t, "lab/x", "m", 1, false); r.ReasonCode != refused {
		t.Errorf("d1 publishes to lab/x out of the group: got 0x%02x, want 0x87", r.ReasonCode)
	}
	obs.pub(t, "lab/marker", "hidden", 1, false) // the topic read just before, out of the group now
	obs.pub(t, "rooms/r2/z", "visible", 1, false)
	if got := d1.sub(t, "rooms/r2/#", 1); got != 1 {
		t.Fatalf("d1 subscribes rooms/r2/#: got 0x%02x", got)
	}
	obs.pub(t, "lab/y2", "hidden", 1, false)
	obs.pub(t, "rooms/r2/z2", "visible", 1, false)
	d1.expect(t, "rooms/r2/z2", "visible")
}
