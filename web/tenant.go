package web

import (
	"cmp"
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/internal/problem"
	"github.com/roosthub/roost/tenants"
)

func (c *Console) tenantList(w http.ResponseWriter, r *http.Request) {
	c.renderTenants(w, r, http.StatusOK, page{Title: "Tenants", Nav: "tenants"})
}

// renderTenants renders the tenants page, with the account's notices: who
// added it to a tenant or removed it from one lately.
func (c *Console) renderTenants(w http.ResponseWriter, r *http.Request, status int, p page) {
	c.render(w, r, status, "tenants.html", c.withNotices(r, p))
}

func (c *Console) withNotices(r *http.Request, p page) page {
	ns, err := c.auth.Notices(r.Context(), accountOf(r).ID)
	if err != nil {
		c.log(r).Error("console: notices", "err", err)
	}
	p.Data = ns
	return p
}

func (c *Console) tenantCreate(w http.ResponseWriter, r *http.Request) {
	in := tenants.TenantInput{Slug: strings.TrimSpace(r.PostFormValue("slug")), Name: strings.TrimSpace(r.PostFormValue("name"))}
	t, err := c.auth.CreateTenant(r.Context(), accountOf(r).ID, in)
	if err != nil {
		if errors.Is(err, tenants.ErrConflict) {
			err = &tenants.FieldError{Field: "slug", Message: "this name is taken; pick another"}
		}
		p := page{Title: "Tenants", Nav: "tenants", Form: map[string]string{"slug": in.Slug, "name": in.Name}}
		switch {
		case errors.Is(err, tenants.ErrInvalid):
			p.Errors = formErrors(err)
			c.renderTenants(w, r, http.StatusBadRequest, p)
		case errors.Is(err, tenants.ErrQuotaExceeded):
			p.Errors = map[string]string{"_": "You own as many tenants on the free plan as an account may (" + err.Error() + "). Move one to a paid plan, or delete one, to create another."}
			c.renderTenants(w, r, http.StatusForbidden, p)
		case errors.Is(err, tenants.ErrThrottled):
			p.Errors = map[string]string{"_": capital(err.Error()) + "."}
			c.renderRetry(w, r, err, "tenants.html", c.withNotices(r, p))
		default:
			c.fail(w, r, err)
		}
		return
	}
	redirect(w, r, "/tenants/"+t.Slug+"/devices", "tenant")
}

// quotaUse is a quota with its current use, where Roost knows it.
type quotaUse struct {
	Name    string
	Limit   int64
	Used    int64
	Known   bool
	Percent int
}

// seconds writes a duration given in seconds in the largest whole unit:
// "1 day", "10 minutes", "1 second".
func seconds(v int64) string {
	switch {
	case v != 0 && v%86400 == 0:
		return plural(v/86400, "day", "days")
	case v != 0 && v%3600 == 0:
		return plural(v/3600, "hour", "hours")
	case v != 0 && v%60 == 0:
		return plural(v/60, "minute", "minutes")
	}
	return plural(v, "second", "seconds")
}

// Label is the quota's name for people, without a unit: LimitText gives
// the limit with its own.
func (q quotaUse) Label() string { return quotaName(q.Name) }

// LimitText is the limit in the quota's unit.
func (q quotaUse) LimitText() string {
	v := q.Limit
	switch q.Name {
	case "bandwidth_in", "bandwidth_out":
		return formatBytes(v) + "/s per connection"
	case "max_packet_size":
		return formatBytes(v)
	case "max_session_expiry":
		return seconds(v)
	case "event_retention":
		if v <= 0 {
			v = int64(tenants.DefaultEventRetention / time.Second) // what 0 keeps
		}
		return seconds(v)
	case "max_shadow_bytes":
		return formatBytes(v) + " per device"
	case "max_keepalive":
		if v == 0 {
			return "no limit"
		}
		return seconds(v)
	case "connect_rate", "tenant_publish_rate":
		return formatNum(v) + "/s"
	case "publish_rate":
		return formatNum(v) + "/s per connection"
	case "max_subscriptions":
		return formatNum(v) + " per connection"
	case "max_queued":
		return formatNum(v) + " per session"
	case "max_nodes":
		if v == 1 {
			return "1 node"
		}
		return formatNum(v) + " nodes"
	}
	return formatNum(v)
}

