package tenants

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// TokenPurpose is what a one-time account token does.
type TokenPurpose string

// The purposes, and how long a token of each works.
const (
	// TokenVerify proves the person reads the account's email.
	TokenVerify TokenPurpose = "verify"
	// TokenReset lets the person choose a new password.
	TokenReset TokenPurpose = "reset"

	VerifyTokenTTL = 48 * time.Hour
	ResetTokenTTL  = 30 * time.Minute
)

// errBadToken is the one answer to a token that is malformed, unknown,
// spent, replaced, expired or of another purpose: which of them it was is
// nobody's business.
var errBadToken = fmt.Errorf("the link is not valid, was used already, was replaced by a newer one or has expired: %w", ErrUnauthorized)

// issueToken makes a token of purpose for the account, spending the
// account's earlier unspent ones of the same purpose (a newer link
// replaces an older one). Only the secret's SHA-256 is stored.
func (s *Store) issueToken(ctx context.Context, a Account, purpose TokenPurpose, ttl time.Duration, action string) (string, error) {
	id, secret := newID("tok_"), newSecret(32)
	now := s.timestamp()
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx,
			`UPDATE account_tokens SET used_at = $3 WHERE account_id = $1 AND purpose = $2 AND used_at IS NULL`,
			a.ID, purpose, now); err != nil {
			return err
		}
		// Tokens a week past their expiry are of no use to anyone.
		if _, err := tx.ExecContext(ctx, `DELETE FROM account_tokens WHERE account_id = $1 AND expires_at < $2`,
			a.ID, now.Add(-7*24*time.Hour)); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO account_tokens (id, account_id, purpose, secret_hash, email, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
			id, a.ID, purpose, hashSecret(secret), a.Email, now, now.Add(ttl)); err != nil {
			return err
		}
		return s.audit(ctx, tx, "", action, "account:"+a.ID)
	})
	if err != nil {
		return "", fmt.Errorf("issue %s token: %w", purpose, err)
	}
	return id + "." + secret, nil
}

// queryRower is what reads one row: the database or a transaction.
type queryRower interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// findToken checks token (purpose, secret compared in constant time,
// unspent, unexpired, issued to the account's current email) without
// spending it, and returns its id and its account's.
func (s *Store) findToken(ctx context.Context, q queryRower, token string, purpose TokenPurpose) (id, account string, err error) {
	id, secret, ok := strings.Cut(token, ".")
	if !ok || id == "" || secret == "" || len(token) > 200 {
		return "", "", errBadToken
	}
	var hash, email, current string
	var expires time.Time
	var used sql.NullTime
	err = q.QueryRowContext(ctx,
		`SELECT t.account_id, t.secret_hash, t.email, t.expires_at, t.used_at, a.email
		 FROM account_tokens t JOIN accounts a ON a.id = t.account_id WHERE t.id = $1 AND t.purpose = $2`, id, purpose).
		Scan(&account, &hash, &email, &expires, &used, &current)
	if errors.Is(err, sql.ErrNoRows) {
		secretMatches(secret, strings.Repeat("0", 64)) // as long as a wrong secret
		return "", "", errBadToken
	}
	if err != nil {
		return "", "", err
	}
	if !secretMatches(secret, hash) || used.Valid || !s.timestamp().Before(expires) || email != current {
		return "", "", errBadToken
	}
	return id, account, nil
}

