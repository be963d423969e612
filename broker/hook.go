package broker

import (
	"errors"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// addHooks gives a tenant's broker its hooks, one per concern, in the order
// mochi calls them. The order is what makes them work together:
//
//   - protocol first: every other hook sees a PUBLISH with its topic alias
//     resolved (protocol.go);
//   - access: identity, presence and the ACL (access.go);
//   - sessions: a resent QoS 2 publish is recognised before anything counts
//     it, and the QoS exchanges are recorded before mochi answers them
//     (persisthook.go);
//   - quotas and metering (quota.go), then export to Kafka (export.go): a
//     refused publish is neither exported nor stored;
//   - events, once the hooks before them accepted or changed what they
//     report (events.go); Wills (will.go);
//   - outbox: a publish matching a rule with a destination is put in
//     its outbox, or refused when that is full (outbox.go);
//   - store: a publish is stored only once everything else let it
//     through, and before mochi acknowledges it (persisthook.go);
//   - routes, in a spread tenant: a publish goes to the tenant's other
//     nodes once it is stored here (spread.go);
//   - shared groups last: which member of each a message goes to, as the
//     store hook chose where it stored the turn (share.go).
//
// A publish's hooks stop at the first that refuses it (mochi stops
// calling OnPublish hooks at an error).
//
// One more, encodeHook, calls the concerns' encoders in the same order.
func addHooks(inst *instance) error {
	for _, h := range tenantHooks(inst) {
		if err := inst.server.AddHook(h, nil); err != nil {
			return err
		}
	}
	return nil
}

// tenantHooks are the hooks addHooks gives a tenant's broker, in order.
func tenantHooks(inst *instance) []mqtt.Hook {
	hooks := []mqtt.Hook{&protocolHook{inst: inst}, &shadowHook{inst: inst}, &commandHook{inst: inst}, &accessHook{inst: inst}}
	if inst.persist != nil {
		hooks = append(hooks, &sessionHook{inst: inst, p: inst.persist})
	}
	hooks = append(hooks, &quotaHook{inst: inst})
	if inst.exporter != nil {
		hooks = append(hooks, &exportHook{inst: inst})
	}
	hooks = append(hooks, &eventsHook{inst: inst}, &willHook{inst: inst})
	if inst.out != nil {
		hooks = append(hooks, &outboxHook{inst: inst})
	}
	if inst.persist != nil {
		hooks = append(hooks, &storeHook{inst: inst, p: inst.persist})
	}
	if inst.spread {
		hooks = append(hooks, &routeHook{inst: inst})
	}
	hooks = append(hooks, &shareHook{inst: inst})
	return append(hooks, newEncodeHook(hooks))
}

// encodeHook is the one hook that provides OnPacketEncode. mochi v2.7.9
// passes every packet it writes by value to each hook that provides the
// event and takes it back (two copies of some 800 bytes a hook, for every
// copy of every delivery), so the concerns' encode methods are called
// here, in the hooks' order, on one copy (the upstream fix: hooks that
// take the packet by pointer). They are called on the concrete hooks: a
// packet's address passed through an interface would escape, and cost an
// allocation a packet.
type encodeHook struct {
	mqtt.HookBase
	protocol *protocolHook
	access   *accessHook
	session  *sessionHook // nil without persistent sessions
	quota    *quotaHook
	route    *routeHook // nil unless the tenant is spread
}

// newEncodeHook calls the encode methods of hooks.
func newEncodeHook(hooks []mqtt.Hook) *encodeHook {
	h := &encodeHook{}
	for _, hook := range hooks {
		switch hook := hook.(type) {
		case *protocolHook:
			h.protocol = hook
		case *accessHook:
			h.access = hook
		case *sessionHook:
			h.session = hook
		case *quotaHook:
			h.quota = hook
		case *routeHook:
			h.route = hook
		}
	}
	return h
}

func (h *encodeHook) ID() string { return "roost-encode" }

func (h *encodeHook) Provides(b byte) bool { return b == mqtt.OnPacketEncode }

func (h *encodeHook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	h.protocol.encode(cl, &pk)
	h.access.encode(cl, &pk)
	if h.session != nil {
		h.session.encode(cl, &pk)
	}
	if dc, ok := cl.Net.Conn.(*deviceConn); ok && dc.flow != nil {
		dc.flow.encode(cl, &pk)
	}
	h.quota.encode(cl, &pk)
	if h.route != nil {
		h.route.encode(cl, &pk)
	}
	return pk
}

// refusePublish answers a publish a hook refused (over a quota, not
// exported, not stored): never with an acknowledgement. An MQTT 5 QoS 1
// publisher gets a PUBACK with the reason; any other is disconnected (a
// 3.1.1 one just closed), so that it resends. The inline client's publish
// (see inject) learns the error through inlineErr.
func (inst *instance) refusePublish(cl *mqtt.Client, pk packets.Packet, err error) (packets.Packet, error) {
	if cl.Net.Inline {
		inst.inlineErr = err
		return pk, packets.ErrRejectPacket
	}
	code := packets.ErrUnspecifiedError
	errors.As(err, &code)
	switch {
	case cl.Properties.ProtocolVersion == 5 && pk.FixedHeader.Qos == 1:
		if !pubackCodes[code.Code] {
			// A reason a PUBACK cannot carry (0x88 server unavailable,
			// 0x89 server busy) is 0x80 there [MQTT-3.4.2.1].
			code = packets.ErrUnspecifiedError
		}
		return pk, code // mochi answers with PUBACK and this code
	default:
		inst.end(cl, code)
	}
	return pk, packets.ErrRejectPacket
}

// pubackCodes are the reason codes of a failed PUBACK (MQTT 5 §3.4.2.1).
var pubackCodes = map[byte]bool{0x80: true, 0x83: true, 0x87: true, 0x90: true, 0x91: true, 0x97: true, 0x99: true}

// hookSet is the set of mochi events a hook provides. mochi asks every
// hook whether it provides an event before each call, several times per
// packet, so the answer is one bit test.
type hookSet uint64

func provides(events ...byte) hookSet {
	var s hookSet
	for _, e := range events {
		if e >= 64 {
			panic("broker: mochi hook event out of range")
		}
		s |= 1 << e
	}
	return s
}

func (s hookSet) has(e byte) bool { return e < 64 && s&(1<<e) != 0 }
