package broker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/broker/store/memory"
	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// webhookReceiver is a real HTTP receiver under the test's control: it
// checks every request's Roost-Signature and records the messages of the
// batches it took (answered 2xx).
type webhookReceiver struct {
	*httptest.Server
	secret string
	// status answers each request; nil: 204.
	status atomic.Pointer[func() int]

	mu       sync.Mutex
	batches  []receivedBatch
	requests int
	unsigned int
}

type receivedBatch struct {
	Tenant      string            `json:"tenant"`
	Destination string            `json:"destination"`
	Messages    []receivedMessage `json:"messages"`
}

type receivedMessage struct {
	ID       string          `json:"id"`
	Topic    string          `json:"topic"`
	Payload  json.RawMessage `json:"payload"`
	Encoding string          `json:"payload_encoding"`
	QoS      byte            `json:"qos"`
	Device   string          `json:"device"`
	ClientID string          `json:"client_id"`
}

func newWebhookReceiver(t testing.TB) *webhookReceiver {
	t.Helper()
	rc := &webhookReceiver{secret: dataout.NewSecret()}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		defer rc.mu.Unlock()
		rc.requests++
		if err := dataout.Verify(rc.secret, r.Header.Get(dataout.SignatureHeader), body, time.Now(), 5*time.Minute); err != nil {
			rc.unsigned++
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		code := http.StatusNoContent
		if f := rc.status.Load(); f != nil {
			code = (*f)()
		}
		if code/100 == 2 {
			var b receivedBatch
			if err := json.Unmarshal(body, &b); err != nil {
				t.Errorf("receiver: body %q: %v", body, err)
			}
			rc.batches = append(rc.batches, b)
		}
		w.WriteHeader(code)
	}))
	t.Cleanup(rc.Close)
	return rc
}

// answer makes the receiver answer every request with code.
func (rc *webhookReceiver) answer(code int) {
	f := func() int { return code }
	rc.status.Store(&f)
}

// messages returns the messages taken, in the order they arrived.
func (rc *webhookReceiver) messages() []receivedMessage {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var out []receivedMessage
	for _, b := range rc.batches {
		out = append(out, b.Messages...)
	}
	return out
}

// taken returns the batches taken.
func (rc *webhookReceiver) taken() []receivedBatch {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]receivedBatch(nil), rc.batches...)
}

func (rc *webhookReceiver) counts() (requests, unsigned int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.requests, rc.unsigned
}

// outboxStack is a stack whose hub delivers rules with a destination
// through outboxes in a memory session store, with a retry horizon of
// horizon.
type outboxStack struct {
	*stack
	sealer *dataout.Sealer
}

