package broker_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/tenants"
)

func TestPubSubV5(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	subSecret, pubSecret := s.device("acme", "sub"), s.device("acme", "pub")
	sub := mustV5(t, s.addr, user("acme", "sub"), subSecret, "sub")
	pub := mustV5(t, s.addr, user("acme", "pub"), pubSecret, "pub")
	if got := sub.sub(t, "sensors/#", 2); got != 2 {
		t.Fatalf("SUBACK: got 0x%02x, want granted QoS 2", got)
	}
	for qos := byte(0); qos <= 2; qos++ {
		payload := fmt.Sprintf("qos%d", qos)
		r := pub.pub(t, "sensors/temp", payload, qos, false)
		if qos > 0 && r.ReasonCode >= 0x80 {
			t.Fatalf("publish QoS %d: reason 0x%02x", qos, r.ReasonCode)
		}
		m := sub.expect(t, "sensors/temp", payload)
		if m.QoS != qos {
			t.Errorf("delivered QoS %d, want %d", m.QoS, qos)
		}
	}
}

func TestPubSubV3(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	sub := mustV3(t, s.addr, user("acme", "sub"), s.device("acme", "sub"), "sub", true)
	pub := mustV3(t, s.addr, user("acme", "pub"), s.device("acme", "pub"), "pub", true)
	sub.sub(t, "sensors/+", 2)
	for qos := byte(0); qos <= 2; qos++ {
		payload := fmt.Sprintf("qos%d", qos)
		pub.pub(t, "sensors/temp", payload, qos, false)
		if m := sub.expect(t, "sensors/temp", payload); m.Qos() != qos {
			t.Errorf("delivered QoS %d, want %d", m.Qos(), qos)
		}
	}
	// 3.1.1 and 5 clients talk to each other.
	v5sub := mustV5(t, s.addr, user("acme", "v5"), s.device("acme", "v5"), "v5")
	v5sub.sub(t, "mixed", 1)
	pub.pub(t, "mixed", "from 3.1.1", 1, false)
	v5sub.expect(t, "mixed", "from 3.1.1")
}

func TestRetained(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	pub := mustV5(t, s.addr, user("acme", "pub"), s.device("acme", "pub"), "pub")
	pub.pub(t, "status/door", "open", 1, true)
	pub.barrier(t)
	sub := mustV3(t, s.addr, user("acme", "sub"), s.device("acme", "sub"), "sub", true)
	sub.sub(t, "status/#", 1)
	if m := sub.expect(t, "status/door", "open"); !m.Retained() {
		t.Error("the retained message came without the retain flag")
	}
	// Clearing it: an empty retained publish.
	pub.pub(t, "status/door", "", 1, true)
	pub.barrier(t)
	sub.expect(t, "status/door", "")
	late := mustV5(t, s.addr, user("acme", "late"), s.device("acme", "late"), "late")
	late.sub(t, "status/#", 1)
	late.quiet(t, 300*time.Millisecond, "cleared retained message")
}

func TestWill(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	watcher := mustV5(t, s.addr, user("acme", "watcher"), s.device("acme", "watcher"), "watcher")
	watcher.sub(t, "wills/#", 1)

	dying := mustV5(t, s.addr, user("acme", "dying"), s.device("acme", "dying"), "dying", func(c *paho.Connect) {
		c.WillMessage = &paho.WillMessage{Topic: "wills/dying", Payload: []byte("gone"), QoS: 1}
	})
	dying.conn.Close() // no DISCONNECT: the Will must go out
	watcher.expect(t, "wills/dying", "gone")

	// A 3.1.1 Will, from a client whose connection drops. (A session
	// takeover would drop it too, but mochi v2.7.9 publishes the Will of a
	// taken-over client only if its reader notices before it checks for
	// closing: that race is mochi's, so it is not tested here.)
	secret := s.device("acme", "old")
	conn, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4, Connect: packets.ConnectParams{
		ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: "old",
		UsernameFlag: true, Username: []byte("acme/old"), PasswordFlag: true, Password: []byte(secret),
		WillFlag: true, WillTopic: "wills/old", WillPayload: []byte("bye"), WillQos: 1,
	}}
	var b bytes.Buffer
	if err := pk.ConnectEncode(&b); err != nil {
		t.Fatal(err)
	}
	conn.Write(b.Bytes())
	connack := make([]byte, 4)
	if _, err := io.ReadFull(conn, connack); err != nil || connack[3] != 0 {
		t.Fatalf("3.1.1 CONNECT with a Will: % x, %v", connack, err)
	}
	conn.Close()
	watcher.expect(t, "wills/old", "bye")

	// A Will with a delay is held back for that long.
	delayed := mustV5(t, s.addr, user("acme", "slow"), s.device("acme", "slow"), "slow", func(c *paho.Connect) {
		c.WillMessage = &paho.WillMessage{Topic: "wills/slow", Payload: []byte("late"), QoS: 1}
		c.WillProperties = &paho.WillProperties{WillDelayInterval: paho.Uint32(1)}
		c.Properties = &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(10)}
	})
	delayed.conn.Close()
	watcher.quiet(t, 500*time.Millisecond, "a Will delayed by 1s, after 0.5s")
	watcher.expect(t, "wills/slow", "late")
}

