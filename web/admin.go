package web

import (
	"cmp"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/tenants"
)

// adminPageSize is how many tenants one page of the operator's table shows.
const adminPageSize = 50

// adminMaxRows bounds the tenants one search loads to sort: past it the
// table says so and asks for a narrower search.
const adminMaxRows = 5000

type adminRow struct {
	Tenant      tenants.Tenant
	Devices     int64
	Messages    int64
	Connections int
	Overrides   int
}

// adminColumn is a sortable column of the operator's table.
type adminColumn struct {
	Key, Label string
	Numeric    bool
}

var adminColumns = []adminColumn{
	{"slug", "Tenant", false}, {"plan", "Plan", false}, {"devices", "Devices", true},
	{"messages", "Messages this month", true}, {"connections", "Connected", true}, {"status", "Status", false},
}

type adminData struct {
	Nodes    []tenants.NodeStats // the data-plane nodes of a fleet
	Stats    tenants.Stats
	Rows     []adminRow
	Columns  []adminColumn
	Search   string
	Sort     string
	Desc     bool
	Page     int
	Pages    int
	Matching int
	// Connected counts the connections of the matching tenants.
	Connected int
	// Capped: more tenants match than one search loads.
	Capped bool
}

// SortLink is the table's address sorted by a column: the other way round
// when it is the column sorted by now.
func (d adminData) SortLink(key string) string {
	dir := "asc"
	if key == d.Sort && !d.Desc {
		dir = "desc"
	}
	return d.link(key, dir, 1)
}

// PageLink is the table's address at another page, sorted as now.
func (d adminData) PageLink(page int) string {
	dir := "asc"
	if d.Desc {
		dir = "desc"
	}
	return d.link(d.Sort, dir, page)
}

func (d adminData) link(sort, dir string, page int) string {
	q := url.Values{}
	if d.Search != "" {
		q.Set("q", d.Search)
	}
	q.Set("sort", sort)
	q.Set("dir", dir)
	if page > 1 {
		q.Set("page", strconv.Itoa(page))
	}
	return "/admin?" + q.Encode()
}

// AriaSort is a column's aria-sort value.
func (d adminData) AriaSort(key string) string {
	switch {
	case key != d.Sort:
		return "none"
	case d.Desc:
		return "descending"
	}
	return "ascending"
}

