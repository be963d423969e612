package tenants

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/roosthub/roost/migrations"
)

// Tally is what one key of a throttle has spent: its attempts within the
// last hour (oldest first), its streak, and its last attempt. The auth
// front decides what they allow, and names each key by an id of its own
// (a keyed hash, so the table holds no email or address); the store keeps
// them for every process.
type Tally struct {
	Times  []time.Time `json:"t,omitempty"`
	Streak int         `json:"s,omitempty"`
	Last   time.Time   `json:"l"`
}

// UpdateTallies runs fn on the tallies of ids (an id with none yet has a
// zero Tally), and stores what fn leaves in them: a tally with no attempt
// and no streak is deleted. Updates of an id wait for each other, in every
// process sharing the database, so that a check and the count it makes
// are one step.
func (s *Store) UpdateTallies(ctx context.Context, ids []string, fn func(map[string]*Tally)) error {
	sorted := slices.Clone(ids)
	slices.Sort(sorted) // locked in one order: no two updates deadlock
	sorted = slices.Compact(sorted)
	// Read committed, whatever the database's default: a transaction that
	// waited for a lock reads what the one before it wrote.
	var opts *sql.TxOptions
	if s.dialect == migrations.Postgres {
		opts = &sql.TxOptions{Isolation: sql.LevelReadCommitted}
	}
	tx, err := s.db.BeginTx(ctx, opts)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if s.dialect == migrations.Postgres {
		// The ids' locks, rows or not. (SQLite's transactions run one at
		// a time already: they begin with the write lock.)
		for _, id := range sorted {
			if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, "roost/auth_tallies/"+id); err != nil {
				return err
			}
		}
	}
	args := make([]any, len(sorted))
	for i, id := range sorted {
		args[i] = id
	}
	rows, err := tx.QueryContext(ctx, `SELECT id, tally FROM auth_tallies WHERE id IN (`+placeholders(1, len(sorted))+`)`, args...)
	if err != nil {
		return err
	}
	tallies := make(map[string]*Tally, len(sorted))
	for rows.Next() {
		var id, raw string
		if err := rows.Scan(&id, &raw); err != nil {
			rows.Close()
			return err
		}
		var t Tally
		if err := json.Unmarshal([]byte(raw), &t); err != nil {
			rows.Close()
			return fmt.Errorf("auth tally %s: %w", id, err)
		}
		tallies[id] = &t
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, id := range sorted {
		if tallies[id] == nil {
			tallies[id] = &Tally{}
		}
	}
	fn(tallies)
	for _, id := range sorted {
		t := tallies[id]
		if len(t.Times) == 0 && t.Streak == 0 {
			if _, err := tx.ExecContext(ctx, `DELETE FROM auth_tallies WHERE id = $1`, id); err != nil {
				return err
			}
			continue
		}
		raw, err := json.Marshal(t)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO auth_tallies (id, tally, until_at) VALUES ($1, $2, $3)
			ON CONFLICT (id) DO UPDATE SET tally = excluded.tally, until_at = excluded.until_at`,
			id, string(raw), t.Last.Add(time.Hour).UTC()); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// Trust notes that id (an account and an address) signed in at.
func (s *Store) Trust(ctx context.Context, id string, at time.Time) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO auth_trusted (id, at) VALUES ($1, $2)
		ON CONFLICT (id) DO UPDATE SET at = excluded.at`, id, at.UTC().Truncate(time.Microsecond))
	return err
}

// TrustedSince returns the sign-ins noted at since or later, by id.
func (s *Store) TrustedSince(ctx context.Context, since time.Time) (map[string]time.Time, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, at FROM auth_trusted WHERE at >= $1`, since.UTC().Truncate(time.Microsecond))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]time.Time{}
	for rows.Next() {
		var id string
		var at time.Time
		if err := rows.Scan(&id, &at); err != nil {
			return nil, err
		}
		out[id] = at
	}
	return out, rows.Err()
}

// pruneBatch is how many rows one statement of PruneTallies deletes.
const pruneBatch = 1000

// PruneTallies deletes the tallies with nothing left in them at now, and
// the sign-ins older than trustFor, a batch at a time. A row an update
// holds is left for the next prune (Postgres: SKIP LOCKED), so a prune
// never waits on, nor deadlocks with, an attempt being counted.
func (s *Store) PruneTallies(ctx context.Context, now time.Time, trustFor time.Duration) error {
	skip := ""
	if s.dialect == migrations.Postgres {
		skip = ` FOR UPDATE SKIP LOCKED`
	}
	for _, q := range []struct {
		stmt string
		arg  time.Time
	}{
		{`DELETE FROM auth_tallies WHERE id IN (SELECT id FROM auth_tallies WHERE until_at <= $1 LIMIT $2` + skip + `)`, now.UTC()},
		{`DELETE FROM auth_trusted WHERE id IN (SELECT id FROM auth_trusted WHERE at < $1 LIMIT $2` + skip + `)`, now.Add(-trustFor).UTC()},
	} {
		for {
			res, err := s.db.ExecContext(ctx, q.stmt, q.arg, pruneBatch)
			if err != nil {
				return err
			}
			if n, err := res.RowsAffected(); err != nil || n < pruneBatch {
				break
			}
		}
	}
	return nil
}
