package cluster_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roosthub/roost/cluster"
	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/internal/problem"
	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
)

// TestInternalAPIThrottlesWrongTokens: wrong operator tokens on a node's
// internal API are counted per address: ten, then 429 with Retry-After;
// the right token still passes from that address, and another address
// keeps its own count.
func TestInternalAPIThrottlesWrongTokens(t *testing.T) {
	node := httptest.NewServer(cluster.Serve(nil, nil, token, nil))
	t.Cleanup(node.Close)
	get := func(from, bearer string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("GET", node.URL+cluster.Prefix+"/tenants/acme/events", nil)
		req.Header.Set("Authorization", "Bearer "+bearer)
		resp, err := testenv.ClientFrom(from).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	for i := range 10 {
		if r := get("127.0.0.2", fmt.Sprintf("rop_guess-%d-0123456789", i)); r.StatusCode != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d", i, r.StatusCode)
		}
	}
	if r := get("127.0.0.2", "rop_guess-x-0123456789"); r.StatusCode != http.StatusTooManyRequests || r.Header.Get("Retry-After") == "" {
		t.Errorf("the eleventh guess: %d, Retry-After %q", r.StatusCode, r.Header.Get("Retry-After"))
	}
	if r := get("127.0.0.2", token); r.StatusCode != http.StatusOK {
		t.Errorf("the right token from the guessing address: %d", r.StatusCode)
	}
	if r := get("127.0.0.3", "rop_guess-y-0123456789"); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("a wrong token from another address: %d, want 401", r.StatusCode)
	}
}

// failingHub is a node's hub whose publishes and watches in a tenant fail
// with that tenant's error.
type failingHub struct {
	dataplane.DataPlane // the rest is not asked
	errs                map[string]error
}

func (h failingHub) Publish(_ context.Context, tenant string, _ dataplane.Message) error {
	return h.errs[tenant]
}

func (h failingHub) Watch(_ context.Context, tenant, _, _ string, _ func(dataplane.Message)) error {
	return h.errs[tenant]
}

func (failingHub) CloseForwarded(string) int { return 0 }

// remoteTo returns a Remote whose only node is served by h.
func remoteTo(t *testing.T, h http.Handler) *cluster.Remote {
	t.Helper()
	node := httptest.NewServer(h)
	t.Cleanup(node.Close)
	return remoteAt(t, node.URL)
}

