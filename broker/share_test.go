package broker_test

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/tenants"
)

// collect reads what each client receives until none has had anything for
// quiet, and returns each payload's count, per client.
func collect(quiet time.Duration, clients ...*v5) []map[string]int {
	got := make([]map[string]int, len(clients))
	for i := range got {
		got[i] = map[string]int{}
	}
	for {
		received := false
		for i, c := range clients {
			select {
			case m := <-c.msgs:
				got[i][string(m.Payload)]++
				received = true
			default:
			}
		}
		if received {
			continue
		}
		deadline := time.After(quiet)
		more := false
		for !more {
			select {
			case <-deadline:
				return got
			default:
			}
			for _, c := range clients {
				if len(c.msgs) > 0 {
					more = true
				}
			}
			if !more {
				time.Sleep(5 * time.Millisecond)
			}
		}
	}
}

// received is how many times each payload arrived, over every client's
// counts in got.
func received(got []map[string]int) map[string]int {
	all := map[string]int{}
	for _, g := range got {
		for p, c := range g {
			all[p] += c
		}
	}
	return all
}

// eachOnce fails unless the counts in got hold payloads "0" to n-1 once
// each, among them.
func eachOnce(t *testing.T, got []map[string]int, n int, what string) {
	t.Helper()
	all := received(got)
	for i := range n {
		if c := all[fmt.Sprint(i)]; c != 1 {
			t.Errorf("%s: message %d received %d times, want once (%d distinct of %d)", what, i, c, len(all), n)
			return
		}
	}
	if len(all) != n {
		t.Errorf("%s: %d distinct messages, want %d", what, len(all), n)
	}
}

// atLeastOnce fails the test if a message of the n is missing from got,
// and logs how many came more than once: a client that acknowledged
// nothing before its connection ended may be sent one again from both the
// connection it took over and its queue (QoS 1 allows it).
func atLeastOnce(t *testing.T, got []map[string]int, n int, what string) {
	t.Helper()
	all := received(got)
	dups := 0
	for i := range n {
		c := all[fmt.Sprint(i)]
		if c == 0 {
			t.Errorf("%s: message %d never received (%d distinct of %d)", what, i, len(all), n)
			return
		}
		dups += c - 1
	}
	if len(all) != n {
		t.Errorf("%s: %d distinct messages, want %d", what, len(all), n)
	}
	t.Logf("%s: %d messages, %d duplicates", what, n, dups)
}

// TestSharedPrefersConnected: a shared group's turns go to its connected
// member, not to a persistent member whose client is away (mochi gave
// them to whichever member its map yielded first).
func TestSharedPrefersConnected(t *testing.T) {
	d := newDurable(t)
	d.tenant("acme")
	secret := d.device("acme", "d", tenants.ClientIDsAny)
	away := mustV5(t, d.addr, user("acme", "d"), secret, "away", keepSession)
	away.sub(t, "$share/g/jobs/#", 1)
	away.Disconnect(&paho.Disconnect{})
	eventually(t, 5*time.Second, "the away member's connection ended", func() bool {
		return len(d.hub.Connections("acme", "d")) == 0
	})
	on := mustV5(t, d.addr, user("acme", "d"), secret, "on")
	on.sub(t, "$share/g/jobs/#", 1)
	pub := mustV5(t, d.addr, user("acme", "d"), secret, "pub")
	const n = 40
	for i := range n {
		pub.pub(t, "jobs/x", fmt.Sprint(i), 1, false)
	}
	eachOnce(t, collect(300*time.Millisecond, on), n, "the connected member")
	back := mustV5(t, d.addr, user("acme", "d"), secret, "away", keepSession)
	back.quiet(t, 300*time.Millisecond, "a turn the connected member had")
}

