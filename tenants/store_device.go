package tenants

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"time"
)

const deviceColumns = `tenant, name, enabled, client_ids, metadata, secret_hash, created_at, updated_at, last_seen_at, group_names`

func scanDevice(r rowScanner) (Device, error) {
	var d Device
	var metadata, groups string
	var lastSeen sql.NullTime
	if err := r.Scan(&d.Tenant, &d.Name, &d.Enabled, &d.ClientIDs, &metadata, &d.SecretHash, &d.CreatedAt, &d.UpdatedAt, &lastSeen, &groups); err != nil {
		return Device{}, err
	}
	if err := json.Unmarshal([]byte(metadata), &d.Metadata); err != nil {
		return Device{}, fmt.Errorf("device %s/%s: metadata: %w", d.Tenant, d.Name, err)
	}
	if err := json.Unmarshal([]byte(groups), &d.Groups); err != nil {
		return Device{}, fmt.Errorf("device %s/%s: groups: %w", d.Tenant, d.Name, err)
	}
	if d.Groups == nil {
		d.Groups = []string{}
	}
	d.Username = Username(d.Tenant, d.Name)
	d.CreatedAt, d.UpdatedAt, d.LastSeenAt = d.CreatedAt.UTC(), d.UpdatedAt.UTC(), nullTime(lastSeen)
	return d, nil
}

// CreateDevice registers a device and returns it with its secret, which is
// not stored and cannot be read again. The tenant's max_devices quota applies.
func (s *Store) CreateDevice(ctx context.Context, tenant string, in DeviceInput) (Device, string, error) {
	if err := in.Validate(); err != nil {
		return Device{}, "", err
	}
	secret := newSecret(24)
	now := s.timestamp()
	d := Device{
		Tenant: tenant, Name: in.Name, Username: Username(tenant, in.Name), Enabled: *in.Enabled,
		ClientIDs: in.ClientIDs, Metadata: in.Metadata, Groups: in.Groups, CreatedAt: now, UpdatedAt: now, SecretHash: hashSecret(secret),
	}
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.lockTenant(ctx, tx, tenant); err != nil {
			return err
		}
		t, err := s.scanTenant(tx.QueryRowContext(ctx, `SELECT `+tenantColumns+` FROM tenants t WHERE t.slug = $1`, tenant))
		if err != nil {
			return err
		}
		var n int64
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM devices WHERE tenant = $1`, tenant).Scan(&n); err != nil {
			return err
		}
		if limit := t.Quotas().MaxDevices; n >= limit {
			return &QuotaError{Quota: "max_devices", Limit: limit}
		}
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO devices (`+deviceColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9)`,
			tenant, d.Name, d.Enabled, d.ClientIDs, marshalJSON(d.Metadata), d.SecretHash, now, now, marshalJSON(d.Groups)); err != nil {
			if isUniqueViolation(err) {
				return fmt.Errorf("device %s exists: %w", d.Name, ErrConflict)
			}
			return err
		}
		return s.audit(ctx, tx, tenant, "device.create", "device:"+d.Name)
	}, Change{Kind: DeviceChanged, Tenant: tenant, Device: d.Name})
	if err != nil {
		return Device{}, "", err
	}
	return d, secret, nil
}

// Device returns one device of tenant.
func (s *Store) Device(ctx context.Context, tenant, name string) (Device, error) {
	d, err := scanDevice(s.db.QueryRowContext(ctx,
		`SELECT `+deviceColumns+` FROM devices WHERE tenant = $1 AND name = $2`, tenant, name))
	if err != nil {
		return Device{}, notFound(err, "device %s", name)
	}
	return d, nil
}

// Devices lists a tenant's devices by name.
func (s *Store) Devices(ctx context.Context, tenant string, p Page) ([]Device, string, error) {
	return s.SearchDevices(ctx, tenant, "", p)
}

// SearchDevices lists a tenant's devices whose name contains search, by name.
func (s *Store) SearchDevices(ctx context.Context, tenant, search string, p Page) ([]Device, string, error) {
	return s.FilterDevices(ctx, tenant, DeviceFilter{Search: search}, p)
}

// FilterDevices lists the tenant's devices that f selects, by name.
func (s *Store) FilterDevices(ctx context.Context, tenant string, f DeviceFilter, p Page) ([]Device, string, error) {
	if err := f.Validate(); err != nil {
		return nil, "", err
	}
	q := `SELECT ` + deviceColumns + ` FROM devices WHERE tenant = $1 AND name > $2`
	args := []any{tenant, p.Cursor}
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	if f.Search != "" {
		q += ` AND name LIKE ` + arg(containing(f.Search)) + ` ESCAPE '\'`
	}
	if f.Group != "" {
		q += ` AND EXISTS (SELECT 1 FROM ` + s.jsonArray("group_names") + ` WHERE g.value = ` + arg(f.Group) + `)`
	}
	keys := make([]string, 0, len(f.Metadata))
	for k := range f.Metadata {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		q += ` AND EXISTS (SELECT 1 FROM ` + s.jsonObject("metadata") + ` WHERE m.key = ` + arg(k) + ` AND m.value = ` + arg(f.Metadata[k]) + `)`
	}
	q += ` ORDER BY name LIMIT ` + arg(p.limit()+1)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, "", err
	}
	defer rows.Close()
	var ds []Device
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, "", err
		}
		ds = append(ds, d)
	}
	if err := rows.Err(); err != nil {
		return nil, "", err
	}
	ds, next := trimPage(ds, p, func(d Device) string { return d.Name })
	return ds, next, nil
}

