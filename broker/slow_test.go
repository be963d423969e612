package broker_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/events"
)

// TestSlowSubscriberDropsCountedNotLogged: a subscriber that stops reading
// and acknowledging has its in-flight messages bounded by max_queued;
// what mochi drops past it (messages already acknowledged to their
// publisher, as mosquitto drops past max_queued_messages) is counted in
// roost_messages_dropped_total{reason="max_queued"}, mochi's warning, one
// per dropped message, reaches the log once, not four hundred times, and
// so does the tenant's queue_dropped event naming the client (the next,
// a minute later at the earliest, says how many drops it stands for);
// another tenant hears nothing of it.
func TestSlowSubscriberDropsCountedNotLogged(t *testing.T) {
	ev := events.NewMemory(1000)
	s := newStack(t, func(c *broker.Config) { c.Events = ev })
	s.tenant("other")
	s.tenant("acme")
	liftRates(t, s, "acme")
	s.setQuota("acme", "max_queued", 100)
	slow, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 4, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "s/t", Qos: 1}}}
	var b bytes.Buffer
	if err := sub.SubscribeEncode(&b); err != nil {
		t.Fatal(err)
	}
	if _, err := slow.Write(append(connectBytes(t, 4, "acme/slow", s.device("acme", "slow"), "slow"), b.Bytes()...)); err != nil {
		t.Fatal(err)
	}
	slow.SetReadDeadline(time.Now().Add(5 * time.Second))
	acks := make([]byte, 4+5) // CONNACK, SUBACK
	if _, err := io.ReadFull(slow, acks); err != nil || acks[3] != 0 || acks[4]>>4 != packets.Suback || acks[8] != 1 {
		t.Fatalf("CONNACK and SUBACK % x (%v)", acks, err)
	}
	// From here the subscriber reads nothing and acknowledges nothing.

	pub := mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub")
	for range 500 {
		if r := pub.pub(t, "s/t", "m", 1, false); r.ReasonCode >= 0x80 {
			t.Fatalf("PUBACK %#x", r.ReasonCode)
		}
	}
	eventually(t, 5*time.Second, "the drops counted", func() bool {
		return scraped(t, s.hub, "roost_messages_dropped_total", "reason", "max_queued") >= 400
	})
	if got := scraped(t, s.hub, "roost_messages_dropped_total", "reason", "max_queued"); got != 400 {
		t.Errorf("dropped for max_queued: %v, want 400 (500 published, 100 in flight)", got)
	}
	if n := strings.Count(s.logs.String(), "client store quota reached"); n != 1 {
		t.Errorf("mochi's warning logged %d times, want once (folded)", n)
	}
	var drops []events.Event
	for _, e := range ev.Recent("acme") {
		if e.Type == events.QueueDropped {
			drops = append(drops, e)
		}
	}
	if len(drops) != 1 {
		t.Fatalf("queue_dropped events %+v, want one (folded)", drops)
	}
	if e := drops[0]; e.ClientID != "slow" || e.Device != "slow" || e.Quota != "max_queued" || e.Limit != 100 || e.Count != 1 {
		t.Errorf("queue_dropped %+v, want client slow, device slow, quota max_queued, limit 100, count 1", e)
	}
	if other := ev.Recent("other"); len(other) != 0 {
		t.Errorf("another tenant's events: %+v", other)
	}
}

// TestNonReadingSubscriberDropsCounted: a subscriber that stops reading
// has at most 1,024 packets waiting to be written to it; what mochi drops
// past them (QoS 0 here) is counted in
// roost_messages_dropped_total{reason="pending_writes"} and raises one
// queue_dropped event naming the client; the publisher is not held up.
func TestNonReadingSubscriberDropsCounted(t *testing.T) {
	ev := events.NewMemory(1000)
	s := newStack(t, func(c *broker.Config) { c.Events = ev })
	s.tenant("acme")
	liftRates(t, s, "acme")
	stalled := stalledSubscriber(t, s, 30)
	stalled.SetReadDeadline(time.Now().Add(5 * time.Second))
	acks := make([]byte, 4+5) // CONNACK, SUBACK
	if _, err := io.ReadFull(stalled, acks); err != nil || acks[3] != 0 || acks[4]>>4 != packets.Suback {
		t.Fatalf("CONNACK and SUBACK % x (%v)", acks, err)
	}
	// From here the subscriber reads nothing.

	pub := mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub")
	payload := strings.Repeat("x", 8<<10)
	for range 3000 {
		pub.pub(t, "s/t", payload, 0, false)
	}
	eventually(t, 10*time.Second, "the drops counted", func() bool {
		return scraped(t, s.hub, "roost_messages_dropped_total", "reason", "pending_writes") > 0
	})
	var drops []events.Event
	eventually(t, 5*time.Second, "a queue_dropped event", func() bool {
		drops = drops[:0]
		for _, e := range ev.Recent("acme") {
			if e.Type == events.QueueDropped {
				drops = append(drops, e)
			}
		}
		return len(drops) > 0
	})
	if len(drops) != 1 {
		t.Fatalf("queue_dropped events %+v, want one (folded)", drops)
	}
	if e := drops[0]; e.ClientID != "stalled" || e.Quota != "pending_writes" || e.Limit != 1024 || e.Count != 1 {
		t.Errorf("queue_dropped %+v, want client stalled, quota pending_writes, limit 1024, count 1", e)
	}
}

// TestWriteTimeoutKeptByKeepalive: a subscriber that stops reading is
// closed once a write to it has waited the write timeout, however long
// its keep-alive. mochi sets a deadline of 1.5 × the keep-alive before each
// packet it reads, and as net.Conn's SetDeadline that moved the write
// deadline too: a write blocked just after waited 90 s here, not 1.
func TestWriteTimeoutKeptByKeepalive(t *testing.T) {
	ev := events.NewMemory(1000)
	s := newStack(t, func(c *broker.Config) { c.Events, c.WriteTimeout = ev, time.Second })
	s.tenant("acme")
	liftRates(t, s, "acme")
	pub := mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub")
	stalledSubscriber(t, s, 60)
	// From here the subscriber reads nothing; messages come at once.
	payload := strings.Repeat("x", 8<<10)
	go func() {
		for range 2000 {
			pub.Publish(context.Background(), &paho.Publish{Topic: "s/t", Payload: []byte(payload)})
		}
	}()
	eventually(t, 15*time.Second, "the stalled subscriber closed", func() bool {
		for _, e := range ev.Recent("acme") {
			if e.Type == events.Disconnected && e.ClientID == "stalled" {
				return true
			}
		}
		return false
	})
}

// stalledSubscriber connects a 3.1.1 client "stalled" to acme with
// keepalive seconds, subscribed to s/t at QoS 0, with a small receive
// buffer; it reads nothing unless the test does.
func stalledSubscriber(t *testing.T, s *stack, keepalive uint16) net.Conn {
	t.Helper()
	stalled, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stalled.Close() })
	stalled.(*net.TCPConn).SetReadBuffer(4096)
	connect := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Keepalive: keepalive, ClientIdentifier: "stalled", Clean: true,
			UsernameFlag: true, Username: []byte("acme/stalled"), PasswordFlag: true, Password: []byte(s.device("acme", "stalled"))}}
	sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 4, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "s/t", Qos: 0}}}
	var b bytes.Buffer
	if err := connect.ConnectEncode(&b); err != nil {
		t.Fatal(err)
	}
	if err := sub.SubscribeEncode(&b); err != nil {
		t.Fatal(err)
	}
	if _, err := stalled.Write(b.Bytes()); err != nil {
		t.Fatal(err)
	}
	return stalled
}
