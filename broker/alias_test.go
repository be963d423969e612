package broker_test

import (
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/tenants"
)

// publishAliased sends a v5 PUBLISH that sets or uses topic alias 1.
func (r *raw) publishAliased(id uint16, qos byte, retain bool, topic, payload string) {
	r.t.Helper()
	r.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos, Retain: retain}, PacketID: id,
		TopicName: topic, Payload: []byte(payload), Properties: packets.Properties{TopicAlias: 1, TopicAliasFlag: true}})
}

// TestTopicAliasChecked: a topic alias set while a topic was allowed does
// not get round a rule that denies it later. mochi checks the ACL on the
// PUBLISH's (empty) topic before it resolves the alias; the hub resolves
// it first, so every check sees the topic the message would go to: the
// ACL (live and retained, also after a restart), the $-topic reservation
// and max_retained.
func TestTopicAliasChecked(t *testing.T) {
	d := newDurable(t)
	d.tenant("acme")
	pubSecret, subSecret, keeperSecret := d.device("acme", "pub"), d.device("acme", "sub"), d.device("acme", "keeper")
	sub := mustV5(t, d.addr, user("acme", "sub"), subSecret, "sub")
	sub.sub(t, "#", 1)
	// An offline persistent session: what is queued for it is stored.
	keeper := mustV5(t, d.addr, user("acme", "keeper"), keeperSecret, "keeper", keepSession)
	keeper.sub(t, "alarms/#", 1)
	keeper.Disconnect(&paho.Disconnect{})
	pub, _ := dialRaw(t, d.addr, user("acme", "pub"), pubSecret, "pub")

	pub.publishAliased(1, 1, false, "alarms/fire", "allowed")
	if ack := pub.next(packets.Puback); ack.ReasonCode >= 0x80 {
		t.Fatalf("PUBACK 0x%02x for an allowed topic", ack.ReasonCode)
	}
	sub.expect(t, "alarms/fire", "allowed")
	pub.publishAliased(6, 1, false, "", "allowed, through the alias")
	if ack := pub.next(packets.Puback); ack.ReasonCode >= 0x80 {
		t.Fatalf("PUBACK 0x%02x for an allowed topic through its alias", ack.ReasonCode)
	}
	sub.expect(t, "alarms/fire", "allowed, through the alias")

	d.rules("acme", deny(tenants.ActionPublish, "alarms/#"), allow(tenants.ActionAll, "#"))
	pub.publishAliased(2, 1, true, "", "denied, retained")
	if ack := pub.next(packets.Puback); ack.ReasonCode != packets.ErrNotAuthorized.Code {
		t.Fatalf("PUBACK 0x%02x for the alias of a denied topic, want 0x87", ack.ReasonCode)
	}
	pub.publishAliased(0, 0, false, "", "denied, QoS 0")
	sub.quiet(t, 300*time.Millisecond, "a denied topic published through its alias")

	// The reserved $events topics, through an alias too.
	pub.publishAliased(3, 1, false, "$events/presence/pub", "spoofed")
	if ack := pub.next(packets.Puback); ack.ReasonCode != packets.ErrNotAuthorized.Code {
		t.Fatalf("PUBACK 0x%02x for a $events topic, want 0x87", ack.ReasonCode)
	}
	pub.publishAliased(4, 1, false, "", "spoofed through the alias")
	if ack := pub.next(packets.Puback); ack.ReasonCode != packets.ErrNotAuthorized.Code {
		t.Fatalf("PUBACK 0x%02x for the alias of a $events topic, want 0x87", ack.ReasonCode)
	}

	// An alias never set, with no topic: a protocol error.
	pub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 5,
		Payload: []byte("where?"), Properties: packets.Properties{TopicAlias: 9, TopicAliasFlag: true}})
	if disc := pub.next(packets.Disconnect); disc.ReasonCode != packets.ErrProtocolViolation.Code {
		t.Fatalf("DISCONNECT 0x%02x for an unknown alias, want 0x82", disc.ReasonCode)
	}

	// Nothing was retained, neither in the broker nor in the store.
	d.restart(t)
	after := mustV5(t, d.addr, user("acme", "sub"), subSecret, "sub")
	after.sub(t, "alarms/#", 1)
	after.quiet(t, 300*time.Millisecond, "a retained message published through a denied alias, after a restart")
	// The allowed ones were stored for the offline session under their
	// topic, the denied ones not at all.
	back := mustV5(t, d.addr, user("acme", "keeper"), keeperSecret, "keeper", keepSession)
	back.expect(t, "alarms/fire", "allowed")
	back.expect(t, "alarms/fire", "allowed, through the alias")
	back.quiet(t, 300*time.Millisecond, "a message denied through its alias, queued for an offline session")
}