// directory is a new, migrated directory (SQLite) for the test.
func directory(t *testing.T) *tenants.Store {
	t.Helper()
	ctx := tenants.WithActor(context.Background(), "test")
	store, err := tenants.Open(ctx, "", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	if _, err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	return store
}

// remoteAt is a Remote whose directory announces one node, n1, at url.
func remoteAt(t *testing.T, url string) *cluster.Remote {
	t.Helper()
	ctx := tenants.WithActor(context.Background(), "test")
	store := directory(t)
	if err := store.AnnounceNode(ctx, tenants.Node{ID: "n1", URL: url, ForwardAddr: "127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	return cluster.NewRemote(store, token, slog.New(slog.DiscardHandler))
}

// TestRemoteErrorKinds: an error of every kind a node's hub returns comes
// out of the control plane's Remote as an error the one table of kinds
// answers alike (status, code, field, quota and limit, Retry-After,
// message), and of the type its kind carries.
func TestRemoteErrorKinds(t *testing.T) {
	cases := []struct {
		name string
		err  error
	}{
		{"field", &tenants.FieldError{Field: "topic", Message: "must not hold wildcards"}},
		{"wrapped field", fmt.Errorf("watch: %w", &tenants.FieldError{Field: "filter", Message: "$SYS is closed"})},
		{"invalid", fmt.Errorf("bad payload: %w", tenants.ErrInvalid)},
		{"rate quota", &tenants.QuotaError{Quota: "publish_rate", Limit: 100}},
		{"limit quota", &tenants.QuotaError{Quota: "max_retained", Limit: 1000}},
		{"quota", tenants.ErrQuotaExceeded},
		{"throttled with a wait", tenants.Throttled(2500*time.Millisecond, "too many live views; try again in 3s")},
		{"throttled", fmt.Errorf("views: %w", tenants.ErrThrottled)},
		{"unavailable with a wait", &tenants.RetryError{Kind: tenants.ErrUnavailable, After: time.Minute, Msg: "draining"}},
		{"unavailable", fmt.Errorf("session store: %w", tenants.ErrUnavailable)},
		{"conflict", fmt.Errorf("watcher: %w", tenants.ErrConflict)},
		{"unauthorized", tenants.ErrUnauthorized},
		{"not found", fmt.Errorf("tenant acme: %w", tenants.ErrNotFound)},
		{"forbidden", fmt.Errorf("a $ topic: %w", tenants.ErrForbidden)},
		{"internal", errors.New("disk full")},
	}
	hub := failingHub{errs: map[string]error{}}
	for i, c := range cases {
		hub.errs[fmt.Sprintf("t%d", i)] = c.err
	}
	remote := remoteTo(t, cluster.Serve(hub, nil, token, nil))
	ctx := context.Background()
	for i, c := range cases {
		tenant := fmt.Sprintf("t%d", i)
		want := problem.Of(c.err)
		for call, err := range map[string]error{
			"publish": remote.Publish(ctx, tenant, dataplane.Message{Topic: "a"}),
			"watch":   remote.Watch(ctx, tenant, "alice", "#", func(dataplane.Message) {}),
		} {
			if got := problem.Of(err); !reflect.DeepEqual(got, want) {
				t.Errorf("%s, %s through a node: %+v, want %+v", c.name, call, got, want)
			}
			var fe *tenants.FieldError
			if errors.As(c.err, &fe) && (!errors.As(err, &fe) || fe.Field == "") {
				t.Errorf("%s, %s through a node: %v is no field error", c.name, call, err)
			}
			var qe *tenants.QuotaError
			if errors.As(c.err, &qe) && (!errors.As(err, &qe) || qe.Quota == "") {
				t.Errorf("%s, %s through a node: %v is no quota error", c.name, call, err)
			}
			var re *tenants.RetryError
			if errors.As(c.err, &re) && (!errors.As(err, &re) || re.After < time.Second) {
				t.Errorf("%s, %s through a node: %v is no retry error", c.name, call, err)
			}
			if c.name == "internal" && !strings.Contains(err.Error(), "disk full") {
				t.Errorf("%s, %s through a node: %q, want the node's message", c.name, call, err)
			}
		}
	}
}

// TestRemoteOtherAnswers: a node of the version before the kinds were
// problem codes still has its quota errors understood, and an answer that
// is no failure at all (a proxy's page, a refused token) is ErrUnavailable.
func TestRemoteOtherAnswers(t *testing.T) {
	remote := remoteTo(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.Contains(r.URL.Path, "/tenants/old/"):
			w.WriteHeader(http.StatusForbidden)
			fmt.Fprint(w, `{"kind":"quota","message":"quota publish_rate exceeded (limit 5)","quota":"publish_rate","limit":5}`)
		default:
			http.Error(w, "bad gateway", http.StatusBadGateway)
		}
	}))
	ctx := context.Background()
	err := remote.Publish(ctx, "old", dataplane.Message{Topic: "a"})
	if p := problem.Of(err); p.Status != http.StatusTooManyRequests || p.Quota != "publish_rate" || p.Limit == nil || *p.Limit != 5 {
		t.Errorf("an older node's rate quota: %+v, want 429 publish_rate limit 5", p)
	}
	if err := remote.Publish(ctx, "acme", dataplane.Message{Topic: "a"}); !errors.Is(err, tenants.ErrUnavailable) {
		t.Errorf("a proxy's 502 page: %v, want ErrUnavailable", err)
	}
}

// deliveriesHub is a node's hub that answers the delivery questions for
// tenant acme's destination dst_1, and fails them for any other.
type deliveriesHub struct {
	failingHub
	asked []string
}

func (h *deliveriesHub) check(op, tenant, destination string) error {
	h.asked = append(h.asked, op+" "+tenant+"/"+destination)
	if tenant != "acme" || destination != "dst_1" {
		return fmt.Errorf("destination %s: %w", destination, tenants.ErrUnavailable)
	}
	return nil
}

