package tenants_test

import (
	"strings"
	"testing"

	"github.com/roosthub/roost/tenants"
)

func TestLoadPlans(t *testing.T) {
	ps, err := tenants.LoadPlans(strings.NewReader(`
plans:
  pro:
    stripe_price: price_pro
    stripe_metered_price: price_pro_msgs
    overage_cents_per_million: 450
    quotas:
      max_devices: 2500
`))
	if err != nil {
		t.Fatal(err)
	}
	pro := ps.Plan(tenants.PlanPro)
	def := tenants.DefaultPlans()[tenants.PlanPro]
	if pro.StripePrice != "price_pro" || pro.StripeMeteredPrice != "price_pro_msgs" || pro.OverageCentsPerMillion != 450 ||
		pro.Quotas.MaxDevices != 2500 || pro.Quotas.MaxConnections != def.Quotas.MaxConnections {
		t.Errorf("pro after the file: %+v", pro)
	}
	if p, ok := ps.ByPrice("price_pro_msgs"); !ok || p.Name != tenants.PlanPro {
		t.Errorf("ByPrice: %+v %v", p, ok)
	}
	if _, ok := ps.ByPrice(""); ok {
		t.Error("the empty price names a plan")
	}
	if ps.Plan("nonsense").Name != tenants.PlanFree {
		t.Error("an unknown plan name is not the free plan")
	}
	if empty, err := tenants.LoadPlans(strings.NewReader("")); err != nil || len(empty) != 4 {
		t.Errorf("an empty file: %v plans, %v", len(empty), err)
	}

	for _, bad := range []struct{ file, want string }{
		{"plans:\n  gold: {}\n", `unknown plan "gold"`},
		{"plans:\n  pro:\n    quotas: {max_widgets: 1}\n", `unknown quota "max_widgets"`},
		{"plans:\n  pro:\n    quotas: {max_devices: -1}\n", "must not be negative"},
		{"plans:\n  pro:\n    stripe_price: price_a\n", "needs stripe_metered_price"},
		{"plans:\n  pro:\n    stripe_metered_price: price_a\n", "needs stripe_price"},
		{"plans:\n  free:\n    stripe_price: price_a\n    stripe_metered_price: price_b\n", "free plan has no Stripe prices"},
		{"plans:\n  pro: {stripe_price: a, stripe_metered_price: b}\n  business: {stripe_price: a, stripe_metered_price: c}\n", "used by both"},
		{"plans:\n  pro:\n    stripe_prize: a\n", "stripe_prize"},
		{"plans: [", "plans file"},
	} {
		if _, err := tenants.LoadPlans(strings.NewReader(bad.file)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: got %v, want an error with %q", bad.file, err, bad.want)
		}
	}
}

// A spend cap that continues leaves the allowance and overage billing alone;
// one that blocks turns into allowance; on free it means nothing.
func TestSpendCapQuotas(t *testing.T) {
	pro := tenants.Tenant{Plan: tenants.PlanPro, SpendCap: &tenants.SpendCap{Cents: 250}}
	base := tenants.PlanQuotas(tenants.PlanPro).MessagesPerMonth
	if pro.Quotas().MessagesPerMonth != base || !pro.BillsOverage() || pro.Allowance() != base {
		t.Errorf("continuing cap: %d, bills %v", pro.Quotas().MessagesPerMonth, pro.BillsOverage())
	}
	pro.SpendCap.Block = true
	if got := pro.Quotas().MessagesPerMonth; got != base+500_000 || pro.BillsOverage() || pro.Allowance() != base {
		t.Errorf("blocking cap of 250 cents at 500/M: %d (want %d), bills %v", got, base+500_000, pro.BillsOverage())
	}
	free := tenants.Tenant{Plan: tenants.PlanFree, SpendCap: &tenants.SpendCap{Cents: 250, Block: true}}
	if free.Quotas().MessagesPerMonth != tenants.PlanQuotas(tenants.PlanFree).MessagesPerMonth || free.BillsOverage() {
		t.Errorf("a cap on free changed its allowance: %d", free.Quotas().MessagesPerMonth)
	}
}
