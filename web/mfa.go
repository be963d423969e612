package web

import (
	"context"
	"encoding/base64"
	"errors"
	"html/template"
	"net/http"
	"strings"

	qrcode "github.com/skip2/go-qrcode"

	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/internal/problem"
	"github.com/roosthub/roost/tenants"
)

// signedInOrChallenge finishes a password (or single sign-on) sign-in: the
// session, or for an account with two-factor on, the page asking for a
// code.
func (c *Console) signedInOrChallenge(w http.ResponseWriter, r *http.Request, is auth.Issued, next string) {
	if is.MFAToken == "" {
		c.startSession(w, r, is, next)
		return
	}
	c.render(w, r, http.StatusOK, "login_mfa.html", page{Title: "Two-factor sign-in",
		Form: map[string]string{"mfa_token": is.MFAToken, "next": safeNext(next)}})
}

// loginMFA completes a sign-in with a TOTP code or a recovery code,
// throttled with the password attempts (the auth front's budgets).
func (c *Console) loginMFA(w http.ResponseWriter, r *http.Request) {
	token, next := r.PostFormValue("mfa_token"), safeNext(r.PostFormValue("next"))
	p := page{Title: "Two-factor sign-in", Form: map[string]string{"mfa_token": token, "next": next}}
	is, err := c.auth.CompleteMFA(r.Context(), token, r.PostFormValue("code"), clientIP(r))
	switch {
	case err == nil:
		c.startSession(w, r, is, next)
	case errors.Is(err, tenants.ErrThrottled):
		p.Errors = map[string]string{"_": capital(err.Error()) + "."}
		c.renderRetry(w, r, err, "login_mfa.html", p)
	case errors.Is(err, auth.ErrBadCode):
		p.Errors = map[string]string{"code": "That code is wrong or was used already."}
		c.render(w, r, http.StatusUnauthorized, "login_mfa.html", p)
	case errors.Is(err, tenants.ErrUnauthorized):
		p.Form["mfa_token"] = ""
		p.Errors = map[string]string{"_": "This sign-in has expired. Log in again."}
		c.render(w, r, http.StatusUnauthorized, "login_mfa.html", p)
	default:
		c.fail(w, r, err)
	}
}

// twoFactorData is what the two-factor page shows: the state, a secret
// being set up (with its QR code), or recovery codes (this once).
type twoFactorData struct {
	Status auth.MFAStatus
	Setup  *auth.MFASetup
	QR     template.URL
	Codes  []string
}

func (c *Console) twoFactorPage(w http.ResponseWriter, r *http.Request) {
	c.renderTwoFactor(w, r, http.StatusOK, twoFactorData{}, nil)
}

func (c *Console) renderTwoFactor(w http.ResponseWriter, r *http.Request, status int, d twoFactorData, errs map[string]string) {
	st, err := c.auth.MFAStatus(r.Context(), accountOf(r).ID)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	d.Status = st
	c.render(w, r, status, "two_factor.html", page{Title: "Two-factor sign-in", Data: d, Errors: errs})
}

// twoFactorSetup makes a new secret and shows it with its QR code, drawn
// here (a PNG in a data: URL): the secret never leaves for a QR service.
func (c *Console) twoFactorSetup(w http.ResponseWriter, r *http.Request) {
	setup, err := c.auth.SetUpMFA(r.Context(), *accountOf(r))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	c.showSetup(w, r, http.StatusOK, setup, nil)
}

func (c *Console) showSetup(w http.ResponseWriter, r *http.Request, status int, setup auth.MFASetup, errs map[string]string) {
	png, err := qrcode.Encode(setup.URL, qrcode.Medium, 256)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	qr := template.URL("data:image/png;base64," + base64.StdEncoding.EncodeToString(png))
	c.renderTwoFactor(w, r, status, twoFactorData{Setup: &setup, QR: qr}, errs)
}

// twoFactorEnable turns two-factor on with a code and shows the recovery
// codes, once.
func (c *Console) twoFactorEnable(w http.ResponseWriter, r *http.Request) {
	codes, err := c.auth.EnableMFA(r.Context(), *accountOf(r), strings.TrimSpace(r.PostFormValue("code")), clientIP(r))
	if err != nil {
		c.twoFactorFailed(w, r, err)
		return
	}
	c.renderTwoFactor(w, r, http.StatusOK, twoFactorData{Codes: codes}, nil)
}

func (c *Console) twoFactorDisable(w http.ResponseWriter, r *http.Request) {
	if err := c.auth.DisableMFA(r.Context(), *accountOf(r), r.PostFormValue("code"), clientIP(r)); err != nil {
		c.twoFactorFailed(w, r, err)
		return
	}
	http.Redirect(w, r, "/account/two-factor?done=mfa-off", http.StatusSeeOther)
}

func (c *Console) twoFactorCodes(w http.ResponseWriter, r *http.Request) {
	codes, err := c.auth.NewRecoveryCodes(r.Context(), *accountOf(r), r.PostFormValue("code"), clientIP(r))
	if err != nil {
		c.twoFactorFailed(w, r, err)
		return
	}
	c.renderTwoFactor(w, r, http.StatusOK, twoFactorData{Codes: codes}, nil)
}

// twoFactorFailed shows the two-factor page again with what went wrong.
func (c *Console) twoFactorFailed(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, tenants.ErrThrottled):
		if ra := problem.Of(err).RetryAfter; ra != "" {
			w.Header().Set("Retry-After", ra)
		}
		c.renderTwoFactor(w, r, http.StatusTooManyRequests, twoFactorData{}, map[string]string{"_": capital(err.Error()) + "."})
	case errors.Is(err, auth.ErrBadCode):
		c.renderTwoFactor(w, r, http.StatusUnauthorized, twoFactorData{}, map[string]string{"code": "That code is wrong or was used already."})
	case errors.Is(err, tenants.ErrConflict):
		c.renderTwoFactor(w, r, http.StatusConflict, twoFactorData{}, map[string]string{"_": capital(err.Error()) + "."})
	default:
		c.fail(w, r, err)
	}
}

// mfaGate refuses a tenant's pages to a member without two-factor sign-in
// when the tenant requires it, pointing them to where to turn it on.
func (c *Console) mfaGate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t := tenantOf(r)
		err := c.store.MFAGate(r.Context(), t.Slug, accountOf(r).ID)
		if errors.Is(err, tenants.ErrMFARequired) {
			// Without the tenant's menu: every page of it is closed.
			r = r.WithContext(context.WithValue(r.Context(), keyTenant, (*tenants.Tenant)(nil)))
			c.render(w, r, http.StatusForbidden, "error.html", page{Title: "Two-factor sign-in required",
				Data: errorData{Message: t.Name + " requires two-factor sign-in of its members. Turn it on for your account to continue.",
					Back: "/account/two-factor", BackLabel: "Turn on two-factor sign-in"}})
			return
		}
		if err != nil {
			c.internal(w, r, err)
			return
		}
		next.ServeHTTP(w, r)
	})
}
