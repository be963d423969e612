package tenants_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
)

// BenchmarkImportDevices imports 10,000 devices (two groups and two
// metadata keys each) into a new tenant per iteration, on the embedded
// store and on Postgres (docs/benchmarks.md, Bulk import):
//
//	go test -run '^$' -bench ImportDevices -benchtime 3x ./tenants/
func BenchmarkImportDevices(b *testing.B) {
	for _, db := range []string{"sqlite", "postgres"} {
		b.Run(db, func(b *testing.B) {
			url, dir := "", b.TempDir()
			if db == "postgres" {
				url, dir = testenv.PostgresURL(b), ""
			}
			ctx := tenants.WithActor(context.Background(), "bench")
			s, err := tenants.Open(ctx, url, dir)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			if _, err := s.Migrate(ctx); err != nil {
				b.Fatal(err)
			}
			owner, err := s.CreateAccount(ctx, tenants.Signup{Email: "bench@example.com", Password: "correct horse battery"})
			if err != nil {
				b.Fatal(err)
			}
			rows := make([]tenants.ImportRow, tenants.MaxImportRows)
			for i := range rows {
				rows[i] = tenants.ImportRow{Row: i + 2, Input: tenants.DeviceInput{
					Name: fmt.Sprintf("dev-%05d", i), Groups: []string{"fleet", fmt.Sprintf("floor-%d", i%10)},
					Metadata: map[string]string{"room": fmt.Sprintf("r%d", i%50), "model": "m1"},
				}}
			}
			limit := int64(len(rows))
			b.ResetTimer()
			for i := range b.N {
				b.StopTimer()
				slug := fmt.Sprintf("bench-%d", i)
				if _, err := s.CreateTenant(ctx, owner.ID, tenants.TenantInput{Slug: slug}); err != nil {
					b.Fatal(err)
				}
				if _, err := s.AdminUpdateTenant(ctx, slug, tenants.AdminTenantUpdate{Quotas: map[string]*int64{"max_devices": &limit}}); err != nil {
					b.Fatal(err)
				}
				in := make([]tenants.ImportRow, len(rows))
				copy(in, rows)
				b.StartTimer()
				res, err := s.ImportDevices(ctx, slug, in, tenants.ImportAll)
				if err != nil || len(res.Created) != len(rows) {
					b.Fatalf("import: %d created, %v", len(res.Created), err)
				}
			}
		})
	}
}
