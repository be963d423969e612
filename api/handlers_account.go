package api

import (
	"context"
	"net/http"
	"time"

	"github.com/roosthub/roost"
	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/internal/accesslog"
	"github.com/roosthub/roost/tenants"
)

func handleHealth() handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
		return nil
	}
}

func handleReady(ready func(context.Context) error) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := ready(ctx); err != nil {
			return errorf(http.StatusServiceUnavailable, "not_ready", "not ready: the store does not answer")
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
		return nil
	}
}

func handleSpec() http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		w.Write(roost.OpenAPI)
	}
}

type sessionView struct {
	Token     string          `json:"token"`
	ExpiresAt time.Time       `json:"expires_at"`
	Account   tenants.Account `json:"account"`
}

var clientIP = accesslog.ClientIP

// handleSignup creates an account and starts a session. An email that has
// an account already answers as a login would (auth.Service.SignUp): the
// same 201 and shape with the right password, the login's 401 without.
func handleSignup(front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var in tenants.Signup
		if err := decode(r, &in); err != nil {
			return err
		}
		is, err := front.SignUp(r.Context(), in, clientIP(r))
		if err != nil {
			return err
		}
		writeIssued(w, http.StatusCreated, is)
		return nil
	}
}

type login struct {
	Email    string `json:"email"`
	Password string `json:"password"`
}

func handleLogin(front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var in login
		if err := decode(r, &in); err != nil {
			return err
		}
		is, err := front.LogIn(r.Context(), in.Email, in.Password, clientIP(r))
		if err != nil {
			return err
		}
		writeIssued(w, http.StatusOK, is)
		return nil
	}
}

// handleLogout ends the session the bearer token carries, everywhere: the
// token stops working in the API and as a console cookie.
func handleLogout(front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		p := principalFrom(r.Context())
		if p.session == "" {
			return errorf(http.StatusBadRequest, "not_a_session", "only a session token logs out; revoke an API key with DELETE /v1/tenants/{tenant}/api-keys/{id}")
		}
		if err := front.LogOut(r.Context(), auth.Bearer(r)); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}

type me struct {
	Kind    string           `json:"kind"`
	Account *tenants.Account `json:"account,omitempty"`
	APIKey  *tenants.APIKey  `json:"api_key,omitempty"`
	// Notices tell an account what others did to it lately (added it to a
	// tenant, removed it from one).
	Notices []tenants.Notice `json:"notices,omitempty"`
}

func handleMe(front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		p := principalFrom(r.Context())
		switch {
		case p.account != nil:
			ns, err := front.Notices(r.Context(), p.account.ID)
			if err != nil {
				return err
			}
			writeJSON(w, http.StatusOK, me{Kind: "account", Account: p.account, Notices: ns})
		case p.key != nil:
			writeJSON(w, http.StatusOK, me{Kind: "api_key", APIKey: p.key})
		default:
			writeJSON(w, http.StatusOK, me{Kind: "operator"})
		}
		return nil
	}
}