// spendToken checks token as findToken does and marks it spent in tx, so
// that it works once. It returns the account.
func (s *Store) spendToken(ctx context.Context, tx *sql.Tx, token string, purpose TokenPurpose) (Account, error) {
	id, account, err := s.findToken(ctx, tx, token, purpose)
	if err != nil {
		return Account{}, err
	}
	res, err := tx.ExecContext(ctx, `UPDATE account_tokens SET used_at = $2 WHERE id = $1 AND used_at IS NULL`, id, s.timestamp())
	if err != nil {
		return Account{}, err
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return Account{}, errBadToken // spent by a concurrent request
	}
	var a Account
	var verified sql.NullTime
	if err := tx.QueryRowContext(ctx, `SELECT id, email, password_hash, created_at, email_verified_at FROM accounts WHERE id = $1`, account).
		Scan(&a.ID, &a.Email, &a.passwordHash, &a.CreatedAt, &verified); err != nil {
		return Account{}, err
	}
	a.CreatedAt = a.CreatedAt.UTC()
	a.setVerified(verified)
	return a, nil
}

// IssueVerifyToken makes the token that verifies the account's email
// (replacing an earlier one). An account whose email is verified already
// gets ErrConflict.
func (s *Store) IssueVerifyToken(ctx context.Context, account string) (Account, string, error) {
	a, err := s.Account(ctx, account)
	if err != nil {
		return Account{}, "", err
	}
	if a.EmailVerified {
		return a, "", fmt.Errorf("the email is verified already: %w", ErrConflict)
	}
	tok, err := s.issueToken(WithActor(ctx, actorFromOr(ctx, "account:"+a.ID)), a, TokenVerify, VerifyTokenTTL, "account.verify_sent")
	return a, tok, err
}

// VerifyTokenAccount returns the account a verify token is for, if the
// token would work, without spending it: the caller decides first whether
// the person holding the link may verify that account (VerifyEmail).
func (s *Store) VerifyTokenAccount(ctx context.Context, token string) (Account, error) {
	_, account, err := s.findToken(ctx, s.db, token, TokenVerify)
	if err != nil {
		return Account{}, err
	}
	return s.Account(ctx, account)
}

// VerifyEmail spends a verify token and marks its account's email
// verified, audited. It checks nothing else: the caller has made sure
// that whoever holds the link also holds the account (its password, or
// a session of it). When this is the email's first verification, every
// session of the account but keep ends, and a two-factor setup not yet
// confirmed is dropped: the account was usable before anyone proved the
// mailbox, and what was started then is not carried past the proof.
func (s *Store) VerifyEmail(ctx context.Context, token, keep string) (Account, error) {
	var a Account
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var err error
		if a, err = s.spendToken(ctx, tx, token, TokenVerify); err != nil {
			return err
		}
		if a.EmailVerified {
			// Verified meanwhile (a reset): nothing is ended twice.
			return s.audit(WithActor(ctx, "account:"+a.ID), tx, "", "account.email_verify", "account:"+a.ID)
		}
		now := s.timestamp()
		res, err := tx.ExecContext(ctx, `UPDATE accounts SET email_verified_at = $2 WHERE id = $1 AND email_verified_at IS NULL`, a.ID, now)
		if err != nil {
			return err
		}
		a.EmailVerified, a.EmailVerifiedAt = true, &now
		if n, _ := res.RowsAffected(); n == 1 {
			if err := s.forgetUnverifiedPeriod(ctx, tx, a.ID, keep); err != nil {
				return err
			}
		}
		return s.audit(WithActor(ctx, "account:"+a.ID), tx, "", "account.email_verify", "account:"+a.ID)
	})
	return a, err
}

// forgetUnverifiedPeriod ends, in tx, what a first proof of the account's
// mailbox does not carry over: every session but keep, the verify links
// still out, and a two-factor setup made but not confirmed (its secret
// may be someone else's).
func (s *Store) forgetUnverifiedPeriod(ctx context.Context, tx *sql.Tx, account, keep string) error {
	if _, err := s.endSessions(ctx, tx, account, keep); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE account_tokens SET used_at = $3 WHERE account_id = $1 AND purpose = $2 AND used_at IS NULL`,
		account, TokenVerify, s.timestamp()); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM account_mfa WHERE account_id = $1 AND enabled_at IS NULL`, account); err != nil {
		return fmt.Errorf("drop an unconfirmed two-factor setup: %w", err)
	}
	return nil
}

