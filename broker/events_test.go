package broker_test

import (
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