func newOutboxStack(t testing.TB, horizon time.Duration, mod ...func(*broker.Config)) *outboxStack {
	t.Helper()
	sealer, err := dataout.NewSealer(dataout.KeyFromToken("test-operator-token"))
	if err != nil {
		t.Fatal(err)
	}
	g, err := dataout.NewGuard("127.0.0.1", false)
	if err != nil {
		t.Fatal(err)
	}
	sender, err := dataout.NewSender(dataout.SenderConfig{Guard: g, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sender.Close) // its Kafka clients, after the hub stopped
	var os outboxStack
	os.sealer = sealer
	os.stack = newStack(t, append([]func(*broker.Config){func(c *broker.Config) {
		c.Sessions = memory.New()
		c.Delivery = &broker.Delivery{Rules: c.Directory.(*tenants.Store), Sealer: sealer, Sender: sender, Batch: 10,
			Policy: dataout.Policy{Base: 10 * time.Millisecond, Max: 50 * time.Millisecond, Horizon: horizon}}
	}}, mod...)...)
	return &os
}

// destination creates a webhook destination pointing at rc and a rule
// sending it what matches filter and condition; it returns the
// destination's id.
func (s *outboxStack) destination(tenant, name string, rc *webhookReceiver, filter, condition string) string {
	s.t.Helper()
	id := tenants.NewDestinationID()
	if _, err := s.store.CreateDestination(ctx, tenant, id, tenants.DestinationInput{Name: name, Type: "webhook", URL: rc.URL + "/hook"},
		tenants.Sealed{Secret: s.sealer.SealSecret(tenant, id, rc.secret)}); err != nil {
		s.t.Fatal(err)
	}
	if _, err := s.store.CreateExportRule(ctx, tenant, tenants.ExportRuleInput{Filter: filter, Destination: name, Condition: condition}); err != nil {
		s.t.Fatal(err)
	}
	return id
}

// TestOutboxDelivers: QoS 1 publishes matching a rule with a destination
// reach a real receiver, signed, in order, with their device and client
// id and an id each; a publish its condition (on the payload and the
// device's metadata) refuses, or on another topic, does not; another
// tenant's publishes on the same topic reach only that tenant's own
// destination.
func TestOutboxDelivers(t *testing.T) {
	s := newOutboxStack(t, time.Minute)
	s.tenant("acme")
	s.tenant("other")
	acmeRC, otherRC := newWebhookReceiver(t), newWebhookReceiver(t)
	hook := s.destination("acme", "hook", acmeRC, "sensors/#", `payload.temp > 20 && metadata.room == "lab"`)
	s.destination("other", "hook", otherRC, "sensors/#", "")
	_, secret, err := s.store.CreateDevice(ctx, "acme", tenants.DeviceInput{Name: "pub", Metadata: map[string]string{"room": "lab"}})
	if err != nil {
		t.Fatal(err)
	}
	pub := mustV5(t, s.addr, "acme/pub", secret, "pub")
	otherPub := mustV5(t, s.addr, "other/pub", s.device("other", "pub"), "pub")
	const n = 50
	for i := range n {
		if r := pub.pub(t, "sensors/temp", fmt.Sprintf(`{"temp":%d}`, 21+i), 1, false); r.ReasonCode != 0 {
			t.Fatalf("PUBACK 0x%02x, want 0", r.ReasonCode)
		}
		otherPub.pub(t, "sensors/temp", fmt.Sprintf(`{"temp":%d,"other":true}`, i), 1, false)
	}
	pub.pub(t, "sensors/temp", `{"temp": 5}`, 1, false) // the condition refuses it
	pub.pub(t, "lights/1", `{"temp": 99}`, 1, false)    // no rule's filter
	eventually(t, 10*time.Second, "acme's receiver has every matching message", func() bool { return len(acmeRC.messages()) >= n })
	eventually(t, 10*time.Second, "other's receiver has its messages", func() bool { return len(otherRC.messages()) >= n })
	eventually(t, 10*time.Second, "the status counts them delivered", func() bool {
		st, _ := s.hub.DeliveryStatus(ctx, "acme", hook)
		return st.Delivered == n
	})
	got := acmeRC.messages()
	if len(got) != n {
		t.Fatalf("acme's receiver took %d messages, want %d", len(got), n)
	}
	ids := map[string]bool{}
	for i, m := range got {
		want := fmt.Sprintf(`{"temp":%d}`, 21+i)
		if string(m.Payload) != want || m.Topic != "sensors/temp" || m.Device != "pub" || m.ClientID != "pub" || m.QoS != 1 || m.Encoding != "json" {
			t.Fatalf("message %d: %+v, want payload %s from device pub in order", i, m, want)
		}
		if m.ID == "" || ids[m.ID] {
			t.Fatalf("message %d: id %q empty or repeated", i, m.ID)
		}
		ids[m.ID] = true
	}
	for _, m := range otherRC.messages() {
		var p struct{ Other bool }
		if json.Unmarshal(m.Payload, &p) != nil || !p.Other {
			t.Fatalf("other's receiver got %s: not one of other's messages", m.Payload)
		}
	}
	if _, unsigned := acmeRC.counts(); unsigned != 0 {
		t.Errorf("%d requests failed the signature check", unsigned)
	}
	for _, b := range acmeRC.taken() {
		if len(b.Messages) > 10 || b.Tenant != "acme" || b.Destination != hook {
			t.Errorf("a batch of %d messages for %s/%s, want at most 10 for acme/%s", len(b.Messages), b.Tenant, b.Destination, hook)
		}
	}
	st, err := s.hub.DeliveryStatus(ctx, "acme", hook)
	if err != nil {
		t.Fatal(err)
	}
	if st.Delivered != n || st.Backlog != 0 || st.LastSuccess == nil || st.Failed != 0 {
		t.Errorf("status %+v, want %d delivered, none waiting, a last success", st, n)
	}
}

// TestOutboxRetriesThenDeadLetters: a receiver answering 500 is retried
// with backoff until the horizon; the messages then go to the dead
// letters, which can be listed, replayed (delivered, in order, once the
// receiver recovers) and purged. A backlog is sent in batches.
func TestOutboxRetriesThenDeadLetters(t *testing.T) {
	s := newOutboxStack(t, 500*time.Millisecond)
	s.tenant("acme")
	rc := newWebhookReceiver(t)
	rc.answer(http.StatusInternalServerError)
	hook := s.destination("acme", "hook", rc, "sensors/#", "")
	pub := mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub")
	const n = 25
	for i := range n {
		if r := pub.pub(t, "sensors/temp", fmt.Sprint(i), 1, false); r.ReasonCode != 0 {
			t.Fatalf("PUBACK 0x%02x, want 0: a failing receiver must not slow or refuse the publisher", r.ReasonCode)
		}
	}
	eventually(t, 10*time.Second, "every message is a dead letter", func() bool {
		st, err := s.hub.DeliveryStatus(ctx, "acme", hook)
		return err == nil && st.DeadLetters == n && st.Backlog == 0 && st.Failed == n
	})
	if req, _ := rc.counts(); req < 3 {
		t.Errorf("%d requests before the horizon, want retries", req)
	}
	st, _ := s.hub.DeliveryStatus(ctx, "acme", hook)
	if st.Failed != n || st.LastError == nil || !strings.Contains(st.LastErrorText, "500") || st.Delivered != 0 {
		t.Errorf("status %+v, want %d failed, last error status 500", st, n)
	}
	// The last attempts, newest first: retried, the last ones given up.
	if req, _ := rc.counts(); len(st.Recent) != min(req, dataplane.RecentAttempts) {
		t.Errorf("%d recent attempts for %d requests", len(st.Recent), req)
	}
	retried := false
	for i, a := range st.Recent {
		if a.Status != 500 || !strings.Contains(a.Error, "500") || a.Messages < 1 || a.Outcome == "delivered" || i > 0 && a.At.After(st.Recent[i-1].At) {
			t.Errorf("recent attempt %d: %+v, want a failed 500, newest first", i, a)
		}
		retried = retried || a.Attempt > 1
	}
	if len(st.Recent) == 0 || st.Recent[0].Outcome != "dead" || !retried {
		t.Errorf("recent attempts %+v: want the newest dead, some retried", st.Recent)
	}
	dead, _, err := s.hub.DeadLetters(ctx, "acme", hook, 0, 10)
	if err != nil || len(dead) != 10 {
		t.Fatalf("dead letters: %d, %v; want the first 10", len(dead), err)
	}
	if string(dead[0].Payload) != "0" || dead[0].Device != "pub" || dead[0].Topic != "sensors/temp" {
		t.Errorf("first dead letter %+v, want payload 0 from pub", dead[0])
	}
	if more, _, _ := s.hub.DeadLetters(ctx, "acme", hook, dead[9].Seq, 100); len(more) != n-10 {
		t.Errorf("dead letters after the first page: %d, want %d", len(more), n-10)
	}
	if other, _, _ := s.hub.DeadLetters(ctx, "other", hook, 0, 100); len(other) != 0 {
		t.Errorf("another tenant sees %d of acme's dead letters", len(other))
	}

	rc.answer(http.StatusOK)
	moved, err := s.hub.ReplayDeadLetters(ctx, "acme", hook)
	if err != nil || moved != n {
		t.Fatalf("replay: %d, %v; want %d", moved, err, n)
	}
	eventually(t, 10*time.Second, "the replayed messages are delivered", func() bool {
		st, _ := s.hub.DeliveryStatus(ctx, "acme", hook)
		return len(rc.messages()) >= n && st.Delivered == n
	})
	st, _ = s.hub.DeliveryStatus(ctx, "acme", hook)
	delivered := 0
	for _, a := range st.Recent {
		if a.Outcome != "delivered" {
			break
		}
		if a.Status != 200 || a.Error != "" || a.Attempt != 1 {
			t.Errorf("a delivered attempt: %+v", a)
		}
		delivered += a.Messages
	}
	if delivered != n {
		t.Errorf("the newest recent attempts delivered %d messages, want the %d replayed: %+v", delivered, n, st.Recent)
	}
	for i, m := range rc.messages() {
		if string(m.Payload) != fmt.Sprint(i) {
			t.Fatalf("message %d: payload %s, want %d: replay out of order", i, m.Payload, i)
		}
	}
	if b := rc.taken(); len(b) > n/10+1 {
		t.Errorf("%d requests for a backlog of %d, want batches of 10", len(b), n)
	}

	rc.answer(http.StatusServiceUnavailable)
	pub.pub(t, "sensors/temp", "late", 1, false)
	eventually(t, 10*time.Second, "the next failure is a dead letter", func() bool {
		st, err := s.hub.DeliveryStatus(ctx, "acme", hook)
		return err == nil && st.DeadLetters == 1
	})
	if purged, err := s.hub.PurgeDeadLetters(ctx, "acme", hook); err != nil || purged != 1 {
		t.Fatalf("purge: %d, %v; want 1", purged, err)
	}
	if st, _ := s.hub.DeliveryStatus(ctx, "acme", hook); st.DeadLetters != 0 {
		t.Errorf("after the purge, %d dead letters", st.DeadLetters)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(s.hub.Collector(0))
	for outcome, want := range map[string]float64{"delivered": n, "failed": n + 1, "dropped": 0} {
		if got := webhookMetric(t, reg, "acme", outcome); got != want {
			t.Errorf("roost_webhook_messages_total{tenant=acme,outcome=%s} = %v, want %v", outcome, got, want)
		}
	}
}

// webhookMetric reads roost_webhook_messages_total for a tenant and
// outcome.
func webhookMetric(t *testing.T, reg *prometheus.Registry, tenant, outcome string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "roost_webhook_messages_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["tenant"] == tenant && labels["outcome"] == outcome {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no roost_webhook_messages_total{tenant=%s,outcome=%s}", tenant, outcome)
	return 0
}

// outboxPolicy sets a tenant's outbox_policy and max_outbox.
func (s *outboxStack) outboxPolicy(tenant string, p tenants.OutboxPolicy, max int64) {
	s.t.Helper()
	if _, err := s.store.UpdateTenant(ctx, tenant, tenants.TenantUpdate{OutboxPolicy: &p}); err != nil {
		s.t.Fatal(err)
	}
	s.setQuota(tenant, "max_outbox", max)
}

// TestOutboxFullRefuses: under outbox_policy refuse, a QoS 1 publish
// matching a rule whose outbox holds max_outbox messages gets PUBACK 0x97
// (quota exceeded) from an MQTT 5 publisher, and closes a 3.1.1
// publisher's connection; a QoS 0 one goes through undelivered; a publish matching no rule goes through; once the receiver
// takes the backlog, publishes are taken again.
func TestOutboxFullRefuses(t *testing.T) {
	ev := events.NewMemory(1000)
	s := newOutboxStack(t, time.Hour, func(c *broker.Config) { c.Events = ev })
	s.tenant("acme")
	s.outboxPolicy("acme", tenants.OutboxRefuse, 3)
	rc := newWebhookReceiver(t)
	rc.answer(http.StatusServiceUnavailable)
	hook := s.destination("acme", "hook", rc, "sensors/#", "")
	pub := mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub")
	for i := range 3 {
		if r := pub.pub(t, "sensors/temp", fmt.Sprint(i), 1, false); r.ReasonCode != 0 {
			t.Fatalf("publish %d: PUBACK 0x%02x, want 0", i, r.ReasonCode)
		}
	}
	if r := pub.pub(t, "sensors/temp", "3", 1, false); r.ReasonCode != 0x97 {
		t.Fatalf("publish to a full outbox: PUBACK 0x%02x, want 0x97 quota exceeded", r.ReasonCode)
	}
	if n := s.hub.QuotaHits("acme", "max_outbox"); n != 1 {
		t.Errorf("max_outbox hits counted: %d, want 1", n)
	}
	// The refused publish is its device's quota_exceeded (raised before
	// its PUBACK), not an outbox_dropped: nothing was dropped.
	var refusedEvents []string
	for _, e := range ev.Recent("acme") {
		if e.Type == events.OutboxDropped || e.Type == events.QuotaExceeded && e.Quota == "max_outbox" {
			refusedEvents = append(refusedEvents, e.Type+"/"+e.Device)
		}
	}
	if fmt.Sprint(refusedEvents) != "[quota_exceeded/pub]" {
		t.Errorf("events of the refused publish %v, want [quota_exceeded/pub]", refusedEvents)
	}
	// A second rule to the same destination (in force once created: the
	// store tells the hub of the change as it commits): the QoS 0 message
	// it does not take is still one message dropped.
	if _, err := s.store.CreateExportRule(ctx, "acme", tenants.ExportRuleInput{Filter: "sensors/+", Destination: "hook"}); err != nil {
		t.Fatal(err)
	}
	pub.pub(t, "sensors/temp", "qos0", 0, false)
	// The QoS 0 publish is acknowledged to nobody: the tenant hears of it.
	expectOutboxDropped(t, ev, "acme", events.Event{Destination: hook, Reason: string(tenants.OutboxRefuse), Quota: "max_outbox", Limit: 3, Count: 1})
	old := mustV3(t, s.addr, "acme/old", s.device("acme", "old"), "old", true)
	old.Publish("sensors/temp", 1, false, "from 3.1.1")
	if !old.lostWithin(5 * time.Second) {
		t.Fatal("a 3.1.1 QoS 1 publish to a full outbox under refuse left its connection open")
	}
	if st, err := s.hub.DeliveryStatus(ctx, "acme", hook); err != nil || st.Dropped != 1 {
		t.Errorf("dropped %d (%v), want 1: the QoS 0 message, not the refused publishes", st.Dropped, err)
	}
	if r := pub.pub(t, "lights/1", "on", 1, false); r.ReasonCode != 0 {
		t.Fatalf("publish matching no rule: PUBACK 0x%02x, want 0", r.ReasonCode)
	}
	rc.answer(http.StatusOK)
	eventually(t, 10*time.Second, "the backlog is delivered", func() bool {
		st, err := s.hub.DeliveryStatus(ctx, "acme", hook)
		return err == nil && st.Backlog == 0 && st.Delivered == 3
	})
	if r := pub.pub(t, "sensors/temp", "4", 1, false); r.ReasonCode != 0 {
		t.Fatalf("publish after the backlog drained: PUBACK 0x%02x, want 0", r.ReasonCode)
	}
	eventually(t, 10*time.Second, "it is delivered", func() bool { return len(rc.messages()) == 4 })
	var got []string
	for _, m := range rc.messages() {
		got = append(got, string(m.Payload))
	}
	if fmt.Sprint(got) != "[0 1 2 4]" {
		t.Errorf("delivered %v, want [0 1 2 4]", got)
	}
}

// TestOutboxFullDropsOldest: under drop_oldest (the default), a full
// outbox drops its oldest messages and every publish is acknowledged; what
// is delivered once the receiver recovers is the newest max_outbox, in
// order, and the drops are counted.
func TestOutboxFullDropsOldest(t *testing.T) {
	ev := events.NewMemory(1000)
	var ahead atomic.Int64 // the hub's clock runs, this far ahead of the machine's
	now := func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }
	s := newOutboxStack(t, time.Hour, func(c *broker.Config) { c.Events, c.Now = ev, now })
	s.tenant("other")
	s.tenant("acme")
	s.setQuota("acme", "max_outbox", 5)
	rc := newWebhookReceiver(t)
	rc.answer(http.StatusServiceUnavailable)
	hook := s.destination("acme", "hook", rc, "sensors/#", "")
	otherRC := newWebhookReceiver(t)
	s.destination("other", "hook", otherRC, "sensors/#", "")
	otherPub := mustV5(t, s.addr, "other/pub", s.device("other", "pub"), "pub")
	if r := otherPub.pub(t, "sensors/temp", "x", 1, false); r.ReasonCode != 0 {
		t.Fatalf("other's publish: PUBACK 0x%02x", r.ReasonCode)
	}
	pub := mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub")
	const n = 20
	for i := range n {
		if r := pub.pub(t, "sensors/temp", fmt.Sprint(i), 1, false); r.ReasonCode != 0 {
			t.Fatalf("publish %d: PUBACK 0x%02x, want 0", i, r.ReasonCode)
		}
	}
	eventually(t, 10*time.Second, "the outbox is trimmed to 5", func() bool {
		st, err := s.hub.DeliveryStatus(ctx, "acme", hook)
		return err == nil && st.Backlog == 5 && st.Dropped == n-5
	})
	// One outbox_dropped event (the drops folded for a minute), of the
	// first trim; none for another tenant, which has an outbox too.
	first := expectOutboxDropped(t, ev, "acme", events.Event{Destination: hook, Reason: string(tenants.OutboxDropOldest), Quota: "max_outbox", Limit: 5})
	if first.Count < 1 || first.Count > n-5 {
		t.Fatalf("outbox_dropped counts %d drops, want 1 to %d", first.Count, n-5)
	}
	// A minute on, the next drop raises the drops folded since, with it.
	ahead.Store(int64(time.Minute))
	if r := pub.pub(t, "sensors/temp", fmt.Sprint(n), 1, false); r.ReasonCode != 0 {
		t.Fatalf("publish %d: PUBACK 0x%02x, want 0", n, r.ReasonCode)
	}
	var counted int64
	eventually(t, 10*time.Second, "a second outbox_dropped event", func() bool {
		counted = 0
		raised := 0
		for _, e := range ev.Recent("acme") {
			if e.Type == events.OutboxDropped {
				counted += e.Count
				raised++
			}
		}
		return raised == 2
	})
	if counted != n-4 {
		t.Errorf("the two outbox_dropped events count %d drops, want %d (the status's)", counted, n-4)
	}
	rc.answer(http.StatusOK)
	eventually(t, 10*time.Second, "the newest 5 are delivered", func() bool { return len(rc.messages()) == 5 })
	for i, m := range rc.messages() {
		if want := fmt.Sprint(n - 4 + i); string(m.Payload) != want {
			t.Fatalf("delivered message %d: %s, want %s", i, m.Payload, want)
		}
	}
	eventually(t, 10*time.Second, "the status counts 16 dropped and 5 delivered", func() bool {
		st, _ := s.hub.DeliveryStatus(ctx, "acme", hook)
		return st.Dropped == n-4 && st.Delivered == 5
	})
	for _, e := range ev.Recent("other") {
		if e.Type == events.OutboxDropped {
			t.Errorf("another tenant got %+v", e)
		}
	}
}

