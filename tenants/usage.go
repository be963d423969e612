package tenants

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// Usage is what a tenant used in some span of time. Messages and bytes are
// PUBLISH packets and their payload bytes: in, from devices and the API; out,
// written to devices (resends included).
type Usage struct {
	MessagesIn        int64 `json:"messages_in"`
	MessagesOut       int64 `json:"messages_out"`
	BytesIn           int64 `json:"bytes_in"`
	BytesOut          int64 `json:"bytes_out"`
	ConnectionSeconds int64 `json:"-"`
	PeakConnections   int64 `json:"peak_connections"`
}

// Add adds u's counts to these; the peak is the higher one.
func (u *Usage) Add(o Usage) {
	u.MessagesIn += o.MessagesIn
	u.MessagesOut += o.MessagesOut
	u.BytesIn += o.BytesIn
	u.BytesOut += o.BytesOut
	u.ConnectionSeconds += o.ConnectionSeconds
	u.PeakConnections = max(u.PeakConnections, o.PeakConnections)
}

// IsZero reports whether there is nothing to record.
func (u Usage) IsZero() bool { return u == Usage{} }

// UsageDelta is usage to add to one tenant's hour.
type UsageDelta struct {
	Tenant string
	Hour   time.Time
	Usage
	// Tries are the earlier attempts to add the delta that may have added
	// it after all: AddUsage sets them on the deltas it returns failed,
	// and a caller trying them again passes them back as they are.
	Tries []string
}

// UsageBucket is one hour's or one day's usage.
type UsageBucket struct {
	Start time.Time `json:"start"`
	Usage
	ConnectionMinutes float64 `json:"connection_minutes"`
}

// Granularities of usage buckets.
const (
	Hourly = "hour"
	Daily  = "day"
)

// addUsage is the upsert both dialects run: counts add up, the peak keeps
// the higher value.
const addUsage = `INSERT INTO usage (tenant, hour, messages_in, messages_out, bytes_in, bytes_out, connection_seconds, peak_connections)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
	ON CONFLICT (tenant, hour) DO UPDATE SET
		messages_in = usage.messages_in + excluded.messages_in,
		messages_out = usage.messages_out + excluded.messages_out,
		bytes_in = usage.bytes_in + excluded.bytes_in,
		bytes_out = usage.bytes_out + excluded.bytes_out,
		connection_seconds = usage.connection_seconds + excluded.connection_seconds,
		peak_connections = CASE WHEN excluded.peak_connections > usage.peak_connections
			THEN excluded.peak_connections ELSE usage.peak_connections END`

// usageAppliedKept is how long the record of a transaction whose commit
// failed is kept: far longer than a meter takes to try its deltas again,
// save through a week's outage of the database.
const usageAppliedKept = 7 * 24 * time.Hour

// AddUsage adds the deltas in one transaction. If that fails, each is tried
// alone, so that one tenant deleted meanwhile does not hold up the others;
// the deltas that still failed are returned with the error, to be passed
// again as they are.
//
// A transaction whose commit fails may have committed all the same (a
// timeout while the database commits, the connection lost after it). So
// each transaction also records an id of its own (usage_applied), and the
// deltas of one whose commit failed are returned with its id among their
// Tries. Tried again, a delta one of whose tries is recorded was added,
// and is skipped. The next transaction deletes the record of one that
// committed, which nothing tries again; the records of the others are
// kept usageAppliedKept.
func (s *Store) AddUsage(ctx context.Context, deltas []UsageDelta) ([]UsageDelta, error) {
	if len(deltas) == 0 {
		return nil, nil
	}
	s.pruneUsageApplied(ctx)
	failed, err := s.addUsageOnce(ctx, deltas)
	if err == nil || len(deltas) == 1 || ctx.Err() != nil {
		return failed, err
	}
	var still []UsageDelta
	var errs []error
	for _, d := range failed {
		f, err := s.addUsageOnce(ctx, []UsageDelta{d})
		if err != nil {
			still = append(still, f...)
			errs = append(errs, fmt.Errorf("usage of %s: %w", d.Tenant, err))
		}
	}
	return still, errors.Join(errs...)
}

