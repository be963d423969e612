package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/api"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// sse is one server-sent event as a stream's reader parses it.
type sse struct {
	id, event, data string
}

// stream is an open GET /stream, read as it comes.
type stream struct {
	t      *testing.T
	status int
	body   string // the problem, when the status is not 200
	events chan sse
	ended  chan struct{} // closed when the server ends the stream
	cancel context.CancelFunc
	// skipped holds events next passed over, for a later next.
	skipped []sse
}

// openStream opens a stream with a bearer token and, if lastID is not
// empty, a Last-Event-ID; a stream that answered is read until closed.
func (e *env) openStream(path, token, lastID string) *stream {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", e.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		e.t.Fatalf("GET %s: %v", path, err)
	}
	s := &stream{t: e.t, status: resp.StatusCode, events: make(chan sse, 10_000), ended: make(chan struct{}), cancel: cancel}
	e.t.Cleanup(s.close)
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		s.body = string(b)
		close(s.ended)
		return s
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		e.t.Errorf("stream Content-Type %q, want text/event-stream", ct)
	}
	go func() {
		defer close(s.ended)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		var cur sse
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if cur.event != "" {
					s.events <- cur
				}
				cur = sse{}
			case strings.HasPrefix(line, ":"):
				s.events <- sse{event: "comment", data: line}
			case strings.HasPrefix(line, "id: "):
				cur.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				cur.event = line[7:]
			case strings.HasPrefix(line, "data: "):
				cur.data = line[6:]
			}
		}
	}()
	return s
}

func (s *stream) close() { s.cancel() }

// next returns the next event of that kind; those of other kinds wait
// for their own next.
func (s *stream) next(event string) sse {
	s.t.Helper()
	for i, ev := range s.skipped {
		if ev.event == event {
			s.skipped = append(s.skipped[:i], s.skipped[i+1:]...)
			return ev
		}
	}
	timeout := time.After(20 * time.Second)
	for {
		select {
		case ev := <-s.events:
			if ev.event == event {
				return ev
			}
			if ev.event != "comment" {
				s.skipped = append(s.skipped, ev)
			}
		case <-timeout:
			s.t.Fatalf("no %q event in 20s", event)
		}
	}
}

// none fails if an event of that kind comes within d.
func (s *stream) none(event string, d time.Duration) {
	s.t.Helper()
	timeout := time.After(d)
	for {
		select {
		case ev := <-s.events:
			if ev.event == event {
				s.t.Fatalf("unexpected %s: %+v", event, ev)
			}
		case <-timeout:
			return
		}
	}
}

// waitStreams waits until the tenant holds n open streams: a stream the
// reader closed is released once its handler has seen it go.
func (e *env) waitStreams(tenant string, n int64) {
	e.t.Helper()
	var got int64
	var err error
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if got, err = e.store.OpenStreams(context.Background(), tenant); err == nil && got == n {
			return
		}
	}
	e.t.Fatalf("%s holds %d open streams (%v), want %d", tenant, got, err, n)
}

func newStreamEnv(t *testing.T) *env {
	return newEnvWith(t, func(cfg *api.Config) {
		cfg.StreamPoll, cfg.StreamHeartbeat = 20*time.Millisecond, 100*time.Millisecond
	})
}

