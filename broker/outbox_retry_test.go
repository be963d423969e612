package broker_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/broker/store/pebble"
	"github.com/roosthub/roost/broker/store/redis"
	"github.com/roosthub/roost/internal/testenv"
)

// TestOutboxRetrySurvivesRestart: a batch retried before a restart keeps,
// after it, its first attempt (so the retry horizon does not start again),
// its attempt count and its messages: a message queued behind it while it
// was retried waits for it rather than join it, and gets a horizon of its
// own. In the embedded store (closed and opened again) and in Redis (a new
// client on the same keys).
func TestOutboxRetrySurvivesRestart(t *testing.T) {
	t.Run("embedded", func(t *testing.T) {
		dir := t.TempDir()
		outboxRetrySurvivesRestart(t, func() broker.SessionStore {
			st, err := pebble.New(pebble.Config{Dir: dir})
			if err != nil {
				t.Fatal(err)
			}
			return st
		})
	})
	t.Run("redis", func(t *testing.T) {
		url := testenv.RedisURL(t)
		b := make([]byte, 6)
		rand.Read(b)
		prefix := "roost-test-" + hex.EncodeToString(b)
		outboxRetrySurvivesRestart(t, func() broker.SessionStore {
			st, err := redis.New(context.Background(), redis.Config{URL: url, Prefix: prefix})
			if err != nil {
				t.Fatal(err)
			}
			return st
		})
	})
}

func outboxRetrySurvivesRestart(t *testing.T, open func() broker.SessionStore) {
	const horizon = time.Hour
	var ahead atomic.Int64 // the hubs' clock runs, this far ahead of the machine's
	now := func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }
	st := open()
	s := newOutboxStack(t, horizon, func(c *broker.Config) { c.Sessions, c.Now = st, now })
	s.tenant("acme")
	rc := newWebhookReceiver(t)
	rc.answer(http.StatusServiceUnavailable)
	hook := s.destination("acme", "hook", rc, "sensors/#", "")
	secret := s.device("acme", "pub")
	pub := mustV5(t, s.addr, "acme/pub", secret, "pub")
	pub.pub(t, "sensors/temp", "0", 1, false)
	retried := func(h *broker.Hub, attempts int) func() bool {
		return func() bool {
			st, err := h.DeliveryStatus(ctx, "acme", hook)
			return err == nil && len(st.Recent) > 0 && st.Recent[0].Attempt >= attempts
		}
	}
	eventually(t, 10*time.Second, "the first message is retried", retried(s.hub, 2))
	pub.pub(t, "sensors/temp", "1", 1, false)
	st1, _ := s.hub.DeliveryStatus(ctx, "acme", hook)
	eventually(t, 10*time.Second, "the batch is retried a few times more", retried(s.hub, st1.Recent[0].Attempt+3))
	st1, _ = s.hub.DeliveryStatus(ctx, "acme", hook)
	for _, a := range st1.Recent {
		if a.Messages != 1 {
			t.Errorf("before the restart, attempt %d carried %d messages, want 1: the message queued behind a retried batch waits", a.Attempt, a.Messages)
		}
	}
	before := st1.Recent[0].Attempt
	pub.Disconnect(&paho.Disconnect{})
	s.hub.Close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	// The hub comes back a horizon after the first attempt: the first
	// message's batch gets one more attempt, then is dead; the second
	// message, first tried now, is retried.
	ahead.Store(int64(horizon))
	st2 := open()
	t.Cleanup(func() { st2.Close() })
	hub2, addr2 := serveHub(t, broker.Config{Directory: s.store, Changes: s.store.Changes(), Usage: s.store,
		Sessions: st2, Delivery: broker.DeliveryOf(s.hub), Now: now})
	mustV5(t, addr2, "acme/pub", secret, "pub") // starts acme's broker there
	eventually(t, 10*time.Second, "the first message is a dead letter, the second waits", func() bool {
		st, err := hub2.DeliveryStatus(ctx, "acme", hook)
		return err == nil && st.DeadLetters == 1 && st.Backlog == 1
	})
	dead, _, err := hub2.DeadLetters(ctx, "acme", hook, 0, 10)
	if err != nil || len(dead) != 1 || string(dead[0].Payload) != "0" {
		t.Fatalf("dead letters %+v, %v; want the first message alone", dead, err)
	}
	eventually(t, 10*time.Second, "the second message is retried", retried(hub2, 2))
	st2s, _ := hub2.DeliveryStatus(ctx, "acme", hook)
	var sawDead bool
	for _, a := range st2s.Recent {
		if a.Messages != 1 {
			t.Errorf("after the restart, attempt %+v carried %d messages, want 1", a, a.Messages)
		}
		if a.Outcome == "dead" {
			sawDead = true
			// An attempt is listed before its retry is saved: a close
			// between the two leaves the count one behind the list.
			if a.Attempt != before+1 && a.Attempt != before {
				t.Errorf("the dead batch's last attempt is attempt %d, want %d (or %d): the count goes on across the restart", a.Attempt, before+1, before)
			}
		}
	}
	if !sawDead {
		t.Errorf("recent attempts %+v: want the first message's last attempt, dead", st2s.Recent)
	}
}
