package tenants

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// CreateAccount signs up a new account.
func (s *Store) CreateAccount(ctx context.Context, in Signup) (Account, error) {
	if err := in.Validate(); err != nil {
		return Account{}, err
	}
	h, err := s.hash(ctx, in.Password)
	if err != nil {
		return Account{}, err
	}
	a := Account{ID: newID("acc_"), Email: in.Email, CreatedAt: s.timestamp(), passwordHash: h}
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO accounts (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4)`,
			a.ID, a.Email, a.passwordHash, a.CreatedAt); err != nil {
			if isUniqueViolation(err) {
				return fmt.Errorf("an account with this email exists: %w", ErrConflict)
			}
			return err
		}
		return s.audit(WithActor(ctx, "account:"+a.ID), tx, "", "account.create", "account:"+a.ID)
	})
	return a, err
}

// SignUp creates an account, or, when one already has the email, checks the
// password against it, so that a sign-up with an email that is taken
// answers like a login: the account if the password is its own,
// ErrUnauthorized otherwise. Either way one Argon2id hash is computed, so
// the two take as long. created tells which happened.
func (s *Store) SignUp(ctx context.Context, in Signup) (a Account, created bool, err error) {
	if err := in.Validate(); err != nil {
		return Account{}, false, err
	}
	a, err = s.accountBy(ctx, `email = $1`, in.Email)
	switch {
	case err == nil:
		a, err = s.verify(ctx, a, in.Password)
		return a, false, err
	case !errors.Is(err, ErrNotFound):
		return Account{}, false, err
	}
	a, err = s.CreateAccount(ctx, in)
	if errors.Is(err, ErrConflict) { // a concurrent sign-up took the email first
		a, err = s.Authenticate(ctx, in.Email, in.Password)
		return a, false, err
	}
	return a, err == nil, err
}

func (s *Store) verify(ctx context.Context, a Account, password string) (Account, error) {
	ok, err := s.check(ctx, password, a.passwordHash)
	if err != nil {
		return Account{}, err
	}
	if !ok {
		return Account{}, ErrUnauthorized
	}
	return a, nil
}

// Authenticate returns the account with this email and password, or
// ErrUnauthorized. An unknown email costs as much time as a wrong password, so
// timing does not reveal which emails have accounts.
func (s *Store) Authenticate(ctx context.Context, email, password string) (Account, error) {
	if len(password) > maxPasswordLen {
		// No account has such a password; refuse after the same work.
		if _, err := s.check(ctx, password[:maxPasswordLen], *dummyPasswordHash.Load()); err != nil {
			return Account{}, err
		}
		return Account{}, ErrUnauthorized
	}
	a, err := s.accountBy(ctx, `email = $1`, normaliseEmailLoose(email))
	if errors.Is(err, ErrNotFound) {
		if _, err := s.check(ctx, password, *dummyPasswordHash.Load()); err != nil {
			return Account{}, err
		}
		return Account{}, ErrUnauthorized
	}
	if err != nil {
		return Account{}, err
	}
	return s.verify(ctx, a, password)
}

// Account returns the account with this id.
func (s *Store) Account(ctx context.Context, id string) (Account, error) {
	return s.accountBy(ctx, `id = $1`, id)
}

func (s *Store) accountBy(ctx context.Context, where string, arg any) (Account, error) {
	var a Account
	var verified sql.NullTime
	err := s.db.QueryRowContext(ctx,
		`SELECT id, email, password_hash, created_at, email_verified_at FROM accounts WHERE `+where, arg).
		Scan(&a.ID, &a.Email, &a.passwordHash, &a.CreatedAt, &verified)
	if err != nil {
		return Account{}, notFound(err, "account")
	}
	a.CreatedAt = a.CreatedAt.UTC()
	a.setVerified(verified)
	return a, nil
}

// normaliseEmailLoose lower-cases an email for lookup without rejecting it:
// a malformed email at login is just one that has no account.
func normaliseEmailLoose(email string) string {
	if e, err := normaliseEmail(email); err == nil {
		return e
	}
	return email
}

// NormaliseEmail is the form of an email the directory keys accounts by;
// throttles key attempts by it too, so that Ada@Example.com and
// ada@example.com share a budget.
func NormaliseEmail(email string) string { return normaliseEmailLoose(email) }
