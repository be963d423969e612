package broker

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/roosthub/roost/broker/store"
)

// Acknowledgements behind durable writes. A device's QoS 1 publish that
// matches a rule with a destination is in its outbox before its publisher
// gets the PUBACK. mochi handles a connection's packets one after the
// other on its reader, and a hook that waited there for the store would
// keep the next publish unread until the write is synced: one publisher's
// messages in flight could never share a sync. So the reader does not
// wait. The hook queues the write on the connection (commitBehind) and
// marks a hold in its outgoing stream: every byte written to the
// connection after the mark (the PUBACK mochi writes next, and whatever
// follows it) is held, in order, until the write is durable. The reader
// reads on; the next publishes' writes queue behind.
//
// A connection's queued writes are made by one goroutine of its own, the
// committer, in order and as many at once as are queued, in one Append:
// the outbox numbers a device's messages in the order they were
// published, and a publisher keeping 16 in flight has them written
// together, in one store write (which the embedded store's group commit
// shares with other connections' writes). The committer runs while writes
// are queued, and waits up to committerIdle for the next before it ends, so
// that a publisher waiting for each PUBACK (one write at a time) wakes the
// same goroutine for each, rather than starting one whose stack grows
// through the store's commit every time. Once a write is durable, what was held behind its
// hold, up to the next one, goes out: the PUBACKs leave in the order the
// publishes came, never one before an earlier one still held.
//
// A write that fails is never acknowledged: what was held is dropped, the
// writes queued behind it are not made, and the connection is closed
// (an MQTT 5 client is told 0x80): its client sends the publishes again.
// Nothing else is sent on it, save what was written before the hold (the
// acknowledgements of earlier, durable publishes) and that DISCONNECT.
// Nor on the session's next connection: a PUBACK mochi could not write
// stays in its session's inflight messages, which it sends again there,
// so deviceConn.Write drops one it cannot write as if written.
//
// Bounds: a connection has at most maxDurable writes queued or in
// flight; its reader waits for one to end before it queues another, so
// that a publisher flooding the broker is held back by TCP, not by memory.
// The writes queued also stay within maxDurableBytes of payload (one
// larger is queued alone), so that a tenant whose plan allows large packets
// holds at most that much per connection, not maxDurable packets of it.
// At most heldLimit bytes wait behind holds; a writer past it (mochi's
// write loop delivering to the connection) waits for them to go.
//
// Another connection, of this tenant or another, never waits for these
// writes: each connection has its own queue and committer. When the
// connection ends, its goroutine waits for the committer (a store write
// is bounded by storeCtx) before it closes the socket, and sends what the
// writes released then (see instance.serve, closeServed): no goroutine
// outlives the connection.
//
// What does not go this way, and why: a QoS 2 publish is written with the
// reader waiting, as before: mochi routes a publish right after writing
// its PUBREC, and a PUBREC held back from a write that then failed would
// leave a message routed but not acknowledged, which the publisher sends
// again: delivered twice, where QoS 2 promises once. (A QoS 1 message may
// arrive twice.) A publish stored for persistent sessions carries the
// store's numbers of its copies into the routing (see storeCopies), so
// it is written before routing too, with the outbox's copy in the same
// write. Either waits first for the connection's queued writes, so that
// the outbox keeps the device's order.
const (
	maxDurable      = 64
	maxDurableBytes = 1 << 20
	heldLimit       = 256 << 10
	committerIdle   = 10 * time.Millisecond
)

// errNotDurable ends a connection one of whose outbox writes failed.
var errNotDurable = errors.New("outbox write failed: publishes not acknowledged")

// committers counts the committers running, for tests.
var committers atomic.Int64

// durableWrites is a connection's queued outbox writes and the bytes held
// behind them. Guarded by the batch's mu; cond (on that mu) is broadcast
// whenever pending, held or failed change.
type durableWrites struct {
	queue   []durableWrite // not yet handed to the store, in order
	spare   []durableWrite // the committer's last batch, emptied: the next queue
	pending int            // queued or being written
	bytes   int            // their payload bytes
	running bool           // the committer runs
	// idle: the committer waits for a write (or committerIdle); kick
	// wakes it.
	idle bool
	kick chan struct{}
	// held is what was written to the connection since the oldest
	// unresolved hold; cuts holds, for each unresolved hold in order,
	// len(held) when it was marked (cuts[0] is 0).
	held   []byte
	cuts   []int
	failed bool
	cond   sync.Cond
}

