package api

import (
	"context"
	"errors"
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/tenants"
)

// principal is who is calling: an account (a session token), an API key
// (scoped to one tenant) or the operator.
type principal struct {
	account  *tenants.Account
	key      *tenants.APIKey
	operator bool
	// impersonating: the operator, acting as an owner of key.Tenant.
	impersonating bool
	// session is the session the token carries, for logout; empty for API
	// keys and the operator token.
	session string
}

// actor names the principal in the audit log.
func (p principal) actor() string {
	switch {
	case p.impersonating:
		return "operator(impersonating)"
	case p.account != nil:
		return "account:" + p.account.ID
	case p.key != nil:
		return "api_key:" + p.key.ID
	default:
		return "operator"
	}
}

// by is the principal as the membership rules see it, with role its role
// in the tenant at hand.
func (p principal) by(role tenants.Role) tenants.By {
	switch {
	case p.impersonating:
		return tenants.By{Role: role, Name: "the operator"}
	case p.account != nil:
		return tenants.By{Role: role, Account: p.account.ID, Name: p.account.Email}
	case p.key != nil:
		return tenants.By{Role: role, Name: "API key " + p.key.Prefix}
	}
	return tenants.By{Role: role, Name: "the operator"}
}

// creator is the account on whose behalf the principal makes an API key:
// its own, or the one behind the key that makes it.
func (p principal) creator() string {
	switch {
	case p.account != nil:
		return p.account.ID
	case p.key != nil && p.key.CreatedBy != nil:
		return *p.key.CreatedBy
	}
	return ""
}

type principalKey struct{}

func principalFrom(ctx context.Context) principal {
	p, _ := ctx.Value(principalKey{}).(principal)
	return p
}

var errNoToken = &httpError{status: http.StatusUnauthorized, code: "unauthorized", msg: "send a bearer token: a session token from POST /v1/login, or an API key"}

// authenticate resolves the bearer token into a principal, or answers 401.
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := s.principal(r)
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="roost"`)
			s.fail(w, r, err)
			return
		}
		s.serveAs(w, r, p, next)
	})
}

func (s *Server) serveAs(w http.ResponseWriter, r *http.Request, p principal, next http.Handler) {
	ctx := context.WithValue(r.Context(), principalKey{}, p)
	if info, ok := ctx.Value(requestInfoKey{}).(*requestInfo); ok {
		info.actor = p.actor()
	}
	next.ServeHTTP(w, r.WithContext(tenants.WithActor(ctx, p.actor())))
}

// principal resolves a request's bearer token: the operator token, an API
// key, or a token of an open session (an account's or an impersonation;
// the console's operator sessions are not for the API).
func (s *Server) principal(r *http.Request) (principal, error) {
	token := auth.Bearer(r)
	switch {
	case token == "":
		return principal{}, errNoToken
	case s.auth.Operator().Is(token):
		return principal{operator: true}, nil
	case tenants.IsAPIKey(token):
		k, err := s.store.AuthenticateAPIKey(r.Context(), token)
		if err != nil {
			return principal{}, unauthorized(err, "the API key is not valid")
		}
		return principal{key: &k}, nil
	}
	se, err := s.auth.Session(r.Context(), token)
	if err != nil {
		return principal{}, err
	}
	switch se.Kind {
	case tenants.SessionAccount:
		return principal{account: &se.Account, session: se.ID}, nil
	case tenants.SessionImpersonation:
		return principal{key: &tenants.APIKey{ID: "impersonation", Tenant: se.Tenant, Role: tenants.RoleOwner, Name: "operator impersonation"},
			impersonating: true, session: se.ID}, nil
	}
	return principal{}, errorf(http.StatusUnauthorized, "unauthorized", "the session token is not valid, has expired or was ended; log in again")
}

// unauthorized maps a lookup failure to 401, keeping real failures internal.
func unauthorized(err error, msg string) error {
	if errors.Is(err, tenants.ErrUnauthorized) || errors.Is(err, tenants.ErrNotFound) {
		return errorf(http.StatusUnauthorized, "unauthorized", msg)
	}
	return err
}

// onlyOperator guards /v1/admin/* and /metrics. The operator token is
// compared first and always passes. A valid session or API key is 403: it
// is no guess at the operator token. Anything else is a wrong operator
// token, counted per address: past the budget it is answered 429.
func (s *Server) onlyOperator(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		op := s.auth.Operator()
		token := auth.Bearer(r)
		if op.Is(token) {
			s.serveAs(w, r, principal{operator: true}, next)
			return
		}
		if token == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="roost"`)
			s.fail(w, r, errNoToken)
			return
		}
		_, err := s.principal(r)
		switch {
		case err == nil:
			s.fail(w, r, errorf(http.StatusForbidden, "forbidden", "this route needs the operator token"))
			return
		case !errors.Is(err, tenants.ErrUnauthorized) && !isHTTPStatus(err, http.StatusUnauthorized):
			s.fail(w, r, err)
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="roost"`)
		s.fail(w, r, op.Fail(clientIP(r)))
	})
}

func isHTTPStatus(err error, status int) bool {
	var he *httpError
	return errors.As(err, &he) && he.status == status
}

type roleKey struct{}

func roleFrom(ctx context.Context) tenants.Role {
	r, _ := ctx.Value(roleKey{}).(tenants.Role)
	return r
}

// tenantAccess finds the caller's role in the {tenant} of the path. A caller
// with no role there gets 404, exactly as if the tenant did not exist, so
// nothing outside a tenant can learn what is in it.
func (s *Server) tenantAccess(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		slug := chi.URLParam(r, "tenant")
		p := principalFrom(r.Context())
		var role tenants.Role
		switch {
		case p.key != nil:
			if p.key.Tenant == slug {
				role = p.key.Role
			}
		case p.account != nil:
			m, err := s.store.Membership(r.Context(), slug, p.account.ID)
			if err != nil && !errors.Is(err, tenants.ErrNotFound) {
				s.fail(w, r, err)
				return
			}
			role = m.Role
		}
		if role == "" {
			s.fail(w, r, errorf(http.StatusNotFound, "not_found", "tenant "+slug+" not found"))
			return
		}
		// A tenant that requires two-factor sign-in refuses its members
		// who have not turned it on (403 mfa_required); API keys are the
		// tenant's own and pass.
		if p.account != nil {
			if err := s.store.MFAGate(r.Context(), slug, p.account.ID); err != nil {
				s.fail(w, r, err)
				return
			}
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), roleKey{}, role)))
	})
}

// need lets only callers with at least role min through. It runs after
// tenantAccess, so a caller who gets here can already see the tenant and
// learns nothing from a 403.
func (s *Server) need(min tenants.Role) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !roleFrom(r.Context()).AtLeast(min) {
				s.fail(w, r, errorf(http.StatusForbidden, "forbidden", "this needs the "+string(min)+" role in the tenant"))
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}
