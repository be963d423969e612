package broker_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/prometheus/client_golang/prometheus"
	goredis "github.com/redis/go-redis/v9"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/broker/fabric"
	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
)

// spread is a tenant served by two nodes at once through the fabric:
// home (a) holds the persistent sessions, b serves clean ones.
type spread struct {
	*stack
	b          *peer
	fabA, fabB fabric.Node
	// sessA reads the session store both nodes share.
	sessA broker.SessionStore
	// open opens that store again (for a third node); prefix is the
	// fabric's key prefix, where a test chose it (newSlowSpread).
	open   func() broker.SessionStore
	prefix string
}

// newFabric opens a node's fabric on a key prefix of the test Redis; url
// may be a proxy's.
func newFabric(t *testing.T, url, prefix, node string) *fabric.Redis {
	t.Helper()
	f, err := fabric.New(context.Background(), fabric.Config{URL: url, Prefix: prefix, Node: node, Lease: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func newSpread(t *testing.T, mod ...func(*broker.Config)) *spread {
	url := testenv.RedisURL(t)
	b := make([]byte, 6)
	rand.Read(b)
	prefix := "roost-fabric-" + hex.EncodeToString(b)
	s := newSpreadOn(t, url, url, prefix, mod...)
	s.prefix = prefix
	return s
}

// third runs a third node of the spread (its fabric on the spread's key
// prefix, its sessions in the same store), and returns its address.
func (s *spread) third(t *testing.T) string {
	t.Helper()
	_, addr := serveHub(t, broker.Config{Directory: s.store, Changes: s.store.Changes(), Sessions: s.open(),
		Fabric: newFabric(t, testenv.RedisURL(t), s.prefix, "node-c"), Log: slog.New(slog.NewTextHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	return addr
}

// newSpreadOn runs the two nodes with their fabrics on Redis at urlA and
// urlB (the same server, perhaps through a proxy).
func newSpreadOn(t *testing.T, urlA, urlB, prefix string, mod ...func(*broker.Config)) *spread {
	return newSpreadWith(t, newFabric(t, urlA, prefix, "node-a"), newFabric(t, urlB, prefix, "node-b"), mod...)
}

// newSpreadWith runs the two nodes on the fabrics given, their sessions in
// one Redis.
func newSpreadWith(t *testing.T, fabA, fabB fabric.Node, mod ...func(*broker.Config)) *spread {
	open := sharedRedis(t)
	s := &spread{fabA: fabA, fabB: fabB, sessA: open(), open: open}
	s.stack = newStack(t, append([]func(*broker.Config){func(c *broker.Config) {
		c.Sessions, c.Fabric, c.FabricHome = open(), s.fabA, true
	}}, mod...)...) // mod applies to both nodes
	cfgB := broker.Config{Directory: s.store, Changes: s.store.Changes(), Sessions: open(), Fabric: s.fabB,
		Log: slog.New(slog.NewTextHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	for _, m := range mod {
		m(&cfgB)
	}
	hub, addr := serveHub(t, cfgB)
	s.b = &peer{hub: hub, addr: addr}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(s.logs.String())
		}
	})
	return s
}

// onEveryFabric runs a spread scenario on each fabric: Redis, and Kafka
// (kfake, spread_kafka_test.go).
func onEveryFabric(t *testing.T, scenario func(t *testing.T, s *spread)) {
	t.Run("redis", func(t *testing.T) { scenario(t, newSpread(t)) })
	t.Run("kafka", func(t *testing.T) { scenario(t, newKafkaSpread(t).spread) })
}

// TestSpreadAcrossNodes: a subscriber on one node gets, in order, what is
// published on the other, at every QoS, both ways; nothing published on a
// topic it did not subscribe to crosses.
func TestSpreadAcrossNodes(t *testing.T) {
	onEveryFabric(t, func(t *testing.T, s *spread) {
		s.tenant("acme")
		secret := s.device("acme", "d", tenants.ClientIDsAny)
		for _, dir := range []struct {
			name     string
			sub, pub string
		}{{"home to node", s.b.addr, s.addr}, {"node to home", s.addr, s.b.addr}} {
			t.Run(dir.name, func(t *testing.T) {
				sub := mustV5(t, dir.sub, user("acme", "d"), secret, "sub")
				sub.sub(t, "t/#", 2)
				pub := mustV5(t, dir.pub, user("acme", "d"), secret, "pub")
				for qos := range byte(3) {
					for i := range 20 {
						pub.pub(t, fmt.Sprintf("t/%d", qos), fmt.Sprint(i), qos, false)
					}
					for i := range 20 {
						m := sub.expect(t, fmt.Sprintf("t/%d", qos), fmt.Sprint(i))
						if m.QoS != qos {
							t.Errorf("QoS %d message arrived with QoS %d", qos, m.QoS)
						}
					}
				}
				pub.pub(t, "other/x", "not for the subscriber", 1, false)
				sub.quiet(t, 300*time.Millisecond, "a message on a topic nobody subscribed to")
				sub.Disconnect(&paho.Disconnect{})
				pub.Disconnect(&paho.Disconnect{})
			})
		}
		if st := s.fabA.Stats(); st.Sent == 0 || st.Received == 0 {
			t.Errorf("home's fabric counters: %+v; want messages sent and received", st)
		}
	})
}

// TestSpreadRouteBeforeSuback: a message published on another node right
// after the SUBACK reaches the new subscriber: the route was written
// before the SUBACK (fabric's TestStaleRoutesRefused shows a publisher's
// stale copy of the routes refused and read again).
func TestSpreadRouteBeforeSuback(t *testing.T) {
	onEveryFabric(t, func(t *testing.T, s *spread) {
		s.tenant("acme")
		secret := s.device("acme", "d", tenants.ClientIDsAny)
		pub := mustV5(t, s.addr, user("acme", "d"), secret, "pub")
		pub.pub(t, "warm/up", "routes read once", 1, false)
		for i := range 20 {
			sub := mustV5(t, s.b.addr, user("acme", "d"), secret, fmt.Sprintf("sub-%d", i))
			filter := fmt.Sprintf("fresh/%d", i)
			sub.sub(t, filter, 1)
			pub.pub(t, filter, "right after the SUBACK", 1, false)
			sub.expect(t, filter, "right after the SUBACK")
			sub.Disconnect(&paho.Disconnect{})
		}
	})
}

// TestSpreadSharedOnce: a shared group with a member on each node gets
// each message once, wherever it is published; with one member gone, the
// other gets what its node did not serve, once.
func TestSpreadSharedOnce(t *testing.T) {
	onEveryFabric(t, func(t *testing.T, s *spread) {
		s.tenant("acme")
		secret := s.device("acme", "d", tenants.ClientIDsAny)
		var mu sync.Mutex
		got := map[string]int{}
		var total atomic.Int64
		member := func(addr, id string) *v5 {
			c := mustV5(t, addr, user("acme", "d"), secret, id)
			c.sub(t, "$share/g/jobs/#", 1)
			go func() {
				for m := range c.msgs {
					mu.Lock()
					got[string(m.Payload)]++
					mu.Unlock()
					total.Add(1)
				}
			}()
			return c
		}
		member(s.addr, "m-a")
		mB := member(s.b.addr, "m-b")
		pubA := mustV5(t, s.addr, user("acme", "d"), secret, "pub-a")
		pubB := mustV5(t, s.b.addr, user("acme", "d"), secret, "pub-b")
		const n = 40
		for i := range n {
			pubA.pub(t, "jobs/a", fmt.Sprint("a", i), 1, false)
			pubB.pub(t, "jobs/b", fmt.Sprint("b", i), 1, false)
		}
		eventually(t, 5*time.Second, "every job delivered", func() bool { return total.Load() >= 2*n })
		time.Sleep(300 * time.Millisecond)
		mu.Lock()
		if len(got) != 2*n || total.Load() != 2*n {
			t.Fatalf("%d distinct jobs in %d deliveries; want each of %d once", len(got), total.Load(), 2*n)
		}
		mu.Unlock()
		// With b's member gone, what b publishes goes to the member on a,
		// once: the route of a's member in the log makes b's node pass it on.
		mB.Disconnect(&paho.Disconnect{})
		time.Sleep(200 * time.Millisecond)
		for i := range n {
			pubB.pub(t, "jobs/b", fmt.Sprint("b-after-", i), 1, false)
		}
		eventually(t, 5*time.Second, "every later job delivered on a", func() bool { return total.Load() >= 3*n })
		time.Sleep(300 * time.Millisecond)
		mu.Lock()
		defer mu.Unlock()
		if len(got) != 3*n || total.Load() != 3*n {
			t.Fatalf("%d distinct jobs in %d deliveries; want each of %d once", len(got), total.Load(), 3*n)
		}
	})
}

// TestSpreadRetained: a retained message published on one node is there
// for a subscriber arriving on the other.
func TestSpreadRetained(t *testing.T) {
	onEveryFabric(t, func(t *testing.T, s *spread) {
		s.tenant("acme")
		secret := s.device("acme", "d", tenants.ClientIDsAny)
		// b runs the tenant before the message is retained: it learns it
		// through its inbox, not from the store at start.
		early := mustV5(t, s.b.addr, user("acme", "d"), secret, "early")
		pub := mustV5(t, s.addr, user("acme", "d"), secret, "pub")
		pub.pub(t, "cfg/led", "on", 1, true)
		eventually(t, 5*time.Second, "the retained message on the other node", func() bool {
			late := mustV5(t, s.b.addr, user("acme", "d"), secret, "late")
			defer late.Disconnect(&paho.Disconnect{})
			late.sub(t, "cfg/#", 1)
			select {
			case m := <-late.msgs:
				return m.Topic == "cfg/led" && string(m.Payload) == "on" && m.Retain
			case <-time.After(300 * time.Millisecond):
				return false
			}
		})
		early.Disconnect(&paho.Disconnect{})
	})
}

// TestSpreadPersistentAtHome: a persistent session gets what is published
// on another node while it is away, on each fabric (Redis queues it where
// it is published; Kafka at the home, from the tenant's log).
func TestSpreadPersistentAtHome(t *testing.T) {
	onEveryFabric(t, persistentAway)
}

// persistentAway: a persistent session subscribes on the home and goes
// away; ten messages published on the other node are queued for it (the
// store holds them, wherever its fabric queues them) and reach it, in
// order, when it is back.
func persistentAway(t *testing.T, s *spread) {
	s.tenant("acme")
	secret := s.device("acme", "d", tenants.ClientIDsAny)
	sub := mustV5(t, s.addr, user("acme", "d"), secret, "keeper", keepSession)
	sub.sub(t, "q/#", 1)
	sub.Disconnect(&paho.Disconnect{})
	pub := mustV5(t, s.b.addr, user("acme", "d"), secret, "pub")
	for i := range 10 {
		pub.pub(t, "q/x", fmt.Sprint(i), 1, false)
	}
	eventually(t, 5*time.Second, "the ten messages queued for the session", func() bool {
		info, err := s.sessA.QueueInfo(context.Background(), "acme", "keeper")
		return err == nil && info.Len == 10
	})
	back := mustV5(t, s.addr, user("acme", "d"), secret, "keeper", keepSession)
	if !back.connack.SessionPresent {
		t.Fatal("the session is not present at the home")
	}
	for i := range 10 {
		back.expect(t, "q/x", fmt.Sprint(i))
	}
}

// TestSpreadTenantsApart: two tenants on the same fabric: what one
// publishes never reaches the other's subscriber, on any node.
func TestSpreadTenantsApart(t *testing.T) {
	onEveryFabric(t, func(t *testing.T, s *spread) {
		s.tenant("acme")
		s.tenant("umbrella")
		acme := s.device("acme", "d", tenants.ClientIDsAny)
		umb := s.device("umbrella", "d", tenants.ClientIDsAny)
		spy := mustV5(t, s.b.addr, user("umbrella", "d"), umb, "spy")
		spy.sub(t, "#", 1)
		sub := mustV5(t, s.b.addr, user("acme", "d"), acme, "sub")
		sub.sub(t, "#", 1)
		pub := mustV5(t, s.addr, user("acme", "d"), acme, "pub")
		pub.pub(t, "secret/plans", "acme only", 1, true)
		sub.expect(t, "secret/plans", "acme only")
		spy.quiet(t, 300*time.Millisecond, "another tenant's message")
	})
}

// TestSpreadRedisCut: with the fabric's Redis out of reach, a QoS 1
// publish that must cross is refused, never acknowledged, and a new
// subscription fails; once Redis is back both work again by themselves.
func TestSpreadRedisCut(t *testing.T) {
	url := testenv.RedisURL(t)
	proxy := newCutProxy(t, url)
	b := make([]byte, 6)
	rand.Read(b)
	s := newSpreadOn(t, proxy.url, url, "roost-fabric-"+hex.EncodeToString(b))
	s.tenant("acme")
	secret := s.device("acme", "d", tenants.ClientIDsAny)
	sub := mustV5(t, s.b.addr, user("acme", "d"), secret, "sub")
	sub.sub(t, "t/#", 1)
	pub := mustV5(t, s.addr, user("acme", "d"), secret, "pub")
	pub.pub(t, "t/x", "before", 1, false)
	sub.expect(t, "t/x", "before")

	proxy.cut(true)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	resp, err := pub.Publish(ctx, &paho.Publish{Topic: "t/x", QoS: 1, Payload: []byte("during")})
	cancel()
	if err == nil && resp.ReasonCode < 0x80 {
		t.Fatalf("a publish the fabric could not take was acknowledged: %+v", resp)
	}
	if code := mustV5(t, s.addr, user("acme", "d"), secret, "late").sub(t, "late/#", 1); code < 0x80 {
		t.Fatalf("a subscription whose route could not be written was granted: 0x%02X", code)
	}
	proxy.cut(false)
	// A cut that outlasted a node's fabric membership ends its clean
	// sessions (fabricLapsed): they connect again, as devices would.
	again := func(c *v5, node, id string) *v5 {
		select {
		case <-c.closed:
			c = mustV5(t, node, user("acme", "d"), secret, id)
			if id == "sub" {
				c.sub(t, "t/#", 1)
			}
		default:
		}
		return c
	}
	eventually(t, 20*time.Second, "a publish crossing again", func() bool {
		sub, pub = again(sub, s.b.addr, "sub"), again(pub, s.addr, "pub")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := pub.Publish(ctx, &paho.Publish{Topic: "t/x", QoS: 1, Payload: []byte("after")})
		if err != nil || resp.ReasonCode >= 0x80 {
			return false
		}
		for {
			select {
			case m := <-sub.msgs:
				if string(m.Payload) == "during" {
					t.Fatal("the refused message was delivered")
				}
				if string(m.Payload) == "after" {
					return true
				}
			case <-time.After(2 * time.Second):
				return false
			}
		}
	})
}

// cutProxy forwards TCP to Redis until cut, which ends every connection
// and refuses new ones.
type cutProxy struct {
	url string
	mu  sync.Mutex
	off bool
	cs  []net.Conn
}

func newCutProxy(t *testing.T, redisURL string) *cutProxy {
	opts, err := goredis.ParseURL(redisURL)
	if err != nil {
		t.Fatal(err)
	}
	u := opts.Addr
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	p := &cutProxy{url: "redis://" + ln.Addr().String()}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.off {
				p.mu.Unlock()
				c.Close()
				continue
			}
			up, err := net.Dial("tcp", u)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.cs = append(p.cs, c, up)
			p.mu.Unlock()
			go func() { io.Copy(up, c); up.Close() }()
			go func() { io.Copy(c, up); c.Close() }()
		}
	}()
	return p
}

func (p *cutProxy) cut(off bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.off = off
	if off {
		for _, c := range p.cs {
			c.Close()
		}
		p.cs = nil
	}
}

// TestSpreadWatch: a live view at the home (where the control plane sends
// it) sees what is published on another node.
func TestSpreadWatch(t *testing.T) {
	s := newSpread(t)
	s.tenant("acme")
	secret := s.device("acme", "d", tenants.ClientIDsAny)
	mustV5(t, s.addr, user("acme", "d"), secret, "starter") // the tenant runs at the home
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan string, 10)
	if err := s.hub.Watch(ctx, "acme", "owner", "w/#", func(m dataplane.Message) { got <- m.Topic + " " + string(m.Payload) }); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(s.hub.Collector(0))
	if got := metricValue(t, reg, "roost_fabric_tenant_routes"); got != 1 {
		t.Errorf("roost_fabric_tenant_routes at the home = %v, want 1 (the view's)", got)
	}
	pub := mustV5(t, s.b.addr, user("acme", "d"), secret, "pub")
	pub.pub(t, "w/x", "seen", 1, false)
	select {
	case m := <-got:
		if m != "w/x seen" {
			t.Fatalf("the view got %q", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the live view did not see a message published on the other node")
	}
	cancel()
	// Once the view ended its route goes: what b publishes on w/ then
	// crosses to nobody.
	eventually(t, 5*time.Second, "the view's route gone", func() bool {
		before := s.fabB.Stats().Sent
		pub.pub(t, "w/x", "after the view", 1, false)
		return s.fabB.Stats().Sent == before
	})
}

// TestSpreadSessionMoves: a persistent session lives on whichever node
// its client connects to. Away, it gets what is published on both nodes,
// queued by the publishers' nodes; it resumes on the other node with all
// of it, in order per publisher; live there, it gets what the first node
// publishes through its node, and its acknowledgements empty its queue.
func TestSpreadSessionMoves(t *testing.T) {
	s := newSpread(t)
	s.tenant("acme")
	secret := s.device("acme", "d", tenants.ClientIDsAny)
	sub := mustV5(t, s.addr, user("acme", "d"), secret, "keeper", keepSession)
	sub.sub(t, "q/#", 1)
	sub.Disconnect(&paho.Disconnect{})
	pubA := mustV5(t, s.addr, user("acme", "d"), secret, "pub-a")
	pubB := mustV5(t, s.b.addr, user("acme", "d"), secret, "pub-b")
	for i := range 10 {
		pubA.pub(t, "q/a", fmt.Sprint(i), 1, false)
		pubB.pub(t, "q/b", fmt.Sprint(i), 1, false)
	}
	back := mustV5(t, s.b.addr, user("acme", "d"), secret, "keeper", keepSession)
	if !back.connack.SessionPresent {
		t.Fatal("the session is not present on the other node")
	}
	next := map[string]int{}
	for range 20 {
		select {
		case m := <-back.msgs:
			if want := fmt.Sprint(next[m.Topic]); string(m.Payload) != want {
				t.Fatalf("%s: got %q, want %q (order per publisher)", m.Topic, m.Payload, want)
			}
			next[m.Topic]++
		case <-time.After(5 * time.Second):
			t.Fatalf("queued messages resumed on the other node: %v, want 10 on each topic", next)
		}
	}
	// Live on b: what a publishes reaches it through b, in order, once
	// (one published as the session attaches is both read from its queue
	// by b's catchUp and sent by a's node: b sends it once).
	dups := 0
	for i := 10; i < 15; i++ {
		pubA.pub(t, "q/a", fmt.Sprint(i), 1, false)
		for got := false; !got; {
			select {
			case m := <-back.msgs:
				switch n, _ := strconv.Atoi(string(m.Payload)); {
				case n == i:
					got = true
				case n < i:
					dups++
				default:
					t.Fatalf("got %q before %d", m.Payload, i)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("live message %d did not arrive", i)
			}
		}
	}
	if dups > 0 {
		t.Errorf("%d duplicates of live messages, want none", dups)
	}
	s.queueEmptied(t, "keeper", "the acknowledged messages deleted from the queue")
}

// TestSpreadSessionTakeover: a client id connecting on the other node
// takes its session over: the first connection is ended with 0x8E, and no
// message queued for the session is lost.
func TestSpreadSessionTakeover(t *testing.T) {
	s := newSpread(t)
	s.tenant("acme")
	secret := s.device("acme", "d", tenants.ClientIDsAny)
	first := mustV5(t, s.addr, user("acme", "d"), secret, "keeper", keepSession)
	first.sub(t, "q/#", 1)
	pub := mustV5(t, s.b.addr, user("acme", "d"), secret, "pub")
	pub.pub(t, "q/x", "0", 1, false)
	first.expect(t, "q/x", "0")
	// paho acknowledges a message after handing it over: taken over before
	// the broker has the PUBACK, the session must send it again
	// [MQTT-4.4.0-1].
	s.queueEmptied(t, "keeper", "the first connection's PUBACK recorded")
	second := mustV5(t, s.b.addr, user("acme", "d"), secret, "keeper", keepSession)
	if !second.connack.SessionPresent {
		t.Fatal("the session is not present on the other node")
	}
	select {
	case d := <-first.discs:
		if d.ReasonCode != 0x8E {
			t.Errorf("the first connection ended with 0x%02X, want 0x8E", d.ReasonCode)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the first connection was not ended")
	}
	for i := 1; i <= 5; i++ {
		pub.pub(t, "q/x", fmt.Sprint(i), 1, false)
		second.expect(t, "q/x", fmt.Sprint(i))
	}
	first.quiet(t, 200*time.Millisecond, "a message to the connection taken over")
}

// TestSpreadCleanStartDiscards: a client that comes back with a clean
// start and no session discards its old one everywhere: nothing is queued
// for it any more.
func TestSpreadCleanStartDiscards(t *testing.T) {
	s := newSpread(t)
	s.tenant("acme")
	secret := s.device("acme", "d", tenants.ClientIDsAny)
	old := mustV5(t, s.addr, user("acme", "d"), secret, "keeper", keepSession)
	old.sub(t, "q/#", 1)
	old.Disconnect(&paho.Disconnect{})
	fresh := mustV5(t, s.b.addr, user("acme", "d"), secret, "keeper") // clean start, no expiry
	if fresh.connack.SessionPresent {
		t.Fatal("a clean start found a session")
	}
	fresh.Disconnect(&paho.Disconnect{})
	pub := mustV5(t, s.addr, user("acme", "d"), secret, "pub")
	pub.pub(t, "q/x", "for nobody", 1, false)
	back := mustV5(t, s.addr, user("acme", "d"), secret, "keeper", keepSession)
	if back.connack.SessionPresent {
		t.Fatal("the discarded session came back")
	}
	back.quiet(t, 300*time.Millisecond, "a message queued for a discarded session")
	info, err := s.sessA.QueueInfo(context.Background(), "acme", "keeper")
	if err != nil || info.Len != 0 {
		t.Errorf("the discarded session's queue: %+v, %v; want empty", info, err)
	}
}

// TestSpreadSessionExpires: a session whose client stays away past its
// expiry, held by no node, is ended by the tenant's home: its record and
// its routes go, and nothing is queued for it any more.
func TestSpreadSessionExpires(t *testing.T) {
	s := newSpread(t, func(c *broker.Config) { c.IdleTimeout = 2 * time.Second }) // the hub sweeps every second
	s.tenant("acme")
	secret := s.device("acme", "d", tenants.ClientIDsAny)
	brief := mustV5(t, s.b.addr, user("acme", "d"), secret, "brief", func(c *paho.Connect) {
		c.CleanStart = false
		c.Properties = &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(1)}
	})
	brief.sub(t, "q/#", 1)
	brief.Disconnect(&paho.Disconnect{})
	mustV5(t, s.addr, user("acme", "d"), secret, "starter") // the tenant runs at the home
	eventually(t, 10*time.Second, "the expired session deleted", func() bool {
		_, found, err := s.sessA.Session(context.Background(), "acme", "brief")
		return err == nil && !found
	})
	pub := mustV5(t, s.b.addr, user("acme", "d"), secret, "pub")
	pub.pub(t, "q/x", "for nobody", 1, false)
	info, err := s.sessA.QueueInfo(context.Background(), "acme", "brief")
	if err != nil || info.Len != 0 {
		t.Errorf("the expired session's queue: %+v, %v; want nothing queued", info, err)
	}
}

// TestSpreadQueueBound: a node queueing for a session that no node holds
// keeps to max_queued: the newest copies beyond it are dropped.
func TestSpreadQueueBound(t *testing.T) {
	s := newSpread(t)
	s.tenant("acme")
	s.setQuota("acme", "max_queued", 3)
	secret := s.device("acme", "d", tenants.ClientIDsAny)
	sub := mustV5(t, s.addr, user("acme", "d"), secret, "keeper", keepSession)
	sub.sub(t, "q/#", 1)
	sub.Disconnect(&paho.Disconnect{})
	pub := mustV5(t, s.b.addr, user("acme", "d"), secret, "pub")
	for i := range 5 {
		pub.pub(t, "q/x", fmt.Sprint(i), 1, false)
	}
	if info, err := s.sessA.QueueInfo(context.Background(), "acme", "keeper"); err != nil || info.Len != 3 {
		t.Fatalf("queue: %+v, %v; want 3 (max_queued)", info, err)
	}
	back := mustV5(t, s.addr, user("acme", "d"), secret, "keeper", keepSession)
	for i := range 3 {
		back.expect(t, "q/x", fmt.Sprint(i))
	}
	back.quiet(t, 300*time.Millisecond, "a copy beyond max_queued")
}

// TestSpreadWillHeldElsewhere: a client that drops off one node with a
// delayed Will and comes back on the other within the delay has its Will
// dropped: it is not published.
func TestSpreadWillHeldElsewhere(t *testing.T) {
	s := newSpread(t)
	s.tenant("acme")
	secret := s.device("acme", "d", tenants.ClientIDsAny)
	watcher := mustV5(t, s.b.addr, user("acme", "d"), secret, "watcher")
	watcher.sub(t, "wills/#", 1)
	withWill := func(c *paho.Connect) {
		keepSession(c)
		c.WillMessage = &paho.WillMessage{Topic: "wills/dev", Payload: []byte("gone"), QoS: 1}
		c.WillProperties = &paho.WillProperties{WillDelayInterval: paho.Uint32(2)}
	}
	dev := mustV5(t, s.addr, user("acme", "d"), secret, "dev", withWill)
	dev.conn.Close() // dropped, no DISCONNECT: the Will waits out its delay on a
	time.Sleep(200 * time.Millisecond)
	mustV5(t, s.b.addr, user("acme", "d"), secret, "dev", withWill)
	watcher.quiet(t, 3*time.Second, "the Will of a client back on the other node")

	// Without its client coming back, the Will goes out after its delay.
	other := mustV5(t, s.addr, user("acme", "d"), secret, "dev2", withWill)
	other.conn.Close()
	select {
	case m := <-watcher.msgs:
		if m.Topic != "wills/dev" || string(m.Payload) != "gone" {
			t.Fatalf("got %s %q", m.Topic, m.Payload)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the Will of a client that did not come back was not published")
	}
}

// TestSpreadNodeCutOff: a node cut off from Redis past its fabric lease
// has its routes swept by the others; back, it finds its membership gone
// and ends its clean sessions, which may have missed what the others
// acknowledged meanwhile (0x89); a subscriber there then gets the others'
// messages again. It ends its persistent sessions too (0x89), which may
// have moved meanwhile: one resumes on the other node with what was
// published while it was cut off.
func TestSpreadNodeCutOff(t *testing.T) {
	url := testenv.RedisURL(t)
	proxy := newCutProxy(t, url)
	b := make([]byte, 6)
	rand.Read(b)
	s := newSpreadOn(t, url, proxy.url, "roost-fabric-"+hex.EncodeToString(b))
	s.tenant("acme")
	secret := s.device("acme", "d", tenants.ClientIDsAny)
	sub := mustV5(t, s.b.addr, user("acme", "d"), secret, "sub")
	sub.sub(t, "t/#", 1)
	keeper := mustV5(t, s.b.addr, user("acme", "d"), secret, "keeper", keepSession)
	keeper.sub(t, "k/#", 1)
	pub := mustV5(t, s.addr, user("acme", "d"), secret, "pub")
	pub.pub(t, "t/x", "before", 1, false)
	sub.expect(t, "t/x", "before")

	proxy.cut(true)
	eventually(t, 5*time.Second, "the cut-off node's routes swept", func() bool {
		before := s.fabA.Stats().Sent
		pub.pub(t, "t/x", "while cut off", 1, false)
		return s.fabA.Stats().Sent == before
	})
	pub.pub(t, "k/x", "for the session", 1, false)
	proxy.cut(false)
	for _, c := range []struct {
		name string
		c    *v5
	}{{"clean subscriber", sub}, {"persistent session", keeper}} {
		select {
		case d := <-c.c.discs:
			if d.ReasonCode != 0x89 {
				t.Errorf("the cut-off node's %s ended with 0x%02X, want 0x89", c.name, d.ReasonCode)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("the cut-off node's %s was not ended once it was back", c.name)
		}
	}
	back := mustV5(t, s.addr, user("acme", "d"), secret, "keeper", keepSession)
	if !back.connack.SessionPresent {
		t.Fatal("the persistent session did not resume on the other node")
	}
	// What was published for it while its node was cut off reached it on
	// the connection ended, or comes on the new one.
	got := false
	for len(keeper.msgs) > 0 {
		got = got || string((<-keeper.msgs).Payload) == "for the session"
	}
	if !got {
		back.expect(t, "k/x", "for the session")
	}
	eventually(t, 10*time.Second, "a subscriber on the node back gets the other's messages", func() bool {
		again, err := dialV5(t, s.b.addr, user("acme", "d"), secret, "again")
		if err != nil {
			return false
		}
		defer again.Disconnect(&paho.Disconnect{})
		if again.sub(t, "t/#", 1) >= 0x80 {
			return false
		}
		pub.pub(t, "t/x", "after", 1, false)
		select {
		case m := <-again.msgs:
			return string(m.Payload) == "after"
		case <-time.After(time.Second):
			return false
		}
	})
	if s.fabB.Stats().Lapses == 0 {
		t.Error("the cut-off node counted no lapse")
	}
}

// TestSpreadSessionHops: a persistent session hops between the nodes, and
// each time messages are published, on the node it has just left, right
// after its DISCONNECT: each resumes on the other node with exactly those,
// in order, none twice. (The node it left is still ending its connection
// as they arrive: they must be queued once, and its end must not drop
// them from the queue.)
func TestSpreadSessionHops(t *testing.T) {
	s := newSpread(t)
	s.tenant("acme")
	secret := s.device("acme", "d", tenants.ClientIDsAny)
	nodes := []string{s.addr, s.b.addr}
	pubs := []*v5{mustV5(t, s.addr, user("acme", "d"), secret, "pub-a"), mustV5(t, s.b.addr, user("acme", "d"), secret, "pub-b")}
	p := mustV5(t, nodes[0], user("acme", "d"), secret, "hopper", keepSession)
	p.sub(t, "hop/#", 1)
	for hop := range 6 {
		here := hop % 2
		p.Disconnect(&paho.Disconnect{})
		for i := range 10 {
			pubs[here].pub(t, "hop/x", fmt.Sprintf("%d-%d", hop, i), 1, false)
		}
		p = mustV5(t, nodes[1-here], user("acme", "d"), secret, "hopper", keepSession)
		for i := range 10 {
			p.expect(t, "hop/x", fmt.Sprintf("%d-%d", hop, i))
		}
		p.quiet(t, 100*time.Millisecond, fmt.Sprintf("hop %d: a message twice", hop))
	}
}

// homeOnly is a fabric that does not route to persistent sessions (as the
// Kafka one): they live at the tenant's home.
type homeOnly struct{ fabric.Node }

// TestSpreadSessionsAtHome: with a fabric that cannot route to sessions,
// persistent sessions live at the home, which queues what other nodes
// send it: a session away gets what was published on the other node.
func TestSpreadSessionsAtHome(t *testing.T) {
	persistentAway(t, newSpread(t, func(c *broker.Config) { c.Fabric = homeOnly{c.Fabric} }))
}

// TestSpreadCleanStartElsewhere: a client id connecting with a clean start
// on another node while its persistent session is connected ends that
// connection (0x8E), as a takeover on one node would.
func TestSpreadCleanStartElsewhere(t *testing.T) {
	s := newSpread(t)
	s.tenant("acme")
	secret := s.device("acme", "d", tenants.ClientIDsAny)
	first := mustV5(t, s.addr, user("acme", "d"), secret, "keeper", keepSession)
	first.sub(t, "q/#", 1)
	mustV5(t, s.b.addr, user("acme", "d"), secret, "keeper") // clean start, no session
	select {
	case d := <-first.discs:
		if d.ReasonCode != 0x8E {
			t.Errorf("the first connection ended with 0x%02X, want 0x8E", d.ReasonCode)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the first connection was not ended")
	}
}

// TestSpreadSessionNotResumedDropsRoutes: a stored session that ends as
// its client is back — expired by then, or resumed by a connection that
// keeps no session, with which it ends — loses its routes: nothing is
// queued for its old subscriptions any more, and the next session does
// not get what they match.
func TestSpreadSessionNotResumedDropsRoutes(t *testing.T) {
	s := newSpread(t)
	s.tenant("acme")
	secret := s.device("acme", "d", tenants.ClientIDsAny)
	pub := mustV5(t, s.addr, user("acme", "d"), secret, "pub")
	expiring := func(c *paho.Connect) {
		c.CleanStart = false
		c.Properties = &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(1)}
	}
	for _, tc := range []struct {
		name    string
		back    func(*paho.Connect)
		pause   time.Duration
		resumed bool
	}{
		{"expired", keepSession, 1500 * time.Millisecond, false},
		{"keeps none", func(c *paho.Connect) { c.CleanStart = false }, 200 * time.Millisecond, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := strings.ReplaceAll(tc.name, " ", "-")
			old := mustV5(t, s.b.addr, user("acme", "d"), secret, id, expiring)
			old.sub(t, "old/"+id, 1)
			old.Disconnect(&paho.Disconnect{})
			time.Sleep(tc.pause)
			back := mustV5(t, s.b.addr, user("acme", "d"), secret, id, tc.back)
			if back.connack.SessionPresent != tc.resumed {
				t.Fatalf("CONNACK session present %v, want %v", back.connack.SessionPresent, tc.resumed)
			}
			back.Disconnect(&paho.Disconnect{})
			if tc.resumed {
				eventually(t, 5*time.Second, "the session gone with the connection", func() bool {
					_, found, err := s.sessA.Session(context.Background(), "acme", id)
					return err == nil && !found
				})
			}
			pub.pub(t, "old/"+id, "for the old subscription", 1, false)
			info, err := s.sessA.QueueInfo(context.Background(), "acme", id)
			if err != nil || info.Len != 0 {
				t.Errorf("queued for a session not resumed: %+v, %v", info, err)
			}
		})
	}
}

// TestSpreadExpiredSessionLeavesNothing: a client back after its session
// expired, before the tenant's home ended it, starts a new session: it is
// not sent what was queued for the old one, and the queue holds none of
// it.
func TestSpreadExpiredSessionLeavesNothing(t *testing.T) {
	s := newSpread(t)
	s.tenant("acme")
	secret := s.device("acme", "d", tenants.ClientIDsAny)
	pub := mustV5(t, s.addr, user("acme", "d"), secret, "pub")
	old := mustV5(t, s.b.addr, user("acme", "d"), secret, "brief", func(c *paho.Connect) {
		c.CleanStart = false
		c.Properties = &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(1)}
	})
	old.sub(t, "q/#", 1)
	old.Disconnect(&paho.Disconnect{})
	pub.pub(t, "q/x", "for the old session", 1, false)
	if info, err := s.sessA.QueueInfo(context.Background(), "acme", "brief"); err != nil || info.Len != 1 {
		t.Fatalf("queued for the session while away: %+v, %v; want 1", info, err)
	}
	time.Sleep(1500 * time.Millisecond)
	back := mustV5(t, s.b.addr, user("acme", "d"), secret, "brief", keepSession)
	if back.connack.SessionPresent {
		t.Fatal("the expired session was resumed")
	}
	back.quiet(t, 300*time.Millisecond, "a message queued for the expired session")
	if info, err := s.sessA.QueueInfo(context.Background(), "acme", "brief"); err != nil || info.Len != 0 {
		t.Errorf("the new session's queue: %+v, %v; want empty", info, err)
	}
}

// TestSpreadResumedOnceEach: a persistent session that left one node and
// resumes on the other, beside a clean subscriber there, gets what is
// published on the first node once each — whether its routes were written
// by its own subscription or seeded as a tenant widens (fabric's
// SeedSessions), and whichever connects first. The messages are
// published right after the session's CONNACK, before its node records it
// as connected there (that node's fabric attaches slowly, as a loaded
// node does): their publisher queues them for the session, and sends
// those the clean subscriber wants to its node, whose broker hands them
// to the session too.
func TestSpreadResumedOnceEach(t *testing.T) {
	const attachDelay = 300 * time.Millisecond
	for _, tc := range []struct {
		name        string
		seed        bool
		cleanBefore bool
	}{
		{"clean first", false, true},
		{"session first", false, false},
		{"seeded, clean first", true, true}, // as in cmd/roost's TestWideTenant
		{"seeded, session first", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSlowSpread(t, attachDelay, 0)
			s.tenant("acme")
			secret := s.device("acme", "d", tenants.ClientIDsAny)
			s.leftSession(t, secret, "pc", "q/#", 1)
			if tc.seed {
				seedSession(t, s, "acme", "pc")
			}
			var clean *v5
			subscribeClean := func() {
				clean = mustV5(t, s.b.addr, user("acme", "d"), secret, "c1")
				clean.sub(t, "q/x", 1)
			}
			pub := mustV5(t, s.addr, user("acme", "d"), secret, "p")
			if tc.cleanBefore {
				subscribeClean()
			}
			pc := mustV5(t, s.b.addr, user("acme", "d"), secret, "pc", keepSession)
			if !pc.connack.SessionPresent {
				t.Fatal("the session is not present on the other node")
			}
			if !tc.cleanBefore {
				subscribeClean()
			}
			// One for the session alone (queued, sent nowhere), then five
			// the clean subscriber wants too.
			want := []string{"alone"}
			pub.pub(t, "q/y", "alone", 1, false)
			for i := range 5 {
				pub.pub(t, "q/x", fmt.Sprint(i), 1, false)
				want = append(want, fmt.Sprint(i))
			}
			for i := range 5 {
				clean.expect(t, "q/x", fmt.Sprint(i))
			}
			got := map[string]int{}
			var order []string
			deadline := time.After(attachDelay + 2*time.Second)
			for collecting := true; collecting; {
				select {
				case m := <-pc.msgs:
					got[string(m.Payload)]++
					order = append(order, string(m.Payload))
				case <-deadline:
					collecting = false
				}
			}
			missing := slices.DeleteFunc(slices.Clone(want), func(p string) bool { return got[p] > 0 })
			if dups := len(order) - len(got); len(missing) > 0 || dups > 0 {
				t.Errorf("the persistent session got %v (%d duplicates, %v missing); want each of %v once", order, dups, missing, want)
			}
			clean.quiet(t, 100*time.Millisecond, "the clean subscriber: a message twice")
			s.queueEmptied(t, "pc", "the acknowledged messages deleted from the session's queue")
		})
	}
}

// slowAttach is a fabric whose Attach takes delay: a node loaded enough
// that a resumed session's subscriptions are live there a while before
// the fabric sends its messages there. With lag, each message from its
// inbox is delivered that much later: its inbox lags too.
type slowAttach struct {
	*fabric.Redis
	delay, lag time.Duration
}

func (f slowAttach) Join(ctx context.Context, tenant string, home bool, deliver func(fabric.Message) error) (fabric.Owner, error) {
	if f.lag > 0 {
		prompt := deliver
		deliver = func(m fabric.Message) error {
			time.Sleep(f.lag)
			return prompt(m)
		}
	}
	o, err := f.Redis.Join(ctx, tenant, home, deliver)
	if err != nil {
		return nil, err
	}
	return slowAttachOwner{o.(fabric.SessionOwner), f.delay}, nil
}

// newSlowSpread is a spread whose node b attaches sessions delay late and
// delivers each inbox message lag late (see slowAttach), on a key prefix
// of its own (s.prefix, for a third node).
func newSlowSpread(t *testing.T, delay, lag time.Duration) *spread {
	t.Helper()
	b := make([]byte, 6)
	rand.Read(b)
	prefix := "roost-fabric-" + hex.EncodeToString(b)
	url := testenv.RedisURL(t)
	s := newSpreadWith(t, newFabric(t, url, prefix, "node-a"), slowAttach{Redis: newFabric(t, url, prefix, "node-b"), delay: delay, lag: lag})
	s.prefix = prefix
	return s
}

type slowAttachOwner struct {
	fabric.SessionOwner
	delay time.Duration
}

func (o slowAttachOwner) Attach(ctx context.Context, clientID string, epoch uint64) error {
	time.Sleep(o.delay)
	return o.SessionOwner.Attach(ctx, clientID, epoch)
}

// TestSpreadResumedWhileMessagesCross: a persistent session resumes on
// node b while a publisher on a goes on at QoS 2, and b is loaded: its
// fabric attaches the session late and delivers its inbox late. What is
// published before the attach is queued for the session and crosses to b
// for a clean subscriber there, without the session's copy; what is
// published after crosses with it; b's catchUp reads the session's queue
// while many of both are still in its inbox. The session gets each message
// exactly once, in order.
func TestSpreadResumedWhileMessagesCross(t *testing.T) {
	const attachDelay, inboxLag, n = 300 * time.Millisecond, 60 * time.Millisecond, 20
	s := newSlowSpread(t, attachDelay, inboxLag)
	s.tenant("acme")
	secret := s.device("acme", "d", tenants.ClientIDsAny)
	s.leftSession(t, secret, "pc", "q/#", 2)
	clean := mustV5(t, s.b.addr, user("acme", "d"), secret, "c1")
	clean.sub(t, "q/#", 0)
	pub := mustV5(t, s.addr, user("acme", "d"), secret, "p")
	pc := mustV5(t, s.b.addr, user("acme", "d"), secret, "pc", keepSession)
	if !pc.connack.SessionPresent {
		t.Fatal("the session is not present on the other node")
	}
	for i := range n {
		pub.pub(t, "q/x", fmt.Sprint(i), 2, false)
		time.Sleep(attachDelay / 10)
	}
	var got []string
	deadline := time.After(n*inboxLag + 5*time.Second)
	for len(got) < n {
		select {
		case m := <-pc.msgs:
			got = append(got, string(m.Payload))
		case <-deadline:
			t.Fatalf("the session got %v, want 0 to %d", got, n-1)
		}
	}
	pc.quiet(t, 500*time.Millisecond, "a message twice")
	for i, p := range got {
		if p != fmt.Sprint(i) {
			t.Fatalf("the session got %v, want 0 to %d once each, in order", got, n-1)
		}
	}
	s.queueEmptied(t, "pc", "the session's queue emptied")
}

// TestSpreadResumedForOneConnection: a connection with Clean Start 0 and
// no session expiry resumes the stored session of its client id, on
// whichever node [MQTT-3.1.2-5] — its subscriptions and what was queued —
// and the session ends with that connection [MQTT-3.1.2-11].
func TestSpreadResumedForOneConnection(t *testing.T) {
	s := newSpread(t)
	s.tenant("acme")
	secret := s.device("acme", "d", tenants.ClientIDsAny)
	s.leftSession(t, secret, "pc", "q/#", 1)
	pub := mustV5(t, s.addr, user("acme", "d"), secret, "p")
	pub.pub(t, "q/x", "queued", 1, false)
	once := mustV5(t, s.b.addr, user("acme", "d"), secret, "pc", func(c *paho.Connect) { c.CleanStart = false })
	if !once.connack.SessionPresent {
		t.Fatal("the stored session was not resumed (CONNACK session present 0)")
	}
	pub.pub(t, "q/x", "live", 1, false) // right after the CONNACK
	once.expect(t, "q/x", "queued")
	once.expect(t, "q/x", "live")
	once.Disconnect(&paho.Disconnect{})
	eventually(t, 5*time.Second, "the session gone with its connection", func() bool {
		_, found, err := s.sessA.Session(context.Background(), "acme", "pc")
		return err == nil && !found
	})
	again := mustV5(t, s.addr, user("acme", "d"), secret, "pc", keepSession)
	if again.connack.SessionPresent {
		t.Error("the session outlived the connection that kept none")
	}
	pub.pub(t, "q/x", "after", 1, false)
	again.quiet(t, 300*time.Millisecond, "a message for the ended session's subscription")
}

// TestSpreadResumedInOrder: a session stored on one node and resumed on
// another is sent what it had queued before anything new (see
// resumedInOrder), kept or resumed for one connection
// (TestSpreadResumedForOneConnection failed once in CI on a message
// published right after the CONNACK).
func TestSpreadResumedInOrder(t *testing.T) {
	for _, c := range []struct {
		name    string
		connect func(*paho.Connect)
	}{{"kept", keepSession}, {"for one connection", func(c *paho.Connect) { c.CleanStart = false }}} {
		t.Run(c.name, func(t *testing.T) {
			s := newSpread(t)
			s.tenant("acme")
			secret := s.device("acme", "d", tenants.ClientIDsAny)
			s.leftSession(t, secret, "pc", "q/#", 1)
			resumedInOrder(t, s.stack, secret, s.b.addr, c.connect, func(n int) { s.queued(t, "pc", n) })
		})
	}
}

// TestSpreadTakeoverAlternating: a persistent session's client id connects
// on the two nodes alternately, 100 times, each connection taking the
// session over from the one on the other node while a publisher goes on at
// QoS 1. Each connection is ended with 0x8E as the next one connects (one
// owner at a time), and every message acknowledged to the publisher
// reaches the client, on one of its connections; duplicates are counted
// (a message the client had but did not acknowledge before it was taken
// over comes again).
func TestSpreadTakeoverAlternating(t *testing.T) {
	const takeovers = 100
	s := newSpread(t)
	s.tenant("acme")
	secret := s.device("acme", "d", tenants.ClientIDsAny)
	nodes := []string{s.addr, s.b.addr}
	var mu sync.Mutex
	got := map[string]int{}
	count := func(m *paho.Publish) {
		mu.Lock()
		got[string(m.Payload)]++
		mu.Unlock()
	}
	// collect counts what a connection receives, until it is closed and
	// its messages are all read.
	collect := func(c *v5) {
		go func() {
			for {
				select {
				case m := <-c.msgs:
					count(m)
				case <-c.closed:
					for len(c.msgs) > 0 {
						count(<-c.msgs)
					}
					return
				}
			}
		}()
	}
	lifted := int64(1_000_000)
	if _, err := s.store.AdminUpdateTenant(context.Background(), "acme", tenants.AdminTenantUpdate{Quotas: map[string]*int64{
		"publish_rate": &lifted, "tenant_publish_rate": &lifted}}); err != nil {
		t.Fatal(err)
	}
	cur := mustV5(t, nodes[0], user("acme", "d"), secret, "pc", keepSession)
	cur.sub(t, "q/#", 1)
	collect(cur)

	pub := mustV5(t, s.addr, user("acme", "d"), secret, "p")
	stop := make(chan struct{})
	published := make(chan []string)
	var n atomic.Int64 // publishes answered
	go func() {
		var acked []string
		defer func() { published <- acked }()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			payload := fmt.Sprint(i)
			pctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			r, err := pub.Publish(pctx, &paho.Publish{Topic: "q/x", Payload: []byte(payload), QoS: 1})
			cancel()
			if err == nil && r != nil && r.ReasonCode < 0x80 {
				acked = append(acked, payload)
			}
			n.Add(1)
			time.Sleep(2 * time.Millisecond)
		}
	}()
	for i := range takeovers {
		// Load goes on through every takeover.
		for at := n.Load(); n.Load() < at+2; {
			time.Sleep(time.Millisecond)
		}
		next := mustV5(t, nodes[(i+1)%2], user("acme", "d"), secret, "pc", keepSession)
		if !next.connack.SessionPresent {
			t.Fatalf("takeover %d: the session is not present", i)
		}
		collect(next)
		select {
		case d := <-cur.discs:
			if d.ReasonCode != 0x8E {
				t.Fatalf("takeover %d: the connection taken over ended with 0x%02X, want 0x8E", i, d.ReasonCode)
			}
		case <-cur.closed:
			t.Fatalf("takeover %d: the connection on the other node was closed without a DISCONNECT", i)
		case <-time.After(5 * time.Second):
			t.Fatalf("takeover %d: the connection on the other node was not ended", i)
		}
		cur = next
	}
	close(stop)
	acked := <-published
	select {
	case d := <-pub.discs:
		t.Fatalf("the publisher was disconnected: 0x%02X", d.ReasonCode)
	default:
	}
	var missing []string
	eventually(t, 10*time.Second, "every acknowledged message received", func() bool {
		mu.Lock()
		defer mu.Unlock()
		missing = slices.DeleteFunc(slices.Clone(acked), func(p string) bool { return got[p] > 0 })
		return len(missing) == 0
	})
	mu.Lock()
	dups := 0
	for _, n := range got {
		dups += n - 1
	}
	mu.Unlock()
	t.Logf("%d takeovers: %d messages acknowledged, %d missing, %d duplicates", takeovers, len(acked), len(missing), dups)
	if len(acked) < takeovers {
		t.Errorf("only %d messages acknowledged during %d takeovers, want some during each", len(acked), takeovers)
	}
}

// TestSpreadTakeoverEndsOldFirst: a persistent session's client connects
// on node b while its connection on node a is open, and b's fabric
// attaches the session slowly (a loaded node: the session's routes name
// a for a while after b's CONNACK). What is published after that CONNACK
// must not reach the connection on a: a is told of the takeover before
// the CONNACK (fabric.Tenant.Kick), so it ends that connection (0x8E)
// before it reads what a publisher on a third node sent to it after. (It used to learn of it from
// the attach, after the CONNACK, and served the old connection meanwhile:
// TestSpreadFleetTakeover found it.) The new connection gets every
// message.
func TestSpreadTakeoverEndsOldFirst(t *testing.T) {
	const attachDelay = 500 * time.Millisecond
	s := newSlowSpread(t, attachDelay, 0)
	s.tenant("acme")
	secret := s.device("acme", "d", tenants.ClientIDsAny)
	old := mustV5(t, s.addr, user("acme", "d"), secret, "pc", keepSession)
	old.sub(t, "q/#", 1)
	// The publisher is on a third node: what it sends for the session
	// goes where the session's routes say.
	addrC := s.third(t)
	pub := mustV5(t, addrC, user("acme", "d"), secret, "p")
	pub.pub(t, "q/x", "before", 1, false)
	old.expect(t, "q/x", "before")
	next := mustV5(t, s.b.addr, user("acme", "d"), secret, "pc", keepSession)
	if !next.connack.SessionPresent {
		t.Fatal("the session is not present on the other node")
	}
	const n = 5
	for i := range n {
		pub.pub(t, "q/x", fmt.Sprint(i), 1, false)
	}
	select {
	case d := <-old.discs:
		if d.ReasonCode != 0x8E {
			t.Errorf("the connection taken over ended with 0x%02X, want 0x8E", d.ReasonCode)
		}
	case <-time.After(attachDelay + 2*time.Second):
		t.Fatal("the connection taken over was not ended")
	}
	select {
	case <-old.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("the connection taken over is still open 2 s after its DISCONNECT")
	}
	var late []string
	for len(old.msgs) > 0 {
		late = append(late, string((<-old.msgs).Payload))
	}
	if len(late) > 0 {
		t.Errorf("two owners at once: the connection taken over on node a got %v, published after the new connection's CONNACK", late)
	}
	got := map[string]bool{}
	deadline := time.After(attachDelay + 2*time.Second)
	for len(got) < n {
		select {
		case m := <-next.msgs:
			if string(m.Payload) != "before" {
				got[string(m.Payload)] = true
			}
		case <-deadline:
			t.Fatalf("the new connection got %v of the %d messages published after its CONNACK", got, n)
		}
	}
}

// leftSession makes the tenant acme's persistent session clientID (device
// d, on the first node) subscribed to filter, and leaves it stored.
func (s *spread) leftSession(t *testing.T, secret, clientID, filter string, qos byte) {
	t.Helper()
	c := mustV5(t, s.addr, user("acme", "d"), secret, clientID, keepSession)
	c.sub(t, filter, qos)
	c.Disconnect(&paho.Disconnect{})
}

// queued waits until the tenant acme's session clientID has n messages
// queued.
func (s *spread) queued(t *testing.T, clientID string, n int) {
	t.Helper()
	eventually(t, 5*time.Second, fmt.Sprintf("%d messages queued for %s", n, clientID), func() bool {
		info, err := s.sessA.QueueInfo(context.Background(), "acme", clientID)
		return err == nil && info.Len == n
	})
}

// queueEmptied waits until the tenant acme's session clientID has nothing
// queued: what it was sent was acknowledged and deleted.
func (s *spread) queueEmptied(t *testing.T, clientID, what string) {
	t.Helper()
	eventually(t, 5*time.Second, what, func() bool {
		info, err := s.sessA.QueueInfo(context.Background(), "acme", clientID)
		return err == nil && info.Len == 0
	})
}

// seedSession writes a stored session's routes as a home widening its
// tenant does (see broker/wide.go).
func seedSession(t *testing.T, s *spread, tenant, clientID string) {
	t.Helper()
	ctx, cancel := contextWithTimeout()
	defer cancel()
	stored, found, err := s.sessA.Session(ctx, tenant, clientID)
	if err != nil || !found {
		t.Fatalf("read session %s: found %v, %v", clientID, found, err)
	}
	sd := fabric.Seed{ClientID: clientID}
	for _, sub := range stored.Subscriptions {
		sd.Filters = append(sd.Filters, fabric.SessionFilter{Filter: sub.Filter, QoS: sub.QoS, NoLocal: sub.NoLocal})
	}
	// Its client's node may not have let it go yet: a session it holds
	// is not seeded.
	eventually(t, 5*time.Second, "the session's routes seeded", func() bool {
		seeded, err := s.fabA.(*fabric.Redis).SeedSessions(ctx, tenant, []fabric.Seed{sd})
		if err != nil {
			t.Fatalf("seed session %s: %v", clientID, err)
		}
		return len(seeded) == 1
	})
}

// TestSpreadSharedQoS0ToSession: a shared group with a persistent session
// and a clean member, both on the node the publisher is not on, gets every
// QoS 0 message once: a turn that falls to the session's own route is
// queued nowhere (QoS 0), and goes to its node for the group (it was sent
// there without the group, and no member got it).
func TestSpreadSharedQoS0ToSession(t *testing.T) {
	s := newSpread(t)
	s.tenant("acme")
	secret := s.device("acme", "d", tenants.ClientIDsAny)
	kept := mustV5(t, s.b.addr, user("acme", "d"), secret, "kept", keepSession)
	kept.sub(t, "$share/g/jobs/#", 0)
	clean := mustV5(t, s.b.addr, user("acme", "d"), secret, "clean")
	clean.sub(t, "$share/g/jobs/#", 0)
	pub := mustV5(t, s.addr, user("acme", "d"), secret, "pub")
	const n = 40
	for i := range n {
		pub.pub(t, "jobs/x", fmt.Sprint(i), 0, false)
	}
	eachOnce(t, collect(500*time.Millisecond, kept, clean), n, "the group")
}

// TestSpreadSharedTurnToATaker: a shared group's turn goes to a member
// that takes it, on whichever node: with a persistent member away and a
// clean member that may not read the topic, on the node the message is
// published on or on the other, the persistent member gets every turn
// once when it is back. (The node with the clean member kept the group's
// turns, or was sent them for it, and lost them: the ACL refused them.)
func TestSpreadSharedTurnToATaker(t *testing.T) {
	for _, c := range []struct{ name, blindOn string }{
		{"member that may not read where the turn arrives", "b"},
		{"member that may not read where it is published", "a"},
		{"members that may not read on both nodes", "ab"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newSpread(t)
			s.tenant("acme")
			s.rules("acme",
				tenants.ACLRuleInput{Effect: tenants.Deny, Action: tenants.ActionSubscribe, Topic: "jobs/secret", Device: "blind"},
				allow(tenants.ActionAll, "#"))
			at := map[string]string{"a": s.addr, "b": s.b.addr}
			blindSecret := s.device("acme", "blind", tenants.ClientIDsAny)
			var blind []*v5
			for _, node := range c.blindOn {
				m := mustV5(t, at[string(node)], user("acme", "blind"), blindSecret, "blind-"+string(node))
				m.sub(t, "$share/g/jobs/#", 1)
				blind = append(blind, m)
			}
			secret := s.device("acme", "d", tenants.ClientIDsAny)
			kept := mustV5(t, s.b.addr, user("acme", "d"), secret, "kept", keepSession)
			kept.sub(t, "$share/g/jobs/#", 1)
			kept.Disconnect(&paho.Disconnect{})
			time.Sleep(200 * time.Millisecond)
			pub := mustV5(t, s.addr, user("acme", "d"), secret, "pub")
			const n = 40
			for i := range n {
				pub.pub(t, "jobs/secret", fmt.Sprint(i), 1, false)
			}
			pub.barrier(t)
			back := mustV5(t, s.addr, user("acme", "d"), secret, "kept", keepSession)
			got := collect(time.Second, append([]*v5{back}, blind...)...)
			for i := range blind {
				if len(got[1+i]) != 0 {
					t.Errorf("a member that may not read the topic got %d messages", len(got[1+i]))
				}
			}
			eachOnce(t, got, n, "the persistent member, back")
		})
	}
}

// TestSpreadSharedPassedTurnStored: a turn passed on to a node (none of
// the group's members on the node it was sent to could take it) and given
// there to a connected persistent member is stored in the member's queue,
// like any turn given to a persistent session: the member, which
// acknowledged nothing, gets every turn when it is back (one in flight as
// its connection ended may come twice: see atLeastOnce).
func TestSpreadSharedPassedTurnStored(t *testing.T) {
	s := newSpread(t)
	s.tenant("acme")
	s.rules("acme",
		tenants.ACLRuleInput{Effect: tenants.Deny, Action: tenants.ActionSubscribe, Topic: "jobs/secret", Device: "blind"},
		allow(tenants.ActionAll, "#"))
	addrC := s.third(t)
	blindSecret := s.device("acme", "blind", tenants.ClientIDsAny)
	for _, at := range []string{s.b.addr, addrC} {
		m := mustV5(t, at, user("acme", "blind"), blindSecret, "blind-"+at)
		m.sub(t, "$share/g/jobs/#", 1)
	}
	secret := s.device("acme", "d", tenants.ClientIDsAny)
	raw, err := net.DialTimeout("tcp", addrC, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	paused := &pausedConn{Conn: raw, resume: make(chan struct{})}
	kept, err := connectV5(t, paused, user("acme", "d"), secret, "kept", keepSession)
	if err != nil {
		t.Fatal(err)
	}
	kept.sub(t, "$share/g/jobs/#", 1)
	paused.paused.Store(true) // it reads, and acknowledges, nothing more
	pub := mustV5(t, s.addr, user("acme", "d"), secret, "pub")
	const n = 40
	for i := range n {
		pub.pub(t, "jobs/secret", fmt.Sprint(i), 1, false)
	}
	pub.barrier(t)
	raw.Close()
	close(paused.resume)
	back := mustV5(t, addrC, user("acme", "d"), secret, "kept", keepSession)
	atLeastOnce(t, collect(time.Second, back), n, "the persistent member, back")
}

// TestSpreadMaxSessions: where sessions live on any node, a node keeps
// only its connected clients, so max_sessions counts the tenant's waiting
// sessions across its nodes (up to max_sessions × max_nodes): a new
// session past them is refused on a node that keeps none of them, and a
// waiting session's client still connects there.
func TestSpreadMaxSessions(t *testing.T) {
	s := newSpread(t)
	s.tenant("acme")
	s.setQuota("acme", "max_sessions", 2)
	s.setQuota("acme", "max_nodes", 1)
	gw := s.device("acme", "gw", tenants.ClientIDsAny)
	for i := range 2 {
		c := mustV5(t, s.addr, user("acme", "gw"), gw, fmt.Sprintf("s%d", i), keepSession)
		c.sub(t, fmt.Sprintf("inbox/%d", i), 1)
		c.Disconnect(&paho.Disconnect{}) // its session waits for it, in the store
	}
	if code := refusedV5(t, s.b.addr, user("acme", "gw"), gw, "s2", keepSession); code != 0x97 {
		t.Errorf("a third session on the other node: CONNACK %#x, want 0x97", code)
	}
	back := mustV5(t, s.b.addr, user("acme", "gw"), gw, "s1", keepSession)
	if !back.connack.SessionPresent {
		t.Error("a waiting session's client on the other node: no session present")
	}
	back.Disconnect(&paho.Disconnect{})
	s.setQuota("acme", "max_sessions", 3)
	eventually(t, 5*time.Second, "a third session once the bound is 3", func() bool {
		c, err := dialV5(t, s.b.addr, user("acme", "gw"), gw, "s2", keepSession)
		if err == nil {
			c.Disconnect(&paho.Disconnect{})
		}
		return err == nil
	})
}

// TestSpreadResumedOnceLeavesNothing: a connection with Clean Start 0 and
// no session expiry takes over a session whose client is still connected
// on the other node; once it ends, nothing of the session is left: no
// routes (the drop is made under the claim of the connection resuming it,
// though the other node still held them), and nothing queued for it.
func TestSpreadResumedOnceLeavesNothing(t *testing.T) {
	// Node a detaches the old connection's session late: the drop made on
	// b for the resuming connection comes while a still holds the routes.
	b := make([]byte, 6)
	rand.Read(b)
	prefix := "roost-fabric-" + hex.EncodeToString(b)
	url := testenv.RedisURL(t)
	s := newSpreadWith(t, slowDetach{Redis: newFabric(t, url, prefix, "node-a"), delay: 300 * time.Millisecond}, newFabric(t, url, prefix, "node-b"))
	s.prefix = prefix
	s.tenant("acme")
	secret := s.device("acme", "d", tenants.ClientIDsAny)
	old := mustV5(t, s.addr, user("acme", "d"), secret, "tk", keepSession)
	old.sub(t, "tk/#", 1)
	once := mustV5(t, s.b.addr, user("acme", "d"), secret, "tk", func(c *paho.Connect) { c.CleanStart = false })
	if !once.connack.SessionPresent {
		t.Fatal("the session was not resumed")
	}
	select {
	case <-old.discs:
	case <-time.After(5 * time.Second):
		t.Fatal("the old connection was not ended")
	}
	once.Disconnect(&paho.Disconnect{})
	opts, err := goredis.ParseURL(testenv.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	rdb := goredis.NewClient(opts)
	defer rdb.Close()
	eventually(t, 5*time.Second, "the session and its routes gone with the connection", func() bool {
		_, found, err := s.sessA.Session(context.Background(), "acme", "tk")
		routed, rerr := rdb.HExists(context.Background(), s.prefix+":{acme}:routes", "@tk\x00tk/#").Result()
		return err == nil && !found && rerr == nil && !routed
	})
	pub := mustV5(t, s.addr, user("acme", "d"), secret, "p")
	pub.pub(t, "tk/x", "after", 1, false) // queued before its PUBACK, if at all
	if info, err := s.sessA.QueueInfo(context.Background(), "acme", "tk"); err != nil || info.Len != 0 {
		t.Errorf("queued for a session that ended with its connection: %+v, %v", info, err)
	}
}

// slowDetach is a fabric whose Detach takes delay: a node whose ended
// connection's disconnect hook runs late.
type slowDetach struct {
	*fabric.Redis
	delay time.Duration
}

func (f slowDetach) Join(ctx context.Context, tenant string, home bool, deliver func(fabric.Message) error) (fabric.Owner, error) {
	o, err := f.Redis.Join(ctx, tenant, home, deliver)
	if err != nil {
		return nil, err
	}
	return slowDetachOwner{o.(fabric.SessionOwner), f.delay}, nil
}

type slowDetachOwner struct {
	fabric.SessionOwner
	delay time.Duration
}

func (o slowDetachOwner) Detach(ctx context.Context, clientID string) error {
	time.Sleep(o.delay)
	return o.SessionOwner.Detach(ctx, clientID)
}
