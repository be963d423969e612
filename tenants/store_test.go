package tenants_test

import (
	"context"
	"testing"

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
