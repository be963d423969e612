package auth

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/roosthub/roost/mail"
	"github.com/roosthub/roost/tenants"
)

// The budgets of the account's own routes, on the login limiter. Forgot
// password: three in a row per email before waits start doubling, ten an
// hour (what bounds mail sent to one person); twenty in a row per
// address. A reset or verify token tried is a login guess of the address
// (loginAddress) and is refunded when it works. Verification mails: five
// an hour per account. A password change is a login attempt of the
// account from the address (loginCharges).
var (
	forgotEmail   = budget{name: "forgot-email", free: 3, perHour: 10}
	forgotAddress = budget{name: "forgot-address", free: 20, perHour: 100, address: true}
	verifyResend  = budget{name: "verify-resend", free: 2, perHour: 5}
)

// errWrongPassword answers a password change with the wrong current
// password.
var errWrongPassword = &tenants.FieldError{Field: "old_password", Message: "is not your current password"}

// outbox runs work off the request path, mail above all: a request's
// answer does not wait for an SMTP server (nor tell, by how long it took,
// whether a mail went out). Its jobs are owned by the Service: Close
// waits for them.
type outbox struct {
	mailer mail.Mailer
	wg     sync.WaitGroup
	// slots bound the jobs running at once: mail, and apart from it the
	// password resets asked for any email, known or not, so that a flood
	// of those (each within its throttles) cannot crowd out sign-up and
	// verification mail.
	slots, resetSlots chan struct{}
	// closed, once Close has begun, refuses new jobs: a request answered
	// during the shutdown must not start one Close no longer waits for.
	mu     sync.Mutex
	closed bool
}

// mailTimeout bounds one background job, such as a mail's sending.
const mailTimeout = time.Minute

// later runs job in the background, with ctx's values but neither its
// cancellation nor its deadline (the request that asked may have been
// answered), for at most mailTimeout. At most as many jobs run at once as
// slots holds; past that one is dropped and logged rather than queued
// without end, and so is one asked for once Close has begun.
func (s *Service) later(ctx context.Context, what string, slots chan struct{}, job func(ctx context.Context)) {
	s.out.mu.Lock()
	defer s.out.mu.Unlock()
	if s.out.closed {
		s.log.Error("dropped: asked for while shutting down", "job", what)
		return
	}
	select {
	case slots <- struct{}{}:
	default:
		s.log.Error("dropped: too many background jobs in flight", "job", what)
		return
	}
	s.out.wg.Add(1)
	go func() {
		defer s.out.wg.Done()
		defer func() { <-slots }()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), mailTimeout)
		defer cancel()
		job(ctx)
	}()
}

// send renders the template and sends it in the background.
func (s *Service) send(ctx context.Context, template, to string, data any) {
	s.later(ctx, "mail "+template, s.out.slots, func(ctx context.Context) { s.deliver(ctx, template, to, data) })
}

// deliver renders the template and sends it now, logging what fails.
func (s *Service) deliver(ctx context.Context, template, to string, data any) {
	m, err := mail.Render(template, to, data)
	if err != nil {
		s.log.Error("render mail", "template", template, "err", err)
		return
	}
	if err := s.out.mailer.Send(ctx, m); err != nil {
		s.log.Error("send mail", "template", template, "err", err)
	}
}

// Close waits for the mails being sent and the other background jobs,
// and refuses new ones. Calling it twice is harmless.
func (s *Service) Close() {
	s.out.mu.Lock()
	s.out.closed = true
	s.out.mu.Unlock()
	s.out.wg.Wait()
}

// link is a console page's absolute URL with the token in its query.
func (s *Service) link(path, token string) string {
	return s.publicURL + path + "?" + url.Values{"token": {token}}.Encode()
}

// sendVerification mails the account a new verify link.
func (s *Service) sendVerification(ctx context.Context, account string) error {
	a, tok, err := s.store.IssueVerifyToken(ctx, account)
	if err != nil {
		return err
	}
	s.send(ctx, mail.TemplateVerify, a.Email, map[string]any{"Link": s.link("/verify", tok), "Hours": int(tenants.VerifyTokenTTL.Hours())})
	return nil
}

// ResendVerification mails the account a new verify link (the older one
// stops working): five an hour. A verified email is ErrConflict.
func (s *Service) ResendVerification(ctx context.Context, account string) error {
	if _, wait := s.lim.reserve(charge{verifyResend, account}); wait > 0 {
		return waitError(wait, "too many verification mails")
	}
	return s.sendVerification(ctx, account)
}

