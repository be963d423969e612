package tenants

import "slices"

// Quotas are the limits a tenant's plan sets, which the operator can override
// per tenant. Rates are per second; sizes are in bytes; durations in seconds.
type Quotas struct {
	MaxDevices        int64 `json:"max_devices"`
	MaxConnections    int64 `json:"max_connections"`
	ConnectRate       int64 `json:"connect_rate"`
	PublishRate       int64 `json:"publish_rate"`
	TenantPublishRate int64 `json:"tenant_publish_rate"`
	BandwidthIn       int64 `json:"bandwidth_in"`
	BandwidthOut      int64 `json:"bandwidth_out"`
	MaxPacketSize     int64 `json:"max_packet_size"`
	MaxSubscriptions  int64 `json:"max_subscriptions"`
	MaxRetained       int64 `json:"max_retained"`
	MaxQueued         int64 `json:"max_queued"`
	MaxSessionExpiry  int64 `json:"max_session_expiry"`
	MessagesPerMonth  int64 `json:"messages_per_month"`
}

// quotaFields maps each quota's name to its field. It is the one list of
// quota names: validation, overrides and the API all use it.
var quotaFields = map[string]func(*Quotas) *int64{
	"max_devices":         func(q *Quotas) *int64 { return &q.MaxDevices },
	"max_connections":     func(q *Quotas) *int64 { return &q.MaxConnections },
	"connect_rate":        func(q *Quotas) *int64 { return &q.ConnectRate },
	"publish_rate":        func(q *Quotas) *int64 { return &q.PublishRate },
	"tenant_publish_rate": func(q *Quotas) *int64 { return &q.TenantPublishRate },
	"bandwidth_in":        func(q *Quotas) *int64 { return &q.BandwidthIn },
	"bandwidth_out":       func(q *Quotas) *int64 { return &q.BandwidthOut },
	"max_packet_size":     func(q *Quotas) *int64 { return &q.MaxPacketSize },
	"max_subscriptions":   func(q *Quotas) *int64 { return &q.MaxSubscriptions },
	"max_retained":        func(q *Quotas) *int64 { return &q.MaxRetained },
	"max_queued":          func(q *Quotas) *int64 { return &q.MaxQueued },
	"max_session_expiry":  func(q *Quotas) *int64 { return &q.MaxSessionExpiry },
	"messages_per_month":  func(q *Quotas) *int64 { return &q.MessagesPerMonth },
}

func isQuotaName(name string) bool { _, ok := quotaFields[name]; return ok }

// QuotaNames lists every quota's name, sorted.
func QuotaNames() []string {
	names := make([]string, 0, len(quotaFields))
	for n := range quotaFields {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func (q *Quotas) set(name string, v int64) {
	if f, ok := quotaFields[name]; ok {
		*f(q) = v
	}
}

// Plan names.
const (
	PlanFree       = "free"
	PlanPro        = "pro"
	PlanBusiness   = "business"
	PlanEnterprise = "enterprise"
)

const (
	kib = 1024
	day = 24 * 3600
)

// plans holds each plan's quotas. The free plan's are DESIGN §3's defaults;
// each paid plan raises them roughly tenfold.
var plans = map[string]Quotas{
	PlanFree: {
		MaxDevices: 100, MaxConnections: 100, ConnectRate: 20,
		PublishRate: 100, TenantPublishRate: 1000,
		BandwidthIn: 512 * kib, BandwidthOut: 512 * kib, MaxPacketSize: 128 * kib,
		MaxSubscriptions: 50, MaxRetained: 1000, MaxQueued: 1000,
		MaxSessionExpiry: 7 * day, MessagesPerMonth: 1_000_000,
	},
	PlanPro: {
		MaxDevices: 1000, MaxConnections: 1000, ConnectRate: 100,
		PublishRate: 200, TenantPublishRate: 10_000,
		BandwidthIn: 1024 * kib, BandwidthOut: 1024 * kib, MaxPacketSize: 256 * kib,
		MaxSubscriptions: 100, MaxRetained: 10_000, MaxQueued: 10_000,
		MaxSessionExpiry: 30 * day, MessagesPerMonth: 10_000_000,
	},
	PlanBusiness: {
		MaxDevices: 10_000, MaxConnections: 10_000, ConnectRate: 500,
		PublishRate: 500, TenantPublishRate: 50_000,
		BandwidthIn: 2048 * kib, BandwidthOut: 2048 * kib, MaxPacketSize: 1024 * kib,
		MaxSubscriptions: 200, MaxRetained: 100_000, MaxQueued: 100_000,
		MaxSessionExpiry: 90 * day, MessagesPerMonth: 100_000_000,
	},
	PlanEnterprise: {
		MaxDevices: 1_000_000, MaxConnections: 1_000_000, ConnectRate: 5000,
		PublishRate: 1000, TenantPublishRate: 500_000,
		BandwidthIn: 8192 * kib, BandwidthOut: 8192 * kib, MaxPacketSize: 8192 * kib,
		MaxSubscriptions: 1000, MaxRetained: 1_000_000, MaxQueued: 1_000_000,
		MaxSessionExpiry: 365 * day, MessagesPerMonth: 1_000_000_000,
	},
}

// PlanQuotas returns the quotas of the named plan; an unknown name gets the
// free plan's, so a stale plan name can never lift every limit.
func PlanQuotas(plan string) Quotas {
	if q, ok := plans[plan]; ok {
		return q
	}
	return plans[PlanFree]
}

// BillsOverage reports whether the plan lets a tenant go past
// messages_per_month and bills the excess (every paid plan); the free plan
// blocks publishes instead.
func BillsOverage(plan string) bool { return ValidPlan(plan) && plan != PlanFree }

// ValidPlan reports whether name is a known plan.
func ValidPlan(name string) bool { _, ok := plans[name]; return ok }
