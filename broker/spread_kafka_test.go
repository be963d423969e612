package broker_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/roosthub/roost/broker/fabric/kafka"
	"github.com/roosthub/roost/tenants"
)

// The spread scenarios of spread_test.go, with the fabric on Kafka (kfake,
// an in-process cluster speaking the real protocol) instead of Redis.

// kafkaSpread is a tenant served by two nodes joined by a Kafka fabric:
// home (a) holds the persistent sessions, b serves clean ones.
type kafkaSpread struct {
	*spread
	kafka *kafkaCut
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
	return &kafkaSpread{spread: newSpreadWith(t, newKafkaFabric(t, k, topic, "node-a"), newKafkaFabric(t, k, topic, "node-b")), kafka: k}
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
