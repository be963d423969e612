package web_test

import (
	"context"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/roosthub/roost/events"
)

// addEvents stores n events of a tenant: every third an auth_failed of
// device d-<i%2>, the others connects.
func addEvents(t *testing.T, s *stack, tenant string, n int) {
	t.Helper()
	var es []events.Event
	for i := range n {
		typ := events.Connected
		if i%3 == 2 {
			typ = events.AuthFailed
		}
		es = append(es, events.Event{Time: time.Now().Add(time.Duration(i-n) * time.Second), Tenant: tenant, Type: typ,
			Device: fmt.Sprintf("d-%d", i%2), ClientID: fmt.Sprintf("%s-c%d", tenant, i)})
	}
	if err := s.store.AddEvents(context.Background(), es); err != nil {
		t.Fatal(err)
	}
}

var clientRE = regexp.MustCompile(`from |acme-c\d+|other-c\d+`)

// TestEventsPage: the events page lists the tenant's stored events newest
// first, 50 a page with a link to older ones, filtered by type and
// device; a bad filter is a 400 with the reason; a viewer sees it; another
// tenant's events never show, nor its page to a stranger.
func TestEventsPage(t *testing.T) {
	s := newStack(t)
	owner := s.browser()
	owner.signup("owner")
	owner.tenant("acme")
	owner.tenant("other")
	addEvents(t, s, "acme", 60)
	addEvents(t, s, "other", 5)
	rows := func(body string) int { return strings.Count(body, "<tr><td>") }

	first := owner.get("/tenants/acme/events")
	if first.status != http.StatusOK || rows(first.body) != 50 {
		t.Fatalf("first page: %d, %d rows, want 50", first.status, rows(first.body))
	}
	if strings.Contains(first.body, "other-c") {
		t.Error("the page shows another tenant's events")
	}
	if !strings.Contains(first.body, "kept 1 day") {
		t.Error("the page does not say how long events are kept (free plan: a day)")
	}
	next := regexp.MustCompile(`href="([^"]+)" rel="next"`).FindStringSubmatch(first.body)
	if next == nil {
		t.Fatalf("no link to older events:\n%s", first.body)
	}
	// Events stored meanwhile do not shift the next page.
	addEvents(t, s, "acme", 3)
	older := owner.get(html.UnescapeString(next[1]))
	if older.status != http.StatusOK || rows(older.body) != 10 || strings.Contains(older.body, `rel="next"`) {
		t.Errorf("older page: %d, %d rows (want the 10 left), next link %v", older.status, rows(older.body), strings.Contains(older.body, `rel="next"`))
	}
	if a := owner.get("/tenants/acme/events?type=auth_failed&device=d-1"); rows(a.body) != 10 || strings.Contains(a.body, "<td>connected</td>") || strings.Contains(a.body, "<td>d-0</td>") {
		t.Errorf("auth_failed of d-1: %d rows (want 10), or other types or devices shown", rows(a.body))
	}
	if a := owner.get("/tenants/acme/events?device=nobody"); rows(a.body) != 0 || !strings.Contains(a.body, "No events like these") {
		t.Errorf("no such device: %d rows", rows(a.body))
	}
	if a := owner.get("/tenants/acme/events?type=nonsense"); a.status != http.StatusBadRequest || !strings.Contains(a.body, "is not an event type") {
		t.Errorf("bad type: %d, want 400 with the reason", a.status)
	}
	if a := owner.get("/tenants/acme/events?after=zzz"); a.status != http.StatusBadRequest || !strings.Contains(a.body, "start again") {
		t.Errorf("bad cursor: %d, want 400 and a way back", a.status)
	}

	// A viewer member reads it; a stranger gets 404.
	viewer := s.browser()
	email := viewer.signup("viewer")
	owner.get("/tenants/acme/members")
	if a := owner.post("/tenants/acme/members", url.Values{"email": {email}, "role": {"viewer"}}); a.status != http.StatusSeeOther {
		t.Fatalf("add viewer: %d", a.status)
	}
	if a := viewer.get("/tenants/acme/events"); a.status != http.StatusOK || rows(a.body) != 50 {
		t.Errorf("viewer: %d, %d rows", a.status, rows(a.body))
	}
	stranger := s.browser()
	stranger.signup("stranger")
	if a := stranger.get("/tenants/acme/events"); a.status != http.StatusNotFound || clientRE.MatchString(a.body) {
		t.Errorf("stranger: %d, want 404 and nothing of acme", a.status)
	}
	// The overview shows the ten newest.
	if a := owner.get("/tenants/acme"); rows(a.body) < 10 || !strings.Contains(a.body, "acme-c2<") && !strings.Contains(a.body, "<td>connected</td>") {
		t.Errorf("overview events: %d rows", rows(a.body))
	}
}
