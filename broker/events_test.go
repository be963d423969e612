package broker_test

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/events"
)

// TestLifecycleEvents: connects, subscriptions, disconnects and refused
// logins become events of their own tenant only; made-up tenants leave no
// trace.
func TestLifecycleEvents(t *testing.T) {
	log := events.NewMemory(100)
	s := newStack(t, func(c *broker.Config) { c.Events = log })
	s.tenant("alpha")
	s.tenant("bravo")
	secret := s.device("alpha", "d1")
	s.device("bravo", "d1")

	c := mustV5(t, s.addr, "alpha/d1", secret, "d1")
	c.sub(t, "a/#", 1)
	uctx, cancel := contextWithTimeout()
	defer cancel()
	if _, err := c.Unsubscribe(uctx, &paho.Unsubscribe{Topics: []string{"a/#"}}); err != nil {
		t.Fatal(err)
	}
	c.Disconnect(&paho.Disconnect{})
	eventually(t, 2*time.Second, "disconnected", func() bool { return len(log.Recent("alpha")) == 4 })
	refusedV5(t, s.addr, "alpha/d1", "wrong", "d1")
	refusedV5(t, s.addr, "made-up/d1", "wrong", "d1")

	var got []string
	eventually(t, 2*time.Second, "five events", func() bool {
		got = got[:0]
		for _, e := range log.Recent("alpha") {
			got = append(got, e.Type)
		}
		return len(got) == 5
	})
	if want := "connected subscribed unsubscribed disconnected auth_failed"; strings.Join(got, " ") != want {
		t.Errorf("alpha's events: got %q, want %q", got, want)
	}
	for _, e := range log.Recent("alpha") {
		if e.Tenant != "alpha" || e.Device != "d1" || e.Time.IsZero() {
			t.Errorf("event %+v: want tenant alpha, device d1, a time", e)
		}
		if e.Type == events.Subscribed && (len(e.Filters) != 1 || e.Filters[0] != "a/#") {
			t.Errorf("subscribed event filters: %v", e.Filters)
		}
		if e.Type == events.AuthFailed && e.Reason != "bad username or password" {
			t.Errorf("auth failure reason: %q", e.Reason)
		}
	}
	if b := log.Recent("bravo"); len(b) != 0 {
		t.Errorf("bravo got alpha's events: %+v", b)
	}
	if m := log.Recent("made-up"); len(m) != 0 {
		t.Errorf("a made-up tenant has events: %+v", m)
	}
}

// TestDisconnectedReason: a disconnected event always says why. A client
// that sent DISCONNECT "client disconnected", with its MQTT 5 reason code
// when that is not 0; a connection that just ends, what ended it.
func TestDisconnectedReason(t *testing.T) {
	log := events.NewMemory(100)
	s := newStack(t, func(c *broker.Config) { c.Events = log })
	s.tenant("acme")
	v5With := func(code byte) func(t *testing.T, device, secret string) {
		return func(t *testing.T, device, secret string) {
			mustV5(t, s.addr, user("acme", device), secret, device).Disconnect(&paho.Disconnect{ReasonCode: code})
		}
	}
	for _, tc := range []struct {
		name, device string
		leave        func(t *testing.T, device, secret string)
		want         string // "": any but "client disconnected"
	}{
		{"MQTT 5, normal disconnection", "d1", v5With(0), "client disconnected"},
		{"MQTT 5, with the Will", "d2", v5With(0x04), "client disconnected (reason code 0x04, disconnect with will message)"},
		{"MQTT 5, an error", "d3", v5With(0x80), "client disconnected (reason code 0x80)"},
		{"MQTT 3.1.1", "d4", func(t *testing.T, device, secret string) {
			mustV3(t, s.addr, user("acme", device), secret, device, true).Disconnect(100)
		}, "client disconnected"},
		{"connection closed without DISCONNECT", "d5", func(t *testing.T, device, secret string) {
			conn, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := connectV5(t, conn, user("acme", device), secret, device); err != nil {
				t.Fatal(err)
			}
			conn.Close()
		}, ""}, // EOF, or a reset: the socket's error
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.leave(t, tc.device, s.device("acme", tc.device))
			var got events.Event
			eventually(t, 5*time.Second, tc.device+"'s disconnected event", func() bool {
				for _, e := range log.Recent("acme") {
					if e.Type == events.Disconnected && e.Device == tc.device {
						got = e
						return true
					}
				}
				return false
			})
			switch {
			case tc.want == "" && (got.Reason == "" || strings.HasPrefix(got.Reason, "client disconnected")):
				t.Errorf("%s's disconnected event: reason %q, want the connection's error", tc.device, got.Reason)
			case tc.want != "" && got.Reason != tc.want:
				t.Errorf("%s's disconnected event: reason %q, want %q", tc.device, got.Reason, tc.want)
			}
		})
	}
}
