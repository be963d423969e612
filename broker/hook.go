package broker

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// hook binds a tenant's broker to the directory: identity, client ids,
// topic access and presence. It is the only hook that authenticates or
// authorises; mochi ORs those answers across hooks, so an allow-all hook
// beside it would open everything.
type hook struct {
	mqtt.HookBase
	inst *instance
}

var _ mqtt.Hook = (*hook)(nil)

func (h *hook) ID() string { return "roost" }

func (h *hook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck,
		mqtt.OnDisconnect, mqtt.OnClientExpired, mqtt.OnPacketEncode, mqtt.OnSubscribe, mqtt.OnSubscribed, mqtt.OnUnsubscribed,
		mqtt.OnPublish, mqtt.OnPublished, mqtt.OnWill, mqtt.OnPacketRead, mqtt.OnSessionEstablish,
	}, []byte{b}) || (h.inst.persist != nil && bytes.Contains([]byte{
		mqtt.OnQosPublish, mqtt.OnQosDropped, mqtt.OnSessionEstablished,
		mqtt.StoredClients, mqtt.StoredSubscriptions,
		mqtt.StoredInflightMessages, mqtt.StoredRetainedMessages,
	}, []byte{b}))
}

// OnPacketEncode meters what is sent, and completes a successful CONNACK:
// a resumed session's waiting messages are checked once more, and a v5
// CONNACK announces the limits mochi enforces but does not announce, so
// clients keep to them instead of being disconnected for breaking them.
func (h *hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Publish {
		if _, ok := cl.Net.Conn.(*deviceConn); ok && !h.inst.hub.limitsOff {
			h.inst.meter.out(len(pk.Payload))
		}
		return withoutTag(pk)
	}
	if pk.FixedHeader.Type == packets.Pubrec && pk.ReasonCode == packets.ErrPacketIdentifierInUse.Code {
		// mochi answers a resent QoS 2 PUBLISH it already holds with
		// 0x91, which tells a v5 publisher its message was refused; it was
		// accepted, and the answer is a plain PUBREC [MQTT-4.3.3-10].
		pk.ReasonCode = packets.CodeSuccess.Code
	}
	if pk.FixedHeader.Type == packets.Connack && pk.SessionPresent {
		h.inst.dropUnreadable(cl)
		if h.inst.persist != nil {
			h.inst.persist.orderResend(cl)
		}
	}
	if pk.FixedHeader.Type == packets.Connack && pk.ProtocolVersion == 5 && pk.ReasonCode < 0x80 {
		q := h.inst.quotas()
		pk.Properties.MaximumPacketSize = uint32(clamp(q.MaxPacketSize, 1, math.MaxUint32))
		pk.Properties.TopicAliasMaximum = h.inst.server.Options.Capabilities.TopicAliasMaximum
		if cl.Properties.Props.SessionExpiryIntervalFlag {
			// The expiry in force, max_session_expiry applied.
			pk.Properties.SessionExpiryInterval = cl.Properties.Props.SessionExpiryInterval
			pk.Properties.SessionExpiryIntervalFlag = true
		}
	}
	return pk
}

var errNotFromIngress = errors.New("connection did not come through the ingress")

// OnConnect binds the client id the ingress chose and registers the
// connection's presence. mochi passes the packet by value, so the id is set
// on the client; a v5 client that sent no id learns it from the CONNACK's
// Assigned Client Identifier.
//
// Then it checks the device once more. A change committed while this
// connection was being admitted may have been applied to live connections
// before this one was registered; the directory cache was invalidated before
// that, so this check sees the change.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	dc, ok := cl.Net.Conn.(*deviceConn)
	if !ok {
		return errNotFromIngress
	}
	if limit := uint32(clamp(h.inst.quotas().MaxSessionExpiry, 0, math.MaxUint32)); cl.Properties.Props.SessionExpiryInterval > limit {
		cl.Properties.Props.SessionExpiryInterval = limit
	}
	if dc.id.clientID != "" {
		cl.ID = dc.id.clientID
		cl.Properties.Props.AssignedClientID = ""
		if dc.id.assign && dc.id.version == 5 {
			cl.Properties.Props.AssignedClientID = dc.id.clientID
		}
	}
	now := h.inst.hub.now()
	h.inst.addPresence(dc, cl, dataplane.Connection{
		ClientID: cl.ID, ConnectedAt: now.UTC(), RemoteAddr: dc.RemoteAddr().String(), ProtocolVersion: int(dc.id.version),
	})
	if ref := h.inst.hub.stillValid(dc.id); ref != nil {
		h.inst.dropPresence(dc)
		writeConnack(dc, dc.id.version, *ref)
		return ref
	}
	h.inst.hub.touch(h.inst.tenant, dc.id.device, now)
	h.inst.emit(cl, events.Event{Type: events.Connected})
	if !dc.id.expires.IsZero() {
		// A token admits a connection until it expires; then MQTT 5
		// clients are told 0x87 (not authorized) and may come back with a
		// new token.
		inst := h.inst
		dc.expiry.Store(time.AfterFunc(dc.id.expires.Sub(now), func() {
			inst.log.Info("device token expired: disconnected", "device", dc.id.device, "client_id", cl.ID)
			inst.kick(cl, packets.ErrNotAuthorized)
		}))
	}
	return nil
}

