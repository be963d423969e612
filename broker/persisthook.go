package broker

import (
	"context"
	"errors"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/broker/store"
)

// The session store is mirrored by two hooks on one persistence: the
// session hook follows the sessions (their lifecycle, their subscriptions,
// the QoS exchanges, the restore at start) and recognises a QoS 2 publish
// already received; the store hook, the last of a publish's hooks, stores
// a publish the others let through before mochi acknowledges it. Only a
// tenant broker with a session store has them.

// sessionHook mirrors a tenant's persistent sessions in the store.
type sessionHook struct {
	mqtt.HookBase
	inst *instance
	p    *persistence
}

func (h *sessionHook) ID() string { return "roost-sessions" }

var sessionHookEvents = provides(mqtt.OnConnect, mqtt.OnPacketRead, mqtt.OnPublish, mqtt.OnPublished, mqtt.OnQosPublish, mqtt.OnQosDropped, mqtt.OnSessionEstablished, mqtt.OnSubscribed, mqtt.OnUnsubscribed, mqtt.OnDisconnect, mqtt.OnClientExpired, mqtt.StoredClients, mqtt.StoredSubscriptions, mqtt.StoredInflightMessages, mqtt.StoredRetainedMessages)

func (h *sessionHook) Provides(b byte) bool { return sessionHookEvents.has(b) }

// OnConnect claims the connection's session for this broker before the
// connection is accepted, when there is one to keep or one stored to
// discard (see SessionStore): from then on a broker that held the session
// before, here or on another node, writes nothing for it. A store that
// cannot take the claim refuses the connection as unavailable (0x88; 3.1.1:
// 0x03), and the client tries again. The session expiry it judges by is
// already cut to max_session_expiry, as the quota hook cuts it next.
func (h *sessionHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	dc, ok := cl.Net.Conn.(*deviceConn)
	if !ok {
		return nil
	}
	// A discard noted for a connection that never got to its session's
	// start is not this one's.
	h.p.discarded(cl.ID)
	keeps := h.inst.keepsSession(cl)
	if !h.p.anywhere && !h.p.needsClaim(cl.ID, keeps) {
		return nil // nothing to read or claim: no timer either
	}
	ctx, cancel := context.WithTimeout(context.Background(), claimTimeout)
	defer cancel()
	refuse := func(what string, err error) error {
		h.inst.log.Error(what, "client_id", cl.ID, "err", err)
		writeConnack(dc, dc.id.version, serverUnavailable)
		return serverUnavailable
	}
	// Where sessions live on any node, the client's is read now (see
	// anywhere.go).
	var stored store.Session
	var found bool
	if h.p.anywhere {
		var err error
		if stored, found, err = h.p.look(ctx, cl.ID); err != nil {
			return refuse("read a session", err)
		}
	}
	if !h.p.needsClaim(cl.ID, keeps) {
		return nil
	}
	if err := h.p.claim(ctx, cl.ID); err != nil {
		return refuse("claim a session", err)
	}
	// A connection not starting clean resumes the stored session
	// [MQTT-3.1.2-5], even one that keeps none after: it ends with the
	// connection then (see routeHook.OnSessionEstablished).
	resumed := false
	if found && !pk.Connect.Clean {
		h.inst.handOver(ctx, cl.ID)
		if !keeps {
			if err := h.inst.routeEndingSession(ctx, cl.ID, stored); err != nil {
				return refuse("route a session resumed for one connection", err)
			}
		}
		var err error
		if resumed, err = h.p.adopt(ctx, stored); err != nil {
			return refuse("read a session's queue", err)
		}
	}
	if found && !resumed && !h.takesOver(cl.ID, pk) {
		// Discarded (a clean start, a connection that keeps no session)
		// or expired: it ends before the CONNACK goes out.
		if err := h.inst.discard(ctx, cl.ID); err != nil {
			return refuse("discard a session", err)
		}
	}
	return nil
}

// takesOver reports whether mochi hands the connection the session it
// holds for the client id (its client is connected here): a connection
// not starting clean resumes it, even one that keeps none after (see
// routeHook.OnSessionEstablished).
func (h *sessionHook) takesOver(clientID string, pk packets.Packet) bool {
	prev, ok := h.inst.server.Clients.Get(clientID)
	return ok && !prev.Net.Inline && !pk.Connect.Clean
}

// claimTimeout bounds a session's claim at connect.
const claimTimeout = 5 * time.Second

// errNotRecorded ends a connection whose acknowledgement could not be
// recorded; the client repeats it when it reconnects.
var errNotRecorded = errors.New("acknowledgement not recorded")

// OnPacketRead follows the QoS exchanges, before mochi answers them: PUBACK
// and PUBCOMP complete a message the client was sent, PUBREC makes it one
// waiting for its PUBREL, and a publisher's PUBREL frees its packet id.
// What the store could not record is not answered.
func (h *sessionHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	p := h.p
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

// encode takes the internal tag off a PUBLISH (see tag), keeps a
// withheld one from being written (see withhold), and puts a resumed
// session's waiting messages in order as its CONNACK goes out (see
// orderResend). See encodeHook.
func (h *sessionHook) encode(cl *mqtt.Client, pk *packets.Packet) {
	switch {
	case pk.FixedHeader.Type == packets.Publish:
		if h.p.unsent(cl, pk) {
			unwrite(cl, pk)
			return
		}
		h.p.announceAlias(cl, pk)
		untag(pk)
	case pk.FixedHeader.Type == packets.Connack && pk.SessionPresent:
		h.p.orderResend(cl)
	}
}

// OnPublish acknowledges, without delivering it again, a QoS 2 publish the
// store holds a receipt for: the publisher resent it.
func (h *sessionHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if h.p.duplicate(cl, pk) {
		return pk, packets.CodeSuccessIgnore
	}
	return pk, nil
}

// OnPublished forgets a routed publish's tag.
func (h *sessionHook) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	h.p.routed(pk)
}

