package broker_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"
)

// raw is an MQTT 5 client that sends and receives single packets, so that a
// test decides which acknowledgement is sent when, or never.
type raw struct {
	t  *testing.T
	c  net.Conn
	in chan packets.Packet
}

// dialRaw connects with a session that outlives the connection and returns
// the client and its CONNACK, which must be the first packet. cp may
// adjust the CONNECT.
func dialRaw(t *testing.T, addr, username, password, clientID string, cp ...func(*packets.Packet)) (*raw, packets.Packet) {
	t.Helper()
	return dialRawStrict(t, addr, username, password, clientID, func(typ byte) {
		t.Fatalf("packet type %d before the CONNACK", typ)
	}, cp...)
}

func (r *raw) read() {
	defer close(r.in)
	br := bufio.NewReader(r.c)
	for {
		hb, err := br.ReadByte()
		if err != nil {
			return
		}
		var fh packets.FixedHeader
		if fh.Decode(hb) != nil {
			return
		}
		n, err := binary.ReadUvarint(br)
		if err != nil {
			return
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(br, body); err != nil {
			return
		}
		fh.Remaining = int(n)
		pk := packets.Packet{FixedHeader: fh, ProtocolVersion: 5}
		switch fh.Type {
		case packets.Connack:
			err = pk.ConnackDecode(body)
		case packets.Publish:
			err = pk.PublishDecode(body)
		case packets.Puback:
			err = pk.PubackDecode(body)
		case packets.Pubrec:
			err = pk.PubrecDecode(body)
		case packets.Pubrel:
			err = pk.PubrelDecode(body)
		case packets.Pubcomp:
			err = pk.PubcompDecode(body)
		case packets.Suback:
			err = pk.SubackDecode(body)
		case packets.Disconnect:
			err = pk.DisconnectDecode(body)
		}
		if err != nil {
			r.t.Logf("raw client: cannot decode packet type %d: %v", fh.Type, err)
			return
		}
		r.in <- pk
	}
}

func (r *raw) send(pk packets.Packet) {
	r.t.Helper()
	pk.ProtocolVersion = 5
	var b bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&b)
	case packets.Publish:
		err = pk.PublishEncode(&b)
	case packets.Puback:
		err = pk.PubackEncode(&b)
	case packets.Pubrec:
		err = pk.PubrecEncode(&b)
	case packets.Pubrel:
		pk.FixedHeader.Qos = 1
		err = pk.PubrelEncode(&b)
	case packets.Pubcomp:
		err = pk.PubcompEncode(&b)
	case packets.Subscribe:
		pk.FixedHeader.Qos = 1
		err = pk.SubscribeEncode(&b)
	default:
		r.t.Fatalf("raw client cannot send packet type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		r.t.Fatal(err)
	}
	if _, err := r.c.Write(b.Bytes()); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

// next returns the next packet, which must be of the given type.
func (r *raw) next(typ byte) packets.Packet {
	r.t.Helper()
	select {
	case pk, ok := <-r.in:
		if !ok {
			r.t.Fatalf("connection closed while waiting for packet type %d", typ)
		}
		if pk.FixedHeader.Type != typ {
			r.t.Fatalf("got packet type %d (id %d), want %d", pk.FixedHeader.Type, pk.PacketID, typ)
		}
		return pk
	case <-time.After(5 * time.Second):
		r.t.Fatalf("no packet of type %d within 5s", typ)
	}
	return packets.Packet{}
}

// none checks that nothing arrives for a while.
func (r *raw) none(d time.Duration, what string) {
	r.t.Helper()
	select {
	case pk, ok := <-r.in:
		if ok {
			r.t.Fatalf("%s: got packet type %d (id %d, dup %t, payload %q)", what, pk.FixedHeader.Type, pk.PacketID, pk.FixedHeader.Dup, pk.Payload)
		}
	case <-time.After(d):
	}
}

func (r *raw) subscribe(filter string, qos byte) {
	r.t.Helper()
	r.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: filter, Qos: qos}}})
	if ack := r.next(packets.Suback); len(ack.ReasonCodes) != 1 || ack.ReasonCodes[0] != qos {
		r.t.Fatalf("SUBACK %v", ack.ReasonCodes)
	}
}

func (r *raw) publish(id uint16, topic, payload string, dup bool) {
	r.t.Helper()
	r.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2, Dup: dup}, PacketID: id,
		TopicName: topic, Payload: []byte(payload)})
}

