package migrations

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/fstest"

	_ "github.com/jackc/pgx/v5/stdlib"
	_ "modernc.org/sqlite"

	"github.com/roosthub/roost/internal/testenv"
)

func openSQLite(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(t.TempDir(), "m.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestApplyOnceInOrder(t *testing.T) {
	db := openSQLite(t)
	ctx := context.Background()
	applied, err := Apply(ctx, db, SQLite)
	if err != nil {
		t.Fatal(err)
	}
	all, _ := All()
	if len(applied) != len(all) || len(all) == 0 {
		t.Fatalf("first run applied %v, want all %d migrations", applied, len(all))
	}
	again, err := Apply(ctx, db, SQLite)
	if err != nil || len(again) != 0 {
		t.Fatalf("second run: applied %v, %v; want nothing", again, err)
	}
	var n int
	if err := db.QueryRow(`SELECT COUNT(*) FROM schema_migrations`).Scan(&n); err != nil || n != len(all) {
		t.Fatalf("schema_migrations has %d rows (%v), want %d", n, err, len(all))
	}
}

func TestEditedMigrationStopsStart(t *testing.T) {
	db := openSQLite(t)
	ctx := context.Background()
	v1 := fstest.MapFS{"0001_first.sql": {Data: []byte("CREATE TABLE a (x INTEGER);")}}
	ms, err := load(v1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := apply(ctx, db, SQLite, ms); err != nil {
		t.Fatal(err)
	}
	edited := fstest.MapFS{"0001_first.sql": {Data: []byte("CREATE TABLE a (x INTEGER, y INTEGER);")}}
	ms, _ = load(edited)
	_, err = apply(ctx, db, SQLite, ms)
	if err == nil || !strings.Contains(err.Error(), "changed after it was applied") {
		t.Fatalf("applying an edited migration: got %v, want a refusal", err)
	}
}

func TestFailedMigrationLeavesNoTrace(t *testing.T) {
	db := openSQLite(t)
	ctx := context.Background()
	ms, _ := load(fstest.MapFS{
		"0001_ok.sql":  {Data: []byte("CREATE TABLE a (x INTEGER);")},
		"0002_bad.sql": {Data: []byte("CREATE TABLE b (x INTEGER); CREATE TABLE a (x INTEGER);")},
	})
	applied, err := apply(ctx, db, SQLite, ms)
	if err == nil || len(applied) != 1 {
		t.Fatalf("got applied %v, err %v; want 0001 applied and 0002 failed", applied, err)
	}
	var n int
	db.QueryRow(`SELECT COUNT(*) FROM sqlite_master WHERE name = 'b'`).Scan(&n)
	if n != 0 {
		t.Error("the failed migration's first statement was kept")
	}
}

func TestBadNames(t *testing.T) {
	for _, fs := range []fstest.MapFS{
		{"first.sql": {Data: []byte("")}},
		{"0001.sql": {Data: []byte("")}},
		{"0001_a.sql": {Data: []byte("")}, "1_b.sql": {Data: []byte("")}},
	} {
		if _, err := load(fs); err == nil {
			t.Errorf("load(%v) accepted bad names", fs)
		}
	}
}

// TestConcurrentFirstStart: processes starting at once on a new Postgres
// database (a control plane and its data-plane nodes) all migrate it
// without error, and each migration runs once.
func TestConcurrentFirstStart(t *testing.T) {
	url := testenv.PostgresURL(t)
	all, _ := All()
	var wg sync.WaitGroup
	ran := make([][]string, 4)
	for i := range ran {
		wg.Add(1)
		go func() {
			defer wg.Done()
			db, err := sql.Open("pgx", url)
			if err != nil {
				t.Error(err)
				return
			}
			defer db.Close()
			if ran[i], err = Apply(context.Background(), db, Postgres); err != nil {
				t.Errorf("process %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	total := 0
	for _, r := range ran {
		total += len(r)
	}
	if total != len(all) {
		t.Errorf("%d migrations ran in all, want each of the %d once: %v", total, len(all), ran)
	}
}