func TestWillTopicDenied(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	s.rules("acme", deny(tenants.ActionPublish, "alarms/#"), allow(tenants.ActionAll, "#"))
	secret := s.device("acme", "d1")
	code := refusedV5(t, s.addr, user("acme", "d1"), secret, "d1", func(c *paho.Connect) {
		c.WillMessage = &paho.WillMessage{Topic: "alarms/fire", Payload: []byte("x")}
	})
	if code != 0x87 {
		t.Errorf("v5 CONNECT with a denied Will: got 0x%02x, want 0x87", code)
	}
	_, rc, err := dialV3(t, s.addr, user("acme", "d1"), secret, "d1", true, func(o *paho3.ClientOptions) {
		o.SetWill("alarms/fire", "x", 0, false)
	})
	if err == nil || rc != 0x05 {
		t.Errorf("3.1.1 CONNECT with a denied Will: got %v (code 0x%02x), want 0x05", err, rc)
	}
	// A Will topic with a wildcard is no topic at all.
	if code := refusedV5(t, s.addr, user("acme", "d1"), secret, "d1", func(c *paho.Connect) {
		c.WillMessage = &paho.WillMessage{Topic: "alarms/#", Payload: []byte("x")}
	}); code < 0x80 {
		t.Errorf("Will to a wildcard: got 0x%02x, want a refusal", code)
	}
	mustV5(t, s.addr, user("acme", "d1"), secret, "d1", func(c *paho.Connect) {
		c.WillMessage = &paho.WillMessage{Topic: "status/d1", Payload: []byte("x")}
	})
}

func TestACL(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	s.rules("acme",
		deny(tenants.ActionAll, "secret/#"),
		allow(tenants.ActionPublish, "devices/${device}/out"),
		allow(tenants.ActionSubscribe, "devices/${device}/in"),
		allow(tenants.ActionSubscribe, "devices/+/out"),
	)
	s.denyAction("acme", tenants.DenyDisconnect)
	d1 := mustV5(t, s.addr, user("acme", "d1"), s.device("acme", "d1"), "d1")
	d2 := mustV5(t, s.addr, user("acme", "d2"), s.device("acme", "d2"), "d2")
	app := mustV3(t, s.addr, user("acme", "app"), s.device("acme", "app"), "app", true)

	if got := d1.sub(t, "devices/d2/in", 1); got != 0x87 {
		t.Errorf("d1 subscribing to d2's inbox: got 0x%02x, want 0x87", got)
	}
	if got := d1.sub(t, "secret/#", 1); got != 0x87 {
		t.Errorf("subscribing to denied secret/#: got 0x%02x, want 0x87", got)
	}
	if got := app.subCode(t, "#", 1); got != 0x80 {
		t.Errorf("3.1.1 subscribing to a filter no rule covers: got 0x%02x, want 0x80", got)
	}
	d1.sub(t, "devices/d1/in", 1)
	d2.sub(t, "devices/+/out", 1)

	if r := d1.pub(t, "devices/d2/out", "forged", 1, false); r.ReasonCode != 0x87 {
		t.Errorf("d1 publishing as d2: got 0x%02x, want 0x87", r.ReasonCode)
	}
	d2.quiet(t, 200*time.Millisecond, "a publish the ACL refused")
	d1.pub(t, "devices/d1/out", "hello", 1, false)
	d2.expect(t, "devices/d1/out", "hello")

	// A 3.1.1 client has no reason codes: with deny_action disconnect, a
	// refused QoS 1 publish ends its connection instead of being acked
	// (TestDenyAction has the default, ignore).
	app.Publish("secret/x", 1, false, "leak")
	select {
	case <-app.lost:
	case <-time.After(5 * time.Second):
		t.Error("a 3.1.1 client publishing QoS 1 to a denied topic stayed connected")
	}
}

