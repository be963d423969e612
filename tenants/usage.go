package tenants

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
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

// usageAppliedKept is how long the record of a transaction that added
// usage is kept: far longer than a meter takes to try a delta again.
const usageAppliedKept = 24 * time.Hour

// AddUsage adds the deltas in one transaction. If that fails, each is tried
// alone, so that one tenant deleted meanwhile does not hold up the others;
// the deltas that still failed are returned with the error, to be passed
// again as they are.
//
// A transaction whose commit fails may have committed all the same (a
// timeout while the database commits, the connection lost after it). So
// each transaction also records an id of its own (usage_applied), and the
// deltas of one whose commit failed are returned with its id among their
// Tries: tried again, a delta one of whose tries is recorded was added,
// and is not added twice.
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
	added, err := usageAdded(ctx, tx, deltas)
	if err != nil {
		return deltas, err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO usage_applied (id, at) VALUES ($1, $2)`, id, s.now().UTC()); err != nil {
		return deltas, fmt.Errorf("record a usage transaction: %w", err)
	}
	for _, d := range deltas {
		if slices.ContainsFunc(d.Tries, func(t string) bool { return added[t] }) {
			continue
		}
		if _, err := tx.ExecContext(ctx, addUsage, d.Tenant, d.Hour.UTC().Truncate(time.Hour),
			d.MessagesIn, d.MessagesOut, d.BytesIn, d.BytesOut, d.ConnectionSeconds, d.PeakConnections); err != nil {
			return deltas, err
		}
	}
	err = tx.Commit()
	if err == nil && s.usageCommitFault != nil {
		err = s.usageCommitFault(deltas)
	}
	if err != nil {
		out := make([]UsageDelta, len(deltas))
		for i, d := range deltas {
			d.Tries = append(slices.Clip(d.Tries), id)
			out[i] = d
		}
		return out, err
	}
	return nil, nil
}

// usageAdded returns which of the deltas' tries are recorded: those
// committed.
func usageAdded(ctx context.Context, tx *sql.Tx, deltas []UsageDelta) (map[string]bool, error) {
	var tries []any
	for _, d := range deltas {
		for _, t := range d.Tries {
			tries = append(tries, t)
		}
	}
	added := map[string]bool{}
	for chunk := range slices.Chunk(tries, 1000) {
		var q strings.Builder
		q.WriteString(`SELECT id FROM usage_applied WHERE id IN (`)
		for i := range chunk {
			if i > 0 {
				q.WriteString(", ")
			}
			fmt.Fprintf(&q, "$%d", i+1)
		}
		q.WriteString(`)`)
		rows, err := tx.QueryContext(ctx, q.String(), chunk...)
		if err != nil {
			return nil, fmt.Errorf("read usage transactions: %w", err)
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return nil, err
			}
			added[id] = true
		}
		if err := rows.Close(); err != nil {
			return nil, err
		}
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return added, nil
}

// SetUsageCommitFault makes every usage transaction, once committed,
// report fault's error as its commit's (nil: none), as a commit whose
// reply was lost does; for tests.
func (s *Store) SetUsageCommitFault(fault func(deltas []UsageDelta) error) {
	s.usageCommitFault = fault
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
