package auth

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/tenants"
)

// Two-factor sign-in (TOTP, RFC 6238, with single-use recovery codes).
//
// A login whose password (or single sign-on) is right, for an account with
// two-factor on, starts no session: it answers a short-lived challenge
// token (MFATokenTTL), which CompleteMFA exchanges with a code for the
// session, once. Every code tried is counted against the same login budgets as
// passwords (the account's email and the address), and against the
// account's own second-factor budget, which only a right code forgives: a
// right password cannot wipe out the wrong codes tried after it.

// MFATokenTTL bounds the time between the password and the second factor.
const MFATokenTTL = 5 * time.Minute

// mfaSubject prefixes the subject of a challenge token; its id is no
// session's, so the token is never a session token. The subject is
// mfaSubject + account id + "." + the account's CredentialStamp when the
// challenge was issued: a challenge earned with a password works only
// while that password is the account's, so a reset or a change refuses
// every challenge issued before it (someone who signed in with the old
// password and holds the second factor cannot finish after the reset).
const mfaSubject = "mfa:"

// mfaAccount is the second-factor budget of one account: five wrong codes
// in a row before waits start doubling, thirty an hour.
var mfaAccount = budget{name: "mfa-account", free: 5, perHour: 30}

// ErrBadCode is the answer to a wrong, reused or expired second factor.
var ErrBadCode = fmt.Errorf("wrong or already used code: %w", tenants.ErrUnauthorized)

// errBadChallenge answers a challenge token that is not valid.
var errBadChallenge = fmt.Errorf("the two-factor sign-in has expired or is not valid; log in again: %w", tenants.ErrUnauthorized)

// TOTPIssuer names the hub in authenticator apps.
const TOTPIssuer = "Roost"

// MFASetup is a secret being set up: shown once as text and as the URL an
// authenticator app reads from the QR code.
type MFASetup struct {
	Secret string `json:"secret"`
	URL    string `json:"otpauth_url"`
}

// MFAStatus is what a person sees of their two-factor sign-in.
type MFAStatus struct {
	Enabled      bool       `json:"enabled"`
	EnabledAt    *time.Time `json:"enabled_at,omitempty"`
	RecoveryLeft int        `json:"recovery_codes_left"`
	// Pending: a secret was set up and waits for a code to confirm it.
	Pending bool `json:"pending"`
}

func sealContext(account string) string { return "account-mfa/" + account }

// MFAStatus returns the account's two-factor state.
func (s *Service) MFAStatus(ctx context.Context, account string) (MFAStatus, error) {
	m, err := s.store.MFA(ctx, account)
	if errors.Is(err, tenants.ErrNotFound) {
		return MFAStatus{}, nil
	}
	if err != nil {
		return MFAStatus{}, err
	}
	return MFAStatus{Enabled: m.Enabled, EnabledAt: m.EnabledAt, RecoveryLeft: m.RecoveryLeft, Pending: !m.Enabled}, nil
}

// SetUpMFA makes a new TOTP secret for the account, stored sealed and not
// yet in force: EnableMFA turns it on with a code from it.
func (s *Service) SetUpMFA(ctx context.Context, a tenants.Account) (MFASetup, error) {
	key, err := totp.Generate(totp.GenerateOpts{Issuer: TOTPIssuer, AccountName: a.Email, Period: 30, Digits: otp.DigitsSix,
		Algorithm: otp.AlgorithmSHA1, SecretSize: 20})
	if err != nil {
		return MFASetup{}, err
	}
	if err := s.store.SetUpMFA(ctx, a.ID, s.sealer.Seal([]byte(key.Secret()), sealContext(a.ID))); err != nil {
		return MFASetup{}, err
	}
	return MFASetup{Secret: key.Secret(), URL: key.URL()}, nil
}

// EnableMFA turns on the secret set up, if code is a current code of it,
// and returns the account's ten recovery codes, which are shown this once.
func (s *Service) EnableMFA(ctx context.Context, a tenants.Account, code, addr string) ([]string, error) {
	m, err := s.store.MFA(ctx, a.ID)
	switch {
	case errors.Is(err, tenants.ErrNotFound):
		return nil, fmt.Errorf("set up two-factor sign-in first: %w", tenants.ErrConflict)
	case err != nil:
		return nil, err
	case m.Enabled:
		return nil, fmt.Errorf("two-factor sign-in is already on: %w", tenants.ErrConflict)
	}
	var step int64
	if err := s.secondFactor(a, addr, func() (bool, error) {
		secret, err := s.sealer.Open(m.Secret, sealContext(a.ID))
		if err != nil {
			return false, fmt.Errorf("open two-factor secret: %w", err)
		}
		var ok bool
		step, ok = matchTOTP(string(secret), code, s.now())
		return ok, nil
	}); err != nil {
		return nil, err
	}
	codes := tenants.NewRecoveryCodes()
	if err := s.store.EnableMFA(ctx, a.ID, step, hashAll(codes)); err != nil {
		return nil, err
	}
	return codes, nil
}

