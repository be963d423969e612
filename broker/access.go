package broker

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

// accessHook binds a tenant's broker to the directory: who is connected
// (identity, client ids, presence) and what each may publish and read. It
// is the only hook that authenticates or authorises: mochi ORs those
// answers across hooks, so an allow-all hook beside it would open
// everything.
type accessHook struct {
	mqtt.HookBase
	inst *instance
}

func (h *accessHook) ID() string { return "roost-access" }

var accessHookEvents = provides(mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnConnect, mqtt.OnDisconnect,
	mqtt.OnPublish, mqtt.OnSubscribe, mqtt.OnSubscribed)

func (h *accessHook) Provides(b byte) bool { return accessHookEvents.has(b) }

var errNotFromIngress = errors.New("connection did not come through the ingress")

// OnConnectAuthenticate admits exactly the connections the ingress
// authenticated.
func (h *accessHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	_, ok := cl.Net.Conn.(*deviceConn)
	return ok
}

// OnConnect binds the client id the ingress chose and registers the
// connection's presence. mochi passes the packet by value, so the id is set
// on the client; a v5 client that sent no id learns it from the CONNACK's
// Assigned Client Identifier.
//
// Then it checks the device once more. A change committed while this
// connection was being admitted may have been applied to live connections
// before this one was registered; the directory cache was invalidated before
// that, so this check sees the change.
func (h *accessHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	dc, ok := cl.Net.Conn.(*deviceConn)
	if !ok {
		return errNotFromIngress
	}
	if dc.id.clientID != "" {
		cl.ID = dc.id.clientID
		cl.Properties.Props.AssignedClientID = ""
		if dc.id.assign && dc.id.version == 5 {
			cl.Properties.Props.AssignedClientID = dc.id.clientID
		}
	}
	inst := h.inst
	now := inst.env.now()
	inst.live.add(dc, cl, dataplane.Connection{
		ClientID: cl.ID, ConnectedAt: now.UTC(), RemoteAddr: cl.Net.Remote, ProtocolVersion: int(dc.id.version),
	})
	if ref := inst.env.qualifies(dc.id, cl.ID); ref != nil {
		inst.live.drop(dc)
		writeConnack(dc, dc.id.version, *ref)
		return ref
	}
	inst.env.touch(dc.id.device, now)
	if !dc.id.expires.IsZero() {
		// A token admits a connection until it expires; then MQTT 5
		// clients are told 0x87 (not authorized) and may come back with a
		// new token.
		dc.expiry.Store(time.AfterFunc(dc.id.expires.Sub(now), func() {
			inst.log.Info("device token expired: disconnected", "device", dc.id.device, "client_id", cl.ID)
			inst.kick(cl, packets.ErrNotAuthorized)
		}))
	}
	return nil
}

// OnDisconnect forgets a connection that ended.
func (h *accessHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	dc, ok := cl.Net.Conn.(*deviceConn)
	if !ok {
		return // a session being restored, not a connection ending
	}
	h.inst.live.drop(dc)
	if clientEnded(cl) {
		// Nothing more comes from a client that sent DISCONNECT
		// [MQTT-3.14.4-1]: its socket is closed at once, without the
		// linger (see closeServed), which is for a client still sending.
		dc.peerDone.Store(true)
	}
	if t := dc.expiry.Load(); t != nil {
		t.Stop()
	}
	h.inst.env.touch(dc.id.device, h.inst.env.now())
}

// OnACLCheck decides publish (write) and subscribe or delivery (read) by the
// tenant's rules. mochi asks it for every publish, every subscription filter
// and every delivery, retained messages included. A device's publish it
// refuses is raised as denied, and may be let on to be acknowledged and
// dropped (deny.go).
func (h *accessHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if topic == withdrawnWill {
		return false
	}
	dc, ok := cl.Net.Conn.(*deviceConn)
	if ok && !write && dc.refusedFilter(topic) {
		return false // over max_subscriptions: see overSubscriptions
	}
	if ok && !write && dc.resend.Load() != nil {
		awaitListed(cl, dc) // a delivery to a resuming connection (see resend.go)
	}
	if ok && !write && h.inst.overQueued(cl, dc, topic) {
		// shadowHook and commandHook, asked before, refused it for the
		// same reason without counting it; it is counted once, here, if
		// it would have been delivered.
		if h.inst.hookACL(cl, topic, write) {
			h.inst.refuseQueued(cl)
		}
		return false
	}
	if ok && write && topic == tooDeepTopic && dc.limits.deny.deep {
		return true // refused by OnPublish, with its own code
	}
	if h.inst.hookACL(cl, topic, write) {
		return true
	}
	if ok && write {
		return h.inst.publishDenied(cl, dc, topic)
	}
	return false
}

// OnPublish drops a denied publish the ACL check let on to be acknowledged
// (deny_action ignore, 3.1.1): mochi acknowledges it, and routes, retains,
// stores and meters nothing. It comes before every other hook's OnPublish,
// which it ends.
//
// It refuses a publish to a topic of more than tenants.MaxTopicLevels
// levels (see tooDeepTopic) with 0x90 Topic Name invalid, counted and
// raised as a denial.
func (h *accessHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	dc, ok := cl.Net.Conn.(*deviceConn)
	if !ok {
		return pk, nil
	}
	if dc.dropDenied() {
		return pk, packets.CodeSuccessIgnore
	}
	if dc.limits.deny.deep && pk.TopicName == tooDeepTopic {
		dc.limits.deny.deep = false
		h.inst.env.publishDenied(dc.id.device, cl.ID, dc.RemoteAddr().String(), dc.limits.deny.topic,
			fmt.Sprintf("topic over %d levels", tenants.MaxTopicLevels))
		return h.inst.refusePublish(cl, pk, packets.ErrTopicNameInvalid)
	}
	return pk, nil
}

