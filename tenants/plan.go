package tenants

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"

	"go.yaml.in/yaml/v3"
)

// Plan names.
const (
	PlanFree       = "free"
	PlanPro        = "pro"
	PlanBusiness   = "business"
	PlanEnterprise = "enterprise"
)

// Plan is what a plan gives a tenant and what Stripe charges for it.
type Plan struct {
	Name   string `json:"name"`
	Quotas Quotas `json:"quotas"`
	// StripePrice is the flat recurring price; StripeMeteredPrice the price
	// of each message past messages_per_month, attached to the billing meter
	// Roost reports to. Free needs neither.
	StripePrice        string `json:"-"`
	StripeMeteredPrice string `json:"-"`
	// OverageCentsPerMillion is what a million messages past the allowance
	// cost, in cents: what the metered price charges, for spend caps and the
	// billing page's estimate.
	OverageCentsPerMillion int64 `json:"overage_cents_per_million"`
}

// BillsOverage reports whether the plan lets a tenant go past
// messages_per_month and bills the excess (every paid plan); the free plan
// blocks publishes instead.
func (p Plan) BillsOverage() bool { return p.Name != PlanFree && p.Name != "" }

// Plans is the catalogue of plans by name.
type Plans map[string]Plan

const (
	kib = 1024
	day = 24 * 3600
)

// DefaultPlans returns the built-in catalogue. The free plan's quotas are
// DESIGN §3's defaults; each paid plan raises them roughly tenfold. No plan
// has Stripe prices: an operator who bills sets them in the plans file.
func DefaultPlans() Plans {
	return Plans{
		PlanFree: {Name: PlanFree, Quotas: Quotas{
			MaxDevices: 100, MaxConnections: 100, ConnectRate: 20,
			PublishRate: 100, TenantPublishRate: 1000,
			BandwidthIn: 512 * kib, BandwidthOut: 512 * kib, MaxPacketSize: 128 * kib,
			MaxSubscriptions: 50, MaxRetained: 1000, MaxQueued: 1000,
			MaxSessionExpiry: 7 * day, MaxKeepalive: 300, MessagesPerMonth: 1_000_000, MaxNodes: 1, MaxOutbox: 10_000,
			EventRetention: 1 * day, MaxStreams: 2, MaxShadowBytes: 8 * kib, MaxPendingCommands: 100, MaxSessions: 200,
		}},
		PlanPro: {Name: PlanPro, OverageCentsPerMillion: 500, Quotas: Quotas{
			MaxDevices: 1000, MaxConnections: 1000, ConnectRate: 100,
			PublishRate: 200, TenantPublishRate: 10_000,
			BandwidthIn: 1024 * kib, BandwidthOut: 1024 * kib, MaxPacketSize: 256 * kib,
			MaxSubscriptions: 100, MaxRetained: 10_000, MaxQueued: 10_000,
			MaxSessionExpiry: 30 * day, MaxKeepalive: 600, MessagesPerMonth: 10_000_000, MaxNodes: 1, MaxOutbox: 100_000,
			EventRetention: 7 * day, MaxStreams: 5, MaxShadowBytes: 64 * kib, MaxPendingCommands: 500, MaxSessions: 2000,
		}},
		PlanBusiness: {Name: PlanBusiness, OverageCentsPerMillion: 300, Quotas: Quotas{
			MaxDevices: 10_000, MaxConnections: 10_000, ConnectRate: 500,
			PublishRate: 500, TenantPublishRate: 50_000,
			BandwidthIn: 2048 * kib, BandwidthOut: 2048 * kib, MaxPacketSize: 1024 * kib,
			MaxSubscriptions: 200, MaxRetained: 100_000, MaxQueued: 100_000,
			MaxSessionExpiry: 90 * day, MaxKeepalive: 1200, MessagesPerMonth: 100_000_000, MaxNodes: 4, MaxOutbox: 1_000_000,
			EventRetention: 30 * day, MaxStreams: 10, MaxShadowBytes: 64 * kib, MaxPendingCommands: 2000, MaxSessions: 20_000,
		}},
		PlanEnterprise: {Name: PlanEnterprise, OverageCentsPerMillion: 200, Quotas: Quotas{
			MaxDevices: 1_000_000, MaxConnections: 1_000_000, ConnectRate: 5000,
			PublishRate: 1000, TenantPublishRate: 500_000,
			BandwidthIn: 8192 * kib, BandwidthOut: 8192 * kib, MaxPacketSize: 8192 * kib,
			MaxSubscriptions: 1000, MaxRetained: 1_000_000, MaxQueued: 1_000_000,
			MaxSessionExpiry: 365 * day, MaxKeepalive: 3600, MessagesPerMonth: 1_000_000_000, MaxNodes: 32, MaxOutbox: 10_000_000,
			EventRetention: 90 * day, MaxStreams: 20, MaxShadowBytes: 64 * kib, MaxPendingCommands: 10_000, MaxSessions: 2_000_000,
		}},
	}
}