// TestOutboxDestinationPolicy: a destination's own outbox_policy decides
// what its full outbox does, over the tenant's: with the tenant on
// drop_oldest, a publish for a full destination set to refuse is refused
// while one for a full destination on the tenant's policy is taken; with
// the tenant on refuse, a destination set to drop_oldest takes it.
func TestOutboxDestinationPolicy(t *testing.T) {
	s := newOutboxStack(t, time.Hour)
	s.tenant("acme")
	s.setQuota("acme", "max_outbox", 2)
	rc := newWebhookReceiver(t)
	rc.answer(http.StatusServiceUnavailable)
	strict := s.destination("acme", "strict", rc, "strict/#", "")
	loose := s.destination("acme", "loose", rc, "loose/#", "")
	setPolicy := func(id string, p tenants.OutboxPolicy) {
		t.Helper()
		if _, err := s.store.UpdateDestination(ctx, "acme", id, tenants.DestinationUpdate{OutboxPolicy: &p}, nil); err != nil {
			t.Fatal(err)
		}
	}
	setPolicy(strict, tenants.OutboxRefuse)
	pub := mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub")
	for _, topic := range []string{"strict/a", "loose/a"} {
		for i := range 2 {
			if r := pub.pub(t, topic, fmt.Sprint(i), 1, false); r.ReasonCode != 0 {
				t.Fatalf("publish %d to %s: PUBACK 0x%02x, want 0", i, topic, r.ReasonCode)
			}
		}
	}
	if r := pub.pub(t, "strict/a", "full", 1, false); r.ReasonCode != 0x97 {
		t.Errorf("to the full destination set to refuse: PUBACK 0x%02x, want 0x97", r.ReasonCode)
	}
	if r := pub.pub(t, "loose/a", "full", 1, false); r.ReasonCode != 0 {
		t.Errorf("to the full destination on the tenant's drop_oldest: PUBACK 0x%02x, want 0", r.ReasonCode)
	}
	// The tenant on refuse: the destination that says drop_oldest takes
	// it, the one on the tenant's refuses now.
	s.outboxPolicy("acme", tenants.OutboxRefuse, 2)
	setPolicy(strict, tenants.OutboxDropOldest)
	eventually(t, 10*time.Second, "loose's outbox trimmed back to 2", func() bool {
		st, err := s.hub.DeliveryStatus(ctx, "acme", loose)
		return err == nil && st.Backlog == 2
	})
	if r := pub.pub(t, "strict/a", "taken", 1, false); r.ReasonCode != 0 {
		t.Errorf("to the full destination now on drop_oldest: PUBACK 0x%02x, want 0", r.ReasonCode)
	}
	if r := pub.pub(t, "loose/a", "refused", 1, false); r.ReasonCode != 0x97 {
		t.Errorf("to the full destination now on the tenant's refuse: PUBACK 0x%02x, want 0x97", r.ReasonCode)
	}
	// "" hands strict back to the tenant's refuse.
	setPolicy(strict, "")
	eventually(t, 10*time.Second, "strict's outbox trimmed back to 2", func() bool {
		st, err := s.hub.DeliveryStatus(ctx, "acme", strict)
		return err == nil && st.Backlog == 2
	})
	if r := pub.pub(t, "strict/a", "refused", 1, false); r.ReasonCode != 0x97 {
		t.Errorf("to the full destination back on the tenant's refuse: PUBACK 0x%02x, want 0x97", r.ReasonCode)
	}
}

