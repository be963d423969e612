package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/roosthub/roost/internal/testenv"
)

// End-to-end tests of spread tenants (ROOST_FLEET_SPREAD=true): a fleet
// started by scripts/fleet.sh, real processes, real MQTT clients, and
// every check is "what was acknowledged arrives".
//
//   - TestSpreadFleet: two nodes, the fabric's promises one by one.
//   - TestSpreadFleetKill: three nodes under QoS 1 load; kill -9 of a clean
//     subscriber's node, of the publisher's node, and N times of the node
//     holding a persistent subscriber (ROOST_SPREAD_KILLS, default 3).
//   - TestSpreadFleetRedisPause: three nodes under QoS 1 load; Redis
//     stopped with SIGSTOP for ROOST_SPREAD_PAUSE (default 3s, within the
//     fabric's lease); TestSpreadFleetRedisPauseLong for 6 s, past it,
//     and TestSpreadFleetNodePause, a node stopped for
//     ROOST_SPREAD_NODE_PAUSE (default 8 s).
//   - TestSpreadFleetPostgresPause: Postgres stopped with SIGSTOP for
//     ROOST_SPREAD_PG_PAUSE (default 15 s): connected devices unaffected.
//   - The same on the Kafka fabric (spread_kafka_fault_test.go):
//     TestSpreadFleetKafkaKill, TestSpreadFleetKafkaPause (Kafka stopped),
//     TestSpreadFleetKafkaNodePause.
//   - TestSpreadFleetTakeover and TestSpreadFleetKafkaTakeover
//     (spread_takeover_test.go): a persistent subscriber's client id taken
//     over alternately through two nodes under QoS 1 load,
//     ROOST_SPREAD_TAKEOVERS times (default 100).
//
// The full counts: ROOST_SPREAD_KILLS=20 ROOST_SPREAD_NODE_PAUSE=20s
// ROOST_SPREAD_PAUSE=10s ROOST_SPREAD_PG_PAUSE=15s.

// TestSpreadFleet: a spread fleet of two nodes (node 1 the tenant's home).
//
//  1. A clean subscriber on node 1 gets, in order and each once, at its
//     QoS, what a publisher on node 2 sends at QoS 0, 1 and 2.
//  2. A $share group with a member on each node gets each message once,
//     whichever node it is published on.
//  3. A retained message published on node 1 reaches a subscriber that
//     connects to node 2 right after its PUBACK (five times), and then
//     reaches a new subscriber there as retained.
//  4. A persistent session (MQTT 5 with a session expiry; MQTT 3.1.1 with
//     clean=false) connecting through either node is served at the home:
//     what is published on the other node while it is away is delivered
//     when it comes back, through the other node.
//  5. Node 2's /metrics counts messages sent across.
func TestSpreadFleet(t *testing.T) {
	f := startSpreadFleet(t, 2)

	// 1. In order across the nodes. The subscriber's broker is the
	// tenant's first: node 1 becomes its home.
	order := make(chan *paho.Publish, 256)
	sub := f.mustDial(1, "sub", false, func(m *paho.Publish) { order <- m })
	f.mustSubscribe(sub, "order/#", 2)
	if h := f.home(); h != 1 {
		t.Errorf("the tenant's home is node %d; want node 1, where its first (clean) session connected", h)
	}
	pub2 := f.mustDial(2, "pub2", false, nil)
	pub1 := f.mustDial(1, "pub1", false, nil)
	var want []string
	for qos := range byte(3) {
		for i := range 20 {
			payload := fmt.Sprintf("q%d-%d", qos, i)
			f.mustPublish(pub2, fmt.Sprintf("order/%d", qos), payload, qos, false)
			want = append(want, payload)
		}
	}
	got := receiveN(t, order, len(want), 10*time.Second)
	var payloads []string
	for _, m := range got {
		payloads = append(payloads, string(m.Payload))
		if q := byte(m.Payload[1] - '0'); m.QoS != q {
			t.Errorf("%s arrived at QoS %d, want %d", m.Payload, m.QoS, q)
		}
	}
	if !slices.Equal(payloads, want) {
		t.Errorf("across the nodes, the subscriber got\n%v\nwant, in this order,\n%v", payloads, want)
	}
	expectQuiet(t, order, 300*time.Millisecond, "after the ordered messages")

	// 2. A shared group with a member on each node: each message once.
	shared := make(chan string, 256)
	onShared := func(member string) func(*paho.Publish) {
		return func(m *paho.Publish) { shared <- member + " " + string(m.Payload) }
	}
	sh1 := f.mustDial(1, "sh1", false, onShared("node1"))
	sh2 := f.mustDial(2, "sh2", false, onShared("node2"))
	f.mustSubscribe(sh1, "$share/g/shared/#", 1)
	f.mustSubscribe(sh2, "$share/g/shared/#", 1)
	const perNode = 20
	for i := range perNode {
		f.mustPublish(pub2, "shared/x", fmt.Sprintf("from2-%d", i), 1, false)
		f.mustPublish(pub1, "shared/x", fmt.Sprintf("from1-%d", i), 1, false)
	}
	counts := map[string]int{}
	byMember := map[string]int{}
	deadline := time.After(10 * time.Second)
	for len(counts) < 2*perNode {
		select {
		case s := <-shared:
			member, payload, _ := strings.Cut(s, " ")
			counts[payload]++
			byMember[member]++
		case <-deadline:
			t.Fatalf("the shared group got %d distinct messages of %d: %v", len(counts), 2*perNode, counts)
		}
	}
	time.Sleep(300 * time.Millisecond)
	for len(shared) > 0 {
		member, payload, _ := strings.Cut(<-shared, " ")
		counts[payload]++
		byMember[member]++
	}
	for p, n := range counts {
		if n != 1 {
			t.Errorf("the shared group got %s %d times, want once", p, n)
		}
	}
	t.Logf("shared group: %d messages, served by node 1's member %d times and node 2's %d times", len(counts), byMember["node1"], byMember["node2"])
	sh1.Disconnect(&paho.Disconnect{})
	sh2.Disconnect(&paho.Disconnect{})

	// 3. Retained, published on node 1, to a subscriber on node 2 (whose
	// broker runs: pub2 is connected there) right after the PUBACK. The
	// message may reach node 2 after that subscription: then it comes
	// as a live message (retain 0), which is counted, not failed. Once it
	// reached node 2, a new subscriber there gets it as retained.
	const retainedN = 5
	live := 0
	for i := range retainedN {
		f.mustPublish(pub1, fmt.Sprintf("ret/%d", i), fmt.Sprintf("kept-%d", i), 1, true)
		retained := make(chan *paho.Publish, 4)
		rs := f.mustDial(2, "rs", false, func(m *paho.Publish) { retained <- m })
		f.mustSubscribe(rs, fmt.Sprintf("ret/%d", i), 1)
		select {
		case m := <-retained:
			if string(m.Payload) != fmt.Sprintf("kept-%d", i) {
				t.Errorf("the new subscriber on node 2 got %q, want kept-%d", m.Payload, i)
			}
			if !m.Retain {
				live++
			}
		case <-time.After(5 * time.Second):
			t.Errorf("a retained message published on node 1 (kept-%d) did not reach a subscriber on node 2", i)
		}
		rs.Disconnect(&paho.Disconnect{})
	}
	t.Logf("retained: %d of %d subscribers on node 2 right after the PUBACK on node 1 got it as a live message, after their SUBACK", live, retainedN)
	retained := make(chan *paho.Publish, 2*retainedN)
	rs := f.mustDial(2, "rs", false, func(m *paho.Publish) { retained <- m })
	f.mustSubscribe(rs, "ret/#", 1)
	var kept []string
	for _, m := range receiveN(t, retained, retainedN, 5*time.Second) {
		if !m.Retain {
			t.Errorf("a subscriber on node 2 got %s %q without the retain flag", m.Topic, m.Payload)
		}
		kept = append(kept, string(m.Payload))
	}
	slices.Sort(kept)
	if want := []string{"kept-0", "kept-1", "kept-2", "kept-3", "kept-4"}; !slices.Equal(kept, want) {
		t.Errorf("a subscriber to ret/# on node 2 got the retained %v, want %v", kept, want)
	}
	expectQuiet(t, retained, 200*time.Millisecond, "after the retained messages")
	rs.Disconnect(&paho.Disconnect{})

	// 4. Persistent sessions, served at the home whichever node they
	// connect through; messages published on the other node while away.
	p5msgs := make(chan *paho.Publish, 64)
	persistent := func(node int, wantPresent bool) *paho.Client {
		t.Helper()
		c, ca, err := f.dial(node, "p5", true, func(m *paho.Publish) { p5msgs <- m })
		if err != nil {
			t.Fatalf("a persistent session through node %d: %v", node, err)
		}
		if ca.SessionPresent != wantPresent {
			t.Errorf("a persistent session through node %d: session present %v, want %v", node, ca.SessionPresent, wantPresent)
		}
		return c
	}
	expectPayloads := func(ch chan *paho.Publish, prefix string, n int, where string) {
		t.Helper()
		var got []string
		for _, m := range receiveN(t, ch, n, 10*time.Second) {
			got = append(got, string(m.Payload))
		}
		var want []string
		for i := range n {
			want = append(want, fmt.Sprintf("%s-%d", prefix, i))
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: got %v, want %v", where, got, want)
		}
	}
	p5 := persistent(2, false) // forwarded to node 1
	f.mustSubscribe(p5, "pers/#", 1)
	p5.Disconnect(&paho.Disconnect{})
	for i := range 10 {
		f.mustPublish(pub2, "pers/a", fmt.Sprintf("away2-%d", i), 1, false)
	}
	p5 = persistent(1, true)
	expectPayloads(p5msgs, "away2", 10, "MQTT 5 session back through node 1, published on node 2 while away")
	f.settle(p5)
	p5.Disconnect(&paho.Disconnect{})
	for i := range 10 {
		f.mustPublish(pub1, "pers/a", fmt.Sprintf("away1-%d", i), 1, false)
	}
	p5 = persistent(2, true)
	expectPayloads(p5msgs, "away1", 10, "MQTT 5 session back through node 2, published on node 1 while away")
	f.settle(p5)
	p5.Disconnect(&paho.Disconnect{})

	p3msgs := make(chan *paho.Publish, 64)
	v3 := func(node int, wantPresent bool) pahov3.Client {
		t.Helper()
		o := pahov3.NewClientOptions().AddBroker("tcp://" + f.mqttAddr(node)).SetClientID("p3").
			SetUsername(f.user).SetPassword(f.secret).SetCleanSession(false).SetAutoReconnect(false).
			SetConnectTimeout(5 * time.Second).SetOrderMatters(true).
			SetDefaultPublishHandler(func(_ pahov3.Client, m pahov3.Message) {
				p3msgs <- &paho.Publish{Topic: m.Topic(), Payload: m.Payload(), QoS: m.Qos()}
			})
		c := pahov3.NewClient(o)
		tok := c.Connect()
		if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("an MQTT 3.1.1 session (clean=false) through node %d: %v", node, tok.Error())
		}
		if present := tok.(*pahov3.ConnectToken).SessionPresent(); present != wantPresent {
			t.Errorf("an MQTT 3.1.1 session through node %d: session present %v, want %v", node, present, wantPresent)
		}
		return c
	}
	p3 := v3(1, false)
	if tok := p3.Subscribe("pers3/#", 1, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("MQTT 3.1.1 subscribe: %v", tok.Error())
	}
	p3.Disconnect(100)
	for i := range 10 {
		f.mustPublish(pub2, "pers3/a", fmt.Sprintf("v3away-%d", i), 1, false)
	}
	p3 = v3(2, true)
	expectPayloads(p3msgs, "v3away", 10, "MQTT 3.1.1 session back through node 2, published on node 2 while away")
	p3.Disconnect(100)

	// 5. Node 2 counts what it sent across.
	if n := f.metric(2, `roost_fabric_messages_total{direction="sent"}`); n <= 0 {
		t.Errorf(`node 2's roost_fabric_messages_total{direction="sent"} is %v, want > 0`, n)
	} else {
		t.Logf(`node 2: roost_fabric_messages_total{direction="sent"} %v, node 1: {direction="received"} %v`,
			n, f.metric(1, `roost_fabric_messages_total{direction="received"}`))
	}
	for _, c := range []*paho.Client{sub, pub1, pub2} {
		c.Disconnect(&paho.Disconnect{})
	}
}

