package main

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// TestDrainLosesNothing sends SIGTERM to `roost serve` while a publisher
// sends numbered QoS 1 messages to a persistent subscriber: both v5 clients
// get DISCONNECT 0x8B, the process exits 0 within its drain deadline, no
// Will reaches the subscriber, and after a restart the subscriber has every
// message the publisher got a PUBACK for. (Whether a Will is sent at all
// is pinned down by the broker's TestShutdownWills, which watches from
// inside the hub.)
func TestDrainLosesNothing(t *testing.T) {
	const tenant, admin = "drain", "rop_drain-test-token-0123456789"
	p := &process{t: t, httpAddr: freeAddr(t), mqttAddr: freeAddr(t)}
	p.env = []string{"ROOST_DATA_DIR=" + t.TempDir(), "ROOST_HTTP_ADDR=" + p.httpAddr, "ROOST_MQTT_ADDR=" + p.mqttAddr,
		"ROOST_ADMIN_TOKEN=" + admin, "ROOST_DRAIN_TIMEOUT=10s"}
	p.start()
	var session struct{ Token string }
	p.api("POST", "/v1/signup", "", map[string]string{"email": "drain@example.com", "password": "correct horse battery"}, &session)
	p.api("POST", "/v1/tenants", session.Token, map[string]string{"slug": tenant}, nil)
	p.api("PATCH", "/v1/admin/tenants/"+tenant, admin,
		map[string]any{"quotas": map[string]int64{"publish_rate": 1_000_000, "tenant_publish_rate": 1_000_000}}, nil)
	var sub, pub, will struct{ Secret string }
	p.api("POST", "/v1/tenants/"+tenant+"/devices", session.Token, map[string]string{"name": "sub"}, &sub)
	p.api("POST", "/v1/tenants/"+tenant+"/devices", session.Token, map[string]string{"name": "pub"}, &pub)
	p.api("POST", "/v1/tenants/"+tenant+"/devices", session.Token, map[string]string{"name": "will"}, &will)

	msgs := newLedger()
	onMsg := msgs.receive
	disconnects := make(chan byte, 4)
	connect := func(user, secret, id string, persistent bool, onMsg func(*paho.Publish), willMsg bool) *paho.Client {
		t.Helper()
		c, err := mqttClientWith(p.mqttAddr, user, secret, id, persistent, onMsg, func(d *paho.Disconnect) { disconnects <- d.ReasonCode }, willMsg)
		if err != nil {
			t.Fatalf("%s: %v\n%s", id, err, p.log)
		}
		return c
	}
	sc := connect(tenant+"/sub", sub.Secret, "sub", true, onMsg, false)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := sc.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "seq", QoS: 1}, {Topic: "wills/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	connect(tenant+"/will", will.Secret, "will", false, nil, true)
	pc := connect(tenant+"/pub", pub.Secret, "pub", false, nil, false)

	done := msgs.publish(pc)
	time.Sleep(300 * time.Millisecond)
	p.terminate()
	<-done
	for range 3 {
		toldShutdown(t, "a v5 client", disconnects)
	}

	p.start()
	defer p.kill()
	sc = connect(tenant+"/sub", sub.Secret, "sub", true, onMsg, false)
	defer sc.Disconnect(&paho.Disconnect{})
	msgs.allReceived(t, "after the drain")
	time.Sleep(200 * time.Millisecond) // room for a Will that should not come
	msgs.check(t, 10)
}

// ledger keeps the books of numbered QoS 1 messages sent through a drain:
// which ones a publisher got a PUBACK for, which ones a subscriber
// received, and the Wills (topics wills/…) and other messages it got.
type ledger struct {
	mu       sync.Mutex
	next     int
	acked    map[int]bool
	received map[int]int
	wills    int
	other    map[string]int // by topic
}

func newLedger() *ledger {
	return &ledger{acked: map[int]bool{}, received: map[int]int{}, other: map[string]int{}}
}

