package broker_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/bench/mqttc"
	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/broker/store"
	"github.com/roosthub/roost/broker/store/memory"
)

// gatedStore is a memory store whose Appends of outbox copies of one
// tenant's messages on one topic wait while the test keeps the gate shut,
// or fail while failing is set. Other Appends go through.
type gatedStore struct {
	*memory.Store
	tenant, topic string

	mu      sync.Mutex
	gate    chan struct{} // closed: open
	failing atomic.Bool
	// waiting counts the Appends waiting at the gate; appends counts the
	// gated kind of Appends made, and messages their outbox copies.
	waiting, appends, messages atomic.Int64
}

func newGatedStore(tenant, topic string) *gatedStore {
	s := &gatedStore{Store: memory.New(), tenant: tenant, topic: topic, gate: make(chan struct{})}
	close(s.gate)
	return s
}

func (s *gatedStore) gated(tenant string, items []store.Item) bool {
	if tenant != s.tenant {
		return false
	}
	for _, it := range items {
		if strings.HasPrefix(it.ClientID, "\x00out:") && it.Message.Topic == s.topic {
			return true
		}
	}
	return false
}

func (s *gatedStore) Append(ctx context.Context, tenant string, items []store.Item, r store.Receipt) ([]uint64, error) {
	if !s.gated(tenant, items) {
		return s.Store.Append(ctx, tenant, items, r)
	}
	if s.failing.Load() {
		return nil, errors.New("disk failed")
	}
	s.mu.Lock()
	gate := s.gate
	s.mu.Unlock()
	s.waiting.Add(1)
	select {
	case <-gate:
	case <-ctx.Done():
		s.waiting.Add(-1)
		return nil, ctx.Err()
	}
	s.waiting.Add(-1)
	seqs, err := s.Store.Append(ctx, tenant, items, r)
	if err == nil {
		s.appends.Add(1)
		for _, it := range items {
			if strings.HasPrefix(it.ClientID, "\x00out:") {
				s.messages.Add(1)
			}
		}
	}
	return seqs, err
}

// shut makes the gated Appends wait from now on; open lets them through.
func (s *gatedStore) shut() {
	s.mu.Lock()
	s.gate = make(chan struct{})
	s.mu.Unlock()
}

func (s *gatedStore) open() {
	s.mu.Lock()
	select {
	case <-s.gate:
	default:
		close(s.gate)
	}
	s.mu.Unlock()
}

// durableStack is an outbox stack on a gated store, with a tenant acme
// whose rule sends sensors/# to a receiver; the gate is on
// sensors/gated.
func durableStack(t *testing.T) (*outboxStack, *gatedStore, *webhookReceiver) {
	t.Helper()
	st := newGatedStore("acme", "sensors/gated")
	s := newOutboxStack(t, time.Minute, func(c *broker.Config) { c.Sessions = st })
	t.Cleanup(st.open) // first: nothing waits at the gate as the hub closes
	s.tenant("acme")
	s.liftPublishLimits("acme", nil)
	rc := newWebhookReceiver(t)
	s.destination("acme", "hook", rc, "sensors/#", "")
	return s, st, rc
}

// waitFor returns the next packet, which must be of type typ, within
// 20s.
func (r *raw) waitFor(typ byte) packets.Packet {
	r.t.Helper()
	select {
	case pk, ok := <-r.in:
		if !ok {
			r.t.Fatalf("connection closed while waiting for packet type %d", typ)
		}
		if pk.FixedHeader.Type != typ {
			r.t.Fatalf("got packet type %d (id %d, reason %#x), want %d", pk.FixedHeader.Type, pk.PacketID, pk.ReasonCode, typ)
		}
		return pk
	case <-time.After(20 * time.Second):
		r.t.Fatalf("no packet of type %d within 20s", typ)
	}
	return packets.Packet{}
}

// numbered is n QoS qos PUBLISHes to topic with packet ids and JSON
// payloads {"n":id} from first on, as one buffer.
func numbered(qos byte, first uint16, n int, topic string) []byte {
	var b []byte
	for i := range n {
		id := first + uint16(i)
		b = append(b, rawPublish(qos, id, topic, nil, fmt.Sprintf(`{"n":%d}`, id))...)
	}
	return b
}

