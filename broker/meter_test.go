package broker_test

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/tenants"
)

// TestMeteringExact: N messages of known sizes in, delivered to one
// subscriber, show in the usage store as exactly N in and N out with their
// bytes, within a few seconds; across a restart of the hub the counts go on
// adding up, none lost and none twice.
func TestMeteringExact(t *testing.T) {
	s := newStack(t, func(c *broker.Config) { c.UsageInterval = 100 * time.Millisecond })
	s.tenant("acme")
	s.tenant("other")
	hour := time.Now().UTC().Truncate(time.Hour)
	usage := func(tenant string) tenants.Usage {
		t.Helper()
		var u tenants.Usage
		got, err := s.store.Usage(ctx, tenant, hour.Add(-time.Hour), time.Now().Add(time.Hour), tenants.Daily)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range got {
			u.Add(b.Usage)
		}
		return u
	}
	subSecret, pubSecret := s.device("acme", "sub"), s.device("acme", "pub")
	// Another tenant's traffic must not show in acme's usage.
	op := mustV5(t, s.addr, "other/pub", s.device("other", "pub"), "pub")
	op.pub(t, "x", "not acme's", 1, false)

	// connected is how long the sends' two connections and the idle one
	// were held, at most: from before each dial to after the broker let
	// it go.
	var connected time.Duration
	gone := func(hub *broker.Hub, start time.Time, devices ...string) time.Duration {
		eventually(t, 5*time.Second, "the broker let the connections go", func() bool {
			n := 0
			for _, d := range devices {
				n += len(hub.Connections("acme", d))
			}
			return n == 0
		})
		return time.Since(start)
	}
	send := func(hub *broker.Hub, addr string, n int) (bytes int64) {
		start := time.Now()
		sub := mustV5(t, addr, "acme/sub", subSecret, "sub")
		sub.sub(t, "m/#", 1)
		pub := mustV5(t, addr, "acme/pub", pubSecret, "pub")
		for i := range n {
			p := strings.Repeat("x", 10+i)
			pub.pub(t, "m/a", p, 1, false)
			sub.expect(t, "m/a", p)
			bytes += int64(len(p))
		}
		sub.Disconnect(&paho.Disconnect{})
		pub.Disconnect(&paho.Disconnect{})
		connected += 2 * gone(hub, start, "sub", "pub")
		return bytes
	}
	const n1, n2 = 37, 13
	b1 := send(s.hub, s.addr, n1)
	want := tenants.Usage{MessagesIn: n1, MessagesOut: n1, BytesIn: b1, BytesOut: b1}
	eventually(t, 5*time.Second, "usage recorded", func() bool {
		u := usage("acme")
		return u.MessagesIn == want.MessagesIn && u.MessagesOut == want.MessagesOut && u.BytesIn == want.BytesIn && u.BytesOut == want.BytesOut
	})
	if u := usage("acme"); u.PeakConnections != 2 {
		t.Errorf("peak connections %d, want 2", u.PeakConnections)
	}

	// The hub restarts: what it counted is recorded once, then it counts on.
	s.hub.Close()
	hub, addr := serveHub(t, broker.Config{Directory: s.store, Changes: s.store.Changes(), Usage: s.store,
		UsageInterval: 100 * time.Millisecond, Log: slog.New(slog.NewTextHandler(s.logs, nil))})
	b2 := send(hub, addr, n2)
	want = tenants.Usage{MessagesIn: n1 + n2, MessagesOut: n1 + n2, BytesIn: b1 + b2, BytesOut: b1 + b2}
	eventually(t, 5*time.Second, "usage recorded after the restart", func() bool {
		u := usage("acme")
		return u.MessagesIn == want.MessagesIn && u.MessagesOut == want.MessagesOut && u.BytesIn == want.BytesIn && u.BytesOut == want.BytesOut
	})
	// A connection held for 1.5s: connection time adds up (and no
	// message count moves while it idles).
	start := time.Now()
	idle := mustV5(t, addr, "acme/sub", subSecret, "sub")
	time.Sleep(1500 * time.Millisecond)
	idle.Disconnect(&paho.Disconnect{})
	connected += gone(hub, start, "sub")
	eventually(t, 5*time.Second, "connection time recorded", func() bool { return usage("acme").ConnectionSeconds >= 1 })
	// At most the time the connections were held, in whole seconds, and
	// one more: the broker samples the count at each flush.
	most := int64(math.Ceil(connected.Seconds())) + 1
	if u := usage("acme"); u.MessagesIn != want.MessagesIn || u.BytesOut != want.BytesOut || u.ConnectionSeconds > most {
		t.Errorf("usage after idling: %+v, want %+v and 1 to %d connection-seconds (the connections were held %v)", u, want, most, connected.Round(time.Millisecond))
	}
	if u := usage("other"); u.MessagesIn != 1 || u.BytesIn != int64(len("not acme's")) {
		t.Errorf("other's usage %+v, want its one message", u)
	}
}