// OnConnectAuthenticate admits exactly the connections the ingress
// authenticated.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	_, ok := cl.Net.Conn.(*deviceConn)
	return ok
}

// OnACLCheck decides publish (write) and subscribe or delivery (read) by the
// tenant's rules. mochi asks it for every publish, every subscription filter
// and every delivery, retained messages included.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if topic == withdrawnWill {
		return false
	}
	if dc, ok := cl.Net.Conn.(*deviceConn); ok && !write && dc.refusedFilter(topic) {
		return false // over max_subscriptions: see overSubscriptions
	}
	return h.inst.hookACL(cl, topic, write)
}

// withdrawnWill is where a Will withdrawn at shutdown goes: a topic no
// filter of a device or watcher can match ($-topics are reserved, and `#`
// does not match them) and that the ACL denies to everyone besides.
const withdrawnWill = "$roost/withdrawn-will"

// reservedTopic stands for any $-topic a device publishes to: refused.
const reservedTopic = "$roost/reserved"

// OnWill takes a client's Will from mochi, which would publish it past
// every check, and publishes it through the hub's own path (see will.go) —
// unless the connection ends as for a shutdown (see handoff), when it goes
// nowhere. mochi cannot be told not to send one, so it is given a Will to
// where nobody is.
func (h *hook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	if dc, ok := cl.Net.Conn.(*deviceConn); ok && !h.inst.withdrawWills.Load() && !dc.withdrawWill.Load() {
		h.inst.willGone(cl, dc.id.device, will)
	}
	return mqtt.Will{TopicName: withdrawnWill}, nil
}

// OnSessionEstablish drops a Will the session holds back: a connection
// for it arrived before the Will's delay passed [MQTT-3.1.3-9].
func (h *hook) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	h.inst.cancelWill(cl.ID)
}

// OnSubscribe notes the filters of a SUBSCRIBE over max_subscriptions.
func (h *hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if dc, ok := cl.Net.Conn.(*deviceConn); ok {
		h.inst.overSubscriptions(cl, dc, pk)
	}
	return pk
}

// hookACL decides for a client: one connected through the ingress, or a
// session restored from the store that has not reconnected yet.
func (inst *instance) hookACL(cl *mqtt.Client, topic string, write bool) bool {
	device := ""
	if dc, ok := cl.Net.Conn.(*deviceConn); ok {
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
	return inst.allowed(device, tenants.ActionSubscribe, topic)
}

func (h *hook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	dc, ok := cl.Net.Conn.(*deviceConn)
	if !ok {
		return // a session being restored, not a connection ending
	}
	h.inst.dropPresence(dc)
	if t := dc.expiry.Load(); t != nil {
		t.Stop()
	}
	h.inst.hub.touch(h.inst.tenant, dc.id.device, h.inst.hub.now())
	reason := ""
	if err != nil {
		reason = err.Error()
	}
	h.inst.emit(cl, events.Event{Type: events.Disconnected, Reason: reason})
	if p := h.inst.persist; p != nil {
		p.gone(cl)
	}
	if p := h.inst.persist; p != nil && !cl.IsTakenOver() {
		if expire {
			ctx, cancel := storeCtx()
			defer cancel()
			if err := p.drop(ctx, cl.ID); err != nil {
				h.inst.log.Error("drop session", "client_id", cl.ID, "err", err)
			}
		} else {
			p.save(cl, h.inst.hub.now().UTC())
		}
	}
}

// OnPublish stores the message for every persistent session it is for (and
// as retained) before mochi acknowledges it. If the store fails the
// publisher is not acknowledged: an MQTT 5 QoS 1 publisher gets PUBACK 0x80;
// any other is disconnected, so that it resends.
//
// Messages matching export rules are written to Kafka first, the same way.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	p := h.inst.persist
	if p != nil && p.duplicate(cl, pk) {
		return pk, packets.CodeSuccessIgnore // acknowledged, not delivered again
	}
	if dc, ok := cl.Net.Conn.(*deviceConn); ok && !h.inst.hub.limitsOff {
		if err := h.inst.checkPublish(cl, dc); err != nil {
			return pk, err
		}
		if limit, ok := h.inst.checkRetained(pk); !ok {
			h.inst.quotaHit(dc.id.device, cl.ID, "max_retained", limit)
			return h.refuse(cl, pk, packets.ErrQuotaExceeded)
		}
		if limit, over := h.inst.monthExhausted(); over {
			h.inst.quotaHit(dc.id.device, cl.ID, "messages_per_month", limit)
			return h.refuse(cl, pk, packets.ErrQuotaExceeded)
		}
	}
	if err := h.inst.export(cl, pk); err != nil {
		return h.refuse(cl, pk, err)
	}
	if p == nil || (pk.FixedHeader.Qos == 0 && !pk.FixedHeader.Retain) {
		return pk, nil
	}
	out, err := p.beforeAck(cl, pk)
	if err != nil {
		return h.refuse(cl, pk, err)
	}
	return out, nil
}

