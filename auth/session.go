package auth

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/roosthub/roost/tenants"
)

// Subjects of the tokens that are not an account's.
const (
	operatorSubject      = "operator"
	impersonationSubject = "impersonate:"
)

// errNoSession answers a token that names no open session.
var errNoSession = fmt.Errorf("the session token is not valid, has expired or was ended; log in again: %w", tenants.ErrUnauthorized)

// start records a session and signs its token.
func (s *Service) start(ctx context.Context, kind tenants.SessionKind, subject, account, tenant string, ttl time.Duration) (Issued, error) {
	exp := s.now().Add(ttl)
	se, err := s.store.CreateSession(ctx, kind, account, tenant, exp)
	if err != nil {
		return Issued{}, err
	}
	token, err := s.tokens.Issue(subject, se.ID, exp)
	if err != nil {
		return Issued{}, err
	}
	return Issued{Token: token, ExpiresAt: exp.UTC().Truncate(time.Second), Session: se}, nil
}

// Session returns the open session a token carries, of any kind, or an
// ErrUnauthorized. The token's signature and expiry are checked first, then
// its session record: a session that was ended no longer works, wherever
// its token is used.
func (s *Service) Session(ctx context.Context, token string) (tenants.Session, error) {
	c, err := s.tokens.Parse(token)
	if err != nil {
		return tenants.Session{}, errNoSession
	}
	se, err := s.store.Session(ctx, c.SessionID, s.now())
	if err != nil {
		if errors.Is(err, tenants.ErrUnauthorized) {
			return tenants.Session{}, errNoSession
		}
		return tenants.Session{}, err
	}
	var want string
	switch se.Kind {
	case tenants.SessionAccount:
		want = se.AccountID
	case tenants.SessionOperator:
		want = operatorSubject
	case tenants.SessionImpersonation:
		want = impersonationSubject + se.Tenant
	}
	if c.Subject != want {
		return tenants.Session{}, errNoSession
	}
	return se, nil
}

// AccountSession returns the open account session a token carries.
func (s *Service) AccountSession(ctx context.Context, token string) (tenants.Session, error) {
	return s.sessionOf(ctx, token, tenants.SessionAccount)
}

// OperatorSession returns the open operator session a token carries.
func (s *Service) OperatorSession(ctx context.Context, token string) (tenants.Session, error) {
	return s.sessionOf(ctx, token, tenants.SessionOperator)
}

func (s *Service) sessionOf(ctx context.Context, token string, kind tenants.SessionKind) (tenants.Session, error) {
	se, err := s.Session(ctx, token)
	if err != nil {
		return se, err
	}
	if se.Kind != kind {
		return tenants.Session{}, errNoSession
	}
	return se, nil
}

// LogOut ends the session a token carries, everywhere: the token stops
// working as a cookie and as a bearer token at once. A token that names no
// session is no error: there is nothing to end.
func (s *Service) LogOut(ctx context.Context, token string) error {
	c, err := s.tokens.Parse(token)
	if err != nil {
		return nil
	}
	return s.store.EndSession(ctx, c.SessionID)
}

// Impersonate audits the operator's reason and starts a 15-minute session
// acting as an owner of tenant. Every change made with it is audited as
// operator(impersonating); the session ends at its expiry or when its
// token logs out.
func (s *Service) Impersonate(ctx context.Context, tenant, reason string) (Issued, error) {
	if err := s.store.AuditImpersonation(ctx, tenant, reason); err != nil {
		return Issued{}, err
	}
	return s.start(ctx, tenants.SessionImpersonation, impersonationSubject+tenant, "", tenant, ImpersonationTTL)
}

// OperatorLogIn starts an operator session for the console if presented is
// the operator token (Operator.Check: failures are throttled per address).
func (s *Service) OperatorLogIn(ctx context.Context, presented, addr string) (Issued, error) {
	if err := s.operator.Check(presented, addr); err != nil {
		return Issued{}, err
	}
	return s.start(ctx, tenants.SessionOperator, operatorSubject, "", "", s.ttl)
}
