package tenants

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base32"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrMFARequired: the tenant requires two-factor sign-in of its members and
// the caller has not turned it on. The API answers it 403 mfa_required.
var ErrMFARequired = errors.New("this tenant requires two-factor sign-in; turn it on for your account first")

// MFA is an account's two-factor state. Secret is the TOTP secret as
// stored: sealed by the caller (auth), never plain.
type MFA struct {
	Secret    string
	Enabled   bool
	EnabledAt *time.Time
	LastStep  int64
	// RecoveryLeft counts the recovery codes not yet used.
	RecoveryLeft int
}

// RecoveryCodeCount is how many recovery codes an account is given.
const RecoveryCodeCount = 10

// NewRecoveryCodes returns RecoveryCodeCount fresh recovery codes, each 80
// random bits written as four groups of four base32 letters and digits
// (xxxx-xxxx-xxxx-xxxx), easy to read out and type.
func NewRecoveryCodes() []string {
	codes := make([]string, RecoveryCodeCount)
	enc := base32.StdEncoding.WithPadding(base32.NoPadding)
	for i := range codes {
		b := make([]byte, 10)
		rand.Read(b)
		s := strings.ToLower(enc.EncodeToString(b)) // 16 characters
		codes[i] = s[0:4] + "-" + s[4:8] + "-" + s[8:12] + "-" + s[12:16]
	}
	return codes
}

// NormaliseRecoveryCode is the form a recovery code is hashed in: lower
// case, without spaces or dashes, so that "ABCD EFGH…" matches too.
func NormaliseRecoveryCode(code string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == '-' || r == ' ' || r == '\t':
			return -1
		case r >= 'A' && r <= 'Z':
			return r + ('a' - 'A')
		}
		return r
	}, code)
}

// HashRecoveryCode is the stored form of a recovery code.
func HashRecoveryCode(code string) string { return hashSecret(NormaliseRecoveryCode(code)) }

// MFA returns the account's two-factor state; ErrNotFound if it has never
// set one up.
func (s *Store) MFA(ctx context.Context, account string) (MFA, error) {
	var m MFA
	var enabled sql.NullTime
	err := s.db.QueryRowContext(ctx, `SELECT secret, enabled_at, last_step FROM account_mfa WHERE account_id = $1`, account).
		Scan(&m.Secret, &enabled, &m.LastStep)
	if err != nil {
		return MFA{}, notFound(err, "two-factor setup")
	}
	m.EnabledAt, m.Enabled = nullTime(enabled), enabled.Valid
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM recovery_codes WHERE account_id = $1 AND used_at IS NULL`, account).
		Scan(&m.RecoveryLeft); err != nil {
		return MFA{}, err
	}
	return m, nil
}

// SetUpMFA stores a new, not yet confirmed TOTP secret (sealed) for the
// account, replacing one set up earlier and not confirmed. An account that
// has two-factor on is ErrConflict: it turns it off first.
func (s *Store) SetUpMFA(ctx context.Context, account, sealed string) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		var enabled sql.NullTime
		err := tx.QueryRowContext(ctx, `SELECT enabled_at FROM account_mfa WHERE account_id = $1`, account).Scan(&enabled)
		switch {
		case err == nil && enabled.Valid:
			return fmt.Errorf("two-factor sign-in is already on; turn it off before setting it up again: %w", ErrConflict)
		case err == nil:
			_, err = tx.ExecContext(ctx, `UPDATE account_mfa SET secret = $2, last_step = 0, created_at = $3 WHERE account_id = $1`,
				account, sealed, s.timestamp())
			return err
		case errors.Is(err, sql.ErrNoRows):
			_, err = tx.ExecContext(ctx, `INSERT INTO account_mfa (account_id, secret, last_step, created_at) VALUES ($1, $2, 0, $3)`,
				account, sealed, s.timestamp())
			return err
		}
		return err
	})
}

// EnableMFA turns on two-factor sign-in with the secret set up, recording
// step as used (the code that confirmed it), and replaces the account's
// recovery codes with these hashes. It is audited.
func (s *Store) EnableMFA(ctx context.Context, account string, step int64, codeHashes []string) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx,
			`UPDATE account_mfa SET enabled_at = $2, last_step = $3 WHERE account_id = $1 AND enabled_at IS NULL AND last_step < $3`,
			account, s.timestamp(), step)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("no two-factor setup waits for confirmation (or that code was used): %w", ErrConflict)
		}
		if err := s.replaceRecoveryCodes(ctx, tx, account, codeHashes); err != nil {
			return err
		}
		return s.audit(ctx, tx, "", "account.mfa.enable", "account:"+account)
	})
}

// ReplaceRecoveryCodes gives an account with two-factor on new recovery
// codes; the old ones stop working. It is audited.
func (s *Store) ReplaceRecoveryCodes(ctx context.Context, account string, codeHashes []string) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM account_mfa WHERE account_id = $1 AND enabled_at IS NOT NULL`, account).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("two-factor sign-in is off: %w", ErrConflict)
		}
		if err := s.replaceRecoveryCodes(ctx, tx, account, codeHashes); err != nil {
			return err
		}
		return s.audit(ctx, tx, "", "account.mfa.recovery_codes", "account:"+account)
	})
}