// receive is a subscriber's message handler.
func (l *ledger) receive(m *paho.Publish) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if strings.HasPrefix(m.Topic, "wills/") {
		l.wills++
		return
	}
	if n, err := strconv.Atoi(string(m.Payload)); err == nil && m.Topic == "seq" {
		l.received[n]++
		return
	}
	l.other[m.Topic]++
}

// publish sends numbered QoS 1 messages on seq from where the last run
// stopped until a publish fails, and closes done then.
func (l *ledger) publish(c *paho.Client) (done chan struct{}) {
	done = make(chan struct{})
	go func() {
		defer close(done)
		for {
			l.mu.Lock()
			n := l.next
			l.next++
			l.mu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			r, err := c.Publish(ctx, &paho.Publish{Topic: "seq", QoS: 1, Payload: []byte(strconv.Itoa(n))})
			cancel()
			if err != nil {
				return
			}
			if r != nil && r.ReasonCode < 0x80 {
				l.mu.Lock()
				l.acked[n] = true
				l.mu.Unlock()
			}
		}
	}()
	return done
}

// allReceived waits up to 10 s for every acknowledged message to arrive.
func (l *ledger) allReceived(t *testing.T, phase string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l.mu.Lock()
		var lost []int
		for n := range l.acked {
			if l.received[n] == 0 {
				lost = append(lost, n)
			}
		}
		total := len(l.acked)
		l.mu.Unlock()
		if len(lost) == 0 {
			t.Logf("%s: %d messages acknowledged so far, all received", phase, total)
			return
		}
		if time.Now().After(deadline) {
			slices.Sort(lost)
			t.Fatalf("%s: %d acknowledged messages lost, e.g. %v", phase, len(lost), lost[:min(10, len(lost))])
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// check fails the test if fewer than least messages were acknowledged (it
// did not load the server) or if a Will arrived.
func (l *ledger) check(t *testing.T, least int) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.acked) < least {
		t.Errorf("only %d messages were acknowledged: the test did not load the server", len(l.acked))
	}
	if l.wills != 0 {
		t.Errorf("the drain sent %d Wills", l.wills)
	}
}

// count is how many messages arrived on a topic besides seq and wills/….
func (l *ledger) count(topic string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.other[topic]
}

// toldShutdown waits for a DISCONNECT reason code on ch and fails unless it
// is 0x8B (server shutting down).
func toldShutdown(t *testing.T, who string, ch <-chan byte) {
	t.Helper()
	select {
	case code := <-ch:
		if code != 0x8B {
			t.Errorf("%s: DISCONNECT %#x, want 0x8B (server shutting down)", who, code)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s was not told the server is shutting down", who)
	}
}

// terminate sends the process SIGTERM and waits for it to exit 0 within
// its 10 s drain deadline.
func (p *process) terminate() {
	p.t.Helper()
	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan error, 1)
	go func() { exited <- p.cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			p.t.Fatalf("roost %s after SIGTERM: %v\n%s", p.role, err, p.log)
		}
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		p.t.Fatalf("roost %s did not exit within its 10 s drain deadline\n%s", p.role, p.log)
	}
	p.t.Logf("drained and exited in %s", time.Since(start).Round(time.Millisecond))
}

// mqttClientWith is mqttClient with a DISCONNECT callback and, optionally,
// a Will on wills/<id>.
func mqttClientWith(addr, user, secret, id string, persistent bool, onMsg func(*paho.Publish), onDisconnect func(*paho.Disconnect), will bool) (*paho.Client, error) {
	c, err := mqttClientConfig(addr, user, secret, id, persistent, nil, onMsg, func(cfg *paho.ClientConfig, cp *paho.Connect) {
		cfg.OnServerDisconnect = onDisconnect
		if will {
			cp.WillMessage = &paho.WillMessage{Topic: "wills/" + id, QoS: 1, Payload: []byte("gone")}
		}
	})
	return c, err
}
