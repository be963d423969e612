package tenants

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/roosthub/roost/migrations"
)

// Tally is what one key of a throttle has spent: its attempts within the
// last hour (oldest first), its streak, and its last attempt. The auth
// front decides what they allow; the store keeps them, for every process.
type Tally struct {
	Times  []time.Time `json:"t,omitempty"`
	Streak int         `json:"s,omitempty"`
	Last   time.Time   `json:"l"`
}

// tallyID is the row of a throttle's key: a hash, so the table holds no
// email or address in the clear, and every key the same length.
func tallyID(key string) string {
	h := sha256.Sum256([]byte(key))
	return hex.EncodeToString(h[:])
}

// UpdateTallies runs fn on the tallies of keys (a key with none yet has a
// zero Tally), and stores what fn leaves in them: a tally with no attempt
// and no streak is deleted. Updates of a key wait for each other, in every
// process sharing the database, so that a check and the count it makes
// are one step.
func (s *Store) UpdateTallies(ctx context.Context, keys []string, fn func(map[string]*Tally)) error {
	ids := make(map[string]string, len(keys)) // row id → key
	for _, k := range keys {
		ids[tallyID(k)] = k
	}
	sorted := make([]string, 0, len(ids))
	for id := range ids {
		sorted = append(sorted, id)
	}
	slices.Sort(sorted) // locked in one order: no two updates deadlock
	return s.inTx(ctx, func(tx *sql.Tx) error {
		if s.dialect == migrations.Postgres {
			// The keys' locks, rows or not. (SQLite's transactions run
			// one at a time already.)
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
		tallies := make(map[string]*Tally, len(keys))
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
			tallies[ids[id]] = &t
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, k := range keys {
			if tallies[k] == nil {
				tallies[k] = &Tally{}
			}
		}
		fn(tallies)
		for _, id := range sorted {
			t := tallies[ids[id]]
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
		return nil
	})
}

// Trust notes that key (an account and an address) signed in at.
func (s *Store) Trust(ctx context.Context, key string, at time.Time) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO auth_trusted (id, at) VALUES ($1, $2)
		ON CONFLICT (id) DO UPDATE SET at = excluded.at`, tallyID(key), at.UTC().Truncate(time.Microsecond))
	return err
}

// TrustedAt returns when key last signed in, if it did.
func (s *Store) TrustedAt(ctx context.Context, key string) (time.Time, bool, error) {
	var at time.Time
	err := s.db.QueryRowContext(ctx, `SELECT at FROM auth_trusted WHERE id = $1`, tallyID(key)).Scan(&at)
	switch {
	case err == sql.ErrNoRows:
		return time.Time{}, false, nil
	case err != nil:
		return time.Time{}, false, err
	}
	return at, true, nil
}

// PruneTallies deletes the tallies with nothing left in them at now, and
// the sign-ins older than trustFor.
func (s *Store) PruneTallies(ctx context.Context, now time.Time, trustFor time.Duration) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM auth_tallies WHERE until_at <= $1`, now.UTC()); err != nil {
		return err
	}
	_, err := s.db.ExecContext(ctx, `DELETE FROM auth_trusted WHERE at < $1`, now.Add(-trustFor).UTC())
	return err
}
