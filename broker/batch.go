package broker

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Write batching: under load, the packets a connection is sent one after
// another leave in one write syscall instead of one each; at low load
// nothing waits for company, and there is no timer.
//
// mochi coalesces only the messages its write loop has queued (its
// outbuf). Everything its read loop writes in answer to a packet (PUBACK,
// PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK, PINGRESP) goes out at once: a
// publisher pipelining QoS 1 messages costs the server one write per
// PUBACK. A deviceConn knows more than mochi does: it hands mochi the
// stream frame by frame from its own buffered reader, so it sees whether
// the next frame is already there in whole.
//
// The reader is in a burst while it hands out a frame that is whole in
// its buffer: reading it cannot block. Writes made meanwhile (the answer
// to that frame) are appended to the connection's batch. At the start of
// each frame the reader looks ahead: if the next frame is whole in the
// buffer too, the burst goes on and the batch keeps growing; if not, the
// reader is about to block on the socket, and the batch is written first
// (flushBatch), so a client that waits for its PUBACK before sending more
// always gets it, also when part of its next packet has arrived. The
// batch is also written before the reader sleeps for bandwidth_in or a
// rate penalty, as soon as it reaches batchLimit bytes, and when a write
// or a frame start finds it older than batchHold.
//
// Writes from other goroutines (mochi's write loop delivering messages,
// another connection's reader publishing to this one) cannot be told from
// the reader's own: while the reader is in a burst they are appended too,
// and leave with the burst. That is what a batch is for: a subscriber
// acking a flood of QoS 1 messages gets its next messages in the writes
// that carry nothing else now. What bounds their wait is the reader's own
// progress: it reaches a frame start after each packet's handling, and
// writes the batch there once it is batchHold old or the burst ends (at
// most a read buffer's worth of frames). The one wait not bounded so is a
// packet whose handling blocks (a hook that waits on a store): the batch
// waits for it, as the reader's own answer to the packet after it would
// have. A timer could cut that wait, at the price of a goroutine or a
// timer per busy connection, which is what the design avoids. Outside a
// burst every write goes through at once, taking what is batched with it.
//
// Once the server has decided to end the connection (a DISCONNECT is
// encoded, see protocolHook.encode), nothing is batched: the
// DISCONNECT leaves at once, behind what was batched. What is still
// batched when the connection is closed from elsewhere is written by
// closeServed, ahead of its farewell, in the lingering close.
//
// A write error is kept: every later write fails with it, and the reader
// ends the connection with it at its next frame start, as a failed PUBACK
// did through mochi. (A stream that lost part of a write cannot go on.)
const (
	// batchLimit is the size at which a batch is written whatever the
	// burst: a few TCP segments, far below a socket's send buffer.
	batchLimit = 16 << 10
	// batchHold is the longest the first bytes of a batch wait for a
	// write or a frame start to find them.
	batchHold = time.Millisecond
)

// batchBuffers holds batch buffers between bursts: a connection takes one
// for its first batched bytes and returns it once they are written, so an
// idle connection holds none.
var batchBuffers = sync.Pool{New: func() any { b := make([]byte, 0, batchLimit); return &b }}

// writeBatching turns batching off when false, for the benchmark that
// measures it (SetWriteBatching in the tests).
var writeBatching atomic.Bool

func init() { writeBatching.Store(true) }

// writeBatch is a connection's batch. mu is held across each socket
// write, so that writes keep their order, and guards out, since and err.
// burst, held and failed are read by the reader without mu: a reader
// with nothing batched never waits for a writer (one sleeping out
// bandwidth_out, or blocked on a client that does not read).
//
// The reader ends a burst by storing burst false and then loading held; a
// writer appending stores held true and then loads burst. Go's atomics
// are sequentially consistent, so at least one of them sees the other's
// store: the reader writes the batch, or the writer does, and nothing is
// left behind a reader that blocks.
type writeBatch struct {
	mu     sync.Mutex
	out    *[]byte   // nil when empty
	since  time.Time // when out's first bytes were appended
	err    error     // the first write error; later writes fail with it
	burst  atomic.Bool
	held   atomic.Bool // out != nil
	failed atomic.Bool // err != nil
	// writes counts socket writes, for tests and measurements.
	writes atomic.Int64
	// d holds the connection's outbox writes and what waits for them
	// (see durable.go).
	d durableWrites
}

// write writes p, or appends it to the batch while the reader is in a
// burst, or holds it while an outbox write is waited for (see durable.go).
func (c *deviceConn) write(p []byte) (int, error) {
	b := &c.batch
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return 0, b.err
	}
	if c.closing.Load() {
		return 0, net.ErrClosed
	}
	if len(b.d.cuts) > 0 {
		return c.holdLocked(p)
	}
	return c.writeLocked(p)
}