// IssueResetToken makes a password-reset token for the account with this
// email (replacing an earlier one); ErrNotFound if there is none.
func (s *Store) IssueResetToken(ctx context.Context, email string) (Account, string, error) {
	a, err := s.accountBy(ctx, `email = $1`, normaliseEmailLoose(email))
	if err != nil {
		return Account{}, "", err
	}
	// Anyone may ask for a reset link, so the request is not the
	// account's doing: it is audited as the caller's, or anonymous.
	tok, err := s.issueToken(WithActor(ctx, actorFromOr(ctx, "anonymous")), a, TokenReset, ResetTokenTTL, "account.password_reset_request")
	return a, tok, err
}

// ResetPassword spends a reset token and sets the account's new password.
// Whoever held a session of the account may be who the reset is against,
// so every session ends, and so does a two-factor setup not yet
// confirmed. Reading the mailed link proves the email too, so it is
// marked verified. When that is the email's first proof, the account was
// run until now by whoever chose its password, not necessarily by the
// mailbox's owner (a sign-up with someone else's email): what acts as the
// account without its password goes too — its two-factor sign-in, and the
// API keys made on its behalf — each audited (ResetCleared counts them).
func (s *Store) ResetPassword(ctx context.Context, token, password string) (Account, ResetCleared, error) {
	if err := ValidatePassword(password); err != nil {
		return Account{}, ResetCleared{}, err
	}
	// The hash is computed before the transaction (it takes a slot and
	// tens of milliseconds); a bad token has then cost one hash, which
	// the caller's throttle counts.
	h, err := s.hash(ctx, password)
	if err != nil {
		return Account{}, ResetCleared{}, err
	}
	var a Account
	var cleared ResetCleared
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		cleared = ResetCleared{}
		var err error
		if a, err = s.spendToken(ctx, tx, token, TokenReset); err != nil {
			return err
		}
		now := s.timestamp()
		if _, err := tx.ExecContext(ctx,
			`UPDATE accounts SET password_hash = $2, email_verified_at = COALESCE(email_verified_at, $3) WHERE id = $1`, a.ID, h, now); err != nil {
			return err
		}
		first := !a.EmailVerified
		if first {
			a.EmailVerified, a.EmailVerifiedAt = true, &now
		}
		a.passwordHash = h
		if err := s.forgetUnverifiedPeriod(ctx, tx, a.ID, ""); err != nil {
			return err
		}
		actx := WithActor(ctx, "account:"+a.ID)
		if first {
			if cleared.MFA, err = s.dropMFA(actx, tx, a.ID); err != nil {
				return err
			}
			if cleared.APIKeys, err = s.deleteAllKeysOf(actx, tx, a.ID); err != nil {
				return err
			}
		}
		return s.audit(actx, tx, "", "account.password_reset", "account:"+a.ID)
	})
	return a, cleared, err
}

// ResetCleared is what a reset that first proved the account's email took
// away from the account's unverified period.
type ResetCleared struct {
	// MFA: two-factor sign-in was on, and is off.
	MFA bool
	// APIKeys made on the account's behalf, in any tenant, revoked.
	APIKeys int
}

