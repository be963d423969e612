package broker_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

// retainedStack is a stack with tenant acme, its rates lifted and room
// for many retained and queued messages.
func retainedStack(t *testing.T) *stack {
	t.Helper()
	s := newStack(t)
	s.tenant("acme")
	liftRates(t, s, "acme")
	many := int64(100_000)
	if _, err := s.store.AdminUpdateTenant(ctx, "acme", tenants.AdminTenantUpdate{
		Quotas: map[string]*int64{"max_retained": &many, "max_queued": &many}}); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestRetainedAllDelivered: a subscription matching far more retained
// messages than a client's queue of pending writes holds (1,024) gets
// every one of them, at QoS 0 and 1, over MQTT 5 and 3.1.1, and the
// connection goes on working after. mochi queued them all at once and
// dropped those that found the queue full (3,378 of 10,000 at QoS 0).
func TestRetainedAllDelivered(t *testing.T) {
	s := retainedStack(t)
	const n = 10_000
	for i := range n {
		if err := s.hub.Publish(ctx, "acme", dataplane.Message{Topic: fmt.Sprintf("r/%d", i), Payload: []byte("retained"), Retain: true}); err != nil {
			t.Fatal(err)
		}
	}
	for _, qos := range []byte{0, 1} {
		t.Run(fmt.Sprintf("MQTT 5 QoS %d", qos), func(t *testing.T) {
			id := fmt.Sprintf("v5-%d", qos)
			conn, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			var got topicSet
			c := paho.NewClient(paho.ClientConfig{Conn: conn, OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
				got.add(pr.Packet.Topic)
				return true, nil
			}}})
			cctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if _, err := c.Connect(cctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true,
				Username: user("acme", id), UsernameFlag: true, Password: []byte(s.device("acme", id)), PasswordFlag: true}); err != nil {
				t.Fatal(err)
			}
			defer c.Disconnect(&paho.Disconnect{})
			if _, err := c.Subscribe(cctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "r/#", QoS: qos}}}); err != nil {
				t.Fatal(err)
			}
			got.expect(t, n, "the subscriber")
			// The connection works on.
			if _, err := c.Publish(cctx, &paho.Publish{Topic: "r/after", QoS: 1, Payload: []byte("after")}); err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("3.1.1 QoS 1", func(t *testing.T) {
		var got topicSet
		c := mustV3(t, s.addr, user("acme", "v3"), s.device("acme", "v3"), "v3", true, func(o *paho3.ClientOptions) {
			o.SetDefaultPublishHandler(func(_ paho3.Client, m paho3.Message) { got.add(m.Topic()) })
		})
		c.sub(t, "r/#", 1)
		got.expect(t, n, "the subscriber")
	})
}

// TestRetainedPaceStalledClient: a client that subscribes to many large
// retained messages and reads none of them holds its reader waiting in
// the pacing; a connection taking its client id over still gets in, and
// is sent them; another device is not held up meanwhile.
func TestRetainedPaceStalledClient(t *testing.T) {
	s := retainedStack(t)
	const n = 3000
	payload := make([]byte, 2048) // 6 MB in all: more than loopback's socket buffers hold
	for i := range n {
		if err := s.hub.Publish(ctx, "acme", dataplane.Message{Topic: fmt.Sprintf("big/%d", i), Payload: payload, Retain: true}); err != nil {
			t.Fatal(err)
		}
	}
	secret := s.device("acme", "stall")
	conn, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var out bytes.Buffer
	connect := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Keepalive: 30, ClientIdentifier: "stall", Clean: true,
			UsernameFlag: true, Username: []byte(user("acme", "stall")), PasswordFlag: true, Password: []byte(secret)}}
	if err := connect.ConnectEncode(&out); err != nil {
		t.Fatal(err)
	}
	subscribe := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 5, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "big/#", Qos: 0}}}
	if err := subscribe.SubscribeEncode(&out); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(out.Bytes()); err != nil {
		t.Fatal(err)
	}
	// It reads nothing. Another device goes on meanwhile.
	time.Sleep(time.Second)
	other := mustV5(t, s.addr, user("acme", "other"), s.device("acme", "other"), "other")
	other.sub(t, "o/t", 1)
	other.pub(t, "o/t", "meanwhile", 1, false)
	other.expect(t, "o/t", "meanwhile")
	// A connection taking the client id over gets in and is sent them.
	var got topicSet
	// The takeover waits for the stalled connection's write timeout (5 s)
	// to close it, pacing or not.
	var c2 *v5
	for deadline := time.Now().Add(30 * time.Second); ; {
		c, err := dialV5(t, s.addr, user("acme", "stall"), secret, "stall")
		if err == nil {
			c2 = c
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("taking the client id over: %v", err)
		}
	}
	go func() {
		for m := range c2.msgs {
			got.add(m.Topic)
		}
	}()
	c2.sub(t, "big/#", 0)
	got.expect(t, n, "the connection that took over")
}

// TestRetainedNoLocalOwn: a client subscribing with No Local to a filter
// that matches more than the pace's high mark (512) of retained messages
// it published itself is sent none of them [MQTT-3.8.3-3], and its
// connection goes on at once. mochi reports each as published
// (OnRetainPublished) although it queued nothing, and the reader waited
// for writes that never came.
func TestRetainedNoLocalOwn(t *testing.T) {
	s := retainedStack(t)
	const n = 600
	c := mustV5(t, s.addr, user("acme", "self"), s.device("acme", "self"), "self")
	for i := range n {
		c.pub(t, fmt.Sprintf("r/%d", i), "own", 1, true)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Subscribe(sctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "r/#", QoS: 1, NoLocal: true}}}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	pctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Publish(pctx, &paho.Publish{Topic: "other", QoS: 1, Payload: []byte("after")}); err != nil {
		t.Fatalf("publish after the SUBSCRIBE: %v after %v, want a PUBACK at once", err, time.Since(start).Round(time.Millisecond))
	}
	select {
	case m := <-c.msgs:
		t.Fatalf("got %s, want none of the client's own retained messages", m.Topic)
	default:
	}
}

// topicSet collects the distinct topics a client is sent.
type topicSet struct {
	mu  sync.Mutex
	got map[string]bool
}

func (ts *topicSet) add(topic string) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.got == nil {
		ts.got = map[string]bool{}
	}
	ts.got[topic] = true
}

func (ts *topicSet) len() int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return len(ts.got)
}

// expect waits up to 30 s for n topics, and fails the test without them.
func (ts *topicSet) expect(t *testing.T, n int, who string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ts.len() < n && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	if got := ts.len(); got != n {
		t.Fatalf("%s got %d of the %d retained messages", who, got, n)
	}
}