// refuse answers a publish that could not be made durable: never with an
// acknowledgement.
func (h *hook) refuse(cl *mqtt.Client, pk packets.Packet, err error) (packets.Packet, error) {
	if cl.Net.Inline {
		h.inst.inlineErr = err
		return pk, packets.ErrRejectPacket
	}
	code := packets.ErrUnspecifiedError
	errors.As(err, &code)
	switch {
	case cl.Properties.ProtocolVersion == 5 && pk.FixedHeader.Qos == 1:
		return pk, code // mochi answers with PUBACK and this code
	default:
		h.inst.end(cl, code)
	}
	return pk, packets.ErrRejectPacket
}

func (h *hook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int) {
	if pk.FixedHeader.Type == packets.Publish {
		h.inst.persist.handedOver(cl, pk)
	}
}

// OnQosDropped: mochi drops a waiting message that expired (its message
// expiry interval passed); it leaves the session's queue as if
// acknowledged. The messages mochi clears from a client object a new
// connection took over are not dropped: they went with the connection.
func (h *hook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if pk.FixedHeader.Type == packets.Publish && !cl.IsTakenOver() {
		h.inst.persist.acknowledged(cl, pk.PacketID)
	}
}

// OnPublished meters a message the tenant accepted (not the hub's own
// $events) and forgets its routing tag.
func (h *hook) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	if !pk.Ignore && !h.inst.hub.limitsOff && !(cl.Net.Inline && strings.HasPrefix(pk.TopicName, "$events/")) {
		h.inst.meter.in(len(pk.Payload))
	}
	if h.inst.persist != nil {
		h.inst.persist.routed(pk)
	}
}

// errNotRecorded ends a connection whose acknowledgement could not be
// recorded; the client repeats it when it reconnects.
var errNotRecorded = errors.New("acknowledgement not recorded")

// OnPacketRead sees every packet a client sends, decoded, before mochi
// validates or processes it. It resolves a PUBLISH's topic alias, cuts a
// DISCONNECT's session expiry to the quota, refuses a PINGREQ with a body,
// and follows the QoS exchanges for the session store.
func (h *hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	switch pk.FixedHeader.Type {
	case packets.Publish:
		pk, err := h.inst.resolveAlias(cl, pk)
		if err == nil && strings.HasPrefix(pk.TopicName, "$") {
			// mochi ignores a PUBLISH to $SYS or $share without answering
			// it, so a QoS 1 or 2 publisher would wait for an ack forever.
			// Devices never publish to $-topics (see mayPublish): under a
			// name mochi takes, it is refused like any denied topic (MQTT
			// 5: 0x87).
			pk.TopicName = reservedTopic
		}
		return pk, err
	case packets.Disconnect:
		// mochi takes a DISCONNECT's session expiry as it comes; it is cut
		// to max_session_expiry, as the CONNECT's was (see OnConnect).
		if limit := uint32(clamp(h.inst.quotas().MaxSessionExpiry, 0, math.MaxUint32)); pk.Properties.SessionExpiryInterval > limit {
			pk.Properties.SessionExpiryInterval = limit
		}
	case packets.Pingreq:
		if pk.FixedHeader.Remaining != 0 {
			// [MQTT-3.12.1] a PINGREQ has no variable header and no payload.
			h.inst.log.Info("malformed PINGREQ: closed", "client_id", cl.ID, "length", pk.FixedHeader.Remaining)
			h.inst.end(cl, packets.ErrMalformedPacket)
			return pk, packets.ErrMalformedPacket
		}
	}
	if h.inst.persist != nil {
		return h.inst.persist.packetRead(cl, pk)
	}
	return pk, nil
}

