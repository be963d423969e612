package broker

import (
	"math"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// A connected client that does not keep up loses messages in mochi, after
// their publishers were acknowledged, as a connected mosquitto client does
// past max_queued_messages: one whose in-flight messages (QoS 1 and 2) are
// at max_queued, and one with 1,024 packets waiting to be written to it
// (it does not read). Each drop is counted in
// roost_messages_dropped_total{reason}; the tenant learns which client
// through a queue_dropped event — the first at once, then at most one a
// minute per client and reason, carrying how many drops it stands for — so
// that one device that stops reading cannot flood the tenant's events.
//
// mochi has a hook for the second (OnPublishDropped) but not the first: it
// only logs "client store quota reached", once per message; mochiLogger
// hands each such line here (upstream, a hook at that bound would do).
//
// With persistent sessions mochi's bound is lifted (newInstance): a
// persistent session's queue is kept to max_queued by persistence, which
// follows the quota as it changes. A clean session's in-flight messages are
// kept to max_queued by overQueued, in the ACL check mochi asks before it
// takes a delivery in (the only hook there is before it does).

// dropEvery is how often a client's drops of one reason raise an event.
const dropEvery = time.Minute

// maxDropNotes bounds the clients a tenant's drop notes remember; past it,
// they start again (counts not yet raised are lost).
const maxDropNotes = 10_000

// The reasons of a drop, as the metric and the event name them.
const (
	dropInflight = "max_queued"     // in-flight messages at max_queued
	dropPending  = "pending_writes" // packets waiting to be written
)

// mochiInflightFull is mochi v2.7.9's warning for a message dropped for a
// client whose in-flight messages are at their bound.
const mochiInflightFull = "client store quota reached"

type dropKey struct{ clientID, reason string }

type dropNote struct {
	mu      sync.Mutex // for a note of its own (add)
	last    time.Time  // the last event raised
	pending int64      // drops since, not yet raised
}

// add counts n drops and reports whether to raise their event now, with
// the drops it stands for: the first at once, then one every dropEvery.
func (n *dropNote) add(count int64, now time.Time) (int64, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.addLocked(count, now)
}

func (n *dropNote) addLocked(count int64, now time.Time) (int64, bool) {
	n.pending += count
	if !n.last.IsZero() && now.Sub(n.last) < dropEvery {
		return 0, false
	}
	raised := n.pending
	n.last, n.pending = now, 0
	return raised, true
}

// dropNotes folds a tenant's drops for connected clients into events.
type dropNotes struct {
	mu    sync.Mutex
	notes map[dropKey]*dropNote
}

// note counts a drop and reports whether to raise its event now, with the
// drops it stands for.
func (d *dropNotes) note(k dropKey, now time.Time) (int64, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.notes == nil || len(d.notes) >= maxDropNotes {
		d.notes = map[dropKey]*dropNote{}
	}
	n := d.notes[k]
	if n == nil {
		n = &dropNote{}
		d.notes[k] = n
	}
	return n.addLocked(1, now)
}

// dropped notes a message mochi dropped for a connected client.
func (inst *instance) dropped(clientID, reason string) {
	count, raise := inst.drops.note(dropKey{clientID, reason}, inst.env.now())
	if !raise {
		return
	}
	cl, ok := inst.server.Clients.Get(clientID)
	if !ok {
		return
	}
	limit := int64(inst.server.Options.Capabilities.MaximumClientWritesPending)
	why := "the client does not read what is sent to it"
	if reason == dropInflight {
		limit = inst.quotas().MaxQueued
		why = "the client does not acknowledge what is sent to it"
	}
	inst.emit(cl, events.Event{Type: events.QueueDropped, Quota: reason, Limit: limit, Reason: why, Count: count})
}

// OnPublishDropped: mochi dropped a message for a client whose packets
// waiting to be written reached their bound.
func (h *eventsHook) OnPublishDropped(cl *mqtt.Client, _ packets.Packet) {
	if !cl.Net.Inline {
		h.inst.dropped(cl.ID, dropPending)
	}
}

// overQueued reports whether a delivery of topic to cl is to be refused for
// max_queued: cl is a device's connection without a persistent session, on
// a broker whose mochi does not bound in-flight messages itself
// (boundsInflight), already holding max_queued QoS 1 and 2 messages it has
// not acknowledged or not been sent yet (past its Receive Maximum), and the
// delivery may be QoS 1 or 2: one of its subscriptions matching topic is.
// Without it such a client made mochi keep up to 65,535 copies, each with
// its payload. The ACL check does not know the publish's QoS, so a QoS 0
// message for a QoS 1 or 2 subscription is refused too while the client is
// full; QoS 0 is at most once.
//
// It counts nothing; accessHook.OnACLCheck, asked last of the hooks that
// answer the check, counts the refusal (refuseQueued).
func (inst *instance) overQueued(cl *mqtt.Client, dc *deviceConn, topic string) bool {
	if !inst.boundsInflight || dc == nil || persistent(cl) {
		return false
	}
	limit := int(clamp(inst.q.Load().MaxQueued, 1, math.MaxUint16))
	if !holdsAtLeast(cl, limit) || !isDelivery(dc, topic) {
		return false
	}
	for filter, sub := range cl.State.Subscriptions.GetAll() {
		if sub.Qos > 0 && tenants.MatchTopic(tenants.SharedFilter(filter), topic) {
			return true
		}
	}
	return false
}

// holdsAtLeast reports whether mochi holds n or more messages for a
// client, its reservations (see reservation) left out: they keep a packet
// id, not a message. Only from n entries on are the reservations counted,
// one by one (see deviceConn.reservations); never by copying every
// message the client is held (Inflight.GetAll), which cost a megabyte
// for each delivery to a client at a max_queued of 2,000.
func holdsAtLeast(cl *mqtt.Client, n int) bool {
	held := cl.State.Inflight.Len()
	if held < n {
		return false
	}
	if dc, ok := cl.Net.Conn.(*deviceConn); ok {
		held -= dc.reservations(cl)
	}
	return held >= n
}

// refuseQueued counts a delivery overQueued refused as mochi counts one it
// drops at its own bound: in roost_messages_dropped_total{reason=
// "max_queued"} and the client's queue_dropped events.
func (inst *instance) refuseQueued(cl *mqtt.Client) {
	atomic.AddInt64(&inst.server.Info.InflightDropped, 1)
	inst.dropped(cl.ID, dropInflight)
}