// TestSpreadFleetKill: a spread fleet of three nodes under continuous QoS
// 1 load from one publisher, with a persistent subscriber (first on node
// 1) all along, and clean subscribers. Checks, each on what the
// publisher got a PUBACK for:
//
//   - A clean subscriber's node is killed (kill -9) ROOST_SPREAD_KILLS
//     times: the subscriber reconnects to another node and gets every
//     message published after its new SUBACK; the node comes back with
//     `fleet.sh restart-node`. (What was published to it before the kill
//     and not delivered yet is legitimately lost with its clean session:
//     counted, not checked.)
//   - The publisher's node is killed: every message acknowledged before
//     the kill reaches the subscribers, which stayed connected; the
//     publisher reconnects to another node and goes on.
//   - Clean subscribers connected through all of the above, on nodes
//     never killed, get every message.
//   - The node holding the persistent subscriber is killed
//     ROOST_SPREAD_KILLS times: the subscriber reconnects through another
//     node, where its session resumes from the store, and gets every
//     message acknowledged, including those published while it was away.
//     Duplicates are counted, not failed (QoS 1); the order of first
//     arrivals is checked.
func TestSpreadFleetKill(t *testing.T) { spreadKillTest(t, fabricRedis) }

// spreadKillTest is TestSpreadFleetKill on the fabric given. On Kafka's,
// persistent sessions live at the tenant's home (a node forwards them
// there): the node killed in C is the home, and a new home resumes the
// session.
func spreadKillTest(t *testing.T, fab fleetFabric) {
	kills := envCount(t, "ROOST_SPREAD_KILLS", 3)
	f := startSpreadFleetOn(t, 3, fab)

	// ctl, the tenant's first session, makes node 1 its home.
	ctl := f.cleanSub(1, "ctl", "load/#")
	const home, x, y = 1, 2, 3 // x: the clean subscriber's node, y: the publisher's
	if h := f.home(); h != home {
		t.Fatalf("the tenant's home is node %d; want node 1, where its first (clean) session connected", h)
	}
	ps := f.keep("psub", "load/#", home)
	l := f.load("pub", "load/seq", y)

	// A. The clean subscriber's node dies.
	type round struct {
		before, after *spreadSub
		killed        time.Time
	}
	var rounds []round
	for range kills {
		s := f.cleanSub(x, fmt.Sprintf("x%d", len(rounds)), "load/#")
		l.waitAcks(t, 50)
		killed := f.kill(x)
		select {
		case <-s.c.Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("clean subscriber %s: still connected 10 s after its node was killed", s.id)
		}
		again := f.cleanSub(home, s.id, "load/#")
		t.Logf("clean subscriber %s: node %d killed; SUBACK through node %d %s later", s.id, x, home, again.subacked.Sub(killed).Round(time.Millisecond))
		f.restart(x)
		rounds = append(rounds, round{s, again, killed})
	}

	// B. The publisher's node dies.
	xb := f.cleanSub(x, "xb", "load/#")
	l.waitAcks(t, 50)
	killed := f.kill(y)
	l.moveTo(x)
	back := l.waitAckAfter(t, killed, 15*time.Second)
	t.Logf("publisher: node %d killed; a PUBACK through node %d %s later", y, x, back.Sub(killed).Round(time.Millisecond))
	f.restart(y)
	l.waitAcks(t, 50)

	// The clean subscribers that were connected get everything sent
	// after their SUBACK.
	now := time.Now()
	checkSubs := []*spreadSub{ctl, xb}
	for _, r := range rounds {
		checkSubs = append(checkSubs, r.after)
	}
	for _, s := range checkSubs {
		missing, acked := l.waitArrived(s.tally, s.subacked, now, 10*time.Second)
		if len(missing) > 0 {
			t.Errorf("clean subscriber %s (node %d, never killed): %d of %d messages acknowledged since its SUBACK never arrived, e.g. %v",
				s.id, s.node, len(missing), acked, missing[:min(len(missing), 10)])
		} else {
			t.Logf("clean subscriber %s (node %d): all %d messages acknowledged since its SUBACK arrived, %d duplicates, %d out of order",
				s.id, s.node, acked, s.tally.dups(), s.tally.outOfOrder())
		}
		s.c.Disconnect(&paho.Disconnect{})
	}
	for _, r := range rounds {
		missing, acked := l.missed(r.before.tally, r.before.subacked, r.killed)
		t.Logf("clean subscriber %s on the killed node %d: %d of %d messages acknowledged between its SUBACK and the kill did not arrive (legitimately lost with its clean session)",
			r.before.id, x, len(missing), acked)
	}

	// C. The node holding the persistent subscriber dies, kills times:
	// its session lives on whichever node it connects to, and resumes on
	// another.
	var backs, firsts []time.Duration
	for k := range kills {
		h := f.holder(ps)
		if h == 0 || f.isDead(h) {
			t.Fatalf("kill %d: the persistent subscriber is on no live node (node %d)", k+1, h)
		}
		if l.currentNode() == h {
			others := f.live(h)
			l.moveTo(others[0])
		}
		l.waitAcks(t, 50)
		killed := f.kill(h)
		up := ps.waitUp(t, killed, 40*time.Second)
		first := ps.waitArrivalSentAfter(t, l, killed, 20*time.Second)
		ack := l.waitAckAfter(t, killed, 20*time.Second)
		newHome := f.liveHome()
		backs, firsts = append(backs, up.Sub(killed)), append(firsts, first.Sub(killed))
		t.Logf("kill %d: node %d, holding the persistent subscriber, killed; it connected again %s later through node %d (home now node %d), got the first message published after the kill %s later; the publisher's first PUBACK after the kill came %s later; messages %d-%d were published (through node %d) while it was away",
			k+1, h, up.Sub(killed).Round(time.Millisecond), ps.nodeNow(), newHome, first.Sub(killed).Round(time.Millisecond), ack.Sub(killed).Round(time.Millisecond),
			l.numberAt(killed), l.numberAt(up)-1, l.currentNode())
		f.restart(h)
	}
	l.waitAcks(t, 50)
	l.stopNow()
	t.Logf("over %d kills of its node, the persistent subscriber was connected again %s, and got the first message published after the kill %s (min/median/max)",
		kills, spreadRange(backs), spreadRange(firsts))

	// The persistent subscriber has every message acknowledged.
	missing, acked := l.waitArrived(ps.tally, time.Time{}, time.Now(), 20*time.Second)
	ps.stopNow()
	st := l.stats()
	t.Logf("load: %d messages published, %d acknowledged, %d refused, %d without an answer; the publisher connected %d times",
		st.sent, st.acked, st.refused, st.failed, st.conns)
	t.Logf("persistent subscriber: %d of %d acknowledged messages received, %d missing, %d duplicates, %d out of order; connected %d times, %d times without its session",
		acked-len(missing), acked, len(missing), ps.tally.dups(), ps.tally.outOfOrder(), ps.connects(), ps.lostSessions())
	// Order is promised for what was acknowledged. A publish the
	// publisher's node took into the session's queue but died before
	// answering (and before telling the subscriber's node) was never
	// acknowledged: the publisher, a clean session, went on with the next
	// number on its next connection, and the copy reaches the subscriber
	// at its node's next look into the queue (catchUp), after later
	// messages. MQTT orders a publisher's messages within its session;
	// this one's session ended with the node.
	if late := ps.tally.outOfOrder(); late > 0 {
		t.Logf("persistent subscriber: %d messages first arrived after later ones (acknowledged or not); the order of first arrivals: %s",
			late, ps.tally.runs(l.topic))
	}
	// On the Kafka fabric a new home holds what is published at it until
	// it delivered what was queued in the log for its sessions
	// (awaitCatchUp): delivered at once, it would arrive first.
	if late := ps.tally.outOfOrderAmong(l.wasAcked); late > 0 {
		t.Errorf("%d acknowledged messages reached the persistent subscriber after later acknowledged ones of the same publisher and topic", late)
	}
	if len(missing) > 0 {
		t.Errorf("the persistent subscriber never got %d acknowledged messages, e.g. %v", len(missing), missing[:min(len(missing), 10)])
	}
	if n := ps.lostSessions(); n > 0 {
		t.Errorf("the persistent subscriber's session was gone %d times it connected again", n)
	}
	if st.acked < 100 {
		t.Errorf("only %d messages were acknowledged: the load did not run", st.acked)
	}
}

