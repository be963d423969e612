package web

import (
	"errors"
	"net/http"

	"github.com/roosthub/roost/tenants"
)

// accessData is the tenant's access page: its two-factor requirement and
// its pending invites.
type accessData struct {
	RequireMFA bool
	// MyMFA: the visitor has two-factor sign-in on (an owner needs it to
	// require it).
	MyMFA   bool
	Owner   bool
	Invites []tenants.Invite
	// Link is an invite's link just made, shown to the admin once (it was
	// mailed too).
	Link string
}

func (c *Console) accessPage(w http.ResponseWriter, r *http.Request) {
	c.renderAccess(w, r, http.StatusOK, page{})
}

func (c *Console) renderAccess(w http.ResponseWriter, r *http.Request, status int, p page) {
	t, a := tenantOf(r), accountOf(r)
	req, err := c.auth.TenantMFA(r.Context(), t.Slug)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	st, err := c.auth.MFAStatus(r.Context(), a.ID)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	d, _ := p.Data.(accessData)
	d.RequireMFA, d.MyMFA, d.Owner = req, st.Enabled, roleOf(r).AtLeast(tenants.RoleOwner)
	if roleOf(r).AtLeast(tenants.RoleAdmin) {
		if d.Invites, err = c.store.Invites(r.Context(), t.Slug); err != nil {
			c.fail(w, r, err)
			return
		}
	}
	p.Title, p.Nav, p.Data = "Access", "access", d
	c.render(w, r, status, "access.html", p)
}

// accessMFA requires two-factor sign-in of every member, or stops (owners).
func (c *Console) accessMFA(w http.ResponseWriter, r *http.Request) {
	t, a := tenantOf(r), accountOf(r)
	on := r.PostFormValue("required") == "on"
	err := c.auth.SetTenantMFA(r.Context(), t.Slug, tenants.By{Role: roleOf(r), Account: a.ID, Name: a.Email}, on)
	switch {
	case err == nil:
		done := "mfa-optional"
		if on {
			done = "mfa-required"
		}
		http.Redirect(w, r, "/tenants/"+t.Slug+"/access?done="+done, http.StatusSeeOther)
	case errors.Is(err, tenants.ErrConflict) || errors.Is(err, tenants.ErrForbidden):
		status := http.StatusConflict
		if errors.Is(err, tenants.ErrForbidden) {
			status = http.StatusForbidden
		}
		c.renderAccess(w, r, status, page{Errors: map[string]string{"_": capital(err.Error()) + "."}})
	default:
		c.fail(w, r, err)
	}
}
