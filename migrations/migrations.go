// Package migrations owns Roost's SQL schema: versioned migrations, embedded
// in the binary, applied in order and recorded in schema_migrations.
//
// Migrations are written once, in Postgres's dialect, and translated for
// SQLite by the few substitutions in sqliteDDL. A migration is never edited
// once merged: its checksum is recorded when applied, and a changed file stops
// start-up instead of leaving two databases with different schemas.
package migrations

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"time"
)

//go:embed *.sql
var files embed.FS

// Dialect names a SQL database the migrations can run on.
type Dialect string

// The dialects.
const (
	Postgres Dialect = "postgres"
	SQLite   Dialect = "sqlite"
)

// Migration is one schema change.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

// Checksum identifies the migration's text, so an edited migration is noticed.
func (m Migration) Checksum() string {
	sum := sha256.Sum256([]byte(m.SQL))
	return hex.EncodeToString(sum[:])
}

// All returns every embedded migration in version order. File names are
// NNNN_name.sql; a malformed name or a repeated version is an error.
func All() ([]Migration, error) { return load(files) }

func load(fsys fs.FS) ([]Migration, error) {
	names, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		return nil, err
	}
	var ms []Migration
	for _, name := range names {
		num, rest, ok := strings.Cut(strings.TrimSuffix(name, ".sql"), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 || rest == "" {
			return nil, fmt.Errorf("migration %s: name must be NNNN_name.sql", name)
		}
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, err
		}
		ms = append(ms, Migration{Version: v, Name: rest, SQL: string(b)})
	}
	slices.SortFunc(ms, func(a, b Migration) int { return a.Version - b.Version })
	for i := 1; i < len(ms); i++ {
		if ms[i].Version == ms[i-1].Version {
			return nil, fmt.Errorf("migrations %s and %s share version %d", ms[i-1].Name, ms[i].Name, ms[i].Version)
		}
	}
	return ms, nil
}

// sqliteDDL translates a Postgres migration for SQLite. SQLite's driver turns
// columns declared TIMESTAMP into time.Time, as Postgres does TIMESTAMPTZ;
// its rowid with AUTOINCREMENT is a BIGSERIAL whose ids are never reused.
func sqliteDDL(s string) string {
	s = strings.ReplaceAll(s, "BIGSERIAL PRIMARY KEY", "INTEGER PRIMARY KEY AUTOINCREMENT")
	return strings.ReplaceAll(s, "TIMESTAMPTZ", "TIMESTAMP")
}

// lockID is the Postgres advisory lock that keeps two processes from
// migrating one database at once.
const lockID = 0x526f6f7374 // "Roost"

// Apply runs every migration db has not yet recorded, each in its own
// transaction, and returns the names of those it ran.
func Apply(ctx context.Context, db *sql.DB, d Dialect) ([]string, error) {
	ms, err := All()
	if err != nil {
		return nil, err
	}
	return apply(ctx, db, d, ms)
}

func apply(ctx context.Context, db *sql.DB, d Dialect, ms []Migration) ([]string, error) {
	create := `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		name       TEXT NOT NULL,
		checksum   TEXT NOT NULL,
		applied_at TIMESTAMPTZ NOT NULL)`
	if d == SQLite {
		create = sqliteDDL(create)
	}
	if err := inLockedTx(ctx, db, d, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, create)
		return err
	}); err != nil {
		return nil, fmt.Errorf("create schema_migrations: %w", err)
	}
	var applied []string
	for _, m := range ms {
		ran, err := applyOne(ctx, db, d, m)
		if err != nil {
			return applied, fmt.Errorf("migration %04d_%s: %w", m.Version, m.Name, err)
		}
		if ran {
			applied = append(applied, fmt.Sprintf("%04d_%s", m.Version, m.Name))
		}
	}
	return applied, nil
}

// inLockedTx runs fn in a transaction that, on Postgres, holds the
// migration lock: even CREATE TABLE IF NOT EXISTS fails when two processes
// run it at once on a new database.
func inLockedTx(ctx context.Context, db *sql.DB, d Dialect, fn func(*sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if d == Postgres {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, lockID); err != nil {
			return err
		}
	}
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit()
}

func applyOne(ctx context.Context, db *sql.DB, d Dialect, m Migration) (ran bool, err error) {
	err = inLockedTx(ctx, db, d, func(tx *sql.Tx) error {
		ran, err = applyIn(ctx, tx, d, m)
		return err
	})
	return ran && err == nil, err
}

// applyIn runs a migration in tx unless it is recorded.
func applyIn(ctx context.Context, tx *sql.Tx, d Dialect, m Migration) (bool, error) {
	var checksum string
	err := tx.QueryRowContext(ctx, `SELECT checksum FROM schema_migrations WHERE version = $1`, m.Version).Scan(&checksum)
	switch {
	case err == nil:
		if checksum != m.Checksum() {
			return false, fmt.Errorf("changed after it was applied (recorded checksum %.12s, file %.12s); add a new migration instead", checksum, m.Checksum())
		}
		return false, nil
	case err != sql.ErrNoRows:
		return false, err
	}
	ddl := m.SQL
	if d == SQLite {
		ddl = sqliteDDL(ddl)
	}
	if _, err := tx.ExecContext(ctx, ddl); err != nil {
		return false, err
	}
	if _, err := tx.ExecContext(ctx,
		`INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES ($1, $2, $3, $4)`,
		m.Version, m.Name, m.Checksum(), time.Now().UTC()); err != nil {
		return false, err
	}
	return true, nil
}
