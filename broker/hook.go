package broker

import (
	"bytes"
	"errors"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

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
		mqtt.OnDisconnect, mqtt.OnClientExpired, mqtt.OnPacketEncode,
	}, []byte{b})
}

// OnPacketEncode completes a successful v5 CONNACK with the limits mochi
// enforces but does not announce, so clients keep to them instead of being
// disconnected for breaking them.
func (h *hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack && pk.ProtocolVersion == 5 && pk.ReasonCode < 0x80 {
		caps := h.inst.server.Options.Capabilities
		pk.Properties.MaximumPacketSize = caps.MaximumPacketSize
		pk.Properties.TopicAliasMaximum = caps.TopicAliasMaximum
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
	if dc.id.clientID != "" {
		cl.ID = dc.id.clientID
		cl.Properties.Props.AssignedClientID = ""
		if dc.id.assign && dc.id.version == 5 {
			cl.Properties.Props.AssignedClientID = dc.id.clientID
		}
	}
	now := h.inst.hub.now()
	h.inst.addPresence(dc, cl, Connection{
		ClientID: cl.ID, ConnectedAt: now.UTC(), RemoteAddr: dc.RemoteAddr().String(), ProtocolVersion: int(dc.id.version),
	})
	if ref := h.inst.hub.stillValid(dc.id); ref != nil {
		h.inst.dropPresence(dc)
		writeConnack(dc, dc.id.version, *ref)
		return ref
	}
	h.inst.hub.touch(h.inst.tenant, dc.id.device, now)
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
	dc, ok := cl.Net.Conn.(*deviceConn)
	if !ok {
		return false
	}
	action := tenants.ActionSubscribe
	if write {
		action = tenants.ActionPublish
	}
	return h.inst.allowed(dc.id.device, action, topic)
}

func (h *hook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if dc, ok := cl.Net.Conn.(*deviceConn); ok {
		h.inst.dropPresence(dc)
		h.inst.hub.touch(h.inst.tenant, dc.id.device, h.inst.hub.now())
	}
}

// OnClientExpired unsubscribes an expired session: mochi v2.7.9 leaves its
// subscriptions in the topic index, where a later client with the same id
// would receive messages it never subscribed to.
func (h *hook) OnClientExpired(cl *mqtt.Client) {
	h.inst.server.UnsubscribeClient(cl)
}
