package web_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"

	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

// TestWebhooksEditing: an admin manages destinations and rules on the
// webhooks page: a webhook made with its secret shown once, a Kafka
// destination with SASL whose password never shows, send tests to both
// (a real signature-checking receiver, a real in-process Kafka), mistakes
// (an address on the hub's network, a condition that does not compile)
// answered on the same page by field with line and column, a destination
// a rule uses refused deletion with the reason, the dead letters listed.
// A viewer sees the page without forms and cannot post.
func TestWebhooksEditing(t *testing.T) {
	s := newStack(t)
	b := s.browser()
	b.signup("owner")
	b.tenant("acme")
	var secret atomic.Value
	secret.Store("")
	var requests, badSigs atomic.Int32
	rc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		requests.Add(1)
		if dataout.Verify(secret.Load().(string), r.Header.Get("Roost-Signature"), body, time.Now(), 5*time.Minute) != nil {
			badSigs.Add(1)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(rc.Close)
	k, err := kfake.NewCluster(kfake.SeedTopics(1, "telemetry"), kfake.EnableSASL(), kfake.Superuser("PLAIN", "roost", "kafka-pw-789"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)

	// A webhook: the secret once.
	a := b.post("/tenants/acme/webhooks", url.Values{"name": {"ingest"}, "type": {"webhook"}, "url": {rc.URL + "/hook"}})
	m := regexp.MustCompile(`whsec_[A-Za-z0-9_-]+`).FindString(a.body)
	if a.status != http.StatusCreated || m == "" || !strings.Contains(a.body, `id="created-secret"`) {
		t.Fatalf("create a webhook: %d, secret %q\n%s", a.status, m, a.body)
	}
	secret.Store(m)
	page := b.get("/tenants/acme/webhooks")
	if strings.Contains(page.body, m) || !strings.Contains(page.body, "ingest") || !strings.Contains(page.body, rc.URL+"/…") {
		t.Errorf("after creation the page shows the secret, or not the destination by name and host:\n%s", page.body)
	}
	ds, _ := s.store.Destinations(context.Background(), "acme")
	if len(ds) != 1 {
		t.Fatalf("%d destinations, want 1", len(ds))
	}
	hook := ds[0].ID

	// Mistakes come back on the page, by field, the form filled again.
	a = b.post("/tenants/acme/webhooks", url.Values{"name": {"inside"}, "type": {"webhook"}, "url": {"https://169.254.169.254/latest"}})
	if a.status != http.StatusBadRequest || !strings.Contains(a.body, "not a public address") || !strings.Contains(a.body, `value="inside"`) ||
		!strings.Contains(a.body, `id="add-destination"`) {
		t.Errorf("a metadata-service URL: %d\n%s", a.status, a.body)
	}
	a = b.post("/tenants/acme/webhooks", url.Values{"name": {"ingest"}, "type": {"webhook"}, "url": {rc.URL + "/other"}})
	if a.status != http.StatusBadRequest || !strings.Contains(a.body, "a destination of that name exists") {
		t.Errorf("a taken name: %d", a.status)
	}

	// The tenant's Kafka, plain on loopback (allowed in this stack), with
	// SASL PLAIN; the password never shows again.
	kform := url.Values{"name": {"plant"}, "type": {"kafka"}, "brokers": {strings.Join(k.ListenAddrs(), ", ")}, "topic": {"telemetry"},
		"mechanism": {"PLAIN"}, "username": {"roost"}, "password": {"kafka-pw-789"}}
	a = b.post("/tenants/acme/webhooks", kform)
	if a.status != http.StatusCreated || strings.Contains(a.body, "kafka-pw-789") || strings.Contains(a.body, `id="created-secret"`) {
		t.Fatalf("create a Kafka destination: %d\n%s", a.status, a.body)
	}
	bad := url.Values{}
	for key, v := range kform {
		bad[key] = v
	}
	bad.Set("name", "plant-2")
	bad.Set("topic", "no/slashes")
	if a = b.post("/tenants/acme/webhooks", bad); a.status != http.StatusBadRequest || strings.Contains(a.body, "kafka-pw-789") || !strings.Contains(a.body, "1 to 249 letters") {
		t.Errorf("a bad topic: %d (the password must not be echoed)\n%s", a.status, a.body)
	}
	ds, _ = s.store.Destinations(context.Background(), "acme")
	plant := ds[1].ID

	// Send tests: a signed request, a record.
	a = b.post("/tenants/acme/webhooks/"+hook+"/test", nil)
	if a.status != http.StatusOK || !strings.Contains(a.body, "<b>Delivered</b> to ingest") || requests.Load() != 1 || badSigs.Load() != 0 {
		t.Errorf("send test to the webhook: %d, %d requests, %d badly signed\n%s", a.status, requests.Load(), badSigs.Load(), a.body)
	}
	a = b.post("/tenants/acme/webhooks/"+plant+"/test", nil)
	if a.status != http.StatusOK || !strings.Contains(a.body, "<b>Delivered</b> to plant") {
		t.Errorf("send test to Kafka: %d\n%s", a.status, a.body)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.ListenAddrs()...), kgo.ConsumeTopics("telemetry"),
		kgo.SASL(plain.Auth{User: "roost", Pass: "kafka-pw-789"}.AsMechanism()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if recs := cl.PollFetches(fctx).Records(); len(recs) != 1 || !strings.Contains(string(recs[0].Value), `"$roost/test"`) {
		t.Errorf("the Kafka send test produced %d records", len(recs))
	}

	// Rules: a condition that does not compile is shown with where.
	a = b.post("/tenants/acme/webhooks/rules", url.Values{"filter": {"sensors/#"}, "destination": {hook}, "condition": {"payload.temp >"}})
	if a.status != http.StatusBadRequest || !regexp.MustCompile(`line 1, column \d+`).MatchString(a.body) || !strings.Contains(a.body, "payload.temp &gt;</textarea>") ||
		!strings.Contains(a.body, `id="condition-error"`) {
		t.Errorf("a condition that does not compile: %d\n%s", a.status, a.body)
	}
	a = b.post("/tenants/acme/webhooks/rules", url.Values{"filter": {"sensors/#"}, "destination": {hook}, "condition": {"payload.temp > 30"}})
	if a.status != http.StatusSeeOther || !strings.Contains(a.location, "done=rule") {
		t.Fatalf("add a rule: %d %s\n%s", a.status, a.location, a.body)
	}
	if page = b.get("/tenants/acme/webhooks"); !strings.Contains(page.body, "payload.temp &gt; 30") {
		t.Errorf("the rule is not listed:\n%s", page.body)
	}
	a = b.post("/tenants/acme/webhooks/"+hook+"/delete", nil)
	if a.status != http.StatusConflict || !strings.Contains(a.body, "Rules send to this destination") {
		t.Errorf("delete a destination a rule uses: %d\n%s", a.status, a.body)
	}
	rules, _ := s.store.Rules(context.Background(), "acme")
	if a = b.post("/tenants/acme/webhooks/rules/"+rules[0].ID+"/delete", nil); a.status != http.StatusSeeOther {
		t.Errorf("delete the rule: %d", a.status)
	}
	if a = b.post("/tenants/acme/webhooks/"+hook+"/delete", nil); a.status != http.StatusSeeOther {
		t.Errorf("delete the destination: %d", a.status)
	}

	// Dead letters: a receiver that fails, a message past the horizon.
	fail := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadGateway) }))
	t.Cleanup(fail.Close)
	b.post("/tenants/acme/webhooks", url.Values{"name": {"broken"}, "type": {"webhook"}, "url": {fail.URL}})
	d, err := s.store.DestinationByRef(context.Background(), "acme", "broken")
	if err != nil {
		t.Fatal(err)
	}
	b.post("/tenants/acme/webhooks/rules", url.Values{"filter": {"alarms/#"}, "destination": {d.ID}})
	ctx := tenants.WithActor(context.Background(), "test")
	if err := s.hub.Publish(ctx, "acme", dataplane.Message{Topic: "alarms/fire", Payload: []byte(`{"level":"high"}`), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		page = b.get("/tenants/acme/webhooks?dead=" + d.ID)
		if strings.Contains(page.body, "alarms/fire") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the dead letter is not listed within 10s:\n%s", page.body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(page.body, "Dead letters of broken") || !strings.Contains(page.body, `{&#34;level&#34;:&#34;high&#34;}`) {
		t.Errorf("the dead letters:\n%s", page.body)
	}

	// A destination's own outbox_policy: a wrong one comes back by field,
	// a right one is stored and shown.
	a = b.post("/tenants/acme/webhooks", url.Values{"name": {"strict"}, "type": {"webhook"}, "url": {rc.URL + "/strict"}, "outbox_policy": {"sometimes"}})
	if a.status != http.StatusBadRequest || !strings.Contains(a.body, "must be drop_oldest, refuse") || !strings.Contains(a.body, `value="strict"`) {
		t.Errorf("an unknown outbox policy: %d\n%s", a.status, a.body)
	}
	if a = b.post("/tenants/acme/webhooks", url.Values{"name": {"strict"}, "type": {"webhook"}, "url": {rc.URL + "/strict"}, "outbox_policy": {"refuse"}}); a.status != http.StatusCreated {
		t.Fatalf("create with outbox policy refuse: %d\n%s", a.status, a.body)
	}
	if d, err := s.store.DestinationByRef(context.Background(), "acme", "strict"); err != nil || d.OutboxPolicy != tenants.OutboxRefuse {
		t.Errorf("stored outbox policy %q, %v; want refuse", d.OutboxPolicy, err)
	}
	if page = b.get("/tenants/acme/webhooks"); !strings.Contains(page.body, "when full: refuse") {
		t.Errorf("the page does not show the destination's outbox policy:\n%s", page.body)
	}
	strict, err := s.store.DestinationByRef(context.Background(), "acme", "strict")
	if err != nil {
		t.Fatal(err)
	}
	// Changed from its row: a wrong value is refused and changes nothing,
	// "" hands it back to the tenant's.
	if a = b.post("/tenants/acme/webhooks/"+strict.ID+"/policy", url.Values{"outbox_policy": {"sometimes"}}); a.status != http.StatusBadRequest || !strings.Contains(a.body, "must be drop_oldest, refuse") {
		t.Errorf("an unknown outbox policy from the row: %d\n%s", a.status, a.body)
	}
	if a = b.post("/tenants/acme/webhooks/"+strict.ID+"/policy", url.Values{"outbox_policy": {""}}); a.status != http.StatusSeeOther || !strings.Contains(a.location, "done=saved") {
		t.Errorf("hand the policy back to the tenant's: %d %s", a.status, a.location)
	}
	if d, err := s.store.Destination(context.Background(), "acme", strict.ID); err != nil || d.OutboxPolicy != "" {
		t.Errorf("after handing it back: %q, %v; want the tenant's", d.OutboxPolicy, err)
	}
	if a = b.post("/tenants/acme/webhooks/"+strict.ID+"/policy", url.Values{"outbox_policy": {"refuse"}, "max_outbox": {"250"}}); a.status != http.StatusSeeOther {
		t.Errorf("set the policy and the bound: %d %s", a.status, a.location)
	}
	if d, _ := s.store.Destination(context.Background(), "acme", strict.ID); d.OutboxPolicy != tenants.OutboxRefuse || d.MaxOutbox != 250 {
		t.Errorf("after setting both: %q, %d; want refuse, 250", d.OutboxPolicy, d.MaxOutbox)
	}
	if page = b.get("/tenants/acme/webhooks"); !strings.Contains(page.body, "holds at most 250") || !strings.Contains(page.body, `name="max_outbox" min="0" value="250"`) {
		t.Errorf("the page does not show the destination's bound, in its row and its row's form:\n%s", page.body)
	}
	// A post with the policy alone keeps the bound.
	if a = b.post("/tenants/acme/webhooks/"+strict.ID+"/policy", url.Values{"outbox_policy": {"drop_oldest"}}); a.status != http.StatusSeeOther {
		t.Errorf("set the policy alone: %d", a.status)
	}
	if d, _ := s.store.Destination(context.Background(), "acme", strict.ID); d.OutboxPolicy != tenants.OutboxDropOldest || d.MaxOutbox != 250 {
		t.Errorf("after setting the policy alone: %q, %d; want drop_oldest, 250", d.OutboxPolicy, d.MaxOutbox)
	}
	if a = b.post("/tenants/acme/webhooks/"+strict.ID+"/policy", url.Values{"outbox_policy": {"refuse"}, "max_outbox": {"lots"}}); a.status != http.StatusBadRequest || !strings.Contains(a.body, "must be 0") {
		t.Errorf("a bound that is not a number: %d\n%s", a.status, a.body)
	}
	if d, _ := s.store.Destination(context.Background(), "acme", strict.ID); d.MaxOutbox != 250 {
		t.Errorf("after a refused bound: %d, want 250 still", d.MaxOutbox)
	}
	if a = b.post("/tenants/acme/webhooks", url.Values{"name": {"bounded"}, "type": {"webhook"}, "url": {rc.URL + "/b"}, "max_outbox": {"7"}}); a.status != http.StatusCreated {
		t.Errorf("create with a bound: %d\n%s", a.status, a.body)
	}
	if d, err := s.store.DestinationByRef(context.Background(), "acme", "bounded"); err != nil || d.MaxOutbox != 7 {
		t.Errorf("created with max_outbox %d, %v; want 7", d.MaxOutbox, err)
	}
	if a = b.post("/tenants/acme/webhooks/dst_none/policy", url.Values{"outbox_policy": {"refuse"}}); a.status != http.StatusNotFound {
		t.Errorf("the policy of an unknown destination: %d, want 404", a.status)
	}

	// A viewer reads, without forms; a viewer's posts are refused.
	viewer := s.browser()
	email := viewer.signup("viewer")
	b.post("/tenants/acme/members", url.Values{"email": {email}, "role": {"viewer"}})
	page = viewer.get("/tenants/acme/webhooks")
	if page.status != http.StatusOK || !strings.Contains(page.body, "plant") || strings.Contains(page.body, `id="add-destination"`) || strings.Contains(page.body, "Send test") {
		t.Errorf("a viewer's page: %d\n%s", page.status, page.body)
	}
	for _, p := range []string{"/tenants/acme/webhooks", "/tenants/acme/webhooks/" + plant + "/test", "/tenants/acme/webhooks/" + plant + "/delete", "/tenants/acme/webhooks/rules",
		"/tenants/acme/webhooks/" + plant + "/policy"} {
		if a := viewer.post(p, url.Values{"name": {"x"}, "type": {"webhook"}, "url": {rc.URL}}); a.status != http.StatusForbidden {
			t.Errorf("a viewer posts %s: %d, want 403", p, a.status)
		}
	}
	// Another tenant's admin cannot reach acme's destinations.
	stranger := s.browser()
	stranger.signup("stranger")
	stranger.tenant("other")
	for _, p := range []string{"/tenants/acme/webhooks/" + plant + "/test", "/tenants/other/webhooks/" + plant + "/test", "/tenants/other/webhooks/" + plant + "/delete",
		"/tenants/acme/webhooks/" + plant + "/policy", "/tenants/other/webhooks/" + plant + "/policy"} {
		if a := stranger.post(p, nil); a.status != http.StatusNotFound {
			t.Errorf("a stranger posts %s: %d, want 404", p, a.status)
		}
	}
	if _, err := s.store.Destination(context.Background(), "acme", plant); err != nil {
		t.Errorf("acme's Kafka destination after the stranger: %v", err)
	}
}
