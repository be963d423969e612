package auth

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/roosthub/roost/tenants"
)

// ErrBadCredentials is the one answer to a wrong password, an unknown email,
// and a sign-up with a taken email and another password.
var ErrBadCredentials = fmt.Errorf("wrong email or password: %w", tenants.ErrUnauthorized)

// Issued is a session just started, with the token that carries it.
type Issued struct {
	Token     string          `json:"token"`
	ExpiresAt time.Time       `json:"expires_at"`
	Account   tenants.Account `json:"account"`
	// Created tells a sign-up that made a new account from one that
	// signed in to an existing one; the answers do not show it.
	Created bool            `json:"-"`
	Session tenants.Session `json:"-"`
	// MFAToken, when set, is all a login got: the account has two-factor
	// sign-in on, and CompleteMFA exchanges this token and a code for the
	// session (Token is empty until then).
	MFAToken string `json:"-"`
}

// pair names an (account, address) pair, the address by its network: an
// IPv6 host whose address changes within its /64 (privacy addresses do,
// daily) is still where the account signed in from.
func pair(account, addr string) string { return account + "\x00" + network(addr) }

// loginCharges are what one password check of account from addr is counted
// against: its pair alone if the pair signed in lately, otherwise also the
// account and the address.
func (s *Service) loginCharges(account, addr string) []charge {
	p := charge{loginPair, pair(account, addr)}
	if s.lim.isTrusted(p.key) {
		return []charge{p}
	}
	return []charge{p, {loginAccount, account}, {loginAddress, addr}}
}

// checkPassword runs check, a password check of account from addr, within
// the login budgets: counted before it runs, refunded if it succeeds (the
// pair's and account's streaks forgiven; the address's is not, or one's own
// account could wipe out the guesses made on others).
func (s *Service) checkPassword(account, addr string, check func() (tenants.Account, bool, error)) (tenants.Account, bool, error) {
	t, wait := s.lim.reserve(s.loginCharges(account, addr)...)
	if wait > 0 {
		return tenants.Account{}, false, waitError(wait, "too many failed attempts")
	}
	a, created, err := check()
	switch {
	case errors.Is(err, tenants.ErrUnauthorized):
		return tenants.Account{}, false, ErrBadCredentials
	case err != nil:
		t.refund() // not evaluated
		return tenants.Account{}, false, err
	}
	t.refund(loginPair, loginAccount)
	s.lim.trust(pair(account, addr))
	return a, created, nil
}

// LogIn starts a session for the account with this email and password,
// asked from addr.
func (s *Service) LogIn(ctx context.Context, email, password, addr string) (Issued, error) {
	a, _, err := s.checkPassword(tenants.NormaliseEmail(email), addr, func() (tenants.Account, bool, error) {
		a, err := s.store.Authenticate(ctx, email, password)
		return a, false, err
	})
	if err != nil {
		return Issued{}, err
	}
	return s.startAccount(ctx, a, false)
}

// SignUp creates an account and starts a session for it. Every attempt is
// counted (per address and in total), before anything is hashed. An email
// that already has an account gets the answer a login would: a session if
// the password is the account's, ErrBadCredentials otherwise; so a sign-up
// says no more about who has an account than a login does, and costs a
// prober one of the account's login guesses.
func (s *Service) SignUp(ctx context.Context, in tenants.Signup, addr string) (Issued, error) {
	charges := []charge{{signupAddress, addr}}
	if s.signupAll.perHour > 0 {
		charges = append(charges, charge{s.signupAll, ""})
	}
	if _, wait := s.lim.reserve(charges...); wait > 0 {
		return Issued{}, waitError(wait, "too many sign-ups")
	}
	if err := in.Validate(); err != nil {
		return Issued{}, err
	}
	a, created, err := s.checkPassword(in.Email, addr, func() (tenants.Account, bool, error) {
		return s.store.SignUp(ctx, in)
	})
	if err != nil {
		return Issued{}, err
	}
	if created {
		// A failed mail does not fail the sign-up: the person can ask
		// for another (ResendVerification).
		if err := s.sendVerification(ctx, a.ID); err != nil {
			s.log.Error("verification mail", "account", a.ID, "err", err)
		}
	}
	return s.startAccount(ctx, a, created)
}

func (s *Service) startAccount(ctx context.Context, a tenants.Account, created bool) (Issued, error) {
	// The second-factor hook (mfa.go): an account with two-factor on gets
	// a challenge, not a session.
	if tok, exp, err := s.mfaChallenge(ctx, a); err != nil || tok != "" {
		return Issued{MFAToken: tok, ExpiresAt: exp, Account: a}, err
	}
	return s.startAccountSession(ctx, a, created)
}

// startAccountSession starts a's session, its sign-in complete.
func (s *Service) startAccountSession(ctx context.Context, a tenants.Account, created bool) (Issued, error) {
	is, err := s.start(ctx, tenants.SessionAccount, a.ID, a.ID, "", s.ttl)
	if err != nil {
		return Issued{}, err
	}
	is.Account, is.Created = a, created
	return is, nil
}
