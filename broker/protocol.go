package broker

import (
	"errors"
	"slices"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/tenants"
)

// protocolHook is where a tenant's broker keeps to MQTT where mochi v2.7.9
// does not (DESIGN §5). It comes first, so that every other hook sees a
// packet as the protocol means it: a PUBLISH with its topic alias
// resolved, and a device's PUBLISH to a reserved topic under a name every
// check refuses.
type protocolHook struct {
	mqtt.HookBase
	inst *instance
}

func (h *protocolHook) ID() string { return "roost-protocol" }

var protocolHookEvents = provides(mqtt.OnConnect, mqtt.OnSessionEstablished, mqtt.OnPacketRead, mqtt.OnDisconnect,
	mqtt.OnClientExpired, mqtt.OnSubscribed, mqtt.OnRetainPublished)

// Provides: OnQosPublish only without persistent sessions, whose hook
// notes deliveries to a gated connection otherwise (mochi copies the
// packet for each hook it calls, for every delivery).
func (h *protocolHook) Provides(b byte) bool {
	return protocolHookEvents.has(b) || (b == mqtt.OnQosPublish && h.inst.persist == nil)
}

// reservedTopic stands for any reserved topic a device publishes to:
// refused.
const reservedTopic = "$roost/reserved"

// A topic or filter of more than tenants.MaxTopicLevels levels from a
// device is renamed as soon as it is read, before mochi walks its topic
// tree with it (a cost in the square of its levels, see MaxTopicLevels):
// a PUBLISH's topic becomes tooDeepTopic, refused with 0x90 Topic Name
// invalid (accessHook.OnPublish); a SUBSCRIBE's filter becomes
// tooDeepFilter, which mochi finds invalid (SUBACK 0x8F, 3.1.1 0x80), and
// an UNSUBSCRIBE's too, which no subscription has (UNSUBACK 0x11).
const (
	tooDeepTopic  = "$roost/too-deep"
	tooDeepFilter = "#/too-deep"
)

// maxOutboundAliases bounds the topic aliases a client is given, whatever
// Topic Alias Maximum its CONNECT asks for (as many as a connection may
// give the hub: caps.TopicAliasMaximum). mochi keeps each alias's topic
// for the life of the connection: up to 65,535 of them would be a client's
// to ask for. Past the bound a delivery carries its topic, as MQTT allows.
const maxOutboundAliases = 64

// OnConnect gives a connection that resumes a session a resend gate, if
// it needs one (see resend.go), bounds the topic aliases it is given
// (maxOutboundAliases), and keeps its Receive Maximum (see flow.go). It
// runs before the client is known to the topic index: no delivery has
// used mochi's own aliases, or its send quota, yet.
func (h *protocolHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if cl.Properties.Props.TopicAliasMaximum > maxOutboundAliases {
		cl.State.TopicAliases.Outbound = mqtt.NewOutboundTopicAliases(maxOutboundAliases)
	}
	if dc, ok := cl.Net.Conn.(*deviceConn); ok {
		h.inst.gateResend(cl, dc)
		startFlow(cl, dc)
	}
	return nil
}

// OnSessionEstablished runs once mochi resent what a resumed session
// held: the connection's new deliveries may go out.
func (h *protocolHook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	if dc, ok := cl.Net.Conn.(*deviceConn); ok {
		resendDone(dc)
	}
}

// OnQosPublish notes a resend to a connection with a resend gate (see
// resend.go).
func (h *protocolHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int) {
	if pk.FixedHeader.Type == packets.Publish {
		gatedDelivery(cl, &pk)
	}
}

