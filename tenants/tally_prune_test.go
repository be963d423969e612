package tenants_test

import (
	"context"
	"testing"
	"time"

	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
)

// TestPruneTallies: pruning deletes the tallies with nothing left in them
// and the sign-ins past their time, in batches, and keeps the rest; on
// SQLite and Postgres.
func TestPruneTallies(t *testing.T) {
	for name, url := range map[string]func(*testing.T) string{
		"sqlite":   func(*testing.T) string { return "" },
		"postgres": func(t *testing.T) string { return testenv.PostgresURL(t) },
	} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			dir := ""
			if name == "sqlite" {
				dir = t.TempDir()
			}
			st, err := tenants.Open(ctx, url(t), dir)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if _, err := st.Migrate(ctx); err != nil {
				t.Fatal(err)
			}
			now := time.Now().UTC().Truncate(time.Second)
			var old, fresh []string
			for i := range 1500 { // more than one batch
				old = append(old, "old-"+string(rune('a'+i%26))+time.Duration(i).String())
			}
			fresh = []string{"fresh"}
			count := func(at time.Time) func(map[string]*tenants.Tally) {
				return func(ts map[string]*tenants.Tally) {
					for _, tl := range ts {
						tl.Times, tl.Streak, tl.Last = append(tl.Times, at), tl.Streak+1, at
					}
				}
			}
			if err := st.UpdateTallies(ctx, old, count(now.Add(-2*time.Hour))); err != nil {
				t.Fatal(err)
			}
			if err := st.UpdateTallies(ctx, fresh, count(now.Add(-time.Minute))); err != nil {
				t.Fatal(err)
			}
			if err := st.Trust(ctx, "long ago", now.Add(-40*24*time.Hour)); err != nil {
				t.Fatal(err)
			}
			if err := st.Trust(ctx, "lately", now.Add(-time.Hour)); err != nil {
				t.Fatal(err)
			}
			if err := st.PruneTallies(ctx, now, 30*24*time.Hour); err != nil {
				t.Fatalf("prune: %v", err)
			}
			left := 0
			if err := st.UpdateTallies(ctx, append(old, fresh...), func(ts map[string]*tenants.Tally) {
				for _, tl := range ts {
					if len(tl.Times) > 0 {
						left++
					}
				}
			}); err != nil {
				t.Fatal(err)
			}
			if left != 1 {
				t.Errorf("%d tallies left after the prune, want the fresh one", left)
			}
			signedIn, err := st.TrustedSince(ctx, time.Time{})
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := signedIn["lately"]; !ok || len(signedIn) != 1 {
				t.Errorf("sign-ins left after the prune: %v, want the recent one", signedIn)
			}
		})
	}
}
