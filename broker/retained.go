package broker

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

// errReservedFilter refuses a look at the topics the hub reserves.
var errReservedFilter = &tenants.FieldError{Field: "filter", Message: "filters under $SYS, $events, $roost and $share are reserved"}

// Retained lists a tenant's retained messages matching filter, sorted by
// topic, a page from offset on. Topics the hub reserves ($SYS, $events,
// $roost, $share) are never listed and filters under them are refused; a
// filter starting with a wildcard lists no $-topic [MQTT-4.7.2-1]. A
// tenant whose broker is not running has none to show.
func (h *Hub) Retained(ctx context.Context, tenant, filter string, offset, limit int) ([]dataplane.Retained, int, error) {
	if err := tenants.ValidateFilter(filter); err != nil {
		return nil, 0, &tenants.FieldError{Field: "filter", Message: err.Error()}
	}
	if reserved(filter) {
		return nil, 0, errReservedFilter
	}
	inst := h.reg.running(tenant)
	if inst == nil {
		return nil, 0, nil
	}
	// Sorted by topic first and previewed only for the page: a tenant may
	// keep a million retained messages, and a one-row page must not build
	// a million previews.
	var pks []packets.Packet
	for _, pk := range inst.server.Topics.Messages(filter) {
		if listable(filter, pk.TopicName) {
			pks = append(pks, pk)
		}
	}
	if offset >= len(pks) {
		return nil, 0, nil
	}
	slices.SortFunc(pks, func(a, b packets.Packet) int { return strings.Compare(a.TopicName, b.TopicName) })
	end := min(offset+limit, len(pks))
	next := 0
	if end < len(pks) {
		next = end
	}
	page := make([]dataplane.Retained, 0, end-offset)
	for _, pk := range pks[offset:end] {
		r := dataplane.Retained{Topic: pk.TopicName, QoS: pk.FixedHeader.Qos, Size: len(pk.Payload), Encoding: "text"}
		p := pk.Payload
		if len(p) > dataplane.PreviewBytes {
			p, r.Truncated = p[:dataplane.PreviewBytes], true
		}
		if utf8.Valid(p) || (r.Truncated && utf8.Valid(trimPartialRune(p))) {
			r.Payload = string(trimPartialRune(p))
		} else {
			r.Payload, r.Encoding = base64.StdEncoding.EncodeToString(p), "base64"
		}
		page = append(page, r)
	}
	return page, next, nil
}

// listable reports whether a retained message on topic is the tenant's to
// see through filter: never a reserved topic, and a $-topic only through
// a filter that names its first level.
func listable(filter, topic string) bool {
	if reserved(topic) {
		return false
	}
	return !strings.HasPrefix(topic, "$") || strings.HasPrefix(filter, "$")
}

// retainedTopic checks a topic a retained message is read or cleared on.
func retainedTopic(topic string) error {
	if err := tenants.ValidateTopic(topic); err != nil {
		return &tenants.FieldError{Field: "topic", Message: err.Error()}
	}
	if reserved(topic) {
		return &tenants.FieldError{Field: "topic", Message: "topics under $SYS, $events, $roost and $share are reserved"}
	}
	return nil
}

// RetainedMessage is the message retained on topic, whole.
func (h *Hub) RetainedMessage(ctx context.Context, tenant, topic string) (dataplane.RetainedMessage, error) {
	if err := retainedTopic(topic); err != nil {
		return dataplane.RetainedMessage{}, err
	}
	if inst := h.reg.running(tenant); inst != nil {
		for _, pk := range inst.server.Topics.Messages(topic) {
			if pk.TopicName == topic {
				return dataplane.RetainedMessage{Topic: topic, Payload: pk.Payload, QoS: pk.FixedHeader.Qos}, nil
			}
		}
	}
	return dataplane.RetainedMessage{}, fmt.Errorf("no message is retained on %q: %w", topic, tenants.ErrNotFound)
}

// DeleteRetained clears the message retained on topic the MQTT way: an
// empty retained message published there, through the quotas an API
// publish passes. Like any publish, it reaches the topic's subscribers.
func (h *Hub) DeleteRetained(ctx context.Context, tenant, topic string) error {
	if err := retainedTopic(topic); err != nil {
		return err
	}
	t, err := h.activeTenant(ctx, tenant)
	if err != nil {
		return err
	}
	inst, err := h.reg.acquire(t)
	if err != nil {
		return err
	}
	defer h.reg.release(inst)
	found := slices.ContainsFunc(inst.server.Topics.Messages(topic), func(pk packets.Packet) bool { return pk.TopicName == topic })
	if !found {
		return fmt.Errorf("no message is retained on %q: %w", topic, tenants.ErrNotFound)
	}
	return inst.inject(publisher{}, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true},
		TopicName:   topic,
	})
}

// trimPartialRune drops a UTF-8 sequence cut by the preview's end.
func trimPartialRune(p []byte) []byte {
	for i := 0; i < utf8.UTFMax && len(p) > 0; i++ {
		if utf8.Valid(p) {
			return p
		}
		p = p[:len(p)-1]
	}
	return p
}
