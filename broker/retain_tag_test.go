package broker_test

import (
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/tenants"
)

// internalKeys are the hub's own tags among property keys.
func internalKeys(keys []string) []string {
	var out []string
	for _, k := range keys {
		if strings.HasPrefix(k, "\x00roost-") {
			out = append(out, k)
		}
	}
	return out
}

// untaggedRetained fails unless the hub's broker of tenant retains a
// message on topic, without an internal tag.
func untaggedRetained(t *testing.T, hub *broker.Hub, tenant, topic string) {
	t.Helper()
	user, ok := broker.RetainedUserKeys(hub, tenant, topic)
	if !ok {
		t.Fatalf("no message retained on %s", topic)
	}
	if keys := internalKeys(user); len(keys) > 0 {
		t.Errorf("the message retained on %s carries the internal tags %q", topic, keys)
	}
}

// expectOnce waits for the retained message on topic with payload, with
// no internal property, and fails if another comes.
func expectOnce(t *testing.T, c *v5, topic, payload string) {
	t.Helper()
	m := c.expect(t, topic, payload)
	if !m.Retain {
		t.Errorf("%s %q arrived without its retain flag", topic, payload)
	}
	if m.Properties != nil {
		var user []string
		for _, u := range m.Properties.User {
			user = append(user, u.Key)
		}
		if keys := internalKeys(user); len(keys) > 0 {
			t.Errorf("%s %q arrived with the internal properties %q", topic, payload, keys)
		}
	}
	c.quiet(t, 300*time.Millisecond, "a second copy of the retained message")
}

// TestRetainedWithoutTag: a QoS 1 retained publish that persistent
// sessions queue is tagged on its way to them (see tag); mochi retains it
// as the hooks return it, and the message it keeps for later subscribers
// must not carry the tag. A later subscriber, clean or persistent (one of
// the sessions the publish was queued for among them), gets it once,
// without an internal property; so does one after a restart, from the
// store.
func TestRetainedWithoutTag(t *testing.T) {
	d := newDurable(t)
	d.tenant("acme")
	secret := d.device("acme", "d", tenants.ClientIDsAny)
	keeper := mustV5(t, d.addr, user("acme", "d"), secret, "keeper", keepSession)
	keeper.sub(t, "cfg/#", 1)
	pub := mustV5(t, d.addr, user("acme", "d"), secret, "pub")
	pub.pub(t, "cfg/led", "on", 1, true)
	keeper.expect(t, "cfg/led", "on")
	untaggedRetained(t, d.hub, "acme", "cfg/led")

	late := mustV5(t, d.addr, user("acme", "d"), secret, "late", keepSession)
	late.sub(t, "cfg/#", 1)
	expectOnce(t, late, "cfg/led", "on")
	clean := mustV5(t, d.addr, user("acme", "d"), secret, "clean")
	clean.sub(t, "cfg/led", 2)
	expectOnce(t, clean, "cfg/led", "on")
	keeper.sub(t, "cfg/led", 1) // a second filter: the retained message again
	expectOnce(t, keeper, "cfg/led", "on")
	eventually(t, 5*time.Second, "the keeper's queue emptied", func() bool { return d.hub.Queue("acme", "keeper").Queued == 0 })

	for _, c := range []*v5{keeper, pub, late, clean} {
		c.Disconnect(&paho.Disconnect{})
	}
	d.restart(t)
	after := mustV5(t, d.addr, user("acme", "d"), secret, "after", keepSession)
	after.sub(t, "cfg/#", 1)
	expectOnce(t, after, "cfg/led", "on")
	untaggedRetained(t, d.hub, "acme", "cfg/led")
}