// OnPacketRead sees every packet a client sends, decoded, before mochi
// validates or processes it. It resolves a PUBLISH's topic alias, refuses
// a PINGREQ with a body, and hands the acknowledgements that free a place
// of the client's Receive Maximum to its flow control (see flow.go).
func (h *protocolHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	switch pk.FixedHeader.Type {
	case packets.Publish:
		err := h.readPublish(cl, &pk)
		return pk, err
	case packets.Subscribe, packets.Unsubscribe:
		h.shallowFilters(cl, &pk)
	case packets.Puback, packets.Pubcomp, packets.Pubrec:
		if dc, ok := cl.Net.Conn.(*deviceConn); ok && dc.flow != nil &&
			(pk.FixedHeader.Type != packets.Pubrec || pk.ReasonCode >= packets.ErrUnspecifiedError.Code) {
			dc.flow.completed(cl, pk.PacketID)
		}
	case packets.Disconnect:
		if dc, ok := cl.Net.Conn.(*deviceConn); ok {
			dc.byClient = 0x100 | uint16(pk.ReasonCode)
		}
	case packets.Pingreq:
		if pk.FixedHeader.Remaining != 0 {
			// [MQTT-3.12.1] a PINGREQ has no variable header and no payload.
			h.inst.log.Info("malformed PINGREQ: closed", "client_id", cl.ID, "length", pk.FixedHeader.Remaining)
			h.inst.end(cl, packets.ErrMalformedPacket)
			return pk, packets.ErrMalformedPacket
		}
	}
	return pk, nil
}

// keptWhole is the largest PUBLISH whose topic readPublish leaves in the
// packet's buffer. mochi decodes a topic as a view into the buffer it read
// the packet into, payload and all, and what keeps a topic after the
// message is gone keeps that whole buffer: this connection's inbound topic
// alias (resolveAlias), and the outbound alias of every subscriber the
// message reaches (mochi keys them by the routed packet's topic). So a
// larger packet's topic is copied out; in a smaller one the copy would
// cost about as much as it frees.
const keptWhole = 256

// readPublish resolves a PUBLISH's topic alias, and renames a reserved
// topic, in place; the topic of a packet larger than keptWhole is copied
// out of the packet's buffer first. It works on the hook's copy of the packet through a
// pointer: copies of it by value (800 bytes each) made OnPacketRead's
// frame 3.3 KiB, on the stack under mochi's handling of every packet a
// device sends, where a goroutine stack that outgrows 16 KiB is copied
// into one of 32 (TestConnectionStackSize).
func (h *protocolHook) readPublish(cl *mqtt.Client, pk *packets.Packet) error {
	dc, _ := cl.Net.Conn.(*deviceConn)
	if dc != nil {
		dc.startPublish()
	}
	if pk.FixedHeader.Remaining > keptWhole && pk.TopicName != "" {
		pk.TopicName = strings.Clone(pk.TopicName)
	}
	err := h.inst.resolveAlias(cl, pk)
	if err == nil && tenants.TopicLevels(pk.TopicName) > tenants.MaxTopicLevels {
		if dc != nil {
			dc.limits.deny.deep = true
			dc.limits.deny.topic = cutTopic(pk.TopicName)
		}
		// Its alias, if any, keeps the topic it stands for (a later
		// PUBLISH under it is refused the same way): mochi, which sets
		// inbound aliases again after the ACL check, is not given it.
		pk.TopicName = tooDeepTopic
		pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = 0, false
		return nil
	}
	if err == nil && reserved(pk.TopicName) && !shadowRequest(pk.TopicName) && !commandReplyTopic(pk.TopicName) {
		// A shadow request and a command's reply are the ACL check's
		// (shadow.go, command.go).
		// mochi ignores a PUBLISH to $SYS or $share without answering
		// it, so a QoS 1 or 2 publisher would wait for an ack forever.
		// Devices never publish to reserved topics (see mayPublish):
		// under a name mochi takes, it is refused like any denied
		// topic, and its event names the topic it was sent to.
		if dc != nil {
			dc.limits.deny.topic = pk.TopicName
		}
		pk.TopicName = reservedTopic
	}
	return err
}

// shallowFilters renames the filters of a SUBSCRIBE or UNSUBSCRIBE that
// have more than tenants.MaxTopicLevels levels (tenants.FilterLevels) to
// tooDeepFilter; the first such filter of a connection is logged.
func (h *protocolHook) shallowFilters(cl *mqtt.Client, pk *packets.Packet) {
	renamed := false
	for i, f := range pk.Filters {
		if tenants.FilterLevels(f.Filter) <= tenants.MaxTopicLevels {
			continue
		}
		if !renamed {
			pk.Filters = slices.Clone(pk.Filters)
			renamed = true
		}
		pk.Filters[i].Filter = tooDeepFilter
		if dc, ok := cl.Net.Conn.(*deviceConn); ok && !dc.limits.loggedDeep {
			dc.limits.loggedDeep = true
			h.inst.log.Info("filter refused: too many levels", "client_id", cl.ID, "levels", tenants.FilterLevels(f.Filter),
				"limit", tenants.MaxTopicLevels, "filter", cutTopic(f.Filter))
		}
	}
}

