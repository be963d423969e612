package tenants

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/roosthub/roost/migrations"
)

// CreateCA registers a certificate authority for a tenant's devices. A CA
// belongs to the one tenant that registered it: one registered by another
// tenant is refused with ErrCAInUse, since devices are named by their
// certificate's CN and a certificate made for one tenant's sensor-1 would
// pass as another's.
func (s *Store) CreateCA(ctx context.Context, tenant string, in CAInput) (CA, error) {
	ca, err := ParseCA(in, s.timestamp())
	if err != nil {
		return CA{}, err
	}
	ca.ID, ca.CreatedAt = newID("ca_"), s.timestamp()
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.lockTenant(ctx, tx, tenant); err != nil {
			return err
		}
		// Two tenants registering the same CA at once: the second waits
		// here for the first to commit, then sees its row. (SQLite's
		// transactions already run one at a time.)
		if s.dialect == migrations.Postgres {
			if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, "roost/tenant_cas/"+ca.Fingerprint); err != nil {
				return err
			}
		}
		var other int64
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM tenant_cas WHERE fingerprint = $1 AND tenant <> $2`, ca.Fingerprint, tenant).Scan(&other); err != nil {
			return err
		}
		if other > 0 {
			return ErrCAInUse
		}
		var n int64
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM tenant_cas WHERE tenant = $1`, tenant).Scan(&n); err != nil {
			return err
		}
		if n >= MaxCAs {
			return invalid("certificate", "a tenant holds at most %d certificate authorities; delete one first", MaxCAs)
		}
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO tenant_cas (id, tenant, subject, fingerprint, certificate, not_after, created_at, provisioning) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			ca.ID, tenant, ca.Subject, ca.Fingerprint, ca.Certificate, ca.NotAfter, ca.CreatedAt, provisioningJSON(ca.Provisioning)); err != nil {
			if isUniqueViolation(err) {
				return fmt.Errorf("the tenant already trusts this certificate: %w", ErrConflict)
			}
			return err
		}
		return s.audit(ctx, tx, tenant, "ca.create", "ca:"+ca.ID)
	}, Change{Kind: CAChanged, Tenant: tenant})
	if err != nil {
		return CA{}, err
	}
	return ca, nil
}

// ErrCAInUse is CreateCA's error for a CA another tenant registered.
var ErrCAInUse = fmt.Errorf("this certificate authority is registered by another tenant, and a CA belongs to one tenant "+
	"(devices are named by their certificate's CN): use a CA of your own, or pin the devices' certificates: %w", ErrConflict)

// CAs lists a tenant's certificate authorities, oldest first, each marked
// Shared if another tenant registered it too (before a CA was bound to one
// tenant).
func (s *Store) CAs(ctx context.Context, tenant string) ([]CA, error) {
	rows, err := s.db.QueryContext(ctx,
		`SELECT c.id, c.subject, c.fingerprint, c.certificate, c.not_after, c.created_at,
		        EXISTS (SELECT 1 FROM tenant_cas o WHERE o.fingerprint = c.fingerprint AND o.tenant <> c.tenant), c.provisioning
		   FROM tenant_cas c WHERE c.tenant = $1 ORDER BY c.created_at, c.id`, tenant)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var cas []CA
	for rows.Next() {
		var c CA
		var prov string
		if err := rows.Scan(&c.ID, &c.Subject, &c.Fingerprint, &c.Certificate, &c.NotAfter, &c.CreatedAt, &c.Shared, &prov); err != nil {
			return nil, err
		}
		if prov != "" {
			c.Provisioning = &ProvisioningTemplate{}
			if err := json.Unmarshal([]byte(prov), c.Provisioning); err != nil {
				return nil, fmt.Errorf("ca %s: provisioning: %w", c.ID, err)
			}
		}
		c.NotAfter, c.CreatedAt = c.NotAfter.UTC(), c.CreatedAt.UTC()
		cas = append(cas, c)
	}
	return cas, rows.Err()
}

