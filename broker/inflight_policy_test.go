package broker_test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/broker/store/memory"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// durableWithEvents is newDurable over a memory store, its events kept in
// ev.
func durableWithEvents(t *testing.T, ev events.Sink) *durable {
	t.Helper()
	st := memory.New()
	s := newStack(t, func(c *broker.Config) { c.Sessions, c.Events = st, ev })
	t.Cleanup(func() { st.Close() })
	return &durable{stack: s, store: st}
}

// unackedPersistent connects a subscriber to q/t at QoS 1 that keeps its
// session and acknowledges nothing it is sent, over MQTT 5 or 3.1.1; the
// payloads it is sent arrive on the channel.
func unackedPersistent(t *testing.T, d *durable, version int, clientID string) <-chan string {
	t.Helper()
	got := make(chan string, 1000)
	secret := d.device("acme", clientID)
	if version == 4 {
		c := mustV3(t, d.addr, user("acme", clientID), secret, clientID, false, func(o *paho3.ClientOptions) {
			o.SetAutoAckDisabled(true) // and never acknowledged
			o.SetOrderMatters(true)    // handed over in the order received
			o.SetDefaultPublishHandler(func(_ paho3.Client, m paho3.Message) { got <- string(m.Payload()) })
		})
		c.sub(t, "q/t", 1)
		return got
	}
	conn, err := net.DialTimeout("tcp", d.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{
		Conn:                       conn,
		EnableManualAcknowledgment: true, // and never acknowledged
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			got <- string(pr.Packet.Payload)
			return true, nil
		}},
	})
	cctx, cancel := contextWithTimeout()
	defer cancel()
	if _, err := c.Connect(cctx, &paho.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: false,
		Username: user("acme", clientID), UsernameFlag: true, Password: []byte(secret), PasswordFlag: true,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(3600)}}); err != nil {
		t.Fatalf("connect %s: %v", clientID, err)
	}
	t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	if sa, err := c.Subscribe(cctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "q/t", QoS: 1}}}); err != nil || sa.Reasons[0] != 1 {
		t.Fatalf("subscribe: %v %v", sa, err)
	}
	return got
}

// TestConnectedDropNewestNotDelivered: under the drop_newest policy a
// connected persistent session that acknowledges nothing is sent its
// first max_queued messages and nothing more: a message counted as
// dropped (in the queue's stats and a queue_dropped event) is not
// delivered all the same, and the messages held for the client stay
// within max_queued. Over MQTT 5 (clean start false, a session expiry)
// and 3.1.1 (clean session false).
func TestConnectedDropNewestNotDelivered(t *testing.T) {
	for _, tc := range []struct {
		name    string
		version int
	}{{"v5", 5}, {"v3.1.1", 4}} {
		t.Run(tc.name, func(t *testing.T) {
			ev := events.NewMemory(1000)
			d := durableWithEvents(t, ev)
			d.tenant("acme")
			liftRates(t, d.stack, "acme")
			const maxQueued, published = 3, 50
			queueOf(t, d, maxQueued, tenants.DropNewest)
			got := unackedPersistent(t, d, tc.version, "sub")
			pub := mustV5(t, d.addr, user("acme", "pub"), d.device("acme", "pub"), "pub")
			for i := range published {
				if r := pub.pub(t, "q/t", fmt.Sprint(i), 1, false); r.ReasonCode >= 0x80 {
					t.Fatalf("PUBACK %#x", r.ReasonCode)
				}
			}
			pub.barrier(t)

			delivered := drainUntilQuiet(got, 500*time.Millisecond)
			if want := []string{"0", "1", "2"}; fmt.Sprint(delivered) != fmt.Sprint(want) {
				t.Errorf("delivered %v, want %v (the first max_queued; the rest dropped)", delivered, want)
			}
			if n := broker.InflightLen(d.hub, "acme", "sub"); n > maxQueued {
				t.Errorf("messages held for the client: %d, want at most %d (max_queued)", n, maxQueued)
			}
			if qs := d.hub.Queue("acme", "sub"); qs.Queued != maxQueued || qs.Dropped != published-maxQueued {
				t.Errorf("queue stats %+v, want %d queued, %d dropped", qs, maxQueued, published-maxQueued)
			}
			var drops int
			for _, e := range ev.Recent("acme") {
				if e.Type == events.QueueDropped && e.ClientID == "sub" {
					drops += int(max(e.Count, 1))
				}
			}
			if drops != published-maxQueued {
				t.Errorf("drops the queue_dropped events stand for: %d, want %d", drops, published-maxQueued)
			}
		})
	}
}