// TestTopicAliasRetainedQuota: max_retained counts the topic an alias
// stands for.
func TestTopicAliasRetainedQuota(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	s.setQuota("acme", "max_retained", 1)
	pub, _ := dialRaw(t, s.addr, user("acme", "pub"), s.device("acme", "pub"), "pub")
	pub.publishAliased(1, 1, true, "status/a", "first")
	if ack := pub.next(packets.Puback); ack.ReasonCode >= 0x80 {
		t.Fatalf("PUBACK 0x%02x for the first retained message", ack.ReasonCode)
	}
	// The alias now names status/b: a second retained topic, over the quota.
	pub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true}, PacketID: 2,
		TopicName: "status/b", Payload: []byte("second"), Properties: packets.Properties{TopicAlias: 2, TopicAliasFlag: true}})
	if ack := pub.next(packets.Puback); ack.ReasonCode != packets.ErrQuotaExceeded.Code {
		t.Fatalf("PUBACK 0x%02x for a second retained topic, want 0x97", ack.ReasonCode)
	}
	pub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true}, PacketID: 3,
		Payload: []byte("second, aliased"), Properties: packets.Properties{TopicAlias: 2, TopicAliasFlag: true}})
	if ack := pub.next(packets.Puback); ack.ReasonCode != packets.ErrQuotaExceeded.Code {
		t.Fatalf("PUBACK 0x%02x for a second retained topic through its alias, want 0x97", ack.ReasonCode)
	}
	// Replacing the one retained message through its alias is allowed.
	pub.publishAliased(4, 1, true, "", "replaced")
	if ack := pub.next(packets.Puback); ack.ReasonCode >= 0x80 {
		t.Fatalf("PUBACK 0x%02x replacing the retained message through its alias", ack.ReasonCode)
	}
	// mochi acknowledges before it routes; a later publish's PUBACK means
	// this one is routed, so the subscriber below gets it only as retained.
	pub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 5, TopicName: "barrier"})
	pub.next(packets.Puback)
	sub := mustV5(t, s.addr, user("acme", "sub"), s.device("acme", "sub"), "sub")
	sub.sub(t, "status/#", 1)
	sub.expect(t, "status/a", "replaced")
	sub.quiet(t, 300*time.Millisecond, "a retained message over max_retained")
}

// aliasMaximum asks for as many topic aliases as MQTT allows.
func aliasMaximum(c *paho.Connect) {
	c.Properties = &paho.ConnectProperties{TopicAliasMaximum: paho.Uint16(65535)}
}

// TestTopicAliasesOutboundBounded: a subscriber asking for 65,535 topic
// aliases is given 64; past them a delivery carries its topic and no
// alias, and one to a topic with an alias carries the alias alone.
func TestTopicAliasesOutboundBounded(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	liftRates(t, s, "acme")
	sub := mustV5(t, s.addr, user("acme", "sub"), s.device("acme", "sub"), "sub", aliasMaximum)
	sub.sub(t, "a/#", 0)
	pub := mustV5(t, s.addr, user("acme", "pub"), s.device("acme", "pub"), "pub")
	alias := func(m *paho.Publish) uint16 {
		if m.Properties == nil || m.Properties.TopicAlias == nil {
			return 0
		}
		return *m.Properties.TopicAlias
	}
	for i := range 70 {
		pub.pub(t, fmt.Sprintf("a/%d", i), "m", 1, false)
		m := sub.expect(t, fmt.Sprintf("a/%d", i), "m")
		want := uint16(i + 1)
		if i >= 64 {
			want = 0
		}
		if got := alias(m); got != want {
			t.Errorf("a/%d came with alias %d, want %d", i, got, want)
		}
	}
	pub.pub(t, "a/0", "again", 1, false)
	if m := sub.expect(t, "", "again"); alias(m) != 1 {
		t.Errorf("a/0 again came with alias %d, want 1", alias(m))
	}
	pub.pub(t, "a/69", "again", 1, false)
	if m := sub.expect(t, "a/69", "again"); alias(m) != 0 {
		t.Errorf("a/69 again came with alias %d, want none", alias(m))
	}
}

// TestTopicAliasesKeepNoPayloads: the topics that topic aliases keep, a
// subscriber's and a publisher's, do not keep the messages they came in.
// mochi decodes a topic as a view into the packet's buffer; before the
// topics were copied out (and the aliases bounded), 1,000 messages of 64
// KiB to distinct topics, to a subscriber asking for 65,535 aliases, kept
// some 64 MiB alive, and the publisher's 64 aliases 4 MiB.
func TestTopicAliasesKeepNoPayloads(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	liftRates(t, s, "acme")
	sub := mustV5(t, s.addr, user("acme", "sub"), s.device("acme", "sub"), "sub", aliasMaximum)
	sub.sub(t, "x/#", 0)
	var got atomic.Int64
	go func() {
		for range sub.msgs {
			got.Add(1) // and dropped: the test's own client keeps nothing
		}
	}()
	pub := mustV5(t, s.addr, user("acme", "pub"), s.device("acme", "pub"), "pub")
	n := 1000
	if raceDetector {
		n = 100 // each message costs 30 to 90 ms under the race detector
	}
	payload := strings.Repeat("p", 64<<10)
	before := liveHeap()
	for i := range n {
		// Each sets one of the 64 topic aliases the hub takes from a
		// publisher: its inbound aliases keep topics too.
		pctx, cancel := contextWithTimeout()
		r, err := pub.Publish(pctx, &paho.Publish{Topic: fmt.Sprintf("x/%d", i), Payload: []byte(payload), QoS: 1,
			Properties: &paho.PublishProperties{TopicAlias: paho.Uint16(uint16(i%64 + 1))}})
		cancel()
		if err != nil || r.ReasonCode >= 0x80 {
			t.Fatalf("publish x/%d: %v %v", i, r, err)
		}
	}
	eventually(t, 10*time.Second, "the subscriber got every message", func() bool { return got.Load() == int64(n) })
	// Kept whole, the messages would hold n × 64 KiB: 62 MiB, or 6 MiB
	// under the race detector.
	grown := int64(liveHeap()) - int64(before)
	t.Logf("heap grew %d KiB after %d messages of 64 KiB", grown>>10, n)
	if limit := int64(n) << 16 / 4; grown > limit {
		t.Errorf("heap grew %d KiB after %d messages of 64 KiB, want under %d KiB (a quarter of them)", grown>>10, n, limit>>10)
	}
}

// liveHeap is the heap in use after a collection.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}
