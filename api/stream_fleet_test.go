package api_test

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/roosthub/roost/api"
	"github.com/roosthub/roost/tenants"
)

// TestStreamBoundAcrossServers: two API servers over one directory (the
// second opens it as another process would) count a tenant's app streams
// together: pro's max_streams 5 and a key's share of 3 hold across both,
// the refusals being the documented 429 problems on either server; the
// streams held stay counted past several leases (renewed), and when the
// second server dies without releasing its streams (its database handle
// closed under it, then its connections cut) their places come back
// within the lease.
func TestStreamBoundAcrossServers(t *testing.T) {
	const lease = 3 * time.Second
	var cfgA api.Config
	e := newEnvWith(t, func(cfg *api.Config) {
		cfg.StreamPoll, cfg.StreamHeartbeat, cfg.StreamLease = 20*time.Millisecond, 100*time.Millisecond, lease
		cfgA = *cfg
	})
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	e.mustTenant(u, "other")
	want(t, e.do("PATCH", "/v1/admin/tenants/acme", adminToken, map[string]any{"plan": "pro"}), 200, "acme on pro")
	if q := tenants.PlanQuotas(tenants.PlanPro).MaxStreams; q != 5 {
		t.Fatalf("pro's max_streams is %d; the test counts on 5", q)
	}

	// Server B: the same directory opened again, its own auth front.
	storeB, err := tenants.Open(context.Background(), "", e.storeDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { storeB.Close() })
	srvB, err := api.New(api.Config{Store: storeB, Log: cfgA.Log, AdminToken: adminToken, SigningKey: cfgA.SigningKey,
		DataPlane: cfgA.DataPlane, StreamPoll: cfgA.StreamPoll, StreamHeartbeat: cfgA.StreamHeartbeat, StreamLease: lease})
	if err != nil {
		t.Fatal(err)
	}
	hsB := httptest.NewServer(srvB)
	t.Cleanup(hsB.Close)
	b := *e
	b.url = hsB.URL

	_, k1 := e.mustKey(u.token, "acme", tenants.RoleViewer)
	_, k2 := e.mustKey(u.token, "acme", tenants.RoleViewer)
	_, k3 := e.mustKey(u.token, "acme", tenants.RoleViewer)
	const path = "/v1/tenants/acme/stream?events=1"
	open := func(on *env, key, what string) *stream {
		t.Helper()
		s := on.openStream(path, key, "")
		if s.status != 200 {
			t.Fatalf("%s: %d %s", what, s.status, s.body)
		}
		s.next("ready")
		return s
	}
	refused := func(on *env, key, quota, what string) {
		t.Helper()
		r := on.do("GET", path, key, nil)
		wantProblem(t, r, 429, "quota_exceeded", "", what)
		var p map[string]any
		json.Unmarshal(r.body, &p)
		if p["quota"] != quota || r.header.Get("Retry-After") == "" {
			t.Errorf("%s: %s (Retry-After %q), want quota %s", what, r.body, r.header.Get("Retry-After"), quota)
		}
	}

	open(e, k1, "k1's first on A")
	open(e, k1, "k1's second on A")
	open(&b, k1, "k1's third on B")
	refused(&b, k1, "max_streams_each", "k1's fourth, on B")
	refused(e, k1, "max_streams_each", "k1's fourth, on A")
	open(e, k2, "k2 on A")
	open(&b, k2, "k2 on B")
	refused(e, k3, "max_streams", "the sixth, on A")
	refused(&b, k3, "max_streams", "the sixth, on B")
	// Another tenant's places are its own.
	if s := b.openStream("/v1/tenants/other/stream?events=1", u.token, ""); s.status != 200 {
		t.Errorf("other's stream on B beside acme's five: %d %s", s.status, s.body)
	} else {
		s.close()
	}
	if s := b.openStream("/v1/tenants/other/stream?events=1", k3, ""); s.status != 404 {
		t.Errorf("acme's key on other's stream: %d %s, want 404", s.status, s.body)
	}

	// Held past three leases, renewed: still five, still refused.
	for end := time.Now().Add(3 * lease); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if n, err := e.store.OpenStreams(context.Background(), "acme"); err != nil || n != 5 {
			t.Fatalf("acme's open streams while held: %d %v, want 5", n, err)
		}
	}
	refused(e, k3, "max_streams", "the sixth, after three leases")

	// B dies: its streams are neither renewed nor released.
	storeB.Close()
	hsB.CloseClientConnections()
	hsB.Close()
	killed := time.Now()
	r := e.do("GET", path, k3, nil)
	if time.Since(killed) < lease/2 && r.status != 429 {
		t.Errorf("right after B died: %d %s, want its streams still counted until their lease ends", r.status, r.body)
	}
	// Each of B's two leases ends a lease after its last renewal.
	for i := range 2 {
		var s *stream
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			if s = e.openStream(path, k3, ""); s.status == 200 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("B's stream %d still counted 20 s after it died (lease %v): %d %s", i+1, lease, s.status, s.body)
			}
		}
		s.next("ready")
		t.Logf("B's place %d came back %v after it died (lease %v)", i+1, time.Since(killed).Round(time.Millisecond), lease)
	}
	refused(e, k3, "max_streams", "the sixth, in B's places")
	if n, err := e.store.OpenStreams(context.Background(), "acme"); err != nil || n != 5 {
		t.Errorf("acme's open streams at the end: %d %v, want 5", n, err)
	}
}
