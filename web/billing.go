package web

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/roosthub/roost/billing"
	"github.com/roosthub/roost/tenants"
)

func (c *Console) billingPage(w http.ResponseWriter, r *http.Request) {
	o, err := c.cfg.Billing.Overview(r.Context(), tenantOf(r).Slug)
	if err != nil {
		c.internal(w, r, err)
		return
	}
	p := page{Title: "Billing", Nav: "billing", Data: billingData{Overview: o, Plans: c.paidPlans()}}
	switch r.URL.Query().Get("checkout") {
	case "done":
		p.Flash = flashes["checkout"]
	case "cancelled":
		p.Flash = flashes["cancelled"]
	}
	c.render(w, r, http.StatusOK, "billing.html", p)
}

type billingData struct {
	billing.Overview
	Plans []tenants.Plan
}

// paidPlans are the plans Checkout sells.
func (c *Console) paidPlans() []tenants.Plan {
	var out []tenants.Plan
	ps := c.store.Plans()
	for _, n := range []string{tenants.PlanPro, tenants.PlanBusiness, tenants.PlanEnterprise} {
		if p, ok := ps[n]; ok && p.StripePrice != "" {
			out = append(out, p)
		}
	}
	return out
}

func (c *Console) billingCheckout(w http.ResponseWriter, r *http.Request) {
	u, err := c.cfg.Billing.Checkout(r.Context(), tenantOf(r).Slug, r.PostFormValue("plan"), accountOf(r).Email)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	http.Redirect(w, r, u, http.StatusSeeOther)
}

func (c *Console) billingPortal(w http.ResponseWriter, r *http.Request) {
	u, err := c.cfg.Billing.Portal(r.Context(), tenantOf(r).Slug, accountOf(r).Email)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	http.Redirect(w, r, u, http.StatusSeeOther)
}

func (c *Console) billingCap(w http.ResponseWriter, r *http.Request) {
	var sc *tenants.SpendCap
	if s := strings.TrimSpace(r.PostFormValue("cap")); s != "" {
		dollars, err := strconv.ParseFloat(s, 64)
		if err != nil || dollars < 0 || dollars > 1e9 {
			c.errorPage(w, r, http.StatusBadRequest, "The spend cap is an amount like 50 or 12.50, or empty for none.")
			return
		}
		sc = &tenants.SpendCap{Cents: int64(dollars*100 + 0.5), Block: r.PostFormValue("block") == "on"}
	}
	if err := c.cfg.Billing.SetSpendCap(r.Context(), tenantOf(r).Slug, sc); err != nil {
		c.fail(w, r, err)
		return
	}
	redirect(w, r, "/tenants/"+tenantOf(r).Slug+"/billing", "cap")
}