// writeLocked is write past the holds; b.mu is held.
func (c *deviceConn) writeLocked(p []byte) (int, error) {
	b := &c.batch
	if b.burst.Load() && c.why.Load() == 0 && len(p) < batchLimit {
		if b.out == nil {
			b.out = batchBuffers.Get().(*[]byte)
			b.since = time.Now()
			b.held.Store(true)
		}
		*b.out = append(*b.out, p...)
		// The burst may have ended since it was loaded above, with the
		// reader seeing nothing held (see writeBatch).
		if !b.burst.Load() || len(*b.out) >= batchLimit || time.Since(b.since) >= batchHold {
			if err := c.flushLocked(); err != nil {
				return 0, err
			}
		}
		return len(p), nil
	}
	if b.out != nil {
		if len(*b.out)+len(p) <= cap(*b.out) {
			*b.out = append(*b.out, p...)
			if err := c.flushLocked(); err != nil {
				return 0, err
			}
			return len(p), nil
		}
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	if _, err := c.send(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// flushLocked writes the batch and returns its buffer; b.mu is held.
// Once the connection is closing the batch is kept, for closeServed to
// send: it may hold what the committer let go (see releaseLocked), the
// PUBACKs of a connection taken over and its DISCONNECT among them.
func (c *deviceConn) flushLocked() error {
	b := &c.batch
	if b.out == nil {
		return b.err
	}
	if c.closing.Load() {
		return net.ErrClosed
	}
	out := b.out
	b.out = nil
	b.held.Store(false)
	_, err := c.send(*out)
	*out = (*out)[:0]
	if cap(*out) <= 2*batchLimit {
		batchBuffers.Put(out)
	}
	return err
}

// send writes p to the socket within the bandwidth_out quota and the
// write timeout; b.mu is held. A failure is kept in b.err.
func (c *deviceConn) send(p []byte) (int, error) {
	b := &c.batch
	if c.closing.Load() {
		return 0, net.ErrClosed
	}
	now := c.throttleWrite(time.Now(), len(p))
	if c.writeTimeout > 0 {
		if d := now.Add(c.writeTimeout); d.Sub(c.writeDeadline) > c.writeTimeout/4 {
			c.writeDeadline = d
			c.Conn.SetWriteDeadline(d)
			// A Close in between has set a deadline in the past, which
			// this one may have overwritten.
			if c.closing.Load() {
				return 0, net.ErrClosed
			}
		}
	}
	b.writes.Add(1)
	n, err := c.Conn.Write(p)
	if err != nil {
		b.err = err
		b.failed.Store(true)
		// The stream is lost (a write that timed out may have sent part
		// of a packet): the connection ends now, its reader woken, not
		// at its keep-alive, which may be minutes away while nothing can
		// be sent (TestWriteTimeoutKeptByKeepalive).
		c.Close()
		return n, err
	}
	if c.why.Load() != 0 && !c.told.Load() && hasDisconnect(p) {
		c.told.Store(true)
	}
	return n, nil
}

// flushBatch ends the reader's burst and writes the batch: the reader is
// about to block, on the socket or in a sleep. It returns the batch's
// write error, if any.
func (c *deviceConn) flushBatch() error {
	b := &c.batch
	b.burst.Store(false)
	if !b.held.Load() && !b.failed.Load() {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return c.flushLocked()
}

// startFrame is called by the reader before it reads the next frame's
// header. When that frame is whole in the read buffer the burst goes on
// (the batch is written only if it is old); otherwise the batch is
// written before the read that may block.
func (c *deviceConn) startFrame() error {
	if !writeBatching.Load() || !frameBuffered(c.buffered()) {
		return c.flushBatch()
	}
	b := &c.batch
	if !b.held.Load() && !b.failed.Load() {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.out != nil && time.Since(b.since) >= batchHold {
		return c.flushLocked()
	}
	return b.err
}

// inFrame notes whether the frame whose header the reader has just read
// is whole in the read buffer (length is its remaining length): writes
// made while mochi handles it are batched.
func (c *deviceConn) inFrame(length int) {
	c.batch.burst.Store(writeBatching.Load() && len(c.buffered()) >= length)
}

// unsent takes what is batched and not yet written, for closeServed; it
// notes a DISCONNECT among it as told.
func (c *deviceConn) unsent() []byte {
	b := &c.batch
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.out == nil {
		return nil
	}
	out := append([]byte(nil), *b.out...)
	*b.out = (*b.out)[:0]
	batchBuffers.Put(b.out)
	b.out = nil
	b.held.Store(false)
	if c.why.Load() != 0 && hasDisconnect(out) {
		c.told.Store(true)
	}
	return out
}

// buffered is the input read from the socket that the reader has not
// handed out yet.
func (c *deviceConn) buffered() []byte {
	if c.in.buf == nil {
		return nil
	}
	return (*c.in.buf)[c.in.r:c.in.w]
}

// frameBuffered reports whether in, input read ahead, starts with a whole
// frame.
func frameBuffered(in []byte) bool {
	if len(in) < 2 {
		return false
	}
	length, mult := 0, 1
	for i := 1; i < min(len(in), 5); i++ {
		length += int(in[i]&0x7f) * mult
		if in[i]&0x80 == 0 {
			return len(in) >= i+1+length
		}
		mult *= 128
	}
	return false
}
