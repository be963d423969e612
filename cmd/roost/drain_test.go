package main

import (
	"context"
	"strconv"
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

	var mu sync.Mutex
	received, acked := map[int]int{}, map[int]bool{}
	wills := 0
	onMsg := func(m *paho.Publish) {
		mu.Lock()
		defer mu.Unlock()
		if m.Topic == "wills/will" {
			wills++
			return
		}
		if n, err := strconv.Atoi(string(m.Payload)); err == nil {
			received[n]++
		}
	}
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

	done := make(chan struct{})
	go func() {
		defer close(done)
		for n := 0; ; n++ {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			r, err := pc.Publish(ctx, &paho.Publish{Topic: "seq", QoS: 1, Payload: []byte(strconv.Itoa(n))})
			cancel()
			if err != nil {
				return
			}
			if r != nil && r.ReasonCode < 0x80 {
				mu.Lock()
				acked[n] = true
				mu.Unlock()
			}
		}
	}()
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan error, 1)
	go func() { exited <- p.cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("roost serve after SIGTERM: %v\n%s", err, p.log)
		}
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		t.Fatalf("roost serve did not exit within its 10 s drain deadline\n%s", p.log)
	}
	t.Logf("drained and exited in %s", time.Since(start).Round(time.Millisecond))
	<-done
	for range 3 {
		select {
		case code := <-disconnects:
			if code != 0x8B {
				t.Errorf("DISCONNECT %#x, want 0x8B (server shutting down)", code)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a v5 client was not told the server is shutting down")
		}
	}

	p.start()
	defer p.kill()
	sc = connect(tenant+"/sub", sub.Secret, "sub", true, onMsg, false)
	defer sc.Disconnect(&paho.Disconnect{})
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		var lost []int
		for n := range acked {
			if received[n] == 0 {
				lost = append(lost, n)
			}
		}
		mu.Unlock()
		if len(lost) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d acknowledged messages lost over the drain, e.g. %v", len(lost), lost[:min(10, len(lost))])
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // room for a Will that should not come
	mu.Lock()
	defer mu.Unlock()
	if len(acked) < 10 {
		t.Errorf("only %d messages were acknowledged: the test did not load the server", len(acked))
	}
	if wills != 0 {
		t.Errorf("the drain sent %d Wills", wills)
	}
	t.Logf("%d messages acknowledged before the drain, all received", len(acked))
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