// VerifyLink returns the account a verify link is for, if the link would
// work, without spending it (the console's page asks what it needs by
// it). Tried from addr, it counts as a login guess of the address unless
// the link works.
func (s *Service) VerifyLink(ctx context.Context, token, addr string) (tenants.Account, error) {
	t, wait := s.lim.reserve(charge{loginAddress, addr})
	if wait > 0 {
		return tenants.Account{}, waitError(wait, "too many failed attempts")
	}
	a, err := s.store.VerifyTokenAccount(ctx, token)
	if !errors.Is(err, tenants.ErrUnauthorized) {
		t.refund()
	}
	return a, err
}

// Verification is one use of a verify link.
type Verification struct {
	Token string
	// Password is the account's password, which the link asks for
	// unless the person is signed in as the link's account.
	Password string
	// Account and Session are who is signed in where the link was
	// opened, if anyone: a session of the link's account needs no
	// password, and stays.
	Account, Session string
}

// ErrPasswordRequired answers a verify link used by someone not signed in
// as its account, without the account's password.
var ErrPasswordRequired = &tenants.FieldError{Field: "password", Message: "is required: sign in as this account, or give its password (if you do not know it, " +
	"someone else may have signed up with your email: reset the password instead, POST /v1/password/forgot)"}

// errWrongVerifyPassword answers a verify link used with a password that
// is not its account's.
var errWrongVerifyPassword = &tenants.FieldError{Field: "password", Message: "is not this account's password"}

// VerifyEmail spends a verify link and marks its account's email
// verified. A link proves the mailbox, not that whoever opens it should
// own the account: anyone may sign up with someone else's email, and a
// person who clicks "confirm" in a mail they did not expect would vouch
// for an account whose password a stranger chose. So the link works only
// for someone who also holds the account: signed in as it (v.Session of
// v.Account), or giving its password, checked within the login budgets.
// The email's first verification ends every session of the account but
// the one that verified, and a two-factor setup not confirmed
// (tenants.Store.VerifyEmail). A link tried from addr counts as a login
// guess of the address unless it works. With ErrPasswordRequired or a
// wrong password it returns the link's account too, for a page to name.
func (s *Service) VerifyEmail(ctx context.Context, v Verification, addr string) (tenants.Account, error) {
	a, err := s.VerifyLink(ctx, v.Token, addr)
	if err != nil {
		return tenants.Account{}, err
	}
	keep := ""
	switch {
	case v.Account == a.ID && v.Session != "":
		keep = v.Session
	case v.Password == "":
		return a, ErrPasswordRequired
	default:
		_, _, err := s.checkPassword(a.Email, addr, func() (tenants.Account, bool, error) {
			got, err := s.store.Authenticate(ctx, a.Email, v.Password)
			if err == nil && got.ID != a.ID {
				err = tenants.ErrUnauthorized // the email moved meanwhile
			}
			return got, false, err
		})
		if errors.Is(err, ErrBadCredentials) {
			return a, errWrongVerifyPassword
		}
		if err != nil {
			return tenants.Account{}, err
		}
	}
	return s.store.VerifyEmail(ctx, v.Token, keep)
}

// ForgotPassword mails a reset link to the account with this email, if
// there is one, asked from addr. The answer is the same either way (nil,
// or a wait that is counted per email whether or not it has an account),
// and so is the work done before it: the account is looked up, its token
// made and the mail sent in the background, for an unknown email too, so
// neither the answer nor its time tells whether the email has an account.
// A failure there is logged, not answered.
func (s *Service) ForgotPassword(ctx context.Context, email, addr string) error {
	email = tenants.NormaliseEmail(email)
	if _, wait := s.lim.reserve(charge{forgotEmail, email}, charge{forgotAddress, addr}); wait > 0 {
		return waitError(wait, "too many password reset requests")
	}
	s.later(ctx, "password reset", s.out.resetSlots, func(ctx context.Context) { s.mailReset(ctx, email) })
	return nil
}