// adminTenants is the operator's table of tenants: searched by slug or
// name, sorted by any column, a page at a time, with the hub's totals.
func (c *Console) adminTenants(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	q := r.URL.Query()
	d := adminData{Columns: adminColumns, Search: strings.TrimSpace(q.Get("q")), Sort: "slug", Desc: q.Get("dir") == "desc"}
	if s := q.Get("sort"); slices.ContainsFunc(adminColumns, func(c adminColumn) bool { return c.Key == s }) {
		d.Sort = s
	}
	var err error
	if d.Nodes, err = c.store.NodeStats(ctx, c.cfg.Now()); err != nil {
		c.internal(w, r, err)
		return
	}
	if d.Stats, err = c.store.Stats(ctx, c.cfg.Now()); err != nil {
		c.internal(w, r, err)
		return
	}
	var rows []adminRow
	cursor := ""
	for {
		ts, next, err := c.store.AdminTenants(ctx, d.Search, c.cfg.Now(), tenants.Page{Limit: tenants.MaxPageSize, Cursor: cursor})
		if err != nil {
			c.internal(w, r, err)
			return
		}
		for _, t := range ts {
			row := adminRow{Tenant: t.Tenant, Devices: t.Devices, Messages: t.MessagesThisMonth, Overrides: len(t.Overrides)}
			if c.cfg.DataPlane != nil {
				row.Connections = c.cfg.DataPlane.ConnectionCount(t.Slug)
			}
			d.Connected += row.Connections
			rows = append(rows, row)
		}
		if next == "" {
			break
		}
		if len(rows) >= adminMaxRows {
			d.Capped = true
			break
		}
		cursor = next
	}
	slices.SortStableFunc(rows, func(a, b adminRow) int {
		var n int
		switch d.Sort {
		case "plan":
			n = cmp.Compare(a.Tenant.Plan, b.Tenant.Plan)
		case "devices":
			n = cmp.Compare(a.Devices, b.Devices)
		case "messages":
			n = cmp.Compare(a.Messages, b.Messages)
		case "connections":
			n = cmp.Compare(a.Connections, b.Connections)
		case "status":
			n = cmp.Compare(boolInt(a.Tenant.Suspended), boolInt(b.Tenant.Suspended))
		}
		if n == 0 {
			n = cmp.Compare(a.Tenant.Slug, b.Tenant.Slug)
		}
		if d.Desc {
			n = -n
		}
		return n
	})
	d.Matching = len(rows)
	d.Pages = max(1, (len(rows)+adminPageSize-1)/adminPageSize)
	d.Page, _ = strconv.Atoi(q.Get("page"))
	d.Page = min(max(d.Page, 1), d.Pages)
	d.Rows = rows[min((d.Page-1)*adminPageSize, len(rows)):min(d.Page*adminPageSize, len(rows))]
	c.render(w, r, http.StatusOK, "admin.html", page{Title: "Tenants (operator)", Nav: "admin", Data: d})
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// quotaNames are the quotas by the names people read, beside their keys.
var quotaNames = map[string]string{
	"max_devices":          "Devices",
	"max_connections":      "Connections at once",
	"connect_rate":         "New connections per second",
	"publish_rate":         "Publishes per second, per connection",
	"tenant_publish_rate":  "Publishes per second, whole tenant",
	"bandwidth_in":         "Bandwidth in, per connection",
	"bandwidth_out":        "Bandwidth out, per connection",
	"max_packet_size":      "Largest packet",
	"max_subscriptions":    "Subscriptions per connection",
	"max_retained":         "Retained messages",
	"max_queued":           "Queued messages per session",
	"max_session_expiry":   "Longest session expiry",
	"max_keepalive":        "Longest keep-alive",
	"messages_per_month":   "Messages per month",
	"max_nodes":            "Data-plane nodes",
	"max_outbox":           "Webhook outbox per destination",
	"max_pending_commands": "Commands pending (waiting for a reply, or queued)",
	"max_sessions":         "Sessions kept (connected, or waiting for their client)",
	"event_retention":      "Event history kept",
	"max_streams":          "App streams open at once",
	"max_shadow_bytes":     "Largest device shadow",
}

// quotaUnits are the units of the quotas whose value is not a count. The
// operator's page takes a bare number, so its label names the unit
// (quotaLabel: "Event history kept (seconds)"); the usage page writes each
// limit in words with its own unit (quotaUse.LimitText: "limit 1 day"),
// so its label names none (quotaName), lest they disagree.
var quotaUnits = map[string]string{
	"bandwidth_in":       "bytes/s",
	"bandwidth_out":      "bytes/s",
	"max_packet_size":    "bytes",
	"max_session_expiry": "seconds",
	"max_keepalive":      "seconds",
	"event_retention":    "seconds",
	"max_shadow_bytes":   "bytes",
}

// quotaName is a quota's name for people, without a unit; its key when
// it has none.
func quotaName(key string) string {
	if n, ok := quotaNames[key]; ok {
		return n
	}
	return key
}

// quotaLabel is a quota's name for people with the unit its bare number
// is in, for the operator's page that takes the number.
func quotaLabel(key string) string {
	if u, ok := quotaUnits[key]; ok {
		return quotaName(key) + " (" + u + ")"
	}
	return quotaName(key)
}

// adminQuota is one quota on the operator's tenant page.
type adminQuota struct {
	Key, Label string
	Plan       int64
	Override   string // the override, or empty: the plan's value holds
}

type adminTenantData struct {
	Row    adminRow
	Plans  []string
	Quotas []adminQuota
}

// adminTenant is the operator's page of one tenant: its plan, suspension
// and quota overrides, each quota by name with its key and plan value.
func (c *Console) adminTenant(w http.ResponseWriter, r *http.Request) {
	c.renderAdminTenant(w, r, http.StatusOK, page{})
}

func (c *Console) renderAdminTenant(w http.ResponseWriter, r *http.Request, status int, p page) {
	ctx := r.Context()
	slug := chi.URLParam(r, "tenant")
	var t tenants.AdminTenant
	found := false
	for cursor := ""; !found; {
		ts, next, err := c.store.AdminTenants(ctx, slug, c.cfg.Now(), tenants.Page{Limit: tenants.MaxPageSize, Cursor: cursor})
		if err != nil {
			c.internal(w, r, err)
			return
		}
		if i := slices.IndexFunc(ts, func(t tenants.AdminTenant) bool { return t.Slug == slug }); i >= 0 {
			t, found = ts[i], true
		}
		if next == "" {
			break
		}
		cursor = next
	}
	if !found {
		c.notFound(w, r)
		return
	}
	d := adminTenantData{Row: adminRow{Tenant: t.Tenant, Devices: t.Devices, Messages: t.MessagesThisMonth, Overrides: len(t.Overrides)},
		Plans: c.store.Plans().Names()}
	if c.cfg.DataPlane != nil {
		d.Row.Connections = c.cfg.DataPlane.ConnectionCount(t.Slug)
	}
	plan := t.PlanDetails().Quotas
	for _, k := range tenants.QuotaNames() {
		q := adminQuota{Key: k, Label: quotaLabel(k), Plan: plan.Value(k)}
		if v, ok := t.Overrides[k]; ok {
			q.Override = strconv.FormatInt(v, 10)
		}
		if v, sent := p.Form["quota."+k]; sent {
			q.Override = v
		}
		d.Quotas = append(d.Quotas, q)
	}
	slices.SortStableFunc(d.Quotas, func(a, b adminQuota) int { return cmp.Compare(a.Label, b.Label) })
	p.Title, p.Nav, p.Data = "Tenant "+t.Slug+" (operator)", "admin", d
	c.render(w, r, status, "admin_tenant.html", p)
}

// adminTenantUpdate applies the operator's plan, suspension and quota
// overrides: one field per quota (quota.<key>, empty for the plan's value)
// from the tenant's page, or name=value lines (overrides; a quota left out
// loses its override). A mistake shows the tenant's page again with it.
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
	form := map[string]string{}
	again := func(field, msg string) {
		c.renderAdminTenant(w, r, http.StatusBadRequest, page{Errors: map[string]string{field: msg}, Form: form})
	}
	set := map[string]bool{}
	if r.PostFormValue("per_quota") != "" {
		for _, k := range tenants.QuotaNames() {
			v := strings.TrimSpace(r.PostFormValue("quota." + k))
			form["quota."+k] = v
			if v == "" {
				continue
			}
			n, err := strconv.ParseInt(strings.ReplaceAll(v, ",", ""), 10, 64)
			if err != nil {
				again("quota."+k, quotaLabel(k)+" must be a whole number, or empty for the plan's value")
				return
			}
			u.Quotas[k], set[k] = &n, true
		}
	} else {
		for _, line := range strings.Split(r.PostFormValue("overrides"), "\n") {
			line = strings.TrimSpace(line)
			if line == "" {
				continue
			}
			k, v, ok := strings.Cut(line, "=")
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if !ok || err != nil {
				again("_", "each line is quota=number, like max_devices=500")
				return
			}
			k = strings.TrimSpace(k)
			u.Quotas[k], set[k] = &n, true
		}
	}
	for k := range t.Overrides {
		if !set[k] {
			u.Quotas[k] = nil
		}
	}
	if _, err := c.store.AdminUpdateTenant(r.Context(), slug, u); err != nil {
		var fe *tenants.FieldError
		if errors.As(err, &fe) {
			again("_", fe.Error())
			return
		}
		c.fail(w, r, err)
		return
	}
	redirect(w, r, "/admin/tenants/"+url.PathEscape(slug), "saved")
}