// TestConnectionTimeAtClose: the connection time not yet due when the hub
// stops is recorded by its Close, whatever the tenant's turn.
func TestConnectionTimeAtClose(t *testing.T) {
	s := newStack(t, func(c *broker.Config) { c.UsageInterval = time.Hour }) // no flush but Close's
	// held bounds the time the tenant's meter can count: from before the
	// tenant (its meter may start with it) to after Close.
	start := time.Now()
	s.tenant("acme")
	c := mustV5(t, s.addr, "acme/dev", s.device("acme", "dev"), "dev")
	time.Sleep(1200 * time.Millisecond) // connection time of a second at least
	s.hub.Close()                       // with c still connected: time is sampled at each flush
	held := time.Since(start)
	_ = c
	u := usageOf(t, s, "acme")
	if most := int64(math.Ceil(held.Seconds())); u.ConnectionSeconds < 1 || u.ConnectionSeconds > most {
		t.Errorf("connection-seconds recorded at Close %d, want 1 to %d (the connection was held at most %v)", u.ConnectionSeconds, most, held.Round(time.Millisecond))
	}
}

// TestUsageRetriedAtClose: what the store refuses at the hub's Close,
// which no later flush will try again, is tried again then, and recorded
// once when the store takes it.
func TestUsageRetriedAtClose(t *testing.T) {
	var store *refusingUsage
	s := newStack(t, func(c *broker.Config) {
		c.UsageInterval = time.Hour // no flush but Close's
		store = &refusingUsage{UsageStore: c.Usage, refusals: 2}
		c.Usage = store
	})
	s.tenant("acme")
	c := mustV5(t, s.addr, "acme/dev", s.device("acme", "dev"), "dev")
	c.pub(t, "m/a", "hello", 1, false) // acknowledged: counted
	s.hub.Close()
	if u := usageOf(t, s, "acme"); u.MessagesIn != 1 || u.BytesIn != int64(len("hello")) {
		t.Errorf("usage recorded at Close %+v, want 1 message in of %d bytes", u, len("hello"))
	}
	if n := store.calls.Load(); n != 3 {
		t.Errorf("%d tries to record the usage, want 3 (two refused)", n)
	}
	if strings.Contains(s.logs.String(), "level=ERROR") {
		t.Errorf("errors logged, want none:\n%s", s.logs)
	}
}

// usageOf sums the tenant's usage recorded in the last hour and this one.
func usageOf(t *testing.T, s *stack, tenant string) tenants.Usage {
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
	return u
}

// refusingUsage is a usage store that refuses its first refusals calls.
type refusingUsage struct {
	broker.UsageStore
	refusals int64
	calls    atomic.Int64
}

