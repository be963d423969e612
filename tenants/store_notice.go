package tenants

import (
	"context"
	"database/sql"
	"time"
)

// leaveNotice records a notice for account in tx.
func (s *Store) leaveNotice(ctx context.Context, tx *sql.Tx, account, kind, tenant string, role Role, by string) error {
	_, err := tx.ExecContext(ctx,
		`INSERT INTO notices (id, account_id, kind, tenant, role, by_whom, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
		newID("ntc_"), account, kind, tenant, string(role), by, s.timestamp())
	return err
}

// Notices returns account's notices since a time, newest first, at most
// limit of them.
func (s *Store) Notices(ctx context.Context, account string, since time.Time, limit int) ([]Notice, error) {
	rows, err := s.db.QueryContext(ctx,
		`SELECT id, kind, tenant, role, by_whom, created_at FROM notices
		 WHERE account_id = $1 AND created_at >= $2 ORDER BY id DESC LIMIT $3`, account, since.UTC(), limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	ns := []Notice{}
	for rows.Next() {
		var n Notice
		if err := rows.Scan(&n.ID, &n.Kind, &n.Tenant, &n.Role, &n.By, &n.At); err != nil {
			return nil, err
		}
		n.At = n.At.UTC()
		ns = append(ns, n)
	}
	return ns, rows.Err()
}