// cutTopic is topic cut to maxDeniedTopic bytes, for a log or an event.
func cutTopic(topic string) string {
	if len(topic) > maxDeniedTopic {
		return strings.ToValidUTF8(topic[:maxDeniedTopic], "")
	}
	return topic
}

// encode (see encodeHook): mochi answers a resent QoS 2 PUBLISH it already holds
// with 0x91, which tells a v5 publisher its message was refused; it was
// accepted, and the answer is a plain PUBREC [MQTT-4.3.3-10].
//
// It notes the reason of a DISCONNECT on its way to the client: mochi
// v2.7.9 puts a DISCONNECT behind the client's queued messages in a
// buffer that nothing writes once the client is stopped, so a busy
// subscriber would never get it (see closeServed).
//
// A PUBLISH to a connection whose resumed session mochi is resending
// waits for the resend (see resend.go).
func (h *protocolHook) encode(cl *mqtt.Client, pk *packets.Packet) {
	switch {
	case pk.FixedHeader.Type == packets.Publish:
		if dc, ok := cl.Net.Conn.(*deviceConn); ok {
			dc.retained.wrote()
			if g := dc.resend.Load(); g != nil {
				throughGate(cl, g, pk)
			}
		}
	case pk.FixedHeader.Type == packets.Pubrec && pk.ReasonCode == packets.ErrPacketIdentifierInUse.Code:
		pk.ReasonCode = packets.CodeSuccess.Code
	case pk.FixedHeader.Type == packets.Disconnect:
		if dc, ok := cl.Net.Conn.(*deviceConn); ok {
			dc.endedFor(pk.ReasonCode)
		}
	}
}

// OnDisconnect notes why mochi ended a connection when it sends no
// DISCONNECT itself: mochi v2.7.9 closes the connection on a packet it
// cannot decode (0x81 malformed, 0x82 protocol error) without telling an
// MQTT 5 client why [MQTT-4.13.2-1]. closeServed sends it.
func (h *protocolHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if dc, ok := cl.Net.Conn.(*deviceConn); ok {
		if code, ok := codeOf(err); ok && code.Code >= packets.ErrUnspecifiedError.Code {
			dc.endedFor(code.Code)
		}
	}
}

// codeOf is errors.As(err, &code) for a packets.Code, without allocating
// the code when err is nil or a packets.Code itself (a connection's end,
// every connection): errors.As takes its target's address, which moves
// it to the heap.
func codeOf(err error) (packets.Code, bool) {
	switch c := err.(type) {
	case nil:
		return packets.Code{}, false
	case packets.Code:
		return c, true
	}
	var code packets.Code
	ok := errors.As(err, &code)
	return code, ok
}

// OnClientExpired unsubscribes an expired session: mochi v2.7.9 leaves its
// subscriptions in the topic index, where a later client with the same id
// would receive messages it never subscribed to.
func (h *protocolHook) OnClientExpired(cl *mqtt.Client) {
	h.inst.server.UnsubscribeClient(cl)
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
func (inst *instance) resolveAlias(cl *mqtt.Client, pk *packets.Packet) error {
	alias := pk.Properties.TopicAlias
	if !pk.Properties.TopicAliasFlag || alias == 0 || alias > inst.server.Options.Capabilities.TopicAliasMaximum {
		return nil
	}
	topic := cl.State.TopicAliases.Inbound.Set(alias, pk.TopicName)
	if topic == "" {
		inst.log.Info("PUBLISH with an unknown topic alias: closed", "client_id", cl.ID, "alias", alias)
		inst.end(cl, packets.ErrProtocolViolationNoTopic)
		return packets.ErrProtocolViolationNoTopic
	}
	pk.TopicName = topic
	return nil
}