var defaultPlans = DefaultPlans()

// Plan returns the named plan; an unknown name gets the free plan, so a
// stale plan name can never lift every limit.
func (ps Plans) Plan(name string) Plan {
	if p, ok := ps[name]; ok {
		return p
	}
	return ps[PlanFree]
}

// Names lists the plans' names, sorted.
func (ps Plans) Names() []string {
	names := make([]string, 0, len(ps))
	for n := range ps {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// ByPrice returns the plan whose flat or metered Stripe price is price.
func (ps Plans) ByPrice(price string) (Plan, bool) {
	if price == "" {
		return Plan{}, false
	}
	for _, p := range ps {
		if p.StripePrice == price || p.StripeMeteredPrice == price {
			return p, true
		}
	}
	return Plan{}, false
}

// PlanQuotas returns the quotas of the named built-in plan.
func PlanQuotas(plan string) Quotas { return defaultPlans.Plan(plan).Quotas }

// planFile is the plans file: for each plan, what differs from the built-in
// catalogue.
type planFile struct {
	Plans map[string]struct {
		StripePrice            *string          `yaml:"stripe_price"`
		StripeMeteredPrice     *string          `yaml:"stripe_metered_price"`
		OverageCentsPerMillion *int64           `yaml:"overage_cents_per_million"`
		Quotas                 map[string]int64 `yaml:"quotas"`
	} `yaml:"plans"`
}

// LoadPlans reads a plans file (YAML) over the built-in catalogue: each
// plan named takes the prices and quotas given and keeps the others. Plan
// names are the four built in; a plan with a flat price needs a metered one
// too, and its overage price, and free has none.
func LoadPlans(r io.Reader) (Plans, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	var f planFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("plans file: %w", err)
	}
	ps := DefaultPlans()
	for name, in := range f.Plans {
		p, ok := ps[name]
		if !ok {
			return nil, fmt.Errorf("plans file: unknown plan %q (the plans are %v)", name, ps.Names())
		}
		if in.StripePrice != nil {
			p.StripePrice = *in.StripePrice
		}
		if in.StripeMeteredPrice != nil {
			p.StripeMeteredPrice = *in.StripeMeteredPrice
		}
		if in.OverageCentsPerMillion != nil {
			p.OverageCentsPerMillion = *in.OverageCentsPerMillion
		}
		for q, v := range in.Quotas {
			if !isQuotaName(q) {
				return nil, fmt.Errorf("plans file: plan %s: unknown quota %q", name, q)
			}
			if v < 0 {
				return nil, fmt.Errorf("plans file: plan %s: quota %s must not be negative", name, q)
			}
			p.Quotas.set(q, v)
		}
		switch {
		case name == PlanFree && (p.StripePrice != "" || p.StripeMeteredPrice != ""):
			return nil, errors.New("plans file: the free plan has no Stripe prices")
		case p.StripePrice != "" && p.StripeMeteredPrice == "":
			return nil, fmt.Errorf("plans file: plan %s: stripe_price needs stripe_metered_price (usage past the allowance is billed)", name)
		case p.StripePrice == "" && p.StripeMeteredPrice != "":
			return nil, fmt.Errorf("plans file: plan %s: stripe_metered_price needs stripe_price", name)
		case p.OverageCentsPerMillion < 0:
			return nil, fmt.Errorf("plans file: plan %s: overage_cents_per_million must not be negative", name)
		}
		ps[name] = p
	}
	seen := map[string]string{}
	for _, name := range ps.Names() {
		for _, price := range []string{ps[name].StripePrice, ps[name].StripeMeteredPrice} {
			if other, dup := seen[price]; dup && price != "" {
				return nil, fmt.Errorf("plans file: price %s is used by both %s and %s", price, other, name)
			}
			seen[price] = name
		}
	}
	return ps, nil
}
