package broker_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	goredis "github.com/redis/go-redis/v9"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/broker/store"
	"github.com/roosthub/roost/broker/store/memory"
	"github.com/roosthub/roost/broker/store/pebble"
	"github.com/roosthub/roost/broker/store/redis"
	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
)

// durable is a stack whose hub keeps sessions in a store that can be
// closed and opened again over the same data: Pebble unless said otherwise.
type durable struct {
	*stack
	open  func() broker.SessionStore
	store broker.SessionStore
}

func newDurable(t testing.TB, open ...func() broker.SessionStore) *durable {
	t.Helper()
	d := &durable{}
	if len(open) > 0 {
		d.open = open[0]
	} else {
		dir := t.TempDir()
		d.open = func() broker.SessionStore {
			st, err := pebble.New(pebble.Config{Dir: dir})
			if err != nil {
				t.Fatal(err)
			}
			return st
		}
	}
	d.store = d.open()
	d.stack = newStack(t, func(c *broker.Config) { c.Sessions = d.store })
	t.Cleanup(func() { d.store.Close() })
	return d
}

// restart stops the hub and its store and starts new ones over the same
// data, on a new port.
func (d *durable) restart(t testing.TB) {
	t.Helper()
	d.hub.Close()
	if err := d.store.Close(); err != nil {
		t.Fatal(err)
	}
	d.store = d.open()
	d.hub, d.addr = serveHub(t, broker.Config{Directory: d.stack.store, Changes: d.stack.store.Changes(), Sessions: d.store,
		Log: slog.New(slog.NewTextHandler(d.logs, nil))})
}

func keepSession(c *paho.Connect) {
	c.CleanStart = false
	c.Properties = &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(3600)}
}

// TestSessionSurvivesRestart: a persistent session's subscriptions and the
// messages queued for it while offline come back after the hub restarts,
// in order; then it continues live.
func TestSessionSurvivesRestart(t *testing.T) {
	d := newDurable(t)
	d.tenant("acme")
	subSecret, pubSecret := d.device("acme", "sub"), d.device("acme", "pub")
	sub := mustV5(t, d.addr, "acme/sub", subSecret, "sub", keepSession)
	sub.sub(t, "q/#", 1)
	sub.Disconnect(&paho.Disconnect{})
	pub := mustV3(t, d.addr, "acme/pub", pubSecret, "pub", true)
	for i := range 5 {
		pub.pub(t, "q/x", fmt.Sprint(i), 1, false)
	}
	pub.Disconnect(100)

	d.restart(t)
	back := mustV5(t, d.addr, "acme/sub", subSecret, "sub", keepSession)
	if !back.connack.SessionPresent {
		t.Fatal("the session did not survive the restart")
	}
	for i := range 5 {
		back.expect(t, "q/x", fmt.Sprint(i))
	}
	pub2 := mustV5(t, d.addr, "acme/pub", pubSecret, "pub")
	pub2.pub(t, "q/live", "after", 1, false)
	back.expect(t, "q/live", "after")

	// Everything was acknowledged: once the hub has the acknowledgements,
	// another restart brings nothing back twice. (A PUBACK still on its way
	// when the connection ends is redelivered: at least once.)
	eventually(t, 5*time.Second, "acknowledgements processed", func() bool { return d.hub.Queue("acme", "sub").Queued == 0 })
	back.Disconnect(&paho.Disconnect{})
	time.Sleep(100 * time.Millisecond)
	d.restart(t)
	again := mustV5(t, d.addr, "acme/sub", subSecret, "sub", keepSession)
	if !again.connack.SessionPresent {
		t.Error("the session did not survive the second restart")
	}
	again.quiet(t, 300*time.Millisecond, "messages already acknowledged")
}

// TestRetainedSurvivesRestart: retained messages are stored, and cleared
// ones stay cleared.
func TestRetainedSurvivesRestart(t *testing.T) {
	d := newDurable(t)
	d.tenant("acme")
	pub := mustV5(t, d.addr, "acme/pub", d.device("acme", "pub"), "pub")
	pub.pub(t, "cfg/a", "kept", 0, true)
	pub.pub(t, "cfg/b", "gone", 1, true)
	pub.pub(t, "cfg/b", "", 1, true)
	d.restart(t)
	sub := mustV5(t, d.addr, "acme/sub", d.device("acme", "sub"), "sub")
	sub.sub(t, "cfg/#", 1)
	sub.expect(t, "cfg/a", "kept")
	sub.quiet(t, 300*time.Millisecond, "a cleared retained message")
}

