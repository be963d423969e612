package broker_test

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/tenants"
)

// strictSub is a persistent QoS 1 subscriber that, like a strict client,
// refuses a connection whose first packet is not the CONNACK
// [MQTT-3.2.0-1], acknowledges everything it gets, and keeps what it got.
type strictSub struct {
	t              *testing.T
	addr, user, pw string

	mu       sync.Mutex
	got      map[string]int // payload → times received
	early    []byte         // packet types that came before a CONNACK
	resumed  int            // CONNACKs with the session present
	received atomic.Int64
}

// connect opens a connection for the session and serves it until stop is
// closed or the server closes it; it returns once the CONNACK came.
func (s *strictSub) connect(stop <-chan struct{}) (done <-chan struct{}) {
	s.t.Helper()
	r, _ := dialRawStrict(s.t, s.addr, s.user, s.pw, "sub", func(typ byte) {
		s.mu.Lock()
		s.early = append(s.early, typ)
		s.mu.Unlock()
	})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case <-stop:
				r.c.Close() // gone without a DISCONNECT: the session waits
				return
			case pk, ok := <-r.in:
				if !ok {
					return
				}
				if pk.FixedHeader.Type != packets.Publish {
					continue
				}
				s.mu.Lock()
				s.got[string(pk.Payload)]++
				s.mu.Unlock()
				s.received.Add(1)
				var b [4]byte
				b[0], b[1], b[2], b[3] = packets.Puback<<4, 2, byte(pk.PacketID>>8), byte(pk.PacketID)
				r.c.Write(b[:])
			}
		}
	}()
	return finished
}

// dialRawStrict is dialRaw for a persistent session whose CONNACK must come
// first: early is told the type of any packet before it. cp may adjust
// the CONNECT.
func dialRawStrict(t *testing.T, addr, username, password, clientID string, early func(byte), cp ...func(*packets.Packet)) (*raw, packets.Packet) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	r := &raw{t: t, c: c, in: make(chan packets.Packet, 4096)}
	t.Cleanup(func() { c.Close() })
	go r.read()
	connect := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Keepalive: 30, ClientIdentifier: clientID,
			UsernameFlag: true, Username: []byte(username), PasswordFlag: true, Password: []byte(password),
		},
		Properties: packets.Properties{SessionExpiryInterval: 3600, SessionExpiryIntervalFlag: true},
	}
	for _, f := range cp {
		f(&connect)
	}
	r.send(connect)
	for {
		select {
		case pk, ok := <-r.in:
			if !ok {
				t.Fatal("connection closed before the CONNACK")
			}
			if pk.FixedHeader.Type != packets.Connack {
				early(pk.FixedHeader.Type)
				continue
			}
			if pk.ReasonCode != 0 {
				t.Fatalf("CONNECT refused: %#x", pk.ReasonCode)
			}
			return r, pk
		case <-time.After(5 * time.Second):
			t.Fatal("no CONNACK within 5s")
		}
	}
}