// TestDropNewestBurstDelivers: under drop_newest, a connected persistent
// session that acknowledges nothing gets the max_queued messages its
// queue kept of a burst of 200 from eight publishers at once, and no
// other: the deliveries withheld as dropped are not written, and do not
// keep the ones kept from being written either.
func TestDropNewestBurstDelivers(t *testing.T) {
	d := durableWithEvents(t, nil)
	d.tenant("acme")
	liftRates(t, d.stack, "acme")
	const maxQueued, published, publishers = 3, 200, 8
	queueOf(t, d, maxQueued, tenants.DropNewest)
	got := unackedPersistent(t, d, 5, "sub")
	pub := mustV5(t, d.addr, user("acme", "pub"), d.device("acme", "pub"), "pub")
	var wg sync.WaitGroup
	errs := make(chan error, published)
	for w := range publishers {
		wg.Go(func() {
			for i := w; i < published; i += publishers {
				pctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				if _, err := pub.Publish(pctx, &paho.Publish{Topic: "q/t", Payload: []byte(fmt.Sprint(i)), QoS: 1}); err != nil {
					errs <- fmt.Errorf("publish %d: %w", i, err)
				}
				cancel()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	delivered := drainUntilQuiet(got, time.Second)
	if len(delivered) != maxQueued {
		t.Errorf("delivered %v, want %d messages (max_queued; the rest dropped)", delivered, maxQueued)
	}
	if n := broker.InflightLen(d.hub, "acme", "sub"); n > maxQueued {
		t.Errorf("messages held for the client: %d, want at most %d (max_queued)", n, maxQueued)
	}
	if qs := d.hub.Queue("acme", "sub"); qs.Queued != maxQueued || qs.Dropped != published-maxQueued {
		t.Errorf("queue stats %+v, want %d queued, %d dropped", qs, maxQueued, published-maxQueued)
	}
}

// TestDropOldestKeepsPacketID: a message a connected persistent session
// was sent and has not acknowledged keeps its packet id when its full
// queue drops it (drop_oldest, max_queued 1): the next message is not
// given that id, though mochi's packet id counter has come round to it
// [MQTT-2.2.1-3]. The client's late acknowledgement of the dropped message
// (a PUBACK; at QoS 2 a PUBREC, answered with a PUBREL, then a PUBCOMP)
// completes it, not the new one, which stays queued and is resent when
// the session resumes; the dropped one is not. With a Receive Maximum of
// 1, the dropped message keeps its place until the client completes it
// (the client counts it): the new one is written then.
func TestDropOldestKeepsPacketID(t *testing.T) {
	for _, tc := range []struct {
		name       string
		qos        byte
		receiveMax uint16 // 0: none given
	}{
		{"QoS 1", 1, 0},
		{"QoS 2", 2, 0},
		{"QoS 1 Receive Maximum 1", 1, 1},
		{"QoS 2 Receive Maximum 1", 2, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := durableWithEvents(t, nil)
			d.tenant("acme")
			liftRates(t, d.stack, "acme")
			queueOf(t, d, 1, tenants.DropOldest)
			secret := d.device("acme", "sub")
			sub, _ := dialRaw(t, d.addr, user("acme", "sub"), secret, "sub", func(c *packets.Packet) {
				c.Properties.ReceiveMaximum = tc.receiveMax
			})
			sub.subscribe("q/t", tc.qos)
			pub := mustV5(t, d.addr, user("acme", "pub"), d.device("acme", "pub"), "pub")
			pub.pub(t, "q/t", "old", tc.qos, false)
			old := sub.next(packets.Publish)
			// Not acknowledged. mochi's counter comes round to its id, as
			// 65,535 deliveries would bring it.
			broker.AdvancePacketIDs(d.hub, "acme", "sub", old.PacketID)
			pub.pub(t, "q/t", "new", tc.qos, false) // the full queue drops "old"
			pub.barrier(t)
			var nw packets.Packet
			if tc.receiveMax == 0 {
				nw = sub.next(packets.Publish)
			} else {
				sub.none(300*time.Millisecond, "past the Receive Maximum, the dropped message not completed")
			}

			// The client completes "old", late.
			if tc.qos == 1 {
				sub.ack(packets.Puback, old.PacketID)
			} else {
				sub.ack(packets.Pubrec, old.PacketID)
				if rel := sub.next(packets.Pubrel); rel.PacketID != old.PacketID || rel.ReasonCode != 0 {
					t.Fatalf("PUBREL for %d with reason %#x, want for %d with success", rel.PacketID, rel.ReasonCode, old.PacketID)
				}
				sub.ack(packets.Pubcomp, old.PacketID)
			}
			if tc.receiveMax > 0 {
				nw = sub.next(packets.Publish) // in the place "old" left
			}
			if string(nw.Payload) != "new" {
				t.Fatalf("got %q, want %q", nw.Payload, "new")
			}
			if nw.PacketID == old.PacketID {
				t.Errorf("%q sent with packet id %d, under which the client held %q unacknowledged", nw.Payload, nw.PacketID, old.Payload)
			}
			// mochi answers one connection's packets in order: the PINGRESP
			// comes once the acknowledgements were processed.
			if _, err := sub.c.Write([]byte{packets.Pingreq << 4, 0}); err != nil {
				t.Fatal(err)
			}
			sub.next(packets.Pingresp)
			sub.c.Close()

			back, connack := dialRaw(t, d.addr, user("acme", "sub"), secret, "sub")
			if !connack.SessionPresent {
				t.Fatal("the session did not resume")
			}
			select {
			case pk, ok := <-back.in:
				switch {
				case !ok:
					t.Fatal("connection closed")
				case pk.FixedHeader.Type != packets.Publish || string(pk.Payload) != "new" || pk.PacketID != nw.PacketID:
					t.Fatalf("got packet type %d (id %d, payload %q), want %q resent with id %d", pk.FixedHeader.Type, pk.PacketID, pk.Payload, "new", nw.PacketID)
				}
			case <-time.After(2 * time.Second):
				t.Fatalf("%q, never acknowledged, not resent to the resumed session (the queue holds %d)", "new", d.hub.Queue("acme", "sub").Queued)
			}
			back.none(300*time.Millisecond, "past the one message the session holds")
		})
	}
}

// TestExpiredKeepsPacketID: a message a connected persistent session was
// sent and has not acknowledged keeps its packet id when mochi drops it as
// its message expiry passes: the next message is not given that id, though
// mochi's packet id counter has come round to it [MQTT-2.2.1-3], and the
// client's late PUBACK of the expired message leaves the new one queued.
func TestExpiredKeepsPacketID(t *testing.T) {
	d := durableWithEvents(t, nil)
	d.tenant("acme")
	liftRates(t, d.stack, "acme")
	sub, _ := dialRaw(t, d.addr, user("acme", "sub"), d.device("acme", "sub"), "sub")
	sub.subscribe("q/t", 1)
	pub := mustV5(t, d.addr, user("acme", "pub"), d.device("acme", "pub"), "pub")
	pctx, cancel := contextWithTimeout()
	defer cancel()
	if _, err := pub.Publish(pctx, &paho.Publish{Topic: "q/t", QoS: 1, Payload: []byte("old"),
		Properties: &paho.PublishProperties{MessageExpiry: paho.Uint32(1)}}); err != nil {
		t.Fatal(err)
	}
	old := sub.next(packets.Publish)
	// Not acknowledged: it expires, and leaves the queue.
	eventually(t, 10*time.Second, "the expired message leaving the queue", func() bool {
		return d.hub.Queue("acme", "sub").Queued == 0
	})
	expectNewPacketID(t, d, sub, pub, old, "expired")
}

// expectNewPacketID checks that a QoS 1 message to sub, sent once mochi's
// packet id counter has come round to the id of old (a message dropped
// from the queue, why, while the client still holds it), gets another
// id, and that the client's late PUBACK of old leaves the new message
// queued.
func expectNewPacketID(t *testing.T, d *durable, sub *raw, pub *v5, old packets.Packet, why string) {
	t.Helper()
	broker.AdvancePacketIDs(d.hub, "acme", "sub", old.PacketID)
	pub.pub(t, "q/t", "new", 1, false)
	nw := sub.next(packets.Publish)
	if string(nw.Payload) != "new" {
		t.Fatalf("got %q, want %q", nw.Payload, "new")
	}
	if nw.PacketID == old.PacketID {
		t.Errorf("%q sent with packet id %d, under which the client holds %q unacknowledged", nw.Payload, nw.PacketID, old.Payload)
	}
	sub.ack(packets.Puback, old.PacketID)
	if _, err := sub.c.Write([]byte{packets.Pingreq << 4, 0}); err != nil {
		t.Fatal(err)
	}
	sub.next(packets.Pingresp)
	if q := d.hub.Queue("acme", "sub").Queued; q != 1 {
		t.Errorf("queued after the late PUBACK of the %s message: %d, want 1 (%q, not acknowledged)", why, q, "new")
	}
}

// TestPurgeKeepsPacketID: a message a connected persistent session was
// sent and has not acknowledged keeps its packet id when its queue is
// purged: the next message is not given that id, though mochi's packet id
// counter has come round to it [MQTT-2.2.1-3], and the client's late
// PUBACK of the purged message leaves the new one queued.
func TestPurgeKeepsPacketID(t *testing.T) {
	d := durableWithEvents(t, nil)
	d.tenant("acme")
	liftRates(t, d.stack, "acme")
	sub, _ := dialRaw(t, d.addr, user("acme", "sub"), d.device("acme", "sub"), "sub")
	sub.subscribe("q/t", 1)
	pub := mustV5(t, d.addr, user("acme", "pub"), d.device("acme", "pub"), "pub")
	pub.pub(t, "q/t", "old", 1, false)
	old := sub.next(packets.Publish)
	if n, err := d.hub.PurgeQueue(ctx, "acme", "sub"); err != nil || n != 1 {
		t.Fatalf("purge: %d dropped, %v; want 1", n, err)
	}
	expectNewPacketID(t, d, sub, pub, old, "purged")
}

// TestReceiveMaximumNoStall: a subscriber with a Receive Maximum of 2
// that acknowledges everything gets all of 200 messages one publisher
// sends at once (without waiting for its acknowledgements), in the order
// they were published, at QoS 1 and 2, with a clean or a persistent
// session: a message held back for the Receive Maximum is written once
// the client completes another, and acknowledged like any other, its
// acknowledgement making room for the next.
func TestReceiveMaximumNoStall(t *testing.T) {
	for _, tc := range []struct {
		name       string
		qos        byte
		persistent bool
	}{
		{"clean QoS 1", 1, false},
		{"clean QoS 2", 2, false},
		{"persistent QoS 1", 1, true},
		{"persistent QoS 2", 2, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := durableWithEvents(t, nil)
			d.tenant("acme")
			liftRates(t, d.stack, "acme")
			sub := mustV5(t, d.addr, user("acme", "sub"), d.device("acme", "sub"), "sub", func(c *paho.Connect) {
				c.Properties = &paho.ConnectProperties{ReceiveMaximum: paho.Uint16(2)}
				if tc.persistent {
					c.CleanStart = false
					c.Properties.SessionExpiryInterval = paho.Uint32(3600)
				}
			})
			sub.sub(t, "q/t", tc.qos)
			pub := mustV5(t, d.addr, user("acme", "pub"), d.device("acme", "pub"), "pub")
			const published = 200
			for i := range published {
				pctx, cancel := contextWithTimeout()
				_, err := pub.PublishWithOptions(pctx, &paho.Publish{Topic: "q/t", Payload: []byte(fmt.Sprint(i)), QoS: tc.qos},
					paho.PublishOptions{Method: paho.PublishMethod_AsyncSend})
				cancel()
				if err != nil {
					t.Fatalf("publish %d: %v", i, err)
				}
			}
			pub.barrier(t)
			var got []string
			for deadline := time.After(10 * time.Second); len(got) < published; {
				select {
				case m := <-sub.msgs:
					got = append(got, string(m.Payload))
					continue
				case <-deadline:
				}
				break
			}
			if len(got) < published {
				t.Errorf("the subscriber got %d of %d messages, then nothing for 10s (held for it: %d)",
					len(got), published, broker.InflightLen(d.hub, "acme", "sub"))
			}
			for i, p := range got {
				if p != fmt.Sprint(i) {
					t.Fatalf("message %d: got %q, want %q (in the order published)", i, p, fmt.Sprint(i))
				}
			}
			sub.quiet(t, 200*time.Millisecond, "a message sent twice")
		})
	}
}

// TestReceiveMaximumResumed: a persistent session whose client, with a
// Receive Maximum of 2, acknowledged none of 10 messages gets all 10
// again, in order, when it comes back with a Receive Maximum of 2 and
// acknowledges them: what the session holds is resent within the new
// connection's Receive Maximum, the rest as the client acknowledges.
func TestReceiveMaximumResumed(t *testing.T) {
	d := durableWithEvents(t, nil)
	d.tenant("acme")
	liftRates(t, d.stack, "acme")
	secret := d.device("acme", "sub")
	c, first := manualAckV5(t, d.addr, user("acme", "sub"), secret, "sub", 2) // and never acknowledged
	cctx, cancel := contextWithTimeout()
	defer cancel()
	if sa, err := c.Subscribe(cctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "q/t", QoS: 1}}}); err != nil || sa.Reasons[0] != 1 {
		t.Fatalf("subscribe: %v %v", sa, err)
	}
	pub := mustV5(t, d.addr, user("acme", "pub"), d.device("acme", "pub"), "pub")
	const published = 10
	for i := range published {
		pub.pub(t, "q/t", fmt.Sprint(i), 1, false)
	}
	pub.barrier(t)
	before := payloads(drainPublishes(first, 300*time.Millisecond))
	if fmt.Sprint(before) != "[0 1]" {
		t.Errorf("before: got %v, want [0 1] (its Receive Maximum)", before)
	}
	c.Disconnect(&paho.Disconnect{})

	back := mustV5(t, d.addr, user("acme", "sub"), secret, "sub", func(c *paho.Connect) {
		c.CleanStart = false
		c.Properties = &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(3600), ReceiveMaximum: paho.Uint16(2)}
	})
	for i := range published {
		back.expect(t, "q/t", fmt.Sprint(i))
	}
	back.quiet(t, 300*time.Millisecond, "a message sent twice")
}