// TestSpreadFleetRedisPause: a spread fleet of three nodes, a clean
// subscriber and a publisher on each (so that every message crosses to
// the two other nodes) and a persistent subscriber at the home; Redis is
// stopped with SIGSTOP for 3 s (ROOST_SPREAD_PAUSE), shorter than the
// fabric's lease (5 s), then continued. Every message acknowledged
// reaches every subscriber (no QoS 1 publish that had to cross is
// acknowledged unless it arrives), nobody is disconnected, and every
// publisher gets PUBACKs again by itself.
func TestSpreadFleetRedisPause(t *testing.T) {
	spreadPauseTest(t, fabricRedis, pauseFabric, envDuration(t, "ROOST_SPREAD_PAUSE", 3*time.Second))
}

// TestSpreadFleetRedisPauseLong is TestSpreadFleetRedisPause with Redis
// stopped for 6 s, past the fabric's lease (5 s): every membership lapses,
// and the first node back must not take the others for dead (it sweeps
// nobody until it has renewed without a break for a lease). Nothing
// acknowledged is lost and no clean session is ended.
func TestSpreadFleetRedisPauseLong(t *testing.T) {
	spreadPauseTest(t, fabricRedis, pauseFabric, 6*time.Second)
}

// TestSpreadFleetNodePause is TestSpreadFleetRedisPause with node 3
// stopped with SIGSTOP for 8 s (ROOST_SPREAD_NODE_PAUSE) instead of
// Redis: a pause longer than the fabric's lease (a long GC or VM pause, a
// partition from Redis). The other nodes sweep its routes once its lease
// (5 s) lapsed, on their next renewal (every second), and acknowledge
// messages it then misses: 4-6 s after the stop, and later on a loaded
// machine; 8 s leaves 2 s for that (a node not yet swept when it continues
// rightly keeps its clean session, which then must lose nothing). When it
// continues it
// finds its membership lapsed and ends its clean sessions (0x89): they
// start afresh, and what was published for them while the node was
// stopped is lost with them, as with a crash. Everyone else loses
// nothing: the clean subscribers of the other nodes and the persistent
// subscriber get every acknowledged message. Nothing its publisher sent
// it before it continued is acknowledged (refused, or its connection
// ended), and its writes are refused: roost_publishes_refused_lease_total,
// roost_session_writes_fenced_total or roost_fabric_send_failures_total
// counts at least one. A persistent
// subscriber connected through it connects again through node 1 while it
// is stopped (the old connection left open): no message published after
// that reaches the old connection, the stopped node ends it when it
// continues, and the subscriber gets every acknowledged message.
func TestSpreadFleetNodePause(t *testing.T) {
	spreadPauseTest(t, fabricRedis, 3, envDuration(t, "ROOST_SPREAD_NODE_PAUSE", 8*time.Second))
}

// TestSpreadFleetPostgresPause is TestSpreadFleetRedisPause with every
// process of the fleet's Postgres stopped with SIGSTOP for 15 s
// (ROOST_SPREAD_PG_PAUSE), past the 10 s a node counts as up after it last
// announced itself there: connected devices are unaffected. Nobody is
// disconnected, the persistent subscriber stays on its connection, every
// publisher keeps getting PUBACKs during the pause (none refused, none
// unanswered, no gap over 2 s), and every acknowledged message arrives.
func TestSpreadFleetPostgresPause(t *testing.T) {
	spreadPauseTest(t, fabricRedis, pausePostgres, envDuration(t, "ROOST_SPREAD_PG_PAUSE", 15*time.Second))
}

// What spreadPauseTest stops: a node (1, 2 or 3), or one of these.
const (
	pauseFabric   = 0  // Redis, or kfake on the Kafka fabric
	pausePostgres = -1 // every process of the fleet's Postgres
)