// OnSubscribe notes the SUBSCRIBE's filters, so that their ACL checks are
// not taken for deliveries (isDelivery).
func (h *accessHook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if dc, ok := cl.Net.Conn.(*deviceConn); ok {
		dc.noteSubscribing(pk)
	}
	return pk
}

// OnSubscribed forgets them, before mochi sends the retained messages of
// the new subscriptions, which are deliveries.
func (h *accessHook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	if dc, ok := cl.Net.Conn.(*deviceConn); ok {
		dc.noteSubscribing(packets.Packet{})
	}
}

// encode checks a resumed session's waiting messages once more as its
// CONNACK goes out (see dropUnreadable, encodeHook).
func (h *accessHook) encode(cl *mqtt.Client, pk *packets.Packet) {
	if pk.FixedHeader.Type == packets.Connack && pk.SessionPresent {
		h.inst.dropUnreadable(cl)
	}
}

// readDecision is a connection's last read decision (see mayReceive).
type readDecision struct {
	topic string
	gen   aclGen
	at    time.Time // when the device was read; zero if it was not
	ok    bool
}

// mayReceive decides, for hookACL, whether a connected device may read a
// topic outside $: mochi asks for every copy of every delivery, so the
// connection keeps its last decision, for as long as what it was
// decided on stands: the tenant's rules and, where a rule names a group
// or metadata, the device as the directory cache has it (a change drops
// it and moves aclGen; should a change be missed, the decision lasts the
// directory's TTL from when it was made, on an entry up to a TTL old: two
// TTLs at most).
// A decision the directory could not answer is not kept.
func (inst *instance) mayReceive(dc *deviceConn, topic string) bool {
	gen := inst.aclGen()
	if d := dc.lastRead.Load(); d != nil && d.gen == gen && d.topic == topic &&
		(d.at.IsZero() || inst.dir.now().Sub(d.at) < inst.dir.ttl) {
		return d.ok
	}
	ok, readDevice, answered := inst.decide(dc.id.device, tenants.ActionSubscribe, topic)
	if answered {
		d := &readDecision{topic: topic, gen: gen, ok: ok}
		if readDevice {
			d.at = inst.dir.now()
		}
		dc.lastRead.Store(d)
	}
	return ok
}

// hookACL decides for a client: one connected through the ingress, or a
// session restored from the store that has not reconnected yet.
//
// A delivery of a $-topic must come through a filter that names the
// topic's first level: mochi lets a shared subscription to # and the
// retained messages sent to a new one to # have $-topics (see
// wildcardDollar).
func (inst *instance) hookACL(cl *mqtt.Client, topic string, write bool) bool {
	device := ""
	dc, ok := cl.Net.Conn.(*deviceConn)
	if ok {
		device = dc.id.device
	} else if inst.persist != nil && cl.Net.Conn == nil && !cl.Net.Inline {
		device = inst.persist.deviceOf(cl.ID)
	}
	if device == "" {
		return false
	}
	if write {
		return inst.mayPublish(device, topic)
	}
	if strings.HasPrefix(topic, "$") && isDelivery(dc, topic) && wildcardDollar(cl, topic) {
		return false
	}
	if inst.ownReserved(device, topic) {
		return true
	}
	if ok && !strings.HasPrefix(topic, "$") {
		return inst.mayReceive(dc, topic)
	}
	return inst.allowed(device, tenants.ActionSubscribe, topic)
}

// ownReserved reports whether topic is one of the device's own under
// $roost that commandHook and shadowHook let it read: its commands (not
// its reply topics) and its shadow's topics. The live checks are theirs;
// this is for the checks that do not go through the hooks: the messages
// a resumed session has waiting (dropUnreadable, mayRead), among them a
// command queued while the device was away.
func (inst *instance) ownReserved(device, topic string) bool {
	if target, rest, ok := commandTopic(topic); ok {
		return target == device && rest != "reply" && !strings.HasPrefix(rest, "reply/")
	}
	if target, _, ok := shadowTopic(topic); ok {
		return target == device && inst.shadows() != nil
	}
	return false
}

// dropUnreadable runs as a resumed session's CONNACK is encoded, just
// before mochi resends the messages waiting for it, which mochi does
// without asking the ACL: a message queued while the device could read its
// topic is dropped if it no longer may (restored from the store or not),
// as a delivery would be. So is one whose message expiry passed, as
// mochi's sweep would drop it a moment later (mochi resends without
// looking). One the client already acknowledged with PUBREC only waits
// for its PUBREL, and stays.
func (inst *instance) dropUnreadable(cl *mqtt.Client) {
	now := time.Now().Unix()
	for _, pk := range cl.State.Inflight.GetAll(false) {
		if pk.FixedHeader.Type != packets.Publish {
			continue
		}
		expired := pk.ProtocolVersion == 5 && pk.Expiry > 0 && pk.Expiry < now // mochi's rule
		if !expired && inst.hookACL(cl, pk.TopicName, false) {
			continue
		}
		if cl.State.Inflight.Delete(pk.PacketID) {
			atomic.AddInt64(&inst.server.Info.Inflight, -1)
		}
		if inst.persist != nil {
			inst.persist.acknowledged(cl, pk.PacketID)
		}
		if expired {
			inst.log.Info("queued message dropped: it expired", "client_id", cl.ID, "topic", pk.TopicName)
			continue
		}
		inst.log.Info("queued message dropped: its topic is no longer readable", "client_id", cl.ID, "topic", pk.TopicName)
	}
}
