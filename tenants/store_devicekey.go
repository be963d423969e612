package tenants

import (
	"context"
	"database/sql"
	"fmt"
)

// MaxDeviceKeys bounds the keys one device may have, enough to rotate.
const MaxDeviceKeys = 10

// DeviceKeyInput registers a public key for a device.
type DeviceKeyInput struct {
	PublicKey string `json:"public_key"`
}

// CreateDeviceKey registers a public key for a device. The same key twice
// is a conflict; a device holds at most MaxDeviceKeys.
func (s *Store) CreateDeviceKey(ctx context.Context, tenant, device string, in DeviceKeyInput) (DeviceKey, error) {
	alg, _, fp, err := ParsePublicKey(in.PublicKey)
	if err != nil {
		return DeviceKey{}, err
	}
	k := DeviceKey{ID: newID("dk_"), Device: device, Algorithm: alg, PublicKey: in.PublicKey, Fingerprint: fp, CreatedAt: s.timestamp()}
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.deviceHasRoom(ctx, tx, tenant, device, "device_keys", MaxDeviceKeys, "public_key", "keys"); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO device_keys (`+deviceKeyColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
			k.ID, tenant, device, k.Algorithm, k.PublicKey, k.Fingerprint, k.CreatedAt); err != nil {
			if isUniqueViolation(err) {
				return fmt.Errorf("the device already has this key: %w", ErrConflict)
			}
			return err
		}
		return s.audit(ctx, tx, tenant, "device_key.create", "device:"+device+"/key:"+k.ID)
	}, Change{Kind: DeviceChanged, Tenant: tenant, Device: device})
	if err != nil {
		return DeviceKey{}, err
	}
	return k, nil
}

// deviceHasRoom locks the tenant, checks that the device exists and that
// it holds fewer than limit rows of table (a per-device credential table);
// field and what name the input and the rows in the error.
func (s *Store) deviceHasRoom(ctx context.Context, tx *sql.Tx, tenant, device, table string, limit int64, field, what string) error {
	if err := s.lockTenant(ctx, tx, tenant); err != nil {
		return err
	}
	var n int64
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM devices WHERE tenant = $1 AND name = $2`, tenant, device).Scan(&n); err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("device %s: %w", device, ErrNotFound)
	}
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM `+table+` WHERE tenant = $1 AND device = $2`, tenant, device).Scan(&n); err != nil {
		return err
	}
	if n >= limit {
		return invalid(field, "a device holds at most %d %s; delete one first", limit, what)
	}
	return nil
}

const deviceKeyColumns = `id, tenant, device, algorithm, public_key, fingerprint, created_at`

// DeviceKeys lists a device's keys, oldest first.
func (s *Store) DeviceKeys(ctx context.Context, tenant, device string) ([]DeviceKey, error) {
	rows, err := s.db.QueryContext(ctx,
		`SELECT `+deviceKeyColumns+` FROM device_keys WHERE tenant = $1 AND device = $2 ORDER BY created_at, id`, tenant, device)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ks []DeviceKey
	for rows.Next() {
		var k DeviceKey
		var t string
		if err := rows.Scan(&k.ID, &t, &k.Device, &k.Algorithm, &k.PublicKey, &k.Fingerprint, &k.CreatedAt); err != nil {
			return nil, err
		}
		k.CreatedAt = k.CreatedAt.UTC()
		ks = append(ks, k)
	}
	return ks, rows.Err()
}

// DeleteDeviceKey removes a key; connections that proved themselves with it
// are ended by the data plane on the change it raises.
func (s *Store) DeleteDeviceKey(ctx context.Context, tenant, device, id string) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM device_keys WHERE tenant = $1 AND device = $2 AND id = $3`, tenant, device, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("device key %s: %w", id, ErrNotFound)
		}
		return s.audit(ctx, tx, tenant, "device_key.delete", "device:"+device+"/key:"+id)
	}, Change{Kind: DeviceChanged, Tenant: tenant, Device: device})
}