// spreadPauseTest stops the fabric, Postgres or a node (target) for pause
// under load, and checks that every acknowledged message arrives.
func spreadPauseTest(t *testing.T, fab fleetFabric, target int, pause time.Duration) {
	f := startSpreadFleetOn(t, 3, fab)
	var subs []*spreadSub
	for i := 1; i <= 3; i++ {
		subs = append(subs, f.cleanSub(i, fmt.Sprintf("c%d", i), "load/#"))
	}
	if h := f.home(); h != 1 {
		f.fatalf("the tenant's home is node %d; want node 1, where its first (clean) session connected", h)
	}
	ps := f.keep("psub", "load/#", 1)
	var mv *spreadMover
	if target > 0 {
		mv = f.mover("pmove", "load/#", target)
	}
	var loads []*spreadLoad
	for i := 1; i <= 3; i++ {
		l := f.load(fmt.Sprintf("pub%d", i), fmt.Sprintf("load/%d", i), i)
		if i == target {
			// It waits for the answer to the publish the node reads when
			// it continues.
			l.setTimeout(pause + 10*time.Second)
		}
		loads = append(loads, l)
	}
	for _, l := range loads {
		l.waitAcks(t, 50)
	}
	what, stop, cont := f.pauser(target)
	t.Cleanup(cont) // before fleet.sh stop, if the test ends early
	paused := time.Now()
	stop()
	stopped := time.Now() // stopped (every thread): the node reads nothing from now on
	var moved chan error
	if mv != nil {
		time.Sleep(min(time.Second, pause/2))
		moved = make(chan error, 1)
		go func() { moved <- mv.move(1, pause+20*time.Second) }()
	}
	time.Sleep(time.Until(paused.Add(pause)))
	continued := time.Now()
	cont()
	t.Logf("%s stopped for %s", what, pause)
	resumed := time.Now()
	for _, l := range loads {
		at := l.waitAckSentAfter(t, resumed, 30*time.Second)
		t.Logf("%s (node %d): first PUBACK for a message sent after %s continued, %s after", l.id, l.currentNode(), what, at.Sub(resumed).Round(time.Millisecond))
	}
	if moved != nil {
		if err := <-moved; err != nil {
			f.fatalf("%v", err)
		}
	}
	for _, l := range loads {
		l.waitAcks(t, 100)
	}
	for _, l := range loads {
		l.stopNow()
	}
	end := time.Now()
	for _, l := range loads {
		st := l.stats()
		during := l.ackedBetween(paused.Add(100*time.Millisecond), resumed)
		gap := l.longestAckGap(paused, resumed)
		t.Logf("%s: %d published, %d acknowledged (%d of them during the pause, at most %s apart), %d refused, %d without an answer; connected %d times",
			l.id, st.sent, st.acked, during, gap.Round(time.Millisecond), st.refused, st.failed, st.conns)
		if fab == fabricKafka && target == pauseFabric && during > 0 {
			// Every QoS 1 publish crosses Kafka: none can be stored there.
			f.errorf("%s: %d publishes acknowledged while Kafka was stopped", l.id, during)
		}
		if target == pausePostgres {
			if st.refused+st.failed > 0 || st.conns != 1 {
				f.errorf("%s: with Postgres stopped, %d publishes refused and %d unanswered, connected %d times; want 0, 0 and 1", l.id, st.refused, st.failed, st.conns)
			}
			if gap > 2*time.Second {
				f.errorf("%s: with Postgres stopped, %s without a PUBACK; want PUBACKs all along", l.id, gap.Round(time.Millisecond))
			}
		}
	}
	// Whatever is still on its way has 10 s in all to arrive.
	wait := time.Now().Add(10 * time.Second)
	for _, s := range subs {
		ended := false
		select {
		case <-s.c.Done():
			ended = true
		default:
		}
		if s.node == target {
			// The stopped node's clean session is ended when the others
			// swept the node's membership (Redis fabric, a pause past its
			// lease): they sent it nothing since. If it is kept (Kafka's
			// fabric sweeps nobody; on Redis's, a sweep that had not yet
			// run when the node continued), it must have lost nothing.
			if !ended {
				lapses := f.metric(target, "roost_fabric_lapses_total")
				if fab == fabricRedis && lapses > 0 {
					// The node found its membership swept: it ends its
					// clean sessions then.
					f.errorf("clean subscriber %s on the stopped node %d was not disconnected, though the node found its membership lapsed (roost_fabric_lapses_total %v)", s.id, s.node, lapses)
				}
				t.Logf("clean subscriber %s on the stopped node %d was kept when it continued (roost_fabric_lapses_total %v): it must have lost nothing",
					s.id, s.node, lapses)
			}
			if ended {
				t.Logf("clean subscriber %s on the stopped node %d was disconnected when it continued", s.id, s.node)
				continue
			}
		} else if ended {
			f.errorf("clean subscriber %s (node %d) was disconnected", s.id, s.node)
		}
		for _, l := range loads {
			missing, acked := l.waitArrived(s.tally, s.subacked, end, time.Until(wait))
			if len(missing) > 0 {
				f.errorf("clean subscriber %s (node %d): %d of %d messages %s (node %d) got a PUBACK for never arrived, e.g. %v",
					s.id, s.node, len(missing), acked, l.id, l.home, missing[:min(len(missing), 10)])
			}
		}
	}
	for _, l := range loads {
		missing, acked := l.waitArrived(ps.tally, time.Time{}, end, time.Until(wait))
		if len(missing) > 0 {
			f.errorf("persistent subscriber: %d of %d messages %s got a PUBACK for never arrived, e.g. %v", len(missing), acked, l.id, missing[:min(len(missing), 10)])
		}
	}
	t.Logf("persistent subscriber: connected %d times, %d duplicates, %d out of order", ps.connects(), ps.tally.dups(), ps.tally.outOfOrder())
	if n := ps.lostSessions(); n > 0 {
		f.errorf("the persistent subscriber's session was gone %d times it connected again", n)
	}
	if target == pausePostgres && ps.connects() != 1 {
		f.errorf("the persistent subscriber connected %d times; with Postgres stopped it should have kept its connection", ps.connects())
	}
	for _, s := range subs {
		t.Logf("clean subscriber %s (node %d): %d duplicates, %d out of order", s.id, s.node, s.tally.dups(), s.tally.outOfOrder())
	}
	ps.stopNow()
	if mv != nil {
		mv.check(t, loads, end, resumed, wait)
		// What the stopped node read when it continued, its lease lapsed,
		// is not acknowledged: it is refused, or the connection ends. (A
		// publish it had taken before the stop may be acknowledged after
		// it: its PUBACK, decided with the lease current, was not yet
		// written. So only what was sent while it was stopped counts,
		// from 5 ms after the signal. And only what was acknowledged
		// before the node could serve again: a node that finds its lease
		// lapsed renews it, waits a quarter of it (1 s) and reads its
		// claims before it serves, and a publish sent during the stop but
		// decided after that, on a busy machine, is rightly acknowledged.)
		l := loads[target-1]
		if n := l.ackedSentBetween(stopped.Add(5*time.Millisecond), continued, continued.Add(time.Second)); n > 0 {
			f.errorf("%s: node %d acknowledged %d publishes sent to it while it was stopped (its lease had lapsed)", l.id, target, n)
		}
		// Which counter shows it depends on what the node does first when
		// it continues: it refuses the publish for its lease, or finds a
		// session write fenced, or (Kafka) the fabric's send of the publish
		// it had taken before the stop timed out meanwhile.
		refused, fenced, failed := f.metric(target, "roost_publishes_refused_lease_total"), f.metric(target, "roost_session_writes_fenced_total"),
			f.metric(target, "roost_fabric_send_failures_total")
		t.Logf("node %d: roost_publishes_refused_lease_total %v, roost_session_writes_fenced_total %v, roost_fabric_send_failures_total %v, roost_fabric_lapses_total %v",
			target, refused, fenced, failed, f.metric(target, "roost_fabric_lapses_total"))
		if refused+fenced+failed < 1 {
			f.errorf("node %d, stopped past its lease, had no write refused when it continued (roost_publishes_refused_lease_total %v, roost_session_writes_fenced_total %v, roost_fabric_send_failures_total %v)",
				target, refused, fenced, failed)
		}
	}
	for i := 1; i <= 3; i++ {
		t.Logf("node %d: roost_fabric_send_failures_total %v", i, f.metric(i, "roost_fabric_send_failures_total"))
	}
}

// spreadRange is "min/median/max" of ds.
func spreadRange(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	ds = slices.Clone(ds)
	slices.Sort(ds)
	r := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	return fmt.Sprintf("%s/%s/%s", r(ds[0]), r(ds[len(ds)/2]), r(ds[len(ds)-1]))
}

// waitStopped waits until every thread of process pid is stopped. A
// SIGSTOP is sent when kill returns, but a thread running on another CPU
// stops only when that CPU takes the interrupt: on a busy virtual machine
// the node went on answering publishes for tens of milliseconds after.
func waitStopped(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			t.Logf("cannot tell whether pid %d stopped: %v", pid, err)
			return
		}
		running := 0
		for _, task := range tasks {
			stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
			if err != nil {
				continue // the thread ended
			}
			// The state follows the command name, in parentheses.
			if i := bytes.LastIndexByte(stat, ')'); i < 0 || i+2 >= len(stat) || (stat[i+2] != 'T' && stat[i+2] != 't') {
				running++
			}
		}
		if running == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Logf("pid %d: %d threads not stopped 5s after SIGSTOP", pid, running)
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// pauser is what target names, and how to stop and continue it.
func (f *spreadFleet) pauser(target int) (what string, stop, cont func()) {
	f.t.Helper()
	signal := func(what string, pids []int, sig syscall.Signal) {
		for _, pid := range pids {
			if err := syscall.Kill(pid, sig); err != nil && sig == syscall.SIGSTOP {
				f.t.Fatalf("%v %s (pid %d): %v", sig, what, pid, err)
			}
		}
	}
	switch {
	case target > 0:
		what = fmt.Sprintf("node %d", target)
		pid, _ := strconv.Atoi(f.nodeVar(target, "PID"))
		return what, func() {
			signal(what, []int{pid}, syscall.SIGSTOP)
			waitStopped(f.t, pid)
		}, func() { signal(what, []int{pid}, syscall.SIGCONT) }
	case target == pausePostgres:
		var pids []int
		var mu sync.Mutex
		return "Postgres", func() {
				mu.Lock()
				defer mu.Unlock()
				pids = f.postgresPIDs()
				signal("Postgres", pids, syscall.SIGSTOP)
				// A child forked meanwhile.
				for _, pid := range f.postgresPIDs() {
					if !slices.Contains(pids, pid) {
						pids = append(pids, pid)
						signal("Postgres", []int{pid}, syscall.SIGSTOP)
					}
				}
				// The pause is real: every one of them is stopped.
				time.Sleep(50 * time.Millisecond)
				for _, pid := range pids {
					if st := procState(pid); st != "T" && st != "" {
						f.t.Fatalf("Postgres pid %d: state %s after SIGSTOP, want T (stopped)", pid, st)
					}
				}
				f.t.Logf("Postgres: SIGSTOP to pids %v", pids)
			}, func() {
				mu.Lock()
				defer mu.Unlock()
				signal("Postgres", pids, syscall.SIGCONT)
			}
	case f.fabric == fabricKafka:
		return "Kafka", func() { f.kafka.pause(true) }, func() { f.kafka.pause(false) }
	default:
		pid := f.redisPID()
		return "Redis", func() { signal("Redis", []int{pid}, syscall.SIGSTOP) }, func() { signal("Redis", []int{pid}, syscall.SIGCONT) }
	}
}

