package broker_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/broker/store/redis"
	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
)

// sharedRedis opens session stores over one fresh key prefix of the test
// Redis: brokers given them share every session, as the nodes of a fleet do.
func sharedRedis(t *testing.T) func() broker.SessionStore {
	url := testenv.RedisURL(t)
	b := make([]byte, 6)
	rand.Read(b)
	prefix := "roost-test-" + hex.EncodeToString(b)
	return func() broker.SessionStore {
		st, err := redis.New(context.Background(), redis.Config{URL: url, Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
}

// peer is a second hub over the stack's directory with its own session
// store: another node running the same tenant, as a node does in the
// window where two nodes each take a tenant for theirs.
type peer struct {
	hub  *broker.Hub
	addr string
}

func (s *stack) peer(t *testing.T, st broker.SessionStore) *peer {
	t.Helper()
	hub, addr := serveHub(t, broker.Config{Directory: s.store, Changes: s.store.Changes(), Sessions: st,
		Log: slog.New(slog.NewTextHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	return &peer{hub: hub, addr: addr}
}

// TestTwoBrokersOneQueue is the loss the fault injection found: the same
// tenant running on two nodes at once, both queueing for one persistent
// subscriber in one Redis queue. The broker the subscriber is connected to
// deletes what it delivered; what the other broker queued stays, above and
// below those numbers, and reaches the subscriber when it comes back
// through a third broker.
func TestTwoBrokersOneQueue(t *testing.T) {
	open := sharedRedis(t)
	a := newStack(t, func(c *broker.Config) { c.Sessions = open() })
	a.tenant("acme")
	subSecret, pubSecret := a.device("acme", "sub"), a.device("acme", "pub", tenants.ClientIDsAny)
	sub := mustV5(t, a.addr, user("acme", "sub"), subSecret, "sub", keepSession)
	sub.sub(t, "t/#", 1)
	// b starts the tenant after the subscription was stored: it restores
	// the session and queues for it.
	b := a.peer(t, open())
	pubB := mustV5(t, b.addr, user("acme", "pub"), pubSecret, "pub-b")
	pubA := mustV5(t, a.addr, user("acme", "pub"), pubSecret, "pub-a")
	const n = 20
	for i := range n {
		pubB.pub(t, "t/b", fmt.Sprint(i), 1, false)
		pubA.pub(t, "t/a", fmt.Sprint(i), 1, false)
		sub.expect(t, "t/a", fmt.Sprint(i))
	}
	check := open()
	eventually(t, 5*time.Second, "the delivered messages deleted, the others kept", func() bool {
		info, err := check.QueueInfo(context.Background(), "acme", "sub")
		return err == nil && info.Len == n
	})
	qs, err := check.Read(context.Background(), "acme", "sub", 0, 100)
	if err != nil || len(qs) != n {
		t.Fatalf("queue after delivery: %d messages, %v; want the %d b queued", len(qs), err, n)
	}
	for i, q := range qs {
		if q.Topic != "t/b" || string(q.Payload) != fmt.Sprint(i) {
			t.Fatalf("queued message %d: %s %q; want t/b %q", i, q.Topic, q.Payload, fmt.Sprint(i))
		}
	}
	sub.Disconnect(&paho.Disconnect{})
	b.hub.Close()
	c := a.peer(t, open())
	again := mustV5(t, c.addr, user("acme", "sub"), subSecret, "sub", keepSession)
	if !again.connack.SessionPresent {
		t.Fatal("the session did not come back on the third broker")
	}
	for i := range n {
		again.expect(t, "t/b", fmt.Sprint(i))
	}
}

// TestTakenOverElsewhere: a connection with the same client id on another
// broker claims the session. The first broker's writes for it are refused
// from then on: the first connection is ended with 0x8E (session taken
// over) when its broker next writes for it, the message it was delivering
// stays queued, and its "disconnected" record does not overwrite the new
// owner's.
func TestTakenOverElsewhere(t *testing.T) {
	open := sharedRedis(t)
	a := newStack(t, func(c *broker.Config) { c.Sessions = open() })
	a.tenant("acme")
	subSecret, pubSecret := a.device("acme", "sub"), a.device("acme", "pub")
	first := mustV5(t, a.addr, user("acme", "sub"), subSecret, "sub", keepSession)
	first.sub(t, "t/#", 1)
	regA := prometheus.NewRegistry()
	regA.MustRegister(a.hub.Collector(0))

	c := a.peer(t, open())
	second := mustV5(t, c.addr, user("acme", "sub"), subSecret, "sub", keepSession)
	if !second.connack.SessionPresent {
		t.Fatal("the session is not present on the second broker")
	}
	// a still takes first for the session's owner: it queues and delivers;
	// first acknowledges; a's delete is refused, and a lets go.
	pub := mustV5(t, a.addr, user("acme", "pub"), pubSecret, "pub")
	pub.pub(t, "t/x", "while taken over", 1, false)
	select {
	case d := <-first.discs:
		if d.ReasonCode != 0x8E {
			t.Errorf("first connection ended with 0x%02X, want 0x8E (session taken over)", d.ReasonCode)
		}
	case <-time.After(5 * time.Second):
		t.Log(a.logs.String())
		t.Fatal("the first connection was not ended after its session was claimed elsewhere")
	}
	if got := metricValue(t, regA, "roost_session_writes_fenced_total"); got < 1 {
		t.Errorf("roost_session_writes_fenced_total on the first broker = %v, want at least 1", got)
	}
	check := open()
	qs, err := check.Read(context.Background(), "acme", "sub", 0, 10)
	if err != nil || len(qs) != 1 || string(qs[0].Payload) != "while taken over" {
		t.Errorf("queue after the refused delete: %+v, %v; want the message kept for the new owner", qs, err)
	}
	// The first connection's end is not written over the live session.
	time.Sleep(200 * time.Millisecond)
	ss, err := check.Sessions(context.Background(), "acme")
	if err != nil || len(ss) != 1 {
		t.Fatalf("sessions: %+v, %v", ss, err)
	}
	if !ss[0].DisconnectedAt.IsZero() {
		t.Errorf("the session's record says disconnected at %v: the old owner overwrote the live one", ss[0].DisconnectedAt)
	}
	if len(ss[0].Subscriptions) != 1 || ss[0].Subscriptions[0].Filter != "t/#" {
		t.Errorf("the session's subscriptions: %+v", ss[0].Subscriptions)
	}
}

// TestCleanStartKeepsNewSession: a v5 client that starts clean and asks
// for a session expiry discards its old session and keeps the new one,
// under the claim it made at connect: the new session is stored, and a
// message queued for it while it is away survives a restart.
func TestCleanStartKeepsNewSession(t *testing.T) {
	d := newDurable(t)
	d.tenant("acme")
	secret := d.device("acme", "sub")
	pubSecret := d.device("acme", "pub")
	old := mustV5(t, d.addr, user("acme", "sub"), secret, "sub", keepSession)
	old.sub(t, "old/#", 1)
	old.Disconnect(&paho.Disconnect{})
	sub := mustV5(t, d.addr, user("acme", "sub"), secret, "sub", func(c *paho.Connect) {
		c.CleanStart = true
		c.Properties = &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(600)}
	})
	sub.sub(t, "t/#", 1)
	pub := mustV5(t, d.addr, user("acme", "pub"), pubSecret, "pub")
	pub.pub(t, "t/1", "live", 1, false)
	sub.expect(t, "t/1", "live") // acknowledged by the new session's owner, not refused as fenced
	// paho sends a PUBACK once its handler returns, after expect has the
	// message; it handles the next publish only after that. A QoS 0 mark
	// seen here means "live"'s PUBACK was written before the DISCONNECT,
	// so "live" is not the session's to send again.
	pub.pub(t, "t/1", "mark", 0, false)
	sub.expect(t, "t/1", "mark")
	sub.Disconnect(&paho.Disconnect{})
	pub.pub(t, "t/1", "while away", 1, false)
	pub.Disconnect(&paho.Disconnect{})
	d.restart(t)
	again := mustV5(t, d.addr, user("acme", "sub"), secret, "sub", keepSession)
	if !again.connack.SessionPresent {
		t.Fatal("the session started clean with an expiry was not kept")
	}
	again.expect(t, "t/1", "while away")
	pub2 := mustV5(t, d.addr, user("acme", "pub"), pubSecret, "pub")
	pub2.pub(t, "old/x", "to the discarded session", 1, false)
	again.quiet(t, 300*time.Millisecond, "a message for the discarded session's subscription")
}
