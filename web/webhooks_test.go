package web_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

// TestWebhooksPage: the webhooks page lists a tenant's destinations with
// how their delivery goes, showing a URL's host but not its path; once a
// failing receiver turned a message into a dead letter, an admin replays
// it (back to the outbox) and purges it.
func TestWebhooksPage(t *testing.T) {
	s := newStack(t)
	b := s.browser()
	b.signup("owner")
	b.tenant("acme")
	if a := b.get("/tenants/acme/webhooks"); a.status != http.StatusOK || !strings.Contains(a.body, "No destinations yet") {
		t.Fatalf("empty webhooks page: %d %s", a.status, a.body)
	}
	rc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusInternalServerError) }))
	t.Cleanup(rc.Close)
	sealer, err := dataout.NewSealer(dataout.KeyFromToken(operatorToken))
	if err != nil {
		t.Fatal(err)
	}
	ctx := tenants.WithActor(context.Background(), "test")
	id := tenants.NewDestinationID()
	if _, err := s.store.CreateDestination(ctx, "acme", id, tenants.DestinationInput{Name: "ingest", Type: "webhook", URL: rc.URL + "/secret-path"},
		tenants.Sealed{Secret: sealer.SealSecret("acme", id, dataout.NewSecret())}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.store.CreateExportRule(ctx, "acme", tenants.ExportRuleInput{Filter: "sensors/#", Destination: "ingest"}); err != nil {
		t.Fatal(err)
	}
	publish := func() {
		t.Helper()
		if err := s.hub.Publish(ctx, "acme", dataplane.Message{Topic: "sensors/t", Payload: []byte("21.5"), QoS: 1}); err != nil {
			t.Fatal(err)
		}
	}
	deadLetter := func(what string) string {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			a := b.get("/tenants/acme/webhooks")
			if strings.Contains(a.body, ">Replay<") {
				return a.body
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no dead letter to replay within 10s:\n%s", what, a.body)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	publish()
	body := deadLetter("after a failing receiver")
	if !strings.Contains(body, "ingest") || !strings.Contains(body, rc.URL+"/…") || strings.Contains(body, "secret-path") {
		t.Errorf("the page does not show the destination by name and host only:\n%s", body)
	}
	if !strings.Contains(body, "status 500") && !strings.Contains(body, "500") {
		t.Errorf("the page does not show the last error:\n%s", body)
	}
	if a := b.post("/tenants/acme/webhooks/"+id+"/replay", nil); a.status != http.StatusSeeOther || !strings.Contains(a.location, "done=replayed") {
		t.Fatalf("replay: %d %s", a.status, a.location)
	}
	deadLetter("after the replay failed again")
	if a := b.post("/tenants/acme/webhooks/"+id+"/purge", nil); a.status != http.StatusSeeOther || !strings.Contains(a.location, "done=purged") {
		t.Fatalf("purge: %d %s", a.status, a.location)
	}
	if a := b.get("/tenants/acme/webhooks"); strings.Contains(a.body, ">Replay<") {
		t.Errorf("after the purge the page still offers a replay")
	}
	if a := b.post("/tenants/acme/webhooks/dst_none/replay", nil); a.status != http.StatusNotFound {
		t.Errorf("replay of an unknown destination: %d, want 404", a.status)
	}
}