// postgresPIDs are the fleet's postmaster (the first line of its
// postmaster.pid) and its children.
func (f *spreadFleet) postgresPIDs() []int {
	f.t.Helper()
	dir := filepath.Join(f.dir, "postgres")
	if b, err := os.ReadFile(filepath.Join(f.dir, "postgres.dir")); err == nil {
		dir = strings.TrimSpace(string(b)) // fleet.sh put it under /tmp
	}
	b, err := os.ReadFile(filepath.Join(dir, "data", "postmaster.pid"))
	if err != nil {
		f.t.Fatalf("fleet.sh's postmaster pid: %v", err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	postmaster, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		f.t.Fatalf("fleet.sh's postmaster pid %q: %v", first, err)
	}
	pids := []int{postmaster}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, stat := range stats {
		b, err := os.ReadFile(stat)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(b, ')')
		fields := strings.Fields(string(b[i+1:]))
		if len(fields) < 2 || fields[1] != strconv.Itoa(postmaster) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(stat))); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// procState is the state letter of a process (T: stopped), or "" when it
// is gone.
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(fields) == 0 {
		return ""
	}
	return fields[0]
}

// spreadMover is a persistent subscriber whose client connects again
// through another node while its first connection is still open (a device
// that gave up on a stopped node): the session must be served by the new
// connection alone from then on.
type spreadMover struct {
	f        *spreadFleet
	id       string
	node     int
	tally    *spreadTally
	subacked time.Time
	old      *paho.Client

	mu      sync.Mutex
	movedAt time.Time       // the new connection's CONNACK
	late    []*paho.Publish // what reached the old connection after it
	present bool
}

func (f *spreadFleet) mover(id, filter string, node int) *spreadMover {
	f.t.Helper()
	m := &spreadMover{f: f, id: id, node: node, tally: newSpreadTally()}
	c, _, err := f.dial(node, id, true, func(p *paho.Publish) {
		m.mu.Lock()
		if !m.movedAt.IsZero() {
			m.late = append(m.late, p)
		}
		m.mu.Unlock()
		m.tally.add(p)
	})
	if err != nil {
		f.t.Fatalf("persistent subscriber %s through node %d: %v", id, node, err)
	}
	f.mustSubscribe(c, filter, 1)
	m.subacked, m.old = time.Now(), c
	f.t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	return m
}

// move connects the client again through node i, trying for up to d.
func (m *spreadMover) move(i int, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		c, ca, err := m.f.dial(i, m.id, true, m.tally.add)
		if err == nil {
			m.mu.Lock()
			m.movedAt, m.present = time.Now(), ca.SessionPresent
			m.mu.Unlock()
			m.f.t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("persistent subscriber %s: could not connect again through node %d within %s: %v", m.id, i, d, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// check: the session was there on the new connection, no message
// published after it reached the old one, the stopped node ended the old
// one within 10 s of continuing, and every message acknowledged since the
// first SUBACK arrived by wait.
//
// On the Redis fabric, when the node was stopped long enough for the
// others to sweep its inbox (ROOST_SPREAD_NODE_PAUSE=20s), the new
// owner's kick went with it: the node, finding its membership lapsed,
// ends its persistent sessions' connections too (fabricLapsed), so that
// it does not serve the old connection a message published after the
// move.
//
// What the stopped node held for the old connection when it was stopped
// may reach it when the node continues, after the move: on the Redis
// fabric a message it had read from its inbox (it then finds the session
// fenced, and ends the connection with 0x8E); on Kafka's, where it only
// forwards the connection to the home, what the home had written to it
// before the move. Those are counted (the session gets them again:
// duplicates), not failed: they were sent before the session moved.
func (m *spreadMover) check(t *testing.T, loads []*spreadLoad, end, resumed, wait time.Time) {
	t.Helper()
	m.mu.Lock()
	movedAt, present, late := m.movedAt, m.present, slices.Clone(m.late)
	m.mu.Unlock()
	t.Logf("persistent subscriber %s: connected again through node 1 %s after its first SUBACK through node %d", m.id, movedAt.Sub(m.subacked).Round(time.Millisecond), m.node)
	if !present {
		m.f.errorf("persistent subscriber %s: its session was not present when it connected again through node 1", m.id)
	}
	var after, before []string
	for _, p := range late {
		n, _ := strconv.Atoi(string(p.Payload))
		for _, l := range loads {
			if l.topic != p.Topic {
				continue
			}
			l.mu.Lock()
			sent := l.sentAt[n]
			l.mu.Unlock()
			if sent.After(movedAt) {
				after = append(after, fmt.Sprintf("%s %d", p.Topic, n))
			} else {
				before = append(before, fmt.Sprintf("%s %d", p.Topic, n))
			}
		}
	}
	if len(before) > 0 {
		t.Logf("persistent subscriber %s: %d messages published before it connected through node 1 reached its old connection through node %d after that (held there when the node was stopped), e.g. %v",
			m.id, len(before), m.node, before[:min(len(before), 10)])
	}
	if len(after) > 0 {
		msg := fmt.Sprintf("persistent subscriber %s: served by two nodes at once: %d messages published after it connected through node 1 reached its old connection through node %d, e.g. %v",
			m.id, len(after), m.node, after[:min(len(after), 10)])
		m.f.errorf("%s", msg)
	}
	select {
	case <-m.old.Done():
	case <-time.After(time.Until(resumed.Add(10 * time.Second))):
		m.f.errorf("persistent subscriber %s: its old connection through node %d was not ended within 10 s of the node continuing", m.id, m.node)
	}
	for _, l := range loads {
		missing, acked := l.waitArrived(m.tally, m.subacked, end, time.Until(wait))
		if len(missing) > 0 {
			m.f.errorf("persistent subscriber %s: %d of %d messages %s got a PUBACK for never arrived, e.g. %v", m.id, len(missing), acked, l.id, missing[:min(len(missing), 10)])
		}
	}
	t.Logf("persistent subscriber %s: %d duplicates, %d out of order", m.id, m.tally.dups(), m.tally.outOfOrder())
}

// ---- the fleet ----

// spreadFleet is a fleet of spread data-plane nodes that scripts/fleet.sh
// started, with one tenant and one device, "d", that may use any client id.
type spreadFleet struct {
	t      *testing.T
	script string
	dir    string
	env    []string
	began  time.Time

	slug, user, secret string

	fabric fleetFabric
	kafka  *kafkaGate // the fabric's Kafka (kfake), in this process

	mu       sync.Mutex
	vars     map[string]string
	nodes    int
	dead     map[int]bool
	failures []string // what errorf and fatalf said
}

// errorf is t.Errorf, repeated at the end of the test's output, after the
// nodes' logs (which would otherwise bury it).
func (f *spreadFleet) errorf(format string, args ...any) {
	f.t.Helper()
	msg := fmt.Sprintf(format, args...)
	f.mu.Lock()
	f.failures = append(f.failures, msg)
	f.mu.Unlock()
	f.t.Error(msg)
}

// fatalf is t.Fatalf, repeated as errorf's messages are.
func (f *spreadFleet) fatalf(format string, args ...any) {
	f.t.Helper()
	f.errorf(format, args...)
	f.t.FailNow()
}

// fleetFabric is what carries a spread fleet's messages between nodes
// (ROOST_FLEET_FABRIC).
type fleetFabric string

const (
	fabricRedis fleetFabric = "redis"
	fabricKafka fleetFabric = "kafka" // kfake, started by the test
)

// requireFleetTools fails (ROOST_TEST_STRICT=1) or skips a test when what
// scripts/fleet.sh needs is missing.
func requireFleetTools(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		testenv.Require(t, "redis-server is not installed (apt-get install redis-server): scripts/fleet.sh starts one")
	}
	if bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb"); len(bins) == 0 {
		testenv.Require(t, "postgresql is not installed (apt-get install postgresql): scripts/fleet.sh starts one")
	}
	for _, tool := range []string{"bash", "curl", "python3"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Require(t, tool+" is not installed: scripts/fleet.sh needs it")
		}
	}
}

// envDuration is a positive duration from the environment, or def.
func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive duration", name, s)
	}
	return d
}

// envCount is a positive count from the environment, or def.
func envCount(t *testing.T, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive count", name, s)
	}
	return n
}

func startSpreadFleet(t *testing.T, nodes int) *spreadFleet {
	t.Helper()
	return startSpreadFleetOn(t, nodes, fabricRedis)
}

// startSpreadFleetOn starts a spread fleet on the fabric given. Kafka is a
// kfake cluster in the test process, on a loopback port, that every
// process of the fleet is pointed at (ROOST_KAFKA_BROKERS: also its
// lifecycle events).
func startSpreadFleetOn(t *testing.T, nodes int, fab fleetFabric) *spreadFleet {
	t.Helper()
	env := []string{"ROOST_FLEET_SPREAD=true", "ROOST_FLEET_NODE_ENV=ROOST_DRAIN_TIMEOUT=5s"}
	var k *kafkaGate
	if fab == fabricKafka {
		k = startKafka(t)
		env = append(env, "ROOST_FLEET_FABRIC=kafka", "ROOST_KAFKA_BROKERS="+k.addr())
	}
	f := startFleet(t, nodes, env...)
	f.fabric, f.kafka = fab, k
	return f
}

