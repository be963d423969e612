package broker

import (
	"bufio"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// identity is who the ingress authenticated a connection as.
type identity struct {
	tenant   string
	device   string
	clientID string // the bound client id; "" lets mochi assign one
	assign   bool   // the client sent an empty id and is given clientID
	secret   string // hash of the secret it presented, to notice rotation
	version  byte
	// key is the fingerprint of the public key whose token the device
	// presented instead of its secret, and expires when that token does;
	// both are empty for a secret.
	key     string
	expires time.Time
	// leaf and ca are the fingerprints of the client certificate the
	// device was admitted with and of the tenant CA it chains to ("" for
	// a certificate pinned to the device); both empty otherwise.
	leaf, ca string
}

// deviceConn is the connection a tenant's broker reads and writes. It
// replays the CONNECT the ingress already read, then passes the stream
// through while tracking packet boundaries, so that it can check the few
// packets mochi cannot be trusted to decode; and it bounds every write, so
// a client that stops reading cannot hold a publisher hostage.
type deviceConn struct {
	net.Conn
	id identity

	// in is the read side, holding a buffer only while input waits in it
	// (see inbuf); hdr holds the fixed header pending hands out.
	in        inbuf
	hdr       [5]byte
	pending   []byte // bytes to hand out before reading on: the CONNECT, then each frame header
	remaining int    // body bytes of the current frame still to pass through
	// outboxWrite is the outbox write of the publish the hooks are
	// handling, which the store hook makes with the publish's copies
	// (see outbox.append); only the reader, which runs the hooks, uses it.
	outboxWrite  *outboxWrite
	writeTimeout time.Duration
	// writeDeadline is the deadline last set for writes. It is moved on
	// only once a quarter of the timeout has passed, so that a busy
	// connection does not reset a timer with every packet: each write
	// has at least three quarters of the timeout.
	writeDeadline time.Time

	// inst is the tenant's broker, whose quotas apply; fixedMax is the
	// packet size limit when there is none (tests of the framing alone).
	inst     *instance
	fixedMax int
	limits   connLimits
	// expiry ends a connection admitted with a token when the token
	// expires.
	expiry atomic.Pointer[time.Timer]
	// withdrawWill is set when the connection is ended as for a server
	// shutdown while its broker stays up (the node that forwarded it is
	// draining): its Will goes nowhere, as at the broker's own shutdown.
	withdrawWill atomic.Bool
	// lastRead is the last read check's decision (see mayReceive).
	lastRead atomic.Pointer[readDecision]

	// acked is set once the CONNACK is written; until then held keeps
	// whatever mochi writes before it (see Write).
	acked  atomic.Bool
	heldMu sync.Mutex
	held   []byte

	// closing is set by Close: from then on reads and writes fail, but
	// the socket stays open for the lingering close (see linger.go).
	// peerDone is set when the client's side ended first (EOF, a reset,
	// or silence past its keep-alive): then there is nothing to linger
	// for.
	closing  atomic.Bool
	peerDone atomic.Bool
	// why is the reason code (with 0x100 set) the server ended the
	// connection for: the first DISCONNECT mochi encoded for it, or the
	// error mochi ended it with when it sent none (see
	// protocolHook.OnDisconnect). told is set once a DISCONNECT has gone
	// out; closeServed sends one with why if none did.
	why  atomic.Uint32
	told atomic.Bool
	// byClient is the reason code (with 0x100 set) of the DISCONNECT the
	// client sent, if it sent one: the disconnected event's reason (see
	// disconnectReason). Set and read on the connection's reader.
	byClient uint16

	// resend holds back new deliveries while mochi resends what the
	// session the connection resumed held (see resend.go); nil for most.
	resend atomic.Pointer[resendGate]

	// batch holds writes while the reader is in a burst (see batch.go).
	batch writeBatch

	// unwritten counts the packets the encoders turned into markers not
	// to be written (see unwrite) that Write has not left out yet.
	unwritten atomic.Int64
	// flow keeps the client's Receive Maximum, if it has one to keep
	// (see flow.go); set as the client connects.
	flow *flowControl
	// retained paces the retained messages a SUBSCRIBE queues (see
	// retainpace.go).
	retained retainedPace
	// reserved holds the packet ids reserved among the client's inflight
	// messages while this connection was its (see noteReservation).
	reservedMu sync.Mutex
	reserved   map[uint16]struct{}
}

var errMalformedSubscribe = packets.Code{Code: packets.ErrMalformedPacket.Code, Reason: "malformed packet: subscribe"}

// newDeviceConn makes the connection a tenant's broker serves; r is the
// reader its CONNECT was read with, whose read-ahead it takes over.
func newDeviceConn(c net.Conn, r *bufio.Reader, connect []byte, id identity, inst *instance, writeTimeout time.Duration) *deviceConn {
	return &deviceConn{Conn: c, id: id, in: newInbuf(c, r), pending: connect, inst: inst, writeTimeout: writeTimeout}
}

// Read hands out the replayed CONNECT, then the stream frame by frame.
func (c *deviceConn) Read(p []byte) (int, error) {
	if c.closing.Load() {
		return 0, net.ErrClosed
	}
	n, err := c.read(p)
	if err != nil && !c.closing.Load() && peerEnded(err) {
		c.peerDone.Store(true)
	}
	return n, err
}

func (c *deviceConn) read(p []byte) (int, error) {
	if len(c.pending) == 0 && c.remaining == 0 {
		if err := c.nextFrame(); err != nil {
			return 0, err
		}
	}
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	if len(p) > c.remaining {
		p = p[:c.remaining]
	}
	n, err := c.in.Read(p)
	c.remaining -= n
	c.throttleRead(n)
	return n, err
}

// nextFrame reads the next packet's fixed header. A v5 SUBSCRIBE is read
// whole and checked: mochi v2.7.9 panics on a truncated one (upstream #501),
// so a malformed one ends the connection here, through mochi's ordinary
// read-error path (the Will is sent, the session is kept).
func (c *deviceConn) nextFrame() error {
	if err := c.startFrame(); err != nil {
		return flushError{err}
	}
	header, length, err := c.readHeader()
	if err != nil {
		return err
	}
	b0 := header[0]
	if limit := c.maxPacket(); limit > 0 && length+len(header) > limit {
		if c.inst != nil {
			c.inst.tooLarge(c)
		}
		return packets.ErrPacketTooLarge
	}
	c.throttleRead(len(header))
	c.inFrame(length)
	if c.id.version == 5 && b0>>4 == packets.Subscribe {
		frame := make([]byte, len(header)+length)
		copy(frame, header)
		if _, err := io.ReadFull(&c.in, frame[len(header):]); err != nil {
			return err
		}
		if !validSubscribeV5(b0, frame[len(header):]) {
			return errMalformedSubscribe
		}
		c.pending = frame
		return nil
	}
	c.pending = header
	c.remaining = length
	return nil
}

// readHeader reads a fixed header into hdr: its first byte and its
// remaining length (a variable byte integer of at most four bytes).
func (c *deviceConn) readHeader() (header []byte, length int, err error) {
	mult := 1
	for n := 0; ; n++ {
		if n == len(c.hdr) {
			return nil, 0, errMalformedFrame
		}
		b, err := c.in.ReadByte()
		if err != nil {
			return nil, 0, err
		}
		c.hdr[n] = b
		if n == 0 {
			continue
		}
		length += int(b&0x7f) * mult
		if b&0x80 == 0 {
			return c.hdr[:n+1], length, nil
		}
		mult *= 128
	}
}

// flushError is a failed write of the batch, ending the connection from
// its reader. It does not unwrap: the write failed, not the client's side
// of the connection (see peerEnded).
type flushError struct{ err error }

func (e flushError) Error() string { return "write: " + e.err.Error() }

// validSubscribeV5 decodes a v5 SUBSCRIBE body the way mochi will, and
// reports whether it decodes without panicking. The decoder's own errors are
// left for mochi to answer.
func validSubscribeV5(b0 byte, body []byte) (ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	var pk packets.Packet
	if err := pk.FixedHeader.Decode(b0); err != nil {
		return true // mochi rejects the header itself
	}
	pk.ProtocolVersion = 5
	pk.SubscribeDecode(body)
	return true
}

// Write waits for the connection's bandwidth_out, then bounds the write by
// the write timeout; while the reader is in a burst, it appends to the
// connection's batch instead (see batch.go), and while an outbox write
// is waited for, it is held (see durable.go).
//
// Nothing goes out before the CONNACK [MQTT-3.2.0-1]. mochi adds a
// resuming client to the tenant's clients before it writes the CONNACK, so
// a message routed to it in between would be written first (and a strict
// client would drop the connection). Until the CONNACK passes, what is
// written is held, and then written after it, in order.
//
// A PUBACK that cannot be written is dropped as if it had been: mochi
// keeps the acknowledgement of an inbound QoS 1 publish whose write
// failed in the session's inflight messages, and sends it to the
// session's next connection, although the publish it acknowledges may
// not have been stored (its outbox write failed, or is still being made,
// see durable.go). Dropped, it is forgotten, and the client, which never
// got it, sends the publish again.
//
// The markers of packets not to be written (see unwrite) are left out.
func (c *deviceConn) Write(p []byte) (int, error) {
	out := p
	if c.unwritten.Load() > 0 {
		if out = c.withoutMarkers(p); len(out) == 0 {
			return len(p), nil
		}
	}
	n, err := c.writeConn(out)
	if err != nil && onlyPubacks(out) {
		return len(p), nil
	}
	if err == nil {
		n = len(p)
	}
	return n, err
}

// unwrite keeps a packet mochi is about to write from being written, as
// an encoder decides (a delivery withheld, see persistence.unsent; one
// held back for the client's Receive Maximum, see flowControl): it is
// encoded as a marker, a PINGREQ (which a server never sends), that Write
// leaves out. mochi v2.7.9 has no way for OnPacketEncode to drop a packet.
// One made too large to write (the way this was done before) fails before
// mochi's write, where mochi also writes what it buffered for the client
// while more writes were queued: when the last queued was dropped so, the
// messages buffered before it stayed unwritten until the client's next
// write (TestDropNewestBurstDelivers: none of the 3 messages kept of 200
// arrived). The upstream fix is mochi's: OnPacketEncode able to drop a
// packet, and the buffer written all the same once the queue is empty.
func unwrite(cl *mqtt.Client, pk *packets.Packet) {
	*pk = packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}, ProtocolVersion: pk.ProtocolVersion, Mods: pk.Mods}
	if dc, ok := cl.Net.Conn.(*deviceConn); ok {
		dc.unwritten.Add(1)
	}
}