func (s *Store) replaceRecoveryCodes(ctx context.Context, tx *sql.Tx, account string, codeHashes []string) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM recovery_codes WHERE account_id = $1`, account); err != nil {
		return err
	}
	for _, h := range codeHashes {
		if _, err := tx.ExecContext(ctx, `INSERT INTO recovery_codes (account_id, code_hash) VALUES ($1, $2)`, account, h); err != nil {
			return err
		}
	}
	return nil
}

// UseTOTPStep records that a code of step was accepted for the account,
// if no code of that step or a later one was: it reports false for a code
// used before (a replay), so each code signs in once. Only an account with
// two-factor on uses steps.
func (s *Store) UseTOTPStep(ctx context.Context, account string, step int64) (bool, error) {
	res, err := s.db.ExecContext(ctx,
		`UPDATE account_mfa SET last_step = $2 WHERE account_id = $1 AND enabled_at IS NOT NULL AND last_step < $2`, account, step)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// UseRecoveryCode spends one of the account's recovery codes: true if the
// code was the account's and unused; it never works again.
func (s *Store) UseRecoveryCode(ctx context.Context, account, code string) (bool, error) {
	var used bool
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx,
			`UPDATE recovery_codes SET used_at = $3 WHERE account_id = $1 AND code_hash = $2 AND used_at IS NULL`,
			account, HashRecoveryCode(code), s.timestamp())
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return nil
		}
		used = true
		return s.audit(ctx, tx, "", "account.mfa.recovery_code_used", "account:"+account)
	})
	return used, err
}

// DisableMFA turns two-factor sign-in off and forgets the secret and the
// recovery codes. It is audited; turning off what is off is no error.
func (s *Store) DisableMFA(ctx context.Context, account string) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM account_mfa WHERE account_id = $1`, account)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM recovery_codes WHERE account_id = $1`, account); err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return nil
		}
		return s.audit(ctx, tx, "", "account.mfa.disable", "account:"+account)
	})
}

// TenantRequiresMFA reports whether the tenant requires two-factor sign-in
// of its members.
func (s *Store) TenantRequiresMFA(ctx context.Context, tenant string) (bool, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM tenant_mfa WHERE tenant = $1`, tenant).Scan(&n)
	return n > 0, err
}