// expectInOrder checks that the receiver has the messages {"n":first} to
// {"n":last} on topic, in that order, once each, within 20s.
func expectInOrder(t *testing.T, rc *webhookReceiver, topic string, first, last int) {
	t.Helper()
	want := last - first + 1
	var got []string
	eventually(t, 20*time.Second, fmt.Sprintf("the receiver has %d messages on %s", want, topic), func() bool {
		got = got[:0]
		for _, m := range rc.messages() {
			if m.Topic == topic {
				got = append(got, string(m.Payload))
			}
		}
		return len(got) >= want
	})
	if len(got) != want {
		t.Fatalf("the receiver has %d messages on %s, want %d", len(got), topic, want)
	}
	for i, p := range got {
		if w := fmt.Sprintf(`{"n":%d}`, first+i); p != w {
			t.Fatalf("message %d on %s is %s, want %s: out of order", i, topic, p, w)
		}
	}
}

// subscriber is a raw client subscribed to filter at QoS 0 (nothing to
// acknowledge), and counts what it receives.
func subscriber(t *testing.T, s *outboxStack, device, filter string) *raw {
	t.Helper()
	c, _ := dialRaw(t, s.addr, user("acme", device), s.device("acme", device), device)
	c.subscribe(filter, 0)
	return c
}

// receive reads n PUBLISHes from r within 20s each.
func (r *raw) receive(n int) {
	r.t.Helper()
	for range n {
		r.waitFor(packets.Publish)
	}
}

// TestDurableAckAfterWrite: a publisher pipelining 16 QoS 1 publishes
// matching a rule with a destination gets no PUBACK while the outbox's
// store write waits, although its reader went on (a subscriber got all
// 16); once the write is made, it gets the 16 PUBACKs in order, and the
// 15 publishes that came while the first write waited were written
// together, in one Append. The receiver has them in order.
func TestDurableAckAfterWrite(t *testing.T) {
	s, st, rc := durableStack(t)
	sub := subscriber(t, s, "sub", "sensors/#")
	pub, _ := dialRaw(t, s.addr, user("acme", "pub"), s.device("acme", "pub"), "pub")
	st.shut()
	if _, err := pub.c.Write(numbered(1, 1, 16, "sensors/gated")); err != nil {
		t.Fatal(err)
	}
	sub.receive(16)
	eventually(t, 20*time.Second, "the first write waits at the gate", func() bool { return st.waiting.Load() == 1 })
	pub.none(300*time.Millisecond, "PUBACK before the outbox write was made")
	st.open()
	pub.expectPubacksWithin(1, 16)
	// The committer's first write took the publishes queued when it
	// started (one, or more if it started late); the next one all the
	// others, which were queued before the gate opened.
	if n := st.appends.Load(); n < 1 || n > 2 {
		t.Errorf("16 publishes took %d outbox writes, want 1 or 2 (those queued as the first began, then all that came while it waited)", n)
	}
	expectInOrder(t, rc, "sensors/gated", 1, 16)
}

// expectPubacksWithin is expectPubacks with 20s for each.
func (r *raw) expectPubacksWithin(first uint16, n int) {
	r.t.Helper()
	for i := range n {
		if ack := r.waitFor(packets.Puback); ack.PacketID != first+uint16(i) || ack.ReasonCode >= 0x80 {
			r.t.Fatalf("PUBACK %d (reason %#x), want %d", ack.PacketID, ack.ReasonCode, first+uint16(i))
		}
	}
}

// slowStore is a memory store whose outbox Appends take a little while,
// each its own time, as a disk's syncs do.
type slowStore struct {
	*memory.Store
	n atomic.Int64
}

func (s *slowStore) Append(ctx context.Context, tenant string, items []store.Item, r store.Receipt) ([]uint64, error) {
	if len(items) > 0 && strings.HasPrefix(items[0].ClientID, "\x00out:") {
		time.Sleep(time.Duration(s.n.Add(1)%4) * 500 * time.Microsecond)
	}
	return s.Store.Append(ctx, tenant, items, r)
}