func (r *raw) ack(typ byte, id uint16) {
	r.t.Helper()
	r.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: typ}, PacketID: id})
}

// expectAck reads a PUBREC or PUBCOMP for id with a success reason code.
func (r *raw) expectAck(typ byte, id uint16) {
	r.t.Helper()
	pk := r.next(typ)
	if pk.PacketID != id || pk.ReasonCode >= 0x80 {
		r.t.Fatalf("packet type %d for id %d with reason %#x, want id %d and success", typ, pk.PacketID, pk.ReasonCode, id)
	}
}

// TestQoS2ToSubscriberExactlyOnceAcrossRestart: a QoS 2 message the
// subscriber acknowledged with PUBREC is not sent again after the hub
// restarts, only its PUBREL; one it did not acknowledge is resent with the
// same packet id and DUP, which the client recognises.
func TestQoS2ToSubscriberExactlyOnceAcrossRestart(t *testing.T) {
	d := newDurable(t)
	d.tenant("acme")
	subSecret, pubSecret := d.device("acme", "sub"), d.device("acme", "pub")
	sub, _ := dialRaw(t, d.addr, "acme/sub", subSecret, "sub")
	sub.subscribe("q2/#", 2)
	pub := mustV5(t, d.addr, "acme/pub", pubSecret, "pub")
	pub.pub(t, "q2/a", "one", 2, false)
	pub.pub(t, "q2/a", "two", 2, false)

	one, two := sub.next(packets.Publish), sub.next(packets.Publish)
	if string(one.Payload) != "one" || string(two.Payload) != "two" || one.FixedHeader.Qos != 2 {
		t.Fatalf("got %q (QoS %d) and %q", one.Payload, one.FixedHeader.Qos, two.Payload)
	}
	sub.ack(packets.Pubrec, one.PacketID)
	if rel := sub.next(packets.Pubrel); rel.PacketID != one.PacketID {
		t.Fatalf("PUBREL for %d, want %d", rel.PacketID, one.PacketID)
	}
	// No PUBCOMP for "one", no PUBREC for "two": the hub goes down.
	d.restart(t)

	back, connack := dialRaw(t, d.addr, "acme/sub", subSecret, "sub")
	if !connack.SessionPresent {
		t.Fatal("the session did not survive the restart")
	}
	got := map[byte]packets.Packet{}
	for range 2 {
		select {
		case pk := <-back.in:
			got[pk.FixedHeader.Type] = pk
		case <-time.After(5 * time.Second):
			t.Fatalf("after the restart only %d of 2 packets arrived", len(got))
		}
	}
	if rel, ok := got[packets.Pubrel]; !ok || rel.PacketID != one.PacketID {
		t.Errorf("the PUBREL for %q was not resent with id %d: %+v", "one", one.PacketID, got)
	}
	if p, ok := got[packets.Publish]; !ok || string(p.Payload) != "two" || p.PacketID != two.PacketID || !p.FixedHeader.Dup {
		t.Errorf("%q was not resent with id %d and DUP: %+v", "two", two.PacketID, p)
	}
	back.ack(packets.Pubcomp, one.PacketID)
	back.ack(packets.Pubrec, two.PacketID)
	if rel := back.next(packets.Pubrel); rel.PacketID != two.PacketID {
		t.Fatalf("PUBREL for %d, want %d", rel.PacketID, two.PacketID)
	}
	back.ack(packets.Pubcomp, two.PacketID)
	back.none(300*time.Millisecond, "after both messages completed")
	eventually(t, 5*time.Second, "the queue is empty", func() bool { return d.hub.Queue("acme", "sub").Queued == 0 })

	d.restart(t)
	again, _ := dialRaw(t, d.addr, "acme/sub", subSecret, "sub")
	again.none(500*time.Millisecond, "completed messages after another restart")
	// Still subscribed, still exactly once.
	pub = mustV5(t, d.addr, "acme/pub", pubSecret, "pub")
	pub.pub(t, "q2/a", "three", 2, false)
	three := again.next(packets.Publish)
	if string(three.Payload) != "three" || three.FixedHeader.Dup {
		t.Errorf("live after restarts: %q dup=%t", three.Payload, three.FixedHeader.Dup)
	}
}

