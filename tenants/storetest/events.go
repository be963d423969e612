package storetest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// testEvents: stored events come back newest first, a page at a time by
// cursor (events added between pages neither repeat nor shift a page),
// filtered, resumed after an id, only the tenant's own; pruning removes
// what is past each tenant's event_retention (on a fake clock) and every
// event of a deleted tenant.
func testEvents(t *testing.T, s *tenants.Store, reopen func() *tenants.Store) {
	owner := mustAccount(t, s, "owner@example.com")
	mustTenant(t, s, owner, "acme")
	mustTenant(t, s, owner, "other")
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	s.SetClock(func() time.Time { return now })
	add := func(es ...events.Event) {
		t.Helper()
		if err := s.AddEvents(ctx, es); err != nil {
			t.Fatalf("AddEvents: %v", err)
		}
	}
	var batch []events.Event
	for i := range 25 {
		typ := events.Connected
		if i%5 == 4 {
			typ = events.AuthFailed
		}
		batch = append(batch, events.Event{Time: now.Add(time.Duration(i-30) * time.Minute), Tenant: "acme", Type: typ,
			Device: fmt.Sprintf("d%d", i%3), ClientID: fmt.Sprint(i), Reason: "r"})
	}
	add(batch...)
	add(events.Event{Time: now, Tenant: "other", Type: events.Connected, Device: "d0", ClientID: "x"})

	// Pages of 10 by cursor, with events added between the pages.
	var got []string
	q := tenants.EventQuery{Page: tenants.Page{Limit: 10}}
	for pages := 0; ; pages++ {
		es, next, err := s.Events(ctx, "acme", q)
		if err != nil {
			t.Fatal(err)
		}
		for i, e := range es {
			got = append(got, e.ClientID)
			if e.Tenant != "acme" || e.ID == 0 || e.Reason != "r" {
				t.Errorf("event %+v: want acme's, with an id and its reason", e)
			}
			if i > 0 && e.ID >= es[i-1].ID {
				t.Errorf("ids not newest first: %d after %d", e.ID, es[i-1].ID)
			}
		}
		if pages == 0 {
			add(events.Event{Time: now, Tenant: "acme", Type: events.Connected, Device: "late", ClientID: "late"})
		}
		if next == "" {
			break
		}
		if pages > 5 {
			t.Fatal("paging does not end")
		}
		q.Cursor = next
	}
	want := ""
	for i := 24; i >= 0; i-- {
		want += fmt.Sprint(i, " ")
	}
	if fmt.Sprint(got) != "["+want[:len(want)-1]+"]" {
		t.Errorf("paged client ids: got %v, want 24 down to 0, each once", got)
	}

	// Filters.
	count := func(q tenants.EventQuery) int {
		t.Helper()
		es, _, err := s.Events(ctx, "acme", q)
		if err != nil {
			t.Fatal(err)
		}
		return len(es)
	}
	for _, tc := range []struct {
		name string
		q    tenants.EventQuery
		want int
	}{
		{"type", tenants.EventQuery{Type: events.AuthFailed}, 5},
		{"device", tenants.EventQuery{Device: "d1"}, 8},
		{"type and device", tenants.EventQuery{Type: events.AuthFailed, Device: "d1"}, 2},
		{"since", tenants.EventQuery{Since: now.Add(-10 * time.Minute)}, 6}, // -10..-6 and late
		{"until", tenants.EventQuery{Until: now.Add(-25 * time.Minute)}, 5},
		{"since and until", tenants.EventQuery{Since: now.Add(-20 * time.Minute), Until: now.Add(-10 * time.Minute)}, 10},
		{"nothing", tenants.EventQuery{Device: "nobody"}, 0},
	} {
		if n := count(tc.q); n != tc.want {
			t.Errorf("%s: %d events, want %d", tc.name, n, tc.want)
		}
	}
	for name, q := range map[string]tenants.EventQuery{
		"unknown type":       {Type: "nonsense"},
		"until before since": {Since: now, Until: now.Add(-time.Second)},
		"bad cursor":         {Page: tenants.Page{Cursor: "x"}},
	} {
		_, _, err := s.Events(ctx, "acme", q)
		wantErr(t, name, err, tenants.ErrInvalid)
	}

	// After an id, oldest first: a stream's resumption.
	all, _, _ := s.Events(ctx, "acme", tenants.EventQuery{Page: tenants.Page{Limit: 100}})
	after, err := s.EventsAfter(ctx, "acme", all[3].ID, tenants.EventQuery{}, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != 3 || after[0].ID != all[2].ID || after[2].ID != all[0].ID {
		t.Errorf("after %d: got %+v, want the 3 newer, oldest first", all[3].ID, after)
	}
	if last, err := s.LastEventID(ctx, "acme"); err != nil || last != all[0].ID {
		t.Errorf("LastEventID: %d, %v; want %d", last, err, all[0].ID)
	}
	if last, err := s.LastEventID(ctx, "nobody"); err != nil || last != 0 {
		t.Errorf("LastEventID of a tenant without events: %d, %v; want 0", last, err)
	}
	// Another tenant's events never come, whatever the cursor.
	if es, _ := s.EventsAfter(ctx, "other", 0, tenants.EventQuery{}, 100); len(es) != 1 || es[0].ClientID != "x" {
		t.Errorf("other's events: %+v, want its one", es)
	}
	if es, _, _ := s.Events(ctx, "other", tenants.EventQuery{Page: tenants.Page{Cursor: fmt.Sprint(all[0].ID + 100)}}); len(es) != 1 || es[0].Tenant != "other" {
		t.Errorf("other's events by a cursor from acme: %+v", es)
	}

	// Survives a reopen.
	if reopen != nil {
		es, _, err := reopen().Events(ctx, "acme", tenants.EventQuery{Page: tenants.Page{Limit: 100}})
		if err != nil || len(es) != 26 {
			t.Errorf("after a reopen: %d events, %v; want 26", len(es), err)
		}
	}

	// Retention: acme (free) keeps a day, other (pro) a week.
	pro := tenants.PlanPro
	if _, err := s.AdminUpdateTenant(ctx, "other", tenants.AdminTenantUpdate{Plan: &pro}); err != nil {
		t.Fatal(err)
	}
	now = now.Add(24*time.Hour - 15*time.Minute) // -30..-16 min are older than a day now
	n, err := s.PruneEvents(ctx, 4, 100)
	if err != nil {
		t.Fatal(err)
	}
	if n != 15 || count(tenants.EventQuery{Page: tenants.Page{Limit: 100}}) != 11 {
		t.Errorf("pruned %d (want 15); acme keeps %d events, want 11", n, count(tenants.EventQuery{Page: tenants.Page{Limit: 100}}))
	}
	now = now.Add(2 * 24 * time.Hour)
	// Bounded: at most 2 batches of 4 per tenant and run.
	if n, err := s.PruneEvents(ctx, 4, 2); err != nil || n != 8 {
		t.Errorf("bounded prune: %d, %v; want 8", n, err)
	}
	if n, err := s.PruneEvents(ctx, 4, 100); err != nil || n != 3 {
		t.Errorf("second prune: %d, %v; want the 3 left", n, err)
	}
	if es, _ := s.EventsAfter(ctx, "other", 0, tenants.EventQuery{}, 100); len(es) != 1 {
		t.Errorf("other (pro, a week) lost its event after 3 days: %+v", es)
	}
	// A deleted tenant's events go at the next run.
	if err := s.DeleteTenant(ctx, "other"); err != nil {
		t.Fatal(err)
	}
	if n, err := s.PruneEvents(ctx, 4, 100); err != nil || n != 1 {
		t.Errorf("prune after deleting other: %d, %v; want its 1", n, err)
	}
}

// testEventsConcurrentWriters: while several writers (as several nodes
// would) store batches at once, a reader following the ids as a stream
// does (EventsAfter the last it saw) misses none: ids become visible in
// their order.
func testEventsConcurrentWriters(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	owner := mustAccount(t, s, "owner@example.com")
	mustTenant(t, s, owner, "acme")
	const writers, batches, size = 6, 30, 4
	done := make(chan struct{})
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range batches {
				var es []events.Event
				for i := range size {
					es = append(es, events.Event{Time: time.Now(), Tenant: "acme", Type: events.Connected, ClientID: fmt.Sprint(w, "-", b, "-", i)})
				}
				if err := s.AddEvents(ctx, es); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	go func() { wg.Wait(); close(done) }()
	seen := map[string]bool{}
	after := int64(0)
	for finished := false; ; {
		select {
		case <-done:
			finished = true
		default:
		}
		for {
			es, err := s.EventsAfter(ctx, "acme", after, tenants.EventQuery{}, 200)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range es {
				seen[e.ClientID] = true
				after = e.ID
			}
			if len(es) < 200 {
				break
			}
		}
		if finished {
			break
		}
	}
	if len(seen) != writers*batches*size {
		all, _, _ := s.Events(ctx, "acme", tenants.EventQuery{Page: tenants.Page{Limit: 1}})
		t.Errorf("a reader following the ids saw %d of %d events (newest id %v)", len(seen), writers*batches*size, all)
	}
}