func (q quotaUse) Near() bool { return q.Known && q.Percent >= 80 }

type overviewData struct {
	Devices     int64
	Connections int
	Messages    int64
	Quotas      []quotaUse
	Events      []events.Event
	Endpoints   []Endpoint
}

func (c *Console) quotaUses(r *http.Request, t *tenants.Tenant) ([]quotaUse, overviewData, error) {
	ctx := r.Context()
	var d overviewData
	var err error
	if d.Devices, err = c.store.DeviceCount(ctx, t.Slug); err != nil {
		return nil, d, err
	}
	if d.Messages, err = c.store.MonthMessages(ctx, t.Slug, c.cfg.Now()); err != nil {
		return nil, d, err
	}
	if c.cfg.DataPlane != nil {
		d.Connections = c.cfg.DataPlane.ConnectionCount(t.Slug)
	}
	q := t.Quotas()
	used := map[string]int64{"max_devices": d.Devices, "max_connections": int64(d.Connections), "messages_per_month": d.Messages}
	var out []quotaUse
	for _, name := range tenants.QuotaNames() {
		u := quotaUse{Name: name, Limit: q.Value(name)}
		if n, ok := used[name]; ok {
			u.Used, u.Known = n, true
			if u.Limit > 0 {
				u.Percent = int(min(100, n*100/u.Limit))
			}
		}
		out = append(out, u)
	}
	// The nearest to their limits first.
	slices.SortStableFunc(out, func(a, b quotaUse) int { return cmp.Compare(b.Percent, a.Percent) })
	return out, d, nil
}

func (c *Console) overview(w http.ResponseWriter, r *http.Request) {
	t := tenantOf(r)
	qs, d, err := c.quotaUses(r, t)
	if err != nil {
		c.internal(w, r, err)
		return
	}
	for _, q := range qs {
		if q.Known { // the ones whose use Roost counts, nearest first
			d.Quotas = append(d.Quotas, q)
		}
	}
	d.Events = c.recentEvents(r, t.Slug)
	d.Endpoints = c.cfg.Endpoints
	c.render(w, r, http.StatusOK, "overview.html", page{Title: t.Name, Nav: "overview", Data: d})
}

type keysData struct {
	Keys    []tenants.APIKey
	Created *createdKey
}

type createdKey struct {
	Key   tenants.APIKey
	Token string
}

func (c *Console) keyList(w http.ResponseWriter, r *http.Request) {
	c.renderKeys(w, r, http.StatusOK, nil, page{})
}

func (c *Console) renderKeys(w http.ResponseWriter, r *http.Request, status int, created *createdKey, p page) {
	keys, _, err := c.store.APIKeys(r.Context(), tenantOf(r).Slug, tenants.Page{Limit: tenants.MaxPageSize})
	if err != nil {
		c.internal(w, r, err)
		return
	}
	p.Title, p.Nav, p.Data = "API keys", "keys", keysData{Keys: keys, Created: created}
	c.render(w, r, status, "keys.html", p)
}

func (c *Console) keyCreate(w http.ResponseWriter, r *http.Request) {
	in := tenants.APIKeyInput{Name: strings.TrimSpace(r.PostFormValue("name")), Role: tenants.Role(r.PostFormValue("role"))}
	form := map[string]string{"name": in.Name, "role": string(in.Role)}
	if by(r).MayMakeKey(in.Role) != nil {
		c.renderKeys(w, r, http.StatusForbidden, nil, page{Form: form, Errors: map[string]string{"role": "A key cannot have a higher role than yours."}})
		return
	}
	// Made on the visitor's behalf: it ends when they leave the tenant.
	k, token, err := c.store.CreateAPIKey(r.Context(), tenantOf(r).Slug, in, accountOf(r).ID)
	if err != nil {
		if !errors.Is(err, tenants.ErrInvalid) && !errors.Is(err, tenants.ErrQuotaExceeded) {
			c.fail(w, r, err)
			return
		}
		c.renderKeys(w, r, http.StatusBadRequest, nil, page{Form: form, Errors: formErrors(err)})
		return
	}
	// The key is shown on this answer to the POST and never again.
	c.renderKeys(w, r, http.StatusCreated, &createdKey{Key: k, Token: token}, page{})
}

