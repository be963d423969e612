package web

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/tenants"
)

// ssoCookie carries a single sign-on's sealed state (state, nonce, PKCE
// verifier) from leaving for the issuer to coming back. It is Lax: the
// issuer sends the browser back with a top-level GET from its own site.
const ssoCookie = "roost_sso"

// base is the URL the console was reached at, for the callback when no
// public URL is set.
func (c *Console) base(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil || c.cfg.SecureCookies {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

// ssoStart sends the browser to the issuer (a GET: a link on the login
// page; starting a sign-in changes nothing here).
func (c *Console) ssoStart(w http.ResponseWriter, r *http.Request) {
	name := chi.URLParam(r, "issuer")
	to, sealed, err := c.auth.SSOStart(r.Context(), name, c.auth.SSORedirectURL(name, c.base(r)), safeNext(r.URL.Query().Get("next")))
	if err != nil {
		c.ssoFailed(w, r, err)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: ssoCookie, Value: sealed, Path: "/login/sso/", HttpOnly: true, Secure: c.cfg.SecureCookies,
		SameSite: http.SameSiteLaxMode, MaxAge: int((10 * time.Minute) / time.Second)})
	http.Redirect(w, r, to, http.StatusSeeOther)
}

// ssoCallback is where the issuer sends the browser back.
func (c *Console) ssoCallback(w http.ResponseWriter, r *http.Request) {
	name := chi.URLParam(r, "issuer")
	ck, err := r.Cookie(ssoCookie)
	sealed := ""
	if err == nil {
		sealed = ck.Value
	}
	// The state is used up, whatever happens next.
	http.SetCookie(w, &http.Cookie{Name: ssoCookie, Value: "", Path: "/login/sso/", HttpOnly: true, Secure: c.cfg.SecureCookies, MaxAge: -1})
	q := r.URL.Query()
	if e := q.Get("error"); e != "" {
		if len(e) > 64 {
			e = e[:64]
		}
		c.ssoFailed(w, r, fmt.Errorf("the sign-in service answered %q: %w", e, tenants.ErrUnauthorized))
		return
	}
	is, next, err := c.auth.SSOFinish(r.Context(), name, c.auth.SSORedirectURL(name, c.base(r)), sealed, q.Get("state"), q.Get("code"))
	if err != nil {
		c.ssoFailed(w, r, err)
		return
	}
	c.signedInOrChallenge(w, r, is, next)
}

// ssoFailed shows the login page with what went wrong.
func (c *Console) ssoFailed(w http.ResponseWriter, r *http.Request, err error) {
	p := page{Title: "Log in", Form: map[string]string{"next": "/"}}
	status := http.StatusUnauthorized
	switch {
	case errors.Is(err, tenants.ErrNotFound):
		c.notFound(w, r)
		return
	case errors.Is(err, tenants.ErrForbidden):
		status = http.StatusForbidden
		p.Errors = map[string]string{"_": capital(err.Error()) + "."}
	case errors.Is(err, tenants.ErrUnavailable):
		status = http.StatusServiceUnavailable
		p.Errors = map[string]string{"_": capital(err.Error()) + "."}
	case errors.Is(err, tenants.ErrUnauthorized), errors.Is(err, tenants.ErrConflict):
		p.Errors = map[string]string{"_": capital(err.Error()) + "."}
	default:
		c.fail(w, r, err)
		return
	}
	c.render(w, r, status, "login.html", p)
}