// marker is a packet unwrite made, as mochi encodes it.
var marker = [2]byte{packets.Pingreq << 4, 0}

// withoutMarkers returns p, whole packets as mochi writes them, without
// the markers of packets not to be written; p itself when it holds none.
func (c *deviceConn) withoutMarkers(p []byte) []byte {
	var out []byte
	kept, found := 0, false
	for i := 0; i < len(p); {
		length, n := 0, 1
		for mult := 1; ; mult *= 128 {
			if i+n >= len(p) || n > 4 {
				// Not framed as packets: passed on as it is.
				if !found {
					return p
				}
				return append(out, p[kept:]...)
			}
			length += int(p[i+n]&0x7f) * mult
			n++
			if p[i+n-1]&0x80 == 0 {
				break
			}
		}
		end := i + n + length
		if end-i == len(marker) && p[i] == marker[0] {
			if !found {
				out = make([]byte, 0, len(p)-len(marker))
				found = true
			}
			out = append(out, p[kept:i]...)
			kept = end
			c.unwritten.Add(-1)
		}
		i = end
	}
	if !found {
		return p
	}
	return append(out, p[min(kept, len(p)):]...)
}

func (c *deviceConn) writeConn(p []byte) (int, error) {
	if c.closing.Load() {
		return 0, net.ErrClosed
	}
	if !c.acked.Load() {
		c.heldMu.Lock()
		if !c.acked.Load() {
			// mochi's first write is normally the CONNACK alone, with
			// nothing held before it: then it goes out as it came,
			// without a copy.
			var out []byte
			ok := false
			if len(c.held) == 0 {
				out, ok = connackFirst(p)
			}
			if !ok {
				c.held = append(c.held, p...)
				out, ok = connackFirst(c.held)
			}
			if !ok {
				c.heldMu.Unlock()
				return len(p), nil
			}
			c.held = nil
			c.acked.Store(true)
			c.heldMu.Unlock()
			if _, err := c.write(out); err != nil {
				return 0, err
			}
			return len(p), nil
		}
		c.heldMu.Unlock()
	}
	return c.write(p)
}

