package tenants_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
	"github.com/roosthub/roost/tenants/storetest"
)

func openMigrated(t *testing.T, url, dir string) *tenants.Store {
	t.Helper()
	s, err := tenants.Open(context.Background(), url, dir)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	if _, err := s.Migrate(context.Background()); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return s
}

func TestStoreSQLite(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (*tenants.Store, func() *tenants.Store) {
		dir := t.TempDir()
		return openMigrated(t, "", dir), func() *tenants.Store { return openMigrated(t, "", dir) }
	})
}

func TestStorePostgres(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (*tenants.Store, func() *tenants.Store) {
		url := testenv.PostgresURL(t)
		return openMigrated(t, url, ""), func() *tenants.Store { return openMigrated(t, url, "") }
	})
}

// TestUnknownEmailCostsAPasswordHash: a login for an email with no account
// does the same Argon2id work as a wrong password, so response time does not
// reveal which emails have accounts. A hash takes tens of milliseconds and a
// lookup well under one, so a quarter of the time is a wide margin.
func TestUnknownEmailCostsAPasswordHash(t *testing.T) {
	tenants.RealPasswordHashes(t)
	s := openMigrated(t, "", t.TempDir())
	ctx := context.Background()
	if _, err := s.CreateAccount(ctx, tenants.Signup{Email: "known@example.com", Password: "correct horse battery"}); err != nil {
		t.Fatal(err)
	}
	fastest := func(email string) time.Duration {
		best := time.Hour
		for range 5 {
			start := time.Now()
			s.Authenticate(ctx, email, "wrong password here")
			best = min(best, time.Since(start))
		}
		return best
	}
	wrong, unknown := fastest("known@example.com"), fastest("unknown@example.com")
	if unknown < wrong/4 {
		t.Errorf("unknown email took %v, wrong password %v: the unknown email skips the hash", unknown, wrong)
	}
}

// TestPasswordHashesBounded: however many logins and sign-ups arrive at
// once, the store computes at most its bound of Argon2id hashes at a time
// (each holds 19 MiB); the rest wait their turn and all complete.
func TestPasswordHashesBounded(t *testing.T) {
	tenants.RealPasswordHashes(t)
	s := openMigrated(t, "", t.TempDir())
	s.SetPasswordHashes(2)
	// 13 hashes two at a time take longer than a slot's 10 s wait under
	// -race on a busy machine: every one must run here.
	s.WaitForHashSlots(time.Minute)
	ctx := context.Background()
	if _, err := s.CreateAccount(ctx, tenants.Signup{Email: "known@example.com", Password: "correct horse battery"}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				s.Authenticate(ctx, "known@example.com", "wrong password here")
			} else {
				s.SignUp(ctx, tenants.Signup{Email: fmt.Sprintf("new%d@example.com", i), Password: "correct horse battery"})
			}
		}()
	}
	wg.Wait()
	done, peak := s.PasswordHashStats()
	if peak != 2 {
		t.Errorf("at most %d password hashes ran at once, want 2 (the bound, reached)", peak)
	}
	if done != 13 {
		t.Errorf("%d password hashes computed, want 13 (one each, and the first account's)", done)
	}
	if n := tenants.DefaultPasswordHashes(); n < 2 {
		t.Errorf("DefaultPasswordHashes() = %d, want at least 2", n)
	}
}

// TestUsageRecordsKept: the record of a usage transaction that committed
// is deleted by the next (nothing tries its deltas again); that of one
// whose commit failed is kept, for its deltas tried again.
func TestUsageRecordsKept(t *testing.T) {
	for _, tc := range []struct{ name, url string }{{"sqlite", ""}, {"postgres", "postgres"}} {
		t.Run(tc.name, func(t *testing.T) {
			url := tc.url
			if url != "" {
				url = testenv.PostgresURL(t)
			}
			s := openMigrated(t, url, t.TempDir())
			ctx := context.Background()
			h := time.Now().UTC().Truncate(time.Hour)
			add := func() ([]tenants.UsageDelta, error) {
				return s.AddUsage(ctx, []tenants.UsageDelta{{Tenant: "acme", Hour: h, Usage: tenants.Usage{MessagesIn: 1}}})
			}
			records := func() int {
				t.Helper()
				n, err := s.UsageRecords(ctx)
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
			for range 3 {
				if _, err := add(); err != nil {
					t.Fatal(err)
				}
			}
			if n := records(); n != 1 {
				t.Errorf("%d records after three committed transactions, want 1 (the last's, deleted by the next)", n)
			}
			s.SetUsageCommitFault(func([]tenants.UsageDelta) error { return fmt.Errorf("commit reply lost") })
			failed, err := add()
			s.SetUsageCommitFault(nil)
			if err == nil || len(failed) != 1 {
				t.Fatalf("a transaction whose commit failed: %+v, %v", failed, err)
			}
			if _, err := add(); err != nil {
				t.Fatal(err)
			}
			if n := records(); n != 2 {
				t.Errorf("%d records after a failed commit and one more, want 2 (the failed one's, and the last's)", n)
			}
		})
	}
}
