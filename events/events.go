// Package events carries the data plane's lifecycle events — connects,
// disconnects, subscriptions, authentication failures, dropped messages —
// to whoever watches them: an in-memory log per tenant, the directory
// (Recorder, which stores them for the tenant's history), and a Kafka
// topic when Kafka is configured. One Sink interface, three
// implementations.
package events

import (
	"sync"
	"time"
)

// Event is one thing that happened to a device or session.
type Event struct {
	// ID is the event's place in the tenant's stored history (see
	// Recorder): it grows with each event stored, and is 0 for an event
	// not stored (yet).
	ID       int64     `json:"id,omitempty"`
	Time     time.Time `json:"time"`
	Tenant   string    `json:"tenant"`
	Type     string    `json:"type"`
	Device   string    `json:"device,omitempty"`
	ClientID string    `json:"client_id,omitempty"`
	Remote   string    `json:"remote,omitempty"`
	Reason   string    `json:"reason,omitempty"`
	Filters  []string  `json:"filters,omitempty"`
	Quota    string    `json:"quota,omitempty"`
	Limit    int64     `json:"limit,omitempty"`
	// MessageTopic is the topic of the message the event is about (a
	// denied publish's).
	MessageTopic string `json:"topic,omitempty"`
	// Count is how many occurrences the event stands for, when repeats
	// are folded into one (publish_denied).
	Count int64 `json:"count,omitempty"`
	// Destination is the id of the destination whose outbox the event is
	// about (outbox_dropped).
	Destination string `json:"destination,omitempty"`
}

// The event types.
const (
	Connected    = "connected"
	Disconnected = "disconnected"
	Subscribed   = "subscribed"
	Unsubscribed = "unsubscribed"
	AuthFailed   = "auth_failed"
	QueueDropped = "queue_dropped"
	// QuotaExceeded names the quota and its limit.
	QuotaExceeded = "quota_exceeded"
	// PublishDenied names the topic a device was denied and how many
	// denials of it the event stands for.
	PublishDenied = "publish_denied"

	// Billing's events, about the tenant rather than a device.
	PlanChanged      = "plan_changed"
	PaymentFailed    = "payment_failed"
	PaymentSucceeded = "payment_succeeded"
	BillingSuspended = "billing_suspended"
	BillingResumed   = "billing_resumed"
	// SpendWarning's limit is the spend cap in cents.
	SpendWarning = "spend_warning"
	// SubscriptionChanged: the tenant's Stripe subscription was created,
	// replaced, or changed status (past_due, canceled…); Reason says from
	// what to what.
	SubscriptionChanged = "subscription_changed"

	// ShadowUpdated: a device's shadow changed; Reason says through
	// what ("api" or "mqtt") and Count is its new version.
	ShadowUpdated = "shadow_updated"

	// OutboxDropped: messages a destination's full outbox did not keep
	// (Count of them, Limit its max_outbox), and how (Reason): the oldest,
	// dropped past the limit ("drop_oldest": the drop_oldest policy, or
	// an outbox that went over its limit under refuse, as appends made
	// at once on several connections or nodes can), or new QoS 0
	// messages and events not taken under refuse ("refuse"). One event a
	// minute per destination at most, folding the drops in between.
	OutboxDropped = "outbox_dropped"

	// DeviceProvisioned: a device unknown to the tenant was registered on
	// its first connection with a certificate under a CA marked for
	// provisioning; Reason is the CA's fingerprint.
	DeviceProvisioned = "device_provisioned"
)

// Types lists every event type.
var Types = []string{Connected, Disconnected, Subscribed, Unsubscribed, AuthFailed, QueueDropped, QuotaExceeded, PublishDenied,
	PlanChanged, PaymentFailed, PaymentSucceeded, BillingSuspended, BillingResumed, SpendWarning, ShadowUpdated,
	DeviceProvisioned, SubscriptionChanged, OutboxDropped}

// Sink receives events. Emit must not block the connection that caused the
// event: a sink that cannot keep up counts what it drops.
type Sink interface {
	Emit(Event)
}