// DeleteCA stops trusting a certificate authority; the data plane ends the
// connections it admitted on the change it raises.
func (s *Store) DeleteCA(ctx context.Context, tenant, id string) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM tenant_cas WHERE tenant = $1 AND id = $2`, tenant, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("certificate authority %s: %w", id, ErrNotFound)
		}
		return s.audit(ctx, tx, tenant, "ca.delete", "ca:"+id)
	}, Change{Kind: CAChanged, Tenant: tenant})
}

// CreateDeviceCertificate pins a certificate, or its fingerprint, to a
// device.
func (s *Store) CreateDeviceCertificate(ctx context.Context, tenant, device string, in DeviceCertificateInput) (DeviceCertificate, error) {
	c, err := ParseDeviceCertificate(in)
	if err != nil {
		return DeviceCertificate{}, err
	}
	c.ID, c.Device, c.CreatedAt = newID("dc_"), device, s.timestamp()
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.deviceHasRoom(ctx, tx, tenant, device, "device_certificates", MaxDeviceCertificates, "certificate", "certificates"); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO device_certificates (id, tenant, device, fingerprint, subject, not_after, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
			c.ID, tenant, device, c.Fingerprint, c.Subject, c.NotAfter, c.CreatedAt); err != nil {
			if isUniqueViolation(err) {
				return fmt.Errorf("the device already has this certificate: %w", ErrConflict)
			}
			return err
		}
		return s.audit(ctx, tx, tenant, "device_certificate.create", "device:"+device+"/certificate:"+c.ID)
	}, Change{Kind: DeviceChanged, Tenant: tenant, Device: device})
	if err != nil {
		return DeviceCertificate{}, err
	}
	return c, nil
}

// DeviceCertificates lists the certificates pinned to a device, oldest first.
func (s *Store) DeviceCertificates(ctx context.Context, tenant, device string) ([]DeviceCertificate, error) {
	rows, err := s.db.QueryContext(ctx,
		`SELECT id, device, fingerprint, subject, not_after, created_at FROM device_certificates WHERE tenant = $1 AND device = $2 ORDER BY created_at, id`, tenant, device)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var cs []DeviceCertificate
	for rows.Next() {
		var c DeviceCertificate
		var na sql.NullTime
		if err := rows.Scan(&c.ID, &c.Device, &c.Fingerprint, &c.Subject, &na, &c.CreatedAt); err != nil {
			return nil, err
		}
		c.NotAfter, c.CreatedAt = nullTime(na), c.CreatedAt.UTC()
		cs = append(cs, c)
	}
	return cs, rows.Err()
}

// DeleteDeviceCertificate unpins a certificate; connections it admitted
// end on the change it raises.
func (s *Store) DeleteDeviceCertificate(ctx context.Context, tenant, device, id string) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM device_certificates WHERE tenant = $1 AND device = $2 AND id = $3`, tenant, device, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("device certificate %s: %w", id, ErrNotFound)
		}
		return s.audit(ctx, tx, tenant, "device_certificate.delete", "device:"+device+"/certificate:"+id)
	}, Change{Kind: DeviceChanged, Tenant: tenant, Device: device})
}

func provisioningJSON(p *ProvisioningTemplate) string {
	if p == nil {
		return ""
	}
	return marshalJSON(p)
}

// UpdateCA marks a CA for provisioning with a template, or unmarks it.
func (s *Store) UpdateCA(ctx context.Context, tenant, id string, u CAUpdate) (CA, error) {
	if u.Provisioning != nil {
		if err := u.Provisioning.Validate(); err != nil {
			return CA{}, err
		}
	}
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE tenant_cas SET provisioning = $3 WHERE tenant = $1 AND id = $2`, tenant, id, provisioningJSON(u.Provisioning))
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("certificate authority %s: %w", id, ErrNotFound)
		}
		return s.audit(ctx, tx, tenant, "ca.update", "ca:"+id)
	}, Change{Kind: CAChanged, Tenant: tenant})
	if err != nil {
		return CA{}, err
	}
	cas, err := s.CAs(ctx, tenant)
	for _, c := range cas {
		if c.ID == id {
			return c, err
		}
	}
	return CA{}, fmt.Errorf("certificate authority %s: %w", id, ErrNotFound)
}

// ErrNotProvisioning is ProvisionDevice's error for a CA that is not the
// tenant's or not marked for provisioning.
var ErrNotProvisioning = fmt.Errorf("the certificate authority does not provision devices: %w", ErrForbidden)

// ProvisionDevice registers device name in tenant on its first connection
// with a certificate under the tenant's CA caFingerprint, from the CA's
// template, within max_devices (a *QuotaError over it). The CA must be the
// tenant's and marked for provisioning, as it is read in the transaction
// (ErrNotProvisioning otherwise). A device registered meanwhile (another
// connection of it) is returned as it is, with created false.
func (s *Store) ProvisionDevice(ctx context.Context, tenant, name, caFingerprint string) (d Device, created bool, err error) {
	if !ValidDeviceName(name) {
		return Device{}, false, invalid("name", "must be a device name")
	}
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.lockTenant(ctx, tx, tenant); err != nil {
			return err
		}
		var prov string
		err := tx.QueryRowContext(ctx, `SELECT provisioning FROM tenant_cas WHERE tenant = $1 AND fingerprint = $2`, tenant, caFingerprint).Scan(&prov)
		if errors.Is(err, sql.ErrNoRows) || (err == nil && prov == "") {
			return ErrNotProvisioning
		}
		if err != nil {
			return err
		}
		var tpl ProvisioningTemplate
		if err := json.Unmarshal([]byte(prov), &tpl); err != nil {
			return fmt.Errorf("provisioning template: %w", err)
		}
		if d, err = scanDevice(tx.QueryRowContext(ctx, `SELECT `+deviceColumns+` FROM devices WHERE tenant = $1 AND name = $2`, tenant, name)); err == nil {
			return nil
		} else if !errors.Is(err, sql.ErrNoRows) {
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
		in := DeviceInput{Name: name, ClientIDs: tpl.ClientIDs, Metadata: tpl.Metadata, Groups: tpl.Groups}
		if err := in.Validate(); err != nil {
			return err
		}
		now := s.timestamp()
		// The device proves itself with its certificate: its secret is
		// one nobody is told (rotating it gives it one).
		d = Device{Tenant: tenant, Name: name, Username: Username(tenant, name), Enabled: true, ClientIDs: in.ClientIDs,
			Metadata: in.Metadata, Groups: in.Groups, CreatedAt: now, UpdatedAt: now, SecretHash: hashSecret(newSecret(24))}
		if err := s.insertDevices(ctx, tx, []ImportedDevice{{Device: d}}); err != nil {
			return err
		}
		created = true
		return s.audit(ctx, tx, tenant, "device.provision", "device:"+name)
	}, Change{Kind: DeviceChanged, Tenant: tenant, Device: name})
	if err != nil {
		return Device{}, false, err
	}
	return d, created, nil
}