// durableWrite is a queued outbox write; hold: what was written after it
// waits for it (a QoS 0 publish's write holds nothing back).
type durableWrite struct {
	w    *outboxWrite
	hold bool
	size int
}

// payloadBytes is what an outbox write's messages weigh.
func payloadBytes(w *outboxWrite) int {
	n := 0
	for _, it := range w.items {
		n += len(it.Message.Payload) + len(it.Message.Topic)
	}
	return n
}

func (c *deviceConn) durableCond() *sync.Cond {
	d := &c.batch.d
	if d.cond.L == nil {
		d.cond.L = &c.batch.mu
	}
	return &d.cond
}

// commitBehind queues w, made by the connection's committer; with hold,
// what is written to the connection from now on waits until w is
// durable. It waits while maxDurable writes are queued; it fails once
// the connection is closing or a write failed. Only the reader calls it.
func (c *deviceConn) commitBehind(w *outboxWrite, hold bool) error {
	b := &c.batch
	b.mu.Lock()
	defer b.mu.Unlock()
	d := &b.d
	cond := c.durableCond()
	size := payloadBytes(w)
	for (d.pending >= maxDurable || d.pending > 0 && d.bytes+size > maxDurableBytes) && !d.failed && !c.closing.Load() {
		c.waitLocked(cond)
	}
	switch {
	case d.failed:
		return errNotDurable
	case c.closing.Load():
		return net.ErrClosed
	}
	d.queue = append(d.queue, durableWrite{w: w, hold: hold, size: size})
	d.pending++
	d.bytes += size
	if hold {
		d.cuts = append(d.cuts, len(d.held))
	}
	switch {
	case !d.running:
		d.running = true
		committers.Add(1)
		go c.commit()
	case d.idle:
		c.kickLocked()
	}
	return nil
}

