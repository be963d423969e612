package api

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/tenants"
)

// The account's own routes: verify the email, forget, reset and change the
// password, see and end one's sessions (docs/accounts.md).

// accountOnly returns the calling account, or a 403 for an API key or the
// operator: these routes are a person's.
func accountOnly(r *http.Request) (*tenants.Account, string, error) {
	p := principalFrom(r.Context())
	if p.account == nil {
		return nil, "", errorf(http.StatusForbidden, "not_an_account", "only a person signed in (a session token from POST /v1/login) has a password and sessions")
	}
	return p.account, p.session, nil
}

type forgot struct {
	Email string `json:"email"`
}

// handlePasswordForgot answers 202 whether or not an account has the
// email: a reset link is mailed if one does.
func handlePasswordForgot(front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var in forgot
		if err := decode(r, &in); err != nil {
			return err
		}
		if in.Email == "" {
			return &tenants.FieldError{Field: "email", Message: "is required"}
		}
		if len(in.Email) > 254 {
			return &tenants.FieldError{Field: "email", Message: "must be at most 254 bytes"}
		}
		if err := front.ForgotPassword(r.Context(), in.Email, clientIP(r)); err != nil {
			return err
		}
		w.WriteHeader(http.StatusAccepted)
		return nil
	}
}

type reset struct {
	Token    string `json:"token"`
	Password string `json:"password"`
}

func handlePasswordReset(front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var in reset
		if err := decode(r, &in); err != nil {
			return err
		}
		_, err := front.ResetPassword(r.Context(), in.Token, in.Password, clientIP(r))
		if errors.Is(err, tenants.ErrUnauthorized) {
			return errorf(http.StatusBadRequest, "invalid_token", err.Error())
		}
		if err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}

type passwordChange struct {
	OldPassword string `json:"old_password"`
	Password    string `json:"password"`
}

// handlePasswordChange changes the caller's password: every other session
// of theirs ends; the one asking stays.
func handlePasswordChange(front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		a, session, err := accountOnly(r)
		if err != nil {
			return err
		}
		var in passwordChange
		if err := decode(r, &in); err != nil {
			return err
		}
		if err := front.ChangePassword(r.Context(), *a, session, in.OldPassword, in.Password, clientIP(r)); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}

type verify struct {
	Token    string `json:"token"`
	Password string `json:"password"`
}

// handleVerify spends a verify token. The token proves the mailbox, and
// may be opened on another device, so the route needs no sign-in; but it
// verifies only for someone who also holds the account: a bearer token of
// the account's own session (which stays), or the account's password.
// Anyone else — someone who did not choose the password of an account
// made with their email — gets 400 password_required and verifies
// nothing (docs/accounts.md).
func handleVerify(front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var in verify
		if err := decode(r, &in); err != nil {
			return err
		}
		v := auth.Verification{Token: in.Token, Password: in.Password}
		if tok := auth.Bearer(r); tok != "" && !tenants.IsAPIKey(tok) {
			// A token that is no open session of an account is as
			// good as none: the password may still be given.
			if se, err := front.AccountSession(r.Context(), tok); err == nil {
				v.Account, v.Session = se.AccountID, se.ID
			}
		}
		a, err := front.VerifyEmail(r.Context(), v, clientIP(r))
		switch {
		case errors.Is(err, tenants.ErrUnauthorized):
			return errorf(http.StatusBadRequest, "invalid_token", err.Error())
		case errors.Is(err, auth.ErrPasswordRequired):
			return &httpError{status: http.StatusBadRequest, code: "password_required", field: "password", msg: err.Error()}
		case err != nil:
			return err
		}
		writeJSON(w, http.StatusOK, a)
		return nil
	}
}

func handleVerifyResend(front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		a, _, err := accountOnly(r)
		if err != nil {
			return err
		}
		if err := front.ResendVerification(r.Context(), a.ID); err != nil {
			if errors.Is(err, tenants.ErrConflict) {
				return errorf(http.StatusConflict, "already_verified", "the email is verified already")
			}
			return err
		}
		w.WriteHeader(http.StatusAccepted)
		return nil
	}
}

// sessionItem is one of the caller's sessions; Current marks the one the
// request came with.
type sessionItem struct {
	tenants.Session
	Current bool `json:"current"`
}