// addUsageOnce adds the deltas in one transaction, skipping those a
// recorded try added, and returns them all if it fails: after a failed
// commit, with this transaction's id among their Tries.
func (s *Store) addUsageOnce(ctx context.Context, deltas []UsageDelta) ([]UsageDelta, error) {
	id := NewToken()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return deltas, err
	}
	defer tx.Rollback()
	added, err := usageAdded(ctx, tx, deltas, s.now().UTC())
	if err != nil {
		return deltas, err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO usage_applied (id, at) VALUES ($1, $2)`, id, s.now().UTC()); err != nil {
		return deltas, fmt.Errorf("record a usage transaction: %w", err)
	}
	done := s.usageDone.take()
	if len(done) > 0 {
		if _, err := tx.ExecContext(ctx, `DELETE FROM usage_applied WHERE id IN (`+placeholders(1, len(done))+`)`, done...); err != nil {
			s.usageDone.put(done...)
			return deltas, fmt.Errorf("delete usage transactions' records: %w", err)
		}
	}
	for _, d := range deltas {
		if slices.ContainsFunc(d.Tries, func(t string) bool { return added[t] }) {
			continue
		}
		if _, err := tx.ExecContext(ctx, addUsage, d.Tenant, d.Hour.UTC().Truncate(time.Hour),
			d.MessagesIn, d.MessagesOut, d.BytesIn, d.BytesOut, d.ConnectionSeconds, d.PeakConnections); err != nil {
			s.usageDone.put(done...)
			return deltas, err
		}
	}
	err = tx.Commit()
	if f := s.usageCommitFault.Load(); err == nil && f != nil {
		err = (*f)(deltas)
	}
	if err != nil {
		// done's deletion may be lost with it: the prune deletes them.
		out := make([]UsageDelta, len(deltas))
		for i, d := range deltas {
			d.Tries = append(slices.Clip(d.Tries), id)
			out[i] = d
		}
		return out, err
	}
	s.usageDone.put(id)
	return nil, nil
}

// usageAdded returns which of the deltas' tries committed: those whose
// record is there. It looks by inserting each try's record, not by
// reading, so that on Postgres it waits for a try still committing (one
// whose caller gave up on its commit) rather than miss it; and it deletes
// the records it inserted, of tries that did not commit, so that another
// delta of theirs, tried next, is not taken for added.
func usageAdded(ctx context.Context, tx *sql.Tx, deltas []UsageDelta, at time.Time) (map[string]bool, error) {
	var tries []any
	for _, d := range deltas {
		for _, t := range d.Tries {
			if !slices.Contains(tries, any(t)) {
				tries = append(tries, t)
			}
		}
	}
	added := map[string]bool{}
	for chunk := range slices.Chunk(tries, 1000) {
		args := append([]any{at}, chunk...)
		values := make([]string, len(chunk))
		for i := range chunk {
			values[i] = fmt.Sprintf("($%d, $1)", i+2)
		}
		rows, err := tx.QueryContext(ctx, `INSERT INTO usage_applied (id, at) VALUES `+strings.Join(values, ", ")+
			` ON CONFLICT (id) DO NOTHING RETURNING id`, args...)
		if err != nil {
			return nil, fmt.Errorf("read usage transactions: %w", err)
		}
		fresh := map[string]bool{}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return nil, err
			}
			fresh[id] = true
		}
		if err := rows.Close(); err != nil {
			return nil, err
		}
		if err := rows.Err(); err != nil {
			return nil, err
		}
		var never []any
		for _, t := range chunk {
			if fresh[t.(string)] {
				never = append(never, t)
			} else {
				added[t.(string)] = true
			}
		}
		if len(never) > 0 {
			if _, err := tx.ExecContext(ctx, `DELETE FROM usage_applied WHERE id IN (`+placeholders(1, len(never))+`)`, never...); err != nil {
				return nil, fmt.Errorf("read usage transactions: %w", err)
			}
		}
	}
	return added, nil
}

// usageDone holds the ids of usage transactions that committed, whose
// records the next transaction deletes.
type usageDone struct {
	mu  sync.Mutex
	ids []any
}

func (u *usageDone) put(ids ...any) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.ids = append(u.ids, ids...)
}

func (u *usageDone) take() []any {
	u.mu.Lock()
	defer u.mu.Unlock()
	ids := u.ids
	u.ids = nil
	return ids
}

// SetUsageCommitFault makes every usage transaction, once committed,
// report fault's error as its commit's (nil: none), as a commit whose
// reply was lost does; for tests.
func (s *Store) SetUsageCommitFault(fault func(deltas []UsageDelta) error) {
	if fault == nil {
		s.usageCommitFault.Store(nil)
		return
	}
	s.usageCommitFault.Store(&fault)
}

// pruneUsageApplied deletes the records of usage transactions older than
// usageAppliedKept, at most once an hour; a failure is tried again at the
// next call.
func (s *Store) pruneUsageApplied(ctx context.Context) {
	now := s.now()
	last := s.usageIDsPruned.Load()
	if now.Unix()-last < 3600 || !s.usageIDsPruned.CompareAndSwap(last, now.Unix()) {
		return
	}
	if _, err := s.db.ExecContext(ctx, `DELETE FROM usage_applied WHERE at < $1`, now.Add(-usageAppliedKept).UTC()); err != nil {
		s.usageIDsPruned.CompareAndSwap(now.Unix(), last)
	}
}

// Usage returns a tenant's usage from from (inclusive) to to (exclusive) in
// hourly or daily buckets (UTC), oldest first; spans with no activity are
// left out.
func (s *Store) Usage(ctx context.Context, tenant string, from, to time.Time, granularity string) ([]UsageBucket, error) {
	rows, err := s.db.QueryContext(ctx,
		`SELECT hour, messages_in, messages_out, bytes_in, bytes_out, connection_seconds, peak_connections
		 FROM usage WHERE tenant = $1 AND hour >= $2 AND hour < $3 ORDER BY hour`,
		tenant, from.UTC().Truncate(time.Hour), to.UTC())
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []UsageBucket
	for rows.Next() {
		var b UsageBucket
		if err := rows.Scan(&b.Start, &b.MessagesIn, &b.MessagesOut, &b.BytesIn, &b.BytesOut, &b.ConnectionSeconds, &b.PeakConnections); err != nil {
			return nil, err
		}
		b.Start = b.Start.UTC()
		if granularity == Daily {
			b.Start = time.Date(b.Start.Year(), b.Start.Month(), b.Start.Day(), 0, 0, 0, 0, time.UTC)
			if n := len(out); n > 0 && out[n-1].Start.Equal(b.Start) {
				out[n-1].Usage.Add(b.Usage)
				continue
			}
		}
		out = append(out, b)
	}
	for i := range out {
		out[i].ConnectionMinutes = float64(out[i].ConnectionSeconds) / 60
	}
	return out, rows.Err()
}

// MonthMessages is the tenant's messages, in and out, in the calendar month
// (UTC) of t, as recorded.
func (s *Store) MonthMessages(ctx context.Context, tenant string, t time.Time) (int64, error) {
	start := MonthStart(t)
	return s.Messages(ctx, tenant, start, start.AddDate(0, 1, 0))
}

// Messages is the tenant's messages, in and out, recorded in the hours from
// from (inclusive) to to (exclusive).
func (s *Store) Messages(ctx context.Context, tenant string, from, to time.Time) (int64, error) {
	var n sql.NullInt64
	err := s.db.QueryRowContext(ctx,
		`SELECT SUM(messages_in + messages_out) FROM usage WHERE tenant = $1 AND hour >= $2 AND hour < $3`,
		tenant, from.UTC(), to.UTC()).Scan(&n)
	return n.Int64, err
}

// MonthStart is the first instant of t's calendar month in UTC: allowances
// run by calendar month.
func MonthStart(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}
