package api

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/roosthub/roost"
	"github.com/roosthub/roost/internal/accesslog"
	"github.com/roosthub/roost/internal/session"
	"github.com/roosthub/roost/internal/throttle"
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

type accountStore interface {
	CreateAccount(ctx context.Context, in tenants.Signup) (tenants.Account, error)
	Authenticate(ctx context.Context, email, password string) (tenants.Account, error)
}

type sessionView struct {
	Token     string          `json:"token"`
	ExpiresAt time.Time       `json:"expires_at"`
	Account   tenants.Account `json:"account"`
}

var clientIP = accesslog.ClientIP

func tooManyAttempts(wait time.Duration) error {
	secs := int(math.Ceil(wait.Seconds()))
	return &httpError{status: http.StatusTooManyRequests, code: "too_many_attempts", retryAfter: fmt.Sprint(secs),
		msg: fmt.Sprintf("too many failed attempts; try again in %d seconds", secs)}
}

func handleSignup(accounts accountStore, tok session.Tokens, perIP *throttle.Limiter) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var in tenants.Signup
		if err := decode(r, &in); err != nil {
			return err
		}
		// Each signup hashes a password and may probe whether an email has
		// an account; the per-address limit bounds both.
		ip := clientIP(r)
		if wait := perIP.Wait(ip); wait > 0 {
			return tooManyAttempts(wait)
		}
		perIP.Count(ip)
		a, err := accounts.CreateAccount(r.Context(), in)
		if err != nil {
			return err
		}
		token, exp, err := tok.Issue(a.ID)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusCreated, sessionView{Token: token, ExpiresAt: exp, Account: a})
		return nil
	}
}

type login struct {
	Email    string `json:"email"`
	Password string `json:"password"`
}

func handleLogin(accounts accountStore, tok session.Tokens, perAccount, perIP *throttle.Limiter) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var in login
		if err := decode(r, &in); err != nil {
			return err
		}
		acct := strings.ToLower(strings.TrimSpace(in.Email))
		ip := clientIP(r)
		if wait := max(perAccount.Wait(acct), perIP.Wait(ip)); wait > 0 {
			return tooManyAttempts(wait)
		}
		a, err := accounts.Authenticate(r.Context(), in.Email, in.Password)
		if errors.Is(err, tenants.ErrUnauthorized) {
			perAccount.Count(acct)
			perIP.Count(ip)
			return errorf(http.StatusUnauthorized, "unauthorized", "wrong email or password")
		}
		if err != nil {
			return err
		}
		perAccount.Reset(acct)
		perIP.Reset(ip)
		token, exp, err := tok.Issue(a.ID)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, sessionView{Token: token, ExpiresAt: exp, Account: a})
		return nil
	}
}

type me struct {
	Kind    string           `json:"kind"`
	Account *tenants.Account `json:"account,omitempty"`
	APIKey  *tenants.APIKey  `json:"api_key,omitempty"`
}

func handleMe() handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		p := principalFrom(r.Context())
		switch {
		case p.account != nil:
			writeJSON(w, http.StatusOK, me{Kind: "account", Account: p.account})
		case p.key != nil:
			writeJSON(w, http.StatusOK, me{Kind: "api_key", APIKey: p.key})
		default:
			writeJSON(w, http.StatusOK, me{Kind: "operator"})
		}
		return nil
	}
}