func (h *sessionHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int) {
	if pk.FixedHeader.Type == packets.Publish {
		gatedDelivery(cl, &pk)
		h.p.handedOver(cl, pk)
	}
}

// OnQosDropped: mochi drops a waiting message that expired (its message
// expiry interval passed); it leaves the session's queue as if
// acknowledged, and its packet id stays taken while the client may hold it
// (see expired). The messages mochi clears from a client object a new
// connection took over are not dropped: they went with the connection.
func (h *sessionHook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if pk.FixedHeader.Type == packets.Publish && !cl.IsTakenOver() {
		h.p.expired(cl, pk)
	}
}

func (h *sessionHook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	if discarded := h.p.discarded(cl.ID); pk.Connect.Clean || discarded {
		// A clean start discards the previous session, in the store too;
		// a new one it keeps stays under the claim made at connect. A
		// stored session discarded at connect is deleted once more: a
		// node that matched its routes as they went may have queued a
		// copy since, and the new session has no subscription yet, so
		// whatever its queue holds is the old one's.
		epoch := h.p.epoch(cl.ID)
		h.drop(cl, "drop session")
		if persistent(cl) {
			h.p.keepEpoch(cl.ID, epoch)
		}
	}
	if persistent(cl) {
		h.p.save(cl, time.Time{})
		r := h.inst.routes
		h.p.established(cl, h.p.anywhere && r != nil && r.sess != nil)
	}
}

func (h *sessionHook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	if persistent(cl) {
		h.p.save(cl, time.Time{})
	}
}

func (h *sessionHook) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	if persistent(cl) {
		h.p.save(cl, time.Time{})
	}
}

// OnDisconnect keeps a session that outlives its connection, or drops one
// that ends with it.
func (h *sessionHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if _, ok := cl.Net.Conn.(*deviceConn); !ok {
		return // a session being restored, not a connection ending
	}
	h.p.gone(cl)
	switch {
	case cl.IsTakenOver():
	case expire:
		h.drop(cl, "drop session")
	default:
		h.p.save(cl, h.inst.env.now().UTC())
		if h.p.anywhere {
			h.p.evict(cl)
		}
	}
}

// OnClientExpired drops an expired session's stored state.
func (h *sessionHook) OnClientExpired(cl *mqtt.Client) {
	h.drop(cl, "drop expired session")
}

func (h *sessionHook) drop(cl *mqtt.Client, what string) {
	switch err := h.p.drop(cl.ID); {
	case errors.Is(err, store.ErrFenced):
		h.p.host.fenced()
		h.inst.log.Info(what+": the session has a new owner, who keeps it", "client_id", cl.ID)
	case err != nil:
		h.inst.log.Error(what, "client_id", cl.ID, "err", err)
	}
}

// The Stored* methods hand mochi the tenant's sessions when its broker
// starts. mochi asks for each part in turn; restore reads them once.
func (h *sessionHook) StoredClients() ([]storage.Client, error) {
	if err := h.inst.loadRestore(); err != nil {
		return nil, err
	}
	return h.inst.restored.clients, nil
}

func (h *sessionHook) StoredSubscriptions() ([]storage.Subscription, error) {
	return h.inst.restored.subs, nil
}

func (h *sessionHook) StoredInflightMessages() ([]storage.Message, error) {
	return h.inst.restored.inflight, nil
}

func (h *sessionHook) StoredRetainedMessages() ([]storage.Message, error) {
	return h.inst.restored.retained, nil
}

// storeHook stores a publish for every persistent session it is for (and
// as retained) before mochi acknowledges it. If the store fails the
// publisher is not acknowledged (see refusePublish).
type storeHook struct {
	mqtt.HookBase
	inst *instance
	p    *persistence
}

func (h *storeHook) ID() string { return "roost-store" }

func (h *storeHook) Provides(b byte) bool { return b == mqtt.OnPublish }

func (h *storeHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	// The outbox hook's write for this publish, if any: made in the same
	// Append as the publish's copies, or not at all if the publish is
	// refused (its publisher, unacknowledged, sends it again).
	ow := takePending(cl)
	if h.inst.caughtUp != nil && !cl.Net.Inline && !remote(pk) {
		if err := h.inst.awaitCatchUp(); err != nil {
			if pk.FixedHeader.Qos == 0 {
				return pk, packets.ErrRejectPacket // dropped
			}
			return h.inst.refusePublish(cl, pk, err)
		}
	}
	if pk.FixedHeader.Qos == 0 && !pk.FixedHeader.Retain {
		return pk, nil
	}
	out, err := h.p.beforeAck(cl, pk, ow)
	if err != nil {
		return h.inst.refusePublish(cl, pk, err)
	}
	if h.inst.spread {
		return out, nil // the route hook, last, checks the lease once more
	}
	return h.inst.ackStillServing(cl, out)
}