// dropMFA turns the account's two-factor sign-in off in tx, secret and
// recovery codes, audited; false if it had none on.
func (s *Store) dropMFA(ctx context.Context, tx *sql.Tx, account string) (bool, error) {
	res, err := tx.ExecContext(ctx, `DELETE FROM account_mfa WHERE account_id = $1`, account)
	if err != nil {
		return false, err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM recovery_codes WHERE account_id = $1`, account); err != nil {
		return false, err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return false, nil
	}
	return true, s.audit(ctx, tx, "", "account.mfa.disable", "account:"+account)
}

// deleteAllKeysOf revokes in tx the API keys made on account's behalf in
// every tenant (directly, or through a key it made: those carry its id
// too), each audited in its tenant, and returns how many.
func (s *Store) deleteAllKeysOf(ctx context.Context, tx *sql.Tx, account string) (int, error) {
	rows, err := tx.QueryContext(ctx, `SELECT DISTINCT tenant FROM api_keys WHERE created_by = $1`, account)
	if err != nil {
		return 0, err
	}
	var ts []string
	for rows.Next() {
		var t string
		if err := rows.Scan(&t); err != nil {
			rows.Close()
			return 0, err
		}
		ts = append(ts, t)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	n := 0
	for _, t := range ts {
		k, err := s.deleteKeysOf(ctx, tx, t, account)
		if err != nil {
			return n, err
		}
		n += k
	}
	return n, nil
}

// ChangePassword sets a new password for the account if old is its
// password (ErrUnauthorized otherwise), and ends every other session of
// the account but keep (the one asking). Audited.
func (s *Store) ChangePassword(ctx context.Context, account, old, password, keep string) (Account, error) {
	if err := ValidatePassword(password); err != nil {
		return Account{}, err
	}
	a, err := s.Account(ctx, account)
	if err != nil {
		return Account{}, err
	}
	if len(old) > maxPasswordLen {
		old = old[:maxPasswordLen] // no password is longer; it fails after the same work
	}
	if _, err := s.verify(ctx, a, old); err != nil {
		return Account{}, fmt.Errorf("the current password is wrong: %w", err)
	}
	h, err := s.hash(ctx, password)
	if err != nil {
		return Account{}, err
	}
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		// The password is compared-and-swapped: a concurrent change or
		// reset since the check wins, and this one fails.
		res, err := tx.ExecContext(ctx, `UPDATE accounts SET password_hash = $3 WHERE id = $1 AND password_hash = $2`, a.ID, a.passwordHash, h)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("the password changed meanwhile: %w", ErrConflict)
		}
		if _, err := s.endSessions(ctx, tx, a.ID, keep); err != nil {
			return err
		}
		// Reset tokens issued before the change are spent too.
		if _, err := tx.ExecContext(ctx, `UPDATE account_tokens SET used_at = $3 WHERE account_id = $1 AND purpose = $2 AND used_at IS NULL`,
			a.ID, TokenReset, s.timestamp()); err != nil {
			return err
		}
		return s.audit(ctx, tx, "", "account.password_change", "account:"+a.ID)
	})
	a.passwordHash = h
	return a, err
}

// AccountAudit returns the account's own trail, newest first, a page at
// a time: what was done to account:<id> (sign-up, verification, password
// changes and resets, sessions ended).
func (s *Store) AccountAudit(ctx context.Context, account string, p Page) ([]AuditEntry, string, error) {
	q := `SELECT id, COALESCE(tenant, ''), actor, action, object, at FROM audit_log WHERE object = $1 AND tenant IS NULL`
	args := []any{"account:" + account}
	if p.Cursor != "" {
		q += ` AND id < $2`
		args = append(args, p.Cursor)
	}
	q += fmt.Sprintf(` ORDER BY id DESC LIMIT %d`, p.limit()+1)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, "", err
	}
	defer rows.Close()
	es := []AuditEntry{}
	for rows.Next() {
		var e AuditEntry
		if err := rows.Scan(&e.ID, &e.Tenant, &e.Actor, &e.Action, &e.Object, &e.At); err != nil {
			return nil, "", err
		}
		e.At = e.At.UTC()
		es = append(es, e)
	}
	if err := rows.Err(); err != nil {
		return nil, "", err
	}
	es, next := trimPage(es, p, func(e AuditEntry) string { return e.ID })
	return es, next, nil
}

// actorFromOr is the context's actor, or def when it names none.
func actorFromOr(ctx context.Context, def string) string {
	if a, ok := ctx.Value(actorKey{}).(string); ok && a != "" {
		return a
	}
	return def
}
