package tenants

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// MaxAPIKeys caps a tenant's API keys. Each one is a credential to audit and
// revoke, and the list is read whole by the console; without a cap an admin
// (or a leaked admin key) could mint keys without end.
const MaxAPIKeys = 100

// CreateAPIKey creates a key and returns it with its token, which is not
// stored and cannot be read again. createdBy is the account on whose behalf
// it is made (empty: the operator's, or unknown): the key ends when that
// account leaves the tenant. Past MaxAPIKeys it is a *QuotaError (api_keys).
func (s *Store) CreateAPIKey(ctx context.Context, tenant string, in APIKeyInput, createdBy string) (APIKey, string, error) {
	if err := in.Validate(); err != nil {
		return APIKey{}, "", err
	}
	id := newID("key_")
	token := newAPIKeyToken(id)
	k := APIKey{ID: id, Tenant: tenant, Name: in.Name, Role: in.Role, Prefix: visiblePrefix(token), CreatedAt: s.timestamp(), hash: hashSecret(token)}
	var creator sql.NullString
	if createdBy != "" {
		k.CreatedBy, creator = &createdBy, sql.NullString{String: createdBy, Valid: true}
	}
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.lockTenant(ctx, tx, tenant); err != nil {
			return err
		}
		// The count is read under the tenant's lock, so keys made at once
		// cannot all see room for one more.
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM api_keys WHERE tenant = $1`, tenant).Scan(&n); err != nil {
			return err
		}
		if n >= MaxAPIKeys {
			return &QuotaError{Quota: "api_keys", Limit: MaxAPIKeys}
		}
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO api_keys (id, tenant, name, role, prefix, key_hash, created_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			k.ID, k.Tenant, k.Name, k.Role, k.Prefix, k.hash, k.CreatedAt, creator); err != nil {
			return err
		}
		return s.audit(ctx, tx, tenant, "api_key.create", "api_key:"+k.ID)
	})
	if err != nil {
		return APIKey{}, "", err
	}
	return k, token, nil
}

const apiKeyColumns = `id, tenant, name, role, prefix, key_hash, created_at, last_used_at, created_by`

func scanAPIKey(r rowScanner) (APIKey, error) {
	var k APIKey
	var lastUsed sql.NullTime
	var creator sql.NullString
	if err := r.Scan(&k.ID, &k.Tenant, &k.Name, &k.Role, &k.Prefix, &k.hash, &k.CreatedAt, &lastUsed, &creator); err != nil {
		return APIKey{}, err
	}
	if creator.Valid {
		k.CreatedBy = &creator.String
	}
	k.CreatedAt, k.LastUsedAt = k.CreatedAt.UTC(), nullTime(lastUsed)
	return k, nil
}

// APIKeys lists a tenant's keys, oldest first.
func (s *Store) APIKeys(ctx context.Context, tenant string, p Page) ([]APIKey, string, error) {
	rows, err := s.db.QueryContext(ctx,
		`SELECT `+apiKeyColumns+` FROM api_keys WHERE tenant = $1 AND id > $2 ORDER BY id LIMIT $3`,
		tenant, p.Cursor, p.limit()+1)
	if err != nil {
		return nil, "", err
	}
	defer rows.Close()
	var ks []APIKey
	for rows.Next() {
		k, err := scanAPIKey(rows)
		if err != nil {
			return nil, "", err
		}
		ks = append(ks, k)
	}
	if err := rows.Err(); err != nil {
		return nil, "", err
	}
	ks, next := trimPage(ks, p, func(k APIKey) string { return k.ID })
	return ks, next, nil
}

// DeleteAPIKey revokes a key: it stops working at once.
func (s *Store) DeleteAPIKey(ctx context.Context, tenant, id string) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM api_keys WHERE tenant = $1 AND id = $2`, tenant, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("api key %s: %w", id, ErrNotFound)
		}
		return s.audit(ctx, tx, tenant, "api_key.delete", "api_key:"+id)
	})
}

// deleteKeysOf ends, in tx, the keys made on account's behalf in tenant,
// and returns how many.
func (s *Store) deleteKeysOf(ctx context.Context, tx *sql.Tx, tenant, account string) (int, error) {
	rows, err := tx.QueryContext(ctx, `SELECT id FROM api_keys WHERE tenant = $1 AND created_by = $2`, tenant, account)
	if err != nil {
		return 0, err
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return 0, err
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	for _, id := range ids {
		if _, err := tx.ExecContext(ctx, `DELETE FROM api_keys WHERE id = $1`, id); err != nil {
			return 0, err
		}
		if err := s.audit(ctx, tx, tenant, "api_key.delete", "api_key:"+id); err != nil {
			return 0, err
		}
	}
	return len(ids), nil
}

// apiKeyTouchInterval bounds how often a key's last-used time is written:
// a busy key costs one write a minute, not one a request.
const apiKeyTouchInterval = time.Minute

// AuthenticateAPIKey returns the key a bearer token is, or ErrUnauthorized,
// and records its use.
func (s *Store) AuthenticateAPIKey(ctx context.Context, token string) (APIKey, error) {
	id, ok := apiKeyIDFromToken(token)
	if !ok {
		return APIKey{}, ErrUnauthorized
	}
	k, err := scanAPIKey(s.db.QueryRowContext(ctx, `SELECT `+apiKeyColumns+` FROM api_keys WHERE id = $1`, id))
	if err == sql.ErrNoRows {
		hashSecret(token) // the same work as a wrong secret
		return APIKey{}, ErrUnauthorized
	}
	if err != nil {
		return APIKey{}, err
	}
	if !secretMatches(token, k.hash) {
		return APIKey{}, ErrUnauthorized
	}
	now := s.timestamp()
	if k.LastUsedAt == nil || now.Sub(*k.LastUsedAt) >= apiKeyTouchInterval {
		if _, err := s.db.ExecContext(ctx, `UPDATE api_keys SET last_used_at = $2 WHERE id = $1`, k.ID, now); err != nil {
			return APIKey{}, err
		}
		k.LastUsedAt = &now
	}
	return k, nil
}
