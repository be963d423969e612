package tenants

import "context"

// InsertCAUnchecked registers a CA the way the store did before a CA was
// bound to one tenant, for tests of data from then.
func InsertCAUnchecked(ctx context.Context, s *Store, tenant string, in CAInput) (CA, error) {
	ca, err := ParseCA(in, s.timestamp())
	if err != nil {
		return CA{}, err
	}
	ca.ID, ca.CreatedAt = newID("ca_"), s.timestamp()
	if _, err := s.db.ExecContext(ctx,
		`INSERT INTO tenant_cas (id, tenant, subject, fingerprint, certificate, not_after, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
		ca.ID, tenant, ca.Subject, ca.Fingerprint, ca.Certificate, ca.NotAfter, ca.CreatedAt); err != nil {
		return CA{}, err
	}
	s.changes.Publish(Change{Kind: CAChanged, Tenant: tenant})
	return ca, nil
}
