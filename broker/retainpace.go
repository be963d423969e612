package broker

import (
	"slices"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/tenants"
)

// The retained messages a SUBSCRIBE matches are queued for the client
// paced to its writes. mochi v2.7.9 queues them all at once, on the
// connection's reader, into the client's queue of pending writes
// (MaximumClientWritesPending, 1,024), and drops each one that finds it
// full (Server.publishToClient): a subscriber to a filter matching 10,000
// retained messages got 3,378 of them at QoS 0 and 5,857 at QoS 1 on
// loopback (TestRetainedAllDelivered), silently but for the drop count.
// mochi calls OnRetainPublished, on the reader, after each one it queued:
// there the reader waits while more than retainedHigh of them are still
// queued, until no more than retainedLow are, so the queue never fills
// with them. The client reads while it waits; the reader takes its next
// packet once every retained message is queued, as before.
//
// The upstream fix is mochi's: publishRetainedToClient waiting for room in
// the queue (or writing directly) rather than dropping.
const (
	retainedHigh = 512 // of the 1,024 places of a client's queue
	retainedLow  = 128
	// retainedStall is how long the reader waits without a single write
	// before it stops pacing this SUBSCRIBE's messages (mochi then drops
	// what finds the queue full): a client that does not read is closed
	// by the write timeout before. It is the reader's longest wait per
	// SUBSCRIBE, not per message.
	retainedStall = 10 * time.Second
)

// retainedPace is a connection's count of the retained messages its
// current SUBSCRIBE queued against the PUBLISH packets written since.
// sent, base and wake belong to the reader; written is counted by the
// write loop (see protocolHook.encode).
type retainedPace struct {
	sent    int64
	base    int64
	stalled bool // the SUBSCRIBE's pacing ended (retainedStall)
	// noLocal holds the SUBSCRIBE's filters granted with No Local: mochi
	// reports a retained message the client published itself as
	// published to it under such a filter without queueing it
	// [MQTT-3.8.3-3], and it is not counted.
	noLocal []string
	written atomic.Int64
	waiting atomic.Bool
	wake    chan struct{}
}

// start begins a SUBSCRIBE's count, with what an earlier SUBSCRIBE's may
// still have in the queue (SUBSCRIBEs that come back to back).
func (p *retainedPace) start() {
	p.sent, p.base, p.stalled = max(p.queued(), 0), p.written.Load(), false
}

// queued is how many of the SUBSCRIBE's retained messages may still be in
// the client's queue.
func (p *retainedPace) queued() int64 { return p.sent - (p.written.Load() - p.base) }

// wrote counts a PUBLISH packet taken from the queue, and wakes the reader
// if it waits.
func (p *retainedPace) wrote() {
	p.written.Add(1)
	if p.waiting.Load() {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

// paceRetained counts a retained message mochi queued for the client, and
// waits, if the queue holds too many of them, until it holds few.
func (dc *deviceConn) paceRetained(cl *mqtt.Client, pk packets.Packet) {
	p := &dc.retained
	if pk.Origin == cl.ID && slices.ContainsFunc(p.noLocal, func(f string) bool { return tenants.MatchTopic(f, pk.TopicName) }) {
		// Not queued (or queued under another filter of the SUBSCRIBE
		// too, then left uncounted: the pace errs towards not waiting).
		return
	}
	p.sent++
	if p.stalled || p.queued() < retainedHigh {
		return
	}
	// The reader is about to block: what is batched (the SUBACK, the
	// reader's own answer) goes first, as before any wait of the reader's
	// (see batch.go).
	dc.flushBatch()
	if p.wake == nil {
		p.wake = make(chan struct{}, 1)
	}
	p.waiting.Store(true)
	defer p.waiting.Store(false)
	tick := time.NewTimer(10 * time.Millisecond)
	defer tick.Stop()
	last, since := p.written.Load(), time.Now()
	for p.queued() > retainedLow && !dc.closing.Load() {
		select {
		case <-p.wake:
		case <-tick.C:
			tick.Reset(10 * time.Millisecond)
		}
		if w := p.written.Load(); w != last {
			last, since = w, time.Now()
		} else if time.Since(since) > retainedStall {
			p.stalled = true
			return
		}
	}
}

// OnSubscribed begins the count of the retained messages the SUBSCRIBE
// will queue (mochi queues them once it has written the SUBACK).
func (h *protocolHook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	if dc, ok := cl.Net.Conn.(*deviceConn); ok {
		dc.retained.start()
		dc.retained.noLocal = dc.retained.noLocal[:0]
		for i, f := range pk.Filters {
			if f.NoLocal && i < len(reasonCodes) && reasonCodes[i] < packets.ErrUnspecifiedError.Code {
				dc.retained.noLocal = append(dc.retained.noLocal, f.Filter)
			}
		}
	}
}

// OnRetainPublished paces the retained messages of a SUBSCRIBE.
func (h *protocolHook) OnRetainPublished(cl *mqtt.Client, pk packets.Packet) {
	if dc, ok := cl.Net.Conn.(*deviceConn); ok {
		dc.paceRetained(cl, pk)
	}
}
