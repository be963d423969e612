package broker

import (
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// A connection that resumes a session is sent what the session held
// before anything new [MQTT-4.6.0-1]. mochi v2.7.9 does not see to it:
// from the moment it lists the connection among its clients, a new
// delivery goes to the connection's inflight messages and its write
// queue. The write loop may write it before the resend at the CONNACK
// (another goroutine) has written the older messages, before the CONNACK
// itself even; and one that reached the inflight messages before the
// resend read them is resent among the held messages, by its timestamp
// in seconds, in no order (it happened in CI under load). A stored
// session holds such deliveries back itself (persistence.holds), sending
// them from its queue; a session that ends with its connection (MQTT 5,
// Clean Start 0 and no session expiry) has no queue to send them from.
// Its connection gets a resendGate, with two parts:
//
//   - listed: a new delivery waits, in its ACL check (which mochi makes
//     before anything else of a delivery), until the resend has read the
//     inflight messages it resends (its first resend is handed over), or
//     is done. So no new delivery is among them. The wait is the CONNACK's
//     write at most, on the delivering goroutine.
//   - done: a new delivery's write waits, in the encoder (before mochi's
//     write lock, on the connection's own write loop), until the resend
//     is done: mochi calls OnSessionEstablished after it.
//
// Known and left: an outbound topic alias is given to a delivery as it
// is queued; the order the gate keeps is the order they were queued in,
// so an alias is announced before it is used.
//
// The upstream fix is mochi's: the resend at the CONNACK written ahead of
// any queued delivery (or through the same write queue).
type resendGate struct {
	listed chan struct{} // closed once the resend read what it resends
	done   chan struct{} // closed once the resend is done
	// listedLimit bounds a delivery's wait for listed
	// (resendListedLimit).
	listedLimit time.Duration

	listedOnce, doneOnce sync.Once
}

// resendGateWait bounds how long a delivery waits for the resend before
// it checks that its connection is still open.
const resendGateWait = 50 * time.Millisecond

// resendListedLimit bounds a delivery's wait for the resend to read the
// inflight messages (it waits on a publisher's goroutine): past it, the
// delivery goes on, as mochi alone would have it.
const resendListedLimit = 5 * time.Second

// gateResend gives a connection that may resume a session a resend gate,
// unless the session store holds new deliveries back itself (a session
// the connection keeps).
func (inst *instance) gateResend(cl *mqtt.Client, dc *deviceConn) {
	if cl.Properties.Clean || (inst.persist != nil && inst.keepsSession(cl)) {
		return
	}
	dc.resend.Store(&resendGate{listed: make(chan struct{}), done: make(chan struct{}), listedLimit: resendListedLimit})
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
	if g := dc.resend.Load(); g != nil {
		g.listedOnce.Do(func() { close(g.listed) })
		g.doneOnce.Do(func() { close(g.done) })
		dc.resend.CompareAndSwap(g, nil)
	}
}

// gatedDelivery notes a resend to a connection with a resend gate (from
// OnQosPublish: the session hook's, or the protocol hook's without one):
// the resend has read the inflight messages it resends.
func gatedDelivery(cl *mqtt.Client, pk *packets.Packet) {
	if !pk.FixedHeader.Dup {
		return
	}
	if dc, ok := cl.Net.Conn.(*deviceConn); ok {
		if g := dc.resend.Load(); g != nil {
			g.listedOnce.Do(func() { close(g.listed) })
		}
	}
}

// awaitListed is a new delivery's wait, in its ACL check, until the resend
// has read the inflight messages (see resendGate).
func awaitListed(cl *mqtt.Client, dc *deviceConn) {
	g := dc.resend.Load()
	if g == nil {
		return
	}
	g.wait(cl, g.listed, g.listedLimit)
}

// throughGate is the encoder's part (see protocolHook.encode) for a
// PUBLISH to a connection with a resend gate: a new delivery (not DUP)
// waits until the resend is done.
func throughGate(cl *mqtt.Client, g *resendGate, pk *packets.Packet) {
	if !pk.FixedHeader.Dup {
		g.wait(cl, g.done, 0)
	}
}

// wait waits until ch is closed, the connection closes, or limit (if not
// 0) has passed.
func (g *resendGate) wait(cl *mqtt.Client, ch chan struct{}, limit time.Duration) {
	select {
	case <-ch:
		return
	default:
	}
	t := time.NewTicker(resendGateWait)
	defer t.Stop()
	var until time.Time
	if limit > 0 {
		until = time.Now().Add(limit)
	}
	for {
		select {
		case <-ch:
			return
		case now := <-t.C:
			if cl.Closed() || (limit > 0 && now.After(until)) {
				return
			}
		}
	}
}
