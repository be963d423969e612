package broker_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/broker"
)

// pipelined is n QoS 1 PUBLISHes to topic, packet ids from first on, as
// one buffer: what a client pipelining its publishes sends.
func pipelined(first uint16, n int, topic string) []byte {
	var b []byte
	for i := range n {
		b = append(b, rawPublish(1, first+uint16(i), topic, nil, "x")...)
	}
	return b
}

// expectPubacks reads the PUBACKs of packet ids first to first+n-1, in
// order.
func (r *raw) expectPubacks(first uint16, n int) {
	r.t.Helper()
	for i := range n {
		if ack := r.next(packets.Puback); ack.PacketID != first+uint16(i) || ack.ReasonCode >= 0x80 {
			r.t.Fatalf("PUBACK %d (reason %#x), want %d", ack.PacketID, ack.ReasonCode, first+uint16(i))
		}
	}
}

// withBatching sets write batching for the rest of the test.
func withBatching(t *testing.T, on bool) {
	was := broker.SetWriteBatching(on)
	t.Cleanup(func() { broker.SetWriteBatching(was) })
}

// TestBatchPipelinedPubacks: a client that sends 50 QoS 1 PUBLISHes in one
// TCP write gets its 50 PUBACKs, in order, in far fewer socket writes
// than 50; without batching, in one write each. The 50 publishes (700
// bytes) are one write on loopback, whose MSS is 64 KiB: they arrive in
// one segment, and the server's reader (4 KiB) takes them in at once.
func TestBatchPipelinedPubacks(t *testing.T) {
	const n = 50
	burst := pipelined(1, n, "t")
	if len(burst) >= 4096 {
		t.Fatalf("burst of %d bytes does not fit the server's read buffer", len(burst))
	}
	for _, tc := range []struct {
		name     string
		batching bool
		min, max int64 // socket writes for the n PUBACKs
	}{
		{name: "batching", batching: true, min: 1, max: n/2 - 1},
		{name: "without batching", batching: false, min: n, max: n},
	} {
		t.Run(tc.name, func(t *testing.T) {
			withBatching(t, tc.batching)
			s := newStack(t)
			s.tenant("acme")
			s.liftPublishLimits("acme", nil)
			c, _ := dialRaw(t, s.addr, user("acme", "pub"), s.device("acme", "pub"), "pub")
			c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 1000, TopicName: "t", Payload: []byte("x")})
			c.expectPubacks(1000, 1)
			before := broker.SocketWrites(s.hub, "acme", "pub")
			if _, err := c.c.Write(burst); err != nil {
				t.Fatal(err)
			}
			c.expectPubacks(1, n)
			got := broker.SocketWrites(s.hub, "acme", "pub") - before
			t.Logf("%d PUBACKs in %d socket writes", n, got)
			if got < tc.min || got > tc.max {
				t.Errorf("%d PUBACKs in %d socket writes, want %d to %d", n, got, tc.min, tc.max)
			}
		})
	}
}

// TestBatchLonePublishAcked: a client that sends a PUBLISH and waits for
// its PUBACK gets it, also when part of its next packet came in the same
// segment (the reader then blocks on the socket for the rest, and must
// write what it owes first).
func TestBatchLonePublishAcked(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	s.liftPublishLimits("acme", nil)
	next := rawPublish(1, 2, "t", nil, "second")
	for _, tc := range []struct {
		name string
		cut  int // bytes of the next PUBLISH sent with the first
	}{
		{name: "alone", cut: 0},
		{name: "first byte of the next", cut: 1},
		{name: "next header", cut: 2},
		{name: "all but the last byte of the next", cut: len(next) - 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A device of its own: taking over the previous case's
			// session, the connection could be resent that session's
			// PUBACK 2 (mochi holds a PUBACK among the inflight messages
			// while it writes it, and the takeover copies them: CI once).
			dev := fmt.Sprintf("pub%d", tc.cut)
			c, _ := dialRaw(t, s.addr, user("acme", dev), s.device("acme", dev), dev)
			if _, err := c.c.Write(append(rawPublish(1, 1, "t", nil, "first"), next[:tc.cut]...)); err != nil {
				t.Fatal(err)
			}
			c.expectPubacks(1, 1)
			if _, err := c.c.Write(next[tc.cut:]); err != nil {
				t.Fatal(err)
			}
			c.expectPubacks(2, 1)
			c.c.Close()
		})
	}
}