func (h *deliveriesHub) DeliveryStatus(_ context.Context, tenant, destination string) (dataplane.DeliveryStatus, error) {
	return dataplane.DeliveryStatus{Backlog: 3, Delivered: 7, LastErrorText: "status 500"}, h.check("status", tenant, destination)
}

func (h *deliveriesHub) DeadLetters(_ context.Context, tenant, destination string, after uint64, limit int) ([]dataplane.DeadLetter, bool, error) {
	if err := h.check(fmt.Sprintf("list after %d limit %d", after, limit), tenant, destination); err != nil {
		return nil, false, err
	}
	// One of ten: a page cut short by its bytes.
	return []dataplane.DeadLetter{{Seq: after + 1, ID: "m1", Topic: "s/1", Payload: []byte{0, 1}, QoS: 1, Device: "d"}}, true, nil
}

func (h *deliveriesHub) ReplayDeadLetters(_ context.Context, tenant, destination string) (int, error) {
	return 2, h.check("replay", tenant, destination)
}

func (h *deliveriesHub) PurgeDeadLetters(_ context.Context, tenant, destination string) (int, error) {
	return 4, h.check("purge", tenant, destination)
}

// TestRemoteDeliveries: a control plane running apart asks the tenant's
// home node about its destinations' delivery: status, dead letters (paged,
// payload bytes intact, a page cut short said so), replay and purge; a
// node's error keeps its kind.
func TestRemoteDeliveries(t *testing.T) {
	hub := &deliveriesHub{}
	remote := remoteTo(t, cluster.Serve(hub, nil, token, nil))
	ctx := context.Background()
	st, err := remote.DeliveryStatus(ctx, "acme", "dst_1")
	if err != nil || st.Backlog != 3 || st.Delivered != 7 || st.LastErrorText != "status 500" {
		t.Errorf("status: %+v, %v", st, err)
	}
	dead, more, err := remote.DeadLetters(ctx, "acme", "dst_1", 41, 10)
	if err != nil || len(dead) != 1 || dead[0].Seq != 42 || !reflect.DeepEqual(dead[0].Payload, []byte{0, 1}) || !more {
		t.Errorf("dead letters: %+v, more %v, %v; want one, cut short", dead, more, err)
	}
	if n, err := remote.ReplayDeadLetters(ctx, "acme", "dst_1"); n != 2 || err != nil {
		t.Errorf("replay: %d, %v; want 2", n, err)
	}
	if n, err := remote.PurgeDeadLetters(ctx, "acme", "dst_1"); n != 4 || err != nil {
		t.Errorf("purge: %d, %v; want 4", n, err)
	}
	if _, err := remote.DeliveryStatus(ctx, "acme", "dst_other"); !errors.Is(err, tenants.ErrUnavailable) {
		t.Errorf("a node's unavailable: %v, want ErrUnavailable", err)
	}
	want := []string{"status acme/dst_1", "list after 41 limit 10 acme/dst_1", "replay acme/dst_1", "purge acme/dst_1", "status acme/dst_other"}
	if !reflect.DeepEqual(hub.asked, want) {
		t.Errorf("the node was asked %q, want %q", hub.asked, want)
	}
}

// TestRemoteWatchSilentNode: a home node that takes the connection of a
// watch and never answers (paused, overloaded, or not a node at all)
// fails the watch as unavailable within a call's time, rather than
// holding the caller (an app's stream, its slot, a console's live view)
// for as long as it waits; a node that answers at once streams for as
// long as the watch lasts, its messages coming after the call's time too.
func TestRemoteWatchSilentNode(t *testing.T) {
	release := make(chan struct{})
	remote := remoteTo(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("filter") == "silent" {
			select {
			case <-r.Context().Done():
			case <-release:
			}
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		select {
		case <-time.After(4 * time.Second):
			fmt.Fprintln(w, `{"Topic":"late","Payload":"eA=="}`)
			w.(http.Flusher).Flush()
		case <-r.Context().Done():
			return
		}
		<-r.Context().Done()
	}))
	t.Cleanup(func() { close(release) })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	err := remote.Watch(ctx, "acme", "alice", "silent", func(dataplane.Message) {})
	if took := time.Since(start); !errors.Is(err, tenants.ErrUnavailable) || took > 10*time.Second {
		t.Errorf("a watch on a node that never answers: %v after %s, want ErrUnavailable within 10s", err, took.Round(time.Millisecond))
	}
	got := make(chan dataplane.Message, 1)
	if err := remote.Watch(ctx, "acme", "alice", "#", func(m dataplane.Message) { got <- m }); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if m.Topic != "late" || string(m.Payload) != "x" {
			t.Errorf("watched %+v, want late: x", m)
		}
	case <-time.After(10 * time.Second):
		t.Error("a message 4s into a watch did not come")
	}
}

