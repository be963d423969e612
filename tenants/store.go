package tenants

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/roosthub/roost/migrations"
)

// Store keeps the directory in SQL: embedded SQLite by default, Postgres in
// production. Both run the same queries; where the dialects differ, the
// difference is spelled out next to the query.
type Store struct {
	db      *sql.DB
	dialect migrations.Dialect
	// now is the clock; tests may replace it.
	now func() time.Time
	// changes carries committed changes to the data plane.
	changes *Bus
	// plans is the catalogue tenants' plans are resolved in.
	plans Plans
	// hashes bounds the password hashes computed at once.
	hashes *hashSlots
	// sessionsPruned is when expired sessions were last deleted (Unix
	// seconds).
	sessionsPruned atomic.Int64
	// usageIDsPruned is when the old records of usage transactions were
	// last deleted (Unix seconds; see AddUsage).
	usageIDsPruned atomic.Int64
	// usageDone are committed usage transactions whose records the next
	// deletes (AddUsage).
	usageDone usageDone
	// usageCommitFault, if set, fails usage transactions once committed
	// (SetUsageCommitFault).
	usageCommitFault atomic.Pointer[func([]UsageDelta) error]
	// eventCap bounds each tenant's stored events (store_event.go).
	eventCap eventCap
}

// Open connects to the store that databaseURL names: empty for an SQLite file
// in dataDir, or a postgres:// URL. It does not migrate; call Migrate.
func Open(ctx context.Context, databaseURL, dataDir string) (*Store, error) {
	var (
		db  *sql.DB
		d   migrations.Dialect
		err error
	)
	switch {
	case databaseURL == "":
		if err := os.MkdirAll(dataDir, 0o700); err != nil {
			return nil, fmt.Errorf("create data dir: %w", err)
		}
		db, err = openSQLite(filepath.Join(dataDir, "roost.db"))
		d = migrations.SQLite
	case strings.HasPrefix(databaseURL, "postgres://") || strings.HasPrefix(databaseURL, "postgresql://"):
		db, err = openPostgres(databaseURL)
		d = migrations.Postgres
	default:
		return nil, errors.New("database URL must be empty (embedded SQLite) or start with postgres://")
	}
	if err != nil {
		return nil, err
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := db.PingContext(pingCtx); err != nil {
		db.Close()
		return nil, fmt.Errorf("connect to %s: %w", d, err)
	}
	return &Store{db: db, dialect: d, now: func() time.Time { return time.Now() }, changes: &Bus{}, plans: DefaultPlans(),
		hashes: newHashSlots(DefaultPasswordHashes())}, nil
}

// openPostgres opens a pool that checks a connection idle for more than
// 100 ms before reusing it: after Postgres restarts, every pooled
// connection is dead, and the first query on each would otherwise fail
// (pgx's default waits for a second of idleness). A busy pool reuses its
// connections faster than that and pays nothing.
func openPostgres(databaseURL string) (*sql.DB, error) {
	cfg, err := pgx.ParseConfig(databaseURL)
	if err != nil {
		return nil, err
	}
	return stdlib.OpenDB(*cfg, stdlib.OptionShouldPing(func(_ context.Context, p stdlib.ShouldPingParams) bool {
		return p.IdleDuration > 100*time.Millisecond
	})), nil
}

// openSQLite opens the file in WAL mode with foreign keys on. Transactions
// take the write lock when they begin (_txlock=immediate), so two writers
// queue on busy_timeout instead of one failing when it upgrades its lock.
func openSQLite(path string) (*sql.DB, error) {
	q := url.Values{}
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Set("_txlock", "immediate")
	return sql.Open("sqlite", "file:"+path+"?"+q.Encode())
}

// Dialect tells which database the store runs on.
func (s *Store) Dialect() migrations.Dialect { return s.dialect }

// Migrate brings the schema up to date and returns the migrations it ran.
func (s *Store) Migrate(ctx context.Context) ([]string, error) {
	return migrations.Apply(ctx, s.db, s.dialect)
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.db.PingContext(ctx) }

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// SetPlans replaces the built-in catalogue of plans; call it before serving.
func (s *Store) SetPlans(p Plans) { s.plans = p }

// Plans returns the catalogue of plans.
func (s *Store) Plans() Plans { return s.plans }

// SetClock replaces the store's clock; for tests.
func (s *Store) SetClock(now func() time.Time) { s.now = now }

// timestamp is the store's clock at the precision both databases keep.
func (s *Store) timestamp() time.Time { return s.now().UTC().Truncate(time.Microsecond) }

// Changes is the bus on which the store announces committed changes.
func (s *Store) Changes() *Bus { return s.changes }

// inTx runs fn in a transaction, commits it if fn returns nil, and then
// announces the changes.
func (s *Store) inTx(ctx context.Context, fn func(tx *sql.Tx) error, changes ...Change) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		return err
	}
	if err := s.notify(ctx, tx, changes...); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	for _, c := range changes {
		s.changes.Publish(c)
	}
	return nil
}

