package broker_test

import (
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// TestSlowSubscriberDropsCountedNotLogged: a subscriber that stops reading
// and acknowledging has its in-flight messages bounded by max_queued;
// what mochi drops past it (messages already acknowledged to their
// publisher, as mosquitto drops past max_queued_messages) is counted in
// roost_messages_dropped_total{reason="max_queued"}, and mochi's warning,
// one per dropped message, reaches the log once, not four hundred times.
func TestSlowSubscriberDropsCountedNotLogged(t *testing.T) {
	s := newStack(t)
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
}
