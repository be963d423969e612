package broker

import (
	"context"
	"errors"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/broker/store"
)

// A device's Will is a publish like any other, made when the device goes
// away. mochi would publish it itself, past the ACL, the quotas, metering,
// export and the session store (DESIGN §5), so the hook hands mochi a
// withdrawn Will and the hub publishes the real one through inject: at once,
// or once its delay has passed, checked against the tenant's rules as they
// are then. A Will waiting out its delay is kept in its session's record, so
// it survives a restart, and is dropped when a connection for the session
// arrives first [MQTT-3.1.3-9].

// willHook takes each device's Will from mochi (see willGone) and drops a
// held one when a connection for its session arrives.
type willHook struct {
	mqtt.HookBase
	inst *instance
}

func (h *willHook) ID() string { return "roost-wills" }

func (h *willHook) Provides(b byte) bool { return b == mqtt.OnWill || b == mqtt.OnSessionEstablish }

// withdrawnWill is where a Will withdrawn at shutdown goes: a topic no
// filter of a device or watcher can match ($-topics are reserved, and `#`
// does not match them) and that the ACL denies to everyone besides.
const withdrawnWill = "$roost/withdrawn-will"

// OnWill takes a client's Will from mochi, which would publish it past
// every check, and publishes it through the hub's own path — unless the
// connection ends as for a shutdown (see handoff), when it goes nowhere.
// mochi cannot be told not to send one, so it is given a Will to where
// nobody is.
func (h *willHook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	if dc, ok := cl.Net.Conn.(*deviceConn); ok && !h.inst.withdrawWills.Load() && !dc.withdrawWill.Load() {
		h.inst.willGone(cl, dc.id.device, will)
	}
	// mochi reads the delay from the client, not from what this returns:
	// it would hold the withdrawn Will for it, and its event loop would
	// later clear the Will of the client holding the id then — the
	// session's next connection, racing with that connection's goroutine
	// (mochi v2.7.9, server.go sendDelayedLWT). With no delay it is
	// dropped now. sendLWT runs on the goroutine that owns the client.
	cl.Properties.Will.WillDelayInterval = 0
	return mqtt.Will{TopicName: withdrawnWill}, nil
}

// OnSessionEstablish drops a Will the session holds back: a connection
// for it arrived before the Will's delay passed [MQTT-3.1.3-9].
func (h *willHook) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	h.inst.cancelWill(cl.ID)
}

// pendingWill is a Will waiting out its delay.
type pendingWill struct {
	device   string
	clientID string
	pk       packets.Packet
	due      time.Time
	// client is the session's client as it went away; a new connection
	// for the session replaces it.
	client *mqtt.Client
	left   time.Time
	timer  *time.Timer
}

// wills holds a tenant's Wills that wait out their delay.
type wills struct {
	mu      sync.Mutex
	pending map[string]*pendingWill // by client id
	closed  bool                    // the instance is shutting down: timers no longer start
}

// willGone is called as mochi would publish a client's Will: the client
// went away without a normal DISCONNECT. The Will goes out now, or after
// its delay, cut to the session's own expiry (a session without one ends
// now).
func (inst *instance) willGone(cl *mqtt.Client, device string, w mqtt.Will) {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: w.Qos, Retain: w.Retain},
		TopicName:   w.TopicName,
		Payload:     w.Payload,
		Properties:  packets.Properties{User: w.User},
	}
	delay := time.Duration(w.WillDelayInterval) * time.Second
	if cl.Properties.ProtocolVersion < 5 || cl.Properties.Props.SessionExpiryInterval == 0 {
		delay = 0
	} else {
		delay = min(delay, time.Duration(cl.Properties.Props.SessionExpiryInterval)*time.Second)
	}
	if delay <= 0 {
		inst.sendWill(device, cl.ID, pk)
		return
	}
	if inst.live.takenOver(cl) {
		// The connection that took the session over is one for it
		// within the delay; its OnSessionEstablish came before this.
		return
	}
	now := inst.env.now()
	pw := &pendingWill{device: device, clientID: cl.ID, pk: pk, due: now.Add(delay), client: cl, left: now}
	if !inst.holdWill(pw) {
		inst.log.Info("too many Wills waiting out their delay: sent at once", "device", device, "client_id", cl.ID)
		inst.sendWill(device, cl.ID, pk)
	}
}

