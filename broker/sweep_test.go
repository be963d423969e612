package broker_test

import (
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// Expiry runs only while something may expire (sweep.go): each kind of
// thing that expires must wake it on its own, with nothing else going on in
// the tenant.

// TestRetainedMessageExpires: a retained message past its message expiry
// interval is not sent to a new subscriber; one without is.
func TestRetainedMessageExpires(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	pub := mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub")
	pctx, cancel := contextWithTimeout()
	defer cancel()
	if _, err := pub.Publish(pctx, &paho.Publish{Topic: "r/brief", QoS: 1, Retain: true, Payload: []byte("brief"),
		Properties: &paho.PublishProperties{MessageExpiry: paho.Uint32(1)}}); err != nil {
		t.Fatal(err)
	}
	pub.pub(t, "r/lasting", "lasting", 1, true)
	time.Sleep(3500 * time.Millisecond)
	sub := mustV5(t, s.addr, "acme/sub", s.device("acme", "sub"), "sub")
	sub.sub(t, "r/#", 1)
	sub.expect(t, "r/lasting", "lasting")
	sub.quiet(t, 300*time.Millisecond, "an expired retained message")
}

// TestQueuedMessageExpires: a message queued for a session whose client is
// away is not delivered once its message expiry interval has passed; one
// without is.
func TestQueuedMessageExpires(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	secret := s.device("acme", "away")
	keep := func(c *paho.Connect) {
		c.CleanStart = false
		c.Properties = &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(3600)}
	}
	away := mustV5(t, s.addr, "acme/away", secret, "away", keep)
	away.sub(t, "q/#", 1)
	away.Disconnect(&paho.Disconnect{})
	pub := mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub")
	pctx, cancel := contextWithTimeout()
	defer cancel()
	if _, err := pub.Publish(pctx, &paho.Publish{Topic: "q/brief", QoS: 1, Payload: []byte("brief"),
		Properties: &paho.PublishProperties{MessageExpiry: paho.Uint32(1)}}); err != nil {
		t.Fatal(err)
	}
	pub.pub(t, "q/lasting", "lasting", 1, false)
	time.Sleep(3500 * time.Millisecond)
	back := mustV5(t, s.addr, "acme/away", secret, "away", keep)
	if !back.connack.SessionPresent {
		t.Fatal("the session did not wait for its client")
	}
	back.expect(t, "q/lasting", "lasting")
	back.quiet(t, 300*time.Millisecond, "an expired queued message")
}