// DisableMFA turns two-factor sign-in off, given a current code or an
// unused recovery code.
func (s *Service) DisableMFA(ctx context.Context, a tenants.Account, code, addr string) error {
	if err := s.checkCode(ctx, a, code, addr); err != nil {
		return err
	}
	return s.store.DisableMFA(ctx, a.ID)
}

// NewRecoveryCodes replaces the account's recovery codes, given a current
// code or an unused recovery code, and returns the new ones (shown once).
func (s *Service) NewRecoveryCodes(ctx context.Context, a tenants.Account, code, addr string) ([]string, error) {
	if err := s.checkCode(ctx, a, code, addr); err != nil {
		return nil, err
	}
	codes := tenants.NewRecoveryCodes()
	if err := s.store.ReplaceRecoveryCodes(ctx, a.ID, hashAll(codes)); err != nil {
		return nil, err
	}
	return codes, nil
}

// CompleteMFA finishes a login that answered a challenge: with the
// challenge token and a current code (or an unused recovery code) it
// starts the session.
//
// A challenge starts one session: the first right code spends it, and a
// spent challenge is answered as one that is not valid. A wrong code
// leaves it as it was, for the person to type the code again. A spent
// challenge is refused before its code is looked at, so that sending it
// again (a second tab, a replay) spends no code. Two completions of one
// challenge at once, with two right codes (a TOTP code and a recovery
// code, say), both spend their codes, then race to record the challenge
// spent, and only the one that records it gets a session.
func (s *Service) CompleteMFA(ctx context.Context, challenge, code, addr string) (Issued, error) {
	c, err := s.tokens.Parse(challenge)
	if err != nil || !strings.HasPrefix(c.Subject, mfaSubject) || !strings.HasPrefix(c.SessionID, "mfa_") {
		return Issued{}, errBadChallenge
	}
	switch spent, err := s.store.MFAChallengeSpent(ctx, c.SessionID); {
	case err != nil:
		return Issued{}, err
	case spent:
		return Issued{}, errBadChallenge
	}
	id, stamp, _ := strings.Cut(strings.TrimPrefix(c.Subject, mfaSubject), ".")
	a, err := s.store.Account(ctx, id)
	if errors.Is(err, tenants.ErrNotFound) {
		return Issued{}, errBadChallenge
	}
	if err != nil {
		return Issued{}, err
	}
	if subtle.ConstantTimeCompare([]byte(stamp), []byte(a.CredentialStamp())) != 1 {
		return Issued{}, errBadChallenge // the password changed since the challenge
	}
	if err := s.checkCode(ctx, a, code, addr); err != nil {
		return Issued{}, err
	}
	switch first, err := s.store.SpendMFAChallenge(ctx, c.SessionID, c.ExpiresAt); {
	case err != nil:
		return Issued{}, err
	case !first:
		return Issued{}, errBadChallenge
	}
	return s.startAccountSession(ctx, a, false)
}

// checkCode checks a second factor of an account with two-factor on: a
// TOTP code, each accepted once, or a recovery code, spent by its use.
func (s *Service) checkCode(ctx context.Context, a tenants.Account, code, addr string) error {
	m, err := s.store.MFA(ctx, a.ID)
	if errors.Is(err, tenants.ErrNotFound) || (err == nil && !m.Enabled) {
		return fmt.Errorf("two-factor sign-in is off: %w", tenants.ErrConflict)
	}
	if err != nil {
		return err
	}
	return s.secondFactor(a, addr, func() (bool, error) {
		code = strings.TrimSpace(code)
		if !isTOTPCode(code) {
			return s.store.UseRecoveryCode(ctx, a.ID, code)
		}
		secret, err := s.sealer.Open(m.Secret, sealContext(a.ID))
		if err != nil {
			return false, fmt.Errorf("open two-factor secret: %w", err)
		}
		step, ok := matchTOTP(string(secret), code, s.now())
		if !ok {
			return false, nil
		}
		return s.store.UseTOTPStep(ctx, a.ID, step)
	})
}