// TestRemoteWatchReopened: a watch whose stream ends (the home restarted:
// its stream ended, then it refused for a while) or goes silent past
// watchIdle is opened again, and the messages after that come; once the
// caller's context ends, it is not.
func TestRemoteWatchReopened(t *testing.T) {
	var requests atomic.Int32
	remote := remoteTo(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := requests.Add(1)
		if n == 2 || n == 3 {
			http.Error(w, `{"kind": "unavailable", "message": "restarting"}`, http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		switch n {
		case 1:
			fmt.Fprintln(w, `{"Topic":"one","Payload":"eA=="}`)
			return // the stream ends
		case 4:
			fmt.Fprintln(w, `{"Topic":"two","Payload":"eA=="}`)
			w.(http.Flusher).Flush()
			// then silent, past watchIdle
		default:
			fmt.Fprintln(w, `{"Topic":"three","Payload":"eA=="}`)
			w.(http.Flusher).Flush()
		}
		<-r.Context().Done()
	}))
	cluster.SetWatchTimes(remote, 500*time.Millisecond, 20*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan string, 10)
	if err := remote.Watch(ctx, "acme", "alice", "#", func(m dataplane.Message) { got <- m.Topic }); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"one", "two", "three"} {
		select {
		case topic := <-got:
			if topic != want {
				t.Fatalf("watched %q, want %q", topic, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%q did not come within 10s (%d requests)", want, requests.Load())
		}
	}
	cancel()
	time.Sleep(100 * time.Millisecond)
	before := requests.Load()
	time.Sleep(1500 * time.Millisecond) // three times watchIdle
	if after := requests.Load(); after != before {
		t.Errorf("%d more requests after the watch's context ended", after-before)
	}
}

// TestRemoteUnansweredHidesAddress: a call to a node that does not answer
// is unavailable, and what the API would tell its caller names the node
// but not its internal address.
func TestRemoteUnansweredHidesAddress(t *testing.T) {
	node := httptest.NewServer(http.NotFoundHandler())
	url := node.URL
	node.Close() // announced, and gone
	remote := remoteAt(t, url)
	ctx := context.Background()
	for name, call := range map[string]func() error{
		"publish": func() error { return remote.Publish(ctx, "acme", dataplane.Message{Topic: "t"}) },
		"status":  func() error { _, err := remote.DeliveryStatus(ctx, "acme", "dst_1"); return err },
		"watch": func() error {
			return remote.Watch(ctx, "acme", "alice", "#", func(dataplane.Message) {})
		},
	} {
		err := call()
		p := problem.Of(err)
		if !errors.Is(err, tenants.ErrUnavailable) || p.Status != http.StatusServiceUnavailable {
			t.Errorf("%s: %v (%d), want unavailable", name, err, p.Status)
		}
		if host := strings.TrimPrefix(url, "http://"); strings.Contains(p.Detail, host) || strings.Contains(p.Detail, "127.0.0.1") {
			t.Errorf("%s: the detail shows the node's address: %q", name, p.Detail)
		}
		if !strings.Contains(p.Detail, "n1") {
			t.Errorf("%s: the detail %q does not name the node", name, p.Detail)
		}
	}
}

// floodHub is a node's hub whose watch hands over its messages before it
// returns, as a tenant's broker hands a new watch the retained messages.
type floodHub struct {
	failingHub
	msgs []dataplane.Message
}

func (h floodHub) Watch(_ context.Context, _, _, _ string, fn func(dataplane.Message)) error {
	for _, m := range h.msgs {
		fn(m)
	}
	return nil
}

// TestNodeWatchBufferBytes: a node's watch holds at most 8 MiB of payload
// for a control plane not reading yet, whatever the messages' count; the
// messages past it are dropped, and the small ones after them still fit.
func TestNodeWatchBufferBytes(t *testing.T) {
	hub := floodHub{}
	for i := range 20 {
		hub.msgs = append(hub.msgs, dataplane.Message{Topic: fmt.Sprintf("big/%d", i), Payload: bytes.Repeat([]byte{'x'}, 1_000_000)})
	}
	hub.msgs = append(hub.msgs, dataplane.Message{Topic: "small", Payload: []byte("x")})
	remote := remoteTo(t, cluster.Serve(hub, nil, token, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan string, 100)
	if err := remote.Watch(ctx, "acme", "alice", "#", func(m dataplane.Message) { got <- m.Topic }); err != nil {
		t.Fatal(err)
	}
	var topics []string
	for done := false; !done; {
		select {
		case topic := <-got:
			topics = append(topics, topic)
		case <-time.After(time.Second):
			done = true
		}
	}
	if len(topics) != 9 || topics[0] != "big/0" || topics[7] != "big/7" || topics[8] != "small" {
		t.Errorf("watched %v, want big/0 to big/7 (8 MB of 8 MiB) and small", topics)
	}
}

// TestRemoteWatchQuickEndsBackOff: a home that takes each watch and ends
// it at once is asked again at growing pauses (here 20 ms growing to
// 80 ms), not every 20 ms.
func TestRemoteWatchQuickEndsBackOff(t *testing.T) {
	var requests atomic.Int32
	remote := remoteTo(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK) // and ends
	}))
	cluster.SetWatchTimes(remote, time.Minute, 20*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := remote.Watch(ctx, "acme", "alice", "#", func(dataplane.Message) {}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	// 20 + 40 + 80 ms, then every 80 ms: about 13 in a second; every
	// 20 ms would be about 45.
	if n := requests.Load(); n > 20 || n < 3 {
		t.Errorf("%d watches opened in a second, want about 13", n)
	}
}

// TestRemoteWatchFollowsHome: a watch whose tenant is handed to another
// node leaves the old one (which keeps the stream open and pinging, and
// sees none of the tenant's messages any more) and is opened again at the
// new home, whose messages come.
func TestRemoteWatchFollowsHome(t *testing.T) {
	ctx := tenants.WithActor(context.Background(), "test")
	store := directory(t)
	node := func(id string) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/x-ndjson")
			w.WriteHeader(http.StatusOK)
			fmt.Fprintf(w, "{\"Topic\":\"from/%s\",\"Payload\":\"eA==\"}\n", id)
			w.(http.Flusher).Flush()
			<-r.Context().Done() // open, as a node that handed the tenant on
		}))
		t.Cleanup(srv.Close)
		if err := store.AnnounceNode(ctx, tenants.Node{ID: id, URL: srv.URL, ForwardAddr: "127.0.0.1:1"}); err != nil {
			t.Fatal(err)
		}
	}
	node("n1")
	node("n2")
	if home, err := store.ClaimTenant(ctx, "acme", "n1", time.Now().Add(-time.Minute)); err != nil || home != "n1" {
		t.Fatalf("claim: %q, %v", home, err)
	}
	remote := cluster.NewRemote(store, token, slog.New(slog.DiscardHandler))
	cluster.SetWatchRehome(remote, 100*time.Millisecond)
	wctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan string, 10)
	if err := remote.Watch(wctx, "acme", "alice", "#", func(m dataplane.Message) { got <- m.Topic }); err != nil {
		t.Fatal(err)
	}
	next := func() string {
		select {
		case topic := <-got:
			return topic
		case <-time.After(5 * time.Second):
			return "nothing within 5s"
		}
	}
	if topic := next(); topic != "from/n1" {
		t.Fatalf("first: %s, want from/n1", topic)
	}
	if home, err := store.TakeTenant(ctx, "acme", "n1", "n2"); err != nil || home != "n2" {
		t.Fatalf("take: %q, %v", home, err)
	}
	if topic := next(); topic != "from/n2" {
		t.Errorf("after the tenant moved: %s, want from/n2", topic)
	}
}