// TestCleanStartDropsStoredSession: connecting with a clean start discards
// what was stored.
func TestCleanStartDropsStoredSession(t *testing.T) {
	d := newDurable(t)
	d.tenant("acme")
	secret := d.device("acme", "sub")
	sub := mustV5(t, d.addr, "acme/sub", secret, "sub", keepSession)
	sub.sub(t, "q/#", 1)
	sub.Disconnect(&paho.Disconnect{})
	mustV5(t, d.addr, "acme/pub", d.device("acme", "pub"), "pub").pub(t, "q/x", "old", 1, false)
	clean := mustV5(t, d.addr, "acme/sub", secret, "sub") // clean start
	clean.Disconnect(&paho.Disconnect{})
	time.Sleep(100 * time.Millisecond)
	d.restart(t)
	back := mustV5(t, d.addr, "acme/sub", secret, "sub", keepSession)
	if back.connack.SessionPresent {
		t.Error("a session discarded by a clean start came back")
	}
	back.quiet(t, 300*time.Millisecond, "a message for a discarded session")
}

// failing wraps a store and fails appends and retained writes on demand.
type failing struct {
	*memory.Store
	fail atomic.Bool
}

var errDown = errors.New("store down")

func (f *failing) Append(ctx context.Context, tenant string, items []store.Item, r store.Receipt) ([]uint64, error) {
	if f.fail.Load() {
		return nil, errDown
	}
	return f.Store.Append(ctx, tenant, items, r)
}

func (f *failing) SetRetained(ctx context.Context, tenant string, m store.Message) error {
	if f.fail.Load() {
		return errDown
	}
	return f.Store.SetRetained(ctx, tenant, m)
}

// TestNoAckWithoutStore: when the store cannot take a message, no publisher
// is acknowledged and nothing is delivered; QoS 0 without persistence is not
// affected.
func TestNoAckWithoutStore(t *testing.T) {
	st := &failing{Store: memory.New()}
	s := newStack(t, func(c *broker.Config) { c.Sessions = st })
	s.tenant("acme")
	sub := mustV5(t, s.addr, "acme/sub", s.device("acme", "sub"), "sub", keepSession)
	sub.sub(t, "q/#", 1)
	pub5 := mustV5(t, s.addr, "acme/pub5", s.device("acme", "pub5"), "pub5")
	pub3 := mustV3(t, s.addr, "acme/pub3", s.device("acme", "pub3"), "pub3", true)
	st.fail.Store(true)

	if r := pub5.pub(t, "q/x", "lost?", 1, false); r.ReasonCode < 0x80 {
		t.Errorf("MQTT 5 QoS 1 with the store down: PUBACK 0x%02x, want an error code", r.ReasonCode)
	}
	tok := pub3.Publish("q/x", 1, false, "lost?")
	if tok.WaitTimeout(2*time.Second) && tok.Error() == nil {
		t.Error("a 3.1.1 QoS 1 publish was acknowledged with the store down")
	}
	select {
	case <-pub3.lost:
	case <-time.After(2 * time.Second):
		t.Error("the 3.1.1 publisher was not disconnected")
	}
	if r := pub5.pub(t, "cfg/r", "retained", 1, true); r.ReasonCode < 0x80 {
		t.Errorf("retained publish with the store down: 0x%02x", r.ReasonCode)
	}
	sub.quiet(t, 300*time.Millisecond, "a message that was not stored")
	if err := s.hub.Publish(context.Background(), "acme", dataplane.Message{Topic: "q/api", Payload: []byte("x"), QoS: 1}); err == nil {
		t.Error("an API publish reported success with the store down")
	}

	// QoS 0 is not persisted, so it still flows.
	pub5.pub(t, "q/zero", "fine", 0, false)
	sub.expect(t, "q/zero", "fine")

	st.fail.Store(false)
	pub5.pub(t, "q/x", "stored", 1, false)
	sub.expect(t, "q/x", "stored")
}

// TestQueueOverflowDropsOldest: an offline session's queue holds at most
// max_queued messages; beyond that the oldest go, and are counted.
func TestQueueOverflowDropsOldest(t *testing.T) {
	d := newDurable(t)
	d.tenant("acme")
	five := int64(5)
	if _, err := d.stack.store.AdminUpdateTenant(ctx, "acme", tenants.AdminTenantUpdate{Quotas: map[string]*int64{"max_queued": &five}}); err != nil {
		t.Fatal(err)
	}
	secret := d.device("acme", "sub")
	sub := mustV5(t, d.addr, "acme/sub", secret, "sub", keepSession)
	sub.sub(t, "q/#", 1)
	sub.Disconnect(&paho.Disconnect{})
	pub := mustV5(t, d.addr, "acme/pub", d.device("acme", "pub"), "pub")
	for i := range 12 {
		pub.pub(t, "q/x", fmt.Sprint(i), 1, false)
	}
	qs := d.hub.Queue("acme", "sub")
	if qs.Queued != 5 || qs.Dropped != 7 || qs.Oldest == nil {
		t.Errorf("queue stats: got %+v, want 5 queued, 7 dropped, an oldest time", qs)
	}
	back := mustV5(t, d.addr, "acme/sub", secret, "sub", keepSession)
	got := map[string]bool{}
	for range 5 {
		select {
		case m := <-back.msgs:
			got[string(m.Payload)] = true
		case <-time.After(5 * time.Second):
			t.Fatalf("got %v, want the five newest", got)
		}
	}
	for i := 7; i < 12; i++ {
		if !got[fmt.Sprint(i)] {
			t.Errorf("message %d, one of the five newest, did not arrive (got %v)", i, got)
		}
	}
	back.quiet(t, 300*time.Millisecond, "a dropped message")
	eventually(t, 2*time.Second, "queue drained", func() bool { return d.hub.Queue("acme", "sub").Queued == 0 })
}