// TestRetainedWhileRouting: a subscriber that subscribes while a retained
// publish is still being routed (mochi retained it, its tag is still
// kept) gets the retained copy as a retained message of its own: not
// tagged, not taken for the copy the publish queued for its session (the
// persistent keeper: acknowledged, that would delete the queued copy the
// live delivery is still to map to). Then the live delivery comes, and
// each arrives once.
func TestRetainedWhileRouting(t *testing.T) {
	d := newDurable(t)
	d.tenant("acme")
	secret := d.device("acme", "d", tenants.ClientIDsAny)
	keeper := mustV5(t, d.addr, user("acme", "d"), secret, "keeper", keepSession)
	keeper.sub(t, "cfg/#", 1)
	pub := mustV5(t, d.addr, user("acme", "d"), secret, "pub")
	held, release, deliveries := broker.PauseRetained(d.hub, "acme")
	t.Cleanup(release)

	published := make(chan error, 1)
	go func() {
		pctx, cancel := contextWithTimeout()
		defer cancel()
		_, err := pub.Publish(pctx, &paho.Publish{Topic: "cfg/led", Payload: []byte("on"), QoS: 1, Retain: true})
		published <- err
	}()
	select {
	case <-held:
	case <-time.After(5 * time.Second):
		t.Fatal("the retained publish was not retained within 5s")
	}
	// The publish is retained, not yet routed: its tag is kept.
	if n := broker.Routing(d.hub, "acme"); n != 1 {
		t.Fatalf("%d publishes being routed, want the retained one", n)
	}
	keeper.sub(t, "cfg/led", 1)
	got := keeper.expect(t, "cfg/led", "on")
	if !got.Retain {
		t.Fatal("the first copy the keeper got is not the retained one")
	}
	select {
	case dl := <-deliveries:
		if dl.Tagged || dl.Mapped {
			t.Errorf("the retained copy for the keeper: tagged %t, taken for its queued copy %t; want neither", dl.Tagged, dl.Mapped)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the retained delivery was not seen")
	}
	late := mustV5(t, d.addr, user("acme", "d"), secret, "late", keepSession)
	late.sub(t, "cfg/#", 1)
	expectOnce(t, late, "cfg/led", "on")
	select {
	case dl := <-deliveries:
		if dl.Tagged || dl.Mapped {
			t.Errorf("the retained copy for a later session: tagged %t, taken for a queued copy %t; want neither", dl.Tagged, dl.Mapped)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the retained delivery to the later session was not seen")
	}

	release()
	if err := <-published; err != nil {
		t.Fatalf("the retained publish: %v", err)
	}
	live := keeper.expect(t, "cfg/led", "on")
	if live.Retain {
		t.Error("the live delivery to the keeper came with the retain flag")
	}
	keeper.quiet(t, 300*time.Millisecond, "a third copy for the keeper")
	eventually(t, 5*time.Second, "the keeper's queue emptied", func() bool { return d.hub.Queue("acme", "keeper").Queued == 0 })
	untaggedRetained(t, d.hub, "acme", "cfg/led")
}

// TestSpreadRetainedWithoutTag: where persistent sessions live on any
// node, a retained publish queued for a persistent session reaches the
// other node tagged as a message from another node; neither node retains
// a tag, and a persistent subscriber arriving on the other node gets the
// message once, without an internal property.
func TestSpreadRetainedWithoutTag(t *testing.T) {
	s := newSpread(t)
	s.tenant("acme")
	secret := s.device("acme", "d", tenants.ClientIDsAny)
	keeper := mustV5(t, s.addr, user("acme", "d"), secret, "keeper", keepSession)
	keeper.sub(t, "cfg/#", 1)
	// The other node runs the tenant before the message is retained: it
	// learns it through its inbox.
	late := mustV5(t, s.b.addr, user("acme", "d"), secret, "late", keepSession)
	late.sub(t, "other/#", 1)
	pub := mustV5(t, s.addr, user("acme", "d"), secret, "pub")
	pub.pub(t, "cfg/led", "on", 1, true)
	keeper.expect(t, "cfg/led", "on")
	untaggedRetained(t, s.hub, "acme", "cfg/led")
	eventually(t, 5*time.Second, "the retained message on the other node", func() bool {
		_, ok := broker.RetainedUserKeys(s.b.hub, "acme", "cfg/led")
		return ok
	})
	// Retained on the other node, untagged (mochi keeps it as it came,
	// then runs the hook that untags it), and routed there: both are
	// done under the injection, which this waits for; and late's new
	// subscription must come after the routing, or it gets a live copy
	// too.
	broker.RemoteRouted(s.b.hub, "acme")
	untaggedRetained(t, s.b.hub, "acme", "cfg/led")
	late.sub(t, "cfg/#", 1)
	expectOnce(t, late, "cfg/led", "on")
	keeper.quiet(t, 300*time.Millisecond, "a second copy for the keeper")
}
