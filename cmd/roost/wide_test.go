package main

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// TestWideTenant: in a fleet of three whose tenants widen past four
// connections, a tenant allowed three nodes starts on its home, the others
// forwarding to it; its fifth connection widens it (its home's broker
// restarts once), after which every node serves its devices directly and
// messages cross between them; lowering max_nodes to one narrows it back to
// its home. A persistent session offline throughout gets every message
// published meanwhile, queued before and after each move. A tenant not
// allowed more than one node stays on one however many devices connect.
func TestWideTenant(t *testing.T) {
	f := startFleet(t, 3, "ROOST_FLEET_NODE_ENV=ROOST_DRAIN_TIMEOUT=5s ROOST_FLEET_WIDEN_AT=4")
	admin := f.vars["ROOST_ADMIN_TOKEN"]
	f.api("PATCH", "/v1/admin/tenants/"+f.slug, admin, map[string]any{"quotas": map[string]int64{"max_nodes": 3}}, nil)
	series := fmt.Sprintf("roost_connections{tenant=%q}", f.slug)
	// servedBy lists the nodes with connections of the tenant.
	servedBy := func(series string) []int {
		var on []int
		for i := 1; i <= 3; i++ {
			if f.metric(i, series) > 0 {
				on = append(on, i)
			}
		}
		return on
	}
	waitFor := func(what string, d time.Duration, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(d)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("not within %s: %s", d, what)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	ended := func(cs ...*paho.Client) {
		t.Helper()
		for _, c := range cs {
			select {
			case <-c.Done():
			case <-time.After(15 * time.Second):
				t.Fatalf("%s's connection did not end", c.ClientID())
			}
		}
	}
	var sent []string
	publish := func(p *paho.Client, n int) []string {
		t.Helper()
		var batch []string
		for range n {
			payload := fmt.Sprintf("m%d", len(sent))
			f.mustPublish(p, "wide/x", payload, 1, false)
			sent = append(sent, payload)
			batch = append(batch, payload)
		}
		return batch
	}
	payloads := func(ms []*paho.Publish) []string {
		var out []string
		for _, m := range ms {
			out = append(out, string(m.Payload))
		}
		return out
	}

	// 1. One node: the persistent session's first connection places the
	// tenant; the other nodes forward to its home.
	ps := f.mustDial(1, "ps", true, nil)
	f.mustSubscribe(ps, "wide/#", 1)
	ps.Disconnect(&paho.Disconnect{})
	home := f.home()
	if home == 0 {
		t.Fatal("no node holds the tenant")
	}
	others := slices.DeleteFunc([]int{1, 2, 3}, func(i int) bool { return i == home })
	a, b := others[0], others[1]
	clean := make(chan *paho.Publish, 100)
	c1 := f.mustDial(b, "c1", false, func(m *paho.Publish) { clean <- m })
	f.mustSubscribe(c1, "wide/#", 1)
	p := f.mustDial(a, "p", false, nil)
	batch := publish(p, 5)
	if got := payloads(receiveN(t, clean, 5, 10*time.Second)); !slices.Equal(got, batch) {
		t.Errorf("before widening, the clean subscriber got %v, want %v", got, batch)
	}
	if on := servedBy(series); !slices.Equal(on, []int{home}) {
		t.Errorf("before widening, nodes %v serve the tenant's connections; want its home %d alone", on, home)
	}

	// 2. Its fifth connection widens it: every connection ends as its
	// home's broker restarts, and devices then connect to any node.
	var extra []*paho.Client
	for i := range 3 {
		extra = append(extra, f.mustDial(a, fmt.Sprintf("e%d", i), false, nil))
	}
	ended(append(extra, c1, p)...)
	waitFor("the tenant is served by its other nodes", 10*time.Second, func() bool {
		c, _, err := f.dial(b, "c1", false, func(m *paho.Publish) { clean <- m })
		if err != nil {
			return false
		}
		c1 = c
		return true
	})
	f.mustSubscribe(c1, "wide/#", 1)
	p = f.mustDial(a, "p", false, nil)
	h := f.mustDial(home, "h", false, nil)
	defer h.Disconnect(&paho.Disconnect{})
	if on := servedBy(series); !slices.Equal(on, []int{1, 2, 3}) {
		t.Errorf("once wide, nodes %v serve the tenant's connections; want all three, each its own", on)
	}
	for i := 1; i <= 3; i++ {
		if n := f.metric(i, "roost_fabric_tenants"); n != 1 {
			t.Errorf("node %d serves %v tenants as one of several; want 1", i, n)
		}
		if n := f.metric(i, "roost_forwarded_connections"); n != 0 {
			t.Errorf("node %d forwards %v connections of a tenant it serves itself", i, n)
		}
	}
	batch = publish(p, 5)
	if got := payloads(receiveN(t, clean, 5, 10*time.Second)); !slices.Equal(got, batch) {
		t.Errorf("once wide, the subscriber on node %d got %v from node %d, want %v", b, got, a, batch)
	}

	// 3. The persistent session, offline since before the tenant widened,
	// resumes on another node than the one it left with all ten.
	resumed := make(chan *paho.Publish, 100)
	ps = f.mustDial(b, "ps", true, func(m *paho.Publish) { resumed <- m })
	if got := payloads(receiveN(t, resumed, 10, 10*time.Second)); !slices.Equal(got, sent) {
		t.Errorf("the persistent session resumed on node %d with %v, want %v", b, got, sent)
	}
	expectQuiet(t, resumed, 300*time.Millisecond, "after the queued messages")
	ps.Disconnect(&paho.Disconnect{})

	// 4. max_nodes lowered to one: the nodes other than its home stop
	// serving it, and their devices come back through its home.
	f.api("PATCH", "/v1/admin/tenants/"+f.slug, admin, map[string]any{"quotas": map[string]int64{"max_nodes": 1}}, nil)
	ended(c1, p)
	c1 = f.mustDial(b, "c1", false, func(m *paho.Publish) { clean <- m })
	f.mustSubscribe(c1, "wide/#", 1)
	p = f.mustDial(a, "p", false, nil)
	defer c1.Disconnect(&paho.Disconnect{})
	defer p.Disconnect(&paho.Disconnect{})
	if on := servedBy(series); !slices.Equal(on, []int{home}) {
		t.Errorf("narrowed, nodes %v serve the tenant's connections; want its home %d alone", on, home)
	}
	before := len(sent)
	batch = publish(p, 5)
	if got := payloads(receiveN(t, clean, 5, 10*time.Second)); !slices.Equal(got, batch) {
		t.Errorf("narrowed, the clean subscriber got %v, want %v", got, batch)
	}
	ps = f.mustDial(a, "ps", true, func(m *paho.Publish) { resumed <- m })
	if got := payloads(receiveN(t, resumed, 5, 10*time.Second)); !slices.Equal(got, sent[before:]) {
		t.Errorf("narrowed, the persistent session resumed with %v, want %v", got, sent[before:])
	}
	ps.Disconnect(&paho.Disconnect{})

	// 5. Another tenant, allowed one node, stays on one with more
	// connections than the threshold.
	var session struct{ Token string }
	f.api("POST", "/v1/login", "", map[string]string{"email": "spread@example.com", "password": "correct horse battery"}, &session)
	f.api("POST", "/v1/tenants", session.Token, map[string]string{"slug": "narrow"}, nil)
	var dev struct{ Secret string }
	f.api("POST", "/v1/tenants/narrow/devices", session.Token, map[string]string{"name": "d", "client_ids": "any"}, &dev)
	user, secret := f.user, f.secret
	f.user, f.secret = "narrow/d", dev.Secret
	for i := range 6 {
		c := f.mustDial(1+i%3, fmt.Sprintf("n%d", i), false, nil)
		defer c.Disconnect(&paho.Disconnect{})
	}
	f.user, f.secret = user, secret
	if on := servedBy(`roost_connections{tenant="narrow"}`); len(on) != 1 {
		t.Errorf("a tenant allowed one node has its connections served by nodes %v", on)
	}
	time.Sleep(3 * time.Second) // a spreadEvery and then some
	for i := 1; i <= 3; i++ {
		if n := f.metric(i, "roost_fabric_tenants"); n > 1 {
			t.Errorf("node %d serves %v tenants as one of several; want the wide one at most", i, n)
		}
	}
}
