package main

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/internal/testenv"
)

// TestRollingRestart runs a control plane and two data-plane nodes on one
// Postgres and one Redis, and restarts the nodes one after the other under
// QoS 1 load, as an operator rolls an upgrade:
//
//  1. A tenant's devices connect to different nodes and meet in one broker,
//     on the tenant's home; the control plane sees each connection once
//     and its publishes reach them.
//  2. The home gets SIGTERM: both devices (one straight, one forwarded)
//     are told 0x8B, the node exits 0, and on the other node — which takes
//     the tenant over once the drained node has stored its sessions — the
//     persistent subscriber gets every message the publisher got a PUBACK
//     for.
//  3. The drained node comes back; the publisher connects to it (forwarded
//     to the new home); that node gets SIGTERM in turn: the publisher is
//     told 0x8B, the subscriber is not disturbed, no Will is sent, nothing
//     acknowledged is lost.
func TestRollingRestart(t *testing.T) {
	pgURL, redisURL := testenv.PostgresURL(t), testenv.RedisURL(t)
	const admin = "rop_rolling-test-token-0123456789"
	tenant := fmt.Sprintf("roll-%d", time.Now().UnixNano()%1_000_000_000) // Redis is shared between tests
	common := []string{"ROOST_DATABASE_URL=" + pgURL, "ROOST_ADMIN_TOKEN=" + admin, "ROOST_DRAIN_TIMEOUT=10s"}
	cp := &process{t: t, role: "controlplane", httpAddr: freeAddr(t)}
	cp.env = append(common, "ROOST_DATA_DIR="+t.TempDir(), "ROOST_HTTP_ADDR="+cp.httpAddr)
	cp.start()
	defer cp.kill()
	node := func() *process {
		p := &process{t: t, role: "dataplane", httpAddr: freeAddr(t), mqttAddr: freeAddr(t)}
		p.env = append(common, "ROOST_DATA_DIR="+t.TempDir(), "ROOST_HTTP_ADDR="+p.httpAddr, "ROOST_MQTT_ADDR="+p.mqttAddr,
			"ROOST_NODE_URL=http://"+p.httpAddr, "ROOST_FORWARD_ADDR="+freeAddr(t),
			"ROOST_SESSION_STORE=redis", "ROOST_REDIS_URL="+redisURL)
		p.start()
		return p
	}
	n1, n2 := node(), node()
	defer n1.kill()
	defer n2.kill()
	db, err := sql.Open("pgx", pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// homeOf is the node holding the tenant, by its forwarding address.
	homeOf := func() *process {
		t.Helper()
		var fwd string
		err := db.QueryRow(`SELECT n.forward_addr FROM tenant_placements p JOIN data_plane_nodes n ON n.id = p.node WHERE p.tenant = $1`, tenant).Scan(&fwd)
		if err != nil {
			t.Fatalf("the tenant's home: %v", err)
		}
		for _, p := range []*process{n1, n2} {
			for _, e := range p.env {
				if e == "ROOST_FORWARD_ADDR="+fwd {
					return p
				}
			}
		}
		t.Fatalf("the tenant's home %s is neither node", fwd)
		return nil
	}

	var session struct{ Token string }
	cp.api("POST", "/v1/signup", "", map[string]string{"email": "roll@example.com", "password": "correct horse battery"}, &session)
	cp.api("POST", "/v1/tenants", session.Token, map[string]string{"slug": tenant}, nil)
	cp.api("PATCH", "/v1/admin/tenants/"+tenant, admin,
		map[string]any{"quotas": map[string]int64{"publish_rate": 1_000_000, "tenant_publish_rate": 1_000_000}}, nil)
	var sub, pub struct{ Secret string }
	cp.api("POST", "/v1/tenants/"+tenant+"/devices", session.Token, map[string]string{"name": "sub"}, &sub)
	cp.api("POST", "/v1/tenants/"+tenant+"/devices", session.Token, map[string]string{"name": "pub"}, &pub)

	var mu sync.Mutex
	received, acked := map[int]int{}, map[int]bool{}
	wills, notes := 0, 0
	onMsg := func(m *paho.Publish) {
		mu.Lock()
		defer mu.Unlock()
		switch m.Topic {
		case "wills/pub":
			wills++
		case "note":
			notes++
		default:
			if n, err := strconv.Atoi(string(m.Payload)); err == nil {
				received[n]++
			}
		}
	}
	subDiscs, pubDiscs := make(chan byte, 4), make(chan byte, 4)
	connectSub := func(p *process) *paho.Client {
		t.Helper()
		c, err := mqttClientWith(p.mqttAddr, tenant+"/sub", sub.Secret, "sub", true, onMsg, func(d *paho.Disconnect) { subDiscs <- d.ReasonCode }, false)
		if err != nil {
			t.Fatalf("sub: %v\n%s", err, p.log)
		}
		return c
	}
	connectPub := func(p *process) *paho.Client {
		t.Helper()
		c, err := mqttClientWith(p.mqttAddr, tenant+"/pub", pub.Secret, "pub", false, nil, func(d *paho.Disconnect) { pubDiscs <- d.ReasonCode }, true)
		if err != nil {
			t.Fatalf("pub: %v\n%s", err, p.log)
		}
		return c
	}
	// load publishes numbered QoS 1 messages from n on until a publish
	// fails, and closes done then.
	next := 0
	load := func(c *paho.Client) (done chan struct{}) {
		done = make(chan struct{})
		go func() {
			defer close(done)
			for ; ; next++ {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				r, err := c.Publish(ctx, &paho.Publish{Topic: "seq", QoS: 1, Payload: []byte(strconv.Itoa(next))})
				cancel()
				if err != nil {
					return
				}
				if r != nil && r.ReasonCode < 0x80 {
					mu.Lock()
					acked[next] = true
					mu.Unlock()
				}
			}
		}()
		return done
	}
	stop := func(p *process) {
		t.Helper()
		start := time.Now()
		p.cmd.Process.Signal(syscall.SIGTERM)
		exited := make(chan error, 1)
		go func() { exited <- p.cmd.Wait() }()
		select {
		case err := <-exited:
			if err != nil {
				t.Fatalf("a data-plane node after SIGTERM: %v\n%s", err, p.log)
			}
		case <-time.After(15 * time.Second):
			p.cmd.Process.Kill()
			t.Fatalf("a data-plane node did not exit within its 10 s drain deadline\n%s", p.log)
		}
		t.Logf("node drained and exited in %s", time.Since(start).Round(time.Millisecond))
	}
	told := func(who string, ch chan byte) {
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
	allReceived := func(phase string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			mu.Lock()
			var lost []int
			for n := range acked {
				if received[n] == 0 {
					lost = append(lost, n)
				}
			}
			total := len(acked)
			mu.Unlock()
			if len(lost) == 0 {
				t.Logf("%s: %d messages acknowledged so far, all received", phase, total)
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d acknowledged messages lost, e.g. %v", phase, len(lost), lost[:min(10, len(lost))])
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	// 1. Devices on both nodes meet on the tenant's home.
	sc := connectSub(n1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := sc.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{
		{Topic: "seq", QoS: 1}, {Topic: "wills/#", QoS: 1}, {Topic: "note", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	home := homeOf()
	other := map[*process]*process{n1: n2, n2: n1}[home]
	pc := connectPub(other)
	if home == n1 {
		t.Log("the tenant's home is the node the subscriber connected to; the publisher is forwarded")
	} else {
		t.Log("the subscriber was forwarded to the tenant's home; the publisher connected to it")
	}
	var status struct{ Connections []struct{} }
	for _, d := range []string{"sub", "pub"} {
		cp.api("GET", "/v1/tenants/"+tenant+"/devices/"+d+"/status", session.Token, nil, &status)
		if len(status.Connections) != 1 {
			t.Errorf("%s's connections through the control plane: %d, want 1", d, len(status.Connections))
		}
	}
	cp.api("POST", "/v1/tenants/"+tenant+"/messages", session.Token, map[string]any{"topic": "note", "payload": "hi", "qos": 1}, nil)
	// The operator sees the fleet: two nodes, the tenant on one.
	var stats struct {
		Nodes []struct {
			URL     string
			Tenants int
		}
	}
	cp.api("GET", "/v1/admin/stats", admin, nil, &stats)
	if len(stats.Nodes) != 2 {
		t.Errorf("the operator sees %d data-plane nodes, want 2: %+v", len(stats.Nodes), stats.Nodes)
	}
	for _, n := range stats.Nodes {
		if want := map[bool]int{true: 1, false: 0}[n.URL == "http://"+home.httpAddr]; n.Tenants != want {
			t.Errorf("node %s holds %d tenants, want %d", n.URL, n.Tenants, want)
		}
	}

	// 2. The home drains under load.
	done := load(pc)
	time.Sleep(300 * time.Millisecond)
	stop(home)
	<-done
	told("a device of the draining home", subDiscs)
	told("a device forwarded to the draining home", pubDiscs)
	sc = connectSub(other)
	allReceived("after the home drained")
	if h := homeOf(); h != other {
		t.Fatal("the tenant did not move to the remaining node")
	}

	// 3. The drained node comes back; the publisher goes through it; it
	// drains in turn.
	home.start()
	pc = connectPub(home)
	done = load(pc)
	time.Sleep(300 * time.Millisecond)
	stop(home)
	<-done
	told("a device forwarded by the draining node", pubDiscs)
	select {
	case code := <-subDiscs:
		t.Errorf("the subscriber, on the node that stayed, was disconnected (%#x)", code)
	case <-time.After(300 * time.Millisecond):
	}
	allReceived("after the forwarding node drained")
	mu.Lock()
	defer mu.Unlock()
	if len(acked) < 20 {
		t.Errorf("only %d messages were acknowledged: the test did not load the nodes", len(acked))
	}
	if wills != 0 {
		t.Errorf("the drains sent %d Wills", wills)
	}
	if notes != 1 {
		t.Errorf("the control plane's publish reached the subscriber %d times, want 1", notes)
	}
	sc.Disconnect(&paho.Disconnect{})
}
