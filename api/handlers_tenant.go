package api

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

type tenantStore interface {
	Tenant(ctx context.Context, slug string) (tenants.Tenant, error)
	TenantsOf(ctx context.Context, account string, p tenants.Page) ([]tenants.Tenant, string, error)
	UpdateTenant(ctx context.Context, slug string, u tenants.TenantUpdate) (tenants.Tenant, error)
	DeleteTenant(ctx context.Context, slug string) error
}

func handleTenantList(ts tenantStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		p, err := page(r)
		if err != nil {
			return err
		}
		caller := principalFrom(r.Context())
		switch {
		case caller.account != nil:
			items, next, err := ts.TenantsOf(r.Context(), caller.account.ID, p)
			if err != nil {
				return err
			}
			writeJSON(w, http.StatusOK, newList(items, next))
		case caller.key != nil:
			// A key sees the one tenant it belongs to.
			t, err := ts.Tenant(r.Context(), caller.key.Tenant)
			if err != nil {
				return err
			}
			t.Role = caller.key.Role
			writeJSON(w, http.StatusOK, newList([]tenants.Tenant{t}, ""))
		default:
			return errorf(http.StatusForbidden, "forbidden", "the operator lists tenants at /v1/admin/tenants")
		}
		return nil
	}
}

// handleTenantCreate creates a tenant, held to the account's limits
// (auth.Service.CreateTenant).
func handleTenantCreate(front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		caller := principalFrom(r.Context())
		if caller.account == nil {
			return errorf(http.StatusForbidden, "forbidden", "only an account (a console session) can create tenants")
		}
		var in tenants.TenantInput
		if err := decode(r, &in); err != nil {
			return err
		}
		t, err := front.CreateTenant(r.Context(), caller.account.ID, in)
		if err != nil {
			return err
		}
		w.Header().Set("Location", "/v1/tenants/"+t.Slug)
		writeJSON(w, http.StatusCreated, t)
		return nil
	}
}

func handleTenantGet(ts tenantStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		t, err := ts.Tenant(r.Context(), chi.URLParam(r, "tenant"))
		if err != nil {
			return err
		}
		t.Role = roleFrom(r.Context())
		writeJSON(w, http.StatusOK, t)
		return nil
	}
}

// handleTenantUpdate changes a tenant's settings, each by the role it
// needs (tenants.TenantUpdate.MayApply).
func handleTenantUpdate(ts tenantStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var u tenants.TenantUpdate
		if err := decode(r, &u); err != nil {
			return err
		}
		if err := u.Validate(); err != nil {
			return err
		}
		if err := u.MayApply(roleFrom(r.Context())); err != nil {
			return err
		}
		t, err := ts.UpdateTenant(r.Context(), chi.URLParam(r, "tenant"), u)
		if err != nil {
			return err
		}
		t.Role = roleFrom(r.Context())
		writeJSON(w, http.StatusOK, t)
		return nil
	}
}

func handleTenantDelete(ts tenantStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := ts.DeleteTenant(r.Context(), chi.URLParam(r, "tenant")); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}

type quotaView struct {
	Plan      string           `json:"plan"`
	Quotas    tenants.Quotas   `json:"quotas"`
	Overrides map[string]int64 `json:"overrides"`
}

func handleQuotas(ts tenantStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		t, err := ts.Tenant(r.Context(), chi.URLParam(r, "tenant"))
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, quotaView{Plan: t.Plan, Quotas: t.Quotas(), Overrides: t.Overrides})
		return nil
	}
}

type memberStore interface {
	Members(ctx context.Context, tenant string, p tenants.Page) ([]tenants.Member, string, error)
}

func handleMemberList(ms memberStore) handler {
	return handleList(func(r *http.Request, p tenants.Page) ([]tenants.Member, string, error) {
		return ms.Members(r.Context(), chi.URLParam(r, "tenant"), p)
	})
}

// memberRequest is the answer to adding a member: the same whether or not
// an account has the email, so that it tells nobody who has one.
type memberRequest struct {
	Email string       `json:"email"`
	Role  tenants.Role `json:"role"`
}

// handleMemberAdd adds the account with an email, if there is one, under
// the membership rules of tenants.By (auth.Service.AddMember): 202 either
// way.
func handleMemberAdd(front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var in tenants.MemberInput
		if err := decode(r, &in); err != nil {
			return err
		}
		p := principalFrom(r.Context())
		tenant := chi.URLParam(r, "tenant")
		if err := front.AddMember(r.Context(), tenant, p.actor(), p.by(roleFrom(r.Context())), in); err != nil {
			return err
		}
		writeJSON(w, http.StatusAccepted, memberRequest{Email: in.Email, Role: in.Role})
		return nil
	}
}

// handleMemberRemove removes a member under the membership rules of
// tenants.By: anyone may leave; ?keep_api_keys=true (owners only) keeps the
// keys made on the member's behalf, which otherwise end with it.
func handleMemberRemove(front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		keep := false
		if v := r.URL.Query().Get("keep_api_keys"); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return &httpError{status: http.StatusBadRequest, code: "invalid", field: "keep_api_keys", msg: "keep_api_keys must be true or false"}
			}
			keep = b
		}
		tenant, account := chi.URLParam(r, "tenant"), chi.URLParam(r, "account")
		p := principalFrom(r.Context())
		if err := front.RemoveMember(r.Context(), tenant, account, p.by(roleFrom(r.Context())), keep); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}