// TestExpiryHonouredAfterRestart: a session that expired while the hub was
// down is not restored, and its data is deleted; an expired message in a
// live session's queue is not delivered.
func TestExpiryHonouredAfterRestart(t *testing.T) {
	d := newDurable(t)
	d.tenant("acme")
	shortSecret, longSecret := d.device("acme", "short"), d.device("acme", "long")
	short := mustV5(t, d.addr, "acme/short", shortSecret, "short", func(c *paho.Connect) {
		c.CleanStart = false
		c.Properties = &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(1)}
	})
	short.sub(t, "q/#", 1)
	long := mustV5(t, d.addr, "acme/long", longSecret, "long", keepSession)
	long.sub(t, "q/#", 1)
	short.Disconnect(&paho.Disconnect{})
	long.Disconnect(&paho.Disconnect{})
	pub := mustV5(t, d.addr, "acme/pub", d.device("acme", "pub"), "pub")
	pctx, cancel := contextWithTimeout()
	defer cancel()
	if _, err := pub.Publish(pctx, &paho.Publish{Topic: "q/brief", QoS: 1, Payload: []byte("brief"),
		Properties: &paho.PublishProperties{MessageExpiry: paho.Uint32(1)}}); err != nil {
		t.Fatal(err)
	}
	pub.pub(t, "q/lasting", "lasting", 1, false)
	d.hub.Close()
	time.Sleep(2100 * time.Millisecond)
	d.restart(t)

	mustV5(t, d.addr, "acme/trigger", d.device("acme", "trigger"), "trigger") // starts the tenant's broker
	sessions, err := d.store.Sessions(context.Background(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sessions {
		if s.ClientID == "short" {
			t.Error("an expired session is still stored")
		}
	}
	back := mustV5(t, d.addr, "acme/long", longSecret, "long", keepSession)
	back.expect(t, "q/lasting", "lasting")
	back.quiet(t, 300*time.Millisecond, "an expired message")
	again := mustV5(t, d.addr, "acme/short", shortSecret, "short", func(c *paho.Connect) {
		c.CleanStart = false
		c.Properties = &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(1)}
	})
	if again.connack.SessionPresent {
		t.Error("an expired session came back")
	}
}

// TestTenantsApartAfterRestart: two tenants' persistent sessions with the
// same client id and the same topics keep their own subscriptions and queues
// through a restart, in Pebble and in one Redis; in Redis every key of a
// tenant carries that tenant's hash tag.
func TestTenantsApartAfterRestart(t *testing.T) {
	t.Run("embedded", func(t *testing.T) { tenantsApart(t, newDurable(t)) })
	t.Run("redis", func(t *testing.T) {
		url := testenv.RedisURL(t)
		b := make([]byte, 6)
		rand.Read(b)
		prefix := "roost-test-" + hex.EncodeToString(b)
		d := newDurable(t, func() broker.SessionStore {
			st, err := redis.New(context.Background(), redis.Config{URL: url, Prefix: prefix})
			if err != nil {
				t.Fatal(err)
			}
			return st
		})
		tenantsApart(t, d)
		opts, err := goredis.ParseURL(url)
		if err != nil {
			t.Fatal(err)
		}
		rdb := goredis.NewClient(opts)
		defer rdb.Close()
		keys, err := rdb.Keys(context.Background(), prefix+":*").Result()
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]int{}
		for _, k := range keys {
			switch {
			case strings.HasPrefix(k, prefix+":{alpha}:"):
				seen["alpha"]++
			case strings.HasPrefix(k, prefix+":{bravo}:"):
				seen["bravo"]++
			default:
				t.Errorf("key %q is in neither tenant's hash slot", k)
			}
		}
		if seen["alpha"] == 0 || seen["alpha"] != seen["bravo"] {
			t.Errorf("keys per tenant: %v (want the same non-zero number for both)", seen)
		}
	})
}