// connackFirst finds the CONNACK among the whole packets in b and returns
// them with it first; false until b holds one. Bytes that do not frame as
// packets are passed on as they are. When the CONNACK is first already, b
// itself is returned.
func connackFirst(b []byte) ([]byte, bool) {
	for i := 0; i < len(b); {
		length, n := 0, 1
		for mult := 1; ; mult *= 128 {
			if i+n >= len(b) || n > 4 {
				return b, n > 4
			}
			length += int(b[i+n]&0x7f) * mult
			n++
			if b[i+n-1]&0x80 == 0 {
				break
			}
		}
		end := i + n + length
		if end > len(b) {
			return b, false
		}
		if b[i]>>4 == packets.Connack {
			if i == 0 {
				return b, true
			}
			out := make([]byte, 0, len(b))
			out = append(out, b[i:end]...)
			out = append(out, b[:i]...)
			return append(out, b[end:]...), true
		}
		i = end
	}
	return b, false
}

// hasDisconnect reports whether b, whole packets as mochi writes them,
// holds a DISCONNECT. It is only asked once mochi has encoded one.
func hasDisconnect(b []byte) bool {
	found := false
	walkPackets(b, func(typ byte) bool {
		found = typ == packets.Disconnect
		return !found
	})
	return found
}

// onlyPubacks reports whether b, whole packets as mochi writes them, is
// PUBACKs and nothing else.
func onlyPubacks(b []byte) bool {
	all := len(b) > 0
	whole := walkPackets(b, func(typ byte) bool {
		all = typ == packets.Puback
		return all
	})
	return whole && all
}

