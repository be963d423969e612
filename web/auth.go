package web

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"unicode"

	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/internal/accesslog"
	"github.com/roosthub/roost/internal/problem"
	"github.com/roosthub/roost/tenants"
)

// home sends a visitor to the first of their tenants, to create one, or to
// log in.
func (c *Console) home(w http.ResponseWriter, r *http.Request) {
	a, ok := c.account(r)
	if !ok {
		http.Redirect(w, r, "/login", http.StatusSeeOther)
		return
	}
	ts, _, err := c.store.TenantsOf(r.Context(), a.ID, tenants.Page{Limit: 1})
	if err != nil {
		c.internal(w, r, err)
		return
	}
	if len(ts) == 0 {
		http.Redirect(w, r, "/tenants", http.StatusSeeOther)
		return
	}
	http.Redirect(w, r, "/tenants/"+ts[0].Slug, http.StatusSeeOther)
}

// safeNext keeps a post-login destination inside the console: it must be
// a plain local path. It starts with one "/" (not "//" or "/\"); it holds
// no backslash and no control or space character, neither as sent nor
// once its percent-escapes are decoded (browsers drop a tab or newline
// and would read "/\t/evil.example" as "//evil.example"); and it names no
// scheme, host or user. Anything else goes to "/".
func safeNext(next string) string {
	const home = "/"
	if !localPath(next) {
		return home
	}
	for s := next; strings.Contains(s, "%"); {
		d, err := url.PathUnescape(s)
		if err != nil || !localPath(d) {
			return home
		}
		if d == s {
			break
		}
		s = d
	}
	u, err := url.Parse(next)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || u.Opaque != "" || !strings.HasPrefix(u.Path, "/") {
		return home
	}
	return next
}

// localPath checks the shape of one decoding of a next path.
func localPath(s string) bool {
	if !strings.HasPrefix(s, "/") || strings.HasPrefix(s, "//") || strings.ContainsRune(s, '\\') {
		return false
	}
	for _, r := range s {
		if unicode.IsControl(r) || unicode.IsSpace(r) || r == unicode.ReplacementChar {
			return false
		}
	}
	return true
}

var clientIP = accesslog.ClientIP

func (c *Console) signupPage(w http.ResponseWriter, r *http.Request) {
	c.render(w, r, http.StatusOK, "signup.html", page{Title: "Sign up"})
}

// signup creates an account through the auth front the API uses too: the
// same throttles, and the same answer for an email that has an account (a
// session if the password is its own; otherwise one neutral refusal).
func (c *Console) signup(w http.ResponseWriter, r *http.Request) {
	email, password := strings.TrimSpace(r.PostFormValue("email")), r.PostFormValue("password")
	p := page{Title: "Sign up", Form: map[string]string{"email": email}}
	if password != r.PostFormValue("password2") {
		p.Errors = map[string]string{"password2": "The two passwords differ."}
		c.render(w, r, http.StatusBadRequest, "signup.html", p)
		return
	}
	is, err := c.auth.SignUp(r.Context(), tenants.Signup{Email: email, Password: password}, clientIP(r))
	switch {
	case err == nil:
		c.signedInOrChallenge(w, r, is, "/tenants")
	case errors.Is(err, tenants.ErrThrottled):
		p.Errors = map[string]string{"_": capital(err.Error()) + "."}
		c.renderRetry(w, r, err, "signup.html", p)
	case errors.Is(err, tenants.ErrUnauthorized):
		p.Errors = map[string]string{"_": "Could not sign up with this email and password. If you already have an account, log in."}
		c.render(w, r, http.StatusUnauthorized, "signup.html", p)
	case errors.Is(err, tenants.ErrInvalid):
		p.Errors = formErrors(err)
		c.render(w, r, http.StatusBadRequest, "signup.html", p)
	default:
		c.fail(w, r, err)
	}
}