// TestOutboxDestinationMax: a destination's own max_outbox bounds its
// outbox below the tenant's quota, and one above the quota is the quota;
// a publish refused there raises quota_exceeded with the limit that
// applied.
func TestOutboxDestinationMax(t *testing.T) {
	ev := events.NewMemory(1000)
	s := newOutboxStack(t, time.Hour, func(c *broker.Config) { c.Events = ev })
	s.tenant("acme")
	s.outboxPolicy("acme", tenants.OutboxRefuse, 3)
	rc := newWebhookReceiver(t)
	rc.answer(http.StatusServiceUnavailable)
	small := s.destination("acme", "small", rc, "small/#", "")
	big := s.destination("acme", "big", rc, "big/#", "")
	for id, n := range map[string]int64{small: 1, big: 100} {
		if _, err := s.store.UpdateDestination(ctx, "acme", id, tenants.DestinationUpdate{MaxOutbox: &n}, nil); err != nil {
			t.Fatal(err)
		}
	}
	// One device each: a device's quota events are one a second at most.
	pubs := map[string]*v5{"small/a": mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub"),
		"big/a": mustV5(t, s.addr, "acme/pub2", s.device("acme", "pub2"), "pub2")}
	pub := pubs["small/a"]
	for _, tc := range []struct {
		topic string
		taken int
	}{{"small/a", 1}, {"big/a", 3}} {
		pub := pubs[tc.topic]
		for i := range tc.taken {
			if r := pub.pub(t, tc.topic, fmt.Sprint(i), 1, false); r.ReasonCode != 0 {
				t.Fatalf("publish %d to %s: PUBACK 0x%02x, want 0", i, tc.topic, r.ReasonCode)
			}
		}
		if r := pub.pub(t, tc.topic, "over", 1, false); r.ReasonCode != 0x97 {
			t.Errorf("publish %d to %s: PUBACK 0x%02x, want 0x97", tc.taken, tc.topic, r.ReasonCode)
		}
	}
	var limits []int64
	for _, e := range ev.Recent("acme") {
		if e.Type == events.QuotaExceeded && e.Quota == "max_outbox" {
			limits = append(limits, e.Limit)
		}
	}
	// Under drop_oldest (its own), the worker trims to its own bound.
	trimmed := s.destination("acme", "trimmed", rc, "trimmed/#", "")
	two, dropOldest := int64(2), tenants.OutboxDropOldest
	if _, err := s.store.UpdateDestination(ctx, "acme", trimmed, tenants.DestinationUpdate{MaxOutbox: &two, OutboxPolicy: &dropOldest}, nil); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if r := pub.pub(t, "trimmed/a", fmt.Sprint(i), 1, false); r.ReasonCode != 0 {
			t.Fatalf("publish %d to trimmed/a: PUBACK 0x%02x, want 0", i, r.ReasonCode)
		}
	}
	eventually(t, 10*time.Second, "trimmed's outbox trimmed to its own 2", func() bool {
		st, err := s.hub.DeliveryStatus(ctx, "acme", trimmed)
		return err == nil && st.Backlog == 2 && st.Dropped == 2
	})
	expectOutboxDropped(t, ev, "acme", events.Event{Destination: trimmed, Reason: string(tenants.OutboxDropOldest), Quota: "max_outbox", Limit: 2})
	if got := fmt.Sprint(limits); got != "[1 3]" {
		t.Errorf("quota_exceeded limits %v, want [1 3]: the destination's, then the tenant's quota over a bound above it", limits)
	}
}