// walkPackets hands the type of each packet in b, whole packets as mochi
// writes them, to each, until it returns false. It reports false if b
// ends inside a packet's fixed header.
func walkPackets(b []byte, each func(typ byte) bool) bool {
	for i := 0; i < len(b); {
		if !each(b[i] >> 4) {
			return true
		}
		length, n := 0, 1
		for mult := 1; ; mult *= 128 {
			if i+n >= len(b) || n > 4 {
				return false
			}
			length += int(b[i+n]&0x7f) * mult
			n++
			if b[i+n-1]&0x80 == 0 {
				break
			}
		}
		i += n + length
	}
	return true
}

// endedFor notes the reason code the server ended the connection for,
// unless one is noted already.
func (c *deviceConn) endedFor(code byte) { c.why.CompareAndSwap(0, 0x100|uint32(code)) }

// farewell is the DISCONNECT to send as the connection closes: one with
// the reason the server ended it for, when a v5 client was told none.
// Only the reason code: it fits any Maximum Packet Size the client set.
func (c *deviceConn) farewell() []byte {
	why := c.why.Load()
	if why == 0 || c.told.Load() || c.id.version != 5 {
		return nil
	}
	return []byte{packets.Disconnect << 4, 2, byte(why), 0}
}

// Close ends the connection for mochi and the hub without closing the
// socket: reads and writes fail from now on, and one blocked in either is
// woken. The socket is closed by the connection's own goroutine once mochi
// is done with it, with a lingering close (see closeServed), so that what
// was written last (a DISCONNECT with its reason code) reaches a client
// that is still sending. mochi closes the connection right after writing
// a DISCONNECT, from whichever goroutine found the reason; none of them
// may wait for the linger.
func (c *deviceConn) Close() error {
	if c.closing.Swap(true) {
		return nil
	}
	return c.Conn.SetDeadline(time.Now())
}

// SetDeadline, SetReadDeadline and SetWriteDeadline do nothing once the
// connection is closing: mochi moves the deadline on before each packet it
// reads, which would undo the one Close set to wake the reader.
//
// SetDeadline is that deadline of mochi's, 1.5 × the keep-alive from each
// packet it reads, and sets the read deadline only. As net.Conn's, it also
// moved the write deadline, past the one send keeps for the write timeout
// (which send does not set again within a quarter of the timeout): a
// write blocked on a client that reads nothing waited up to 1.5 × its
// keep-alive (45 s) instead of 5 s, holding whatever waited for that
// client's writes, a connection taking its client id over among them
// (TestRetainedPaceStalledClient).
func (c *deviceConn) SetDeadline(t time.Time) error {
	if c.closing.Load() {
		return nil
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *deviceConn) SetReadDeadline(t time.Time) error {
	if c.closing.Load() {
		return nil
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *deviceConn) SetWriteDeadline(t time.Time) error {
	if c.closing.Load() {
		return nil
	}
	return c.Conn.SetWriteDeadline(t)
}
