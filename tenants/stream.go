package tenants

import (
	"context"
	"database/sql"
	"errors"
	"time"
)

// StreamLease is an open app stream as the directory counts it against
// its tenant's max_streams, whichever control-plane process serves it:
// the process renews it while the stream runs (RenewStream) and releases
// it when the stream ends; a lease past its expiry (the process died) no
// longer counts.
type StreamLease struct {
	ID        string
	Tenant    string
	Principal string
}

// AcquireStream counts in a stream of the tenant's principal (an API key,
// a person, the operator) for ttl, unless the tenant already holds limit
// unexpired streams (a *QuotaError naming max_streams) or the principal
// each of them (max_streams_each). The tenant's expired leases are
// deleted on the way.
func (s *Store) AcquireStream(ctx context.Context, tenant, principal string, limit, each int64, ttl time.Duration) (StreamLease, error) {
	l := StreamLease{ID: newID("stm_"), Tenant: tenant, Principal: principal}
	now := s.timestamp()
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		// Two processes acquiring for one tenant take turns on its row.
		if err := s.lockTenant(ctx, tx, tenant); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM stream_leases WHERE tenant = $1 AND expires_at <= $2`, tenant, now); err != nil {
			return err
		}
		var all, mine int64
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(CASE WHEN principal = $2 THEN 1 ELSE 0 END), 0)
			FROM stream_leases WHERE tenant = $1`, tenant, principal).Scan(&all, &mine); err != nil {
			return err
		}
		switch {
		case all >= limit:
			return &QuotaError{Quota: "max_streams", Limit: limit}
		case mine >= each:
			return &QuotaError{Quota: "max_streams_each", Limit: each}
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO stream_leases (id, tenant, principal, expires_at) VALUES ($1, $2, $3, $4)`,
			l.ID, tenant, principal, now.Add(ttl))
		return err
	})
	return l, err
}

// RenewStream extends a lease to ttl from now. A lease that expired
// meanwhile (the process could not renew it in time) stopped counting,
// and others may have been counted in its place: it is not put back, and
// ErrStreamLost says the stream is to end.
func (s *Store) RenewStream(ctx context.Context, l StreamLease, ttl time.Duration) error {
	now := s.timestamp()
	res, err := s.db.ExecContext(ctx, `UPDATE stream_leases SET expires_at = $2 WHERE id = $1 AND expires_at > $3`, l.ID, now.Add(ttl), now)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 {
		return ErrStreamLost
	}
	return nil
}

// ErrStreamLost refuses to renew a stream's lease that expired.
var ErrStreamLost = errors.New("the stream's lease expired")

// ReleaseStream ends a lease; releasing one already gone does nothing.
func (s *Store) ReleaseStream(ctx context.Context, l StreamLease) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM stream_leases WHERE id = $1`, l.ID)
	return err
}

// OpenStreams counts the tenant's unexpired stream leases.
func (s *Store) OpenStreams(ctx context.Context, tenant string) (int64, error) {
	var n int64
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM stream_leases WHERE tenant = $1 AND expires_at > $2`, tenant, s.timestamp()).Scan(&n)
	return n, err
}

// PruneStreams deletes every expired lease, of any tenant, and returns how
// many.
func (s *Store) PruneStreams(ctx context.Context) (int64, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM stream_leases WHERE expires_at <= $1`, s.timestamp())
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}