type adminStore interface {
	AdminTenants(ctx context.Context, search string, now time.Time, p tenants.Page) ([]tenants.AdminTenant, string, error)
	Tenant(ctx context.Context, slug string) (tenants.Tenant, error)
	AdminUpdateTenant(ctx context.Context, slug string, u tenants.AdminTenantUpdate) (tenants.Tenant, error)
	DeleteTenant(ctx context.Context, slug string) error
	Stats(ctx context.Context, now time.Time) (tenants.Stats, error)
}

// handleAdminTenantList lists tenants for the operator, with their device
// counts and this month's messages; ?q= searches slugs and names.
func handleAdminTenantList(as adminStore, now func() time.Time) handler {
	return handleList(func(r *http.Request, p tenants.Page) ([]tenants.AdminTenant, string, error) {
		q := r.URL.Query().Get("q")
		if len(q) > 100 {
			return nil, "", &tenants.FieldError{Field: "q", Message: "must be at most 100 characters"}
		}
		return as.AdminTenants(r.Context(), q, now(), p)
	})
}

// handleAdminTenantDelete deletes a tenant: its devices, rules, keys and
// members here, its sessions, queues and retained messages in the session
// store (the data plane purges them on the change); its usage and audit log
// stay for the retention period.
func handleAdminTenantDelete(as adminStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := as.DeleteTenant(r.Context(), chi.URLParam(r, "tenant")); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}

// statsView is the hub's totals; connections only where this process runs
// the data plane.
type statsView struct {
	tenants.Stats
	Connections *int `json:"connections"`
}

func handleAdminStats(as adminStore, dp dataplane.DataPlane, now func() time.Time) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		st, err := as.Stats(r.Context(), now())
		if err != nil {
			return err
		}
		v := statsView{Stats: st}
		if dp != nil {
			n := dp.Stats().Connections
			v.Connections = &n
		}
		writeJSON(w, http.StatusOK, v)
		return nil
	}
}

type impersonation struct {
	Token     string       `json:"token"`
	ExpiresAt time.Time    `json:"expires_at"`
	Tenant    string       `json:"tenant"`
	Role      tenants.Role `json:"role"`
}

// handleAdminImpersonate gives the operator a short-lived token that acts
// as an owner of one tenant, for support. The reason goes into the
// tenant's audit log, and so does every change made with the token; its
// session ends after 15 minutes, or when the token logs out.
func handleAdminImpersonate(front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var in struct {
			Reason string `json:"reason"`
		}
		if err := decode(r, &in); err != nil {
			return err
		}
		slug := chi.URLParam(r, "tenant")
		is, err := front.Impersonate(r.Context(), slug, in.Reason)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusCreated, impersonation{Token: is.Token, ExpiresAt: is.ExpiresAt, Tenant: slug, Role: tenants.RoleOwner})
		return nil
	}
}

func handleAdminTenantGet(as adminStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		t, err := as.Tenant(r.Context(), chi.URLParam(r, "tenant"))
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, t)
		return nil
	}
}

func handleAdminTenantUpdate(as adminStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var u tenants.AdminTenantUpdate
		if err := decode(r, &u); err != nil {
			return err
		}
		t, err := as.AdminUpdateTenant(r.Context(), chi.URLParam(r, "tenant"), u)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, t)
		return nil
	}
}

type usageStore interface {
	Usage(ctx context.Context, tenant string, from, to time.Time, granularity string) ([]tenants.UsageBucket, error)
}

// Longest spans one usage request may cover.
const (
	maxHourlySpan = 31 * 24 * time.Hour
	maxDailySpan  = 400 * 24 * time.Hour
)

// handleUsage returns a tenant's metered usage in hourly or daily buckets.
// Without from and to it covers the last 24 hours (hourly) or 30 days
// (daily), up to now.
func handleUsage(us usageStore, now func() time.Time) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		q := r.URL.Query()
		granularity := cmp.Or(q.Get("granularity"), tenants.Hourly)
		span := maxHourlySpan
		switch granularity {
		case tenants.Hourly:
		case tenants.Daily:
			span = maxDailySpan
		default:
			return &httpError{status: http.StatusBadRequest, code: "invalid", field: "granularity", msg: "granularity must be hour or day"}
		}
		parse := func(name string, def time.Time) (time.Time, error) {
			v := q.Get(name)
			if v == "" {
				return def, nil
			}
			t, err := time.Parse(time.RFC3339, v)
			if err != nil {
				return t, &httpError{status: http.StatusBadRequest, code: "invalid", field: name, msg: name + " must be an RFC 3339 time, like 2026-11-25T00:00:00Z"}
			}
			return t, nil
		}
		to, err := parse("to", now())
		if err != nil {
			return err
		}
		def := to.Add(-24 * time.Hour)
		if granularity == tenants.Daily {
			def = to.AddDate(0, 0, -30)
		}
		from, err := parse("from", def)
		if err != nil {
			return err
		}
		if !from.Before(to) || to.Sub(from) > span {
			return &httpError{status: http.StatusBadRequest, code: "invalid", field: "from",
				msg: fmt.Sprintf("from must be before to, at most %d days earlier for %s buckets", int(span.Hours()/24), granularity)}
		}
		items, err := us.Usage(r.Context(), chi.URLParam(r, "tenant"), from, to, granularity)
		if err != nil {
			return err
		}
		if items == nil {
			items = []tenants.UsageBucket{}
		}
		writeJSON(w, http.StatusOK, map[string]any{"granularity": granularity, "from": from.UTC(), "to": to.UTC(), "items": items})
		return nil
	}
}
