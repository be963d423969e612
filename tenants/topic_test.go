package tenants

import (
	"strings"
	"testing"
)

func TestFilterCovers(t *testing.T) {
	tests := []struct {
		filter, sub string
		want        bool
	}{
		{"#", "a", true},
		{"#", "a/b/c", true},
		{"#", "a/#", true},
		{"#", "$SYS/x", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/x", true},
		{"a/#", "a", true},
		{"a/#", "a/b", true},
		{"a/#", "a/+/c", true},
		{"a/#", "a/#", true},
		{"a/#", "b", false},
		{"a/#", "#", false},
		{"a/+", "a/b", true},
		{"a/+", "a/+", true},
		{"a/+", "a/#", false},
		{"a/+", "a/b/c", false},
		{"a/+", "a", false},
		{"a/b", "a/b", true},
		{"a/b", "a/+", false},
		{"a/b", "a/b/c", false},
		{"a/b/c", "a/b", false},
		{"+", "a", true},
		{"+", "", true},
		{"+/+", "/a", true},
		{"a/+/c", "a/b/c", true},
		{"a/+/c", "a/b/d", false},
		{"a/+/#", "a", false},
		{"a/+/#", "a/b", true},
		{"a//b", "a//b", true},
		{"a/b", "a//b", false},
	}
	for _, tc := range tests {
		if got := FilterCovers(tc.filter, tc.sub); got != tc.want {
			t.Errorf("FilterCovers(%q, %q) = %v, want %v", tc.filter, tc.sub, got, tc.want)
		}
	}
}

func TestValidateFilter(t *testing.T) {
	for _, ok := range []string{"#", "+", "a/b", "a/+/b", "a/#", "+/+/#", "/", "a//b", "$events/x"} {
		if err := ValidateFilter(ok); err != nil {
			t.Errorf("ValidateFilter(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"", "a/#/b", "a#", "a+", "a/b+", "#/a", "a\x00b", string([]byte{0xff}), string(make([]byte, 65536))} {
		if err := ValidateFilter(bad); err == nil {
			t.Errorf("ValidateFilter(%q) = nil, want an error", bad)
		}
	}
	if err := ValidateTopic("a/+"); err == nil {
		t.Error("ValidateTopic accepts a wildcard")
	}
	deepest := strings.Repeat("a/", MaxTopicLevels-1) + "a"
	for _, v := range []func(string) error{ValidateFilter, ValidateTopic} {
		if err := v(deepest); err != nil {
			t.Errorf("%d levels: %v, want nil", MaxTopicLevels, err)
		}
		if err := v(deepest + "/a"); err == nil || !strings.Contains(err.Error(), "levels") {
			t.Errorf("%d levels: %v, want an error naming the levels", MaxTopicLevels+1, err)
		}
	}
}

func TestCheckACL(t *testing.T) {
	rules := []ACLRule{
		{ID: "deny-secret", Effect: Deny, Action: ActionAll, Topic: "secret/#", Device: AnyDevice},
		{ID: "own-in", Effect: Allow, Action: ActionSubscribe, Topic: "devices/${device}/in/#", Device: AnyDevice},
		{ID: "own-out", Effect: Allow, Action: ActionPublish, Topic: "devices/${device}/out", Device: AnyDevice},
		{ID: "gw", Effect: Allow, Action: ActionAll, Topic: "gateway/#", Device: "gw-1"},
		{ID: "telemetry", Effect: Allow, Action: ActionPublish, Topic: "telemetry/+", Device: AnyDevice},
	}
	tests := []struct {
		device string
		action Action
		topic  string
		want   bool
		rule   string
	}{
		{"d1", ActionSubscribe, "devices/d1/in/#", true, "own-in"},
		{"d1", ActionSubscribe, "devices/d1/in/cmd", true, "own-in"},
		{"d1", ActionSubscribe, "devices/d2/in/#", false, ""},
		{"d1", ActionSubscribe, "devices/+/in/#", false, ""},
		{"d1", ActionSubscribe, "devices/#", false, ""},
		{"d1", ActionPublish, "devices/d1/in/x", false, ""},
		{"d1", ActionPublish, "devices/d1/out", true, "own-out"},
		{"d1", ActionPublish, "secret/x", false, "deny-secret"},
		{"d1", ActionSubscribe, "secret/#", false, "deny-secret"},
		{"gw-1", ActionSubscribe, "gateway/#", true, "gw"},
		{"gw-2", ActionSubscribe, "gateway/#", false, ""},
		{"d1", ActionPublish, "telemetry/temp", true, "telemetry"},
		{"d1", ActionPublish, "telemetry/temp/x", false, ""},
		{"d1", ActionSubscribe, "$share/g/devices/d1/in/#", true, "own-in"},
		{"d1", ActionSubscribe, "$share/g/devices/d2/in/#", false, ""},
		{"d1", ActionSubscribe, "$SHARE/g/devices/d1/in/#", true, "own-in"}, // mochi's shared subscription too
		{"d1", ActionSubscribe, "$Share/g/secret/#", false, "deny-secret"},
		{"d1", ActionSubscribe, "$SYS/#", false, ""},
	}
	for _, tc := range tests {
		got, rule := CheckACL(rules, ACLSubject{Device: tc.device}, tc.action, tc.topic)
		id := ""
		if rule != nil {
			id = rule.ID
		}
		if got != tc.want || id != tc.rule {
			t.Errorf("CheckACL(%s, %s, %q) = %v by %q, want %v by %q", tc.device, tc.action, tc.topic, got, id, tc.want, tc.rule)
		}
	}
	// The default rule allows everything but $SYS.
	def := DefaultACLRule()
	all := []ACLRule{{ID: "default", Effect: def.Effect, Action: def.Action, Topic: def.Topic, Device: def.Device}}
	if ok, _ := CheckACL(all, ACLSubject{Device: "d1"}, ActionSubscribe, "#"); !ok {
		t.Error("the default rule refuses #")
	}
	if ok, _ := CheckACL(all, ACLSubject{Device: "d1"}, ActionSubscribe, "$SYS/#"); ok {
		t.Error("the default rule grants $SYS/#")
	}
}

func TestValidNames(t *testing.T) {
	for _, s := range []string{"abc", "a-b", "a1b", "0ab", "abcdefghijklmnopqrstuvwxyz012345"} {
		if !ValidSlug(s) {
			t.Errorf("ValidSlug(%q) = false", s)
		}
	}
	for _, s := range []string{"ab", "-ab", "ab-", "Abc", "a_b", "a.b", "a b", "аbc", "abcdefghijklmnopqrstuvwxyz0123456"} {
		if ValidSlug(s) {
			t.Errorf("ValidSlug(%q) = true", s)
		}
	}
	for _, s := range []string{"d", "D1", "sensor.kitchen_1-a", "0"} {
		if !ValidDeviceName(s) {
			t.Errorf("ValidDeviceName(%q) = false", s)
		}
	}
	for _, s := range []string{"", ".d", "_d", "a/b", "a+b", "a#b", "a$b", "a:b", "a b", "a\tb", "é"} {
		if ValidDeviceName(s) {
			t.Errorf("ValidDeviceName(%q) = true", s)
		}
	}
}

func TestPasswordHash(t *testing.T) {
	RealPasswordHashes(t)
	h := hashPassword("correct horse battery")
	if !checkPassword("correct horse battery", h) || checkPassword("correct horse batterY", h) {
		t.Fatal("password hash does not tell right from wrong")
	}
	var m, tm, p int
	if _, err := fmtSscanf(h, &m, &tm, &p); err != nil || m < 19*1024 || tm < 2 {
		t.Errorf("hash %s: want argon2id with m >= 19 MiB and t >= 2", h)
	}
	if checkPassword("x", "$argon2id$v=19$m=1,t=1,p=1$bad$bad") || checkPassword("x", "plain") {
		t.Error("malformed hashes must not verify")
	}
}

func TestAPIKeyToken(t *testing.T) {
	id := newID("key_")
	tok := newAPIKeyToken(id)
	got, ok := apiKeyIDFromToken(tok)
	if !ok || got != id {
		t.Fatalf("apiKeyIDFromToken(%q) = %q, %v, want %q", tok, got, ok, id)
	}
	if len(tok) < 3+26+1+43 {
		t.Errorf("token %q is shorter than 256 bits of secret", tok)
	}
}

func TestIDsIncrease(t *testing.T) {
	prev := newID("x_")
	for range 10000 {
		id := newID("x_")
		if id <= prev {
			t.Fatalf("id %s after %s: ids must increase", id, prev)
		}
		prev = id
	}
}

func TestFilterLevels(t *testing.T) {
	for _, tc := range []struct {
		filter string
		want   int
	}{
		{"a", 1}, {"a/b/#", 3}, {"$share/g/a/b", 2}, {"$SHARE/g/a", 1}, {"$share/g", 2}, {"$shared/g/a", 3}, {"$share/g//", 2},
	} {
		if got := FilterLevels(tc.filter); got != tc.want {
			t.Errorf("FilterLevels(%q) = %d, want %d", tc.filter, got, tc.want)
		}
	}
}
