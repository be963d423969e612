package api_test

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/roosthub/roost/events"
)

// TestEventsPaging: GET /events pages by cursor (stable while events are
// added), filters by type, device, since and until, refuses bad values
// with the field named, and never shows another tenant's events, whatever
// cursor it is given.
func TestEventsPaging(t *testing.T) {
	e := newEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	e.mustTenant(u, "other")
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	var es []events.Event
	for i := range 60 {
		typ := events.Connected
		if i%2 == 1 {
			typ = events.Disconnected
		}
		es = append(es, events.Event{Time: base.Add(time.Duration(i) * time.Minute), Tenant: "acme", Type: typ, Device: fmt.Sprintf("d%d", i%3), ClientID: fmt.Sprint(i)})
	}
	es = append(es, events.Event{Time: base, Tenant: "other", Type: events.Connected, Device: "d0", ClientID: "other"})
	if err := e.store.AddEvents(context.Background(), es); err != nil {
		t.Fatal(err)
	}

	var seen []string
	path := "/v1/tenants/acme/events?limit=25"
	for pages := 0; path != ""; pages++ {
		r := e.do("GET", path, u.token, nil)
		want(t, r, 200, "page")
		for _, it := range asSlice(r.json()["items"]) {
			seen = append(seen, it.(map[string]any)["client_id"].(string))
		}
		if pages == 0 {
			if err := e.store.AddEvents(context.Background(), []events.Event{{Time: base, Tenant: "acme", Type: events.Connected, ClientID: "late"}}); err != nil {
				t.Fatal(err)
			}
		}
		path = ""
		if c := r.str("next_cursor"); c != "" {
			path = "/v1/tenants/acme/events?limit=25&cursor=" + c
		}
		if pages > 3 {
			t.Fatal("paging does not end")
		}
	}
	if len(seen) != 60 || seen[0] != "59" || seen[59] != "0" {
		t.Errorf("paged %d events (%v…), want 60 from 59 down to 0, each once", len(seen), seen[:min(3, len(seen))])
	}

	count := func(query string) int {
		t.Helper()
		r := e.do("GET", "/v1/tenants/acme/events?limit=200&"+query, u.token, nil)
		want(t, r, 200, query)
		return len(asSlice(r.json()["items"]))
	}
	at := func(min int) string {
		return url.QueryEscape(base.Add(time.Duration(min) * time.Minute).Format(time.RFC3339))
	}
	for _, tc := range []struct {
		query string
		want  int
	}{
		{"type=disconnected", 30},
		{"device=d1", 20},
		{"type=disconnected&device=d1", 10},
		{"since=" + at(50), 10},
		{"until=" + at(10), 11}, // 0..9 and late (at base)
		{"since=" + at(10) + "&until=" + at(20), 10},
	} {
		if n := count(tc.query); n != tc.want {
			t.Errorf("%s: %d events, want %d", tc.query, n, tc.want)
		}
	}
	for _, tc := range []struct{ query, field string }{
		{"since=yesterday", "since"},
		{"until=2026-13-01T00:00:00Z", "until"},
		{"since=" + at(20) + "&until=" + at(10), "until"},
		{"type=nonsense", "type"},
		{"cursor=x", "cursor"},
		{"limit=201", "limit"},
	} {
		wantProblem(t, e.do("GET", "/v1/tenants/acme/events?"+tc.query, u.token, nil), 400, "invalid", tc.field, tc.query)
	}
	// A cursor from acme's pages shows other only its own.
	r := e.do("GET", "/v1/tenants/other/events?limit=1&cursor="+url.QueryEscape(e.do("GET", "/v1/tenants/acme/events?limit=1", u.token, nil).str("next_cursor")), u.token, nil)
	want(t, r, 200, "other with acme's cursor")
	for _, it := range asSlice(r.json()["items"]) {
		if it.(map[string]any)["tenant"] != "other" {
			t.Errorf("other's events show %v", it)
		}
	}
}
