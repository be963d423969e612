package broker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

// TestWatch: a watcher sees its own tenant's messages on its filter,
// retained ones first, and never another tenant's; it stops when its
// context ends.
func TestWatch(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	s.tenant("other")
	pub := mustV5(t, s.addr, user("acme", "d1"), s.device("acme", "d1"), "d1")
	stranger := mustV5(t, s.addr, user("other", "d1"), s.device("other", "d1"), "d1")
	pub.pub(t, "state/d1", "retained", 1, true)
	pub.barrier(t) // routed (and retained) before the watch starts, not delivered to it live as well

	got := make(chan dataplane.Message, 10)
	ctx, cancel := context.WithCancel(context.Background())
	if err := s.hub.Watch(ctx, "acme", "alice", "state/#", func(m dataplane.Message) { got <- m }); err != nil {
		t.Fatal(err)
	}
	next := func() dataplane.Message {
		t.Helper()
		select {
		case m := <-got:
			return m
		case <-time.After(5 * time.Second):
			t.Fatal("the watcher got nothing")
		}
		return dataplane.Message{}
	}
	if m := next(); m.Topic != "state/d1" || string(m.Payload) != "retained" || !m.Retain {
		t.Errorf("retained: %+v", m)
	}
	stranger.pub(t, "state/d1", "other tenant", 1, false)
	pub.pub(t, "other/x", "not matching", 1, false)
	pub.pub(t, "state/d1", "live", 1, false)
	if m := next(); string(m.Payload) != "live" || m.QoS != 1 || m.Retain {
		t.Errorf("live: %+v", m)
	}
	cancel()
	eventually(t, 5*time.Second, "the watch to end", func() bool {
		pub.pub(t, "state/d1", "after", 0, false)
		select {
		case <-got:
			return false // still delivering
		case <-time.After(50 * time.Millisecond):
			return true
		}
	})
	for _, bad := range []string{"a/#/b", "$SYS/#", ""} {
		var fe *tenants.FieldError
		if err := s.hub.Watch(context.Background(), "acme", "alice", bad, func(dataplane.Message) {}); !errors.As(err, &fe) {
			t.Errorf("filter %q: %v", bad, err)
		}
	}
	if err := s.hub.Watch(context.Background(), "nobody", "alice", "#", func(dataplane.Message) {}); !errors.Is(err, tenants.ErrNotFound) {
		t.Errorf("unknown tenant: %v", err)
	}
}

// TestShutdownWills: a closing hub tells v5 clients 0x8B and withdraws
// their Wills, unless WillsOnShutdown asks for them. (Sent, the Will is
// mochi's to send, and mochi skips it when the client's read loop sees the
// close between two packets rather than inside a read: so "sent" is asked
// of three tries, "withdrawn" of every one.)
func TestShutdownWills(t *testing.T) {
	shutdown := func(t *testing.T, send bool) (willSent bool) {
		s := newStack(t, func(c *broker.Config) { c.WillsOnShutdown = send })
		s.tenant("acme")
		wills := make(chan dataplane.Message, 4)
		if err := s.hub.Watch(context.Background(), "acme", "alice", "wills/#", func(m dataplane.Message) { wills <- m }); err != nil {
			t.Fatal(err)
		}
		c := mustV5(t, s.addr, user("acme", "d1"), s.device("acme", "d1"), "d1", func(cp *paho.Connect) {
			cp.WillMessage = &paho.WillMessage{Topic: "wills/d1", QoS: 1, Payload: []byte("gone")}
		})
		s.hub.Close() // returns once every connection's goroutine, Will included, is done
		select {
		case d := <-c.discs:
			if d.ReasonCode != 0x8B {
				t.Errorf("DISCONNECT %#x, want 0x8B", d.ReasonCode)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no DISCONNECT")
		}
		select {
		case <-wills:
			return true
		case <-time.After(100 * time.Millisecond):
			return false
		}
	}
	t.Run("withdrawn", func(t *testing.T) {
		for range 3 {
			if shutdown(t, false) {
				t.Fatal("the shutdown sent a Will")
			}
		}
	})
	t.Run("sent", func(t *testing.T) {
		for range 3 {
			if shutdown(t, true) {
				return
			}
		}
		t.Error("WillsOnShutdown: no Will sent in three shutdowns")
	})
}

// TestWatchBounds: live views take nothing from the devices' connections,
// and are bounded per person and per tenant; another tenant's bound is its
// own.
func TestWatchBounds(t *testing.T) {
	s := newStack(t, func(c *broker.Config) { c.MaxWatches, c.MaxWatchesEach = 5, 2 })
	s.tenant("acme")
	s.tenant("other")
	s.setQuota("acme", "max_connections", 2)
	watch := func(tenant, who string) (context.CancelFunc, error) {
		wctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		return cancel, s.hub.Watch(wctx, tenant, who, "#", func(dataplane.Message) {})
	}
	over := func(err error, quota string) bool {
		var qe *tenants.QuotaError
		return errors.As(err, &qe) && qe.Quota == quota
	}
	var alices []context.CancelFunc
	for range 2 {
		cancel, err := watch("acme", "alice")
		if err != nil {
			t.Fatal(err)
		}
		alices = append(alices, cancel)
	}
	if _, err := watch("acme", "alice"); !over(err, "live_views_each") {
		t.Fatalf("alice's third view: got %v, want live_views_each", err)
	}
	for _, who := range []string{"bob", "bob", "carol"} {
		if _, err := watch("acme", who); err != nil {
			t.Fatalf("%s's view: %v", who, err)
		}
	}
	if _, err := watch("acme", "carol"); !over(err, "live_views") {
		t.Fatalf("the tenant's sixth view: got %v, want live_views", err)
	}
	if _, err := watch("other", "alice"); err != nil {
		t.Fatalf("alice's view of another tenant: %v", err)
	}
	// Five views open, and both of the devices max_connections allows
	// still connect.
	mustV5(t, s.addr, user("acme", "d1"), s.device("acme", "d1"), "d1")
	mustV5(t, s.addr, user("acme", "d2"), s.device("acme", "d2"), "d2")
	if code := refusedV5(t, s.addr, user("acme", "d3"), s.device("acme", "d3"), "d3"); code != 0x97 {
		t.Errorf("a third device over max_connections=2: 0x%02x, want 0x97", code)
	}
	// A view closed makes room for another.
	alices[0]()
	eventually(t, 5*time.Second, "alice's view released", func() bool {
		cancel, err := watch("acme", "alice")
		if err == nil {
			cancel()
		}
		return err == nil
	})
}