func tenantsApart(t *testing.T, d *durable) {
	secrets := map[string]string{}
	for _, tn := range []string{"alpha", "bravo"} {
		d.tenant(tn)
		secrets[tn] = d.device(tn, "d1")
		c := mustV5(t, d.addr, tn+"/d1", secrets[tn], "d1", keepSession)
		c.sub(t, "q/#", 1) // same client id, same filter
		c.Disconnect(&paho.Disconnect{})
		pub := mustV5(t, d.addr, tn+"/pub", d.device(tn, "pub"), "pub")
		pub.pub(t, "q/shared", tn+" on q/shared", 1, true)
		pub.Disconnect(&paho.Disconnect{})
	}
	d.restart(t)
	for _, tn := range []string{"alpha", "bravo"} {
		c := mustV5(t, d.addr, tn+"/d1", secrets[tn], "d1", keepSession)
		if !c.connack.SessionPresent {
			t.Errorf("%s/d1 lost its session", tn)
		}
		c.expect(t, "q/shared", tn+" on q/shared")
		c.quiet(t, 300*time.Millisecond, tn+"/d1 after its own message")
		fresh := mustV5(t, d.addr, tn+"/fresh", d.device(tn, "fresh"), "fresh")
		fresh.sub(t, "q/#", 1)
		fresh.expect(t, "q/shared", tn+" on q/shared") // its own tenant's retained message only
		fresh.quiet(t, 300*time.Millisecond, tn+" retained messages")
	}
}

// TestQueueOverflowDropsNewest: under the drop_newest policy a full queue
// keeps its oldest messages and refuses new ones, counting them.
func TestQueueOverflowDropsNewest(t *testing.T) {
	d := newDurable(t)
	d.tenant("acme")
	three := int64(3)
	newest := tenants.DropNewest
	if _, err := d.stack.store.AdminUpdateTenant(ctx, "acme", tenants.AdminTenantUpdate{Quotas: map[string]*int64{"max_queued": &three}}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.stack.store.UpdateTenant(ctx, "acme", tenants.TenantUpdate{QueuePolicy: &newest}); err != nil {
		t.Fatal(err)
	}
	secret := d.device("acme", "sub")
	sub := mustV5(t, d.addr, "acme/sub", secret, "sub", keepSession)
	sub.sub(t, "q/#", 1)
	sub.Disconnect(&paho.Disconnect{})
	pub := mustV5(t, d.addr, "acme/pub", d.device("acme", "pub"), "pub")
	for i := range 8 {
		pub.pub(t, "q/x", fmt.Sprint(i), 1, false)
	}
	if qs := d.hub.Queue("acme", "sub"); qs.Queued != 3 || qs.Dropped != 5 {
		t.Errorf("queue stats: got %+v, want 3 queued, 5 dropped", qs)
	}
	d.restart(t) // what was kept is what the store holds
	back := mustV5(t, d.addr, "acme/sub", secret, "sub", keepSession)
	for i := range 3 {
		back.expect(t, "q/x", fmt.Sprint(i))
	}
	back.quiet(t, 300*time.Millisecond, "a message dropped as newest")
}

// TestResumeChecksACL: messages queued for a persistent session while its
// device could read their topic are not delivered when it resumes after a
// rule took that away: neither from the broker's memory nor restored from
// the store after a restart. Those it may still read are.
func TestResumeChecksACL(t *testing.T) {
	d := newDurable(t)
	d.tenant("acme")
	subSecret, pubSecret := d.device("acme", "sub"), d.device("acme", "pub")
	queue := func(round string) {
		t.Helper()
		d.rules("acme", allow(tenants.ActionAll, "#"))
		sub := mustV5(t, d.addr, user("acme", "sub"), subSecret, "sub", keepSession)
		sub.sub(t, "alarms/#", 1)
		sub.sub(t, "status/#", 1)
		sub.Disconnect(&paho.Disconnect{})
		pub := mustV5(t, d.addr, user("acme", "pub"), pubSecret, "pub")
		pub.pub(t, "alarms/fire", round, 1, false)
		pub.pub(t, "status/ok", round, 1, false)
		pub.barrier(t)
		pub.Disconnect(&paho.Disconnect{})
		d.rules("acme", deny(tenants.ActionSubscribe, "alarms/#"), allow(tenants.ActionAll, "#"))
	}
	for _, restart := range []bool{false, true} {
		round := fmt.Sprintf("restart=%t", restart)
		queue(round)
		if restart {
			d.restart(t)
		}
		sub := mustV5(t, d.addr, user("acme", "sub"), subSecret, "sub", keepSession)
		sub.expect(t, "status/ok", round)
		sub.quiet(t, 300*time.Millisecond, round+": a queued message whose topic the device may no longer read")
		sub.Disconnect(&paho.Disconnect{})
	}
}