func handleSessionList(front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		a, current, err := accountOnly(r)
		if err != nil {
			return err
		}
		ses, err := front.Sessions(r.Context(), a.ID)
		if err != nil {
			return err
		}
		items := make([]sessionItem, len(ses))
		for i, se := range ses {
			items[i] = sessionItem{Session: se, Current: se.ID == current}
		}
		writeJSON(w, http.StatusOK, newList(items, ""))
		return nil
	}
}

// handleSessionEnd ends one of the caller's sessions; another person's is
// 404, as if it did not exist.
func handleSessionEnd(front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		a, _, err := accountOnly(r)
		if err != nil {
			return err
		}
		id := chi.URLParam(r, "id")
		if err := front.EndSession(r.Context(), a.ID, id); err != nil {
			if errors.Is(err, tenants.ErrNotFound) {
				return errorf(http.StatusNotFound, "not_found", "session "+id+" not found")
			}
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}

type ended struct {
	Ended int `json:"ended"`
}

// handleSessionEndOthers ends every session of the caller but the one the
// request came with.
func handleSessionEndOthers(front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		a, current, err := accountOnly(r)
		if err != nil {
			return err
		}
		n, err := front.EndOtherSessions(r.Context(), a.ID, current)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, ended{Ended: n})
		return nil
	}
}

// verifiedEmail lets through only callers whose email is verified: an
// account's own, or, for an API key, that of the account it was made for.
// The operator and keys made before keys had makers pass.
func (s *Server) verifiedEmail(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := principalFrom(r.Context())
		account := ""
		switch {
		case p.impersonating:
		case p.account != nil:
			account = p.account.ID
		case p.key != nil && p.key.CreatedBy != nil:
			account = *p.key.CreatedBy
		}
		if account != "" {
			err := s.auth.RequireVerified(r.Context(), account)
			if errors.Is(err, auth.ErrEmailUnverified) {
				s.fail(w, r, errorf(http.StatusForbidden, "email_unverified", "verify your email first: open the link mailed to you, or ask for a new one with POST /v1/verify/resend"))
				return
			}
			if err != nil && !errors.Is(err, tenants.ErrNotFound) {
				s.fail(w, r, err)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

type auditFilterStore interface {
	AuditWhere(ctx context.Context, tenant string, f tenants.AuditFilter, p tenants.Page) ([]tenants.AuditEntry, string, error)
}

// handleAuditFiltered lists a tenant's audit trail, newest first,
// narrowed by ?action= (a prefix: device.), ?actor=, ?since= and ?until=
// (RFC 3339).
func handleAuditFiltered(as auditFilterStore) handler {
	return handleList(func(r *http.Request, p tenants.Page) ([]tenants.AuditEntry, string, error) {
		f, err := auditFilter(r)
		if err != nil {
			return nil, "", err
		}
		return as.AuditWhere(r.Context(), chi.URLParam(r, "tenant"), f, p)
	})
}

func auditFilter(r *http.Request) (tenants.AuditFilter, error) {
	q := r.URL.Query()
	f := tenants.AuditFilter{Action: q.Get("action"), Actor: q.Get("actor")}
	if len(f.Action) > 100 {
		return f, &tenants.FieldError{Field: "action", Message: "must be at most 100 characters"}
	}
	if len(f.Actor) > 200 {
		return f, &tenants.FieldError{Field: "actor", Message: "must be at most 200 characters"}
	}
	for _, tm := range []struct {
		name string
		dst  *time.Time
	}{{"since", &f.Since}, {"until", &f.Until}} {
		if v := q.Get(tm.name); v != "" {
			t, err := time.Parse(time.RFC3339, v)
			if err != nil {
				return f, &tenants.FieldError{Field: tm.name, Message: "must be an RFC 3339 time like 2026-12-01T00:00:00Z"}
			}
			*tm.dst = t
		}
	}
	return f, nil
}

// withOrigin notes the client's address and user agent in the request's
// context, for the session a sign-in starts (GET /v1/sessions shows them).
func withOrigin(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(w, r.WithContext(tenants.WithOrigin(r.Context(), clientIP(r), r.UserAgent())))
	})
}