func TestPersistentSessionResumes(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	subSecret := s.device("acme", "sub")
	pub := mustV5(t, s.addr, user("acme", "pub"), s.device("acme", "pub"), "pub")

	// 3.1.1: clean session false.
	sub := mustV3(t, s.addr, user("acme", "sub"), subSecret, "sub", false)
	sub.sub(t, "queue/#", 1)
	sub.Disconnect(100)
	pub.pub(t, "queue/a", "while away", 1, false)
	back := mustV3(t, s.addr, user("acme", "sub"), subSecret, "sub", false)
	back.expect(t, "queue/a", "while away")
	back.Disconnect(100)

	// 5: a session expiry interval.
	v5Secret := s.device("acme", "v5sub")
	expiry := func(c *paho.Connect) {
		c.CleanStart = false
		c.Properties = &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(60)}
	}
	v := mustV5(t, s.addr, user("acme", "v5sub"), v5Secret, "v5sub", expiry)
	v.sub(t, "queue/#", 1)
	v.Disconnect(&paho.Disconnect{})
	pub.pub(t, "queue/b", "v5 while away", 1, false)
	v2 := mustV5(t, s.addr, user("acme", "v5sub"), v5Secret, "v5sub", expiry)
	if !v2.connack.SessionPresent {
		t.Error("CONNACK did not report the session present")
	}
	v2.expect(t, "queue/b", "v5 while away")
}

func TestSharedSubscriptions(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	w1 := mustV5(t, s.addr, user("acme", "w1"), s.device("acme", "w1"), "w1")
	w2 := mustV5(t, s.addr, user("acme", "w2"), s.device("acme", "w2"), "w2")
	w1.sub(t, "$share/workers/jobs/#", 1)
	w2.sub(t, "$share/workers/jobs/#", 1)
	pub := mustV5(t, s.addr, user("acme", "pub"), s.device("acme", "pub"), "pub")
	const n = 20
	for i := range n {
		pub.pub(t, "jobs/x", fmt.Sprint(i), 1, false)
	}
	got := 0
	timeout := time.After(5 * time.Second)
	for got < n {
		select {
		case <-w1.msgs:
		case <-w2.msgs:
		case <-timeout:
			t.Fatalf("the group received %d of %d jobs", got, n)
		}
		got++
	}
	w1.quiet(t, 200*time.Millisecond, "a job delivered twice")
	w2.quiet(t, 10*time.Millisecond, "a job delivered twice")
}

