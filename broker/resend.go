package broker

import (
	"sync"
	"time"
	"unsafe"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// A connection that resumes a session is sent what the session held
// before anything new [MQTT-4.6.0-1]. mochi v2.7.9 does not see to it:
// from the moment it lists the connection among its clients, a new
// delivery goes to the connection's write queue, which its write loop may
// write before the resend at the CONNACK (another goroutine) has written
// the older messages; before the CONNACK itself, even. A stored session
// holds such deliveries back itself (persistence.holds), sending them
// from its queue; a session that ends with its connection (MQTT 5, Clean
// Start 0 and no session expiry) has no queue to send them from. Its
// connection gets a resendGate: a new delivery's write waits until the
// resend is done.
//
// A delivery made in that window is among the messages mochi resends if
// it reached the inflight messages before the resend read them; its write
// from the queue would then send it twice. The gate notes each delivery
// handed to the connection while it is closed (pending: its packet id and
// its payload, each delivery's own copy, kept referenced so that a later
// message cannot have its address); a resend of one of them marks it
// resent, and its write from the queue is dropped. The session's own held
// messages are not noted: nothing else writes them. One with an empty
// payload cannot be told from another under the same id, and is written
// again: a duplicate, never a loss. Once the gate is open, the first write
// of a delivery not pending (handed over since) lets the gate go.
//
// Known and left: a delivery that reaches the inflight messages in the
// microseconds between mochi listing the client and its resend reading
// them is resent among the held messages by its timestamp in seconds, and
// with an outbound topic alias whose announcing delivery is still
// pending, it would reach the client before the alias is announced. The
// upstream fix is mochi's: the resend at the CONNACK written ahead of any
// queued delivery (or through the same write queue).
type resendGate struct {
	done chan struct{} // closed once the resend is done

	mu      sync.Mutex
	opened  bool
	pending map[uint16]pendingWrite
}

// pendingWrite is a delivery handed to a gated connection before the gate
// opened, whose write from the queue is to come.
type pendingWrite struct {
	payload []byte
	resent  bool // mochi's resend wrote it: the queue's write is dropped
}

// resendGateWait bounds how long a delivery waits for the resend before
// it checks that its connection is still open.
const resendGateWait = 50 * time.Millisecond

// gateResend gives a connection that may resume a session a resend gate,
// unless the session store holds new deliveries back itself (a session
// the connection keeps).
func (inst *instance) gateResend(cl *mqtt.Client, dc *deviceConn) {
	if cl.Properties.Clean || (inst.persist != nil && inst.keepsSession(cl)) {
		return
	}
	dc.resend.Store(&resendGate{done: make(chan struct{})})
}

// keepsSession reports whether a connection keeps its session after it
// ends, with the session expiry the plan allows.
func (inst *instance) keepsSession(cl *mqtt.Client) bool {
	if cl.Properties.ProtocolVersion == 5 {
		return min(cl.Properties.Props.SessionExpiryInterval, inst.maxSessionExpiry()) > 0
	}
	return !cl.Properties.Clean
}

// resendDone opens a connection's gate: mochi's resend at the CONNACK is
// done (or there was none).
func resendDone(dc *deviceConn) {
	g := dc.resend.Load()
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.opened {
		g.opened = true
		close(g.done)
	}
	if len(g.pending) == 0 {
		dc.resend.CompareAndSwap(g, nil)
	}
}

// gatedDelivery notes a delivery mochi hands a connection, if it has a
// resend gate (from OnQosPublish: the session hook's, or the protocol
// hook's without one).
func gatedDelivery(cl *mqtt.Client, pk *packets.Packet) {
	if dc, ok := cl.Net.Conn.(*deviceConn); ok {
		if g := dc.resend.Load(); g != nil {
			g.handedOver(pk)
		}
	}
}

// handedOver notes a delivery mochi hands a gated connection: while the
// gate is closed, its write from the queue is pending.
func (g *resendGate) handedOver(pk *packets.Packet) {
	if pk.FixedHeader.Dup || len(pk.Payload) == 0 {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.opened {
		return
	}
	if g.pending == nil {
		g.pending = map[uint16]pendingWrite{}
	}
	g.pending[pk.PacketID] = pendingWrite{payload: pk.Payload}
}

// throughGate is the encoder's part (see protocolHook.encode) for a
// PUBLISH to a connection with a resend gate: a resend (DUP) of a pending
// delivery marks it resent; a new delivery waits for the resend to be
// done, and is dropped if it was resent. It reports whether the packet is
// to be written.
func throughGate(cl *mqtt.Client, dc *deviceConn, g *resendGate, pk *packets.Packet) bool {
	if pk.FixedHeader.Dup {
		g.mu.Lock()
		if w, ok := g.pending[pk.PacketID]; ok && !g.opened && w.same(pk.Payload) {
			w.resent = true
			g.pending[pk.PacketID] = w
		}
		g.mu.Unlock()
		return true
	}
	if !g.wait(cl) {
		return true // closed: mochi's write fails
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	w, ok := g.pending[pk.PacketID]
	if !ok || !w.same(pk.Payload) {
		// Handed over since the gate opened: the writes pending before
		// it are through (or will not come: a delivery mochi held back
		// for the client's receive maximum is written by no queue).
		dc.resend.CompareAndSwap(g, nil)
		return true
	}
	delete(g.pending, pk.PacketID)
	if len(g.pending) == 0 {
		dc.resend.CompareAndSwap(g, nil)
	}
	return !w.resent
}

// same reports whether payload is this delivery's own.
func (w pendingWrite) same(payload []byte) bool {
	return len(payload) == len(w.payload) && len(payload) > 0 && unsafe.SliceData(payload) == unsafe.SliceData(w.payload)
}

// wait waits until the gate opens; false if the connection closed first.
func (g *resendGate) wait(cl *mqtt.Client) bool {
	select {
	case <-g.done:
		return true
	default:
	}
	t := time.NewTicker(resendGateWait)
	defer t.Stop()
	for {
		select {
		case <-g.done:
			return true
		case <-t.C:
			if cl.Closed() {
				return false
			}
		}
	}
}
