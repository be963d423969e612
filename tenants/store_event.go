package tenants

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/migrations"
)

var _ events.Writer = (*Store)(nil)

// eventsLockID is the Postgres advisory lock that orders the writers of
// events (see AddEvents); "RoostE".
const eventsLockID = 0x526f6f737445

// AddEvents stores events in one statement; each gets the next id. The
// events are stored as they come: their tenant is not checked (an event
// of a tenant deleted meanwhile is pruned with the tenant's others).
//
// Writers take turns, so that ids become visible in their order: a
// reader that has seen id N has seen every id below it, and a stream
// resuming after N misses none. A Postgres sequence alone hands ids out
// before the commit, so a batch from another node could commit after a
// later-numbered one; the transaction's advisory lock prevents that.
// SQLite has one writer at a time already.
func (s *Store) AddEvents(ctx context.Context, es []events.Event) error {
	if len(es) == 0 {
		return nil
	}
	var b strings.Builder
	b.WriteString(`INSERT INTO events (tenant, type, device, at, body) VALUES `)
	args := make([]any, 0, 5*len(es))
	for i, e := range es {
		e.ID = 0
		body, err := json.Marshal(e)
		if err != nil {
			return fmt.Errorf("encode event: %w", err)
		}
		if i > 0 {
			b.WriteString(", ")
		}
		n := len(args)
		fmt.Fprintf(&b, "($%d, $%d, $%d, $%d, $%d)", n+1, n+2, n+3, n+4, n+5)
		args = append(args, e.Tenant, e.Type, e.Device, e.Time.UTC().Truncate(time.Microsecond), string(body))
	}
	if s.dialect == migrations.Postgres {
		tx, err := s.db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, eventsLockID); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, b.String(), args...); err != nil {
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
	} else if _, err := s.db.ExecContext(ctx, b.String(), args...); err != nil {
		// SQLite: the one statement is its own transaction, which spares
		// it the statement journal SQLite keeps for a statement inside a
		// transaction of several (some 15% of a batch's CPU).
		return err
	}
	// The events are stored: a failure to trim is left to the next
	// trim or to PruneEvents.
	for _, tenant := range s.eventCap.added(es) {
		_, _ = s.trimEvents(ctx, tenant, 1000, 100)
	}
	return nil
}

// MaxStoredEvents is how many events a tenant keeps at most, whatever its
// event_retention: past it, the oldest are deleted. A flood of events
// (auth failures from a botnet, a device reconnecting in a loop) would
// otherwise fill the directory for as long as the retention lasts.
const MaxStoredEvents = 100_000

// eventCap counts the events each tenant has stored through this store
// since their last trim: a tenant's rows are trimmed to the cap once a
// tenth of it has been added, so that a tenant holds at most about 110%
// of the cap between trims (plus what other nodes add meanwhile), for one
// trim per tenth rather than one per batch.
type eventCap struct {
	mu    sync.Mutex
	max   int64            // 0: MaxStoredEvents
	since map[string]int64 // tenant → events added since its last trim
}

func (c *eventCap) limit() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return cmp.Or(c.max, MaxStoredEvents)
}

// added counts es in and returns the tenants due for a trim.
func (c *eventCap) added(es []events.Event) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.since == nil {
		c.since = map[string]int64{}
	}
	every := max(cmp.Or(c.max, MaxStoredEvents)/10, 1)
	var due []string
	for _, e := range es {
		if c.since[e.Tenant]++; c.since[e.Tenant] >= every && !slices.Contains(due, e.Tenant) {
			due = append(due, e.Tenant)
		}
	}
	for _, t := range due {
		delete(c.since, t)
	}
	return due
}

// SetMaxStoredEvents replaces MaxStoredEvents for this store; for tests.
func (s *Store) SetMaxStoredEvents(n int64) {
	s.eventCap.mu.Lock()
	defer s.eventCap.mu.Unlock()
	s.eventCap.max = n
}

// trimEvents deletes the tenant's events older than its newest
// MaxStoredEvents, batch rows a statement and at most maxBatches
// statements, and returns how many it deleted.
func (s *Store) trimEvents(ctx context.Context, tenant string, batch, maxBatches int) (int64, error) {
	keep := s.eventCap.limit()
	var total int64
	for range maxBatches {
		// The subquery is the id of the newest event past the cap (NULL,
		// and nothing deleted, while the tenant has no more than keep).
		res, err := s.db.ExecContext(ctx, `DELETE FROM events WHERE id IN
			(SELECT id FROM events WHERE tenant = $1 AND id <=
				(SELECT id FROM events WHERE tenant = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)
			ORDER BY id LIMIT $3)`, tenant, keep, batch)
		if err != nil {
			return total, fmt.Errorf("trim events of %s: %w", tenant, err)
		}
		n, _ := res.RowsAffected()
		total += n
		if n < int64(batch) {
			break
		}
	}
	return total, nil
}

