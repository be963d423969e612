package storetest

import (
	"fmt"
	"testing"
	"time"

	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// testEventsCap: a tenant keeps at most its newest MaxStoredEvents (20
// here) whatever its retention: a flood of events drops its oldest as it
// is stored (within a tenth of the cap), another tenant's are untouched,
// and PruneEvents trims to the cap too.
func testEventsCap(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	owner := mustAccount(t, s, "owner@example.com")
	mustTenant(t, s, owner, "acme")
	mustTenant(t, s, owner, "other")
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	s.SetClock(func() time.Time { return now })
	s.SetMaxStoredEvents(20)
	t.Cleanup(func() { s.SetMaxStoredEvents(0) })
	ids := func(tenant string) []string {
		t.Helper()
		es, _, err := s.Events(ctx, tenant, tenants.EventQuery{Page: tenants.Page{Limit: 100}})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range es {
			out = append(out, e.ClientID)
		}
		return out
	}
	event := func(tenant string, i int) events.Event {
		return events.Event{Time: now, Tenant: tenant, Type: events.AuthFailed, Device: "d", ClientID: fmt.Sprint(i)}
	}
	if err := s.AddEvents(ctx, []events.Event{event("other", 0), event("other", 1), event("other", 2)}); err != nil {
		t.Fatal(err)
	}
	// A flood: 300 events in batches of 7.
	for i := 0; i < 300; i += 7 {
		var batch []events.Event
		for j := i; j < min(i+7, 300); j++ {
			batch = append(batch, event("acme", j))
		}
		if err := s.AddEvents(ctx, batch); err != nil {
			t.Fatal(err)
		}
		if n := len(ids("acme")); n > 22 {
			t.Fatalf("after %d events acme holds %d, want at most 22 (the cap of 20 and a tenth)", min(i+7, 300), n)
		}
	}
	got := ids("acme")
	if len(got) < 20 || got[0] != "299" {
		t.Fatalf("acme keeps %v; want its newest 20 or more, 299 first", got)
	}
	for i, id := range got {
		if want := fmt.Sprint(299 - i); id != want {
			t.Fatalf("acme's event %d is %s, want %s: the newest are kept, in order (%v)", i, id, want, got)
		}
	}
	if got := ids("other"); len(got) != 3 {
		t.Errorf("other keeps %v, want its 3", got)
	}

	// PruneEvents trims to the cap as well.
	s.SetMaxStoredEvents(10)
	before := len(ids("acme"))
	n, err := s.PruneEvents(ctx, 4, 100)
	if err != nil {
		t.Fatal(err)
	}
	got = ids("acme")
	if n != int64(before-10) || len(got) != 10 || got[0] != "299" || got[9] != "290" {
		t.Errorf("prune with a cap of 10: deleted %d (want %d), acme keeps %v; want 299 to 290", n, before-10, got)
	}
	if got := ids("other"); len(got) != 3 {
		t.Errorf("other keeps %v after the prune, want its 3", got)
	}
}
