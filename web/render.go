package web

import (
	"bytes"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/tenants"
)

// page is what every template gets.
type page struct {
	Title    string
	Nav      string // the section the page belongs to, for the menu
	Account  *tenants.Account
	Operator bool
	Tenant   *tenants.Tenant
	Role     tenants.Role
	Tenants  []tenants.Tenant // the visitor's, for the switcher
	CSRF     string
	// Banner warns about the tenant's billing (a failed payment).
	Banner string
	// Flash says what the last action did.
	Flash string
	// Errors holds messages by form field; Form the values sent, to show
	// them again.
	Errors map[string]string
	Form   map[string]string
	Data   any
	// Billing: the hub bills its tenants (Stripe is set up).
	Billing bool
	// SSO are the single sign-on issuers, for the login page.
	SSO []auth.OIDCIssuer
}

// CanWrite reports whether the visitor may change the tenant.
func (p page) CanWrite() bool { return p.Role.AtLeast(tenants.RoleAdmin) }

var funcs = template.FuncMap{
	"when": func(t any) string {
		switch v := t.(type) {
		case time.Time:
			if v.IsZero() {
				return "—"
			}
			return v.UTC().Format("2006-01-02 15:04:05 UTC")
		case *time.Time:
			if v == nil || v.IsZero() {
				return "never"
			}
			return v.UTC().Format("2006-01-02 15:04:05 UTC")
		}
		return ""
	},
	// tpath builds a path under a tenant, escaping each part.
	"tpath": func(tenant string, parts ...string) string {
		p := "/tenants/" + url.PathEscape(tenant)
		for _, s := range parts {
			p += "/" + url.PathEscape(s)
		}
		return p
	},
	"num":   formatNum,
	"bytes": formatBytes,
	"cents": func(n int64) string { return fmt.Sprintf("%d.%02d", n/100, n%100) },
	"roles": func() []tenants.Role { return []tenants.Role{tenants.RoleViewer, tenants.RoleAdmin, tenants.RoleOwner} },
	"err":   func(p page, field string) string { return p.Errors[field] },
	"val":   func(p page, field string) string { return p.Form[field] },
	"add":   func(a, b int) int { return a + b },
	// navItems are a tenant's sections: name, path under the tenant, label.
	"navItems": func() [][3]string {
		return [][3]string{{"overview", "", "Overview"}, {"devices", "/devices", "Devices"}, {"acl", "/acl", "Rules"}, {"webhooks", "/webhooks", "Webhooks"},
			{"live", "/live", "Live"}, {"retained", "/retained", "Retained"}, {"usage", "/usage", "Usage"}, {"events", "/events", "Events"},
			{"keys", "/api-keys", "API keys"}, {"members", "/members", "Members"}, {"access", "/access", "Access"}, {"billing", "/billing", "Billing"},
			{"settings", "/settings", "Settings"}}
	},
	"sub": func(a, b int) int { return a - b },
	// noun is a word in the number a count asks for: 1 device, 2 devices.
	"noun": func(n any, one, many string) string {
		if fmt.Sprint(n) == "1" {
			return one
		}
		return many
	},
}

// plural writes a count with its noun: "1 day", "2 days", "1,000 days".
func plural(n int64, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return formatNum(n) + " " + many
}

// formatNum writes a number with thousands separators: 1,000,000.
func formatNum(n any) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

// formatBytes writes a size in B, KiB, MiB or GiB.
func formatBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// parsePages parses each page template with the layout.
func parsePages() (map[string]*template.Template, error) {
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	pages := map[string]*template.Template{}
	for _, n := range names {
		base := path.Base(n)
		if base == "layout.html" {
			continue
		}
		t, err := template.New(base).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", n)
		if err != nil {
			return nil, fmt.Errorf("web: template %s: %w", base, err)
		}
		pages[base] = t
	}
	return pages, nil
}

