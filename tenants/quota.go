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
	// MaxKeepalive is the longest keep-alive a connection may have, in
	// seconds: one asking more, or 0 (never), is held to it. 0 here sets
	// no bound.
	MaxKeepalive     int64 `json:"max_keepalive"`
	MessagesPerMonth int64 `json:"messages_per_month"`
	// MaxNodes is how many data-plane nodes of a fleet may serve the
	// tenant at once, once its connections pass the fleet's threshold
	// (ROOST_FLEET_WIDEN_AT); 1 keeps it on its home.
	MaxNodes int64 `json:"max_nodes"`
	// MaxOutbox bounds each of the tenant's destinations' outboxes: the
	// messages matching its rules waiting to be delivered. What a full
	// one does is the tenant's outbox_policy.
	MaxOutbox int64 `json:"max_outbox"`
	// EventRetention is how long the tenant's events are kept, in
	// seconds (GET /events, streams' Last-Event-ID); 0 keeps them a day.
	EventRetention int64 `json:"event_retention"`
	// MaxStreams is how many app streams (GET /stream) the tenant may
	// have open at once, across every API process (a lease each; see
	// Store.AcquireStream).
	MaxStreams int64 `json:"max_streams"`
	// MaxShadowBytes bounds each device's shadow: its desired and
	// reported state as JSON, in bytes.
	MaxShadowBytes int64 `json:"max_shadow_bytes"`
	// MaxPendingCommands bounds the tenant's commands in flight: those
	// waiting for their reply on one data-plane node, and, apart, those
	// queued for a device that neither replied nor expired yet.
	MaxPendingCommands int64 `json:"max_pending_commands"`
	// MaxSessions bounds the sessions the tenant keeps at once on a
	// data-plane node: connected clients and persistent sessions waiting
	// for theirs. A client id of its own per connection (a gateway's
	// devices) makes a session each, kept for up to max_session_expiry
	// with its subscriptions and queue.
	MaxSessions int64 `json:"max_sessions"`
}

// quotaFields maps each quota's name to its field. It is the one list of
// quota names: validation, overrides and the API all use it.
var quotaFields = map[string]func(*Quotas) *int64{
	"max_devices":          func(q *Quotas) *int64 { return &q.MaxDevices },
	"max_connections":      func(q *Quotas) *int64 { return &q.MaxConnections },
	"connect_rate":         func(q *Quotas) *int64 { return &q.ConnectRate },
	"publish_rate":         func(q *Quotas) *int64 { return &q.PublishRate },
	"tenant_publish_rate":  func(q *Quotas) *int64 { return &q.TenantPublishRate },
	"bandwidth_in":         func(q *Quotas) *int64 { return &q.BandwidthIn },
	"bandwidth_out":        func(q *Quotas) *int64 { return &q.BandwidthOut },
	"max_packet_size":      func(q *Quotas) *int64 { return &q.MaxPacketSize },
	"max_subscriptions":    func(q *Quotas) *int64 { return &q.MaxSubscriptions },
	"max_retained":         func(q *Quotas) *int64 { return &q.MaxRetained },
	"max_queued":           func(q *Quotas) *int64 { return &q.MaxQueued },
	"max_session_expiry":   func(q *Quotas) *int64 { return &q.MaxSessionExpiry },
	"max_keepalive":        func(q *Quotas) *int64 { return &q.MaxKeepalive },
	"messages_per_month":   func(q *Quotas) *int64 { return &q.MessagesPerMonth },
	"max_nodes":            func(q *Quotas) *int64 { return &q.MaxNodes },
	"max_outbox":           func(q *Quotas) *int64 { return &q.MaxOutbox },
	"event_retention":      func(q *Quotas) *int64 { return &q.EventRetention },
	"max_streams":          func(q *Quotas) *int64 { return &q.MaxStreams },
	"max_shadow_bytes":     func(q *Quotas) *int64 { return &q.MaxShadowBytes },
	"max_pending_commands": func(q *Quotas) *int64 { return &q.MaxPendingCommands },
	"max_sessions":         func(q *Quotas) *int64 { return &q.MaxSessions },
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

// Value returns the quota of that name; 0 for a name that is none.
func (q Quotas) Value(name string) int64 {
	if f, ok := quotaFields[name]; ok {
		return *f(&q)
	}
	return 0
}

func (q *Quotas) set(name string, v int64) {
	if f, ok := quotaFields[name]; ok {
		*f(q) = v
	}
}