// SetTenantRequiresMFA requires two-factor sign-in of the tenant's members
// (or stops requiring it). Only an owner may (by), and an owner who
// requires it must have it on (byHasMFA), or they would shut themselves
// out. It is audited.
func (s *Store) SetTenantRequiresMFA(ctx context.Context, tenant string, by By, byHasMFA, required bool) error {
	if !by.Role.AtLeast(RoleOwner) {
		return fmt.Errorf("only an owner can change the two-factor requirement: %w", ErrForbidden)
	}
	if required && by.Account != "" && !byHasMFA {
		return fmt.Errorf("turn on two-factor sign-in for your own account before requiring it of others: %w", ErrConflict)
	}
	return s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.lockTenant(ctx, tx, tenant); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM tenant_mfa WHERE tenant = $1`, tenant).Scan(&n); err != nil {
			return err
		}
		switch {
		case required && n == 0:
			if _, err := tx.ExecContext(ctx, `INSERT INTO tenant_mfa (tenant, set_by, created_at) VALUES ($1, $2, $3)`,
				tenant, actorFrom(ctx), s.timestamp()); err != nil {
				return err
			}
			return s.audit(ctx, tx, tenant, "tenant.mfa.require", "tenant:"+tenant)
		case !required && n > 0:
			if _, err := tx.ExecContext(ctx, `DELETE FROM tenant_mfa WHERE tenant = $1`, tenant); err != nil {
				return err
			}
			return s.audit(ctx, tx, tenant, "tenant.mfa.optional", "tenant:"+tenant)
		}
		return nil
	})
}

// MFAGate returns ErrMFARequired if the tenant requires two-factor sign-in
// and the account has not turned it on; nil otherwise. One query: it runs
// on every request an account makes to a tenant.
func (s *Store) MFAGate(ctx context.Context, tenant, account string) error {
	var required, enabled int
	err := s.db.QueryRowContext(ctx,
		`SELECT (SELECT COUNT(*) FROM tenant_mfa WHERE tenant = $1),
		        (SELECT COUNT(*) FROM account_mfa WHERE account_id = $2 AND enabled_at IS NOT NULL)`, tenant, account).
		Scan(&required, &enabled)
	if err != nil {
		return err
	}
	if required > 0 && enabled == 0 {
		return ErrMFARequired
	}
	return nil
}

// mfaStepDuration is a TOTP step (RFC 6238's default).
const mfaStepDuration = 30 * time.Second

// TOTPStep is the TOTP time step t falls in.
func TOTPStep(t time.Time) int64 { return t.Unix() / int64(mfaStepDuration/time.Second) }

// NewToken returns a fresh random token of 192 bits, URL-safe: for links
// and one-time tokens made outside the store.
func NewToken() string { return newSecret(24) }

// spentChallengeGrace is how long past its token's expiry a spent
// challenge is kept: a process whose clock lags still refuses the token
// as spent, not takes it as new.
const spentChallengeGrace = time.Hour

// SpendMFAChallenge records the two-factor challenge id as used, its token
// valid until expires: true the first time, false if it was spent before.
// One statement inserts if absent, so of concurrent spends of one id
// exactly one reports true, on either database. Challenges expired longer
// than spentChallengeGrace ago are deleted first.
func (s *Store) SpendMFAChallenge(ctx context.Context, id string, expires time.Time) (bool, error) {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM mfa_challenges_spent WHERE expires_at < $1`,
		s.timestamp().Add(-spentChallengeGrace)); err != nil {
		return false, fmt.Errorf("prune spent challenges: %w", err)
	}
	res, err := s.db.ExecContext(ctx, `INSERT INTO mfa_challenges_spent (id, expires_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING`,
		id, expires.UTC().Truncate(time.Microsecond))
	if err != nil {
		return false, fmt.Errorf("spend challenge: %w", err)
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// MFAChallengeSpent reports whether the two-factor challenge id was spent
// (and is not yet pruned).
func (s *Store) MFAChallengeSpent(ctx context.Context, id string) (bool, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM mfa_challenges_spent WHERE id = $1`, id).Scan(&n)
	return n > 0, err
}
