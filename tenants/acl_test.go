package tenants

import "testing"

func TestCheckACLGroupsAndMetadata(t *testing.T) {
	rules := []ACLRule{
		{ID: "deny-vault", Effect: Deny, Action: ActionAll, Topic: "vault/${metadata.room}/#", Device: AnyDevice},
		{ID: "deny-quiet", Effect: Deny, Action: ActionPublish, Topic: "quiet/${group}", Device: AnyDevice},
		{ID: "lab", Effect: Allow, Action: ActionAll, Topic: "lab/#", Device: AnyDevice, Group: "lab"},
		{ID: "room", Effect: Allow, Action: ActionAll, Topic: "rooms/${metadata.room}/${device}/#", Device: AnyDevice},
		{ID: "grp", Effect: Allow, Action: ActionSubscribe, Topic: "groups/${group}/in", Device: AnyDevice},
		{ID: "own-grp", Effect: Allow, Action: ActionPublish, Topic: "g/${group}/out", Device: AnyDevice, Group: "ops"},
		{ID: "vault", Effect: Allow, Action: ActionAll, Topic: "vault/#", Device: AnyDevice},
		{ID: "quiet", Effect: Allow, Action: ActionAll, Topic: "quiet/#", Device: AnyDevice},
	}
	d1 := ACLSubject{Device: "d1", Groups: []string{"lab", "ops"}, Metadata: map[string]string{"room": "r1"}}
	bare := ACLSubject{Device: "d2"}
	wild := func(v string) ACLSubject {
		return ACLSubject{Device: "d3", Metadata: map[string]string{"room": v}}
	}
	tests := []struct {
		name   string
		sub    ACLSubject
		action Action
		topic  string
		want   bool
		rule   string
	}{
		{"group rule applies to a member", d1, ActionPublish, "lab/x", true, "lab"},
		{"group rule skips a non-member", bare, ActionPublish, "lab/x", false, ""},
		{"metadata variable", d1, ActionPublish, "rooms/r1/d1/t", true, "room"},
		{"metadata variable, another room", d1, ActionPublish, "rooms/r2/d1/t", false, ""},
		{"metadata variable, another device", d1, ActionPublish, "rooms/r1/d2/t", false, ""},
		{"missing key: the allow rule matches nothing", bare, ActionSubscribe, "rooms/+/d2/#", false, ""},
		{"empty value", wild(""), ActionPublish, "rooms//d3/t", false, ""},
		{"value +", wild("+"), ActionSubscribe, "rooms/+/d3/#", false, ""},
		{"value + does not match a literal +", wild("+"), ActionPublish, "rooms/x/d3/t", false, ""},
		{"value #", wild("#"), ActionSubscribe, "rooms/#", false, ""},
		{"value with /", wild("a/b"), ActionPublish, "rooms/a/b/d3/t", false, ""},
		{"value $SYS", wild("$SYS"), ActionSubscribe, "rooms/$SYS/d3/#", false, ""},
		{"${group} each group of the device", d1, ActionSubscribe, "groups/ops/in", true, "grp"},
		{"${group} another group", d1, ActionSubscribe, "groups/x/in", false, ""},
		{"${group} with no groups matches nothing", bare, ActionSubscribe, "groups/x/in", false, ""},
		{"${group} in a group rule is that group", d1, ActionPublish, "g/ops/out", true, "own-grp"},
		{"${group} in a group rule is only that group", d1, ActionPublish, "g/lab/out", false, ""},
		{"deny with its value", d1, ActionPublish, "vault/r1/x", false, "deny-vault"},
		{"deny another value", d1, ActionPublish, "vault/r2/x", true, "vault"},
		{"deny with a missing key covers every value", bare, ActionPublish, "vault/r2/x", false, "deny-vault"},
		{"deny with a wildcard value covers every value", wild("#"), ActionPublish, "vault/any/x", false, "deny-vault"},
		{"deny ${group} with no groups covers every group", bare, ActionPublish, "quiet/x", false, "deny-quiet"},
		{"deny ${group} of one group", d1, ActionPublish, "quiet/ops", false, "deny-quiet"},
		{"deny ${group} not another", d1, ActionPublish, "quiet/x", true, "quiet"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, rule := CheckACL(rules, tc.sub, tc.action, tc.topic)
			id := ""
			if rule != nil {
				id = rule.ID
			}
			if got != tc.want || id != tc.rule {
				t.Errorf("CheckACL(%+v, %s, %q) = %v by %q, want %v by %q", tc.sub, tc.action, tc.topic, got, id, tc.want, tc.rule)
			}
		})
	}
}

func TestACLRuleInputPlaceholders(t *testing.T) {
	for _, topic := range []string{"a/${device}", "a/${group}/#", "a/${metadata.room}", "x-${metadata.floor.no}-${device}/+"} {
		in := ACLRuleInput{Effect: Allow, Action: ActionAll, Topic: topic}
		if err := in.Validate(); err != nil {
			t.Errorf("topic %q: %v", topic, err)
		}
	}
	for _, topic := range []string{"a/${metadata.}", "a/${meta.x}", "a/${grp}", "${metadata.a/b}"} {
		in := ACLRuleInput{Effect: Allow, Action: ActionAll, Topic: topic}
		if err := in.Validate(); err == nil {
			t.Errorf("topic %q: accepted", topic)
		}
	}
	bad := []ACLRuleInput{
		{Effect: Allow, Action: ActionAll, Topic: "#", Group: "Lab"},
		{Effect: Allow, Action: ActionAll, Topic: "#", Group: "lab", Device: "d1"},
	}
	for _, in := range bad {
		if err := in.Validate(); err == nil {
			t.Errorf("%+v: accepted", in)
		}
	}
}

func TestDeviceGroupsValidate(t *testing.T) {
	in := DeviceInput{Name: "d1", Groups: []string{"ops", "lab", "ops"}}
	if err := in.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := in.Groups; len(got) != 2 || got[0] != "lab" || got[1] != "ops" {
		t.Errorf("groups = %v, want [lab ops]", got)
	}
	for _, g := range []string{"", "Lab", "a/b", "a+", "-a", "a-", "a_b", "$sys"} {
		in := DeviceInput{Name: "d1", Groups: []string{g}}
		if err := in.Validate(); err == nil {
			t.Errorf("group %q accepted", g)
		}
	}
}
