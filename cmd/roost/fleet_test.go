package main

import (
	"context"
	"database/sql"
	"fmt"
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

	msgs := newLedger()
	onMsg := msgs.receive
	subDiscs, pubDiscs := make(chan byte, 4), make(chan byte, 4)
	// sub is persistent and subscribed; pub has a Will.
	connect := func(p *process, device, secret string, persistent, will bool, discs chan byte) *paho.Client {
		t.Helper()
		c, err := mqttClientWith(p.mqttAddr, tenant+"/"+device, secret, device, persistent, onMsg, func(d *paho.Disconnect) { discs <- d.ReasonCode }, will)
		if err != nil {
			t.Fatalf("%s: %v\n%s", device, err, p.log)
		}
		return c
	}
	connectSub := func(p *process) *paho.Client { return connect(p, "sub", sub.Secret, true, false, subDiscs) }
	connectPub := func(p *process) *paho.Client { return connect(p, "pub", pub.Secret, false, true, pubDiscs) }
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
	done := msgs.publish(pc)
	time.Sleep(300 * time.Millisecond)
	home.terminate()
	<-done
	toldShutdown(t, "a device of the draining home", subDiscs)
	toldShutdown(t, "a device forwarded to the draining home", pubDiscs)
	sc = connectSub(other)
	msgs.allReceived(t, "after the home drained")
	if h := homeOf(); h != other {
		t.Fatal("the tenant did not move to the remaining node")
	}

	// 3. The drained node comes back; the publisher goes through it; it
	// drains in turn.
	home.start()
	pc = connectPub(home)
	done = msgs.publish(pc)
	time.Sleep(300 * time.Millisecond)
	home.terminate()
	<-done
	toldShutdown(t, "a device forwarded by the draining node", pubDiscs)
	select {
	case code := <-subDiscs:
		t.Errorf("the subscriber, on the node that stayed, was disconnected (%#x)", code)
	case <-time.After(300 * time.Millisecond):
	}
	msgs.allReceived(t, "after the forwarding node drained")
	msgs.check(t, 20)
	if n := msgs.count("note"); n != 1 {
		t.Errorf("the control plane's publish reached the subscriber %d times, want 1", n)
	}
	sc.Disconnect(&paho.Disconnect{})
}