// startFleet starts scripts/fleet.sh's fleet of that many nodes, with the
// environment given added, and makes its tenant.
func startFleet(t *testing.T, nodes int, env ...string) *spreadFleet {
	t.Helper()
	requireFleetTools(t)
	bin := roostBinary(t)
	script, err := filepath.Abs("../../scripts/fleet.sh")
	if err != nil {
		t.Fatal(err)
	}
	f := &spreadFleet{t: t, script: script, dir: filepath.Join(t.TempDir(), "fleet"), nodes: nodes, dead: map[int]bool{}, began: time.Now()}
	f.env = append(append(os.Environ(), "ROOST_FLEET_DIR="+f.dir, "ROOST_BIN="+bin), env...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(f.logs())
		}
		if _, err := f.sh("stop"); err != nil {
			t.Errorf("fleet.sh stop: %v", err)
		}
		t.Logf("the test took %s", time.Since(f.began).Round(time.Millisecond))
		f.mu.Lock()
		defer f.mu.Unlock()
		if len(f.failures) > 0 {
			t.Logf("what failed, again (the nodes' logs are above):\n\t%s", strings.Join(f.failures, "\n\t"))
		}
	})
	out, err := f.sh("start", strconv.Itoa(nodes))
	if err != nil {
		t.Fatalf("fleet.sh start %d: %v\nstdout:\n%s", nodes, err, out)
	}
	f.vars = parseExports(t, out)
	f.tenant()
	return f
}

// sh runs scripts/fleet.sh, and returns what it printed on stdout.
func (f *spreadFleet) sh(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{f.script}, args...)...)
	cmd.Env = f.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// The processes it leaves running must not hold its output open.
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err := cmd.Run()
	if err != nil {
		f.t.Logf("fleet.sh %s (%s): %v\n%s", strings.Join(args, " "), time.Since(start).Round(time.Millisecond), err, stderr.String())
	} else {
		f.t.Logf("fleet.sh %s (%s)", strings.Join(args, " "), time.Since(start).Round(time.Millisecond))
	}
	return stdout.String(), err
}

var logProblem = regexp.MustCompile(`level=(WARN|ERROR)|"level":"(WARN|ERROR)"|panic|fatal`)

// logs are the last lines of each process's log, and its last warnings
// and errors, for failures.
func (f *spreadFleet) logs() string {
	var b strings.Builder
	files, _ := filepath.Glob(filepath.Join(f.dir, "*.log"))
	for _, file := range files {
		data, _ := os.ReadFile(file)
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		var problems []string
		for _, l := range lines {
			if logProblem.MatchString(l) {
				problems = append(problems, l)
			}
		}
		fmt.Fprintf(&b, "--- %s: last warnings and errors\n%s\n--- %s: last lines\n%s\n", filepath.Base(file),
			strings.Join(problems[max(0, len(problems)-40):], "\n"), filepath.Base(file), strings.Join(lines[max(0, len(lines)-20):], "\n"))
	}
	return b.String()
}

// api calls the control plane's API, failing the test on an error.
func (f *spreadFleet) api(method, path, token string, body, out any) {
	f.t.Helper()
	var rd *bytes.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, _ := http.NewRequest(method, f.vars["ROOST_API_URL"]+path, rd)
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	var raw json.RawMessage
	json.NewDecoder(resp.Body).Decode(&raw)
	if resp.StatusCode >= 300 {
		f.t.Fatalf("%s %s: %s %s", method, path, resp.Status, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			f.t.Fatalf("%s %s: %v in %s", method, path, err, raw)
		}
	}
}

// tenant makes the tenant, lifts the quotas the load would hit, and makes
// its device.
func (f *spreadFleet) tenant() {
	f.slug = "spread"
	var session struct{ Token string }
	f.api("POST", "/v1/signup", "", map[string]string{"email": "spread@example.com", "password": "correct horse battery"}, &session)
	f.api("POST", "/v1/tenants", session.Token, map[string]string{"slug": f.slug}, nil)
	f.api("PATCH", "/v1/admin/tenants/"+f.slug, f.vars["ROOST_ADMIN_TOKEN"], map[string]any{"quotas": map[string]int64{
		"publish_rate": 1_000_000, "tenant_publish_rate": 1_000_000, "connect_rate": 10_000, "max_queued": 1_000_000,
		"bandwidth_in": 1 << 30, "bandwidth_out": 1 << 30}}, nil)
	var dev struct{ Secret string }
	f.api("POST", "/v1/tenants/"+f.slug+"/devices", session.Token, map[string]string{"name": "d", "client_ids": "any"}, &dev)
	f.user, f.secret = f.slug+"/d", dev.Secret
}

func (f *spreadFleet) nodeVar(i int, what string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.vars[fmt.Sprintf("ROOST_NODE%d_%s", i, what)]
}

func (f *spreadFleet) mqttAddr(i int) string { return f.nodeVar(i, "MQTT") }

// live lists the nodes not killed, but those given.
func (f *spreadFleet) live(except ...int) []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []int
	for i := 1; i <= f.nodes; i++ {
		if !f.dead[i] && !slices.Contains(except, i) {
			out = append(out, i)
		}
	}
	return out
}

func (f *spreadFleet) isDead(i int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dead[i]
}

// kill ends node i with SIGKILL, and returns when it is gone.
func (f *spreadFleet) kill(i int) time.Time {
	f.t.Helper()
	pid, err := strconv.Atoi(f.nodeVar(i, "PID"))
	if err != nil {
		f.t.Fatalf("node %d's PID %q: %v", i, f.nodeVar(i, "PID"), err)
	}
	f.mu.Lock()
	f.dead[i] = true
	f.mu.Unlock()
	at := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		f.t.Fatalf("kill -9 node %d (pid %d): %v", i, pid, err)
	}
	for running(pid) {
		if time.Since(at) > 5*time.Second {
			f.t.Fatalf("node %d (pid %d) still runs 5 s after SIGKILL", i, pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return at
}

// restart brings node i back with `fleet.sh restart-node i`.
func (f *spreadFleet) restart(i int) {
	f.t.Helper()
	out, err := f.sh("restart-node", strconv.Itoa(i))
	if err != nil {
		f.t.Fatalf("fleet.sh restart-node %d: %v", i, err)
	}
	again := parseExports(f.t, out)
	name := fmt.Sprintf("ROOST_NODE%d_PID", i)
	if again[name] == "" {
		f.t.Fatalf("fleet.sh restart-node %d printed %q, want the export of %s", i, out, name)
	}
	f.mu.Lock()
	f.vars[name] = again[name]
	f.dead[i] = false
	f.mu.Unlock()
}

// home is the node holding the tenant, as the control plane's stats say
// (a node killed less than 10 s ago still counts), or 0.
func (f *spreadFleet) home() int {
	f.t.Helper()
	var s struct {
		Nodes []struct {
			URL     string
			Tenants int
		}
	}
	f.api("GET", "/v1/admin/stats", f.vars["ROOST_ADMIN_TOKEN"], nil, &s)
	for _, n := range s.Nodes {
		if n.Tenants == 0 {
			continue
		}
		for i := 1; i <= f.nodes; i++ {
			if n.URL == f.nodeVar(i, "HTTP") {
				return i
			}
		}
	}
	return 0
}

// liveHome is the tenant's home once it is a node not killed, waiting up
// to 20 s for one to hold it, or 0.
func (f *spreadFleet) liveHome() int {
	f.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		h := f.home()
		if h != 0 && !f.isDead(h) || time.Now().After(deadline) {
			return h
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// holder is the node holding persistent subscriber k's session: on the
// Redis fabric the one it is connected through (sessions live anywhere),
// on Kafka's the tenant's home (a node forwards them there).
func (f *spreadFleet) holder(k *spreadKeeper) int {
	if f.fabric == fabricKafka {
		return f.liveHome()
	}
	return k.nodeNow()
}

// metric is a series' value on node i's /metrics, or -1 when absent.
func (f *spreadFleet) metric(i int, series string) float64 {
	f.t.Helper()
	req, _ := http.NewRequest("GET", f.nodeVar(i, "HTTP")+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+f.vars["ROOST_ADMIN_TOKEN"])
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatalf("node %d /metrics: %v", i, err)
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	body.ReadFrom(resp.Body)
	if resp.StatusCode != 200 {
		f.t.Fatalf("node %d /metrics: %s\n%.300s", i, resp.Status, body.String())
	}
	for _, line := range strings.Split(body.String(), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				f.t.Fatalf("node %d /metrics: %q", i, line)
			}
			return n
		}
	}
	return -1
}

// redisPID is the pid of the Redis fleet.sh started.
func (f *spreadFleet) redisPID() int {
	f.t.Helper()
	b, err := os.ReadFile(filepath.Join(f.dir, "redis", "redis.pid"))
	if err != nil {
		f.t.Fatalf("fleet.sh's redis pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		f.t.Fatalf("fleet.sh's redis pid %q: %v", b, err)
	}
	return pid
}

// dial connects an MQTT 5 client of the device through node i: with a
// clean session, or with one expiring an hour after it disconnects.
func (f *spreadFleet) dial(i int, id string, persistent bool, onMsg func(*paho.Publish)) (*paho.Client, *paho.Connack, error) {
	return f.dialWith(i, id, persistent, onMsg, func(d *paho.Disconnect) {
		f.t.Logf("%s on node %d: DISCONNECT 0x%02X from the server", id, i, d.ReasonCode)
	})
}

// dialWith is dial with onDisc called on a DISCONNECT from the server
// (paho calls it after the connection's Done is closed).
func (f *spreadFleet) dialWith(i int, id string, persistent bool, onMsg func(*paho.Publish), onDisc func(*paho.Disconnect)) (*paho.Client, *paho.Connack, error) {
	conn, err := net.DialTimeout("tcp", f.mqttAddr(i), 2*time.Second)
	if err != nil {
		return nil, nil, err
	}
	cfg := paho.ClientConfig{Conn: conn, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
		func(pr paho.PublishReceived) (bool, error) {
			if onMsg != nil {
				onMsg(pr.Packet)
			}
			return true, nil
		}},
		OnServerDisconnect: onDisc,
		OnClientError:      func(err error) { f.t.Logf("%s on node %d: %v", id, i, err) },
	}
	cp := &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: !persistent, Username: f.user, UsernameFlag: true, Password: []byte(f.secret), PasswordFlag: true}
	if persistent {
		cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(3600)}
	}
	c := paho.NewClient(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ca, err := c.Connect(ctx, cp)
	if err != nil {
		conn.Close()
		return nil, ca, err
	}
	return c, ca, nil
}

func (f *spreadFleet) mustDial(i int, id string, persistent bool, onMsg func(*paho.Publish)) *paho.Client {
	f.t.Helper()
	c, _, err := f.dial(i, id, persistent, onMsg)
	if err != nil {
		f.t.Fatalf("%s through node %d: %v", id, i, err)
	}
	return c
}

func subscribe(c *paho.Client, filter string, qos byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}})
	if err != nil {
		return fmt.Errorf("subscribe %s: %w (%+v)", filter, err, sa)
	}
	if len(sa.Reasons) != 1 || sa.Reasons[0] >= 0x80 {
		return fmt.Errorf("subscribe %s: reason codes %v", filter, sa.Reasons)
	}
	return nil
}