// Events returns a page of the tenant's stored events, newest first, and
// the cursor of the next page ("" at the end). Only that tenant's.
func (s *Store) Events(ctx context.Context, tenant string, q EventQuery) ([]events.Event, string, error) {
	if err := q.Validate(); err != nil {
		return nil, "", err
	}
	before := int64(-1)
	if q.Cursor != "" {
		before, _ = eventCursor(q.Cursor)
	}
	es, err := s.queryEvents(ctx, tenant, q, before, -1, q.limit()+1)
	if err != nil {
		return nil, "", err
	}
	es, next := trimPage(es, q.Page, func(e events.Event) string { return strconv.FormatInt(e.ID, 10) })
	return es, next, nil
}

// EventsAfter returns up to limit of the tenant's stored events with an id
// above after, oldest first, narrowed as q says (its page and its since
// and until aside): what a stream resumed at after has missed.
func (s *Store) EventsAfter(ctx context.Context, tenant string, after int64, q EventQuery, limit int) ([]events.Event, error) {
	q.Since, q.Until, q.Page = time.Time{}, time.Time{}, Page{}
	if err := q.Validate(); err != nil {
		return nil, err
	}
	return s.queryEvents(ctx, tenant, q, -1, max(after, 0), min(max(limit, 1), MaxPageSize))
}

// LastEventID is the id of the tenant's newest stored event, 0 if none: a
// stream that starts now sends the events after it.
func (s *Store) LastEventID(ctx context.Context, tenant string) (int64, error) {
	var id sql.NullInt64
	err := s.db.QueryRowContext(ctx, `SELECT MAX(id) FROM events WHERE tenant = $1`, tenant).Scan(&id)
	return id.Int64, err
}

// queryEvents reads events below before (newest first) or above after
// (oldest first); a negative bound is no bound.
func (s *Store) queryEvents(ctx context.Context, tenant string, q EventQuery, before, after int64, limit int) ([]events.Event, error) {
	where := []string{"tenant = $1"}
	args := []any{tenant}
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, fmt.Sprintf(cond, len(args)))
	}
	if q.Type != "" {
		add("type = $%d", q.Type)
	}
	if q.Device != "" {
		add("device = $%d", q.Device)
	}
	if !q.Since.IsZero() {
		add("at >= $%d", q.Since.UTC())
	}
	if !q.Until.IsZero() {
		add("at < $%d", q.Until.UTC())
	}
	order := "DESC"
	if before >= 0 {
		add("id < $%d", before)
	}
	if after >= 0 {
		add("id > $%d", after)
		order = "ASC"
	}
	args = append(args, limit)
	rows, err := s.db.QueryContext(ctx, fmt.Sprintf(`SELECT id, body FROM events WHERE %s ORDER BY id %s LIMIT $%d`,
		strings.Join(where, " AND "), order, len(args)), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	es := []events.Event{}
	for rows.Next() {
		var id int64
		var body string
		if err := rows.Scan(&id, &body); err != nil {
			return nil, err
		}
		var e events.Event
		if err := json.Unmarshal([]byte(body), &e); err != nil {
			return nil, fmt.Errorf("event %d: %w", id, err)
		}
		// The row's tenant is the one asked for, whatever the body says.
		e.ID, e.Tenant = id, tenant
		es = append(es, e)
	}
	return es, rows.Err()
}

// PruneEvents deletes events past their tenant's event_retention or
// beyond its newest MaxStoredEvents, and the events of deleted tenants, batch rows per statement and at most
// maxBatches statements per tenant (the rest waits for the next run), and
// returns how many it deleted.
func (s *Store) PruneEvents(ctx context.Context, batch, maxBatches int) (int64, error) {
	now := s.now()
	var total int64
	prune := func(tenant string, cutoff time.Time) error {
		for range maxBatches {
			res, err := s.db.ExecContext(ctx, `DELETE FROM events WHERE id IN
				(SELECT id FROM events WHERE tenant = $1 AND at < $2 ORDER BY at LIMIT $3)`, tenant, cutoff.UTC(), batch)
			if err != nil {
				return fmt.Errorf("prune events of %s: %w", tenant, err)
			}
			n, _ := res.RowsAffected()
			total += n
			if n < int64(batch) {
				break
			}
		}
		n, err := s.trimEvents(ctx, tenant, batch, maxBatches)
		total += n
		return err
	}
	p := Page{Limit: MaxPageSize}
	for {
		ts, next, err := s.Tenants(ctx, p)
		if err != nil {
			return total, err
		}
		for _, t := range ts {
			if err := prune(t.Slug, now.Add(-t.Quotas().EventRetentionPeriod())); err != nil {
				return total, err
			}
		}
		if next == "" {
			break
		}
		p.Cursor = next
	}
	// Deleted tenants' slugs stay reserved while they are listed here, so
	// their events are gone before a new tenant can take the slug.
	gone, err := s.strings(ctx, `SELECT slug FROM deleted_tenants`)
	if err != nil {
		return total, err
	}
	for _, slug := range gone {
		if err := prune(slug, now.AddDate(100, 0, 0)); err != nil {
			return total, err
		}
	}
	return total, nil
}