// TestDurableWindowOrder: a publisher keeping 16 QoS 1 publishes in flight
// gets each PUBACK in the order it published, 600 times, while the
// outbox writes take their time; the receiver has the messages in that
// order.
func TestDurableWindowOrder(t *testing.T) {
	s := newOutboxStack(t, time.Minute, func(c *broker.Config) { c.Sessions = &slowStore{Store: memory.New()} })
	s.tenant("acme")
	s.liftPublishLimits("acme", nil)
	rc := newWebhookReceiver(t)
	s.destination("acme", "hook", rc, "sensors/#", "")
	pub, _ := dialRaw(t, s.addr, user("acme", "pub"), s.device("acme", "pub"), "pub")
	const n, window = 600, 16
	if _, err := pub.c.Write(numbered(1, 1, window, "sensors/w")); err != nil {
		t.Fatal(err)
	}
	sent := window
	for want := 1; want <= n; want++ {
		ack := pub.waitFor(packets.Puback)
		if int(ack.PacketID) != want || ack.ReasonCode >= 0x80 {
			t.Fatalf("PUBACK %d (reason %#x), want %d: out of order", ack.PacketID, ack.ReasonCode, want)
		}
		if sent < n {
			sent++
			if _, err := pub.c.Write(numbered(1, uint16(sent), 1, "sensors/w")); err != nil {
				t.Fatal(err)
			}
		}
	}
	expectInOrder(t, rc, "sensors/w", 1, n)
}

// TestDurableWriteFails: when the outbox write of pipelined QoS 1
// publishes fails, the publisher gets no PUBACK for them: it is
// disconnected (0x80), after the PUBACK of the publish before them, whose
// write was made; the failure is logged once. A 3.1.1 publisher's
// publish is not acknowledged either. Both may come back, and once the
// store works their publishes are acknowledged.
func TestDurableWriteFails(t *testing.T) {
	s, st, rc := durableStack(t)
	secret := s.device("acme", "pub")
	pub, _ := dialRaw(t, s.addr, user("acme", "pub"), secret, "pub")
	if _, err := pub.c.Write(numbered(1, 1, 1, "sensors/gated")); err != nil {
		t.Fatal(err)
	}
	pub.expectPubacksWithin(1, 1)
	st.failing.Store(true)
	if _, err := pub.c.Write(numbered(1, 2, 8, "sensors/gated")); err != nil {
		t.Fatal(err)
	}
	disconnect := pub.closedWithoutPuback("after its outbox write failed")
	if disconnect == nil || disconnect.ReasonCode != packets.ErrUnspecifiedError.Code {
		t.Errorf("DISCONNECT %+v before the close, want one with 0x80", disconnect)
	}
	if n := strings.Count(s.logs.String(), "its publishes not acknowledged"); n != 1 {
		t.Errorf("the failure was logged %d times, want once", n)
	}

	v3, err := mqttc.Dial(ctx, s.addr, mqttc.Options{ClientID: "v3", Username: user("acme", "v3"), Password: s.device("acme", "v3"), KeepAlive: 30})
	if err != nil {
		t.Fatal(err)
	}
	defer v3.Close()
	pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := v3.Publish(pctx, "sensors/gated", []byte(`{"n":100}`), 1); err == nil {
		t.Error("a 3.1.1 publish whose outbox write failed was acknowledged")
	} else if pctx.Err() != nil {
		t.Error("a 3.1.1 publisher whose outbox write failed was left waiting, not disconnected")
	}

	st.failing.Store(false)
	again, _ := dialRaw(t, s.addr, user("acme", "pub"), secret, "pub")
	// The session's inflight messages are sent again with the CONNACK:
	// none of them may acknowledge a publish whose write failed.
	again.none(300*time.Millisecond, "a PUBACK, on the session's next connection, for a publish whose outbox write failed")
	if _, err := again.c.Write(numbered(1, 2, 8, "sensors/gated")); err != nil {
		t.Fatal(err)
	}
	again.expectPubacksWithin(2, 8)
	expectInOrder(t, rc, "sensors/gated", 1, 9)
}

// TestDurableFloodBounded: a publisher pipelining far more QoS 1
// publishes than a connection may have outbox writes in flight is read
// only up to that bound while the writes wait (its subscriber gets no
// more), and is read on once they are made: every PUBACK, in order.
func TestDurableFloodBounded(t *testing.T) {
	s, st, rc := durableStack(t)
	sub := subscriber(t, s, "sub", "sensors/#")
	pub, _ := dialRaw(t, s.addr, user("acme", "pub"), s.device("acme", "pub"), "pub")
	bound := broker.MaxDurableWrites
	n := 3 * bound
	st.shut()
	if _, err := pub.c.Write(numbered(1, 1, n, "sensors/gated")); err != nil {
		t.Fatal(err)
	}
	sub.receive(bound)
	sub.none(500*time.Millisecond, fmt.Sprintf("a publish read past %d outbox writes in flight", bound))
	pub.none(100*time.Millisecond, "PUBACK before the outbox write was made")
	st.open()
	pub.expectPubacksWithin(1, n)
	sub.receive(n - bound)
	expectInOrder(t, rc, "sensors/gated", 1, n)
}