func (f *spreadFleet) mustSubscribe(c *paho.Client, filter string, qos byte) {
	f.t.Helper()
	if err := subscribe(c, filter, qos); err != nil {
		f.t.Fatalf("%s: %v", c.ClientID(), err)
	}
}

// settle returns once the broker has read the acknowledgements c sent
// for what it received: paho hands a message over before it acknowledges
// it, and a DISCONNECT right after may pass the PUBACKs, which leaves the
// messages to be sent again. A publish of c's own, acknowledged, comes
// after them (one connection's packets are read in order).
func (f *spreadFleet) settle(c *paho.Client) {
	f.t.Helper()
	f.mustPublish(c, "settle/"+c.ClientID(), "", 1, false)
}

func (f *spreadFleet) mustPublish(c *paho.Client, topic, payload string, qos byte, retain bool) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: qos, Retain: retain, Payload: []byte(payload)}); err != nil {
		f.t.Fatalf("%s: publish %s to %s: %v", c.ClientID(), payload, topic, err)
	}
}

// receiveN takes n messages from ch, failing the test after d.
func receiveN(t *testing.T, ch chan *paho.Publish, n int, d time.Duration) []*paho.Publish {
	t.Helper()
	var got []*paho.Publish
	deadline := time.After(d)
	for len(got) < n {
		select {
		case m := <-ch:
			got = append(got, m)
		case <-deadline:
			var payloads []string
			for _, m := range got {
				payloads = append(payloads, string(m.Payload))
			}
			t.Fatalf("got %d messages of %d within %s: %v", len(got), n, d, payloads)
		}
	}
	return got
}

func expectQuiet(t *testing.T, ch chan *paho.Publish, d time.Duration, when string) {
	t.Helper()
	select {
	case m := <-ch:
		t.Errorf("%s: an extra message %s %q", when, m.Topic, m.Payload)
	case <-time.After(d):
	}
}

// ---- subscribers and the load ----

// spreadTally counts the numbered messages a subscriber received, by
// topic, and when and in which order each first arrived.
type spreadTally struct {
	mu    sync.Mutex
	count map[string]map[int]int
	first map[string]map[int]time.Time
	order map[string][]int
}

func newSpreadTally() *spreadTally {
	return &spreadTally{count: map[string]map[int]int{}, first: map[string]map[int]time.Time{}, order: map[string][]int{}}
}

func (s *spreadTally) add(m *paho.Publish) {
	n, err := strconv.Atoi(string(m.Payload))
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.count[m.Topic] == nil {
		s.count[m.Topic], s.first[m.Topic] = map[int]int{}, map[int]time.Time{}
	}
	if s.count[m.Topic][n] == 0 {
		s.first[m.Topic][n] = time.Now()
		s.order[m.Topic] = append(s.order[m.Topic], n)
	}
	s.count[m.Topic][n]++
}

func (s *spreadTally) got(topic string, n int) (int, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count[topic][n], s.first[topic][n]
}

// outOfOrder counts the messages that first arrived after a later one
// of the same topic (a redelivery is no such case: only first arrivals
// count).
func (s *spreadTally) outOfOrder() int { return s.outOfOrderAmong(nil) }

// outOfOrderAmong is outOfOrder counting only the messages counted
// reports true for (all of them if nil).
func (s *spreadTally) outOfOrderAmong(counted func(n int) bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	late := 0
	for _, order := range s.order {
		high := -1
		for _, n := range order {
			if counted != nil && !counted(n) {
				continue
			}
			if n < high {
				late++
			}
			high = max(high, n)
		}
	}
	return late
}

// runs is the order in which a topic's messages first arrived, as runs
// of consecutive numbers: "0-99 150-199 100-149" tells that 100-149 came
// late.
func (s *spreadTally) runs(topic string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	order := s.order[topic]
	for i := 0; i < len(order); {
		j := i
		for j+1 < len(order) && order[j+1] == order[j]+1 {
			j++
		}
		if i == j {
			fmt.Fprintf(&b, " %d", order[i])
		} else {
			fmt.Fprintf(&b, " %d-%d", order[i], order[j])
		}
		i = j + 1
	}
	return strings.TrimSpace(b.String())
}

func (s *spreadTally) dups() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := 0
	for _, ns := range s.count {
		for _, c := range ns {
			d += c - 1
		}
	}
	return d
}

// spreadSub is a clean subscriber through one node.
type spreadSub struct {
	id       string
	node     int
	c        *paho.Client
	tally    *spreadTally
	subacked time.Time
}

func (f *spreadFleet) cleanSub(node int, id, filter string) *spreadSub {
	f.t.Helper()
	s := &spreadSub{id: id, node: node, tally: newSpreadTally()}
	s.c = f.mustDial(node, id, false, s.tally.add)
	f.mustSubscribe(s.c, filter, 1)
	s.subacked = time.Now()
	return s
}

// spreadKeeper keeps a persistent subscriber connected: whenever its
// connection ends it connects again through the live nodes in turn,
// retrying, first through prefer.
type spreadKeeper struct {
	f      *spreadFleet
	id     string
	filter string
	tally  *spreadTally

	mu         sync.Mutex
	ups        []time.Time
	sessions   int // CONNACKs without the session, but the first
	node       int
	stop, done chan struct{}
}

func (f *spreadFleet) keep(id, filter string, prefer int) *spreadKeeper {
	f.t.Helper()
	k := &spreadKeeper{f: f, id: id, filter: filter, tally: newSpreadTally(), stop: make(chan struct{}), done: make(chan struct{})}
	// The first connection and subscription, before the test goes on.
	c, ca, err := f.dial(prefer, id, true, k.tally.add)
	if err != nil {
		f.t.Fatalf("persistent subscriber through node %d: %v", prefer, err)
	}
	if ca.SessionPresent {
		f.t.Fatalf("persistent subscriber: a session was present at its first connection")
	}
	f.mustSubscribe(c, filter, 1)
	k.ups, k.node = append(k.ups, time.Now()), prefer
	go k.run(c)
	f.t.Cleanup(k.stopNow)
	return k
}

func (k *spreadKeeper) run(c *paho.Client) {
	defer close(k.done)
	attempt := 0
	for {
		select {
		case <-c.Done():
		case <-k.stop:
			c.Disconnect(&paho.Disconnect{})
			return
		}
		k.mu.Lock()
		k.node = 0
		k.mu.Unlock()
		for c = nil; c == nil; attempt++ {
			select {
			case <-k.stop:
				return
			default:
			}
			live := k.f.live()
			if len(live) == 0 {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			node := live[attempt%len(live)]
			cc, ca, err := k.f.dial(node, k.id, true, k.tally.add)
			if err != nil {
				time.Sleep(200 * time.Millisecond)
				continue
			}
			c = cc
			k.mu.Lock()
			k.ups, k.node = append(k.ups, time.Now()), node
			if !ca.SessionPresent {
				k.sessions++
				k.mu.Unlock()
				// Subscribe again, so that the test goes on, and fails.
				subscribe(c, k.filter, 1)
			} else {
				k.mu.Unlock()
			}
		}
	}
}

// nodeNow is the node the subscriber is connected through (0: none).
func (k *spreadKeeper) nodeNow() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.node
}

func (k *spreadKeeper) stopNow() {
	select {
	case <-k.stop:
	default:
		close(k.stop)
	}
	<-k.done
}

func (k *spreadKeeper) connects() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.ups)
}

func (k *spreadKeeper) lostSessions() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.sessions
}

