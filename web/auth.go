package web

import (
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/roosthub/roost/internal/accesslog"
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

// safeNext keeps a post-login destination inside the console.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") {
		return "/"
	}
	return next
}

var clientIP = accesslog.ClientIP

func (c *Console) signupPage(w http.ResponseWriter, r *http.Request) {
	c.render(w, r, http.StatusOK, "signup.html", page{Title: "Sign up"})
}

func (c *Console) signup(w http.ResponseWriter, r *http.Request) {
	email, password := strings.TrimSpace(r.PostFormValue("email")), r.PostFormValue("password")
	p := page{Title: "Sign up", Form: map[string]string{"email": email}}
	if wait := c.signups.Wait(clientIP(r)); wait > 0 {
		p.Errors = map[string]string{"_": "Too many sign-ups from this address; try again in " + wait.Round(time.Second).String() + "."}
		c.render(w, r, http.StatusTooManyRequests, "signup.html", p)
		return
	}
	if password != r.PostFormValue("password2") {
		p.Errors = map[string]string{"password2": "The two passwords differ."}
		c.render(w, r, http.StatusBadRequest, "signup.html", p)
		return
	}
	a, err := c.store.CreateAccount(r.Context(), tenants.Signup{Email: email, Password: password})
	if err != nil {
		if errors.Is(err, tenants.ErrConflict) {
			err = &tenants.FieldError{Field: "email", Message: "an account with this email exists; log in instead"}
		}
		if !errors.Is(err, tenants.ErrInvalid) {
			c.fail(w, r, err)
			return
		}
		p.Errors = formErrors(err)
		c.render(w, r, http.StatusBadRequest, "signup.html", p)
		return
	}
	c.signups.Count(clientIP(r))
	c.startSession(w, r, a.ID, "/tenants")
}

func (c *Console) startSession(w http.ResponseWriter, r *http.Request, account, next string) {
	token, _, err := c.tokens.Issue(account)
	if err != nil {
		c.internal(w, r, err)
		return
	}
	c.setCookie(w, sessionCookie, token, c.cfg.TokenTTL, http.SameSiteLaxMode)
	http.Redirect(w, r, safeNext(next), http.StatusSeeOther)
}

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	c.render(w, r, http.StatusOK, "login.html", page{Title: "Log in", Form: map[string]string{"next": safeNext(r.URL.Query().Get("next"))}})
}

func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	email := strings.ToLower(strings.TrimSpace(r.PostFormValue("email")))
	next := safeNext(r.PostFormValue("next"))
	p := page{Title: "Log in", Form: map[string]string{"email": email, "next": next}}
	ip := clientIP(r)
	if wait := max(c.logins.Wait(email), c.logins.Wait("ip:"+ip)); wait > 0 {
		p.Errors = map[string]string{"_": "Too many failed attempts; try again in " + wait.Round(time.Second).String() + "."}
		c.render(w, r, http.StatusTooManyRequests, "login.html", p)
		return
	}
	a, err := c.store.Authenticate(r.Context(), email, r.PostFormValue("password"))
	if errors.Is(err, tenants.ErrUnauthorized) {
		c.logins.Count(email)
		c.logins.Count("ip:" + ip)
		p.Errors = map[string]string{"password": "Wrong email or password."}
		c.render(w, r, http.StatusUnauthorized, "login.html", p)
		return
	}
	if err != nil {
		c.internal(w, r, err)
		return
	}
	c.logins.Reset(email)
	c.startSession(w, r, a.ID, next)
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request) {
	c.clearCookie(w, sessionCookie)
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

func (c *Console) operatorLoginPage(w http.ResponseWriter, r *http.Request) {
	c.render(w, r, http.StatusOK, "admin_login.html", page{Title: "Operator"})
}

func (c *Console) operatorLogin(w http.ResponseWriter, r *http.Request) {
	ip := clientIP(r)
	if wait := c.operator.Wait(ip); wait > 0 {
		c.render(w, r, http.StatusTooManyRequests, "admin_login.html", page{Title: "Operator",
			Errors: map[string]string{"token": "Too many failed attempts; try again in " + wait.Round(time.Second).String() + "."}})
		return
	}
	if subtle.ConstantTimeCompare([]byte(r.PostFormValue("token")), []byte(c.cfg.AdminToken)) != 1 {
		c.operator.Count(ip)
		c.log(r).Warn("console: wrong operator token", "remote", ip)
		c.render(w, r, http.StatusUnauthorized, "admin_login.html", page{Title: "Operator", Errors: map[string]string{"token": "That is not the operator token."}})
		return
	}
	c.operator.Reset(ip)
	c.setCookie(w, operatorCookie, c.operatorValue(), c.cfg.TokenTTL, http.SameSiteStrictMode)
	http.Redirect(w, r, "/admin", http.StatusSeeOther)
}

func (c *Console) operatorLogout(w http.ResponseWriter, r *http.Request) {
	c.clearCookie(w, operatorCookie)
	http.Redirect(w, r, "/admin/login", http.StatusSeeOther)
}