// TestOutboxBoundLoweredUnderRefuse: lowering a destination's own
// max_outbox below what its outbox holds, under refuse, refuses new
// publishes but drops none of those waiting (acknowledged as kept): once
// the receiver takes them, all are delivered.
func TestOutboxBoundLoweredUnderRefuse(t *testing.T) {
	s := newOutboxStack(t, time.Hour)
	s.tenant("acme")
	s.outboxPolicy("acme", tenants.OutboxRefuse, 10)
	rc := newWebhookReceiver(t)
	rc.answer(http.StatusServiceUnavailable)
	hook := s.destination("acme", "hook", rc, "sensors/#", "")
	pub := mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub")
	for i := range 3 {
		if r := pub.pub(t, "sensors/t", fmt.Sprint(i), 1, false); r.ReasonCode != 0 {
			t.Fatalf("publish %d: PUBACK 0x%02x, want 0", i, r.ReasonCode)
		}
	}
	one := int64(1)
	if _, err := s.store.UpdateDestination(ctx, "acme", hook, tenants.DestinationUpdate{MaxOutbox: &one}, nil); err != nil {
		t.Fatal(err)
	}
	if r := pub.pub(t, "sensors/t", "over", 1, false); r.ReasonCode != 0x97 {
		t.Errorf("publish over the lowered bound: PUBACK 0x%02x, want 0x97", r.ReasonCode)
	}
	rc.answer(http.StatusOK)
	eventually(t, 10*time.Second, "the three waiting are delivered", func() bool {
		st, err := s.hub.DeliveryStatus(ctx, "acme", hook)
		return err == nil && st.Delivered == 3
	})
	if st, _ := s.hub.DeliveryStatus(ctx, "acme", hook); st.Dropped != 0 {
		t.Errorf("dropped %d of the acknowledged messages, want none", st.Dropped)
	}
}

// expectOutboxDropped waits for the tenant's outbox_dropped event like
// want (its Count too, unless 0), checks it is the only one, and returns it.
func expectOutboxDropped(t *testing.T, ev *events.Memory, tenant string, want events.Event) events.Event {
	t.Helper()
	var got []events.Event
	eventually(t, 10*time.Second, "an outbox_dropped event", func() bool {
		got = got[:0]
		for _, e := range ev.Recent(tenant) {
			if e.Type == events.OutboxDropped {
				got = append(got, e)
			}
		}
		return len(got) > 0
	})
	if len(got) != 1 {
		t.Fatalf("outbox_dropped events %+v, want one", got)
	}
	e := got[0]
	if want.Count == 0 {
		want.Count = e.Count
	}
	want.Type, want.Tenant, want.Time, want.ID = events.OutboxDropped, tenant, e.Time, e.ID
	if e.Device != "" || e.ClientID != "" || !reflect.DeepEqual(e, want) {
		t.Errorf("outbox_dropped %+v, want %+v", e, want)
	}
	if topic := e.Topic(); topic != "$events/outbox/dropped/"+want.Destination {
		t.Errorf("its topic %q", topic)
	}
	return e
}

// TestOutboxSurvivesRestart: what an outbox holds when its hub stops is
// delivered by the next hub on the same session store once the tenant's
// broker starts there; a hub still running that had the outbox is fenced
// by the new one's claim and stops delivering it.
func TestOutboxSurvivesRestart(t *testing.T) {
	s := newOutboxStack(t, time.Hour)
	s.tenant("acme")
	rc := newWebhookReceiver(t)
	rc.answer(http.StatusServiceUnavailable)
	hook := s.destination("acme", "hook", rc, "sensors/#", "")
	secret := s.device("acme", "pub")
	pub := mustV5(t, s.addr, "acme/pub", secret, "pub")
	const n = 10
	for i := range n {
		pub.pub(t, "sensors/temp", fmt.Sprint(i), 1, false)
	}
	cfg := broker.Config{Directory: s.store, Changes: s.store.Changes(), Usage: s.store, Sessions: broker.SessionsOf(s.hub), Delivery: broker.DeliveryOf(s.hub)}
	hub2, addr2 := serveHub(t, cfg)
	mustV5(t, addr2, "acme/pub", secret, "pub") // starts acme's broker there
	rc.answer(http.StatusOK)
	eventually(t, 10*time.Second, "every message is delivered", func() bool { return len(rc.messages()) >= n })
	seen := map[string]int{}
	for _, m := range rc.messages() {
		seen[string(m.Payload)]++
	}
	for i := range n {
		if seen[fmt.Sprint(i)] == 0 {
			t.Errorf("message %d never delivered", i)
		}
	}
	s.hub.Close()
	pub2 := mustV5(t, addr2, "acme/pub", secret, "pub")
	pub2.pub(t, "sensors/temp", "10", 1, false)
	eventually(t, 10*time.Second, "the second hub delivers new messages", func() bool {
		ms := rc.messages()
		return len(ms) > 0 && string(ms[len(ms)-1].Payload) == "10"
	})
	// The receiver has the message before the hub acknowledges it in the
	// store and counts it: the backlog reaches 0 a moment later. The
	// first ten may have gone from either hub: the first one's worker
	// retries until it is closed, and once the receiver answered 200 it
	// may have been first.
	eventually(t, 10*time.Second, "the second hub's backlog is 0", func() bool {
		st, err := hub2.DeliveryStatus(ctx, "acme", hook)
		return err == nil && st.Backlog == 0 && st.Delivered >= 1 && st.Delivered <= 11
	})
}