// TestReceiveMaximumHeldAliasAnnounced: a QoS 0 message written while the
// QoS 1 message that announced its topic alias is held back for the
// Receive Maximum carries its topic with the alias, so that the client
// can resolve it.
func TestReceiveMaximumHeldAliasAnnounced(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	liftRates(t, s, "acme")
	conn, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *paho.Publish, 10)
	c := paho.NewClient(paho.ClientConfig{
		Conn:                       conn,
		EnableManualAcknowledgment: true, // and never acknowledged
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			got <- pr.Packet
			return true, nil
		}},
	})
	cctx, cancel := contextWithTimeout()
	defer cancel()
	if _, err := c.Connect(cctx, &paho.Connect{ClientID: "sub", KeepAlive: 30, CleanStart: true,
		Username: user("acme", "sub"), UsernameFlag: true, Password: []byte(s.device("acme", "sub")), PasswordFlag: true,
		Properties: &paho.ConnectProperties{ReceiveMaximum: paho.Uint16(1), TopicAliasMaximum: paho.Uint16(10)}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	if sa, err := c.Subscribe(cctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "a/#", QoS: 1}}}); err != nil || sa.Reasons[0] != 1 {
		t.Fatalf("subscribe: %v %v", sa, err)
	}
	pub := mustV5(t, s.addr, user("acme", "pub"), s.device("acme", "pub"), "pub")
	pub.pub(t, "a/x", "sent", 1, false)
	pub.pub(t, "a/y", "held", 1, false) // announces a/y's alias, held back
	pub.pub(t, "a/y", "qos 0", 0, false)
	pub.barrier(t)
	for _, want := range []struct{ topic, payload string }{{"a/x", "sent"}, {"a/y", "qos 0"}} {
		select {
		case m := <-got:
			if m.Topic != want.topic || string(m.Payload) != want.payload {
				t.Fatalf("got %q on %q, want %q on %q", m.Payload, m.Topic, want.payload, want.topic)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no %q within 5s", want.payload)
		}
	}
	select {
	case m := <-got:
		t.Errorf("got %q on %q past the Receive Maximum of 1", m.Payload, m.Topic)
	case <-time.After(200 * time.Millisecond):
	}
}