// TestBatchDeliveryDuringBurst: a message routed to a connection whose
// own reader is in a burst reaches it without the client sending more:
// one it published to itself in the middle of a burst, and one another
// client publishes while it floods the broker without pause.
func TestBatchDeliveryDuringBurst(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	s.liftPublishLimits("acme", nil)

	t.Run("to itself mid-burst", func(t *testing.T) {
		c, _ := dialRaw(t, s.addr, user("acme", "self"), s.device("acme", "self"), "self")
		c.subscribe("loop", 1)
		burst := append(pipelined(1, 20, "noise"), rawPublish(1, 21, "loop", nil, "mine")...)
		burst = append(burst, pipelined(22, 20, "noise")...)
		if _, err := c.c.Write(burst); err != nil {
			t.Fatal(err)
		}
		acks, got := 0, false
		deadline := time.After(5 * time.Second)
		for acks < 41 || !got {
			select {
			case pk, ok := <-c.in:
				if !ok {
					t.Fatal("connection closed")
				}
				switch {
				case pk.FixedHeader.Type == packets.Puback:
					acks++
				case pk.FixedHeader.Type == packets.Publish && string(pk.Payload) == "mine":
					got = true
					c.ack(packets.Puback, pk.PacketID)
				}
			case <-deadline:
				t.Fatalf("after 5s: %d of 41 PUBACKs, own message delivered: %t", acks, got)
			}
		}
	})

	t.Run("from another while flooding", func(t *testing.T) {
		c, _ := dialRaw(t, s.addr, user("acme", "flooder"), s.device("acme", "flooder"), "flooder")
		c.subscribe("news", 0)
		var flood []byte
		for range 200 {
			flood = append(flood, rawPublish(0, 0, "noise", nil, "0123456789")...)
		}
		stop := make(chan struct{})
		flooding := make(chan struct{})
		go func() {
			defer close(flooding)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := c.c.Write(flood); err != nil {
					return
				}
			}
		}()
		defer func() { close(stop); <-flooding }()
		time.Sleep(50 * time.Millisecond) // the flood is under way
		other := mustV5(t, s.addr, user("acme", "other"), s.device("acme", "other"), "other")
		other.pub(t, "news", "hello", 0, false)
		deadline := time.After(5 * time.Second)
		for {
			select {
			case pk, ok := <-c.in:
				if !ok {
					t.Fatal("connection closed")
				}
				if pk.FixedHeader.Type == packets.Publish && string(pk.Payload) == "hello" {
					return
				}
			case <-deadline:
				t.Fatal("message not delivered within 5s to a client flooding the broker")
			}
		}
	})
}

// TestBatchDisconnectMidBurst: a protocol error in the middle of a burst
// ends the connection with a DISCONNECT that the client reads after the
// PUBACKs of the publishes before the error, in order.
func TestBatchDisconnectMidBurst(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	s.liftPublishLimits("acme", nil)
	c, _ := dialRaw(t, s.addr, user("acme", "pub"), s.device("acme", "pub"), "pub")
	burst := append(pipelined(1, 10, "t"), rawPublish(0, 0, "t", topicAlias(0), "x")...)
	burst = append(burst, pipelined(11, 10, "t")...)
	if _, err := c.c.Write(burst); err != nil {
		t.Fatal(err)
	}
	c.expectPubacks(1, 10)
	if pk := c.next(packets.Disconnect); pk.ReasonCode != 0x94 {
		t.Errorf("DISCONNECT %#x, want 0x94", pk.ReasonCode)
	}
}