// TestOutboxResumesWithoutConnection: after a restart (a new hub on the
// same session store), a tenant whose outbox holds messages has its broker
// started and its outbox delivered although no device connects; its
// broker stays up while the outbox holds messages.
func TestOutboxResumesWithoutConnection(t *testing.T) {
	s := newOutboxStack(t, time.Hour)
	s.tenant("acme")
	rc := newWebhookReceiver(t)
	rc.answer(http.StatusServiceUnavailable)
	hook := s.destination("acme", "hook", rc, "sensors/#", "")
	pub := mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub")
	const n = 5
	for i := range n {
		pub.pub(t, "sensors/temp", fmt.Sprint(i), 1, false)
	}
	sessions, delivery := broker.SessionsOf(s.hub), broker.DeliveryOf(s.hub)
	s.hub.Close()
	rc.answer(http.StatusOK)
	hub2, _ := serveHub(t, broker.Config{Directory: s.store, Changes: s.store.Changes(), Usage: s.store, Sessions: sessions, Delivery: delivery})
	eventually(t, 10*time.Second, "the outbox is delivered with no device connected", func() bool { return len(rc.messages()) >= n })
	eventually(t, 10*time.Second, "the status says delivered", func() bool {
		st, err := hub2.DeliveryStatus(ctx, "acme", hook)
		return err == nil && st.Delivered == n && st.Backlog == 0
	})
}

// TestOutboxReceiverFailures: a receiver that answers 500, takes longer
// than the sender's timeout, resets the connection, or presents a
// certificate the hub does not trust gets the batch again, with backoff,
// until it takes it (the last moved to a good receiver by changing the
// destination's URL while the batch is retried); nothing is lost or
// reordered, and the status names the failure.
func TestOutboxReceiverFailures(t *testing.T) {
	for _, tc := range []struct {
		name, wantErr string
		fail          func(w http.ResponseWriter)
	}{
		{"status 500", "500", func(w http.ResponseWriter) { w.WriteHeader(http.StatusInternalServerError) }},
		{"timeout", "timeout", func(w http.ResponseWriter) { time.Sleep(700 * time.Millisecond); w.WriteHeader(http.StatusNoContent) }},
		{"reset", "connect", func(w http.ResponseWriter) {
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.(*net.TCPConn).SetLinger(0)
				conn.Close()
			}
		}},
		{"untrusted certificate", "tls", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newOutboxStack(t, time.Hour, func(c *broker.Config) { c.Delivery.Sender = shortSender(t, 300*time.Millisecond) })
			s.tenant("acme")
			rc := newWebhookReceiver(t)
			var failing atomic.Bool
			failing.Store(true)
			url := rc.URL + "/hook"
			if tc.fail != nil {
				good := rc.Server.Config.Handler
				rc.Server.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if failing.Load() {
						tc.fail(w)
						return
					}
					good.ServeHTTP(w, r)
				})
			} else {
				bad := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
				t.Cleanup(bad.Close)
				url = bad.URL + "/hook"
			}
			hook := s.destinationAt("acme", "hook", url, rc.secret, "sensors/#")
			pub := mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub")
			const n = 5
			for i := range n {
				if r := pub.pub(t, "sensors/temp", fmt.Sprint(i), 1, false); r.ReasonCode != 0 {
					t.Fatalf("PUBACK 0x%02x: a failing receiver must not refuse the publisher", r.ReasonCode)
				}
			}
			eventually(t, 10*time.Second, "an attempt failed and its error is in the status", func() bool {
				st, _ := s.hub.DeliveryStatus(ctx, "acme", hook)
				return st.LastError != nil && strings.Contains(st.LastErrorText, tc.wantErr)
			})
			if tc.fail != nil {
				failing.Store(false)
			} else {
				fixed := rc.URL + "/hook"
				if _, err := s.store.UpdateDestination(ctx, "acme", hook, tenants.DestinationUpdate{URL: &fixed}, nil); err != nil {
					t.Fatal(err)
				}
			}
			eventually(t, 10*time.Second, "every message reaches the receiver once it takes them", func() bool { return len(rc.messages()) >= n })
			seen := map[string]bool{}
			var order []string
			for _, m := range rc.messages() {
				if !seen[string(m.Payload)] {
					order = append(order, string(m.Payload))
				}
				seen[string(m.Payload)] = true
			}
			if fmt.Sprint(order) != "[0 1 2 3 4]" {
				t.Errorf("first arrivals %v, want [0 1 2 3 4]", order)
			}
		})
	}
}

