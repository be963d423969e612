package broker_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/broker/store"
	"github.com/roosthub/roost/broker/store/memory"
	"github.com/roosthub/roost/broker/store/pebble"
	"github.com/roosthub/roost/broker/store/redis"
	"github.com/roosthub/roost/internal/testenv"
)

// TestOutboxSweep: a deleted tenant's outboxes and dead letters, and a
// deleted destination's, are deleted from the session store; another
// tenant's stay. In memory, in the embedded store and in Redis.
func TestOutboxSweep(t *testing.T) {
	t.Run("memory", func(t *testing.T) { outboxSweep(t, memory.New()) })
	t.Run("embedded", func(t *testing.T) {
		st, err := pebble.New(pebble.Config{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		outboxSweep(t, st)
	})
	t.Run("redis", func(t *testing.T) {
		b := make([]byte, 6)
		rand.Read(b)
		st, err := redis.New(context.Background(), redis.Config{URL: testenv.RedisURL(t), Prefix: "roost-test-" + hex.EncodeToString(b)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		outboxSweep(t, st)
	})
}

func outboxSweep(t *testing.T, st broker.SessionStore) {
	s := newOutboxStack(t, time.Hour, func(c *broker.Config) { c.Sessions = st })
	rc := newWebhookReceiver(t)
	rc.answer(http.StatusInternalServerError) // every message stays in its outbox
	dest := map[string]string{}
	for _, tn := range []string{"acme", "other"} {
		s.tenant(tn)
		dest[tn] = s.destination(tn, "hook", rc, "sensors/#", "")
		pub := mustV5(t, s.addr, tn+"/pub", s.device(tn, "pub"), "pub")
		for i := range 3 {
			pub.pub(t, "sensors/t", fmt.Sprint(i), 1, false)
		}
		pub.Disconnect(&paho.Disconnect{})
		// Two dead letters, as the worker would have moved there.
		items := []store.Item{{ClientID: "\x00dead:" + dest[tn], Message: store.Message{Topic: "sensors/t", Payload: []byte("dead"), QoS: 1, Created: time.Now()}}}
		for range 2 {
			if _, err := st.Append(ctx, tn, items, store.Receipt{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	lengths := func(tn string) (out, dead int) {
		a, err := st.QueueInfo(ctx, tn, "\x00out:"+dest[tn])
		if err != nil {
			t.Fatal(err)
		}
		b, err := st.QueueInfo(ctx, tn, "\x00dead:"+dest[tn])
		if err != nil {
			t.Fatal(err)
		}
		return a.Len, b.Len
	}
	for _, tn := range []string{"acme", "other"} {
		if out, dead := lengths(tn); out != 3 || dead != 2 {
			t.Fatalf("%s before: outbox %d, dead letters %d; want 3, 2", tn, out, dead)
		}
	}
	if n, err := s.hub.SweepOutboxes(ctx); err != nil || n != 0 {
		t.Fatalf("a sweep with nothing deleted: %d, %v", n, err)
	}
	retries := func(tn string) int {
		info, err := st.QueueInfo(ctx, tn, "\x00retry:"+dest[tn])
		if err != nil {
			t.Fatal(err)
		}
		return info.Len
	}
	eventually(t, 10*time.Second, "acme's worker keeps the retry of its failing batch", func() bool { return retries("acme") == 1 })

	if err := s.store.DeleteTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if n, err := s.hub.SweepOutboxes(ctx); err != nil || n != 1 {
		t.Fatalf("sweep after the tenant's deletion: %d, %v; want 1", n, err)
	}
	if out, dead := lengths("acme"); out != 0 || dead != 0 {
		t.Errorf("the deleted tenant's outbox %d, dead letters %d; want none", out, dead)
	}
	if n := retries("acme"); n != 0 {
		t.Errorf("the deleted tenant's retry queue holds %d, want none", n)
	}
	if qs, _ := st.Read(ctx, "acme", "\x00out:"+dest["acme"], 0, 10); len(qs) != 0 {
		t.Errorf("the deleted tenant's outbox still reads %d messages", len(qs))
	}
	if out, dead := lengths("other"); out != 3 || dead != 2 {
		t.Errorf("the other tenant's outbox %d, dead letters %d; want 3, 2 untouched", out, dead)
	}

	// A destination deleted (its rule first), while its tenant's broker
	// may or may not be running.
	rules, err := s.store.Rules(ctx, "other")
	if err != nil || len(rules) != 1 {
		t.Fatal(rules, err)
	}
	if err := s.store.DeleteExportRule(ctx, "other", rules[0].ID); err != nil {
		t.Fatal(err)
	}
	if err := s.store.DeleteDestination(ctx, "other", dest["other"]); err != nil {
		t.Fatal(err)
	}
	if n, err := s.hub.SweepOutboxes(ctx); err != nil || n != 1 {
		t.Fatalf("sweep after the destination's deletion: %d, %v; want 1", n, err)
	}
	if out, dead := lengths("other"); out != 0 || dead != 0 {
		t.Errorf("the deleted destination's outbox %d, dead letters %d; want none", out, dead)
	}
	if n, err := s.hub.SweepOutboxes(ctx); err != nil || n != 0 {
		t.Errorf("a second sweep: %d, %v; want nothing left", n, err)
	}
}