// drainUntilQuiet returns what arrives on ch until nothing has for d.
func drainUntilQuiet(ch <-chan string, d time.Duration) []string {
	var got []string
	for {
		select {
		case m := <-ch:
			got = append(got, m)
		case <-time.After(d):
			return got
		}
	}
}

// TestReceiveMaximumResumedUnacked: a session resumed with messages
// waiting is sent no more of them at once than the Receive Maximum of the
// connection resuming it, the messages it was sent before and never
// acknowledged (resent) included [MQTT-4.9.0-2]; each one it acknowledges
// lets the next through, in order.
func TestReceiveMaximumResumedUnacked(t *testing.T) {
	d := durableWithEvents(t, nil)
	d.tenant("acme")
	liftRates(t, d.stack, "acme")
	secret := d.device("acme", "sub")
	c, got := manualAckV5(t, d.addr, user("acme", "sub"), secret, "sub", 3)
	cctx, cancel := contextWithTimeout()
	defer cancel()
	if sa, err := c.Subscribe(cctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "q/t", QoS: 1}}}); err != nil || sa.Reasons[0] != 1 {
		t.Fatalf("subscribe: %v %v", sa, err)
	}
	pub := mustV5(t, d.addr, user("acme", "pub"), d.device("acme", "pub"), "pub")
	const published = 20
	for i := range published {
		pub.pub(t, "q/t", fmt.Sprint(i), 1, false)
	}
	pub.barrier(t)
	first := payloads(drainPublishes(got, 300*time.Millisecond))
	if fmt.Sprint(first) != "[0 1 2]" {
		t.Fatalf("first connection: got %v, want [0 1 2] (its Receive Maximum)", first)
	}
	c.Disconnect(&paho.Disconnect{})

	// Back with a Receive Maximum of 2: the three sent and not
	// acknowledged are resent, but two at a time.
	c, got = manualAckV5(t, d.addr, user("acme", "sub"), secret, "sub", 2)
	defer c.Disconnect(&paho.Disconnect{})
	var all []string
	for len(all) < published {
		batch := drainPublishes(got, 300*time.Millisecond)
		if len(batch) == 0 {
			t.Fatalf("stalled after %v", all)
		}
		if len(batch) > 2 {
			t.Fatalf("after %v: %d messages unacknowledged at once (%v), over the Receive Maximum of 2", all, len(batch), payloads(batch))
		}
		for _, p := range batch {
			all = append(all, string(p.Payload))
			if err := c.Ack(p); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := make([]string, published)
	for i := range want {
		want[i] = fmt.Sprint(i)
	}
	if fmt.Sprint(all) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", all, want)
	}
}