// TestResumeUnderLoad: a persistent subscriber goes away and comes back
// again and again while QoS 1 messages are published to it as fast as the
// publisher gets its PUBACKs. Every acknowledged message reaches it; no
// PUBLISH comes before a CONNACK; once it has acknowledged everything its
// queue is empty (nothing is stuck in it), and a restart redelivers
// nothing.
func TestResumeUnderLoad(t *testing.T) {
	d := newDurable(t)
	d.tenant("acme")
	subSecret, pubSecret := d.device("acme", "sub"), d.device("acme", "pub", tenants.ClientIDsAny)
	sub := &strictSub{t: t, addr: d.addr, user: "acme/sub", pw: subSecret, got: map[string]int{}}
	// Subscribe the session once, from a connection of its own.
	setup := mustV5(t, d.addr, "acme/sub", subSecret, "sub", keepSession)
	setup.sub(t, "load/#", 1)
	setup.conn.Close()

	// Publishers, each as fast as its PUBACKs come back: the store commits
	// their writes together.
	stopPub := make(chan struct{})
	var ackMu sync.Mutex
	var acked []string
	var pubs sync.WaitGroup
	for n := range 8 {
		pub := mustV5(t, d.addr, "acme/pub", pubSecret, fmt.Sprintf("pub-%d", n))
		pubs.Add(1)
		go func() {
			defer pubs.Done()
			for i := 0; ; i++ {
				select {
				case <-stopPub:
					return
				default:
				}
				p := fmt.Sprintf("%d-%d", n, i)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				r, err := pub.Publish(ctx, &paho.Publish{Topic: "load/x", Payload: []byte(p), QoS: 1})
				cancel()
				if err == nil && r.ReasonCode < 0x80 {
					ackMu.Lock()
					acked = append(acked, p)
					ackMu.Unlock()
				}
			}
		}()
	}

	for range 20 {
		time.Sleep(40 * time.Millisecond) // offline while messages queue up
		stop := make(chan struct{})
		done := sub.connect(stop)
		time.Sleep(60 * time.Millisecond) // online while they are resent and more arrive
		close(stop)
		<-done
	}
	close(stopPub)
	pubs.Wait()
	stop := make(chan struct{})
	done := sub.connect(stop)
	defer func() { close(stop); <-done }()

	missing := func() (n int) {
		sub.mu.Lock()
		defer sub.mu.Unlock()
		for _, p := range acked {
			if sub.got[p] == 0 {
				n++
			}
		}
		return n
	}
	for deadline := time.Now().Add(10 * time.Second); missing() > 0 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	if n := missing(); n > 0 {
		t.Errorf("%d of %d acknowledged messages never received (queue: %+v)", n, len(acked), d.hub.Queue("acme", "sub"))
	}
	sub.mu.Lock()
	early := sub.early
	sub.mu.Unlock()
	if len(early) > 0 {
		t.Errorf("packets of types %v came before a CONNACK", early)
	}
	eventually(t, 10*time.Second, "the session's queue empty once everything is acknowledged", func() bool {
		return d.hub.Queue("acme", "sub").Queued == 0
	})
	t.Logf("%d messages acknowledged to the publisher, %d deliveries", len(acked), sub.received.Load())
	t.Logf("resent: %d", strings.Count(d.logs.String(), "sent again"))

	close(stop)
	<-done
	stop = make(chan struct{})
	time.Sleep(100 * time.Millisecond)
	d.restart(t)
	before := sub.received.Load()
	sub.addr = d.addr
	done = sub.connect(stop)
	time.Sleep(300 * time.Millisecond)
	if n := sub.received.Load() - before; n > 0 {
		t.Errorf("after a restart, %d messages already acknowledged came again", n)
	}
}

// TestStuckMessageResent: a queued message a connected session is not
// being sent (mochi lost it) is found by the hub's periodic sweep and sent
// again, so it cannot stay in the queue and hold every later one there.
func TestStuckMessageResent(t *testing.T) {
	d := newDurable(t)
	d.tenant("acme")
	r, _ := dialRaw(t, d.addr, "acme/sub", d.device("acme", "sub"), "sub")
	r.subscribe("q/#", 1)
	pub := mustV5(t, d.addr, "acme/pub", d.device("acme", "pub"), "pub")
	for i := range 3 {
		pub.pub(t, "q/x", strconv.Itoa(i), 1, false)
		if got := r.next(packets.Publish); string(got.Payload) != strconv.Itoa(i) {
			t.Fatalf("got %q, want %d", got.Payload, i)
		}
	}
	// mochi calls OnPublished after it wrote the deliveries: until then a
	// message counts as being routed, and the sweep leaves it alone.
	eventually(t, 5*time.Second, "the publishes routed", func() bool { return broker.Routing(d.hub, "acme") == 0 })
	if n := broker.LoseInflight(d.hub, "acme", "sub"); n != 3 {
		t.Fatalf("lost %d messages, want 3", n)
	}
	broker.Sweep(d.hub)
	for i := range 3 {
		got := r.next(packets.Publish)
		if string(got.Payload) != strconv.Itoa(i) {
			t.Fatalf("resent %q, want %d", got.Payload, i)
		}
		r.ack(packets.Puback, got.PacketID)
	}
	eventually(t, 5*time.Second, "the queue empty once the resent messages are acknowledged", func() bool {
		return d.hub.Queue("acme", "sub").Queued == 0
	})
}
