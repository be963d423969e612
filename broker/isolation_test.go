package broker_test

import (
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"
)

// TestTenantsNeverMeet: two tenants with the same device names, client ids
// and topics. Nothing one does reaches the other: not messages, not
// retained messages, not sessions, not Wills, whatever the filter.
func TestTenantsNeverMeet(t *testing.T) {
	s := newStack(t)
	s.tenant("alpha")
	s.tenant("bravo")
	secrets := map[string]map[string]string{}
	for _, tn := range []string{"alpha", "bravo"} {
		secrets[tn] = map[string]string{}
		for _, d := range []string{"d1", "spy", "spy3"} {
			secrets[tn][d] = s.device(tn, d)
		}
	}
	// Bravo listens with every filter that could reach further.
	filters := []string{"#", "+/#", "$SYS/#", "$share/g/#", "$SHARE/g/#", "+", "shared/+"}
	spy := mustV5(t, s.addr, user("bravo", "spy"), secrets["bravo"]["spy"], "spy")
	for _, f := range filters {
		spy.sub(t, f, 2) // refusals are fine too: nothing may arrive either way
	}
	spy3 := mustV3(t, s.addr, user("bravo", "spy3"), secrets["bravo"]["spy3"], "spy3", true)
	for _, f := range []string{"#", "$SYS/#", "$share/g/#"} {
		spy3.subCode(t, f, 1)
	}

	// Alpha's device d1 with client id d1: persistent session, retained
	// messages, QoS 0/1/2, and a Will.
	a := mustV5(t, s.addr, user("alpha", "d1"), secrets["alpha"]["d1"], "d1", func(c *paho.Connect) {
		c.CleanStart = false
		c.Properties = &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(60)}
		c.WillMessage = &paho.WillMessage{Topic: "shared/will", Payload: []byte("alpha will")}
	})
	a.sub(t, "shared/inbox", 1)
	for qos := byte(0); qos <= 2; qos++ {
		a.pub(t, "shared/topic", "alpha", qos, false)
	}
	a.pub(t, "shared/retained", "alpha retained", 1, true)
	a.conn.Close() // the Will fires inside alpha only

	// Bravo's own d1, same client id: its session must be fresh, and it must
	// see neither alpha's retained message nor its queued messages.
	b := mustV5(t, s.addr, user("bravo", "d1"), secrets["bravo"]["d1"], "d1", func(c *paho.Connect) {
		c.CleanStart = false
		c.Properties = &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(60)}
	})
	if b.connack.SessionPresent {
		t.Error("bravo/d1 inherited a session: alpha/d1's")
	}
	b.sub(t, "shared/#", 1)
	b.quiet(t, 300*time.Millisecond, "bravo/d1 after alpha's traffic")
	spy.quiet(t, 300*time.Millisecond, "bravo's spy after alpha's traffic")
	spy3.quiet(t, 10*time.Millisecond, "bravo's 3.1.1 spy after alpha's traffic")

	// A message for alpha/d1's persistent session stays in alpha.
	alphaApp := mustV3(t, s.addr, user("alpha", "spy"), secrets["alpha"]["spy"], "spy", true)
	alphaApp.pub(t, "shared/inbox", "for alpha d1", 1, false)
	b.quiet(t, 200*time.Millisecond, "bravo/d1 while alpha/d1 is offline")
	a2 := mustV5(t, s.addr, user("alpha", "d1"), secrets["alpha"]["d1"], "d1", func(c *paho.Connect) {
		c.CleanStart = false
		c.Properties = &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(60)}
	})
	if !a2.connack.SessionPresent {
		t.Error("alpha/d1 lost its session")
	}
	a2.expect(t, "shared/inbox", "for alpha d1")

	// And the other way: bravo's traffic never reaches alpha's listeners.
	alphaWatch := mustV3(t, s.addr, user("alpha", "spy3"), secrets["alpha"]["spy3"], "spy3", true, func(o *paho3.ClientOptions) {})
	alphaWatch.sub(t, "#", 1)
	alphaWatch.expect(t, "shared/retained", "alpha retained") // its own tenant's, and only that
	b.pub(t, "shared/topic", "bravo", 1, true)
	alphaWatch.quiet(t, 300*time.Millisecond, "alpha's # after bravo's publish")
	spy.expect(t, "shared/topic", "bravo") // bravo's own spy does see it
}

// TestOtherTenantsCredentials: a device secret opens only its own device.
func TestOtherTenantsCredentials(t *testing.T) {
	s := newStack(t)
	s.tenant("alpha")
	s.tenant("bravo")
	alphaSecret := s.device("alpha", "d1")
	s.device("bravo", "d1")
	if code := refusedV5(t, s.addr, user("bravo", "d1"), alphaSecret, "d1"); code != 0x86 {
		t.Errorf("bravo/d1 with alpha/d1's secret: got 0x%02x, want 0x86", code)
	}
}
