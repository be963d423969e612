package storetest

import (
	"testing"

	"github.com/roosthub/roost/tenants"
)

// testMoveACLRule: a rule moves up and down; the others keep their order;
// another tenant's rule is not found.
func testMoveACLRule(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	owner := mustAccount(t, s, "mover@example.com")
	mustTenant(t, s, owner, "mover")
	mustTenant(t, s, owner, "bystander")
	for _, topic := range []string{"a/#", "b/#", "c/#"} {
		if _, err := s.CreateACLRule(ctx, "mover", tenants.ACLRuleInput{Effect: "allow", Action: "publish", Topic: topic, Device: "*"}); err != nil {
			t.Fatal(err)
		}
	}
	order := func() string {
		rs, err := s.ACLRules(ctx, "mover")
		if err != nil {
			t.Fatal(err)
		}
		out := ""
		for i, r := range rs {
			if r.Position != i {
				t.Errorf("rule %s at position %d, index %d", r.Topic, r.Position, i)
			}
			out += r.Topic[:1]
		}
		return out
	}
	if got := order(); got != "#abc" {
		t.Fatalf("initial order %q", got)
	}
	rs, _ := s.ACLRules(ctx, "mover")
	c := rs[3].ID
	if r, err := s.MoveACLRule(ctx, "mover", c, 0); err != nil || r.Position != 0 {
		t.Fatalf("move c to the top: %+v %v", r, err)
	}
	if got := order(); got != "c#ab" {
		t.Errorf("after moving c up: %q", got)
	}
	if _, err := s.MoveACLRule(ctx, "mover", c, 99); err != nil {
		t.Fatal(err)
	}
	if got := order(); got != "#abc" {
		t.Errorf("after moving c past the end: %q", got)
	}
	_, err := s.MoveACLRule(ctx, "bystander", c, 0)
	wantErr(t, "moving another tenant's rule", err, tenants.ErrNotFound)
	_, err = s.MoveACLRule(ctx, "mover", c, -1)
	wantField(t, "a negative position", err, "position")
}

// testSearchDevices: search matches within names, LIKE's wildcards are
// literal, and pages continue.
func testSearchDevices(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	owner := mustAccount(t, s, "finder@example.com")
	mustTenant(t, s, owner, "finder")
	mustTenant(t, s, owner, "hider")
	for _, n := range []string{"sensor-1", "sensor-2", "pump-1", "sensor_x"} {
		mustDevice(t, s, "finder", n)
	}
	mustDevice(t, s, "hider", "sensor-9")
	names := func(search string, p tenants.Page) ([]string, string) {
		ds, next, err := s.SearchDevices(ctx, "finder", search, p)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, d := range ds {
			out = append(out, d.Name)
		}
		return out, next
	}
	if got, _ := names("sensor", tenants.Page{}); len(got) != 3 {
		t.Errorf("search sensor: %v", got)
	}
	if got, _ := names("_", tenants.Page{}); len(got) != 1 || got[0] != "sensor_x" {
		t.Errorf("search _ (literal): %v", got)
	}
	if got, _ := names("%", tenants.Page{}); len(got) != 0 {
		t.Errorf("search %% (literal): %v", got)
	}
	first, next := names("sensor", tenants.Page{Limit: 2})
	rest, _ := names("sensor", tenants.Page{Limit: 2, Cursor: next})
	if len(first) != 2 || len(rest) != 1 || rest[0] != "sensor_x" {
		t.Errorf("pages: %v then %v", first, rest)
	}
}