func (s *refusingUsage) AddUsage(ctx context.Context, deltas []tenants.UsageDelta) ([]tenants.UsageDelta, error) {
	if s.calls.Add(1) <= s.refusals {
		return deltas, errors.New("refused")
	}
	return s.UsageStore.AddUsage(ctx, deltas)
}

// TestUsageAddedOnceWhenTriedAgain: usage whose commit the store reports
// failed, though it committed (a reply lost), is tried again, by the next
// flush and at Close, and counted once.
func TestUsageAddedOnceWhenTriedAgain(t *testing.T) {
	for _, tc := range []struct {
		name     string
		interval time.Duration
	}{
		{"next flush", 50 * time.Millisecond},
		{"at close", time.Hour}, // no flush but Close's
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The first two commits carrying the message report failure.
			var left, failed atomic.Int64
			left.Store(2)
			s := newStack(t, func(c *broker.Config) {
				c.UsageInterval = tc.interval
				c.Usage.(*tenants.Store).SetUsageCommitFault(func(deltas []tenants.UsageDelta) error {
					if slices.ContainsFunc(deltas, func(d tenants.UsageDelta) bool { return d.MessagesIn > 0 }) && left.Add(-1) >= 0 {
						failed.Add(1)
						return errors.New("commit reply lost")
					}
					return nil
				})
			})
			s.tenant("acme")
			c := mustV5(t, s.addr, "acme/dev", s.device("acme", "dev"), "dev")
			c.pub(t, "m/a", "hello", 1, false)
			if tc.interval < time.Hour {
				eventually(t, 10*time.Second, "two failed commits", func() bool { return failed.Load() == 2 })
			}
			s.hub.Close()
			if n := failed.Load(); n != 2 {
				t.Fatalf("%d commits of the message reported failed, want 2", n)
			}
			if u := usageOf(t, s, "acme"); u.MessagesIn != 1 || u.BytesIn != int64(len("hello")) {
				t.Errorf("usage recorded %+v, want 1 message in of %d bytes (reported failed twice, counted once)", u, len("hello"))
			}
		})
	}
}

// TestUsageTurnsAtTheHour: what is counted just before the top of the
// hour is booked to that hour, and what is counted just after it to the
// next, with no regular flush in between (UsageInterval an hour): the
// hub flushes at the top of the hour, which turns its meters.
func TestUsageTurnsAtTheHour(t *testing.T) {
	// The hub's clock is 5 s short of a top of the hour.
	start := time.Now()
	hour := start.UTC().Truncate(time.Hour).Add(time.Hour)
	offset := hour.Add(-5 * time.Second).Sub(start)
	now := func() time.Time { return time.Now().Add(offset) }
	s := newStack(t, func(c *broker.Config) { c.UsageInterval = time.Hour; c.Now = now })
	s.tenant("acme")
	inHour := func(h time.Time) int64 {
		t.Helper()
		got, err := s.store.Usage(ctx, "acme", hour.Add(-2*time.Hour), hour.Add(2*time.Hour), tenants.Hourly)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range got {
			if b.Start.Equal(h) {
				return b.Usage.MessagesIn
			}
		}
		return 0
	}
	pub := mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub")
	const before, after = 3, 5
	for range before {
		pub.pub(t, "m/a", "before", 1, false)
	}
	if !now().Before(hour) {
		t.Fatalf("the publishes meant for before the top of the hour ended %v after it", now().Sub(hour))
	}
	// Nothing else flushes before Close: the hour's counts reach the
	// store only by the flush at the top of the hour, which turns the
	// meter.
	eventually(t, 15*time.Second, "the hour's counts recorded at its end", func() bool { return inHour(hour.Add(-time.Hour)) == before })
	for range after {
		pub.pub(t, "m/a", "after", 1, false)
	}
	s.hub.Close()
	if got, next := inHour(hour.Add(-time.Hour)), inHour(hour); got != before || next != after {
		t.Errorf("messages in: %d in the hour before %v and %d in the hour from it, want %d and %d", got, hour, next, before, after)
	}
}
