package storetest

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roosthub/roost/tenants"
)

// testStreamLeases: app streams counted in the directory against
// max_streams, whichever process holds them: the tenant's limit and a
// principal's share refuse with the quota named; another tenant's streams
// are not counted; a release frees a place at once and an expired lease
// (its process died) frees it at its expiry, while a renewed one keeps
// it; processes acquiring at once (two stores) never pass the limit.
func testStreamLeases(t *testing.T, s *tenants.Store, reopen func() *tenants.Store) {
	owner := mustAccount(t, s, "owner@example.com")
	mustTenant(t, s, owner, "acme")
	mustTenant(t, s, owner, "other")
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	s.SetClock(clock)
	const ttl = 30 * time.Second
	quota := func(err error) string {
		var q *tenants.QuotaError
		if errors.As(err, &q) {
			return q.Quota
		}
		return ""
	}
	count := func(tenant string) int64 {
		t.Helper()
		n, err := s.OpenStreams(ctx, tenant)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	a1, err := s.AcquireStream(ctx, "acme", "key:a", 3, 2, ttl)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AcquireStream(ctx, "acme", "key:a", 3, 2, ttl); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AcquireStream(ctx, "acme", "key:a", 3, 2, ttl); quota(err) != "max_streams_each" {
		t.Fatalf("a principal's third of 2: %v, want max_streams_each", err)
	}
	b1, err := s.AcquireStream(ctx, "acme", "key:b", 3, 2, ttl)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AcquireStream(ctx, "acme", "key:c", 3, 2, ttl); quota(err) != "max_streams" {
		t.Fatalf("the tenant's fourth of 3: %v, want max_streams", err)
	}
	if _, err := s.AcquireStream(ctx, "other", "key:a", 3, 2, ttl); err != nil {
		t.Fatalf("another tenant's stream: %v", err)
	}
	if n := count("acme"); n != 3 {
		t.Errorf("acme's open streams: %d, want 3", n)
	}
	if _, err := s.AcquireStream(ctx, "nope", "key:a", 3, 2, ttl); !errors.Is(err, tenants.ErrNotFound) {
		t.Errorf("a stream of no tenant: %v, want not found", err)
	}

	// Released: a place at once; releasing again does nothing.
	if err := s.ReleaseStream(ctx, b1); err != nil {
		t.Fatal(err)
	}
	if err := s.ReleaseStream(ctx, b1); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AcquireStream(ctx, "acme", "key:c", 3, 2, ttl); err != nil {
		t.Fatalf("after a release: %v", err)
	}

	// a1 is renewed, the others are not: past the lease only a1 counts.
	advance(ttl / 2)
	if err := s.RenewStream(ctx, a1, ttl); err != nil {
		t.Fatal(err)
	}
	advance(ttl/2 + time.Second)
	if n := count("acme"); n != 1 {
		t.Errorf("acme's open streams after the lease: %d, want the renewed one", n)
	}
	for _, p := range []string{"key:b", "key:c"} {
		if _, err := s.AcquireStream(ctx, "acme", p, 3, 2, ttl); err != nil {
			t.Fatalf("after the dead streams' lease (%s): %v", p, err)
		}
	}
	if _, err := s.AcquireStream(ctx, "acme", "key:d", 3, 2, ttl); quota(err) != "max_streams" {
		t.Fatalf("a fourth with the renewed one: %v, want max_streams", err)
	}
	// A renewal that comes after its lease expired does not put it back
	// (others may have been counted in its place): the stream is to end.
	advance(2 * ttl)
	if _, err := s.AcquireStream(ctx, "acme", "key:b", 3, 2, ttl); err != nil { // deletes the expired ones
		t.Fatal(err)
	}
	if err := s.RenewStream(ctx, a1, ttl); !errors.Is(err, tenants.ErrStreamLost) {
		t.Fatalf("a late renewal: %v, want ErrStreamLost", err)
	}
	if n := count("acme"); n != 1 {
		t.Errorf("after a late renewal: %d open, want 1", n)
	}

	// PruneStreams deletes the expired leases of every tenant, and only
	// those.
	advance(2 * ttl)
	if _, err := s.AcquireStream(ctx, "acme", "key:z", 3, 2, ttl); err != nil {
		t.Fatal(err)
	}
	// (acme's acquire deleted acme's expired ones; other's key:a is left.)
	if n, err := s.PruneStreams(ctx); err != nil || n != 1 {
		t.Errorf("PruneStreams: %d %v, want other's one expired lease", n, err)
	}
	if n, err := s.PruneStreams(ctx); err != nil || n != 0 {
		t.Errorf("PruneStreams again: %d %v, want 0", n, err)
	}
	if n := count("acme"); n != 1 {
		t.Errorf("acme's open streams after the prune: %d, want key:z's", n)
	}

	// Two processes at once, 20 attempts each, limit 5: exactly 5 in all.
	s2 := reopen()
	s2.SetClock(clock)
	var ok atomic.Int64
	var wg sync.WaitGroup
	for _, st := range []*tenants.Store{s, s2} {
		for i := range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p := "key:x"
				if i%2 == 1 {
					p = "key:y"
				}
				_, err := st.AcquireStream(ctx, "other", p, 5, 5, ttl)
				switch {
				case err == nil:
					ok.Add(1)
				case quota(err) != "max_streams":
					t.Errorf("concurrent acquire: %v", err)
				}
			}()
		}
	}
	wg.Wait()
	if ok.Load() != 5 || count("other") != 5 {
		t.Errorf("concurrent acquires: %d taken, %d open; want 5 of limit 5", ok.Load(), count("other"))
	}
}