// secondFactor runs check, a second-factor check of account a from addr,
// within the login budgets of its email and the address and its own
// second-factor budget: counted before it runs; a right code gives the
// attempt back and forgives the streaks.
func (s *Service) secondFactor(a tenants.Account, addr string, check func() (bool, error)) error {
	charges := append(s.loginCharges(a.Email, addr), charge{mfaAccount, a.ID})
	t, wait := s.lim.reserve(charges...)
	if wait > 0 {
		return waitError(wait, "too many failed attempts")
	}
	ok, err := check()
	switch {
	case err != nil:
		t.refund()
		return err
	case !ok:
		return ErrBadCode
	}
	t.refund(loginPair, loginAccount, mfaAccount)
	return nil
}

// mfaChallenge returns the challenge token a login of a gets instead of
// a session if a has two-factor on; "" if it has not.
func (s *Service) mfaChallenge(ctx context.Context, a tenants.Account) (string, time.Time, error) {
	m, err := s.store.MFA(ctx, a.ID)
	if errors.Is(err, tenants.ErrNotFound) || (err == nil && !m.Enabled) {
		return "", time.Time{}, nil
	}
	if err != nil {
		return "", time.Time{}, err
	}
	exp := s.now().Add(MFATokenTTL)
	tok, err := s.tokens.Issue(mfaSubject+a.ID+"."+a.CredentialStamp(), "mfa_"+tenants.NewToken(), exp)
	return tok, exp.UTC().Truncate(time.Second), err
}

// matchTOTP reports whether code is the TOTP code of secret at now, or of
// the step just before or after (clocks drift; a code typed at the end of
// its step arrives in the next), and which step it matched. Codes are
// compared in constant time.
func matchTOTP(secret, code string, now time.Time) (int64, bool) {
	if !isTOTPCode(code) {
		return 0, false
	}
	cur := tenants.TOTPStep(now)
	for _, step := range []int64{cur, cur - 1, cur + 1} {
		want, err := totp.GenerateCodeCustom(secret, time.Unix(step*30, 0), totp.ValidateOpts{Period: 30, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
		if err != nil {
			return 0, false
		}
		if subtle.ConstantTimeCompare([]byte(want), []byte(code)) == 1 {
			return step, true
		}
	}
	return 0, false
}

func isTOTPCode(code string) bool {
	if len(code) != 6 {
		return false
	}
	for _, r := range code {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

func hashAll(codes []string) []string {
	out := make([]string, len(codes))
	for i, c := range codes {
		out[i] = tenants.HashRecoveryCode(c)
	}
	return out
}

// TenantMFA answers whether the tenant requires two-factor sign-in.
func (s *Service) TenantMFA(ctx context.Context, tenant string) (bool, error) {
	return s.store.TenantRequiresMFA(ctx, tenant)
}

// SetTenantMFA requires two-factor sign-in of the tenant's members, or
// stops requiring it: owners only, and an owner who requires it has it on.
func (s *Service) SetTenantMFA(ctx context.Context, tenant string, by tenants.By, required bool) error {
	has := false
	if by.Account != "" {
		st, err := s.MFAStatus(ctx, by.Account)
		if err != nil {
			return err
		}
		has = st.Enabled
	}
	return s.store.SetTenantRequiresMFA(ctx, tenant, by, has, required)
}

// ResealMFA seals every account's TOTP secret sealed under an old key of
// the ring again under the current key (see dataout.Sealer.Reseal), so
// that the old key can be dropped without locking anyone out of two-factor
// sign-in. A secret set up again meanwhile is left to its change; one that
// does not open is left as it is, counted and logged (its account turns
// two-factor off with a recovery code, or an operator does). With no old
// key it does nothing.
func (s *Service) ResealMFA(ctx context.Context) (dataout.ResealCount, error) {
	var n dataout.ResealCount
	prefixes := s.sealer.OldPrefixes()
	if len(prefixes) == 0 {
		return n, nil
	}
	after := ""
	for {
		page, err := s.store.MFASealedUnder(ctx, prefixes, after, mfaResealPage)
		if err != nil {
			return n, err
		}
		for _, m := range page {
			to, err := s.sealer.Reseal(m.Secret, sealContext(m.Account))
			switch {
			case err != nil:
				n.Failed++
				if n.Failed <= dataout.LogFailed {
					s.log.Warn("two-factor secret sealed under an earlier key does not open", "account", m.Account, "err", err)
				}
				continue
			case to == m.Secret:
				continue // not under an earlier key after all (the store's match ignores case)
			}
			wrote, err := s.store.ResealMFA(ctx, m.Account, m.Secret, to)
			if err != nil {
				return n, err
			}
			n.Written(wrote)
		}
		if len(page) < mfaResealPage {
			return n, nil
		}
		after = page[len(page)-1].Account
	}
}

// mfaResealPage is how many accounts ResealMFA reads at a time (a
// variable for the tests).
var mfaResealPage = 100