func TestV5Features(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	sub := mustV5(t, s.addr, user("acme", "sub"), s.device("acme", "sub"), "sub")
	pub := mustV5(t, s.addr, user("acme", "pub"), s.device("acme", "pub"), "pub")

	// Subscription identifiers come back on deliveries.
	sctx, cancel := contextWithTimeout()
	defer cancel()
	if _, err := sub.Subscribe(sctx, &paho.Subscribe{
		Properties:    &paho.SubscribeProperties{SubscriptionIdentifier: intp(42)},
		Subscriptions: []paho.SubscribeOptions{{Topic: "req/#", QoS: 1}},
	}); err != nil {
		t.Fatal(err)
	}
	// Request/response: response topic, correlation data and user properties pass through.
	pctx, cancel2 := contextWithTimeout()
	defer cancel2()
	_, err := pub.Publish(pctx, &paho.Publish{Topic: "req/time", QoS: 1, Payload: []byte("now?"), Properties: &paho.PublishProperties{
		ResponseTopic: "resp/pub", CorrelationData: []byte("c-1"), ContentType: "text/plain",
		User: paho.UserProperties{{Key: "k", Value: "v"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	m := sub.expect(t, "req/time", "now?")
	if m.Properties == nil || m.Properties.ResponseTopic != "resp/pub" || string(m.Properties.CorrelationData) != "c-1" ||
		m.Properties.ContentType != "text/plain" || m.Properties.User.Get("k") != "v" {
		t.Errorf("request properties lost: %+v", m.Properties)
	}
	if m.Properties == nil || m.Properties.SubscriptionIdentifier == nil || *m.Properties.SubscriptionIdentifier != 42 {
		t.Errorf("subscription identifier: got %+v, want 42", m.Properties)
	}

	// Topic aliases from the publisher.
	pctx3, cancel3 := contextWithTimeout()
	defer cancel3()
	if _, err := pub.Publish(pctx3, &paho.Publish{Topic: "req/alias", QoS: 1, Payload: []byte("first"),
		Properties: &paho.PublishProperties{TopicAlias: paho.Uint16(1)}}); err != nil {
		t.Fatal(err)
	}
	sub.expect(t, "req/alias", "first")
	if _, err := pub.Publish(pctx3, &paho.Publish{Topic: "", QoS: 1, Payload: []byte("second"),
		Properties: &paho.PublishProperties{TopicAlias: paho.Uint16(1)}}); err != nil {
		t.Fatal(err)
	}
	sub.expect(t, "req/alias", "second")

	// Message expiry: an expired message is not delivered to a session that
	// comes back after it expired.
	if pub.connack.Properties == nil || pub.connack.Properties.MaximumPacketSize == nil || *pub.connack.Properties.MaximumPacketSize != 128*1024 {
		t.Errorf("CONNACK maximum packet size: got %+v, want the plan's 131072", pub.connack.Properties)
	}
}

// TestRetainedDeliveryChecked: a subscription the rules allow does not
// deliver retained messages on topics inside it that the rules deny.
func TestRetainedDeliveryChecked(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	s.rules("acme", deny(tenants.ActionSubscribe, "status/secret"), allow(tenants.ActionAll, "#"))
	pub := mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub")
	pub.pub(t, "status/secret", "hidden", 1, true)
	pub.pub(t, "status/open", "visible", 1, true)
	pub.barrier(t)
	sub := mustV3(t, s.addr, "acme/sub", s.device("acme", "sub"), "sub", true)
	sub.sub(t, "status/#", 1)
	sub.expect(t, "status/open", "visible")
	sub.quiet(t, 300*time.Millisecond, "a retained message on a denied topic")
}

// TestSessionExpiryCapped: a session lives no longer than the tenant's
// max_session_expiry, whatever the client asks for.
func TestSessionExpiryCapped(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	one := int64(1)
	if _, err := s.store.AdminUpdateTenant(ctx, "acme", tenants.AdminTenantUpdate{Quotas: map[string]*int64{"max_session_expiry": &one}}); err != nil {
		t.Fatal(err)
	}
	secret := s.device("acme", "d1")
	keep := func(c *paho.Connect) {
		c.CleanStart = false
		c.Properties = &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(3600)}
	}
	c := mustV5(t, s.addr, "acme/d1", secret, "d1", keep)
	if p := c.connack.Properties; p == nil || p.SessionExpiryInterval == nil || *p.SessionExpiryInterval != 1 {
		t.Errorf("CONNACK session expiry: got %+v, want the quota's 1s", p)
	}
	c.sub(t, "x/#", 1)
	if !broker.HoldsSession(s.hub, "acme", "d1") {
		t.Fatal("the broker holds no session for d1 while it is connected")
	}
	c.Disconnect(&paho.Disconnect{})
	// mochi expires sessions on a one-second tick: the session is gone
	// some seconds after the disconnect, if it is capped.
	eventually(t, 10*time.Second, "the session expired", func() bool { return !broker.HoldsSession(s.hub, "acme", "d1") })
	again := mustV5(t, s.addr, "acme/d1", secret, "d1", keep)
	if again.connack.SessionPresent {
		t.Error("the session outlived max_session_expiry")
	}
}

// TestSessionExpiryCappedAtDisconnect: a client cannot take its session
// past max_session_expiry by raising its expiry in its DISCONNECT.
func TestSessionExpiryCappedAtDisconnect(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	s.setQuota("acme", "max_session_expiry", 1)
	secret := s.device("acme", "d1")
	keep := func(c *paho.Connect) {
		c.CleanStart = false
		c.Properties = &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(3600)}
	}
	c := mustV5(t, s.addr, "acme/d1", secret, "d1", keep)
	c.sub(t, "x/#", 1)
	if !broker.HoldsSession(s.hub, "acme", "d1") {
		t.Fatal("the broker holds no session for d1 while it is connected")
	}
	c.Disconnect(&paho.Disconnect{Properties: &paho.DisconnectProperties{SessionExpiryInterval: paho.Uint32(3600)}})
	// mochi expires sessions on a one-second tick: the session is gone
	// some seconds after the disconnect, if it is capped.
	eventually(t, 10*time.Second, "the session expired", func() bool { return !broker.HoldsSession(s.hub, "acme", "d1") })
	again := mustV5(t, s.addr, "acme/d1", secret, "d1", keep)
	if again.connack.SessionPresent {
		t.Error("the session outlived max_session_expiry: its DISCONNECT raised the expiry")
	}
}

// TestKeepalive: a client that goes quiet past 1.5 times its keepalive is
// dropped, and its Will is published.
func TestKeepalive(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	watcher := mustV5(t, s.addr, "acme/watcher", s.device("acme", "watcher"), "watcher")
	watcher.sub(t, "wills/#", 1)
	conn, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	secret := s.device("acme", "quiet")
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4, Connect: packets.ConnectParams{
		ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 1, ClientIdentifier: "quiet",
		UsernameFlag: true, Username: []byte("acme/quiet"), PasswordFlag: true, Password: []byte(secret),
		WillFlag: true, WillTopic: "wills/quiet", WillPayload: []byte("timed out"),
	}}
	var b bytes.Buffer
	if err := pk.ConnectEncode(&b); err != nil {
		t.Fatal(err)
	}
	conn.Write(b.Bytes())
	watcher.expect(t, "wills/quiet", "timed out")
}