// shortSender sends to receivers on 127.0.0.1 with a short timeout.
func shortSender(t testing.TB, timeout time.Duration) *dataout.Sender {
	t.Helper()
	g, err := dataout.NewGuard("127.0.0.1", false)
	if err != nil {
		t.Fatal(err)
	}
	sender, err := dataout.NewSender(dataout.SenderConfig{Guard: g, Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sender.Close) // runs after the hub stopped: registered before it
	return sender
}

// destinationAt is destination with a URL and secret of the test's
// choosing, and no condition.
func (s *outboxStack) destinationAt(tenant, name, url, secret, filter string) string {
	s.t.Helper()
	id := tenants.NewDestinationID()
	if _, err := s.store.CreateDestination(ctx, tenant, id, tenants.DestinationInput{Name: name, Type: "webhook", URL: url},
		tenants.Sealed{Secret: s.sealer.SealSecret(tenant, id, secret)}); err != nil {
		s.t.Fatal(err)
	}
	if _, err := s.store.CreateExportRule(ctx, tenant, tenants.ExportRuleInput{Filter: filter, Destination: name}); err != nil {
		s.t.Fatal(err)
	}
	return id
}

// TestOutboxSpread: a tenant served by two nodes at once: what a device
// publishes on either is put in the outbox where it arrives (the session
// store both share), and the tenant's home alone delivers it, finding
// what the other node added as it polls.
func TestOutboxSpread(t *testing.T) {
	sealer, err := dataout.NewSealer(dataout.KeyFromToken("test-operator-token"))
	if err != nil {
		t.Fatal(err)
	}
	s := newSpread(t, func(c *broker.Config) {
		c.Delivery = &broker.Delivery{Rules: c.Directory.(*tenants.Store), Sealer: sealer, Sender: shortSender(t, 2*time.Second),
			Batch: 10, Poll: 100 * time.Millisecond, Policy: dataout.Policy{Base: 10 * time.Millisecond, Max: 50 * time.Millisecond}}
	})
	os := &outboxStack{stack: s.stack, sealer: sealer}
	s.tenant("acme")
	rc := newWebhookReceiver(t)
	hook := os.destination("acme", "hook", rc, "sensors/#", "")
	secret := s.device("acme", "d", tenants.ClientIDsAny)
	onHome := mustV5(t, s.addr, user("acme", "d"), secret, "at-home")
	onOther := mustV5(t, s.b.addr, user("acme", "d"), secret, "elsewhere")
	const n = 10
	for i := range n {
		if r := onOther.pub(t, "sensors/b", fmt.Sprint(i), 1, false); r.ReasonCode != 0 {
			t.Fatalf("publish on the other node: PUBACK 0x%02x", r.ReasonCode)
		}
		onHome.pub(t, "sensors/a", fmt.Sprint(i), 1, false)
	}
	eventually(t, 10*time.Second, "every message from both nodes is delivered", func() bool { return len(rc.messages()) >= 2*n })
	byTopic := map[string][]string{}
	for _, m := range rc.messages() {
		byTopic[m.Topic] = append(byTopic[m.Topic], string(m.Payload))
	}
	for _, topic := range []string{"sensors/a", "sensors/b"} {
		if got := fmt.Sprint(byTopic[topic]); got != "[0 1 2 3 4 5 6 7 8 9]" {
			t.Errorf("%s delivered %s, want 0 to 9 once each, in order", topic, got)
		}
	}
	eventually(t, 5*time.Second, "the home counts them delivered", func() bool {
		st, _ := s.hub.DeliveryStatus(ctx, "acme", hook)
		return st.Delivered == 2*n && st.Backlog == 0
	})
	if st, _ := s.b.hub.DeliveryStatus(ctx, "acme", hook); st.Delivered != 0 {
		t.Errorf("the other node delivered %d: only the home delivers", st.Delivered)
	}
}

// flakyRules is the directory as the outbox reads it, failing while fail
// is set.
type flakyRules struct {
	*tenants.Store
	fail atomic.Bool
	// failList fails only the list of destinations.
	failList atomic.Bool
}

func (f *flakyRules) Destinations(ctx context.Context, tenant string) ([]tenants.Destination, error) {
	if f.fail.Load() || f.failList.Load() {
		return nil, errDirectoryDown
	}
	return f.Store.Destinations(ctx, tenant)
}

var errDirectoryDown = fmt.Errorf("directory down")

func (f *flakyRules) Rules(ctx context.Context, tenant string) ([]tenants.ExportRule, error) {
	if f.fail.Load() {
		return nil, errDirectoryDown
	}
	return f.Store.Rules(ctx, tenant)
}

func (f *flakyRules) Destination(ctx context.Context, tenant, id string) (tenants.Destination, error) {
	if f.fail.Load() {
		return tenants.Destination{}, errDirectoryDown
	}
	return f.Store.Destination(ctx, tenant, id)
}

// TestOutboxDestinationsUnreadable: a broker whose first read of the
// rules finds them but not the destinations (their own outbox_policy)
// serves the rules with the tenant's policy rather than refusing
// publishes, and reads the destinations again until it has them: then a
// destination's refuse applies.
func TestOutboxDestinationsUnreadable(t *testing.T) {
	var rules *flakyRules
	s := newOutboxStack(t, time.Hour, func(c *broker.Config) {
		rules = &flakyRules{Store: c.Directory.(*tenants.Store)}
		rules.failList.Store(true)
		c.Delivery.Rules = rules
	})
	s.tenant("acme")
	s.setQuota("acme", "max_outbox", 1)
	rc := newWebhookReceiver(t)
	rc.answer(http.StatusServiceUnavailable)
	hook := s.destination("acme", "hook", rc, "sensors/#", "")
	refuse := tenants.OutboxRefuse
	if _, err := s.store.UpdateDestination(ctx, "acme", hook, tenants.DestinationUpdate{OutboxPolicy: &refuse}, nil); err != nil {
		t.Fatal(err)
	}
	pub := mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub")
	for i := range 2 { // the second finds the outbox full: the tenant's drop_oldest takes it
		if r := pub.pub(t, "sensors/temp", fmt.Sprint(i), 1, false); r.ReasonCode != 0 {
			t.Fatalf("publish %d with the destinations unreadable: PUBACK 0x%02x, want 0", i, r.ReasonCode)
		}
	}
	rules.failList.Store(false)
	eventually(t, 10*time.Second, "the destination's refuse applies once read", func() bool {
		return pub.pub(t, "sensors/temp", "later", 1, false).ReasonCode == 0x97
	})
}

// TestOutboxDirectoryDown: when the directory cannot be read after a
// change dropped the rules, the rules read before go on serving: matching
// publishes are acknowledged and kept, and delivered once the directory
// is back (the destination could not be read meanwhile).
func TestOutboxDirectoryDown(t *testing.T) {
	var rules *flakyRules
	s := newOutboxStack(t, time.Hour, func(c *broker.Config) {
		rules = &flakyRules{Store: c.Directory.(*tenants.Store)}
		c.Delivery.Rules = rules
	})
	s.tenant("acme")
	rc := newWebhookReceiver(t)
	hook := s.destination("acme", "hook", rc, "sensors/#", "")
	pub := mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub")
	pub.pub(t, "sensors/temp", "0", 1, false)
	eventually(t, 10*time.Second, "the first message is delivered", func() bool { return len(rc.messages()) == 1 })

	rules.fail.Store(true)
	if _, err := s.store.CreateExportRule(ctx, "acme", tenants.ExportRuleInput{Filter: "other/#", Destination: "hook"}); err != nil {
		t.Fatal(err) // a change: the outbox drops its rules
	}
	time.Sleep(100 * time.Millisecond)
	for i := 1; i <= 3; i++ {
		if r := pub.pub(t, "sensors/temp", fmt.Sprint(i), 1, false); r.ReasonCode != 0 {
			t.Fatalf("publish with the directory down: PUBACK 0x%02x, want 0", r.ReasonCode)
		}
	}
	eventually(t, 10*time.Second, "an attempt failed on the directory", func() bool {
		st, _ := s.hub.DeliveryStatus(ctx, "acme", hook)
		return st.Backlog == 3 && strings.Contains(st.LastErrorText, "could not be read from the directory")
	})
	// The status, shown to every member, does not repeat the directory's
	// own error (a database's errors name its address and user).
	if st, _ := s.hub.DeliveryStatus(ctx, "acme", hook); strings.Contains(st.LastErrorText, "directory down") || len(st.Recent) == 0 ||
		strings.Contains(st.Recent[0].Error, "directory down") {
		t.Errorf("the status repeats the directory's error: %q, %+v", st.LastErrorText, st.Recent)
	}
	rules.fail.Store(false)
	eventually(t, 10*time.Second, "the kept messages are delivered once it is back", func() bool { return len(rc.messages()) == 4 })
}

// TestOutboxDestinationDeleted: once a destination's rules and then the
// destination are deleted, its worker deletes its dead letters and ends.
func TestOutboxDestinationDeleted(t *testing.T) {
	s := newOutboxStack(t, 300*time.Millisecond)
	s.tenant("acme")
	rc := newWebhookReceiver(t)
	rc.answer(http.StatusInternalServerError)
	hook := s.destination("acme", "hook", rc, "sensors/#", "")
	pub := mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub")
	pub.pub(t, "sensors/temp", "1", 1, false)
	eventually(t, 10*time.Second, "a dead letter", func() bool {
		st, _ := s.hub.DeliveryStatus(ctx, "acme", hook)
		return st.DeadLetters == 1 && st.Backlog == 0
	})
	rules, err := s.store.Rules(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		if err := s.store.DeleteExportRule(ctx, "acme", r.ID); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.store.DeleteDestination(ctx, "acme", hook); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the deleted destination's dead letters are gone", func() bool {
		st, _ := s.hub.DeliveryStatus(ctx, "acme", hook)
		return st.DeadLetters == 0
	})
	eventually(t, 5*time.Second, "its worker says so", func() bool {
		return strings.Contains(s.logs.String(), "destination deleted: its outbox is closed")
	})
}