func (c *Console) keyDelete(w http.ResponseWriter, r *http.Request) {
	t := tenantOf(r)
	if err := c.store.DeleteAPIKey(r.Context(), t.Slug, chi.URLParam(r, "id")); err != nil {
		c.fail(w, r, err)
		return
	}
	redirect(w, r, "/tenants/"+t.Slug+"/api-keys", "key-deleted")
}

type membersData struct {
	Members []tenants.Member
	// Owner: the visitor may keep a removed member's API keys.
	Owner bool
	// Owners counts the owners: the only one can neither leave nor be removed.
	Owners int
}

func (c *Console) memberList(w http.ResponseWriter, r *http.Request) {
	c.renderMembers(w, r, http.StatusOK, page{})
}

func (c *Console) renderMembers(w http.ResponseWriter, r *http.Request, status int, p page) {
	ms, _, err := c.store.Members(r.Context(), tenantOf(r).Slug, tenants.Page{Limit: tenants.MaxPageSize})
	if err != nil {
		c.internal(w, r, err)
		return
	}
	d := membersData{Members: ms, Owner: roleOf(r).AtLeast(tenants.RoleOwner)}
	for _, m := range ms {
		if m.Role == tenants.RoleOwner {
			d.Owners++
		}
	}
	p.Title, p.Nav, p.Data = "Members", "members", d
	c.render(w, r, status, "members.html", p)
}

// by is the visitor as the membership rules see them.
func by(r *http.Request) tenants.By {
	a := accountOf(r)
	return tenants.By{Role: roleOf(r), Account: a.ID, Name: a.Email}
}

// memberAdd adds a member through the auth front, as the API does: the
// same rules, throttles and answer whether or not the email has an
// account.
func (c *Console) memberAdd(w http.ResponseWriter, r *http.Request) {
	in := tenants.MemberInput{Email: strings.TrimSpace(r.PostFormValue("email")), Role: tenants.Role(r.PostFormValue("role"))}
	form := map[string]string{"email": in.Email, "role": string(in.Role)}
	err := c.auth.AddMember(r.Context(), tenantOf(r).Slug, "account:"+accountOf(r).ID, by(r), in)
	switch {
	case err == nil:
		redirect(w, r, "/tenants/"+tenantOf(r).Slug+"/members", "member")
	case errors.Is(err, tenants.ErrForbidden):
		c.renderMembers(w, r, http.StatusForbidden, page{Form: form, Errors: map[string]string{"role": capital(err.Error()) + "."}})
	case errors.Is(err, tenants.ErrConflict):
		c.renderMembers(w, r, http.StatusBadRequest, page{Form: form, Errors: map[string]string{"email": err.Error()}})
	case errors.Is(err, tenants.ErrInvalid):
		c.renderMembers(w, r, http.StatusBadRequest, page{Form: form, Errors: formErrors(err)})
	case errors.Is(err, tenants.ErrThrottled):
		w.Header().Set("Retry-After", problem.Of(err).RetryAfter)
		c.renderMembers(w, r, http.StatusTooManyRequests, page{Form: form, Errors: map[string]string{"_": capital(err.Error()) + "."}})
	default:
		c.fail(w, r, err)
	}
}

// memberRemove removes a member, or lets the visitor leave, by the same
// rules as the API (tenants.By.MayRemove): an admin cannot remove an owner.
func (c *Console) memberRemove(w http.ResponseWriter, r *http.Request) {
	t := tenantOf(r)
	account := chi.URLParam(r, "account")
	keep := r.PostFormValue("keep_api_keys") == "on"
	if err := c.auth.RemoveMember(r.Context(), t.Slug, account, by(r), keep); err != nil {
		c.fail(w, r, err)
		return
	}
	if account == accountOf(r).ID {
		http.Redirect(w, r, "/tenants", http.StatusSeeOther)
		return
	}
	redirect(w, r, "/tenants/"+t.Slug+"/members", "member-gone")
}

// chart is a bar chart drawn as SVG on the server.
type chart struct {
	Title    string
	Max      int64
	Bars     []bar
	Width    int
	Height   int
	From, To string // the first and last bars' labels
}

type bar struct {
	X, Y, W, H int
	Label      string
	Value      int64
}