// TestQoS2FromPublisherExactlyOnceAcrossRestart: a persistent publisher's
// QoS 2 message that was stored and answered with PUBREC is not stored
// again when the publisher resends it, before or after a restart, and its
// PUBREL is completed after a restart; a packet id is free again after its
// PUBCOMP.
func TestQoS2FromPublisherExactlyOnceAcrossRestart(t *testing.T) {
	d := newDurable(t)
	d.tenant("acme")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("hub log:\n%s", d.logs)
		}
	})
	subSecret, pubSecret := d.device("acme", "sub"), d.device("acme", "pub")
	sub := mustV5(t, d.addr, "acme/sub", subSecret, "sub", keepSession)
	sub.sub(t, "q2/#", 2)
	sub.Disconnect(&paho.Disconnect{})

	// The internal tag on stored publishes never reaches a publisher:
	// mochi echoes a PUBLISH's user properties in its PUBACK.
	p1 := mustV5(t, d.addr, "acme/p1", d.device("acme", "p1"), "p1")
	if r := p1.pub(t, "q2/a", "m0", 1, false); r.Properties != nil && len(r.Properties.User) > 0 {
		t.Errorf("the PUBACK carries user properties the publisher never sent: %q", r.Properties.User)
	}
	pub, _ := dialRaw(t, d.addr, "acme/pub", pubSecret, "pub")
	pub.publish(5, "q2/a", "m1", false)
	pub.expectAck(packets.Pubrec, 5)
	pub.publish(5, "q2/a", "m1", true) // the PUBREC "got lost": resent live
	pub.expectAck(packets.Pubrec, 5)
	pub.publish(6, "q2/a", "m2", false)
	pub.expectAck(packets.Pubrec, 6)
	// The hub goes down before either PUBREL.
	d.restart(t)

	back, connack := dialRaw(t, d.addr, "acme/pub", pubSecret, "pub")
	if !connack.SessionPresent {
		t.Fatal("the publisher's session did not survive the restart")
	}
	back.publish(5, "q2/a", "m1", true) // it never saw the PUBREC
	back.expectAck(packets.Pubrec, 5)
	back.ack(packets.Pubrel, 5)
	back.expectAck(packets.Pubcomp, 5)
	back.ack(packets.Pubrel, 6) // it saw the PUBREC
	back.expectAck(packets.Pubcomp, 6)
	back.publish(5, "q2/a", "m3", false) // id 5 is free again: a new message
	back.expectAck(packets.Pubrec, 5)
	back.ack(packets.Pubrel, 5)
	back.expectAck(packets.Pubcomp, 5)

	s := mustV5(t, d.addr, "acme/sub", subSecret, "sub", keepSession)
	for _, want := range []string{"m0", "m1", "m2", "m3"} {
		s.expect(t, "q2/a", want)
	}
	s.quiet(t, 500*time.Millisecond, "a QoS 2 message delivered twice")
	if n := d.hub.Queue("acme", "sub").Dropped; n != 0 {
		t.Errorf("%d messages dropped", n)
	}
}

// TestOutOfOrderAcksTrimmed: a subscriber acknowledges its QoS 1 messages
// out of order (the newest first). Once all are acknowledged none is left
// in the store: a restart redelivers nothing. (When the queue was trimmed
// "up to" a number, the newer ones came again.)
func TestOutOfOrderAcksDeleted(t *testing.T) {
	d := newDurable(t)
	d.tenant("acme")
	subSecret, pubSecret := d.device("acme", "sub"), d.device("acme", "pub")
	sub, _ := dialRaw(t, d.addr, "acme/sub", subSecret, "sub")
	sub.subscribe("q1/#", 1)
	pub := mustV5(t, d.addr, "acme/pub", pubSecret, "pub")
	var got []packets.Packet
	for _, p := range []string{"one", "two", "three"} {
		pub.pub(t, "q1/a", p, 1, false)
		got = append(got, sub.next(packets.Publish))
	}
	for _, i := range []int{2, 1, 0} {
		sub.ack(packets.Puback, got[i].PacketID)
	}
	eventually(t, 5*time.Second, "the queue is empty", func() bool { return d.hub.Queue("acme", "sub").Queued == 0 })
	sub.c.Close()

	d.restart(t)
	back, connack := dialRaw(t, d.addr, "acme/sub", subSecret, "sub")
	if !connack.SessionPresent {
		t.Fatal("the session did not survive the restart")
	}
	back.none(500*time.Millisecond, "acknowledged messages after a restart")
}
