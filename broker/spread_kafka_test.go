package broker_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/broker/fabric/kafka"
	"github.com/roosthub/roost/tenants"
)

// The spread scenarios of spread_test.go, with the fabric on Kafka (kfake,
// an in-process cluster speaking the real protocol) instead of Redis.

// kafkaSpread is a tenant served by two nodes joined by a Kafka fabric:
// home (a) holds the persistent sessions, b serves clean ones.
type kafkaSpread struct {
	*stack
	b          *peer
	fabA, fabB *kafka.Fabric
	kafka      *kafkaCut
}

// kafkaCut is a kfake cluster whose listener can be cut: every
// connection ended and new ones closed at once.
type kafkaCut struct {
	*kfake.Cluster
	mu    sync.Mutex
	off   bool
	conns []net.Conn
}

type kafkaCutListener struct {
	net.Listener
	k *kafkaCut
}

func (l *kafkaCutListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.k.mu.Lock()
		if l.k.off {
			l.k.mu.Unlock()
			c.Close()
			continue
		}
		l.k.conns = append(l.k.conns, c)
		l.k.mu.Unlock()
		return c, nil
	}
}

func (k *kafkaCut) cut(off bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.off = off
	if off {
		for _, c := range k.conns {
			c.Close()
		}
		k.conns = nil
	}
}

func newKafkaFabric(t *testing.T, k *kafkaCut, topic, node string) *kafka.Fabric {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f, err := kafka.New(ctx, kafka.Config{Brokers: k.ListenAddrs(), Topic: topic, Partitions: 4, Node: node,
		Lease: time.Second, CommitEvery: 100 * time.Millisecond, SendTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func newKafkaSpread(t *testing.T) *kafkaSpread {
	k := &kafkaCut{}
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.ListenFn(func(network, addr string) (net.Listener, error) {
		ln, err := net.Listen(network, addr)
		if err != nil {
			return nil, err
		}
		return &kafkaCutListener{Listener: ln, k: k}, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	k.Cluster = cluster
	t.Cleanup(cluster.Close)
	b := make([]byte, 6)
	rand.Read(b)
	topic := "roost-fabric-" + hex.EncodeToString(b)
	open := sharedRedis(t)
	s := &kafkaSpread{fabA: newKafkaFabric(t, k, topic, "node-a"), fabB: newKafkaFabric(t, k, topic, "node-b"), kafka: k}
	s.stack = newStack(t, func(c *broker.Config) {
		c.Sessions, c.Fabric, c.FabricHome = open(), s.fabA, true
	})
	hub, addr := serveHub(t, broker.Config{Directory: s.store, Changes: s.store.Changes(), Sessions: open(), Fabric: s.fabB,
		Log: slog.New(slog.NewTextHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	s.b = &peer{hub: hub, addr: addr}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(s.logs.String())
		}
	})
	return s
}

// TestSpreadKafkaAcrossNodes: a subscriber on one node gets, in order,
// what is published on the other, at every QoS, both ways; nothing
// published on a topic it did not subscribe to is delivered.
func TestSpreadKafkaAcrossNodes(t *testing.T) {
	s := newKafkaSpread(t)
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
}

// TestSpreadKafkaRouteBeforeSuback: a message published on another node
// right after the SUBACK reaches the new subscriber.
func TestSpreadKafkaRouteBeforeSuback(t *testing.T) {
	s := newKafkaSpread(t)
	s.tenant("acme")
	secret := s.device("acme", "d", tenants.ClientIDsAny)
	pub := mustV5(t, s.addr, user("acme", "d"), secret, "pub")
	pub.pub(t, "warm/up", "the tenant runs", 1, false)
	for i := range 20 {
		sub := mustV5(t, s.b.addr, user("acme", "d"), secret, fmt.Sprintf("sub-%d", i))
		filter := fmt.Sprintf("fresh/%d", i)
		sub.sub(t, filter, 1)
		pub.pub(t, filter, "right after the SUBACK", 1, false)
		sub.expect(t, filter, "right after the SUBACK")
		sub.Disconnect(&paho.Disconnect{})
	}
}

// TestSpreadKafkaSharedOnce: a shared group with a member on each node
// gets each message once, wherever it is published.
func TestSpreadKafkaSharedOnce(t *testing.T) {
	s := newKafkaSpread(t)
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
}

// TestSpreadKafkaRetained: a retained message published on one node is
// there for a subscriber arriving on the other.
func TestSpreadKafkaRetained(t *testing.T) {
	s := newKafkaSpread(t)
	s.tenant("acme")
	secret := s.device("acme", "d", tenants.ClientIDsAny)
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
}

// TestSpreadKafkaPersistentAtHome: a persistent session held at the home
// gets what is published on another node while it is away: queued at the
// home from the tenant's log (acknowledged in Kafka once queued),
// delivered when it comes back.
func TestSpreadKafkaPersistentAtHome(t *testing.T) {
	s := newKafkaSpread(t)
	s.tenant("acme")
	secret := s.device("acme", "d", tenants.ClientIDsAny)
	sub := mustV5(t, s.addr, user("acme", "d"), secret, "keeper", keepSession)
	sub.sub(t, "q/#", 1)
	sub.Disconnect(&paho.Disconnect{})
	pub := mustV5(t, s.b.addr, user("acme", "d"), secret, "pub")
	for i := range 10 {
		pub.pub(t, "q/x", fmt.Sprint(i), 1, false)
	}
	back := mustV5(t, s.addr, user("acme", "d"), secret, "keeper", keepSession)
	if !back.connack.SessionPresent {
		t.Fatal("the session is not present at the home")
	}
	for i := range 10 {
		back.expect(t, "q/x", fmt.Sprint(i))
	}
}

// TestSpreadKafkaTenantsApart: two tenants on the same fabric: what one
// publishes never reaches the other's subscriber, on any node.
func TestSpreadKafkaTenantsApart(t *testing.T) {
	s := newKafkaSpread(t)
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
}

// TestSpreadKafkaCut: with Kafka out of reach, a QoS 1 publish that must
// cross is refused, never acknowledged nor delivered; once Kafka is back
// publishes cross again by themselves.
func TestSpreadKafkaCut(t *testing.T) {
	s := newKafkaSpread(t)
	s.tenant("acme")
	secret := s.device("acme", "d", tenants.ClientIDsAny)
	sub := mustV5(t, s.b.addr, user("acme", "d"), secret, "sub")
	sub.sub(t, "t/#", 1)
	pub := mustV5(t, s.addr, user("acme", "d"), secret, "pub")
	pub.pub(t, "t/x", "before", 1, false)
	sub.expect(t, "t/x", "before")

	s.kafka.cut(true)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	resp, err := pub.Publish(ctx, &paho.Publish{Topic: "t/x", QoS: 1, Payload: []byte("during")})
	cancel()
	if err == nil && resp.ReasonCode < 0x80 {
		t.Fatalf("a publish the fabric could not take was acknowledged: %+v", resp)
	}
	s.kafka.cut(false)
	eventually(t, 15*time.Second, "a publish crossing again", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := pub.Publish(ctx, &paho.Publish{Topic: "t/x", QoS: 1, Payload: []byte("after")})
		return err == nil && resp.ReasonCode < 0x80
	})
	for done := false; !done; {
		select {
		case m := <-sub.msgs:
			if string(m.Payload) == "during" {
				t.Fatal("the refused message was delivered")
			}
			done = string(m.Payload) == "after"
		case <-time.After(10 * time.Second):
			t.Fatal("the message published after Kafka came back did not arrive")
		}
	}
}