// TestStream: a viewer key streams what a real MQTT client publishes
// (over real HTTP), and the tenant's events with their ids; a second
// stream with Last-Event-ID gets the events after that id and no earlier
// one; another tenant's messages and events never come; bad requests are
// problems; heartbeats come while idle.
func TestStream(t *testing.T) {
	e := newStreamEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	e.mustTenant(u, "other")
	secret := e.mustDevice(u.token, "acme", "d1")
	otherSecret := e.mustDevice(u.token, "other", "d1")
	_, viewerKey := e.mustKey(u.token, "acme", tenants.RoleViewer)
	_, otherKey := e.mustKey(u.token, "other", tenants.RoleOwner)

	s := e.openStream("/v1/tenants/acme/stream?filter=sensors/%2B&events=1", viewerKey, "")
	if s.status != 200 {
		t.Fatalf("viewer key stream: %d %s", s.status, s.body)
	}
	s.next("ready")

	dev, err := e.dialMQTT(t, "acme/d1", secret, "d1", paho.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Disconnect(&paho.Disconnect{})
	otherDev, err := e.dialMQTT(t, "other/d1", otherSecret, "d1", paho.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer otherDev.Disconnect(&paho.Disconnect{})
	ctx := context.Background()
	if _, err := otherDev.Publish(ctx, &paho.Publish{Topic: "sensors/t", QoS: 1, Payload: []byte("other's")}); err != nil {
		t.Fatal(err)
	}
	if _, err := dev.Publish(ctx, &paho.Publish{Topic: "sensors/t", QoS: 1, Payload: []byte(`{"temp":21}`)}); err != nil {
		t.Fatal(err)
	}
	if _, err := dev.Publish(ctx, &paho.Publish{Topic: "other/t", QoS: 1, Payload: []byte("not matching")}); err != nil {
		t.Fatal(err)
	}
	if _, err := dev.Publish(ctx, &paho.Publish{Topic: "sensors/bin", QoS: 0, Payload: []byte{0xff, 0xfe}}); err != nil {
		t.Fatal(err)
	}
	var m struct {
		Topic, Payload, Encoding string
		QoS                      int
	}
	json.Unmarshal([]byte(s.next("message").data), &m)
	if m.Topic != "sensors/t" || m.Payload != `{"temp":21}` || m.Encoding != "utf-8" || m.QoS != 1 {
		t.Errorf("first message: %+v, want acme's sensors/t (not other's, not other/t)", m)
	}
	json.Unmarshal([]byte(s.next("message").data), &m)
	if m.Topic != "sensors/bin" || m.Payload != "//4=" || m.Encoding != "base64" {
		t.Errorf("binary message: %+v", m)
	}

	// Events: d1's connect, with an id, only acme's.
	ev := s.next("event")
	var got struct {
		ID           int64
		Type, Tenant string
		Device       string
	}
	json.Unmarshal([]byte(ev.data), &got)
	if got.Type != "connected" || got.Tenant != "acme" || ev.id != fmt.Sprint(got.ID) || got.ID == 0 {
		t.Errorf("first event: %+v (SSE id %q), want acme's connect with its id", got, ev.id)
	}
	firstID := ev.id
	s.next("comment") // a heartbeat while idle

	// More events; a stream resumed after the first gets the later ones.
	dev.Disconnect(&paho.Disconnect{})
	second := s.next("event")
	if !strings.Contains(second.data, `"disconnected"`) {
		t.Errorf("second event: %s, want the disconnect", second.data)
	}
	s.close()
	e.waitStreams("acme", 0) // the viewer key's one place is free again
	resumed := e.openStream("/v1/tenants/acme/stream?events=1", viewerKey, firstID)
	if resumed.status != 200 {
		t.Fatalf("resumed: %d %s", resumed.status, resumed.body)
	}
	if r := resumed.next("event"); r.id != second.id {
		t.Errorf("resumed after %s: first event %s %s, want %s", firstID, r.id, r.data, second.id)
	}
	resumed.none("event", 200*time.Millisecond)
	resumed.close()
	e.waitStreams("acme", 0)

	// Another tenant's key: 404, as on every tenant route.
	wantProblem(t, e.do("GET", "/v1/tenants/acme/stream?filter=%23", otherKey, nil), 404, "not_found", "", "other tenant's key")
	for _, tc := range []struct{ query, field string }{
		{"", "filter"},
		{"?filter=a/%23/b", "filter"},
		{"?filter=%24events/%23", "filter"},
		{"?events=maybe", "events"},
		{"?events=1&type=nonsense", "type"},
	} {
		wantProblem(t, e.do("GET", "/v1/tenants/acme/stream"+tc.query, viewerKey, nil), 400, "invalid", tc.field, "stream"+tc.query)
	}
	r := e.openStream("/v1/tenants/acme/stream?events=1", viewerKey, "x")
	if r.status != 400 {
		t.Errorf("Last-Event-ID x: %d %s, want 400", r.status, r.body)
	}
}

// TestStreamBound: free plan, max_streams 2: one person holds at most one
// (half, max_streams_each), a viewer key the other, a third stream is a
// 429 problem naming the quota, another tenant's streams are not counted,
// a key's fourth stream with a filter is over its live views (429), and a
// closed stream frees its place.
func TestStreamBound(t *testing.T) {
	e := newStreamEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	e.mustTenant(u, "other")
	_, viewer := e.mustKey(u.token, "acme", tenants.RoleViewer)
	var open []*stream
	for _, token := range []string{u.token, viewer} {
		s := e.openStream("/v1/tenants/acme/stream?events=1", token, "")
		if s.status != 200 {
			t.Fatalf("stream: %d %s", s.status, s.body)
		}
		s.next("ready")
		open = append(open, s)
	}
	_, third := e.mustKey(u.token, "acme", tenants.RoleViewer)
	r := e.do("GET", "/v1/tenants/acme/stream?events=1", third, nil)
	wantProblem(t, r, 429, "quota_exceeded", "", "a third stream")
	if r.json()["quota"] != "max_streams" {
		t.Errorf("429 names %v, want max_streams: %s", r.json()["quota"], r.body)
	}
	if s := e.openStream("/v1/tenants/other/stream?events=1", u.token, ""); s.status != 200 {
		t.Errorf("another tenant's stream: %d %s", s.status, s.body)
	}
	// Streams with a filter are live views too: one key has at most 3,
	// though business allows 10 streams (5 a key).
	want(t, e.do("PATCH", "/v1/admin/tenants/other", adminToken, map[string]any{"plan": "business"}), 200, "other on business")
	_, key := e.mustKey(u.token, "other", tenants.RoleViewer)
	for range 3 {
		if s := e.openStream("/v1/tenants/other/stream?filter=%23", key, ""); s.status != 200 {
			t.Fatalf("filter stream: %d %s", s.status, s.body)
		}
	}
	r = e.do("GET", "/v1/tenants/other/stream?filter=%23", key, nil)
	wantProblem(t, r, 429, "quota_exceeded", "", "a fourth live view of one key")
	if r.json()["quota"] != "live_views_each" {
		t.Errorf("429 names %v, want live_views_each: %s", r.json()["quota"], r.body)
	}

	open[0].close()
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		s := e.openStream("/v1/tenants/acme/stream?events=1", u.token, "")
		if s.status == 200 {
			break
		}
		s.close()
		if time.Now().After(deadline) {
			t.Fatalf("a closed stream did not free its place: %d %s", s.status, s.body)
		}
	}
}

// TestStreamSlowReaderDropped: a reader that never reads is disconnected
// once more than the buffer waits for it; the publisher goes on at full
// speed meanwhile, and another stream of the tenant gets every message.
func TestStreamSlowReaderDropped(t *testing.T) {
	e := newStreamEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	secret := e.mustDevice(u.token, "acme", "d1")
	want(t, e.do("PATCH", "/v1/admin/tenants/acme", adminToken, map[string]any{"quotas": map[string]any{"publish_rate": 100_000, "tenant_publish_rate": 100_000, "bandwidth_in": 100 << 20}}), 200, "raise rates")

	// The slow reader: a raw connection that sends the request and never
	// reads the answer.
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetReadBuffer(4096)
	}
	fmt.Fprintf(conn, "GET /v1/tenants/acme/stream?filter=%%23 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", u.token)
	_, viewer := e.mustKey(u.token, "acme", tenants.RoleViewer)
	fast := e.openStream("/v1/tenants/acme/stream?filter=%23", viewer, "")
	fast.next("ready")
	time.Sleep(100 * time.Millisecond) // both watches are in place

	dev, err := e.dialMQTT(t, "acme/d1", secret, "d1", paho.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Disconnect(&paho.Disconnect{})
	payload := []byte(strings.Repeat("x", 8<<10))
	const n = 2000 // 16 MB: past what the kernel holds and the stream's 8 MiB
	start := time.Now()
	for i := range n {
		if _, err := dev.Publish(context.Background(), &paho.Publish{Topic: fmt.Sprintf("t/%d", i), QoS: 1, Payload: payload}); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	took := time.Since(start)
	if took > 20*time.Second {
		t.Errorf("%d QoS 1 publishes took %v with a slow stream reader", n, took)
	}
	for i := range n {
		var m struct{ Topic string }
		json.Unmarshal([]byte(fast.next("message").data), &m)
		if m.Topic != fmt.Sprintf("t/%d", i) {
			t.Fatalf("fast reader's message %d: %s", i, m.Topic)
		}
	}
	// The slow reader's stream was ended by the server: its place among
	// the tenant's two (free plan) is free again, though it has read
	// nothing.
	third := e.openStream("/v1/tenants/acme/stream?filter=%23", u.token, "")
	if third.status != 200 {
		t.Fatalf("the slow reader's stream was not ended: a new one got %d %s", third.status, third.body)
	}
	if !strings.Contains(e.logs.String(), "reader too slow") {
		t.Error("the drop was not logged")
	}
	t.Logf("%d publishes of %d bytes in %v with a slow reader", n, len(payload), took)
}

// TestStreamOneKeyCannotTakeAll: a flood of stream opens from one API key
// gets at most half the tenant's places (pro: 3 of 5); the rest are 429
// problems naming max_streams_each, and another key still gets in.
func TestStreamOneKeyCannotTakeAll(t *testing.T) {
	e := newStreamEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	want(t, e.do("PATCH", "/v1/admin/tenants/acme", adminToken, map[string]any{"plan": "pro"}), 200, "acme on pro")
	_, flood := e.mustKey(u.token, "acme", tenants.RoleViewer)
	_, other := e.mustKey(u.token, "acme", tenants.RoleViewer)
	ok, refused := 0, 0
	for range 10 {
		s := e.openStream("/v1/tenants/acme/stream?events=1", flood, "")
		switch s.status {
		case 200:
			s.next("ready")
			ok++
		case 429:
			refused++
			var p map[string]any
			if err := json.Unmarshal([]byte(s.body), &p); err != nil || p["quota"] != "max_streams_each" || p["code"] != "quota_exceeded" {
				t.Errorf("a flooding key's refusal: %s, want quota_exceeded naming max_streams_each", s.body)
			}
		default:
			t.Fatalf("stream: %d %s", s.status, s.body)
		}
	}
	if ok != 3 || refused != 7 {
		t.Errorf("one key of a pro tenant (max_streams 5): %d streams open, %d refused; want 3 and 7", ok, refused)
	}
	for i := range 2 {
		s := e.openStream("/v1/tenants/acme/stream?events=1", other, "")
		if s.status != 200 {
			t.Fatalf("another key's stream %d beside the flood: %d %s", i+1, s.status, s.body)
		}
		s.next("ready")
	}
	r := e.do("GET", "/v1/tenants/acme/stream?events=1", u.token, nil)
	wantProblem(t, r, 429, "quota_exceeded", "", "a sixth stream of the tenant")
	if r.json()["quota"] != "max_streams" {
		t.Errorf("429 names %v, want max_streams: %s", r.json()["quota"], r.body)
	}
}

// TestStreamOperatorStaysOpen: the operator streams a tenant through an
// impersonation session, and that stream outlives its heartbeats (100 ms
// here), at each of which access is checked again. The bare operator token
// is no member of any tenant: 404, as for every tenant route, rather than
// a stream that ends at its first beat.
func TestStreamOperatorStaysOpen(t *testing.T) {
	e := newStreamEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	wantProblem(t, e.do("GET", "/v1/tenants/acme/stream?events=1", adminToken, nil), 404, "not_found", "", "the operator token on a tenant's stream")
	r := e.do("POST", "/v1/admin/tenants/acme/impersonate", adminToken, map[string]string{"reason": "ticket 7: watch the stream"})
	want(t, r, 201, "impersonate")
	imp := r.str("token")
	s := e.openStream("/v1/tenants/acme/stream?events=1", imp, "")
	if s.status != 200 {
		t.Fatalf("impersonation stream: %d %s", s.status, s.body)
	}
	s.next("ready")
	for range 5 {
		s.next("comment") // a heartbeat: access was checked and kept
	}
	select {
	case <-s.ended:
		t.Fatal("the operator's stream ended")
	default:
	}
	for _, ev := range s.skipped {
		if ev.event == "end" {
			t.Fatalf("the operator's stream ended: %+v", ev)
		}
	}
}

// TestStreamEndsWhenKeyDeleted: deleting the key ends its open stream.
func TestStreamEndsWhenKeyDeleted(t *testing.T) {
	e := newStreamEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	keyID, key := e.mustKey(u.token, "acme", tenants.RoleViewer)
	s := e.openStream("/v1/tenants/acme/stream?events=1", key, "")
	s.next("ready")
	want(t, e.do("DELETE", "/v1/tenants/acme/api-keys/"+keyID, u.token, nil), 204, "delete the key")
	s.next("end")
	select {
	case <-s.ended:
	case <-time.After(3 * time.Second):
		t.Fatal("the stream of a deleted key stayed open")
	}
}

func grepLogs(logs, word string) string {
	var out []string
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, word) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestStreamManyRetained: a stream opened on a filter matching more
// retained messages than its buffer holds (1,100 here, a pro tenant
// allows 10,000) starts with as many of them as the buffer holds and
// stays open for the live ones: the retained messages the watch hands
// over as it starts, before anything can be written, are not a reader
// falling behind. (Before, every such stream ended right after its
// ready event: a device could shut the tenant's apps out of their
// stream by publishing retained messages.)
func TestStreamManyRetained(t *testing.T) {
	e := newStreamEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	want(t, e.do("PATCH", "/v1/admin/tenants/acme", adminToken, map[string]any{"plan": "pro",
		"quotas": map[string]any{"publish_rate": 100_000, "tenant_publish_rate": 100_000}}), 200, "acme on pro")
	secret := e.mustDevice(u.token, "acme", "d1")
	dev, err := e.dialMQTT(t, "acme/d1", secret, "d1", paho.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Disconnect(&paho.Disconnect{})
	s := retainedThenStream(t, e, u.token, dev, 1100, func(i int) string { return fmt.Sprintf("state/%d", i) }, "%23")
	got := 0
	for got < 1024 {
		var m struct {
			Topic  string
			Retain bool
		}
		json.Unmarshal([]byte(s.next("message").data), &m)
		if !strings.HasPrefix(m.Topic, "state/") || !m.Retain {
			t.Fatalf("message %d: %+v, want a retained state/…", got, m)
		}
		got++
	}
	if _, err := dev.Publish(context.Background(), &paho.Publish{Topic: "live/1", QoS: 1, Payload: []byte("live")}); err != nil {
		t.Fatal(err)
	}
	var m struct{ Topic string }
	json.Unmarshal([]byte(s.next("message").data), &m)
	if m.Topic != "live/1" {
		t.Errorf("after the first %d retained messages: %q, want the live one", got, m.Topic)
	}
	select {
	case <-s.ended:
		t.Fatal("the stream ended")
	default:
	}
	if logs := grepLogs(e.logs.String(), "reader too slow"); logs != "" {
		t.Errorf("the stream was taken for a slow reader:\n%s", logs)
	}
}

// TestStreamBacklogStaysCounted: a stream resumed far back (Last-Event-ID
// 0, 8,000 stored events of 4 KB) read slowly keeps its place in
// max_streams and has its access checked while it sends the backlog: the
// key's second stream is refused (free plan: one a key) however long the
// backlog takes, and deleting the key ends the stream before the backlog
// is through. (Before, the backlog was sent in one go: the lease lapsed
// after 30 s, so a key could hold any number of streams by resuming each
// far back and reading slowly, and a deleted key read on to the end.)
func TestStreamBacklogStaysCounted(t *testing.T) {
	e := newEnvWith(t, func(cfg *api.Config) {
		cfg.StreamPoll, cfg.StreamHeartbeat, cfg.StreamLease = 20*time.Millisecond, 100*time.Millisecond, 300*time.Millisecond
	})
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	const backlog = 8000
	reason := strings.Repeat("r", 4<<10)
	for i := 0; i < backlog; i += 100 {
		batch := make([]events.Event, 100)
		for j := range batch {
			batch[j] = events.Event{Time: time.Now(), Tenant: "acme", Type: events.AuthFailed, Device: "d1", Reason: reason}
		}
		if err := e.store.AddEvents(context.Background(), batch); err != nil {
			t.Fatal(err)
		}
	}
	keyID, key := e.mustKey(u.token, "acme", tenants.RoleViewer)

	// The slow reader: a raw connection read 4 KB at a time, every 20 ms
	// until told otherwise. (A small socket buffer would stall the
	// connection in the kernel: a window smaller than a segment.)
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /v1/tenants/acme/stream?events=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nLast-Event-ID: 0\r\n\r\n", key)
	slow := &pacedReader{r: conn}
	slow.pace.Store(int64(20 * time.Millisecond))
	var sent atomic.Int64
	var ready, ended atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		resp, err := http.ReadResponse(bufio.NewReaderSize(slow, 4096), nil)
		if err != nil {
			t.Errorf("the slow stream: %v", err)
			return
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			switch sc.Text() {
			case "event: ready":
				ready.Store(true)
			case "event: event":
				sent.Add(1)
			case "event: end":
				ended.Store(true)
			}
		}
	}()
	time.Sleep(2 * time.Second) // six leases and more
	if !ready.Load() || sent.Load() == backlog {
		t.Fatalf("the slow stream: ready %v, %d events sent, want it ready and in its backlog", ready.Load(), sent.Load())
	}
	if second := e.openStream("/v1/tenants/acme/stream?events=1", key, ""); second.status != 429 || !strings.Contains(second.body, `"max_streams_each"`) {
		second.close()
		t.Errorf("the key's second stream while its first sends a backlog: %d %s, want 429 naming max_streams_each", second.status, second.body)
	}

	want(t, e.do("DELETE", "/v1/tenants/acme/api-keys/"+keyID, u.token, nil), 204, "delete the key")
	time.Sleep(500 * time.Millisecond)
	slow.pace.Store(0) // the rest at full speed, to the end
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("the deleted key's stream did not end: %d events sent", sent.Load())
	}
	if !ended.Load() || sent.Load() >= backlog {
		t.Errorf("the deleted key's stream sent %d of the %d events of its backlog (end: %v), want it ended before the last", sent.Load(), backlog, ended.Load())
	}
}

// pacedReader waits pace (nanoseconds) before each read.
type pacedReader struct {
	r    io.Reader
	pace atomic.Int64
}

func (p *pacedReader) Read(b []byte) (int, error) {
	time.Sleep(time.Duration(p.pace.Load()))
	return p.r.Read(b)
}

// TestStreamBufferCountsTopics: what waits for a stream's reader is
// counted in topics and payloads: 200 retained messages of 60 KiB topics
// and 1-byte payloads (12 MB) are more than the 8 MiB a stream holds, and
// those past it are passed over at open, where counted in payloads alone
// all 200 were held.
func TestStreamBufferCountsTopics(t *testing.T) {
	e := newStreamEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	want(t, e.do("PATCH", "/v1/admin/tenants/acme", adminToken, map[string]any{
		"quotas": map[string]any{"publish_rate": 100_000, "tenant_publish_rate": 100_000, "bandwidth_in": 1 << 30}}), 200, "rates lifted")
	secret := e.mustDevice(u.token, "acme", "d1")
	dev, err := e.dialMQTT(t, "acme/d1", secret, "d1", paho.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Disconnect(&paho.Disconnect{})
	long := strings.Repeat("t", 60<<10)
	s := retainedThenStream(t, e, u.token, dev, 200, func(i int) string { return fmt.Sprintf("s/%d/%s", i, long) }, "s/%23")
	if _, err := dev.Publish(context.Background(), &paho.Publish{Topic: "s/live", QoS: 1, Payload: []byte("live")}); err != nil {
		t.Fatal(err)
	}
	got := 0
	for {
		var m struct{ Topic string }
		json.Unmarshal([]byte(s.next("message").data), &m)
		if m.Topic == "s/live" {
			break
		}
		got++
	}
	if max := (8 << 20) / (60<<10 + 1); got > max || got == 0 {
		t.Errorf("%d retained messages of 60 KiB topics held at open, want at most %d (8 MiB)", got, max)
	}
}

// retainedThenStream publishes n retained messages from dev to acme, on
// topic(i), then opens a viewer key's stream of acme with filter (escaped
// for a URL) and reads its ready.
func retainedThenStream(t *testing.T, e *env, token string, dev *paho.Client, n int, topic func(int) string, filter string) *stream {
	t.Helper()
	for i := range n {
		if _, err := dev.Publish(context.Background(), &paho.Publish{Topic: topic(i), QoS: 1, Retain: true, Payload: []byte("r")}); err != nil {
			t.Fatalf("retained publish %d: %v", i, err)
		}
	}
	_, key := e.mustKey(token, "acme", tenants.RoleViewer)
	s := e.openStream("/v1/tenants/acme/stream?filter="+filter, key, "")
	if s.status != 200 {
		t.Fatalf("stream: %d %s", s.status, s.body)
	}
	s.next("ready")
	return s
}
