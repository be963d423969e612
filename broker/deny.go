package broker

import (
	"hash/maphash"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// A publish a device may not make — its tenant's rules deny the topic, or
// the topic is one the hub reserves — is dropped, counted and raised as a
// publish_denied event; the tenant's deny_action says what else happens:
//
//	                 ignore (the default)                disconnect
//	MQTT 5 QoS 0     dropped                             dropped
//	MQTT 5 QoS 1, 2  PUBACK / PUBREC 0x87                PUBACK / PUBREC 0x87
//	3.1.1 QoS 0      dropped                             dropped
//	3.1.1 QoS 1, 2   PUBACK / PUBREC (then PUBCOMP)      the connection is closed
//
// disconnect is what Roost did before the setting existed, which is
// mochi's answer: an MQTT 5 publisher is told 0x87 and stays connected,
// and a 3.1.1 one, which has no way to be told, is closed. ignore is what
// mosquitto and EMQX do by default: a 3.1.1 publisher is acknowledged, so
// that it does not resend the message forever, nor reconnect to resend
// it. A Will denied when it is sent is dropped and raised either way: it
// has nobody to answer.

// reservedPrefixes are the first levels of the $-topics the hub keeps for
// itself ($SYS is mochi's; $events carries the tenant's events; $roost is
// Roost's own; $share names shared subscriptions): devices and the API
// never publish under them, whatever the rules say. Any other $-topic is a
// topic like the others, which the rules decide; only a rule that names
// it can grant it, since a filter starting with a wildcard never matches a
// $-topic [MQTT-4.7.2-1] (see tenants.FilterCovers).
var reservedPrefixes = []string{"$SYS", "$events", "$roost", "$share"}

// reserved reports whether topic is under a prefix the hub reserves, in
// any case (mochi compares $SYS and $share so), or, as mochi has it, starts
// with "$SYS" at all.
func reserved(topic string) bool {
	if !strings.HasPrefix(topic, "$") {
		return false
	}
	if len(topic) >= 4 && strings.EqualFold(topic[:4], "$SYS") {
		return true
	}
	first, _, _ := strings.Cut(topic, "/")
	for _, p := range reservedPrefixes {
		if strings.EqualFold(first, p) {
			return true
		}
	}
	return false
}

// denyState is what a connection's reader keeps about the PUBLISH it is
// processing, between mochi's calls for it: OnPacketRead, the ACL check,
// then OnPublish. Only that reader touches it, like the rate penalty.
type denyState struct {
	// topic is the topic the client sent, when the protocol hook renamed
	// a reserved one (see protocolHook.OnPacketRead).
	topic string
	// drop is set by the ACL check that let a denied publish on, so that
	// mochi acknowledges it (deny_action ignore, 3.1.1), and taken by
	// accessHook.OnPublish, which has mochi drop it.
	drop bool
	// deep is set by the protocol hook for a topic over
	// tenants.MaxTopicLevels levels, renamed tooDeepTopic (topic keeps
	// its start): the ACL check lets it on, and accessHook.OnPublish
	// refuses it with 0x90.
	deep bool
}

// startPublish resets the connection's deny state for a new PUBLISH.
func (dc *deviceConn) startPublish() { dc.limits.deny = denyState{} }

// publishDenied handles a device's PUBLISH the ACL check refused: it is
// counted and raised, and the answer is the ACL check's: true lets it on
// to be acknowledged and dropped (see denyState.drop), false has mochi
// answer it as it answers a refusal.
func (inst *instance) publishDenied(cl *mqtt.Client, dc *deviceConn, topic string) bool {
	reason := "denied by the tenant's rules"
	if topic == reservedTopic && dc.limits.deny.topic != "" {
		topic = dc.limits.deny.topic
	}
	if reserved(topic) {
		reason = "reserved topic"
	}
	inst.env.publishDenied(dc.id.device, cl.ID, dc.RemoteAddr().String(), topic, reason)
	if cl.Properties.ProtocolVersion < 5 && inst.denyAction() == tenants.DenyIgnore {
		dc.limits.deny.drop = true
		return true
	}
	return false
}

// dropDenied reports whether the publish mochi is processing is one the
// ACL check let on only to be acknowledged, and forgets it.
func (dc *deviceConn) dropDenied() bool {
	drop := dc.limits.deny.drop
	dc.limits.deny.drop = false
	return drop
}

// denyAction is the tenant's deny_action as it is now.
func (inst *instance) denyAction() tenants.DenyAction {
	if a := inst.deny.Load(); a != nil && *a == tenants.DenyDisconnect {
		return tenants.DenyDisconnect
	}
	return tenants.DenyIgnore
}

func (inst *instance) setDenyAction(a tenants.DenyAction) { inst.deny.Store(&a) }

// Publish denials become events at most once a minute per device and topic
// (by default), each counting the denials since the previous one of its
// device and topic, and at most once a second per device whatever the
// topic: a device that loops on a denied publish raises one event a
// minute, one that cycles through topics one a second. Every denial is
// counted in roost_publishes_denied_total.
const (
	denialEvery       = time.Minute
	denialDeviceEvery = time.Second
	// maxDenials bounds what a tenant's meter remembers of its denials;
	// past it, it starts again (counts not yet raised are lost).
	maxDenials = 10_000
	// maxDeniedTopic is the longest topic an event carries, in bytes;
	// longer ones are cut, so that events stay small.
	maxDeniedTopic = 512
)

// denials folds a tenant's denied publishes into events.
type denials struct {
	mu      sync.Mutex
	seed    maphash.Seed
	topics  map[denialKey]*denial
	devices map[string]time.Time // device → its last event
}

// denialKey is a device and its denied topic, hashed: topics may be long.
type denialKey struct {
	device string
	topic  uint64
}

type denial struct {
	last    time.Time // the last event raised
	pending int64     // denials since, not yet raised
}

// publishDenied counts a denial of a device's publish and raises its
// event, unless one was raised for it too recently (see denials).
func (h *Hub) publishDenied(tenant, device, clientID, remote, topic, reason string) {
	m, now := h.meterOf(tenant), h.now()
	m.denied.Add(1)
	d := &m.denials
	d.mu.Lock()
	if d.topics == nil {
		d.seed, d.topics, d.devices = maphash.MakeSeed(), map[denialKey]*denial{}, map[string]time.Time{}
	}
	k := denialKey{device, maphash.String(d.seed, topic)}
	e := d.topics[k]
	if e == nil {
		if len(d.topics) >= maxDenials {
			clear(d.topics)
		}
		e = &denial{}
		d.topics[k] = e
	}
	e.pending++
	last, seen := d.devices[device]
	if (!e.last.IsZero() && now.Sub(e.last) < time.Duration(h.denialWindow.Load())) || (seen && now.Sub(last) < denialDeviceEvery) {
		d.mu.Unlock()
		return
	}
	count := e.pending
	e.last, e.pending = now, 0
	if len(d.devices) >= maxDenials {
		clear(d.devices)
	}
	d.devices[device] = now
	d.mu.Unlock()
	topic = cutTopic(topic)
	h.log.Info("publish denied", "tenant", tenant, "device", device, "client_id", clientID, "topic", topic, "reason", reason, "count", count)
	h.emit(events.Event{Tenant: tenant, Type: events.PublishDenied, Device: device, ClientID: clientID, Remote: remote,
		MessageTopic: topic, Reason: reason, Count: count})
}

// PublishDenials is how many of the tenant's publishes were denied since
// the hub started.
func (h *Hub) PublishDenials(tenant string) int64 {
	v, ok := h.meters.Load(tenant)
	if !ok {
		return 0
	}
	return v.(*meter).denied.Load()
}

// wildcardDollar reports whether a delivery of topic to cl would reach it
// only through a filter starting with a wildcard, which must not match a
// $-topic [MQTT-4.7.2-1]. mochi keeps to that for ordinary subscriptions,
// but not for shared ones ($share/g/# gets $-topics) nor for the retained
// messages a new subscription is sent (only $SYS is kept from # there), so
// every delivery of a $-topic checks it here: the client must hold a
// subscription whose filter (inside $share/<group>/ for a shared one)
// names the topic's first level.
func wildcardDollar(cl *mqtt.Client, topic string) bool {
	for _, sub := range cl.State.Subscriptions.GetAll() {
		f := tenants.SharedFilter(sub.Filter)
		if !strings.HasPrefix(f, "+") && !strings.HasPrefix(f, "#") && tenants.MatchTopic(f, topic) {
			return false
		}
	}
	return true
}

// isDelivery reports whether an ACL read check of topic is of a message
// being delivered to cl rather than of a filter it subscribes to: a topic
// name (no wildcard) that is not a shared filter and is not among the
// filters of the SUBSCRIBE being processed.
func isDelivery(dc *deviceConn, topic string) bool {
	if strings.ContainsAny(topic, "+#") || tenants.SharedFilter(topic) != topic {
		return false
	}
	return dc == nil || !dc.subscribingTo(topic)
}

// subscribingTo reports whether the SUBSCRIBE being processed asks for
// filter.
func (dc *deviceConn) subscribingTo(filter string) bool {
	dc.limits.mu.Lock()
	defer dc.limits.mu.Unlock()
	return dc.limits.subscribing[filter]
}

// noteSubscribing keeps the filters of a SUBSCRIBE being processed, for
// isDelivery; OnSubscribed forgets them. Each is kept, not only the
// $-filters hookACL asks about: overQueued must not take a filter that is
// a topic name for a delivery, and refuse the subscription.
func (dc *deviceConn) noteSubscribing(pk packets.Packet) {
	var filters map[string]bool
	if len(pk.Filters) > 0 {
		filters = make(map[string]bool, len(pk.Filters))
		for _, f := range pk.Filters {
			filters[f.Filter] = true
		}
	}
	dc.limits.mu.Lock()
	dc.limits.subscribing = filters
	dc.limits.mu.Unlock()
}