// Memory keeps each tenant's most recent events.
type Memory struct {
	size int

	mu      sync.Mutex
	tenants map[string]*ring
}

type ring struct {
	buf  []Event
	next int
	full bool
}

// NewMemory keeps the last size events of each tenant.
func NewMemory(size int) *Memory {
	return &Memory{size: max(size, 1), tenants: map[string]*ring{}}
}

// Emit records an event.
func (m *Memory) Emit(e Event) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.tenants[e.Tenant]
	if r == nil {
		r = &ring{}
		m.tenants[e.Tenant] = r
	}
	// The ring grows as events come (a tenant that is idle has a few,
	// and a full ring of events is some 200 KB), then wraps.
	if !r.full {
		r.buf = append(r.buf, e)
		r.full = len(r.buf) == m.size
		return
	}
	r.buf[r.next] = e
	r.next = (r.next + 1) % m.size
}

// Recent returns a tenant's events, oldest first; only that tenant's.
func (m *Memory) Recent(tenant string) []Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.tenants[tenant]
	if r == nil {
		return nil
	}
	if !r.full {
		return append([]Event(nil), r.buf...)
	}
	return append(append([]Event(nil), r.buf[r.next:]...), r.buf[:r.next]...)
}

// Tee sends every event to each of its sinks, in order.
type Tee []Sink

// Emit passes the event on.
func (t Tee) Emit(e Event) {
	for _, s := range t {
		s.Emit(e)
	}
}

// Topic is the MQTT topic an event is published on inside its tenant, or ""
// for an event without one:
//
//	$events/presence/connected/<device>
//	$events/presence/disconnected/<device>
//	$events/subscriptions/subscribed/<device>
//	$events/subscriptions/unsubscribed/<device>
//	$events/auth/failed/<device>
//	$events/quota/<quota>/<device>
//	$events/queue/dropped/<device>
//	$events/publish/denied/<device>
//	$events/outbox/dropped/<destination id>
//	$events/billing/<type>
//
// Billing's events are about the tenant, not a device: their topic ends
// with the event's type (plan_changed, subscription_changed,
// payment_failed, payment_succeeded, billing_suspended, billing_resumed,
// spend_warning).
func (e Event) Topic() string {
	if IsBilling(e.Type) {
		return "$events/billing/" + e.Type
	}
	if e.Type == OutboxDropped {
		if e.Destination == "" {
			return ""
		}
		return "$events/outbox/dropped/" + e.Destination
	}
	if e.Device == "" {
		return ""
	}
	switch e.Type {
	case Connected, Disconnected:
		return "$events/presence/" + e.Type + "/" + e.Device
	case Subscribed, Unsubscribed:
		return "$events/subscriptions/" + e.Type + "/" + e.Device
	case AuthFailed:
		return "$events/auth/failed/" + e.Device
	case QuotaExceeded:
		return "$events/quota/" + e.Quota + "/" + e.Device
	case QueueDropped:
		return "$events/queue/dropped/" + e.Device
	case PublishDenied:
		return "$events/publish/denied/" + e.Device
	}
	return ""
}

// HasTopic reports whether the event has a topic (Topic is not ""),
// without building it: the hub asks of every event it raises.
func (e Event) HasTopic() bool {
	if IsBilling(e.Type) {
		return true
	}
	if e.Type == OutboxDropped {
		return e.Destination != ""
	}
	if e.Device == "" {
		return false
	}
	switch e.Type {
	case Connected, Disconnected, Subscribed, Unsubscribed, AuthFailed, QuotaExceeded, QueueDropped, PublishDenied:
		return true
	}
	return false
}

// IsBilling reports whether an event type is one of billing's.
func IsBilling(typ string) bool {
	switch typ {
	case PlanChanged, PaymentFailed, PaymentSucceeded, BillingSuspended, BillingResumed, SpendWarning, SubscriptionChanged:
		return true
	}
	return false
}