// placeholders is "$from, $from+1, …" for n parameters, as an IN list
// takes them.
func placeholders(from, n int) string {
	ps := make([]string, n)
	for i := range ps {
		ps[i] = "$" + strconv.Itoa(from+i)
	}
	return strings.Join(ps, ", ")
}

// lockTenant locks the tenant's row until the transaction ends, so that
// checks on a tenant's objects (a quota count, rule positions) and the write
// that follows cannot interleave with another transaction's. SQLite needs no
// row lock: its transactions begin with the database's write lock.
func (s *Store) lockTenant(ctx context.Context, tx *sql.Tx, tenant string) error {
	q := `SELECT slug FROM tenants WHERE slug = $1`
	if s.dialect == migrations.Postgres {
		q += ` FOR UPDATE`
	}
	var slug string
	if err := tx.QueryRowContext(ctx, q, tenant).Scan(&slug); err != nil {
		return notFound(err, "tenant %s", tenant)
	}
	return nil
}

// containing is a LIKE pattern (with ESCAPE '\') matching text that
// contains s, LIKE's own wildcards in s taken literally.
func containing(s string) string {
	return "%" + strings.NewReplacer(`\`, `\\`, "%", `\%`, "_", `\_`).Replace(s) + "%"
}

// notFound turns sql.ErrNoRows into ErrNotFound naming the object.
func notFound(err error, format string, args ...any) error {
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf(format+": %w", append(args, ErrNotFound)...)
	}
	return err
}

// isUniqueViolation recognises a unique or primary-key violation by its
// code: SQLSTATE 23505 on Postgres, the extended result code on SQLite.
func isUniqueViolation(err error) bool {
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		return pg.Code == "23505"
	}
	var lite *sqlite.Error
	if errors.As(err, &lite) {
		return lite.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || lite.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
	}
	return false
}

// audit records a change in the same transaction as the change itself.
func (s *Store) audit(ctx context.Context, tx *sql.Tx, tenant, action, object string) error {
	var t sql.NullString
	if tenant != "" {
		t = sql.NullString{String: tenant, Valid: true}
	}
	_, err := tx.ExecContext(ctx,
		`INSERT INTO audit_log (id, tenant, actor, action, object, at) VALUES ($1, $2, $3, $4, $5, $6)`,
		newID("aud_"), t, actorFrom(ctx), action, object, s.timestamp())
	return err
}

// Page selects one page of a list: at most Limit items after the cursor.
type Page struct {
	Limit  int
	Cursor string
}

// Page size limits.
const (
	DefaultPageSize = 50
	MaxPageSize     = 200
)

func (p Page) limit() int {
	if p.Limit <= 0 {
		return DefaultPageSize
	}
	return min(p.Limit, MaxPageSize)
}

// trimPage cuts a result fetched with limit+1 rows to limit and returns the
// cursor of the next page: the key of the last item kept, or "" at the end.
func trimPage[T any](items []T, p Page, key func(T) string) ([]T, string) {
	if len(items) <= p.limit() {
		return items, ""
	}
	items = items[:p.limit()]
	return items, key(items[len(items)-1])
}

func marshalJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only maps of strings and numbers are stored
	}
	return string(b)
}

func nullTime(t sql.NullTime) *time.Time {
	if !t.Valid {
		return nil
	}
	u := t.Time.UTC()
	return &u
}

// Setting returns the server setting key, first storing init() as its value
// if it has none. Concurrent first calls agree on one value.
func (s *Store) Setting(ctx context.Context, key string, init func() string) (string, error) {
	if _, err := s.db.ExecContext(ctx,
		`INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING`, key, init()); err != nil {
		return "", fmt.Errorf("store setting %s: %w", key, err)
	}
	var v string
	if err := s.db.QueryRowContext(ctx, `SELECT value FROM settings WHERE key = $1`, key).Scan(&v); err != nil {
		return "", fmt.Errorf("read setting %s: %w", key, err)
	}
	return v, nil
}