// holdWill keeps a Will until it is due. A tenant holds at most as many as
// its max_connections, so that devices coming and going cannot pile up
// Wills without bound; false means it holds that many already.
func (inst *instance) holdWill(pw *pendingWill) bool {
	inst.wills.mu.Lock()
	defer inst.wills.mu.Unlock()
	if inst.wills.pending == nil {
		inst.wills.pending = map[string]*pendingWill{}
	}
	old := inst.wills.pending[pw.clientID]
	if old == nil && int64(len(inst.wills.pending)) >= inst.quotas().MaxConnections {
		return false
	}
	if old != nil && old.timer != nil {
		old.timer.Stop()
	}
	inst.wills.pending[pw.clientID] = pw
	if !inst.wills.closed {
		pw.timer = time.AfterFunc(max(pw.due.Sub(inst.env.now()), 0), func() { inst.willDueNow(pw) })
	}
	return true
}

// willDueNow sends a held Will whose delay has passed, unless a connection
// for its session came first, and takes it out of the session's record.
func (inst *instance) willDueNow(pw *pendingWill) {
	inst.wills.mu.Lock()
	if inst.wills.pending[pw.clientID] != pw || inst.wills.closed {
		inst.wills.mu.Unlock()
		return
	}
	delete(inst.wills.pending, pw.clientID)
	inst.wills.mu.Unlock()
	inst.sendWill(pw.device, pw.clientID, pw.pk)
	if p := inst.persist; p != nil && pw.client != nil {
		if cl, ok := inst.server.Clients.Get(pw.clientID); ok && cl == pw.client {
			p.save(cl, pw.left)
		}
	}
}

// cancelWill drops a held Will: a connection for its session arrived.
func (inst *instance) cancelWill(clientID string) {
	inst.wills.mu.Lock()
	defer inst.wills.mu.Unlock()
	if pw := inst.wills.pending[clientID]; pw != nil {
		if pw.timer != nil {
			pw.timer.Stop()
		}
		delete(inst.wills.pending, clientID)
	}
}

// heldWill is a session's held Will as its record keeps it; nil if none.
func (inst *instance) heldWill(clientID string) *store.Will {
	inst.wills.mu.Lock()
	pw := inst.wills.pending[clientID]
	inst.wills.mu.Unlock()
	if pw == nil {
		return nil
	}
	return &store.Will{Topic: pw.pk.TopicName, Payload: pw.pk.Payload, QoS: pw.pk.FixedHeader.Qos, Retain: pw.pk.FixedHeader.Retain,
		Properties: encodeProps(pw.pk.Properties), Due: pw.due}
}

// holdRestoredWill holds a Will its session's record kept through a
// restart; one already due goes out at once.
func (inst *instance) holdRestoredWill(r restoredWill) {
	device, clientID, w := r.device, r.clientID, r.will
	var mp storage.MessageProperties
	decodeProps(w.Properties, &mp)
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: w.QoS, Retain: w.Retain},
		TopicName:   w.Topic,
		Payload:     w.Payload,
		Properties:  packets.Properties{User: mp.User},
	}
	cl, _ := inst.server.Clients.Get(clientID)
	pw := &pendingWill{device: device, clientID: clientID, pk: pk, due: w.Due, client: cl, left: r.left}
	if !inst.holdWill(pw) {
		go inst.sendWill(device, clientID, pk)
	}
}

// stopWills stops the timers as the instance shuts down. The held Wills
// stay in their sessions' records, for the next start.
func (inst *instance) stopWills() {
	inst.wills.mu.Lock()
	defer inst.wills.mu.Unlock()
	inst.wills.closed = true
	for _, pw := range inst.wills.pending {
		if pw.timer != nil {
			pw.timer.Stop()
		}
	}
}

// heldWills is how many Wills wait out their delay.
func (inst *instance) heldWills() int {
	inst.wills.mu.Lock()
	defer inst.wills.mu.Unlock()
	return len(inst.wills.pending)
}

// sendWill publishes a device's Will through the checks any publish
// passes. A device deleted or disabled since it connected, or a suspended
// tenant, sends none; a refusal is logged, like a refused publish, and one
// by the tenant's rules is raised as a denied publish (whatever the
// tenant's deny_action: there is nobody to answer).
func (inst *instance) sendWill(device, clientID string, pk packets.Packet) {
	log := inst.log.With("device", device, "client_id", clientID, "topic", pk.TopicName)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	t, tfound, terr := inst.dir.tenant(ctx, inst.tenant)
	d, dfound, derr := inst.dir.device(ctx, inst.tenant, device)
	switch {
	case terr == nil && (!tfound || t.Suspended):
		log.Info("will not sent: tenant deleted or suspended")
		return
	case derr == nil && (!dfound || !d.Enabled):
		log.Info("will not sent: device deleted or disabled")
		return
	}
	if err := inst.inject(publisher{device: device, clientID: clientID}, pk); err != nil {
		if errors.Is(err, errPublishDenied) {
			inst.env.publishDenied(device, clientID, "", pk.TopicName, "Will denied by the tenant's rules")
		}
		log.Info("will not sent", "err", err)
	}
}
