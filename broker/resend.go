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
// from the queue would then send it twice. Such a write is dropped: the
// gate notes each message resent, by its packet id and its payload (each
// delivery's own copy, and kept referenced, so that a later message
// cannot have its address). One with an empty payload cannot be told
// from another under the same id, and is written again: a duplicate,
// never a loss.
//
// The upstream fix is mochi's: the resend at the CONNACK written ahead of
// any queued delivery (or through the same write queue).
type resendGate struct {
	done chan struct{} // closed once the resend is done

	mu     sync.Mutex
	opened bool
	resent map[uint16][]byte // packet id → payload of a message resent
}

// resendGateWait bounds how long a delivery waits for the resend before
// it checks that its connection is still open.
const resendGateWait = 50 * time.Millisecond

// gateResend gives a connection that may resume a session for itself
// alone a resend gate.
func (inst *instance) gateResend(cl *mqtt.Client, dc *deviceConn) {
	if cl.Properties.Clean || inst.keepsSession(cl) {
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
	if !g.opened {
		g.opened = true
		close(g.done)
	}
	if len(g.resent) == 0 {
		dc.resend.CompareAndSwap(g, nil)
	}
	g.mu.Unlock()
}

// throughGate is the encoder's part (see encodeHook) for a PUBLISH to a
// connection with a resend gate: a resend (DUP) is noted; a new delivery
// waits for the resend to be done, and is dropped if it was resent. It
// reports whether the packet is to be written.
func throughGate(cl *mqtt.Client, dc *deviceConn, g *resendGate, pk *packets.Packet) bool {
	if pk.FixedHeader.Dup {
		g.mu.Lock()
		if !g.opened && pk.FixedHeader.Qos > 0 && len(pk.Payload) > 0 {
			if g.resent == nil {
				g.resent = map[uint16][]byte{}
			}
			g.resent[pk.PacketID] = pk.Payload
		}
		g.mu.Unlock()
		return true
	}
	if !g.wait(cl) {
		return true // closed: mochi's write fails
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	write := true
	if p, ok := g.resent[pk.PacketID]; ok && len(p) > 0 && len(pk.Payload) == len(p) &&
		unsafe.SliceData(p) == unsafe.SliceData(pk.Payload) {
		delete(g.resent, pk.PacketID)
		write = false
	}
	if len(g.resent) == 0 {
		dc.resend.CompareAndSwap(g, nil)
	}
	return write
}

// wait waits until the gate opens; false if the connection closed first.
func (g *resendGate) wait(cl *mqtt.Client) bool {
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
