package api

import (
	"context"
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/tenants"
)

// principal is who is calling: an account (console session token), an API
// key (scoped to one tenant) or the operator.
type principal struct {
	account  *tenants.Account
	key      *tenants.APIKey
	operator bool
	// impersonating: the operator, acting as an owner of key.Tenant.
	impersonating bool
}

// impersonationSubject starts the subject of an impersonation token; the
// tenant follows. Account ids never contain a colon.
const impersonationSubject = "impersonate:"

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
		ctx := context.WithValue(r.Context(), principalKey{}, p)
		if info, ok := ctx.Value(requestInfoKey{}).(*requestInfo); ok {
			info.actor = p.actor()
		}
		next.ServeHTTP(w, r.WithContext(tenants.WithActor(ctx, p.actor())))
	})
}

func (s *Server) principal(r *http.Request) (principal, error) {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return principal{}, errNoToken
	}
	switch {
	case subtle.ConstantTimeCompare([]byte(token), []byte(s.adminToken)) == 1:
		return principal{operator: true}, nil
	case tenants.IsAPIKey(token):
		k, err := s.store.AuthenticateAPIKey(r.Context(), token)
		if err != nil {
			return principal{}, unauthorized(err, "the API key is not valid")
		}
		return principal{key: &k}, nil
	}
	id, err := s.tokens.Parse(token)
	if err != nil {
		return principal{}, errorf(http.StatusUnauthorized, "unauthorized", "the session token is not valid or has expired; log in again")
	}
	if tenant, ok := strings.CutPrefix(id, impersonationSubject); ok {
		return principal{key: &tenants.APIKey{ID: "impersonation", Tenant: tenant, Role: tenants.RoleOwner, Name: "operator impersonation"}, impersonating: true}, nil
	}
	a, err := s.store.Account(r.Context(), id)
	if err != nil {
		return principal{}, unauthorized(err, "the session's account no longer exists")
	}
	return principal{account: &a}, nil
}

// unauthorized maps a lookup failure to 401, keeping real failures internal.
func unauthorized(err error, msg string) error {
	if errors.Is(err, tenants.ErrUnauthorized) || errors.Is(err, tenants.ErrNotFound) {
		return errorf(http.StatusUnauthorized, "unauthorized", msg)
	}
	return err
}

// onlyOperator guards /v1/admin/*.
func (s *Server) onlyOperator(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !principalFrom(r.Context()).operator {
			s.fail(w, r, errorf(http.StatusForbidden, "forbidden", "this route needs the operator token"))
			return
		}
		next.ServeHTTP(w, r)
	})
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
