package api

import (
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/tenants"
)

// mfaChallenge is a login's answer for an account with two-factor sign-in
// on: no session yet, a token POST /v1/login/mfa exchanges with a code.
type mfaChallenge struct {
	MFARequired bool      `json:"mfa_required"`
	MFAToken    string    `json:"mfa_token"`
	ExpiresAt   time.Time `json:"expires_at"`
}

// writeIssued answers a sign-in: the session with status, or, for an
// account with two-factor sign-in on, the challenge (200).
func writeIssued(w http.ResponseWriter, status int, is auth.Issued) {
	if is.MFAToken != "" {
		writeJSON(w, http.StatusOK, mfaChallenge{MFARequired: true, MFAToken: is.MFAToken, ExpiresAt: is.ExpiresAt})
		return
	}
	writeJSON(w, status, sessionView{Token: is.Token, ExpiresAt: is.ExpiresAt, Account: is.Account})
}

type mfaLogin struct {
	MFAToken string `json:"mfa_token"`
	Code     string `json:"code"`
}

// handleLoginMFA completes a login with the second factor: a TOTP code or
// a recovery code, throttled with the password attempts.
func handleLoginMFA(front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var in mfaLogin
		if err := decode(r, &in); err != nil {
			return err
		}
		is, err := front.CompleteMFA(r.Context(), in.MFAToken, in.Code, clientIP(r))
		if err != nil {
			return err
		}
		writeIssued(w, http.StatusOK, is)
		return nil
	}
}

// onlyAccount is the account of the caller, or a 403 for an API key or the
// operator: two-factor sign-in belongs to a person.
func onlyAccount(r *http.Request) (*tenants.Account, error) {
	p := principalFrom(r.Context())
	if p.account == nil {
		return nil, errorf(http.StatusForbidden, "forbidden", "two-factor sign-in belongs to an account; call this with a session token")
	}
	return p.account, nil
}

func handleMFAGet(front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		a, err := onlyAccount(r)
		if err != nil {
			return err
		}
		st, err := front.MFAStatus(r.Context(), a.ID)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, st)
		return nil
	}
}

// handleMFASetup makes a new TOTP secret, shown this once; it is in force
// only once POST /v1/me/mfa/enable confirms a code from it.
func handleMFASetup(front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		a, err := onlyAccount(r)
		if err != nil {
			return err
		}
		setup, err := front.SetUpMFA(r.Context(), *a)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusCreated, setup)
		return nil
	}
}

type mfaCode struct {
	Code string `json:"code"`
}

type recoveryCodes struct {
	RecoveryCodes []string `json:"recovery_codes"`
}

func handleMFAEnable(front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		a, err := onlyAccount(r)
		if err != nil {
			return err
		}
		var in mfaCode
		if err := decode(r, &in); err != nil {
			return err
		}
		codes, err := front.EnableMFA(r.Context(), *a, in.Code, clientIP(r))
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, recoveryCodes{codes})
		return nil
	}
}

func handleMFADisable(front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		a, err := onlyAccount(r)
		if err != nil {
			return err
		}
		var in mfaCode
		if err := decode(r, &in); err != nil {
			return err
		}
		if err := front.DisableMFA(r.Context(), *a, in.Code, clientIP(r)); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}

func handleMFARecoveryCodes(front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		a, err := onlyAccount(r)
		if err != nil {
			return err
		}
		var in mfaCode
		if err := decode(r, &in); err != nil {
			return err
		}
		codes, err := front.NewRecoveryCodes(r.Context(), *a, in.Code, clientIP(r))
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, recoveryCodes{codes})
		return nil
	}
}

// tenantMFA is a tenant's two-factor requirement.
type tenantMFA struct {
	Required *bool `json:"required"`
}

func handleTenantMFAGet(front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		on, err := front.TenantMFA(r.Context(), chi.URLParam(r, "tenant"))
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, tenantMFA{Required: &on})
		return nil
	}
}

// handleTenantMFASet requires two-factor sign-in of every member, or stops
// requiring it (owners only; an owner requiring it must have it on).
func handleTenantMFASet(front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var in tenantMFA
		if err := decode(r, &in); err != nil {
			return err
		}
		if in.Required == nil {
			return &tenants.FieldError{Field: "required", Message: "is required (true or false)"}
		}
		p := principalFrom(r.Context())
		if err := front.SetTenantMFA(r.Context(), chi.URLParam(r, "tenant"), p.by(roleFrom(r.Context())), *in.Required); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, in)
		return nil
	}
}