// mailReset issues a reset token for the account with this email and
// mails it the link; for an email with no account it does nothing.
func (s *Service) mailReset(ctx context.Context, email string) {
	a, tok, err := s.store.IssueResetToken(ctx, email)
	switch {
	case errors.Is(err, tenants.ErrNotFound):
		return
	case err != nil:
		s.log.Error("issue password reset token", "err", err)
		return
	}
	s.deliver(ctx, mail.TemplateReset, a.Email, map[string]any{"Link": s.link("/password/reset", tok), "Minutes": int(tenants.ResetTokenTTL.Minutes())})
}

// ResetPassword spends a reset token and sets the new password: every
// session of the account ends, and it is told by mail; a reset that is the
// email's first proof also ends the two-factor sign-in and API keys of the
// unverified period (tenants.Store.ResetPassword). A token tried from
// addr counts as a login guess of the address unless it works.
func (s *Service) ResetPassword(ctx context.Context, token, password, addr string) (tenants.Account, error) {
	if err := tenants.ValidatePassword(password); err != nil {
		return tenants.Account{}, err
	}
	t, wait := s.lim.reserve(charge{loginAddress, addr})
	if wait > 0 {
		return tenants.Account{}, waitError(wait, "too many failed attempts")
	}
	a, cleared, err := s.store.ResetPassword(ctx, token, password)
	if !errors.Is(err, tenants.ErrUnauthorized) {
		t.refund()
	}
	if err != nil {
		return tenants.Account{}, err
	}
	if cleared != (tenants.ResetCleared{}) {
		s.log.Info("password reset proved the email first: the unverified period's two-factor and API keys ended",
			"account", a.ID, "mfa", cleared.MFA, "api_keys", cleared.APIKeys)
	}
	s.passwordChanged(ctx, a, "reset")
	return a, nil
}

// ChangePassword sets a new password for the account signed in with
// session, if old is its password; every other session of the account
// ends, and it is told by mail. The check of old is a login attempt of
// the account from addr, within the login budgets.
func (s *Service) ChangePassword(ctx context.Context, account tenants.Account, session, old, password, addr string) error {
	if err := tenants.ValidatePassword(password); err != nil {
		return err
	}
	t, wait := s.lim.reserve(s.loginCharges(account.Email, addr)...)
	if wait > 0 {
		return waitError(wait, "too many failed attempts")
	}
	a, err := s.store.ChangePassword(ctx, account.ID, old, password, session)
	switch {
	case errors.Is(err, tenants.ErrUnauthorized):
		return errWrongPassword
	case err != nil:
		t.refund()
		return err
	}
	t.refund(loginPair, loginAccount)
	s.passwordChanged(ctx, a, "changed")
	return nil
}

func (s *Service) passwordChanged(ctx context.Context, a tenants.Account, how string) {
	s.send(ctx, mail.TemplatePasswordChanged, a.Email, map[string]any{"How": how, "When": s.now().UTC().Format("2006-01-02 15:04 UTC")})
}

// Sessions lists the account's open sessions.
func (s *Service) Sessions(ctx context.Context, account string) ([]tenants.Session, error) {
	return s.store.AccountSessions(ctx, account, s.now())
}

// EndSession ends one of the account's sessions; another's is
// ErrNotFound.
func (s *Service) EndSession(ctx context.Context, account, id string) error {
	return s.store.EndAccountSession(ctx, account, id)
}

// EndOtherSessions ends every session of the account but keep.
func (s *Service) EndOtherSessions(ctx context.Context, account, keep string) (int, error) {
	return s.store.EndOtherSessions(ctx, account, keep)
}

// ErrEmailUnverified refuses what needs a verified email: buying a plan,
// adding members.
var ErrEmailUnverified = fmt.Errorf("verify your email first: open the link we mailed you, or ask for a new one (POST /v1/verify/resend): %w", tenants.ErrForbidden)

// RequireVerified returns ErrEmailUnverified unless the account's email
// is verified (read afresh: a verification in another tab counts at once).
func (s *Service) RequireVerified(ctx context.Context, account string) error {
	a, err := s.store.Account(ctx, account)
	if err != nil {
		return err
	}
	if !a.EmailVerified {
		return ErrEmailUnverified
	}
	return nil
}

// logMailer is the mailer of a service given none: it logs what it drops.
type logMailer struct {
	log interface{ Warn(string, ...any) }
}

func (l logMailer) Send(_ context.Context, m mail.Message) error {
	l.log.Warn("mail not sent: no mailer configured", "to", m.To, "subject", m.Subject)
	return nil
}
