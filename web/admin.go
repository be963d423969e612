package web

import (
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/tenants"
)

type adminRow struct {
	Tenant      tenants.Tenant
	Messages    int64
	Connections int
	Overrides   string
}

type adminData struct {
	Nodes  []tenants.NodeStats // the data-plane nodes of a fleet
	Rows   []adminRow
	Plans  []string
	Next   string
	Search string
}

// adminTenants lists tenants for the operator with this month's messages
// and live connections.
func (c *Console) adminTenants(w http.ResponseWriter, r *http.Request) {
	c.renderAdmin(w, r, http.StatusOK, page{})
}

func (c *Console) renderAdmin(w http.ResponseWriter, r *http.Request, status int, p page) {
	ctx := r.Context()
	ts, next, err := c.store.Tenants(ctx, tenants.Page{Limit: 50, Cursor: r.URL.Query().Get("after")})
	if err != nil {
		c.internal(w, r, err)
		return
	}
	d := adminData{Plans: c.store.Plans().Names(), Next: next}
	if d.Nodes, err = c.store.NodeStats(ctx, c.cfg.Now()); err != nil {
		c.internal(w, r, err)
		return
	}
	for _, t := range ts {
		row := adminRow{Tenant: t}
		if row.Messages, err = c.store.MonthMessages(ctx, t.Slug, c.cfg.Now()); err != nil {
			c.internal(w, r, err)
			return
		}
		if c.cfg.DataPlane != nil {
			row.Connections = c.cfg.DataPlane.ConnectionCount(t.Slug)
		}
		var lines []string
		for k, v := range t.Overrides {
			lines = append(lines, k+"="+strconv.FormatInt(v, 10))
		}
		slices.Sort(lines)
		row.Overrides = strings.Join(lines, "\n")
		d.Rows = append(d.Rows, row)
	}
	p.Title, p.Nav, p.Data = "Tenants (operator)", "admin", d
	c.render(w, r, status, "admin.html", p)
}

// adminTenantUpdate applies the operator's plan, suspension and quota
// overrides (name=value lines; a quota left out loses its override).
func (c *Console) adminTenantUpdate(w http.ResponseWriter, r *http.Request) {
	slug := chi.URLParam(r, "tenant")
	t, err := c.store.Tenant(r.Context(), slug)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	u := tenants.AdminTenantUpdate{Quotas: map[string]*int64{}}
	if plan := r.PostFormValue("plan"); plan != "" {
		u.Plan = &plan
	}
	suspended := r.PostFormValue("suspended") == "on"
	u.Suspended = &suspended
	if suspended == t.Suspended {
		u.Suspended = nil // not the operator's decision this time: leave billing's alone
	}
	set := map[string]bool{}
	for _, line := range strings.Split(r.PostFormValue("overrides"), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if !ok || err != nil {
			c.renderAdmin(w, r, http.StatusBadRequest, page{Errors: map[string]string{"overrides:" + slug: "each line is quota=number, like max_devices=500"}})
			return
		}
		k = strings.TrimSpace(k)
		u.Quotas[k], set[k] = &n, true
	}
	for k := range t.Overrides {
		if !set[k] {
			u.Quotas[k] = nil
		}
	}
	if _, err := c.store.AdminUpdateTenant(r.Context(), slug, u); err != nil {
		var fe *tenants.FieldError
		if errors.As(err, &fe) {
			c.renderAdmin(w, r, http.StatusBadRequest, page{Errors: map[string]string{"overrides:" + slug: fe.Error()}})
			return
		}
		c.fail(w, r, err)
		return
	}
	redirect(w, r, "/admin", "saved")
}
