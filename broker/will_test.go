package broker_test

import (
	"context"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// withWill gives a v5 CONNECT a Will; delay > 0 also keeps the session for
// an hour, so that the Will can wait that long.
func withWill(topic, payload string, retain bool, delay uint32) func(*paho.Connect) {
	return func(c *paho.Connect) {
		c.WillMessage = &paho.WillMessage{Topic: topic, Payload: []byte(payload), QoS: 1, Retain: retain}
		if delay > 0 {
			c.WillProperties = &paho.WillProperties{WillDelayInterval: paho.Uint32(delay)}
			keepSession(c)
		}
	}
}

// TestWillCheckedWhenSent: a Will is checked as it is sent, against the
// rules and the device as they are then, not as they were at CONNECT.
func TestWillCheckedWhenSent(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	watcher := mustV5(t, s.addr, user("acme", "watcher"), s.device("acme", "watcher"), "watcher")
	watcher.sub(t, "status/#", 1)

	// The rule that allowed the Will's topic at CONNECT is revoked.
	revoked := mustV5(t, s.addr, user("acme", "revoked"), s.device("acme", "revoked"), "revoked", withWill("status/revoked", "gone", false, 0))
	s.rules("acme", deny(tenants.ActionPublish, "status/revoked"), allow(tenants.ActionAll, "#"))
	revoked.conn.Close()
	watcher.quiet(t, 300*time.Millisecond, "the Will of a topic denied since CONNECT")

	// A delayed Will is checked when its delay has passed.
	later := mustV5(t, s.addr, user("acme", "later"), s.device("acme", "later"), "later", withWill("status/later", "gone", false, 1))
	later.conn.Close()
	s.rules("acme", deny(tenants.ActionPublish, "status/revoked"), deny(tenants.ActionPublish, "status/later"), allow(tenants.ActionAll, "#"))
	watcher.quiet(t, 1500*time.Millisecond, "a delayed Will whose topic was denied during its delay")

	// A device disabled since it connected sends no Will.
	secret := s.device("acme", "disabled")
	disabled := mustV5(t, s.addr, user("acme", "disabled"), secret, "disabled", withWill("status/disabled", "gone", false, 1))
	disabled.conn.Close()
	no := false
	if _, err := s.store.UpdateDevice(ctx, "acme", "disabled", tenants.DeviceUpdate{Enabled: &no}); err != nil {
		t.Fatal(err)
	}
	watcher.quiet(t, 1500*time.Millisecond, "the delayed Will of a device disabled during its delay")

	// An allowed one still goes out.
	fine := mustV5(t, s.addr, user("acme", "fine"), s.device("acme", "fine"), "fine", withWill("status/fine", "gone", false, 0))
	fine.conn.Close()
	watcher.expect(t, "status/fine", "gone")
}

// TestWillReservedTopics: a Will never goes to a $-topic, not even when a
// rule would allow publishing there; a device's own PUBLISH does not
// either.
func TestWillReservedTopics(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	s.rules("acme", allow(tenants.ActionAll, "$events/#"), allow(tenants.ActionAll, "$roost/#"), allow(tenants.ActionAll, "#"))
	secret := s.device("acme", "d")
	for _, topic := range []string{"$events/presence/d", "$SYS/broker/uptime", "$roost/anything"} {
		if code := refusedV5(t, s.addr, user("acme", "d"), secret, "d", withWill(topic, "spoofed", false, 0)); code != 0x87 {
			t.Errorf("Will on %s: CONNACK 0x%02x, want 0x87", topic, code)
		}
	}
	d := mustV5(t, s.addr, user("acme", "d"), secret, "d")
	for _, topic := range []string{"$events/presence/d", "$SYS/broker/uptime", "$roost/anything"} {
		if r := d.pub(t, topic, "spoofed", 1, false); r.ReasonCode != 0x87 {
			t.Errorf("PUBLISH to %s: PUBACK 0x%02x, want 0x87", topic, r.ReasonCode)
		}
	}
}

// TestWillQuotas: a Will is a publish under the tenant's quotas: a
// retained one counts against max_retained, and it is metered.
func TestWillQuotas(t *testing.T) {
	ev := events.NewMemory(1000)
	s := newStack(t, func(c *broker.Config) { c.Events = ev; c.UsageInterval = 50 * time.Millisecond })
	s.tenant("acme")
	s.setQuota("acme", "max_retained", 1)
	pub := mustV5(t, s.addr, user("acme", "pub"), s.device("acme", "pub"), "pub")
	pub.pub(t, "status/first", "kept", 1, true)
	pub.barrier(t)

	dying := mustV5(t, s.addr, user("acme", "dying"), s.device("acme", "dying"), "dying", withWill("status/dying", "gone", true, 0))
	dying.conn.Close()
	eventually(t, 5*time.Second, "a max_retained event for the Will", func() bool {
		for _, e := range ev.Recent("acme") {
			if e.Type == events.QuotaExceeded && e.Quota == "max_retained" && e.Device == "dying" {
				return true
			}
		}
		return false
	})
	late := mustV5(t, s.addr, user("acme", "late"), s.device("acme", "late"), "late")
	late.sub(t, "status/#", 1)
	late.expect(t, "status/first", "kept")
	late.quiet(t, 300*time.Millisecond, "a retained Will over max_retained")

	// One within the quota is published, and metered.
	plain := mustV5(t, s.addr, user("acme", "plain"), s.device("acme", "plain"), "plain", withWill("status/plain", "gone", false, 0))
	plain.conn.Close()
	late.expect(t, "status/plain", "gone")
	// In: the retained message, the barrier and the Will; not the Will
	// refused.
	eventually(t, 5*time.Second, "the Will metered", func() bool { return usageIn(t, s, "acme") == 3 })
}

func usageIn(t *testing.T, s *stack, tenant string) int64 {
	t.Helper()
	hour := time.Now().UTC().Truncate(time.Hour)
	got, err := s.store.Usage(ctx, tenant, hour.Add(-time.Hour), time.Now().Add(time.Hour), tenants.Daily)
	if err != nil {
		t.Fatal(err)
	}
	var u tenants.Usage
	for _, b := range got {
		u.Add(b.Usage)
	}
	return u.MessagesIn
}

// TestWillPersisted: a Will is stored for the persistent sessions it is
// for before it is routed, like any QoS 1 publish, so an offline
// subscriber gets it after a restart; and a Will waiting out its delay is
// kept in its session's record through a restart.
func TestWillPersisted(t *testing.T) {
	d := newDurable(t)
	d.tenant("acme")
	subSecret := d.device("acme", "sub")
	sub := mustV5(t, d.addr, user("acme", "sub"), subSecret, "sub", keepSession)
	sub.sub(t, "status/#", 1)
	sub.Disconnect(&paho.Disconnect{})

	dying := mustV5(t, d.addr, user("acme", "dying"), d.device("acme", "dying"), "dying", withWill("status/dying", "gone", false, 0))
	dying.conn.Close()
	slow := mustV5(t, d.addr, user("acme", "slow"), d.device("acme", "slow"), "slow", withWill("status/slow", "late", false, 2))
	// The slow Will is due 2s after the broker saw its connection go,
	// which is after left: however long the restart takes, it must not
	// come sooner.
	left := time.Now()
	slow.conn.Close()
	eventually(t, 5*time.Second, "both devices gone", func() bool {
		return len(d.hub.Connections("acme", "dying"))+len(d.hub.Connections("acme", "slow")) == 0
	})
	// The broker has stored the slow device's Will, and queued the dying
	// one's for sub, before the restart.
	willStored(t, d, "acme", "slow")
	eventually(t, 5*time.Second, "the dying device's Will queued for sub", func() bool {
		return d.hub.Queue("acme", "sub").Queued >= 1
	})

	d.restart(t)
	back := mustV5(t, d.addr, user("acme", "sub"), subSecret, "sub", keepSession)
	back.expect(t, "status/dying", "gone")
	back.expect(t, "status/slow", "late")
	if waited := time.Since(left); waited < 2*time.Second-50*time.Millisecond {
		t.Errorf("a Will delayed by 2s came %v after its device left", waited)
	}
	back.quiet(t, 300*time.Millisecond, "a Will sent twice")
}

// TestDelayedWillCancelled: a connection for the session before the
// delay has passed drops the Will, also one kept through a restart.
func TestDelayedWillCancelled(t *testing.T) {
	d := newDurable(t)
	d.tenant("acme")
	watcher := mustV5(t, d.addr, user("acme", "watcher"), d.device("acme", "watcher"), "watcher", keepSession)
	watcher.sub(t, "status/#", 1)
	secret := d.device("acme", "d")
	// A delay of 3s: the device's new connection must take the session
	// over within it, on a machine busy with other tests.
	c := mustV5(t, d.addr, user("acme", "d"), secret, "d", withWill("status/d", "gone", false, 3))
	c.conn.Close()
	mustV5(t, d.addr, user("acme", "d"), secret, "d", keepSession)
	watcher.quiet(t, 3500*time.Millisecond, "the Will of a device back within its delay")

	// 4s: the restart and the new connection must come within it (past
	// it, the Will would go out before watcher2 subscribes, unseen).
	c = mustV5(t, d.addr, user("acme", "d"), secret, "d", withWill("status/d", "gone", false, 4))
	c.conn.Close()
	willStored(t, d, "acme", "d") // or the restart would have none to keep
	d.restart(t)
	mustV5(t, d.addr, user("acme", "d"), secret, "d", keepSession)
	watcher = mustV5(t, d.addr, user("acme", "watcher2"), d.device("acme", "watcher2"), "watcher2")
	watcher.sub(t, "status/#", 1)
	watcher.quiet(t, 4500*time.Millisecond, "the Will kept through a restart, of a device back within its delay")
}

// TestHeldWillsBounded: a tenant holds at most max_connections Wills
// waiting out their delay; a device going away past that has its Will
// sent at once rather than held.
func TestHeldWillsBounded(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	s.setQuota("acme", "max_connections", 2)
	watcher := mustV5(t, s.addr, user("acme", "watcher"), s.device("acme", "watcher"), "watcher")
	watcher.sub(t, "status/#", 1)
	for _, name := range []string{"a", "b"} {
		c := mustV5(t, s.addr, user("acme", name), s.device("acme", name), name, withWill("status/"+name, "gone", false, 3600))
		c.conn.Close()
		eventually(t, 5*time.Second, name+" gone", func() bool { return len(s.hub.Connections("acme", name)) == 0 })
	}
	watcher.quiet(t, 300*time.Millisecond, "Wills delayed by an hour")
	c := mustV5(t, s.addr, user("acme", "c"), s.device("acme", "c"), "c", withWill("status/c", "gone", false, 3600))
	c.conn.Close()
	watcher.expect(t, "status/c", "gone")
}

// TestDelayedWillTakeover: a connection that takes the session over is a
// connection for it within the delay: the old connection's Will is not
// sent [MQTT-3.1.3-9].
func TestDelayedWillTakeover(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	watcher := mustV5(t, s.addr, user("acme", "watcher"), s.device("acme", "watcher"), "watcher")
	watcher.sub(t, "status/#", 1)
	secret := s.device("acme", "d")
	mustV5(t, s.addr, user("acme", "d"), secret, "d", withWill("status/d", "gone", false, 1))
	mustV5(t, s.addr, user("acme", "d"), secret, "d", keepSession)
	watcher.quiet(t, 2500*time.Millisecond, "the Will of a session taken over within its delay")
}

// willStored waits until the store holds a Will waiting out its delay
// for the client's session.
func willStored(t *testing.T, d *durable, tenant, clientID string) {
	t.Helper()
	eventually(t, 5*time.Second, "the Will of "+clientID+" stored", func() bool {
		ss, err := d.store.Sessions(context.Background(), tenant)
		if err != nil {
			return false
		}
		for _, s := range ss {
			if s.ClientID == clientID && s.Will != nil {
				return true
			}
		}
		return false
	})
}
