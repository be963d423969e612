package tenants_test

import (
	"context"
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
