package tenants

import (
	"context"
	"fmt"
	"strings"
)

// The hub seals secrets it must read back (destinations' signing secrets,
// header values and Kafka passwords; accounts' TOTP secrets) under a key
// from configuration, and a sealed value begins with the id of its key
// ("v1.<key id>."). After the operator token changes, the values sealed
// under an earlier key are found by that prefix and sealed again under the
// current one (dataout.Sealer.ResealDestinations, auth's ResealMFA), so
// that the earlier key can be dropped.

// TenantDestination is a destination with its tenant.
type TenantDestination struct {
	Tenant string
	Destination
}

// DestinationsSealedUnder returns up to limit destinations, of every
// tenant, with a sealed value beginning with one of prefixes, in (tenant,
// id) order after the destination afterTenant/afterID ("" and "" for the
// first page).
func (s *Store) DestinationsSealedUnder(ctx context.Context, prefixes []string, afterTenant, afterID string, limit int) ([]TenantDestination, error) {
	if len(prefixes) == 0 {
		return nil, nil
	}
	args := []any{afterTenant, afterID, limit}
	var match []string
	for _, p := range prefixes {
		args = append(args, likePrefix(p))
		n := len(args)
		match = append(match, fmt.Sprintf(`sealed_secret LIKE $%d ESCAPE '\' OR sealed_headers LIKE $%d ESCAPE '\' OR sealed_password LIKE $%d ESCAPE '\'`, n, n, n))
	}
	rows, err := s.db.QueryContext(ctx, `SELECT tenant, `+destinationColumns+` FROM destinations
		WHERE (tenant, id) > ($1, $2) AND (`+strings.Join(match, " OR ")+`)
		ORDER BY tenant, id LIMIT $3`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []TenantDestination
	for rows.Next() {
		var tenant string
		d, err := scanDestination(prefixScan{&tenant, rows})
		if err != nil {
			return nil, err
		}
		out = append(out, TenantDestination{Tenant: tenant, Destination: d})
	}
	return out, rows.Err()
}

// SealedMFA is an account's TOTP secret as stored.
type SealedMFA struct {
	Account string
	Secret  string
}

// MFASealedUnder returns up to limit accounts' TOTP secrets (set up or
// on) sealed under a key one of prefixes names, in account id order after
// afterAccount ("" for the first page).
func (s *Store) MFASealedUnder(ctx context.Context, prefixes []string, afterAccount string, limit int) ([]SealedMFA, error) {
	if len(prefixes) == 0 {
		return nil, nil
	}
	args := []any{afterAccount, limit}
	var match []string
	for _, p := range prefixes {
		args = append(args, likePrefix(p))
		match = append(match, fmt.Sprintf(`secret LIKE $%d ESCAPE '\'`, len(args)))
	}
	rows, err := s.db.QueryContext(ctx, `SELECT account_id, secret FROM account_mfa
		WHERE account_id > $1 AND (`+strings.Join(match, " OR ")+`) ORDER BY account_id LIMIT $2`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []SealedMFA
	for rows.Next() {
		var m SealedMFA
		if err := rows.Scan(&m.Account, &m.Secret); err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// ResealMFA replaces an account's sealed TOTP secret with to, as long as
// it is still from (the same secret sealed under another key): a
// concurrent change (a new setup) wins. It reports whether it replaced
// it. The secret's meaning does not change, so nothing is audited.
func (s *Store) ResealMFA(ctx context.Context, account, from, to string) (bool, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE account_mfa SET secret = $3 WHERE account_id = $1 AND secret = $2`, account, from, to)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// likePrefix is a LIKE pattern (with ESCAPE '\') matching what begins
// with p.
func likePrefix(p string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	return r.Replace(p) + "%"
}

// prefixScan scans a row whose first column goes to first and the rest
// to what scans a destination.
type prefixScan struct {
	first *string
	rows  interface{ Scan(...any) error }
}

func (p prefixScan) Scan(dest ...any) error {
	return p.rows.Scan(append([]any{p.first}, dest...)...)
}