func (c *Console) startSession(w http.ResponseWriter, r *http.Request, is auth.Issued, next string) {
	c.setCookie(w, sessionCookie, is.Token, c.auth.TokenTTL(), http.SameSiteLaxMode)
	http.Redirect(w, r, safeNext(next), http.StatusSeeOther)
}

// renderRetry renders a page refusing a throttled attempt: 429 with
// Retry-After.
func (c *Console) renderRetry(w http.ResponseWriter, r *http.Request, err error, name string, p page) {
	if ra := problem.Of(err).RetryAfter; ra != "" {
		w.Header().Set("Retry-After", ra)
	}
	c.render(w, r, http.StatusTooManyRequests, name, p)
}

func capital(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	c.render(w, r, http.StatusOK, "login.html", page{Title: "Log in", Form: map[string]string{"next": safeNext(r.URL.Query().Get("next"))}})
}

// login signs in through the auth front: the API's logins and the
// console's spend one budget.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	email := strings.ToLower(strings.TrimSpace(r.PostFormValue("email")))
	next := safeNext(r.PostFormValue("next"))
	p := page{Title: "Log in", Form: map[string]string{"email": email, "next": next}}
	is, err := c.auth.LogIn(r.Context(), email, r.PostFormValue("password"), clientIP(r))
	switch {
	case err == nil:
		c.signedInOrChallenge(w, r, is, next)
	case errors.Is(err, tenants.ErrThrottled):
		p.Errors = map[string]string{"_": capital(err.Error()) + "."}
		c.renderRetry(w, r, err, "login.html", p)
	case errors.Is(err, tenants.ErrUnauthorized):
		p.Errors = map[string]string{"password": "Wrong email or password."}
		c.render(w, r, http.StatusUnauthorized, "login.html", p)
	default:
		c.fail(w, r, err)
	}
}

// logout ends the session everywhere (its token no longer works as a
// cookie or an API bearer token) and drops the cookie.
func (c *Console) logout(w http.ResponseWriter, r *http.Request) {
	if ck, err := c.cookie(r, sessionCookie); err == nil {
		if err := c.auth.LogOut(r.Context(), ck.Value); err != nil {
			c.fail(w, r, err)
			return
		}
	}
	c.clearCookie(w, sessionCookie)
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

func (c *Console) operatorLoginPage(w http.ResponseWriter, r *http.Request) {
	c.render(w, r, http.StatusOK, "admin_login.html", page{Title: "Operator"})
}

// operatorLogin starts an operator session. The token is checked by the
// auth front's operator check: the right one always passes, wrong ones are
// throttled per address, shared with the API's admin routes.
func (c *Console) operatorLogin(w http.ResponseWriter, r *http.Request) {
	is, err := c.auth.OperatorLogIn(r.Context(), r.PostFormValue("token"), clientIP(r))
	p := page{Title: "Operator"}
	switch {
	case err == nil:
		c.setCookie(w, operatorCookie, is.Token, c.auth.TokenTTL(), http.SameSiteStrictMode)
		http.Redirect(w, r, "/admin", http.StatusSeeOther)
	case errors.Is(err, tenants.ErrThrottled):
		p.Errors = map[string]string{"token": capital(err.Error()) + "."}
		c.renderRetry(w, r, err, "admin_login.html", p)
	case errors.Is(err, tenants.ErrUnauthorized):
		p.Errors = map[string]string{"token": "That is not the operator token."}
		c.render(w, r, http.StatusUnauthorized, "admin_login.html", p)
	default:
		c.fail(w, r, err)
	}
}

// operatorLogout ends the operator's session and drops its cookie.
func (c *Console) operatorLogout(w http.ResponseWriter, r *http.Request) {
	if ck, err := c.cookie(r, operatorCookie); err == nil {
		if err := c.auth.LogOut(r.Context(), ck.Value); err != nil {
			c.fail(w, r, err)
			return
		}
	}
	c.clearCookie(w, operatorCookie)
	http.Redirect(w, r, "/admin/login", http.StatusSeeOther)
}