// resolveAlias gives a PUBLISH that uses a topic alias its topic before
// anything looks at it. mochi checks the ACL on the packet's topic as it
// arrived and resolves the alias only afterwards (DESIGN §5), so a PUBLISH
// with an empty topic and a known alias would be checked as "" and then
// published to the alias's topic: resolved here, the ACL, the quotas,
// metering, export, persistence and the $-topic reservation all see the
// topic the message goes to. mochi's own resolution later finds the same
// topic. An alias above the maximum is left for mochi to refuse (0x94); an
// empty topic with an alias never set is a protocol error [MQTT-3.3.2-7].
func (inst *instance) resolveAlias(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	alias := pk.Properties.TopicAlias
	if !pk.Properties.TopicAliasFlag || alias == 0 || alias > inst.server.Options.Capabilities.TopicAliasMaximum {
		return pk, nil
	}
	topic := cl.State.TopicAliases.Inbound.Set(alias, pk.TopicName)
	if topic == "" {
		inst.log.Info("PUBLISH with an unknown topic alias: closed", "client_id", cl.ID, "alias", alias)
		inst.end(cl, packets.ErrProtocolViolationNoTopic)
		return pk, packets.ErrProtocolViolationNoTopic
	}
	pk.TopicName = topic
	return pk, nil
}

// packetRead follows the QoS exchanges, before mochi answers them: PUBACK
// and PUBCOMP complete a message the client was sent, PUBREC makes it one
// waiting for its PUBREL, and a publisher's PUBREL frees its packet id. What
// the store could not record is not answered.
func (p *persistence) packetRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	switch pk.FixedHeader.Type {
	case packets.Puback, packets.Pubcomp:
		p.acknowledged(cl, pk.PacketID)
	case packets.Pubrec:
		if !p.receivedBy(cl, pk) {
			return pk, errNotRecorded
		}
	case packets.Pubrel:
		if p.release(cl, pk.PacketID) != nil {
			return pk, errNotRecorded
		}
	}
	return pk, nil
}

func (h *hook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	p := h.inst.persist
	if pk.Connect.Clean {
		// A clean start discards the previous session, in the store too.
		ctx, cancel := storeCtx()
		defer cancel()
		if err := p.drop(ctx, cl.ID); err != nil {
			h.inst.log.Error("drop session", "client_id", cl.ID, "err", err)
		}
	}
	if persistent(cl) {
		p.save(cl, time.Time{})
		p.established(cl)
	}
}

func (h *hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	if dc, ok := cl.Net.Conn.(*deviceConn); ok {
		h.inst.capSubscriptions(cl, dc, pk, reasonCodes)
	}
	var granted []string
	for i, f := range pk.Filters {
		if i < len(reasonCodes) && reasonCodes[i] < 0x80 {
			granted = append(granted, f.Filter)
		}
	}
	if len(granted) > 0 {
		h.inst.emit(cl, events.Event{Type: events.Subscribed, Filters: granted})
	}
	if h.inst.persist != nil && persistent(cl) {
		h.inst.persist.save(cl, time.Time{})
	}
}

func (h *hook) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	// mochi also calls this when it clears an ended session's
	// subscriptions; only a client's own UNSUBSCRIBE is an event.
	if !cl.Closed() {
		var filters []string
		for _, f := range pk.Filters {
			filters = append(filters, f.Filter)
		}
		h.inst.emit(cl, events.Event{Type: events.Unsubscribed, Filters: filters})
	}
	if h.inst.persist != nil && persistent(cl) {
		h.inst.persist.save(cl, time.Time{})
	}
}

// emit sends an event about a client of this tenant.
func (inst *instance) emit(cl *mqtt.Client, e events.Event) {
	if cl.Net.Inline {
		return // the hub's own client (API publishes, console watchers) is not a device
	}
	e.Tenant, e.ClientID = inst.tenant, cl.ID
	if dc, ok := cl.Net.Conn.(*deviceConn); ok {
		e.Device, e.Remote = dc.id.device, dc.RemoteAddr().String()
	}
	inst.hub.emit(e)
}

// The Stored* methods hand mochi the tenant's sessions when its broker
// starts. mochi asks for each part in turn; restore reads them once.
func (h *hook) StoredClients() ([]storage.Client, error) {
	if err := h.inst.loadRestore(); err != nil {
		return nil, err
	}
	return h.inst.restored.clients, nil
}

func (h *hook) StoredSubscriptions() ([]storage.Subscription, error) {
	return h.inst.restored.subs, nil
}

func (h *hook) StoredInflightMessages() ([]storage.Message, error) {
	return h.inst.restored.inflight, nil
}

func (h *hook) StoredRetainedMessages() ([]storage.Message, error) {
	return h.inst.restored.retained, nil
}

// OnClientExpired unsubscribes an expired session: mochi v2.7.9 leaves its
// subscriptions in the topic index, where a later client with the same id
// would receive messages it never subscribed to. Its stored state goes too.
func (h *hook) OnClientExpired(cl *mqtt.Client) {
	h.inst.server.UnsubscribeClient(cl)
	if p := h.inst.persist; p != nil {
		ctx, cancel := storeCtx()
		defer cancel()
		if err := p.drop(ctx, cl.ID); err != nil {
			h.inst.log.Error("drop expired session", "client_id", cl.ID, "err", err)
		}
	}
}