// render writes a page: the layout around the named template, with what the
// request's context knows about the visitor filled in.
func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name string, p page) {
	ctx := r.Context()
	p.CSRF, _ = ctx.Value(keyCSRF).(string)
	if p.Account == nil {
		p.Account = accountOf(r)
	}
	p.Operator, _ = ctx.Value(keyOperator).(bool)
	p.Billing = c.cfg.Billing.Enabled()
	if name == "login.html" {
		p.SSO = c.auth.SSOIssuers()
	}
	if t := tenantOf(r); t != nil && p.Tenant == nil {
		p.Tenant, p.Role = t, roleOf(r)
	}
	if p.Account != nil && p.Tenants == nil {
		p.Tenants, _, _ = c.store.TenantsOf(ctx, p.Account.ID, tenants.Page{Limit: tenants.MaxPageSize})
	}
	if p.Tenant != nil {
		if p.Tenant.Suspended {
			p.Banner = "This tenant is suspended: its devices cannot connect."
		}
		if a, err := c.store.BillingAccount(ctx, p.Tenant.Slug); err == nil && !a.PaymentFailedAt.IsZero() {
			p.Banner = "A payment failed on " + a.PaymentFailedAt.Format("2 Jan 2006") + ". Update the payment method in Billing to keep the tenant running."
			if a.SuspendedByBilling {
				p.Banner = "This tenant is suspended because a payment failed. Pay the open invoice in Billing to resume it."
			}
		}
	}
	if p.Flash == "" {
		p.Flash = flashes[r.URL.Query().Get("done")]
	}
	t := c.pages[name]
	if t == nil {
		c.cfg.Log.Error("console: no such template", "template", name)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, "layout", p); err != nil {
		c.cfg.Log.Error("console: render", "template", name, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// flashes are the messages a redirect after a form can ask for with
// ?done=…; only these, so a link cannot put words in the console's mouth.
var flashes = map[string]string{
	"tenant":       "Tenant created.",
	"rule":         "Rule added.",
	"rule-moved":   "Rule moved.",
	"rule-deleted": "Rule deleted.",
	"key-deleted":  "API key revoked.",
	"member":       "If an account has that email and has verified it, it is now a member and has been told; if not, nothing changed (invite them instead).",
	"member-gone":  "Member removed.",
	"disconnected": "The device's connections were closed.",
	"enabled":      "Device enabled.",
	"disabled":     "Device disabled: its connections were closed and new ones are refused.",
	"published":    "Message published.",
	"cap":          "Spend cap saved.",
	"checkout":     "Thank you: your plan changes as soon as Stripe confirms the payment.",
	"cancelled":    "Checkout was cancelled; nothing changed.",
	"saved":        "Saved.",
	"deleted":      "Deleted.",
	"replayed":     "The dead letters are back in the outbox, to be delivered again.",
	"purged":       "Dead letters deleted.",

	// Retained messages and a device's queue (retained.go).
	"retained-deleted": "Retained message cleared.",
	"queue-purged":     "The device's queued messages were dropped.",

	// Two-factor sign-in and invites (mfa.go, access.go, invite.go).
	"mfa-off":         "Two-factor sign-in is off.",
	"invited":         "Invite sent.",
	"invite-revoked":  "Invite revoked.",
	"invite-accepted": "Welcome: you joined the tenant.",
	"mfa-required":    "Two-factor sign-in is now required of every member.",
	"mfa-optional":    "Two-factor sign-in is no longer required.",
}

// redirect answers a form with See Other to a page of the console.
func redirect(w http.ResponseWriter, r *http.Request, to, done string) {
	if done != "" {
		to += "?done=" + url.QueryEscape(done)
	}
	http.Redirect(w, r, to, http.StatusSeeOther)
}

// formErrors turns a validation error into a message next to its field, or
// under the form when it names none.
func formErrors(err error) map[string]string {
	var fe *tenants.FieldError
	if errors.As(err, &fe) {
		return map[string]string{fe.Field: fe.Message}
	}
	return map[string]string{"_": err.Error()}
}