// drainPublishes collects PUBLISH packets from ch until none came for d.
func drainPublishes(ch <-chan *paho.Publish, d time.Duration) []*paho.Publish {
	var got []*paho.Publish
	for {
		select {
		case p := <-ch:
			got = append(got, p)
		case <-time.After(d):
			return got
		}
	}
}

func payloads(ps []*paho.Publish) []string {
	var s []string
	for _, p := range ps {
		s = append(s, string(p.Payload))
	}
	return s
}

// manualAckV5 connects an MQTT 5 client that keeps its session (an hour),
// gives Receive Maximum rm and acknowledges only what the test acknowledges
// (Ack); what it is sent arrives on the channel.
func manualAckV5(t *testing.T, addr, username, password, clientID string, rm uint16) (*paho.Client, <-chan *paho.Publish) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *paho.Publish, 100)
	c := paho.NewClient(paho.ClientConfig{
		Conn:                       conn,
		EnableManualAcknowledgment: true,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			got <- pr.Packet
			return true, nil
		}},
	})
	cctx, cancel := contextWithTimeout()
	defer cancel()
	if _, err := c.Connect(cctx, &paho.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: false,
		Username: username, UsernameFlag: true, Password: []byte(password), PasswordFlag: true,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(3600), ReceiveMaximum: paho.Uint16(rm)}}); err != nil {
		t.Fatal(err)
	}
	return c, got
}
