package tenants

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
)

const destinationColumns = `id, name, type, url, header_names, sealed_headers, sealed_secret, created_at, updated_at`

func scanDestination(row interface{ Scan(...any) error }) (Destination, error) {
	var d Destination
	var names string
	if err := row.Scan(&d.ID, &d.Name, &d.Type, &d.URL, &names, &d.Sealed.Headers, &d.Sealed.Secret, &d.CreatedAt, &d.UpdatedAt); err != nil {
		return d, err
	}
	if err := json.Unmarshal([]byte(names), &d.Headers); err != nil {
		return d, fmt.Errorf("destination %s: header names: %w", d.ID, err)
	}
	if d.Headers == nil {
		d.Headers = []string{}
	}
	d.CreatedAt, d.UpdatedAt = d.CreatedAt.UTC(), d.UpdatedAt.UTC()
	return d, nil
}

// Destinations returns a tenant's destinations, oldest first.
func (s *Store) Destinations(ctx context.Context, tenant string) ([]Destination, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+destinationColumns+` FROM destinations WHERE tenant = $1 ORDER BY id`, tenant)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Destination
	for rows.Next() {
		d, err := scanDestination(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// Destination returns one of a tenant's destinations by id.
func (s *Store) Destination(ctx context.Context, tenant, id string) (Destination, error) {
	d, err := scanDestination(s.db.QueryRowContext(ctx,
		`SELECT `+destinationColumns+` FROM destinations WHERE tenant = $1 AND id = $2`, tenant, id))
	return d, notFound(err, "destination %s", id)
}

// destinationRef finds a destination by id or, failing that, by name.
func (s *Store) destinationRef(ctx context.Context, q interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}, tenant, ref string) (Destination, error) {
	d, err := scanDestination(q.QueryRowContext(ctx,
		`SELECT `+destinationColumns+` FROM destinations WHERE tenant = $1 AND (id = $2 OR name = $2) ORDER BY id LIMIT 1`, tenant, ref))
	return d, notFound(err, "destination %s", ref)
}

// DestinationByRef returns a destination by id or name.
func (s *Store) DestinationByRef(ctx context.Context, tenant, ref string) (Destination, error) {
	return s.destinationRef(ctx, s.db, tenant, ref)
}

// NewDestinationID returns an id for a destination about to be made, so
// that the caller can seal its secret bound to it.
func NewDestinationID() string { return newID("dst_") }

// CreateDestination adds a destination with the id the caller chose (from
// NewDestinationID) and the values it sealed.
func (s *Store) CreateDestination(ctx context.Context, tenant, id string, in DestinationInput, sealed Sealed) (Destination, error) {
	if err := in.Validate(); err != nil {
		return Destination{}, err
	}
	if !strings.HasPrefix(id, "dst_") || sealed.Secret == "" {
		return Destination{}, fmt.Errorf("create destination: an id from NewDestinationID and a sealed secret are needed")
	}
	now := s.timestamp()
	d := Destination{ID: id, Name: in.Name, Type: in.Type, URL: in.URL, Headers: HeaderNames(in.Headers), CreatedAt: now, UpdatedAt: now, Sealed: sealed}
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.lockTenant(ctx, tx, tenant); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM destinations WHERE tenant = $1`, tenant).Scan(&n); err != nil {
			return err
		}
		if n >= MaxDestinations {
			return &QuotaError{Quota: "destinations", Limit: MaxDestinations}
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO destinations (tenant, `+destinationColumns+`)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
			tenant, d.ID, d.Name, d.Type, d.URL, marshalJSON(d.Headers), sealed.Headers, sealed.Secret, d.CreatedAt, d.UpdatedAt); err != nil {
			if isUniqueViolation(err) {
				return fmt.Errorf("destination %s: %w", d.Name, ErrConflict)
			}
			return err
		}
		return s.audit(ctx, tx, tenant, "destination.create", "destination:"+d.ID)
	})
	return d, err
}

// UpdateDestination changes a destination. sealHeaders seals new header
// values, when the update gives headers.
func (s *Store) UpdateDestination(ctx context.Context, tenant, id string, up DestinationUpdate, sealHeaders func(map[string]string) string) (Destination, error) {
	if err := up.Validate(); err != nil {
		return Destination{}, err
	}
	var d Destination
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var err error
		d, err = scanDestination(tx.QueryRowContext(ctx,
			`SELECT `+destinationColumns+` FROM destinations WHERE tenant = $1 AND id = $2`, tenant, id))
		if err != nil {
			return notFound(err, "destination %s", id)
		}
		if up.Name != nil {
			d.Name = *up.Name
		}
		if up.URL != nil {
			d.URL = *up.URL
		}
		if up.Headers != nil {
			d.Headers, d.Sealed.Headers = HeaderNames(*up.Headers), ""
			if len(*up.Headers) > 0 {
				d.Sealed.Headers = sealHeaders(*up.Headers)
			}
		}
		d.UpdatedAt = s.timestamp()
		if _, err := tx.ExecContext(ctx, `UPDATE destinations SET name = $3, url = $4, header_names = $5, sealed_headers = $6, updated_at = $7
			WHERE tenant = $1 AND id = $2`, tenant, id, d.Name, d.URL, marshalJSON(d.Headers), d.Sealed.Headers, d.UpdatedAt); err != nil {
			if isUniqueViolation(err) {
				return fmt.Errorf("destination %s: %w", d.Name, ErrConflict)
			}
			return err
		}
		return s.audit(ctx, tx, tenant, "destination.update", "destination:"+id)
	}, Change{Kind: ExportChanged, Tenant: tenant})
	return d, err
}

// RotateDestinationSecret replaces a destination's sealed signing secret.
func (s *Store) RotateDestinationSecret(ctx context.Context, tenant, id, sealedSecret string) (Destination, error) {
	var d Destination
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE destinations SET sealed_secret = $3, updated_at = $4 WHERE tenant = $1 AND id = $2`,
			tenant, id, sealedSecret, s.timestamp())
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("destination %s: %w", id, ErrNotFound)
		}
		if d, err = scanDestination(tx.QueryRowContext(ctx,
			`SELECT `+destinationColumns+` FROM destinations WHERE tenant = $1 AND id = $2`, tenant, id)); err != nil {
			return err
		}
		return s.audit(ctx, tx, tenant, "destination.rotate_secret", "destination:"+id)
	}, Change{Kind: ExportChanged, Tenant: tenant})
	return d, err
}

// DeleteDestination removes a destination no rule uses; one a rule uses
// is a conflict (delete the rules first).
func (s *Store) DeleteDestination(ctx context.Context, tenant, id string) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.lockTenant(ctx, tx, tenant); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM export_rules WHERE tenant = $1 AND destination = $2`, tenant, id).Scan(&n); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM destinations WHERE tenant = $1 AND id = $2`, tenant, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("destination %s: %w", id, ErrNotFound)
		}
		if n > 0 {
			return fmt.Errorf("destination %s: %d rules send to it; delete them first: %w", id, n, ErrConflict)
		}
		return s.audit(ctx, tx, tenant, "destination.delete", "destination:"+id)
	}, Change{Kind: ExportChanged, Tenant: tenant})
}