// TestOutboxRulesOverBudget: a QoS 1 publish whose tenant's rules have
// overspent their share of the node's CPU (more than the publish can wait
// for) is refused with 0x97 and not stored, to be sent again; a QoS 0 one
// is not sent by the rule that needed evaluating; a publish no
// evaluating rule matches goes through; another tenant's rules are not
// held back. Once the share has caught up, publishes go through again.
func TestOutboxRulesOverBudget(t *testing.T) {
	s := newOutboxStack(t, time.Hour)
	rc := newWebhookReceiver(t)
	for _, tenant := range []string{"acme", "beta"} {
		s.tenant(tenant)
		s.destination(tenant, "hook", rc, "sensors/#", `payload.temp > 0`)
	}
	acme := mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub")
	beta := mustV5(t, s.addr, "beta/pub", s.device("beta", "pub"), "pub")
	if r := acme.pub(t, "sensors/temp", `{"temp":1}`, 1, false); r.ReasonCode != 0 {
		t.Fatalf("within the share: PUBACK 0x%02x, want 0", r.ReasonCode)
	}
	broker.SpendRuleCPU(s.hub, "acme", time.Hour) // far more than a publish waits
	if r := acme.pub(t, "sensors/temp", `{"temp":2}`, 1, false); r.ReasonCode != 0x97 {
		t.Fatalf("over the share: PUBACK 0x%02x, want 0x97", r.ReasonCode)
	}
	acme.pub(t, "sensors/temp", `{"temp":3}`, 0, false)
	if r := acme.pub(t, "lights/1", `on`, 1, false); r.ReasonCode != 0 {
		t.Fatalf("a publish no rule evaluates: PUBACK 0x%02x, want 0", r.ReasonCode)
	}
	if r := beta.pub(t, "sensors/temp", `{"temp":4}`, 1, false); r.ReasonCode != 0 {
		t.Fatalf("another tenant's publish: PUBACK 0x%02x, want 0", r.ReasonCode)
	}
	eventually(t, 10*time.Second, "the accepted messages are delivered", func() bool { return len(rc.messages()) == 2 })
	broker.SpendRuleCPU(s.hub, "acme", -time.Hour-time.Second) // the share caught up
	if r := acme.pub(t, "sensors/temp", `{"temp":5}`, 1, false); r.ReasonCode != 0 {
		t.Fatalf("the share caught up: PUBACK 0x%02x, want 0", r.ReasonCode)
	}
	eventually(t, 10*time.Second, "it is delivered", func() bool { return len(rc.messages()) == 3 })
	var got []string
	for _, m := range rc.messages() {
		got = append(got, string(m.Payload))
	}
	slices.Sort(got)
	if want := `[{"temp":1} {"temp":4} {"temp":5}]`; fmt.Sprint(got) != want {
		t.Errorf("delivered %v, want %s", got, want)
	}
}

// TestOutboxRulesCompiledOnceEach: a change that leaves a rule's
// condition and projection as they were (here a destination renamed) does
// not compile them again. Some conditions of 4 KiB (nested list literals)
// take a few tenths of a second to compile and microseconds to evaluate:
// an admin renaming a destination in a loop would otherwise have every
// node holding the tenant compile all its rules again at each change, in
// the path of its next publish and outside its share of the CPU (100
// such rules: half a minute of a core).
func TestOutboxRulesCompiledOnceEach(t *testing.T) {
	s := newOutboxStack(t, time.Hour)
	s.tenant("acme")
	rc := newWebhookReceiver(t)
	nested := strings.Repeat("[", 43) + strings.Repeat("]", 43)
	slow := strings.Repeat(nested+" == [] || ", 42) + "payload.temp > 0"
	hook := s.destination("acme", "hook", rc, "sensors/#", slow)
	if _, err := s.store.CreateExportRule(ctx, "acme", tenants.ExportRuleInput{Filter: "sensors/#", Destination: "hook", Condition: slow + " || false"}); err != nil {
		t.Fatal(err)
	}
	pub := mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub")
	publish := func(payload string) time.Duration {
		t.Helper()
		start := time.Now()
		if r := pub.pub(t, "sensors/temp", payload, 1, false); r.ReasonCode != 0 {
			t.Fatalf("publish %s: PUBACK 0x%02x, want 0", payload, r.ReasonCode)
		}
		return time.Since(start)
	}
	first := publish(`{"temp":1}`) // compiles both rules
	renamed := "renamed"
	if _, err := s.store.UpdateDestination(ctx, "acme", hook, tenants.DestinationUpdate{Name: &renamed}, nil); err != nil {
		t.Fatal(err)
	}
	if second := publish(`{"temp":2}`); second > first/4 {
		t.Errorf("the publish after the destination was renamed took %v, the first (compiling the rules) %v: want the rules not compiled again",
			second.Round(time.Millisecond), first.Round(time.Millisecond))
	}
	eventually(t, 10*time.Second, "both messages are delivered (once each: the rules share a destination)", func() bool { return len(rc.messages()) == 2 })
}

// TestOutboxBatchBytes: a webhook request carries at most
// broker.WebhookBatchBytes of payload (a larger message goes alone), not
// up to the batch's count of messages whatever their size: 100 messages
// of a plan's largest (1 MiB) would make one body of 133 MB, which each
// of a tenant's 50 destinations' workers would build at once on its node
// (one message can match a rule of each), and which most receivers
// refuse.
func TestOutboxBatchBytes(t *testing.T) {
	s := newOutboxStack(t, time.Hour)
	s.tenant("acme")
	s.setQuota("acme", "max_packet_size", 1<<20)
	s.setQuota("acme", "bandwidth_in", 64<<20)
	rc := newWebhookReceiver(t)
	rc.answer(http.StatusServiceUnavailable) // the messages wait in the outbox
	hook := s.destination("acme", "hook", rc, "sensors/#", "")
	pub := mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub")
	const n, size = 8, 300 << 10 // 8 fit in one batch of 10 messages, 2.4 MB
	for i := range n {
		payload := fmt.Sprintf(`"%d%s"`, i, strings.Repeat("x", size))
		if r := pub.pub(t, "sensors/big", payload, 1, false); r.ReasonCode != 0 {
			t.Fatalf("publish %d: PUBACK 0x%02x, want 0", i, r.ReasonCode)
		}
	}
	eventually(t, 10*time.Second, "the messages wait in the outbox", func() bool {
		st, err := s.hub.DeliveryStatus(ctx, "acme", hook)
		return err == nil && st.Backlog == n
	})
	rc.answer(http.StatusNoContent)
	eventually(t, 20*time.Second, "every message is delivered", func() bool { return len(rc.messages()) == n })
	for i, m := range rc.messages() {
		if !strings.HasPrefix(string(m.Payload), fmt.Sprintf(`"%d`, i)) {
			t.Fatalf("message %d: %.10s…, want message %d (in order)", i, m.Payload, i)
		}
	}
	for _, b := range rc.taken() {
		bytes := 0
		for _, m := range b.Messages {
			bytes += len(m.Payload)
		}
		if len(b.Messages) > 1 && bytes > broker.WebhookBatchBytes {
			t.Errorf("a request carried %d messages, %d bytes of payload; want at most %d bytes (or one message)", len(b.Messages), bytes, broker.WebhookBatchBytes)
		}
	}
}
