package tenants

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// Single sign-on: an account is linked to a person at an OpenID Connect
// issuer (its issuer URL and the person's subject there) the first time
// they sign in with it, by the email the issuer vouches for.

// IdentityAccount returns the account linked to subject at issuer;
// ErrNotFound if none is.
func (s *Store) IdentityAccount(ctx context.Context, issuer, subject string) (Account, error) {
	var id string
	err := s.db.QueryRowContext(ctx, `SELECT account_id FROM account_identities WHERE issuer = $1 AND subject = $2`, issuer, subject).Scan(&id)
	if err != nil {
		return Account{}, notFound(err, "identity")
	}
	return s.Account(ctx, id)
}

// SSOAccount returns the account to sign in for subject at issuer, whose
// verified email there is email: the one linked to it; else the account
// with that email, which it is then linked to; else a new account with
// that email (verified: the issuer vouched for it) and no usable password
// (a password reset gives it one). created tells a new account. Links and
// new accounts are audited.
//
// An account whose email is not verified is never linked (ErrConflict):
// anyone can sign up with someone else's email, and linking would hand
// the mailbox's owner an account whose password and sessions the stranger
// still holds. Its owner verifies the email (or resets the password, which
// ends every session) and then signs in with the issuer.
func (s *Store) SSOAccount(ctx context.Context, issuer, subject, email string) (a Account, created bool, err error) {
	if a, err := s.IdentityAccount(ctx, issuer, subject); !errors.Is(err, ErrNotFound) {
		return a, false, err
	}
	email, err = normaliseEmail(email)
	if err != nil {
		return Account{}, false, fmt.Errorf("the issuer's email: %w", err)
	}
	hash, err := s.hash(ctx, newSecret(32))
	if err != nil {
		return Account{}, false, err
	}
	now := s.timestamp()
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		var id string
		var verified sql.NullTime
		err := tx.QueryRowContext(ctx, `SELECT id, email_verified_at FROM accounts WHERE email = $1`, email).Scan(&id, &verified)
		switch {
		case err == nil && !verified.Valid:
			return fmt.Errorf("an account with this email exists and its email is not verified: sign in with its password (or reset it) and verify the email, then sign in with single sign-on: %w", ErrConflict)
		case errors.Is(err, sql.ErrNoRows):
			id, created = newID("acc_"), true
			if _, err := tx.ExecContext(ctx,
				`INSERT INTO accounts (id, email, password_hash, created_at, email_verified_at) VALUES ($1, $2, $3, $4, $4)`,
				id, email, hash, now); err != nil {
				if isUniqueViolation(err) {
					return fmt.Errorf("an account with this email was just created; sign in again: %w", ErrConflict)
				}
				return err
			}
			if err := s.audit(WithActor(ctx, "account:"+id), tx, "", "account.create", "account:"+id); err != nil {
				return err
			}
		case err != nil:
			return err
		}
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO account_identities (issuer, subject, account_id, created_at) VALUES ($1, $2, $3, $4)`, issuer, subject, id, now); err != nil {
			if isUniqueViolation(err) {
				return fmt.Errorf("this sign-in was just linked; sign in again: %w", ErrConflict)
			}
			return err
		}
		a.ID = id
		return s.audit(WithActor(ctx, "account:"+id), tx, "", "account.sso.link", "account:"+id)
	})
	if err != nil {
		return Account{}, false, err
	}
	a, err = s.Account(ctx, a.ID)
	return a, created, err
}
