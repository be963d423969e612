package broker

import (
	"errors"
	"fmt"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/tenants"
)

// Every message published into a tenant passes the same checks, whoever
// sends it. A device's own PUBLISH passes them in the hook (OnACLCheck,
// OnPublish); a message the hub publishes on someone's behalf — an API
// publish, a device's Will — goes through inject, which applies them before
// it hands the message to the tenant's inline client. From there both take
// the same path: OnPublish exports and stores it before it is routed,
// OnPublished meters it.

// publisher is who a message given to inject comes from: a device (its
// Will) or, with no device, the API.
type publisher struct {
	device   string
	clientID string
}

// mayPublish is the one rule for what a device may publish: never to a
// topic the hub reserves ($SYS, $events, $roost, $share: see reserved),
// elsewhere, other $-topics included, as the tenant's rules say now.
func (inst *instance) mayPublish(device, topic string) bool {
	return !reserved(topic) && inst.allowed(device, tenants.ActionPublish, topic)
}

// publishTopic checks a topic a message is published to through the hub.
func publishTopic(topic string) error {
	if err := tenants.ValidateTopic(topic); err != nil {
		return &tenants.FieldError{Field: "topic", Message: err.Error()}
	}
	if reserved(topic) {
		return &tenants.FieldError{Field: "topic", Message: "topics under $SYS, $events, $roost and $share are reserved"}
	}
	return nil
}

// errPublishDenied refuses a device's Will whose topic its rules no
// longer allow.
var errPublishDenied = fmt.Errorf("topic not allowed: %w", tenants.ErrForbidden)

// inject publishes a message that did not arrive as a PUBLISH: through the
// topic rules (a device's, as they are now), max_packet_size,
// tenant_publish_rate, max_retained and messages_per_month, as a device's
// PUBLISH would be, then stored and exported before it is routed. It returns
// a *tenants.QuotaError naming the quota a message is over.
func (inst *instance) inject(from publisher, pk packets.Packet) error {
	if err := publishTopic(pk.TopicName); err != nil {
		return err
	}
	return inst.injectTopic(from, pk)
}

// injectTopic is inject for a topic already checked: the hub's own
// publishes to reserved topics (a command: command.go) come through here.
func (inst *instance) injectTopic(from publisher, pk packets.Packet) error {
	if from.device != "" && !inst.mayPublish(from.device, pk.TopicName) {
		return errPublishDenied
	}
	q := inst.quotas()
	over := func(quota string, limit int64) error {
		inst.quotaHit(from.device, from.clientID, quota, limit)
		return &tenants.QuotaError{Quota: quota, Limit: limit}
	}
	// The size of the PUBLISH a device would send: fixed header, topic,
	// packet id and payload.
	if size := int64(len(pk.Payload) + len(pk.TopicName) + 7); size > q.MaxPacketSize {
		return over("max_packet_size", q.MaxPacketSize)
	}
	if r := float64(q.TenantPublishRate); !inst.publishRate.Allow(inst.env.now(), 1, r, r*burstSeconds) {
		inst.meter.throttled.Add(1)
		return over("tenant_publish_rate", q.TenantPublishRate)
	}
	// One at a time: the retained count is checked against what the
	// previous one left, and inlineErr belongs to this one.
	inst.inlineMu.Lock()
	defer inst.inlineMu.Unlock()
	if limit, ok := inst.checkRetained(pk); !ok {
		return over("max_retained", limit)
	}
	if limit, exhausted := inst.monthExhausted(); exhausted {
		return over("messages_per_month", limit)
	}
	cl, ok := inst.server.Clients.Get(mqtt.InlineClientId)
	if !ok {
		return serverUnavailable
	}
	pk.FixedHeader.Type = packets.Publish
	pk.PacketID = 0
	if pk.FixedHeader.Qos > 0 {
		pk.PacketID = 1 // mochi's validation wants one; the inline client is never acknowledged
	}
	inst.inlineErr = nil
	if err := inst.server.InjectPacket(cl, pk); err != nil {
		return err
	}
	if full := (*outboxFull)(nil); errors.As(inst.inlineErr, &full) {
		// A destination's full outbox under refuse: the API says which
		// quota (the hook counted the hit and raised its event).
		return &tenants.QuotaError{Quota: "max_outbox", Limit: full.limit}
	}
	if inst.inlineErr != nil {
		return fmt.Errorf("the message could not be stored or exported: %w", inst.inlineErr)
	}
	return nil
}