// TestDurableOthersDoNotWait: while one publisher's outbox write waits,
// another device of the same tenant, and a device of another tenant, get
// their PUBACKs at once.
func TestDurableOthersDoNotWait(t *testing.T) {
	s, st, rc := durableStack(t)
	s.tenant("other")
	s.liftPublishLimits("other", nil)
	otherRC := newWebhookReceiver(t)
	s.destination("other", "hook", otherRC, "sensors/#", "")
	held, _ := dialRaw(t, s.addr, user("acme", "held"), s.device("acme", "held"), "held")
	st.shut()
	if _, err := held.c.Write(numbered(1, 1, 4, "sensors/gated")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the held publisher's write waits at the gate", func() bool { return st.waiting.Load() == 1 })

	free := mustV5(t, s.addr, user("acme", "free"), s.device("acme", "free"), "free")
	if r := free.pub(t, "sensors/free", `{"n":1}`, 1, false); r.ReasonCode != 0 {
		t.Fatalf("PUBACK 0x%02x for another device of the tenant, want 0", r.ReasonCode)
	}
	// The gate is on acme's messages: other's, on the same topic, pass.
	otherPub := mustV5(t, s.addr, user("other", "pub"), s.device("other", "pub"), "pub")
	if r := otherPub.pub(t, "sensors/gated", `{"n":1}`, 1, false); r.ReasonCode != 0 {
		t.Fatalf("PUBACK 0x%02x for another tenant's device, want 0", r.ReasonCode)
	}
	held.none(100*time.Millisecond, "PUBACK before the outbox write was made")
	st.open()
	held.expectPubacksWithin(1, 4)
	expectInOrder(t, rc, "sensors/free", 1, 1)
	expectInOrder(t, rc, "sensors/gated", 1, 4)
	expectInOrder(t, otherRC, "sensors/gated", 1, 1)
}

// TestDurableQoS2AfterQueued: a QoS 2 publish after QoS 1 publishes whose
// outbox writes wait gets no PUBREC while they wait; then the PUBACKs
// come, then the PUBREC, and the outbox has the four in the order
// published.
func TestDurableQoS2AfterQueued(t *testing.T) {
	s, st, rc := durableStack(t)
	pub, _ := dialRaw(t, s.addr, user("acme", "pub"), s.device("acme", "pub"), "pub")
	st.shut()
	if _, err := pub.c.Write(append(numbered(1, 1, 3, "sensors/gated"), numbered(2, 4, 1, "sensors/gated")...)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the first write waits at the gate", func() bool { return st.waiting.Load() == 1 })
	pub.none(300*time.Millisecond, "an acknowledgement before the outbox write was made")
	st.open()
	pub.expectPubacksWithin(1, 3)
	if rec := pub.waitFor(packets.Pubrec); rec.PacketID != 4 || rec.ReasonCode >= 0x80 {
		t.Fatalf("PUBREC %d (reason %#x), want 4", rec.PacketID, rec.ReasonCode)
	}
	pub.ack(packets.Pubrel, 4)
	pub.waitFor(packets.Pubcomp)
	expectInOrder(t, rc, "sensors/gated", 1, 4)
}

// TestDurableClosedWhileHeld: a connection taken over by a new one while
// its outbox writes wait ends without leaving its committer behind: once
// the writes are made the old connection gets their PUBACKs, then its
// DISCONNECT (0x8E, session taken over), and no committer runs. The
// messages reach the receiver.
func TestDurableClosedWhileHeld(t *testing.T) {
	s, st, rc := durableStack(t)
	secret := s.device("acme", "pub")
	old, _ := dialRaw(t, s.addr, user("acme", "pub"), secret, "pub")
	st.shut()
	if _, err := old.c.Write(numbered(1, 1, 8, "sensors/gated")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the first write waits at the gate", func() bool { return st.waiting.Load() == 1 })
	dialRaw(t, s.addr, user("acme", "pub"), secret, "pub") // takes the session over
	old.none(300*time.Millisecond, "a packet to a connection taken over before its outbox writes were made")
	st.open()
	old.expectPubacksWithin(1, 8)
	if d := old.waitFor(packets.Disconnect); d.ReasonCode != packets.ErrSessionTakenOver.Code {
		t.Errorf("DISCONNECT %#x, want 0x8e", d.ReasonCode)
	}
	eventually(t, 20*time.Second, "no committer runs", func() bool { return broker.Committers() == 0 })
	expectInOrder(t, rc, "sensors/gated", 1, 8)
}

// TestDurableHeldBytesBounded: what is written to a connection behind an
// outbox write that waits (here the publisher's own messages, routed back
// to it) is held up to HeldLimit bytes and no more: the writer waits. Once
// the write is made, every PUBACK arrives in order, and every message.
func TestDurableHeldBytesBounded(t *testing.T) {
	s, st, _ := durableStack(t)
	s.setQuota("acme", "bandwidth_out", 1<<40)
	pub, _ := dialRaw(t, s.addr, user("acme", "pub"), s.device("acme", "pub"), "pub")
	pub.subscribe("sensors/#", 0)
	payload := strings.Repeat("x", 16<<10)
	n := 2 * broker.HeldLimit / len(payload)
	if n >= broker.MaxDurableWrites {
		t.Fatalf("%d publishes would pass the bound on writes in flight (%d)", n, broker.MaxDurableWrites)
	}
	var burst []byte
	for i := range n {
		burst = append(burst, rawPublish(1, uint16(i+1), "sensors/gated", nil, payload)...)
	}
	st.shut()
	if _, err := pub.c.Write(burst); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the held bytes reach the bound", func() bool {
		return broker.HeldBytes(s.hub, "acme", "pub") > broker.HeldLimit-len(payload)-64
	})
	for range 30 {
		if held := broker.HeldBytes(s.hub, "acme", "pub"); held > broker.HeldLimit {
			t.Fatalf("%d bytes held, more than the bound of %d", held, broker.HeldLimit)
		}
		time.Sleep(10 * time.Millisecond)
	}
	pub.none(100*time.Millisecond, "a packet before the outbox write was made")
	st.open()
	acks, msgs := 0, 0
	deadline := time.After(20 * time.Second)
	for acks < n || msgs < n {
		select {
		case pk, ok := <-pub.in:
			if !ok {
				t.Fatal("connection closed")
			}
			switch pk.FixedHeader.Type {
			case packets.Puback:
				acks++
				if int(pk.PacketID) != acks || pk.ReasonCode >= 0x80 {
					t.Fatalf("PUBACK %d (reason %#x), want %d", pk.PacketID, pk.ReasonCode, acks)
				}
			case packets.Publish:
				msgs++
			}
		case <-deadline:
			t.Fatalf("after 20s: %d of %d PUBACKs, %d of %d messages", acks, n, msgs, n)
		}
	}
}

// TestDurableClientGoneWhileHeld: a client that closes its socket while
// its outbox writes wait leaves nothing behind once they are made: no
// committer runs, and the messages reach the receiver (they were read,
// and routed, before the client left).
func TestDurableClientGoneWhileHeld(t *testing.T) {
	s, st, rc := durableStack(t)
	sub := subscriber(t, s, "sub", "sensors/#")
	pub, _ := dialRaw(t, s.addr, user("acme", "pub"), s.device("acme", "pub"), "pub")
	st.shut()
	if _, err := pub.c.Write(numbered(1, 1, 8, "sensors/gated")); err != nil {
		t.Fatal(err)
	}
	sub.receive(8) // all 8 read, their writes queued
	eventually(t, 20*time.Second, "the first write waits at the gate", func() bool { return st.waiting.Load() == 1 })
	pub.c.Close()
	eventually(t, 20*time.Second, "the connection is gone", func() bool { return len(s.hub.Connections("acme", "pub")) == 0 })
	if n := broker.Committers(); n != 1 {
		t.Errorf("%d committers run while the write waits, want 1", n)
	}
	st.open()
	eventually(t, 20*time.Second, "no committer runs", func() bool { return broker.Committers() == 0 })
	expectInOrder(t, rc, "sensors/gated", 1, 8)
}

// TestDurableCommitterEndsIdle: a connection's committer, which waits a
// while for the next write, ends once none comes although the connection
// stays open; the next publish starts another and is acknowledged.
func TestDurableCommitterEndsIdle(t *testing.T) {
	s, _, rc := durableStack(t)
	pub, _ := dialRaw(t, s.addr, user("acme", "pub"), s.device("acme", "pub"), "pub")
	for i := range uint16(2) {
		if _, err := pub.c.Write(numbered(1, 1+i, 1, "sensors/gated")); err != nil {
			t.Fatal(err)
		}
		pub.expectPubacksWithin(1+i, 1)
		eventually(t, 20*time.Second, "no committer runs on the idle connection", func() bool { return broker.Committers() == 0 })
	}
	expectInOrder(t, rc, "sensors/gated", 1, 2)
}

// TestDurableLeaseLapsedNotAcknowledged: a write that becomes durable after
// the node's lease may have lapsed (the check at publish time passed) is
// not acknowledged: the connection closes with 0x80 and no PUBACK, as
// ackStillServing refuses one (review of issue 21's held PUBACKs).
func TestDurableLeaseLapsedNotAcknowledged(t *testing.T) {
	s, st, _ := durableStack(t)
	secret := s.device("acme", "pub")
	pub, _ := dialRaw(t, s.addr, user("acme", "pub"), secret, "pub")
	if _, err := pub.c.Write(numbered(1, 1, 1, "sensors/gated")); err != nil {
		t.Fatal(err)
	}
	pub.expectPubacksWithin(1, 1)
	var serving atomic.Bool
	serving.Store(true)
	if !broker.SetServing(s.hub, "acme", serving.Load) {
		t.Fatal("acme's broker is not running")
	}
	st.shut() // the next write waits at the gate, after the hooks checked
	if _, err := pub.c.Write(numbered(1, 2, 2, "sensors/gated")); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); st.waiting.Load() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the write did not reach the store within 20s")
		}
	}
	serving.Store(false) // the lease lapses while the write waits
	st.open()
	pub.closedWithoutPuback("after its write ended past the lease")
}

