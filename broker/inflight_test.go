package broker_test

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/broker/store/memory"
	"github.com/roosthub/roost/dataplane"
)

// dialUnacking connects a clean MQTT 5 client with a Receive Maximum of 1
// that acknowledges nothing it is sent; got receives what it is sent.
func dialUnacking(t *testing.T, addr, username, password, clientID string) (c *paho.Client, got <-chan *paho.Publish) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	msgs := make(chan *paho.Publish, 100)
	c = paho.NewClient(paho.ClientConfig{
		Conn:                       conn,
		EnableManualAcknowledgment: true, // and never acknowledged
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			msgs <- pr.Packet
			return true, nil
		}},
	})
	cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Connect(cctx, &paho.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: true,
		Username: username, UsernameFlag: true, Password: []byte(password), PasswordFlag: true,
		Properties: &paho.ConnectProperties{ReceiveMaximum: paho.Uint16(1)}}); err != nil {
		t.Fatalf("connect %s: %v", username, err)
	}
	t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	return c, msgs
}

// TestCleanSessionInflightBounded: with a session store (where mochi's own
// bound on in-flight messages is lifted for persistent sessions), a clean
// session that acknowledges nothing and has a Receive Maximum of 1 is held
// at most max_queued QoS 1 messages, the one sent and those waiting for
// its acknowledgement; the rest are dropped and counted in
// roost_messages_dropped_total{reason="max_queued"}. A subscriber that
// acknowledges gets every message. Before the bound, mochi kept all 50
// (up to 65,535, each with its payload).
func TestCleanSessionInflightBounded(t *testing.T) {
	d := newDurable(t, func() broker.SessionStore { return memory.New() })
	d.tenant("acme")
	liftRates(t, d.stack, "acme")
	d.setQuota("acme", "max_queued", 10)
	stuck, stuckGot := dialUnacking(t, d.addr, user("acme", "stuck"), d.device("acme", "stuck"), "stuck")
	sctx, cancel := contextWithTimeout()
	defer cancel()
	if sa, err := stuck.Subscribe(sctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "q/t", QoS: 1}}}); err != nil || sa.Reasons[0] != 1 {
		t.Fatalf("subscribe: %v %v", sa, err)
	}
	acking := mustV5(t, d.addr, user("acme", "acking"), d.device("acme", "acking"), "acking")
	acking.sub(t, "q/t", 1)
	pub := mustV5(t, d.addr, user("acme", "pub"), d.device("acme", "pub"), "pub")

	// Each message is published once the acknowledging subscriber got the
	// one before and the hub has its PUBACK, so that it never has
	// max_queued in flight (its PUBACKs lagging a fast publisher made it
	// reach the bound and miss one).
	const published, maxQueued = 50, 10
	for i := range published {
		if r := pub.pub(t, "q/t", fmt.Sprint(i), 1, false); r.ReasonCode >= 0x80 {
			t.Fatalf("PUBACK %#x", r.ReasonCode)
		}
		acking.expect(t, "q/t", fmt.Sprint(i))
		eventually(t, 5*time.Second, "the acknowledging subscriber's PUBACK", func() bool {
			return broker.InflightLen(d.hub, "acme", "acking") == 0
		})
	}
	pub.barrier(t)
	if n := broker.InflightLen(d.hub, "acme", "stuck"); n != maxQueued {
		t.Errorf("messages held for the client that does not acknowledge: %d, want %d (max_queued)", n, maxQueued)
	}
	if got := scraped(t, d.hub, "roost_messages_dropped_total", "reason", "max_queued"); got != published-maxQueued {
		t.Errorf("dropped for max_queued: %v, want %d", got, published-maxQueued)
	}
	select {
	case m := <-stuckGot:
		if string(m.Payload) != "0" {
			t.Errorf("the client that does not acknowledge got %q first, want \"0\"", m.Payload)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the client that does not acknowledge got nothing")
	}
	select {
	case m := <-stuckGot:
		t.Errorf("the client that does not acknowledge got %q past its Receive Maximum of 1", m.Payload)
	case <-time.After(200 * time.Millisecond):
	}
}