// waitUp waits for a connection made after since.
func (k *spreadKeeper) waitUp(t *testing.T, since time.Time, d time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		k.mu.Lock()
		last := k.ups[len(k.ups)-1]
		k.mu.Unlock()
		if last.After(since) {
			return last
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("persistent subscriber %s: not connected again %s after %s", k.id, d, since.Format(time.StampMilli))
	return time.Time{}
}

// waitArrivalSentAfter waits until the subscriber received a message of
// l's sent after since, and returns when the first such arrived.
func (k *spreadKeeper) waitArrivalSentAfter(t *testing.T, l *spreadLoad, since time.Time, d time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		l.mu.Lock()
		sentAt := slices.Clone(l.sentAt)
		l.mu.Unlock()
		first := time.Time{}
		for n, at := range sentAt {
			if at.Before(since) {
				continue
			}
			if c, when := k.tally.got(l.topic, n); c > 0 && (first.IsZero() || when.Before(first)) {
				first = when
			}
		}
		if !first.IsZero() {
			return first
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("persistent subscriber %s: no message sent after %s arrived within %s", k.id, since.Format(time.StampMilli), d)
	return time.Time{}
}

// spreadLoad publishes numbered QoS 1 messages on one topic, one at a
// time, through one node: the one it was moved to while that one runs,
// else another live one. It records when each was sent and whether it got
// a PUBACK (below 0x80).
type spreadLoad struct {
	f     *spreadFleet
	id    string
	topic string
	home  int // the node it started on

	mu         sync.Mutex
	prefer     int
	node       int
	timeout    time.Duration // for each publish's answer
	sentAt     []time.Time
	ackedAt    []time.Time // zero: no PUBACK
	settled    int         // messages whose publish returned
	refused    int         // answered, 0x80 or above
	failed     int         // no answer: the connection ended or the publish timed out
	conns      int
	stop, done chan struct{}
}

type spreadLoadStats struct{ sent, acked, refused, failed, conns int }

func (f *spreadFleet) load(id, topic string, node int) *spreadLoad {
	l := &spreadLoad{f: f, id: id, topic: topic, home: node, prefer: node, timeout: 10 * time.Second, stop: make(chan struct{}), done: make(chan struct{})}
	go l.run()
	f.t.Cleanup(l.stopNow)
	return l
}

func (l *spreadLoad) pick() int {
	live := l.f.live()
	l.mu.Lock()
	defer l.mu.Unlock()
	if slices.Contains(live, l.prefer) {
		return l.prefer
	}
	if len(live) > 0 {
		return live[0]
	}
	return 0
}

func (l *spreadLoad) run() {
	defer close(l.done)
	var c *paho.Client
	defer func() {
		if c != nil {
			c.Disconnect(&paho.Disconnect{})
		}
	}()
	for {
		select {
		case <-l.stop:
			return
		default:
		}
		if c != nil {
			l.mu.Lock()
			prefer, node := l.prefer, l.node
			l.mu.Unlock()
			ended := false
			select {
			case <-c.Done(): // the connection ended between two publishes
				ended = true
			default:
			}
			if ended || node != prefer && !l.f.isDead(prefer) {
				c.Disconnect(&paho.Disconnect{})
				c = nil
			}
		}
		if c == nil {
			node := l.pick()
			if node == 0 {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			cc, _, err := l.f.dial(node, l.id, false, nil)
			if err != nil {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			c = cc
			l.mu.Lock()
			l.node = node
			l.conns++
			l.mu.Unlock()
		}
		l.mu.Lock()
		n := len(l.sentAt)
		l.sentAt = append(l.sentAt, time.Now())
		l.ackedAt = append(l.ackedAt, time.Time{})
		timeout := l.timeout
		l.mu.Unlock()
		// The answer, or none once the connection ends (paho would wait
		// out the timeout for a publish sent on a dead connection).
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		go func(c *paho.Client) {
			select {
			case <-c.Done():
				cancel()
			case <-ctx.Done():
			}
		}(c)
		r, err := c.Publish(ctx, &paho.Publish{Topic: l.topic, QoS: 1, Payload: []byte(strconv.Itoa(n))})
		cancel()
		l.mu.Lock()
		switch {
		case err == nil:
			l.ackedAt[n] = time.Now()
		case r != nil:
			l.refused++
		default:
			l.failed++
		}
		l.settled = n + 1
		l.mu.Unlock()
		if err != nil && r == nil {
			c.Disconnect(&paho.Disconnect{})
			c = nil
			l.mu.Lock()
			l.node = 0
			l.mu.Unlock()
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (l *spreadLoad) stopNow() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	<-l.done
}

// setTimeout sets how long each publish waits for its answer (10 s).
func (l *spreadLoad) setTimeout(d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.timeout = d
}

// moveTo makes the load go through node i from its next message on.
func (l *spreadLoad) moveTo(i int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.prefer = i
}

func (l *spreadLoad) currentNode() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.node
}

func (l *spreadLoad) stats() spreadLoadStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := spreadLoadStats{sent: len(l.sentAt), refused: l.refused, failed: l.failed, conns: l.conns}
	for _, at := range l.ackedAt {
		if !at.IsZero() {
			s.acked++
		}
	}
	return s
}

// waitAcks waits for n more PUBACKs.
func (l *spreadLoad) waitAcks(t *testing.T, n int) {
	t.Helper()
	start := l.stats().acked
	deadline := time.Now().Add(15 * time.Second)
	for l.stats().acked < start+n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: fewer than %d PUBACKs in 15 s (%+v)", l.id, n, l.stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// numberAt is the number of the first message sent at or after at.
func (l *spreadLoad) numberAt(at time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, _ := slices.BinarySearchFunc(l.sentAt, at, func(sent, at time.Time) int { return sent.Compare(at) })
	return n
}

// waitAckAfter waits for a PUBACK received after since, and returns when.
func (l *spreadLoad) waitAckAfter(t *testing.T, since time.Time, d time.Duration) time.Time {
	t.Helper()
	return l.waitAck(t, d, "received after "+since.Format(time.StampMilli), func(sent, acked time.Time) bool { return acked.After(since) })
}

// waitAckSentAfter waits for a PUBACK of a message sent after since, and
// returns when it came.
func (l *spreadLoad) waitAckSentAfter(t *testing.T, since time.Time, d time.Duration) time.Time {
	t.Helper()
	return l.waitAck(t, d, "for a message sent after "+since.Format(time.StampMilli), func(sent, acked time.Time) bool { return sent.After(since) })
}

func (l *spreadLoad) waitAck(t *testing.T, d time.Duration, what string, ok func(sent, acked time.Time) bool) time.Time {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		l.mu.Lock()
		for n, acked := range l.ackedAt {
			if !acked.IsZero() && ok(l.sentAt[n], acked) {
				l.mu.Unlock()
				return acked
			}
		}
		l.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: no PUBACK %s within %s (%+v)", l.id, what, d, l.stats())
	return time.Time{}
}

// ackedBetween counts the PUBACKs received in [from, to).
func (l *spreadLoad) ackedBetween(from, to time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, at := range l.ackedAt {
		if !at.IsZero() && !at.Before(from) && at.Before(to) {
			n++
		}
	}
	return n
}

// longestAckGap is the longest time in [from, to] without a PUBACK.
func (l *spreadLoad) longestAckGap(from, to time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	acks := []time.Time{from, to}
	for _, at := range l.ackedAt {
		if !at.IsZero() && at.After(from) && at.Before(to) {
			acks = append(acks, at)
		}
	}
	slices.SortFunc(acks, time.Time.Compare)
	var gap time.Duration
	for i := 1; i < len(acks); i++ {
		gap = max(gap, acks[i].Sub(acks[i-1]))
	}
	return gap
}

// ackedSentBetween counts the messages sent between from and to that got
// a PUBACK before ackedBy.
func (l *spreadLoad) ackedSentBetween(from, to, ackedBy time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for i, acked := range l.ackedAt {
		if !acked.IsZero() && acked.Before(ackedBy) && l.sentAt[i].After(from) && l.sentAt[i].Before(to) {
			n++
		}
	}
	return n
}

// wasAcked reports whether message n got a PUBACK.
func (l *spreadLoad) wasAcked(n int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return n >= 0 && n < len(l.ackedAt) && !l.ackedAt[n].IsZero()
}

// missed lists the messages sent in [from, to) that got a PUBACK and that
// s never received, and how many got a PUBACK.
func (l *spreadLoad) missed(s *spreadTally, from, to time.Time) (missing []int, acked int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for n := range l.settled {
		if l.ackedAt[n].IsZero() || l.sentAt[n].Before(from) || !l.sentAt[n].Before(to) {
			continue
		}
		acked++
		if c, _ := s.got(l.topic, n); c == 0 {
			missing = append(missing, n)
		}
	}
	return missing, acked
}

// waitArrived waits up to d for missed to be empty, and returns what it
// is then.
func (l *spreadLoad) waitArrived(s *spreadTally, from, to time.Time, d time.Duration) (missing []int, acked int) {
	deadline := time.Now().Add(d)
	for {
		missing, acked = l.missed(s, from, to)
		if len(missing) == 0 || time.Now().After(deadline) {
			return missing, acked
		}
		time.Sleep(50 * time.Millisecond)
	}
}
