// Package dataplane is the data plane's vocabulary: the values it answers
// with and the one interface through which the REST API, the console and a
// node's internal API use it. The data plane in this process (*broker.Hub)
// and the fleet seen from a control plane running apart (*cluster.Remote)
// both implement it, so what uses it never depends on the MQTT engine.
package dataplane

import (
	"context"
	"time"
)

// DataPlane is what the control plane asks of the data plane. Questions
// about a tenant whose broker is not running get zero values, not errors.
type DataPlane interface {
	// Connections lists a device's live connections.
	Connections(tenant, device string) []Connection
	// ConnectionCount is the number of a tenant's live device connections.
	ConnectionCount(tenant string) int
	// Queue reports what a device's persistent sessions hold.
	Queue(tenant, device string) QueueStats
	// ExportErrors counts each of a tenant's export rules' failures.
	ExportErrors(tenant string) map[string]int64
	// Disconnect ends every live connection of a device and returns how
	// many there were.
	Disconnect(tenant, device string) int
	// Publish publishes a message into a tenant's broker through the checks
	// and quotas a device's publish passes. Its errors are of the kinds of
	// package tenants (a *tenants.QuotaError, tenants.ErrUnavailable…).
	Publish(ctx context.Context, tenant string, m Message) error
	// Watch calls fn with each message published in the tenant on a topic
	// matching filter until ctx ends; watcher names who watches (an
	// account), whose live views are bounded apart from the tenant's.
	Watch(ctx context.Context, tenant, watcher, filter string, fn func(Message)) error
	// Stats is the data plane's totals over every tenant.
	Stats() Stats

	// Command publishes a command to a device and waits for its reply
	// (see Command); a device not connected gets nothing, unless the
	// command is to be queued.
	Command(ctx context.Context, tenant, device string, c Command) (CommandResult, error)

	// Retained lists the tenant's retained messages on topics matching
	// filter, by topic, from offset on, at most limit; next is the offset
	// of the next page, 0 at the end. Reserved topics are never listed.
	Retained(ctx context.Context, tenant, filter string, offset, limit int) (msgs []Retained, next int, err error)
	// RetainedMessage is the message retained on one topic
	// (tenants.ErrNotFound if none).
	RetainedMessage(ctx context.Context, tenant, topic string) (RetainedMessage, error)
	// DeleteRetained clears the message retained on one topic
	// (tenants.ErrNotFound if none).
	DeleteRetained(ctx context.Context, tenant, topic string) error
	// Session describes a device's sessions: subscriptions and queues.
	Session(ctx context.Context, tenant, device string) (Session, error)
	// PurgeQueue drops every message queued for a device's sessions and
	// returns how many it dropped.
	PurgeQueue(ctx context.Context, tenant, device string) (int, error)
}

// Connection is one live MQTT connection of a device.
type Connection struct {
	ClientID        string    `json:"client_id"`
	ConnectedAt     time.Time `json:"connected_at"`
	RemoteAddr      string    `json:"remote_addr"`
	ProtocolVersion int       `json:"protocol_version"`
}

// QueueStats describes what a device's persistent sessions hold.
type QueueStats struct {
	Queued  int        `json:"queued"`
	Oldest  *time.Time `json:"oldest_queued_at"`
	Dropped int64      `json:"dropped"`
}

// Message is a message published or watched through the control plane.
type Message struct {
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
	// Sender is the client id that published it, in what Watch hands
	// out ("inline" for the API's and the console's publishes).
	Sender string `json:",omitempty"`
}

// Stats is the data plane's totals.
type Stats struct {
	// Connections is the number of live device connections in every
	// tenant.
	Connections int `json:"connections"`
}

// Deliveries is what the control plane asks about the delivery of rules
// with a destination (webhooks). A data plane keeping outboxes implements
// it; one running apart (a fleet's control plane) does not yet, and the
// API then says the status is unavailable.
type Deliveries interface {
	// DeliveryStatus reports a destination's outbox and dead letters.
	DeliveryStatus(ctx context.Context, tenant, destination string) (DeliveryStatus, error)
	// DeadLetters lists a destination's dead letters after a sequence
	// number, oldest first: at most limit, and fewer where their payloads
	// would make the page too large to answer, which more reports (more
	// may follow though fewer than limit came).
	DeadLetters(ctx context.Context, tenant, destination string, after uint64, limit int) (letters []DeadLetter, more bool, err error)
	// ReplayDeadLetters moves every dead letter back to the outbox, to be
	// delivered again, and returns how many it moved.
	ReplayDeadLetters(ctx context.Context, tenant, destination string) (int, error)
	// PurgeDeadLetters deletes every dead letter and returns how many.
	PurgeDeadLetters(ctx context.Context, tenant, destination string) (int, error)
}

// DeliveryStatus is a destination's delivery as the data plane sees it.
// Backlog, lag and dead letters are read from the outbox itself; the
// counts and last attempts are since the tenant's broker started on the
// node that delivers (zero when it is not running).
type DeliveryStatus struct {
	// Backlog is the messages waiting in the outbox.
	Backlog int `json:"backlog"`
	// Lag is how long the oldest of them has waited, in seconds.
	Lag float64 `json:"lag_seconds"`
	// DeadLetters is the messages whose delivery gave up.
	DeadLetters int        `json:"dead_letters"`
	Delivered   int64      `json:"delivered"`
	Failed      int64      `json:"failed"`
	Dropped     int64      `json:"dropped"`
	LastSuccess *time.Time `json:"last_success"`
	LastError   *time.Time `json:"last_error_at"`
	// LastErrorText says why the last failed attempt failed.
	LastErrorText string `json:"last_error,omitempty"`
	// Recent are the last attempts (at most RecentAttempts), newest
	// first.
	Recent []DeliveryAttempt `json:"recent,omitempty"`
}

// RecentAttempts is how many of a destination's last delivery attempts its
// status lists.
const RecentAttempts = 10

// DeliveryAttempt is one attempt to deliver a batch of a destination's
// outbox, as the node delivering it saw it.
type DeliveryAttempt struct {
	At time.Time `json:"at"`
	// Messages is the batch's size; Attempt which attempt at it this
	// was, 1 the first.
	Messages int `json:"messages"`
	Attempt  int `json:"attempt"`
	// Outcome is delivered, retry (sent again later) or dead (moved to
	// the dead letters).
	Outcome string `json:"outcome"`
	// Status is the receiver's HTTP status; 0 when it did not answer, or
	// for Kafka.
	Status    int     `json:"status,omitempty"`
	LatencyMS float64 `json:"latency_ms"`
	// Error says why it failed, as LastErrorText.
	Error string `json:"error,omitempty"`
}

// DeadLetter is a message whose delivery gave up.
type DeadLetter struct {
	// Seq orders the dead letters; list after it for the next page.
	Seq      uint64    `json:"seq"`
	ID       string    `json:"id"`
	Topic    string    `json:"topic"`
	Payload  []byte    `json:"payload_base64"`
	QoS      byte      `json:"qos"`
	Device   string    `json:"device"`
	ClientID string    `json:"client_id"`
	Time     time.Time `json:"time"`
}