// jsonArray is a FROM item g(value) of the strings of a JSON array
// column; jsonObject one m(key, value) of a JSON object's pairs. The
// dialects name these functions differently (and Postgres wants jsonb).
func (s *Store) jsonArray(col string) string {
	if s.dialect == "postgres" {
		return `jsonb_array_elements_text(` + col + `::jsonb) AS g(value)`
	}
	return `json_each(` + col + `) AS g`
}

func (s *Store) jsonObject(col string) string {
	if s.dialect == "postgres" {
		return `jsonb_each_text(` + col + `::jsonb) AS m(key, value)`
	}
	return `json_each(` + col + `) AS m`
}

// Groups lists the groups of a tenant's devices, by name, with the number
// of devices in each. A group exists while a device is in it.
func (s *Store) Groups(ctx context.Context, tenant string, p Page) ([]Group, string, error) {
	rows, err := s.db.QueryContext(ctx,
		`SELECT g.value, COUNT(*) FROM devices, `+s.jsonArray("devices.group_names")+`
		 WHERE devices.tenant = $1 AND g.value > $2 GROUP BY g.value ORDER BY g.value LIMIT $3`,
		tenant, p.Cursor, p.limit()+1)
	if err != nil {
		return nil, "", err
	}
	defer rows.Close()
	var gs []Group
	for rows.Next() {
		var g Group
		if err := rows.Scan(&g.Name, &g.Devices); err != nil {
			return nil, "", err
		}
		gs = append(gs, g)
	}
	if err := rows.Err(); err != nil {
		return nil, "", err
	}
	gs, next := trimPage(gs, p, func(g Group) string { return g.Name })
	return gs, next, nil
}

// GroupDevices returns the names of every device in a group, by name.
func (s *Store) GroupDevices(ctx context.Context, tenant, group string) ([]string, error) {
	if !ValidGroupName(group) {
		return nil, invalid("group", "must be a group name")
	}
	rows, err := s.db.QueryContext(ctx,
		`SELECT name FROM devices WHERE tenant = $1
		 AND EXISTS (SELECT 1 FROM `+s.jsonArray("group_names")+` WHERE g.value = $2) ORDER BY name`, tenant, group)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		names = append(names, n)
	}
	return names, rows.Err()
}

// UpdateDevice changes a device's settings.
func (s *Store) UpdateDevice(ctx context.Context, tenant, name string, u DeviceUpdate) (Device, error) {
	if err := u.Validate(); err != nil {
		return Device{}, err
	}
	return s.modifyDevice(ctx, tenant, name, "device.update", func(d *Device) {
		if u.Enabled != nil {
			d.Enabled = *u.Enabled
		}
		if u.ClientIDs != nil {
			d.ClientIDs = *u.ClientIDs
		}
		if u.Metadata != nil {
			d.Metadata = *u.Metadata
		}
		if u.Groups != nil {
			d.Groups = *u.Groups
		}
	})
}

// RotateDeviceSecret gives a device a new secret and returns it; the old one
// stops working at once.
func (s *Store) RotateDeviceSecret(ctx context.Context, tenant, name string) (Device, string, error) {
	secret := newSecret(24)
	d, err := s.modifyDevice(ctx, tenant, name, "device.rotate_secret", func(d *Device) {
		d.SecretHash = hashSecret(secret)
	})
	if err != nil {
		return Device{}, "", err
	}
	return d, secret, nil
}

func (s *Store) modifyDevice(ctx context.Context, tenant, name, action string, change func(*Device)) (Device, error) {
	var d Device
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		q := `SELECT ` + deviceColumns + ` FROM devices WHERE tenant = $1 AND name = $2`
		if s.dialect == "postgres" {
			q += ` FOR UPDATE`
		}
		var err error
		if d, err = scanDevice(tx.QueryRowContext(ctx, q, tenant, name)); err != nil {
			return notFound(err, "device %s", name)
		}
		change(&d)
		d.UpdatedAt = s.timestamp()
		if _, err := tx.ExecContext(ctx,
			`UPDATE devices SET enabled = $3, client_ids = $4, metadata = $5, secret_hash = $6, updated_at = $7, group_names = $8
			 WHERE tenant = $1 AND name = $2`,
			tenant, name, d.Enabled, d.ClientIDs, marshalJSON(d.Metadata), d.SecretHash, d.UpdatedAt, marshalJSON(d.Groups)); err != nil {
			return err
		}
		return s.audit(ctx, tx, tenant, action, "device:"+name)
	}, Change{Kind: DeviceChanged, Tenant: tenant, Device: name})
	return d, err
}

// DeleteDevice removes a device.
func (s *Store) DeleteDevice(ctx context.Context, tenant, name string) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM devices WHERE tenant = $1 AND name = $2`, tenant, name)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("device %s: %w", name, ErrNotFound)
		}
		return s.audit(ctx, tx, tenant, "device.delete", "device:"+name)
	}, Change{Kind: DeviceChanged, Tenant: tenant, Device: name})
}

// TouchDevice records that a device was seen at t. It is not audited: it is
// the data plane reporting, not a change.
func (s *Store) TouchDevice(ctx context.Context, tenant, name string, t time.Time) error {
	_, err := s.db.ExecContext(ctx,
		`UPDATE devices SET last_seen_at = $3 WHERE tenant = $1 AND name = $2`, tenant, name, t.UTC().Truncate(time.Microsecond))
	return err
}

// DeviceCount is the number of the tenant's devices, for its max_devices.
func (s *Store) DeviceCount(ctx context.Context, tenant string) (int64, error) {
	var n int64
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM devices WHERE tenant = $1`, tenant).Scan(&n)
	return n, err
}