// TestSharedTurnsStored: with no member connected, a shared group's turns
// wait in its persistent members' queues, in the session store: a
// restart loses none of these acknowledged messages, and the members get
// each once between them.
func TestSharedTurnsStored(t *testing.T) {
	d := newDurable(t)
	d.tenant("acme")
	secret := d.device("acme", "d", tenants.ClientIDsAny)
	for _, id := range []string{"m1", "m2"} {
		c := mustV5(t, d.addr, user("acme", "d"), secret, id, keepSession)
		c.sub(t, "$share/g/jobs/#", 1)
		c.Disconnect(&paho.Disconnect{})
	}
	pub := mustV5(t, d.addr, user("acme", "d"), secret, "pub")
	const n = 40
	for i := range n {
		pub.pub(t, "jobs/x", fmt.Sprint(i), 1, false)
	}
	pub.barrier(t)
	d.restart(t)
	m1 := mustV5(t, d.addr, user("acme", "d"), secret, "m1", keepSession)
	m2 := mustV5(t, d.addr, user("acme", "d"), secret, "m2", keepSession)
	eachOnce(t, collect(500*time.Millisecond, m1, m2), n, "the members, after a restart")
}

// TestSharedTurnStoredWhileConnected: a turn given to a connected
// persistent member is stored before the publisher's acknowledgement,
// like any of its copies: its client not having acknowledged it when the
// hub restarts, it is sent again when the client is back.
func TestSharedTurnStoredWhileConnected(t *testing.T) {
	d := newDurable(t)
	d.tenant("acme")
	secret := d.device("acme", "d", tenants.ClientIDsAny)
	raw, err := net.DialTimeout("tcp", d.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	paused := &pausedConn{Conn: raw, resume: make(chan struct{})}
	member, err := connectV5(t, paused, user("acme", "d"), secret, "m", keepSession)
	if err != nil {
		t.Fatal(err)
	}
	member.sub(t, "$share/g/jobs/#", 1)
	paused.paused.Store(true) // it reads, and acknowledges, nothing more
	pub := mustV5(t, d.addr, user("acme", "d"), secret, "pub")
	const n = 10
	for i := range n {
		pub.pub(t, "jobs/x", fmt.Sprint(i), 1, false)
	}
	pub.barrier(t)
	d.restart(t)
	close(paused.resume)
	back := mustV5(t, d.addr, user("acme", "d"), secret, "m", keepSession)
	got := collect(500*time.Millisecond, back)
	eachOnce(t, got, n, "the member, after a restart")
}

// TestSharedSkipsUnreadable: a member the ACL does not let read a topic
// is not given its turns: another member gets them (mochi gave the turn
// to either, and the ACL then refused it: the group lost the message).
func TestSharedSkipsUnreadable(t *testing.T) {
	d := newDurable(t)
	d.tenant("acme")
	d.rules("acme",
		tenants.ACLRuleInput{Effect: tenants.Deny, Action: tenants.ActionSubscribe, Topic: "jobs/secret", Device: "blind"},
		allow(tenants.ActionAll, "#"))
	blind := mustV5(t, d.addr, user("acme", "blind"), d.device("acme", "blind"), "blind")
	blind.sub(t, "$share/g/jobs/#", 1)
	seer := mustV5(t, d.addr, user("acme", "seer"), d.device("acme", "seer"), "seer")
	seer.sub(t, "$share/g/jobs/#", 1)
	pub := mustV5(t, d.addr, user("acme", "pub"), d.device("acme", "pub"), "pub")
	const n = 40
	for i := range n {
		pub.pub(t, "jobs/secret", fmt.Sprint(i), 1, false)
	}
	got := collect(300*time.Millisecond, blind, seer)
	if len(got[0]) != 0 {
		t.Errorf("the member that may not read the topic got %d messages", len(got[0]))
	}
	eachOnce(t, got, n, "the group")
}

// queueOf sets the tenant acme's max_queued and queue policy.
func queueOf(t *testing.T, d *durable, max int64, policy tenants.QueuePolicy) {
	t.Helper()
	if _, err := d.stack.store.AdminUpdateTenant(ctx, "acme", tenants.AdminTenantUpdate{Quotas: map[string]*int64{"max_queued": &max}}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.stack.store.UpdateTenant(ctx, "acme", tenants.TenantUpdate{QueuePolicy: &policy}); err != nil {
		t.Fatal(err)
	}
}

// TestSharedTurnsWithinMaxQueued: a persistent member's stored turns keep
// to max_queued like its other copies: under drop_newest, of eight turns
// while it is away it gets the first three when it is back, restart or
// not (mochi's memory kept all eight, the store three).
func TestSharedTurnsWithinMaxQueued(t *testing.T) {
	d := newDurable(t)
	d.tenant("acme")
	queueOf(t, d, 3, tenants.DropNewest)
	secret := d.device("acme", "d", tenants.ClientIDsAny)
	m := mustV5(t, d.addr, user("acme", "d"), secret, "m", keepSession)
	m.sub(t, "$share/g/jobs/#", 1)
	m.Disconnect(&paho.Disconnect{})
	pub := mustV5(t, d.addr, user("acme", "d"), secret, "pub")
	for i := range 8 {
		pub.pub(t, "jobs/x", fmt.Sprint(i), 1, false)
	}
	pub.barrier(t)
	back := mustV5(t, d.addr, user("acme", "d"), secret, "m", keepSession)
	eachOnce(t, collect(500*time.Millisecond, back), 3, "the member back")
}

// TestSharedTurnsWhereRoom: with every member away, a turn goes to one
// whose queue has room: three members with room for two each take six
// turns between them, and a restart loses none (a full queue took turns
// another had room for, and dropped them).
func TestSharedTurnsWhereRoom(t *testing.T) {
	d := newDurable(t)
	d.tenant("acme")
	queueOf(t, d, 2, tenants.DropOldest)
	secret := d.device("acme", "d", tenants.ClientIDsAny)
	ids := []string{"m1", "m2", "m3"}
	for _, id := range ids {
		c := mustV5(t, d.addr, user("acme", "d"), secret, id, keepSession)
		c.sub(t, "$share/g/jobs/#", 1)
		c.Disconnect(&paho.Disconnect{})
	}
	pub := mustV5(t, d.addr, user("acme", "d"), secret, "pub")
	for i := range 6 {
		pub.pub(t, "jobs/x", fmt.Sprint(i), 1, false)
	}
	pub.barrier(t)
	d.restart(t)
	var members []*v5
	for _, id := range ids {
		members = append(members, mustV5(t, d.addr, user("acme", "d"), secret, id, keepSession))
	}
	eachOnce(t, collect(500*time.Millisecond, members...), 6, "the members, after a restart")
}

// TestSharedNoLocal: a member that publishes, and has No Local on a
// subscription its delivery merges with, is not given the turn of its own
// message (mochi would not deliver it, and a copy stored for it would wait
// in its queue): the other member gets every one, and the publisher's
// queue keeps nothing.
func TestSharedNoLocal(t *testing.T) {
	d := newDurable(t)
	d.tenant("acme")
	secret := d.device("acme", "d", tenants.ClientIDsAny)
	x := mustV5(t, d.addr, user("acme", "d"), secret, "x", keepSession)
	sctx, cancel := contextWithTimeout()
	defer cancel()
	if _, err := x.Subscribe(sctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{
		{Topic: "jobs/#", QoS: 1, NoLocal: true}, {Topic: "$share/g/jobs/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	y := mustV5(t, d.addr, user("acme", "d"), secret, "y")
	y.sub(t, "$share/g/jobs/#", 1)
	const n = 20
	for i := range n {
		x.pub(t, "jobs/x", fmt.Sprint(i), 1, false)
	}
	got := collect(300*time.Millisecond, x, y)
	if len(got[0]) != 0 {
		t.Errorf("the publisher got %d of its own messages under No Local", len(got[0]))
	}
	eachOnce(t, got, n, "the group")
	if q := d.hub.Queue("acme", "d"); q.Queued != 0 {
		t.Errorf("%d messages queued for the device's sessions, want none", q.Queued)
	}
}
