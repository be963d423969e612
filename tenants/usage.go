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

// UsageDelta is usage to add to one tenant's hour. ID, if not empty,
// makes adding it idempotent: a delta whose ID was added before is not
// added again (see AddUsage).
type UsageDelta struct {
	ID     string
	Tenant string
	Hour   time.Time
	Usage
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

// usageAppliedKept is how long the id of a delta added is kept: far
// longer than a meter tries a delta again.
const usageAppliedKept = 7 * 24 * time.Hour

// AddUsage adds the deltas in one transaction. If that fails, each is tried
// alone, so that one tenant deleted meanwhile does not hold up the others;
// the deltas that still failed are returned with the error.
//
// A delta with an ID is added once: the transaction records its ID, and
// one whose ID is recorded already is skipped. A caller that was told a
// transaction failed cannot know whether it committed (a timeout during
// the commit, the connection lost after it) and tries its deltas again;
// they are not counted twice.
func (s *Store) AddUsage(ctx context.Context, deltas []UsageDelta) ([]UsageDelta, error) {
	if len(deltas) == 0 {
		return nil, nil
	}
	s.pruneUsageApplied(ctx)
	apply := func(tx *sql.Tx, deltas []UsageDelta) error {
		fresh, err := s.claimUsageIDs(ctx, tx, deltas)
		if err != nil {
			return err
		}
		for _, d := range deltas {
			if d.ID != "" && !fresh[d.ID] {
				continue // added before
			}
			if _, err := tx.ExecContext(ctx, addUsage, d.Tenant, d.Hour.UTC().Truncate(time.Hour),
				d.MessagesIn, d.MessagesOut, d.BytesIn, d.BytesOut, d.ConnectionSeconds, d.PeakConnections); err != nil {
				return err
			}
		}
		return nil
	}
	err := s.inTx(ctx, func(tx *sql.Tx) error { return apply(tx, deltas) })
	if err == nil || len(deltas) == 1 || ctx.Err() != nil {
		if err != nil {
			return deltas, err
		}
		return nil, nil
	}
	var failed []UsageDelta
	var errs []error
	for _, d := range deltas {
		if err := s.inTx(ctx, func(tx *sql.Tx) error { return apply(tx, []UsageDelta{d}) }); err != nil {
			failed = append(failed, d)
			errs = append(errs, fmt.Errorf("usage of %s: %w", d.Tenant, err))
		}
	}
	return failed, errors.Join(errs...)
}

// claimUsageIDs records the IDs of the deltas in tx, and returns those
// not recorded before: the deltas to add. One statement per
// usageIDsPerInsert IDs.
func (s *Store) claimUsageIDs(ctx context.Context, tx *sql.Tx, deltas []UsageDelta) (map[string]bool, error) {
	var ids []string
	for _, d := range deltas {
		if d.ID != "" {
			ids = append(ids, d.ID)
		}
	}
	if len(ids) == 0 {
		return nil, nil
	}
	fresh := make(map[string]bool, len(ids))
	at := s.now().UTC()
	for chunk := range slices.Chunk(ids, usageIDsPerInsert) {
		var q strings.Builder
		args := make([]any, 0, len(chunk)+1)
		args = append(args, at)
		q.WriteString(`INSERT INTO usage_applied (id, at) VALUES `)
		for i, id := range chunk {
			if i > 0 {
				q.WriteString(", ")
			}
			args = append(args, id)
			fmt.Fprintf(&q, "($%d, $1)", len(args))
		}
		q.WriteString(` ON CONFLICT (id) DO NOTHING RETURNING id`)
		rows, err := tx.QueryContext(ctx, q.String(), args...)
		if err != nil {
			return nil, fmt.Errorf("record usage ids: %w", err)
		}
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
	}
	return fresh, nil
}

// usageIDsPerInsert bounds the IDs one statement records (SQLite takes
// 32,766 parameters, Postgres 65,535).
const usageIDsPerInsert = 1000

// pruneUsageApplied deletes the delta ids older than usageAppliedKept, at
// most once an hour; a failure is left for the next time.
func (s *Store) pruneUsageApplied(ctx context.Context) {
	now := s.now()
	last := s.usageIDsPruned.Load()
	if now.Unix()-last < 3600 || !s.usageIDsPruned.CompareAndSwap(last, now.Unix()) {
		return
	}
	s.db.ExecContext(ctx, `DELETE FROM usage_applied WHERE at < $1`, now.Add(-usageAppliedKept).UTC())
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
