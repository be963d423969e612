package web

import (
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/internal/problem"
	"github.com/roosthub/roost/tenants"
)

// inviteCreate invites an email with a role (admins; owners only owners)
// and mails the link; the page shows the invite pending.
func (c *Console) inviteCreate(w http.ResponseWriter, r *http.Request) {
	t, a := tenantOf(r), accountOf(r)
	in := tenants.MemberInput{Email: strings.TrimSpace(r.PostFormValue("email")), Role: tenants.Role(r.PostFormValue("role"))}
	p := page{Form: map[string]string{"email": in.Email}}
	err := c.auth.RequireVerified(r.Context(), a.ID)
	if err == nil {
		_, err = c.auth.Invite(r.Context(), t.Slug, t.Name, "account:"+a.ID, tenants.By{Role: roleOf(r), Account: a.ID, Name: a.Email}, in)
	}
	switch {
	case err == nil:
		http.Redirect(w, r, "/tenants/"+url.PathEscape(t.Slug)+"/access?done=invited", http.StatusSeeOther)
	case errors.Is(err, tenants.ErrInvalid):
		p.Errors = formErrors(err)
		c.renderAccess(w, r, http.StatusBadRequest, p)
	case errors.Is(err, tenants.ErrThrottled):
		p.Errors = map[string]string{"_": capital(err.Error()) + "."}
		c.renderAccess(w, r, http.StatusTooManyRequests, p)
	case errors.Is(err, tenants.ErrConflict), errors.Is(err, tenants.ErrForbidden):
		status := http.StatusConflict
		if errors.Is(err, tenants.ErrForbidden) {
			status = http.StatusForbidden
		}
		p.Errors = map[string]string{"_": capital(err.Error()) + "."}
		c.renderAccess(w, r, status, p)
	default:
		c.fail(w, r, err)
	}
}

func (c *Console) inviteRevoke(w http.ResponseWriter, r *http.Request) {
	t, a := tenantOf(r), accountOf(r)
	if err := c.auth.RevokeInvite(r.Context(), t.Slug, chi.URLParam(r, "id"), tenants.By{Role: roleOf(r), Account: a.ID, Name: a.Email}); err != nil {
		c.fail(w, r, err)
		return
	}
	http.Redirect(w, r, "/tenants/"+url.PathEscape(t.Slug)+"/access?done=invite-revoked", http.StatusSeeOther)
}

// inviteData is the page an invite's link opens.
type inviteData struct {
	Invite tenants.Invite
	Token  string
	// Mine: the visitor is signed in with the invited email.
	Mine bool
}

// invitePage shows an invite's link: a sign-up form for a new person, a
// log-in link for someone with an account, the accept button for the
// invited account. The token stays in the page's forms, not the session.
func (c *Console) invitePage(w http.ResponseWriter, r *http.Request) {
	c.renderInvite(w, r, http.StatusOK, r.URL.Query().Get("token"), page{})
}

func (c *Console) renderInvite(w http.ResponseWriter, r *http.Request, status int, token string, p page) {
	inv, err := c.auth.PendingInvite(r.Context(), token)
	if errors.Is(err, tenants.ErrNotFound) {
		c.errorPage(w, r, http.StatusNotFound, "This invite is not valid: it was used, revoked or has expired. Ask whoever invited you for a new one.")
		return
	}
	if err != nil {
		c.fail(w, r, err)
		return
	}
	a, signedIn := c.account(r)
	p.Account = a
	p.Title = "Join " + inv.Tenant
	p.Data = inviteData{Invite: inv, Token: token, Mine: signedIn && a.Email == inv.Email}
	c.render(w, r, status, "invite.html", p)
}

// inviteSignup signs a new person up with the invited email, then shows
// the invite again, to accept once the email is verified.
func (c *Console) inviteSignup(w http.ResponseWriter, r *http.Request) {
	token, password := r.PostFormValue("token"), r.PostFormValue("password")
	inv, err := c.auth.PendingInvite(r.Context(), token)
	if err != nil {
		c.renderInvite(w, r, http.StatusNotFound, token, page{})
		return
	}
	back := "/invite?" + url.Values{"token": {token}}.Encode()
	if password != r.PostFormValue("password2") {
		c.renderInvite(w, r, http.StatusBadRequest, token, page{Errors: map[string]string{"password2": "The two passwords differ."}})
		return
	}
	is, err := c.auth.SignUp(r.Context(), tenants.Signup{Email: inv.Email, Password: password}, clientIP(r))
	switch {
	case err == nil:
		c.signedInOrChallenge(w, r, is, back)
	case errors.Is(err, tenants.ErrThrottled):
		c.renderInvite(w, r, http.StatusTooManyRequests, token, page{Errors: map[string]string{"_": capital(err.Error()) + "."}})
	case errors.Is(err, tenants.ErrUnauthorized):
		c.renderInvite(w, r, http.StatusUnauthorized, token, page{Errors: map[string]string{"_": "An account has this email already: log in to accept."}})
	case errors.Is(err, tenants.ErrInvalid):
		c.renderInvite(w, r, http.StatusBadRequest, token, page{Errors: formErrors(err)})
	default:
		c.fail(w, r, err)
	}
}

// inviteAccept accepts the invite with the signed-in account.
func (c *Console) inviteAccept(w http.ResponseWriter, r *http.Request) {
	token := r.PostFormValue("token")
	inv, err := c.auth.AcceptInvite(r.Context(), *accountOf(r), token, clientIP(r))
	switch {
	case err == nil:
		http.Redirect(w, r, "/tenants/"+url.PathEscape(inv.Tenant)+"?done=invite-accepted", http.StatusSeeOther)
	case errors.Is(err, tenants.ErrNotFound):
		c.renderInvite(w, r, http.StatusNotFound, token, page{})
	case errors.Is(err, auth.ErrEmailUnverified):
		c.renderInvite(w, r, http.StatusForbidden, token, page{Errors: map[string]string{"_": "Verify your email first: open the link we mailed you, then come back to this page."}})
	case errors.Is(err, tenants.ErrForbidden), errors.Is(err, tenants.ErrConflict), errors.Is(err, tenants.ErrThrottled):
		c.renderInvite(w, r, problem.Of(err).Status, token, page{Errors: map[string]string{"_": capital(err.Error()) + "."}})
	default:
		c.fail(w, r, err)
	}
}