// kickLocked wakes the committer waiting idle; b.mu is held.
func (c *deviceConn) kickLocked() {
	d := &c.batch.d
	d.idle = false
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// waitLocked is the reader waiting on cond, b.mu held: it is about to
// block, so what is batched goes first, and what is written meanwhile
// goes out at once (see flushBatch).
func (c *deviceConn) waitLocked(cond *sync.Cond) {
	c.batch.burst.Store(false)
	if !c.closing.Load() { // closing, what is batched is closeServed's
		c.flushLocked()
	}
	cond.Wait()
}

// settle waits until the connection's queued outbox writes are made; once
// the connection is closing, until its committer has ended too. It
// returns errNotDurable if one failed.
func (c *deviceConn) settle() error {
	b := &c.batch
	b.mu.Lock()
	defer b.mu.Unlock()
	cond := c.durableCond()
	for b.d.pending > 0 || b.d.running && c.closing.Load() {
		if b.d.idle {
			c.kickLocked() // to end
		}
		c.waitLocked(cond)
	}
	if b.d.failed {
		return errNotDurable
	}
	return nil
}

// holdLocked appends p to what is held behind the holds; b.mu is held and
// a hold is unresolved. Past heldLimit it waits for them to go.
func (c *deviceConn) holdLocked(p []byte) (int, error) {
	b := &c.batch
	d := &b.d
	cond := c.durableCond()
	for len(d.cuts) > 0 && len(d.held) > 0 && len(d.held)+len(p) > heldLimit && b.err == nil && !c.closing.Load() {
		c.flushLocked() // what is batched is older than the holds: it goes
		cond.Wait()
	}
	switch {
	case b.err != nil:
		return 0, b.err
	case c.closing.Load():
		return 0, net.ErrClosed
	case len(d.cuts) == 0: // released meanwhile
		return c.writeLocked(p)
	}
	d.held = append(d.held, p...)
	return len(p), nil
}

// commit is the connection's committer: it makes the queued writes, all
// that are queued at once, until none is for committerIdle, or the
// connection is closing and none is.
func (c *deviceConn) commit() {
	defer committers.Add(-1)
	b := &c.batch
	d := &b.d
	cond := c.durableCond()
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	waited := false
	for {
		b.mu.Lock()
		d.idle = false
		if len(d.queue) == 0 && !d.failed && !waited && !c.closing.Load() {
			// Wait for the next write a while, unlocked.
			if d.kick == nil {
				d.kick = make(chan struct{}, 1)
			}
			d.idle = true
			b.mu.Unlock()
			if timer == nil {
				timer = time.NewTimer(committerIdle)
			} else {
				timer.Reset(committerIdle)
			}
			select {
			case <-d.kick:
			case <-timer.C:
				waited = true
			}
			continue
		}
		waited = false
		if len(d.queue) == 0 || d.failed {
			d.pending -= len(d.queue)
			for _, e := range d.queue {
				d.bytes -= e.size
			}
			d.queue, d.running = nil, false
			cond.Broadcast()
			b.mu.Unlock()
			return
		}
		batch := d.queue
		d.queue, d.spare = d.spare, nil
		b.mu.Unlock()

		o := batch[0].w.o
		items := batch[0].w.items
		if len(batch) > 1 {
			items = nil
			for _, e := range batch {
				items = append(items, e.w.items...)
			}
		}
		holds := 0
		for _, e := range batch {
			if e.hold {
				holds++
			}
		}
		ctx, cancel := storeCtx()
		_, err := o.st.Append(ctx, o.tenant, items, store.Receipt{})
		cancel()
		if err == nil {
			for _, e := range batch {
				e.w.written()
			}
			// The node may have lost its lease while the write waited
			// (the hooks checked before queueing it): nothing is
			// acknowledged then, as ackStillServing refuses; the writes
			// stand (a QoS 1 message may be delivered twice).
			if holds > 0 && o.serving != nil && !o.serving() {
				err = errLeaseLapsed
				o.refusedForLease()
			}
		}

		b.mu.Lock()
		d.pending -= len(batch)
		for _, e := range batch {
			d.bytes -= e.size
		}
		clear(batch)
		d.spare = batch[:0]
		failed := false
		switch {
		case err == nil:
			c.releaseLocked(holds)
		case holds > 0:
			// Nothing held goes out, and nothing written from now on.
			// (A write that stands but cannot be acknowledged, the lease
			// lapsed, ends the same way.)
			failed = true
			d.failed = true
			d.held, d.cuts = nil, nil
			if b.err == nil {
				b.err = errNotDurable
				b.failed.Store(true)
			}
			c.endedFor(0x80) // unspecified error
		}
		cond.Broadcast()
		b.mu.Unlock()
		switch {
		case failed:
			o.log.Error("append to outbox: connection closed, its publishes not acknowledged",
				"device", c.id.device, "publishes", holds, "err", err)
			c.Close()
		case err != nil:
			o.log.Error("append to outbox", "messages", len(batch), "err", err)
		}
	}
}

// releaseLocked lets go what the oldest n holds held back, up to the next
// hold; b.mu is held. Once the connection is closing it is kept with the
// batch, for closeServed to send.
func (c *deviceConn) releaseLocked(n int) {
	d := &c.batch.d
	if n == 0 || len(d.cuts) == 0 {
		return
	}
	var out []byte
	if n >= len(d.cuts) {
		out, d.held, d.cuts = d.held, nil, nil
	} else {
		cut := d.cuts[n]
		out = append([]byte(nil), d.held[:cut]...)
		d.held = append(d.held[:0], d.held[cut:]...)
		d.cuts = append(d.cuts[:0], d.cuts[n:]...)
		for i := range d.cuts {
			d.cuts[i] -= cut
		}
	}
	if len(out) == 0 || c.batch.err != nil {
		return
	}
	if c.closing.Load() {
		b := &c.batch
		if b.out == nil {
			b.out = batchBuffers.Get().(*[]byte)
			b.held.Store(true)
		}
		*b.out = append(*b.out, out...)
		return
	}
	c.writeLocked(out) // a failure is kept in b.err
}