// closedWithoutPuback reads the connection until it closes, within 20s,
// failing on any PUBACK; it returns the last DISCONNECT read, if any. why
// says what should have closed it.
func (r *raw) closedWithoutPuback(why string) *packets.Packet {
	r.t.Helper()
	deadline := time.After(20 * time.Second)
	var disconnect *packets.Packet
	for {
		select {
		case pk, ok := <-r.in:
			switch {
			case !ok:
				return disconnect
			case pk.FixedHeader.Type == packets.Puback:
				r.t.Fatalf("PUBACK %d %s", pk.PacketID, why)
			case pk.FixedHeader.Type == packets.Disconnect:
				disconnect = &pk
			}
		case <-deadline:
			r.t.Fatalf("the connection is still open 20s %s", why)
		}
	}
}

// TestDurableBytesBounded: large publishes hold the reader back by the
// bytes their queued writes carry, not only by their number: with 100
// KiB payloads at most about MaxDurableBytes of them are read (and
// delivered) while the store holds the writes back, far fewer than
// MaxDurableWrites (review: 64 queued 1 MiB packets per connection).
func TestDurableBytesBounded(t *testing.T) {
	s, st, _ := durableStack(t)
	sub := subscriber(t, s, "sub", "sensors/#")
	pub, _ := dialRaw(t, s.addr, user("acme", "pub"), s.device("acme", "pub"), "pub")
	const size = 100 << 10
	n := broker.MaxDurableWrites / 2
	bound := broker.MaxDurableBytes/size + 1
	var b []byte
	for i := range n {
		b = append(b, rawPublish(1, uint16(i+1), "sensors/gated", nil, fmt.Sprintf(`{"n":%d,"pad":"%s"}`, i+1, strings.Repeat("x", size)))...)
	}
	st.shut()
	go pub.c.Write(b) // blocks once the reader stops reading
	sub.receive(bound - 1)
	sub.none(500*time.Millisecond, fmt.Sprintf("a publish read past %d bytes of outbox writes in flight", broker.MaxDurableBytes))
	pub.none(100*time.Millisecond, "PUBACK before the outbox write was made")
	st.open()
	pub.expectPubacksWithin(1, n)
}
