package tenants

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/migrations"
)

// errShadowRace is an update that lost a race with another one on the
// same shadow; one that named no version is tried again.
var errShadowRace = errors.New("the shadow changed meanwhile")

// Shadow returns a device's shadow; a device never written has an empty
// one, version 0. An unknown device is ErrNotFound.
func (s *Store) Shadow(ctx context.Context, tenant, device string) (Shadow, error) {
	var version int64
	var doc sql.NullString
	var at sql.NullTime
	err := s.db.QueryRowContext(ctx,
		`SELECT s.version, s.doc, s.updated_at FROM devices d LEFT JOIN shadows s ON s.tenant = d.tenant AND s.device = d.name
		 WHERE d.tenant = $1 AND d.name = $2`, tenant, device).Scan(&nullInt{&version}, &doc, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return Shadow{}, fmt.Errorf("device %s: %w", device, ErrNotFound)
	}
	if err != nil {
		return Shadow{}, err
	}
	d := newShadowDoc()
	if doc.Valid {
		if d, err = decodeShadowDoc(doc.String); err != nil {
			return Shadow{}, err
		}
	}
	var ts time.Time
	if at.Valid {
		ts = at.Time.UTC()
	}
	return shadowOf(device, d, version, ts), nil
}

// nullInt scans a BIGINT that may be NULL (no shadow yet) as 0.
type nullInt struct{ v *int64 }

func (n *nullInt) Scan(src any) error {
	var x sql.NullInt64
	if err := x.Scan(src); err != nil {
		return err
	}
	*n.v = x.Int64
	return nil
}

// UpdateShadow applies an update to a device's shadow and returns the new
// one. A stale version is ErrConflict; a shadow that would be over the
// tenant's max_shadow_bytes is a *QuotaError and changes nothing. The
// change is recorded in the tenant's events (shadow_updated) and
// announced (ShadowChanged), so that the device is told the delta.
func (s *Store) UpdateShadow(ctx context.Context, tenant, device string, u ShadowUpdate) (Shadow, error) {
	if err := u.validate(); err != nil {
		return Shadow{}, err
	}
	for range 5 {
		sh, err := s.updateShadow(ctx, tenant, device, u)
		if errors.Is(err, errShadowRace) && u.Version == nil {
			continue
		}
		if errors.Is(err, errShadowRace) {
			return Shadow{}, fmt.Errorf("version %d is not the shadow's current version: %w", *u.Version, ErrConflict)
		}
		return sh, err
	}
	return Shadow{}, fmt.Errorf("the shadow is being changed by others: %w", ErrConflict)
}

func (s *Store) updateShadow(ctx context.Context, tenant, device string, u ShadowUpdate) (Shadow, error) {
	var sh Shadow
	now := s.timestamp()
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		t, err := s.scanTenant(tx.QueryRowContext(ctx, `SELECT `+tenantColumns+` FROM tenants t WHERE t.slug = $1`, tenant))
		if err != nil {
			return err
		}
		var version int64
		var doc sql.NullString
		err = tx.QueryRowContext(ctx,
			`SELECT s.version, s.doc FROM devices d LEFT JOIN shadows s ON s.tenant = d.tenant AND s.device = d.name
			 WHERE d.tenant = $1 AND d.name = $2`, tenant, device).Scan(&nullInt{&version}, &doc)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("device %s: %w", device, ErrNotFound)
		}
		if err != nil {
			return err
		}
		if u.Version != nil && *u.Version != version {
			return fmt.Errorf("version %d is not the shadow's current version %d: %w", *u.Version, version, ErrConflict)
		}
		d := newShadowDoc()
		if doc.Valid {
			if d, err = decodeShadowDoc(doc.String); err != nil {
				return err
			}
		}
		if err := d.apply(u, now.Unix()); err != nil {
			return err
		}
		if limit := t.Quotas().MaxShadowBytes; d.size() > limit {
			return &QuotaError{Quota: "max_shadow_bytes", Limit: limit}
		}
		b, err := json.Marshal(d)
		if err != nil {
			return err
		}
		if doc.Valid {
			res, err := tx.ExecContext(ctx, `UPDATE shadows SET version = $3, doc = $4, updated_at = $5 WHERE tenant = $1 AND device = $2 AND version = $6`,
				tenant, device, version+1, string(b), now, version)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n == 0 {
				return errShadowRace
			}
		} else if _, err := tx.ExecContext(ctx, `INSERT INTO shadows (tenant, device, version, doc, updated_at) VALUES ($1, $2, $3, $4, $5)`,
			tenant, device, version+1, string(b), now); err != nil {
			if isUniqueViolation(err) {
				return errShadowRace
			}
			return err
		}
		sh = shadowOf(device, d, version+1, now)
		return s.shadowEvent(ctx, tx, events.Event{Time: now, Tenant: tenant, Type: events.ShadowUpdated, Device: device, Reason: u.Source, Count: version + 1})
	}, Change{Kind: ShadowChanged, Tenant: tenant, Device: device})
	return sh, err
}

// shadowEvent stores the event of a shadow's change with the change, in
// its transaction, taking the events' writers' lock as AddEvents does.
func (s *Store) shadowEvent(ctx context.Context, tx *sql.Tx, e events.Event) error {
	body, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if s.dialect == migrations.Postgres {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, eventsLockID); err != nil {
			return err
		}
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO events (tenant, type, device, at, body) VALUES ($1, $2, $3, $4, $5)`,
		e.Tenant, e.Type, e.Device, e.Time.UTC().Truncate(time.Microsecond), string(body))
	return err
}