const chartHeight = 120

func newChart(title string, labels []string, values []int64) chart {
	c := chart{Title: title, Height: chartHeight}
	if len(labels) > 0 {
		c.From, c.To = labels[0], labels[len(labels)-1]
	}
	for _, v := range values {
		c.Max = max(c.Max, v)
	}
	w := 12
	c.Width = max(len(values)*w, w)
	for i, v := range values {
		h := 0
		if c.Max > 0 {
			h = int(v * (chartHeight - 4) / c.Max)
		}
		c.Bars = append(c.Bars, bar{X: i * w, Y: chartHeight - h, W: w - 2, H: h, Label: labels[i], Value: v})
	}
	return c
}

type usageData struct {
	Granularity string
	Charts      []chart
	Totals      tenants.Usage
	Quotas      []quotaUse
}

func (c *Console) usagePage(w http.ResponseWriter, r *http.Request) {
	t := tenantOf(r)
	gran := r.URL.Query().Get("granularity")
	now := c.cfg.Now().UTC()
	from, step, n, layout := now.Truncate(time.Hour).Add(-23*time.Hour), time.Hour, 24, "15:04"
	if gran == tenants.Daily {
		day := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
		from, step, n, layout = day.AddDate(0, 0, -29), 24*time.Hour, 30, "Jan 2"
	} else {
		gran = tenants.Hourly
	}
	buckets, err := c.store.Usage(r.Context(), t.Slug, from, now.Add(time.Hour), gran)
	if err != nil {
		c.internal(w, r, err)
		return
	}
	labels := make([]string, n)
	in, out, bytesIn, bytesOut, conns := make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
	for i := range n {
		labels[i] = from.Add(time.Duration(i) * step).Format(layout)
	}
	var d usageData
	for _, b := range buckets {
		i := int(b.Start.Sub(from) / step)
		if i < 0 || i >= n {
			continue
		}
		in[i], out[i], bytesIn[i], bytesOut[i], conns[i] = b.MessagesIn, b.MessagesOut, b.BytesIn, b.BytesOut, b.PeakConnections
		d.Totals.Add(b.Usage)
	}
	d.Granularity = gran
	d.Charts = []chart{
		newChart("Messages in", labels, in), newChart("Messages out", labels, out),
		newChart("Bytes in", labels, bytesIn), newChart("Bytes out", labels, bytesOut),
		newChart("Peak connections", labels, conns),
	}
	if d.Quotas, _, err = c.quotaUses(r, t); err != nil {
		c.internal(w, r, err)
		return
	}
	c.render(w, r, http.StatusOK, "usage.html", page{Title: "Usage and quotas", Nav: "usage", Data: d})
}

type settingsData struct {
	DenyActions []tenants.DenyAction
}

func (c *Console) settingsPage(w http.ResponseWriter, r *http.Request) {
	c.renderSettings(w, r, http.StatusOK, page{})
}

func (c *Console) renderSettings(w http.ResponseWriter, r *http.Request, status int, p page) {
	p.Title, p.Nav = "Settings", "settings"
	p.Data = settingsData{DenyActions: []tenants.DenyAction{tenants.DenyIgnore, tenants.DenyDisconnect}}
	c.render(w, r, status, "settings.html", p)
}

// settingsUpdate sets the tenant's deny action, by the API's rules
// (tenants.TenantUpdate.MayApply): admins and owners. It is audited, and
// reaches connected devices without a reconnect, as a PATCH of the tenant
// does.
func (c *Console) settingsUpdate(w http.ResponseWriter, r *http.Request) {
	t := tenantOf(r)
	a := tenants.DenyAction(r.PostFormValue("deny_action"))
	u := tenants.TenantUpdate{DenyAction: &a}
	if err := u.MayApply(roleOf(r)); err != nil {
		c.fail(w, r, err)
		return
	}
	if _, err := c.store.UpdateTenant(r.Context(), t.Slug, u); err != nil {
		if !errors.Is(err, tenants.ErrInvalid) {
			c.fail(w, r, err)
			return
		}
		c.renderSettings(w, r, http.StatusBadRequest, page{Errors: formErrors(err)})
		return
	}
	redirect(w, r, "/tenants/"+t.Slug+"/settings", "saved")
}
