package web_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"

	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

// TestWebhookPage: a destination's own page shows it, less what is
// sealed, and lets an admin change it: a webhook's name, URL and headers
// (kept, replaced or removed, as a real receiver sees them), its signing
// secret rotated and shown once (the receiver takes the new one and not
// the old); a Kafka destination's topic with its password kept, and not
// kept once its brokers change. Mistakes (an address on the hub's
// network, a header line that is not one, a header the hub sets, a name
// taken) come back on the page by field and change nothing. A viewer
// reads the page without its forms and cannot post; another tenant's
// admin finds nothing.
func TestWebhookPage(t *testing.T) {
	s := newStack(t)
	b := s.browser()
	b.signup("owner")
	b.tenant("acme")
	type request struct {
		path   string
		header http.Header
		sigOK  bool
		body   string
	}
	var mu sync.Mutex
	var secret string
	var got []request
	rc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		ok := dataout.Verify(secret, r.Header.Get("Roost-Signature"), body, time.Now(), 5*time.Minute) == nil
		got = append(got, request{path: r.URL.Path, header: r.Header.Clone(), sigOK: ok, body: string(body)})
		if !ok {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(rc.Close)
	last := func() request {
		mu.Lock()
		defer mu.Unlock()
		if len(got) == 0 {
			t.Fatal("the receiver has had no request")
		}
		return got[len(got)-1]
	}
	setSecret := func(v string) {
		mu.Lock()
		defer mu.Unlock()
		secret = v
	}

	// Made with headers from the add form: their values never show again.
	a := b.post("/tenants/acme/webhooks", url.Values{"name": {"ingest"}, "type": {"webhook"}, "url": {rc.URL + "/v1"},
		"headers": {"X-Api-Key: k-123\n\nx-team: plant\n"}})
	if a.status != http.StatusCreated {
		t.Fatalf("create with headers: %d\n%s", a.status, a.body)
	}
	setSecret(regexp.MustCompile(`whsec_[A-Za-z0-9_-]+`).FindString(a.body))
	d, err := s.store.DestinationByRef(context.Background(), "acme", "ingest")
	if err != nil || !slices.Equal(d.Headers, []string{"X-Api-Key", "X-Team"}) {
		t.Fatalf("stored headers %v, %v; want X-Api-Key and X-Team", d.Headers, err)
	}
	id := d.ID
	base := "/tenants/acme/webhooks/" + id
	if page := b.get("/tenants/acme/webhooks"); !strings.Contains(page.body, `href="`+base+`"`) {
		t.Errorf("the webhooks page does not link the destination's page:\n%s", page.body)
	}
	page := b.get(base)
	if page.status != http.StatusOK || !strings.Contains(page.body, "<code>X-Api-Key</code>") || strings.Contains(page.body, "k-123") ||
		!strings.Contains(page.body, `value="`+rc.URL+`/v1"`) || !strings.Contains(page.body, `id="edit-destination"`) {
		t.Fatalf("the destination's page: %d\n%s", page.status, page.body)
	}
	sendTest := func(what string) request {
		t.Helper()
		if a := b.post(base+"/test", nil); a.status != http.StatusOK {
			t.Fatalf("%s: send test %d\n%s", what, a.status, a.body)
		}
		return last()
	}
	if r := sendTest("as made"); !r.sigOK || r.path != "/v1" || r.header.Get("X-Api-Key") != "k-123" || r.header.Get("X-Team") != "plant" {
		t.Errorf("as made, the receiver had %s signed %v with headers %v", r.path, r.sigOK, r.header)
	}

	// A new name and URL; no headers given keeps them.
	a = b.post(base, url.Values{"name": {"ingest-2"}, "url": {rc.URL + "/v2"}, "headers": {""}})
	if a.status != http.StatusSeeOther || a.location != base+"?done=saved" {
		t.Fatalf("rename and move: %d %s\n%s", a.status, a.location, a.body)
	}
	if r := sendTest("moved"); !r.sigOK || r.path != "/v2" || r.header.Get("X-Api-Key") != "k-123" {
		t.Errorf("moved, the receiver had %s signed %v with headers %v", r.path, r.sigOK, r.header)
	}
	if d, _ := s.store.Destination(context.Background(), "acme", id); d.Name != "ingest-2" {
		t.Errorf("name %q, want ingest-2", d.Name)
	}

	// Mistakes: by field, the form filled again, nothing changed.
	if a = b.post("/tenants/acme/webhooks", url.Values{"name": {"taken"}, "type": {"webhook"}, "url": {rc.URL}}); a.status != http.StatusCreated {
		t.Fatalf("create another: %d", a.status)
	}
	rc2 := httptest.NewServer(rc.Config.Handler) // another origin: the same host, another port
	t.Cleanup(rc2.Close)
	for _, c := range []struct {
		form  url.Values
		field string // the input marked invalid
		want  string
	}{
		{url.Values{"name": {"ingest-3"}, "url": {"https://169.254.169.254/latest"}}, `id="url"`, "not a public address"},
		{url.Values{"name": {"ingest-3"}, "url": {rc.URL + "/v3"}, "headers": {"X-Api-Key k-999"}}, `id="headers"`, "line 1 is not Name: value"},
		{url.Values{"name": {"ingest-3"}, "url": {rc.URL + "/v3"}, "headers": {"Roost-Signature: k-999"}}, `id="headers"`, "set by the hub"},
		{url.Values{"name": {"ingest-3"}, "url": {rc.URL + "/v3"}, "headers": {"X-Api-Key: k-999"}, "clear_headers": {"on"}}, `id="headers"`, "not both"},
		// The headers kept would go to whoever the new host is.
		{url.Values{"name": {"ingest-3"}, "url": {rc2.URL + "/v3"}}, `id="headers"`, "required again"},
		{url.Values{"name": {"taken"}, "url": {rc.URL + "/v3"}}, `id="name"`, "a destination of that name exists"},
		{url.Values{"name": {""}, "url": {rc.URL + "/v3"}}, `id="name"`, "name"},
	} {
		a = b.post(base, c.form)
		marked := regexp.MustCompile(regexp.QuoteMeta(c.field) + `[^>]*aria-invalid="true"`)
		if a.status != http.StatusBadRequest || !strings.Contains(a.body, c.want) || !marked.MatchString(a.body) ||
			!strings.Contains(a.body, `value="`+c.form.Get("url")+`"`) {
			t.Errorf("%v: %d, want 400 saying %q, %s marked\n%s", c.form, a.status, c.want, c.field, a.body)
		}
		if strings.Contains(a.body, "k-999") {
			t.Errorf("%v: the page shows a header value again", c.form)
		}
	}
	if d, _ := s.store.Destination(context.Background(), "acme", id); d.Name != "ingest-2" || d.URL != rc.URL+"/v2" || len(d.Headers) != 2 {
		t.Errorf("after the refused changes: %q %q %v", d.Name, d.URL, d.Headers)
	}

	// Headers given replace them all; clear_headers removes them.
	if a = b.post(base, url.Values{"name": {"ingest-2"}, "url": {rc.URL + "/v2"}, "headers": {"X-Api-Key: k-456"}}); a.status != http.StatusSeeOther {
		t.Fatalf("replace the headers: %d\n%s", a.status, a.body)
	}
	if r := sendTest("headers replaced"); r.header.Get("X-Api-Key") != "k-456" || r.header.Get("X-Team") != "" {
		t.Errorf("headers replaced, the receiver had %v", r.header)
	}
	if a = b.post(base, url.Values{"name": {"ingest-2"}, "url": {rc.URL + "/v2"}, "clear_headers": {"on"}}); a.status != http.StatusSeeOther {
		t.Fatalf("remove the headers: %d\n%s", a.status, a.body)
	}
	if r := sendTest("headers removed"); r.header.Get("X-Api-Key") != "" {
		t.Errorf("headers removed, the receiver had %v", r.header)
	}
	// With none to keep, a move to another origin needs nothing more.
	if a = b.post(base, url.Values{"name": {"ingest-2"}, "url": {rc2.URL + "/v2"}}); a.status != http.StatusSeeOther {
		t.Fatalf("move to another origin without headers: %d\n%s", a.status, a.body)
	}
	if a = b.post(base, url.Values{"name": {"ingest-2"}, "url": {rc.URL + "/v2"}}); a.status != http.StatusSeeOther {
		t.Fatalf("move back: %d\n%s", a.status, a.body)
	}
	if d, _ := s.store.Destination(context.Background(), "acme", id); len(d.Headers) != 0 || d.Sealed.Headers != "" {
		t.Errorf("after removing the headers: %v %q", d.Headers, d.Sealed.Headers)
	}

	// A new signing secret, shown once: the old one signs nothing more.
	old := secret
	a = b.post(base+"/secret", nil)
	fresh := regexp.MustCompile(`whsec_[A-Za-z0-9_-]+`).FindString(a.body)
	if a.status != http.StatusOK || fresh == "" || fresh == old || !strings.Contains(a.body, `id="created-secret"`) {
		t.Fatalf("rotate: %d, secret %q\n%s", a.status, fresh, a.body)
	}
	if r := sendTest("rotated, receiver on the old secret"); r.sigOK {
		t.Error("after the rotation a request verifies with the old secret")
	}
	setSecret(fresh)
	if r := sendTest("rotated, receiver on the new secret"); !r.sigOK {
		t.Error("after the rotation a request does not verify with the new secret")
	}
	if !strings.Contains(a.body, `id="name" name="name" required value="ingest-2"`) || !strings.Contains(a.body, `value="`+rc.URL+`/v2"`) {
		t.Errorf("the rotation's answer does not fill the form:\n%s", a.body)
	}
	if page = b.get(base); strings.Contains(page.body, fresh) {
		t.Error("the new secret shows again on the page")
	}

	// A Kafka destination: its topic changes, its password kept.
	k, err := kfake.NewCluster(kfake.SeedTopics(1, "telemetry", "telemetry-2"), kfake.EnableSASL(), kfake.Superuser("PLAIN", "plant-user", "kafka-pw-789"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	brokers := strings.Join(k.ListenAddrs(), ", ")
	if a = b.post("/tenants/acme/webhooks", url.Values{"name": {"plant"}, "type": {"kafka"}, "brokers": {brokers}, "topic": {"telemetry"},
		"mechanism": {"PLAIN"}, "username": {"plant-user"}, "password": {"kafka-pw-789"}}); a.status != http.StatusCreated {
		t.Fatalf("create a Kafka destination: %d\n%s", a.status, a.body)
	}
	kd, _ := s.store.DestinationByRef(context.Background(), "acme", "plant")
	kbase := "/tenants/acme/webhooks/" + kd.ID
	if page = b.get(kbase); !strings.Contains(page.body, `value="`+brokers+`"`) || !strings.Contains(page.body, `value="plant-user"`) ||
		strings.Contains(page.body, "kafka-pw-789") || strings.Contains(page.body, "Rotate signing secret") {
		t.Errorf("the Kafka destination's page:\n%s", page.body)
	}
	kform := url.Values{"name": {"plant"}, "brokers": {brokers}, "topic": {"telemetry-2"}, "mechanism": {"PLAIN"}, "username": {"plant-user"}}
	if a = b.post(kbase, kform); a.status != http.StatusSeeOther {
		t.Fatalf("change the topic: %d\n%s", a.status, a.body)
	}
	if a = b.post(kbase+"/test", nil); a.status != http.StatusOK || !strings.Contains(a.body, "<b>Delivered</b> to plant") {
		t.Errorf("send test after the topic changed (the password kept): %d\n%s", a.status, a.body)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.ListenAddrs()...), kgo.ConsumeTopics("telemetry-2"),
		kgo.SASL(plain.Auth{User: "plant-user", Pass: "kafka-pw-789"}.AsMechanism()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if recs := cl.PollFetches(fctx).Records(); len(recs) != 1 {
		t.Errorf("the send test produced %d records on the new topic", len(recs))
	}
	moved := url.Values{}
	for key, v := range kform {
		moved[key] = v
	}
	moved.Set("brokers", "127.0.0.1:1")
	if a = b.post(kbase, moved); a.status != http.StatusBadRequest || !strings.Contains(a.body, "is required again") {
		t.Errorf("new brokers without the password: %d\n%s", a.status, a.body)
	}
	moved.Set("brokers", "10.1.2.3:9092")
	moved.Set("password", "kafka-pw-789")
	if a = b.post(kbase, moved); a.status != http.StatusBadRequest || !strings.Contains(a.body, "not a public address") {
		t.Errorf("brokers on the hub's network: %d\n%s", a.status, a.body)
	}
	// A password given is the one used: a wrong one fails the send test,
	// the right one again delivers.
	wrong := url.Values{}
	for key, v := range kform {
		wrong[key] = v
	}
	wrong.Set("password", "not-the-password")
	if a = b.post(kbase, wrong); a.status != http.StatusSeeOther {
		t.Fatalf("set another password: %d\n%s", a.status, a.body)
	}
	if a = b.post(kbase+"/test", nil); strings.Contains(a.body, "<b>Delivered</b>") {
		t.Errorf("send test with the wrong password delivered:\n%s", a.body)
	}
	wrong.Set("password", "kafka-pw-789")
	if a = b.post(kbase, wrong); a.status != http.StatusSeeOther {
		t.Fatalf("set the password back: %d\n%s", a.status, a.body)
	}
	if a = b.post(kbase+"/test", nil); !strings.Contains(a.body, "<b>Delivered</b> to plant") {
		t.Errorf("send test with the password set back:\n%s", a.body)
	}
	if a = b.post(kbase+"/secret", nil); a.status != http.StatusConflict || !strings.Contains(a.body, `value="telemetry-2"`) {
		t.Errorf("rotate a Kafka destination's secret: %d, want 409 with the form filled\n%s", a.status, a.body)
	}

	// A viewer reads the page without its forms, and cannot post.
	viewer := s.browser()
	email := viewer.signup("viewer")
	b.post("/tenants/acme/members", url.Values{"email": {email}, "role": {"viewer"}})
	if page = viewer.get(base); page.status != http.StatusOK || !strings.Contains(page.body, "ingest-2") || strings.Contains(page.body, `id="edit-destination"`) ||
		strings.Contains(page.body, "Rotate signing secret") {
		t.Errorf("a viewer's page: %d\n%s", page.status, page.body)
	}
	if page = viewer.get(kbase); page.status != http.StatusOK || strings.Contains(page.body, "plant-user") {
		t.Errorf("a viewer's page of the Kafka destination shows its SASL user: %d\n%s", page.status, page.body)
	}
	for _, p := range []string{base, base + "/secret"} {
		if a := viewer.post(p, url.Values{"name": {"viewer-was-here"}, "url": {rc.URL}}); a.status != http.StatusForbidden {
			t.Errorf("a viewer posts %s: %d, want 403", p, a.status)
		}
	}

	// Another tenant's admin finds nothing, by either tenant's path.
	stranger := s.browser()
	stranger.signup("stranger")
	stranger.tenant("other")
	if page = stranger.get("/tenants/other/webhooks/" + id); page.status != http.StatusNotFound {
		t.Errorf("a stranger gets acme's destination under their tenant: %d, want 404", page.status)
	}
	if page = stranger.get(base); page.status != http.StatusNotFound {
		t.Errorf("a stranger gets acme's destination: %d, want 404", page.status)
	}
	for _, p := range []string{"/tenants/other/webhooks/" + id, "/tenants/other/webhooks/" + id + "/secret", base, base + "/secret"} {
		if a := stranger.post(p, url.Values{"name": {"stranger-was-here"}, "url": {rc.URL}}); a.status != http.StatusNotFound {
			t.Errorf("a stranger posts %s: %d, want 404", p, a.status)
		}
	}
	if d, _ := s.store.Destination(context.Background(), "acme", id); d.Name != "ingest-2" || d.URL != rc.URL+"/v2" {
		t.Errorf("acme's destination after the viewer and the stranger: %q %q", d.Name, d.URL)
	}
	if r := sendTest("after the stranger"); !r.sigOK {
		t.Error("after the stranger's posts the secret changed")
	}

	// The last deliveries: a rule's message, delivered by the outbox,
	// shaped by the rule's projection (one that does not compile comes
	// back on the page with where).
	a = b.post("/tenants/acme/webhooks/rules", url.Values{"filter": {"sensors/#"}, "destination": {id}, "projection": {`{"t": payload.temp, "site": sitee}`}})
	if a.status != http.StatusBadRequest || !strings.Contains(a.body, `id="projection-error"`) || !strings.Contains(a.body, "line 1, column 29") {
		t.Errorf("a projection that does not compile: %d\n%s", a.status, a.body)
	}
	if a = b.post("/tenants/acme/webhooks/rules", url.Values{"filter": {"sensors/#"}, "destination": {id}, "projection": {`{"t": payload.temp, "site": topic_levels[1]}`}}); a.status != http.StatusSeeOther {
		t.Fatalf("add a rule: %d\n%s", a.status, a.body)
	}
	if page = b.get("/tenants/acme/webhooks"); !strings.Contains(page.body, "<code>{&#34;t&#34;: payload.temp, &#34;site&#34;: topic_levels[1]}</code>") {
		t.Errorf("the rule's projection is not listed:\n%s", page.body)
	}
	if err := s.hub.Publish(tenants.WithActor(context.Background(), "test"), "acme", dataplane.Message{Topic: "sensors/t", Payload: []byte(`{"temp":21}`), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	recent := regexp.MustCompile(`(?s)<table id="recent">.*<td>1</td><td>1</td>\s*<td><span class="allow">delivered</span> \(status 204\)`)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if page = b.get(base); recent.MatchString(page.body) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the delivery is not among the last deliveries within 10s:\n%s", page.body)
		}
	}
	if page = viewer.get(base); !recent.MatchString(page.body) {
		t.Errorf("a viewer does not see the last deliveries:\n%s", page.body)
	}
	if r := last(); !strings.Contains(r.body, `"payload":{"site":"t","t":21}`) {
		t.Errorf("the delivery was not shaped by the projection: %s", r.body)
	}
}
