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
}

// Stats is the data plane's totals.
type Stats struct {
	// Connections is the number of live device connections in every
	// tenant.
	Connections int `json:"connections"`
}