// TestSharedGroupPassesFullMember: a shared group's turn does not go to a
// clean member holding max_queued unacknowledged messages (its delivery
// would be refused and the message lost for the group) while another
// member can take it: none is refused (before, with one member stuck, two
// thirds were), and every other message reaches the acknowledging member.
func TestSharedGroupPassesFullMember(t *testing.T) {
	d := newDurable(t, func() broker.SessionStore { return memory.New() })
	d.tenant("acme")
	liftRates(t, d.stack, "acme")
	d.setQuota("acme", "max_queued", 10)
	stuck, _ := dialUnacking(t, d.addr, user("acme", "stuck"), d.device("acme", "stuck"), "stuck")
	sctx, cancel := contextWithTimeout()
	defer cancel()
	if sa, err := stuck.Subscribe(sctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "$share/g/q/t", QoS: 1}}}); err != nil || sa.Reasons[0] != 1 {
		t.Fatalf("subscribe: %v %v", sa, err)
	}
	acking := mustV5(t, d.addr, user("acme", "acking"), d.device("acme", "acking"), "acking")
	acking.sub(t, "$share/g/q/t", 1)
	pub := mustV5(t, d.addr, user("acme", "pub"), d.device("acme", "pub"), "pub")
	const published = 100
	for i := range published {
		if r := pub.pub(t, "q/t", fmt.Sprint(i), 1, false); r.ReasonCode >= 0x80 {
			t.Fatalf("PUBACK %#x", r.ReasonCode)
		}
		// The acknowledging member acknowledges each turn before the
		// next: on a busy machine it fell max_queued behind, and was
		// full too, so that turns were refused whichever member got them.
		eventually(t, 5*time.Second, "the acknowledging member's acknowledgement", func() bool {
			return broker.InflightLen(d.hub, "acme", "acking") == 0
		})
	}
	pub.barrier(t)
	held := broker.InflightLen(d.hub, "acme", "stuck")
	if held > 10 {
		t.Errorf("the full member holds %d, more than max_queued", held)
	}
	dropped := int(scraped(t, d.hub, "roost_messages_dropped_total", "reason", "max_queued"))
	// With the other member keeping up, no turn is the full member's:
	// without the check, most turns after it filled were, and refused.
	if dropped > 0 {
		t.Errorf("dropped for max_queued: %d of %d, want none", dropped, published)
	}
	got := 0
	deadline := time.After(10 * time.Second)
	for got < published-held-dropped {
		select {
		case <-acking.msgs:
			got++
		case <-deadline:
			t.Fatalf("the acknowledging member got %d of %d (the full member holds %d, %d dropped)", got, published-held-dropped, held, dropped)
		}
	}
}

// TestFullCleanSessionDeliveryCheap: a delivery refused to a clean session
// that holds max_queued messages (it acknowledges nothing) costs little,
// whatever max_queued is: each one was preceded by a copy of every message
// the client held (mochi's Inflight.GetAll), to leave packet id
// reservations out of the count, though a client at its bound is the
// case the bound is for, and its publisher's rate, times the subscribers
// at their bound, set how often.
func TestFullCleanSessionDeliveryCheap(t *testing.T) {
	d := newDurable(t, func() broker.SessionStore { return memory.New() })
	d.tenant("acme")
	liftRates(t, d.stack, "acme")
	const maxQueued, over = 2000, 200
	d.setQuota("acme", "max_queued", maxQueued)
	stuck, _ := dialUnacking(t, d.addr, user("acme", "stuck"), d.device("acme", "stuck"), "stuck")
	sctx, cancel := contextWithTimeout()
	defer cancel()
	if sa, err := stuck.Subscribe(sctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "q/t", QoS: 1}}}); err != nil || sa.Reasons[0] != 1 {
		t.Fatalf("subscribe: %v %v", sa, err)
	}
	publish := func(n int) {
		for range n {
			if err := d.hub.Publish(ctx, "acme", dataplane.Message{Topic: "q/t", Payload: []byte("m"), QoS: 1}); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish(maxQueued)
	eventually(t, 10*time.Second, "the client holding max_queued messages", func() bool {
		return broker.InflightLen(d.hub, "acme", "stuck") == maxQueued
	})
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	publish(over)
	runtime.ReadMemStats(&after)
	if n := broker.InflightLen(d.hub, "acme", "stuck"); n != maxQueued {
		t.Fatalf("held %d, want %d (max_queued)", n, maxQueued)
	}
	// A few KiB each; the copies were about 1 MB each.
	if per := (after.TotalAlloc - before.TotalAlloc) / over; per > 64<<10 {
		t.Errorf("%d bytes allocated per delivery refused for max_queued (%d held), want under 64 KiB", per, maxQueued)
	}
}

// TestFullCleanSessionReservationNotCounted: a packet id kept for an
// expired message the client may hold (a reservation) does not count
// against max_queued: with max_queued 2, a clean session that holds one
// expired message's id and one message gets the next.
func TestFullCleanSessionReservationNotCounted(t *testing.T) {
	d := newDurable(t, func() broker.SessionStore { return memory.New() })
	d.tenant("acme")
	liftRates(t, d.stack, "acme")
	d.setQuota("acme", "max_queued", 2)
	stuck, got := dialUnacking(t, d.addr, user("acme", "stuck"), d.device("acme", "stuck"), "stuck")
	sctx, cancel := contextWithTimeout()
	defer cancel()
	if sa, err := stuck.Subscribe(sctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "q/t", QoS: 1}}}); err != nil || sa.Reasons[0] != 1 {
		t.Fatalf("subscribe: %v %v", sa, err)
	}
	pub := mustV5(t, d.addr, user("acme", "pub"), d.device("acme", "pub"), "pub")
	pctx, cancel := contextWithTimeout()
	defer cancel()
	if _, err := pub.Publish(pctx, &paho.Publish{Topic: "q/t", QoS: 1, Payload: []byte("old"),
		Properties: &paho.PublishProperties{MessageExpiry: paho.Uint32(1)}}); err != nil {
		t.Fatal(err)
	}
	if m := <-got; string(m.Payload) != "old" {
		t.Fatalf("got %q, want %q", m.Payload, "old")
	}
	eventually(t, 10*time.Second, "the unacknowledged message expiring", func() bool {
		return broker.InflightLen(d.hub, "acme", "stuck") == 0
	})
	pub.pub(t, "q/t", "b", 1, false)
	pub.pub(t, "q/t", "c", 1, false)
	pub.barrier(t)
	if n := broker.InflightLen(d.hub, "acme", "stuck"); n != 2 {
		t.Errorf("held %d messages, want 2 (b and c; the expired one's packet id is no message)", n)
	}
}
