package main

import (
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// TestSpreadFleetTakeover: on a spread fleet of three nodes (Redis
// fabric), under QoS 1 load from a publisher on node 3 and one on node 1
// (each on its own topic), a persistent subscriber's client id connects
// through node 1 and node 2 alternately,
// ROOST_SPREAD_TAKEOVERS times (default 100), each connection made while
// the previous one is still open: a takeover, not a reconnect. Each time:
// the session is present; the previous connection is ended with a
// DISCONNECT 0x8E (session taken over), as the README's "one owner at a
// time" says, within 5 s; no message published after the new
// connection's CONNACK reaches the previous one (one owner at a time);
// the new connection is not ended before the next takeover. At the end,
// every message acknowledged to each publisher has reached the subscriber
// on one of its connections, first arrivals in the order published;
// duplicates are counted (a message delivered but not yet acknowledged
// when the connection was taken over comes again).
func TestSpreadFleetTakeover(t *testing.T) { spreadTakeoverTest(t, fabricRedis) }

// TestSpreadFleetKafkaTakeover is TestSpreadFleetTakeover on the Kafka
// fabric: the session lives at the tenant's home (node 1), so a
// connection through node 2 is forwarded there, and the home's broker
// takes it over from the connection it holds, forwarded or direct.
func TestSpreadFleetKafkaTakeover(t *testing.T) { spreadTakeoverTest(t, fabricKafka) }

// takeoverConn is one connection of the persistent subscriber.
type takeoverConn struct {
	c     *paho.Client
	node  int
	up    time.Time             // its CONNACK
	disc  chan *paho.Disconnect // the server's DISCONNECT
	mu    sync.Mutex
	after time.Time      // the next connection's CONNACK; zero before
	late  []takeoverLate // messages that arrived after after
	ended time.Time      // when Done was seen closed
}

// takeoverLate is a message that reached a connection after the next
// connection's CONNACK.
type takeoverLate struct {
	topic string
	n     int
	at    time.Time
}

func spreadTakeoverTest(t *testing.T, fab fleetFabric) {
	takeovers := envCount(t, "ROOST_SPREAD_TAKEOVERS", 100)
	const perTakeover = 5 // PUBACKs to the publisher between two takeovers
	f := startSpreadFleetOn(t, 3, fab)

	// ctl, the tenant's first session, makes node 1 its home.
	ctl := f.cleanSub(1, "ctl", "load/#")
	if h := f.home(); h != 1 {
		t.Fatalf("the tenant's home is node %d; want node 1, where its first (clean) session connected", h)
	}
	const id = "taker"
	tally := newSpreadTally()
	// Which connection (1, 2, ...) each message first reached.
	var firstMu sync.Mutex
	firstBy := map[string]int{}
	dialled := 0
	connect := func(node int) (*takeoverConn, *paho.Connack, error) {
		tc := &takeoverConn{node: node, disc: make(chan *paho.Disconnect, 1)}
		dialled++
		idx := dialled
		c, ca, err := f.dialWith(node, id, true, func(p *paho.Publish) {
			tally.add(p)
			firstMu.Lock()
			k := p.Topic + " " + string(p.Payload)
			if _, ok := firstBy[k]; !ok {
				firstBy[k] = idx
			}
			firstMu.Unlock()
			tc.mu.Lock()
			if !tc.after.IsZero() {
				n, _ := strconv.Atoi(string(p.Payload))
				tc.late = append(tc.late, takeoverLate{p.Topic, n, time.Now()})
			}
			tc.mu.Unlock()
		}, func(d *paho.Disconnect) {
			select {
			case tc.disc <- d:
			default:
			}
		})
		if err != nil {
			return nil, ca, err
		}
		tc.c, tc.up = c, time.Now()
		return tc, ca, nil
	}
	cur, ca, err := connect(1)
	if err != nil {
		t.Fatalf("persistent subscriber through node 1: %v", err)
	}
	if ca.SessionPresent {
		t.Fatalf("persistent subscriber: a session was present at its first connection")
	}
	f.mustSubscribe(cur.c, "load/#", 1)
	conns := []*takeoverConn{cur}
	t.Cleanup(func() {
		for _, tc := range conns {
			tc.c.Disconnect(&paho.Disconnect{})
		}
	})
	// Publishers on node 3, which the subscriber never connects through,
	// and on node 1, which it leaves and comes back to.
	loads := []*spreadLoad{f.load("pub3", "load/3", 3), f.load("pub1", "load/1", 1)}

	var connacks, ends []time.Duration
	absent := 0
	began := time.Now()
	for i := range takeovers {
		for _, l := range loads {
			l.waitAcks(t, perTakeover)
		}
		select {
		case <-cur.c.Done():
			t.Fatalf("takeover %d: the connection through node %d ended before it was taken over", i+1, cur.node)
		default:
		}
		node := 3 - cur.node // 1, 2, 1, ...
		start := time.Now()
		next, ca, err := connect(node)
		if err != nil {
			t.Fatalf("takeover %d: connecting through node %d while connected through node %d: %v", i+1, node, cur.node, err)
		}
		conns = append(conns, next)
		connacks = append(connacks, next.up.Sub(start))
		cur.mu.Lock()
		cur.after = next.up
		cur.mu.Unlock()
		if !ca.SessionPresent {
			absent++
			t.Errorf("takeover %d: the session was not present when its client connected through node %d", i+1, node)
			f.mustSubscribe(next.c, "load/#", 1) // so that the test goes on
		}
		// The connection taken over is ended with 0x8E. paho closes Done
		// before it hands over the DISCONNECT.
		select {
		case <-cur.c.Done():
			ends = append(ends, time.Since(start))
			cur.mu.Lock()
			cur.ended = time.Now()
			cur.mu.Unlock()
			select {
			case d := <-cur.disc:
				if d.ReasonCode != 0x8E {
					t.Errorf("takeover %d: the connection through node %d ended with DISCONNECT 0x%02X, want 0x8E (session taken over)", i+1, cur.node, d.ReasonCode)
				}
			case <-time.After(time.Second):
				t.Errorf("takeover %d: the connection through node %d was closed without a DISCONNECT, want 0x8E (session taken over)", i+1, cur.node)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("takeover %d: the connection through node %d is still open 5 s after its client connected through node %d", i+1, cur.node, node)
		}
		cur = next
	}
	took := time.Since(began)
	for _, l := range loads {
		l.waitAcks(t, perTakeover)
	}
	for _, l := range loads {
		l.stopNow()
	}
	end := time.Now()
	t.Logf("%d takeovers in %s: CONNACK %s, the previous connection ended %s after the new one was dialled (min/median/max)",
		takeovers, took.Round(time.Millisecond), spreadRange(connacks), spreadRange(ends))
	t.Logf("persistent subscriber: connected %d times, %d duplicates", len(conns), tally.dups())

	// Every message acknowledged reached the subscriber, on one of its
	// connections, first arrivals in the order published.
	for _, l := range loads {
		missing, acked := l.waitArrived(tally, time.Time{}, end, 20*time.Second)
		st := l.stats()
		t.Logf("%s (node %d): %d messages published, %d acknowledged, %d refused, %d without an answer, connected %d times; the persistent subscriber got %d of the %d acknowledged, %d missing",
			l.id, l.home, st.sent, st.acked, st.refused, st.failed, st.conns, acked-len(missing), acked, len(missing))
		if len(missing) > 0 {
			t.Errorf("the persistent subscriber never got %d messages acknowledged to %s (node %d), e.g. %v", len(missing), l.id, l.home, missing[:min(len(missing), 10)])
		}
		if late := topicOutOfOrder(tally, l); late > 0 {
			msg := fmt.Sprintf("%d messages acknowledged to %s (node %d) first reached the persistent subscriber after later acknowledged ones; the order of first arrivals: %s",
				late, l.id, l.home, tally.runs(l.topic))
			t.Error(msg)
			// Where each of them went: the connection it first reached,
			// and the one that had the session when it was sent.
			tally.mu.Lock()
			order := slices.Clone(tally.order[l.topic])
			tally.mu.Unlock()
			high := -1
			for _, n := range order {
				if !l.wasAcked(n) {
					continue
				}
				if n < high {
					l.mu.Lock()
					sent, ackedAt := l.sentAt[n], l.ackedAt[n]
					l.mu.Unlock()
					then := 0
					for k, tc := range conns {
						if !tc.up.After(sent) {
							then = k + 1
						}
					}
					firstMu.Lock()
					got := firstBy[fmt.Sprintf("%s %d", l.topic, n)]
					firstMu.Unlock()
					_, at := tally.got(l.topic, n)
					t.Logf("%s %d: sent %s after connection %d's CONNACK (node %d), acknowledged %s after it; first arrived %s after it, on connection %d (node %d)",
						l.topic, n, sent.Sub(conns[then-1].up), then, conns[then-1].node, ackedAt.Sub(conns[then-1].up),
						at.Sub(conns[then-1].up), got, conns[got-1].node)
				}
				high = max(high, n)
			}
		}
		if acked < takeovers*perTakeover {
			t.Errorf("only %d messages of %s were acknowledged in %d takeovers", acked, l.id, takeovers)
		}
		if st.refused+st.failed > 0 || st.conns != 1 {
			t.Errorf("%s (node %d) had %d publishes refused and %d unanswered, and connected %d times; want 0, 0 and 1: nothing failed", l.id, l.home, st.refused, st.failed, st.conns)
		}
	}
	select {
	case <-cur.c.Done():
		t.Errorf("the last connection, through node %d, was ended", cur.node)
	default:
	}
	if absent > 0 {
		t.Errorf("the session was not present %d of %d times its client connected again", absent, takeovers)
	}

	// One owner at a time: nothing published after a connection's
	// CONNACK reached the connection it took over. (Messages published
	// before may: they were on their way to it.)
	var two []string
	before := 0
	for k, tc := range conns[:len(conns)-1] {
		tc.mu.Lock()
		late, after, ended := tc.late, tc.after, tc.ended
		tc.mu.Unlock()
		for _, m := range late {
			n := m.n
			var sent time.Time
			for _, l := range loads {
				l.mu.Lock()
				if l.topic == m.topic && n >= 0 && n < len(l.sentAt) {
					sent = l.sentAt[n]
				}
				l.mu.Unlock()
			}
			if sent.After(after) {
				two = append(two, fmt.Sprintf("%s %d (connection %d, node %d: published %s after the next connection's CONNACK, arrived %s after it, the connection ended %s after it)",
					m.topic, n, k+1, tc.node, sent.Sub(after), m.at.Sub(after), ended.Sub(after)))
			} else {
				before++
			}
		}
	}
	if before > 0 {
		t.Logf("%d messages published before a takeover reached the connection taken over after the new one's CONNACK", before)
	}
	if len(two) > 0 {
		t.Errorf("two owners at once: %d messages published after a takeover's CONNACK reached the connection taken over, e.g. %v", len(two), two[:min(len(two), 10)])
	}

	// Where the session was served: on Kafka's fabric at the home, node
	// 2 forwarding its connections there; on Redis's by the node its
	// client connected to, nothing forwarded.
	through2 := (takeovers + 1) / 2
	forwarded := max(0, f.metric(2, "roost_forwards_total"))
	t.Logf("node 2: roost_forwards_total %v (%d connections of the subscriber through it)", forwarded, through2)
	if fab == fabricKafka && forwarded < float64(through2) {
		t.Errorf("node 2 forwarded %v connections to the home; the subscriber connected through it %d times", forwarded, through2)
	}
	if fab == fabricRedis && forwarded > 0 {
		t.Errorf("node 2 forwarded %v connections; on the Redis fabric a spread tenant's sessions are served where they connect", forwarded)
	}

	for _, l := range loads {
		if missing, acked := l.waitArrived(ctl.tally, ctl.subacked, end, 10*time.Second); len(missing) > 0 {
			t.Errorf("clean subscriber ctl (node 1): %d of %d messages acknowledged to %s never arrived, e.g. %v", len(missing), acked, l.id, missing[:min(len(missing), 10)])
		}
	}
	ctl.c.Disconnect(&paho.Disconnect{})
}

// topicOutOfOrder counts the messages of l acknowledged that first
// reached s after a later acknowledged one of l.
func topicOutOfOrder(s *spreadTally, l *spreadLoad) int {
	s.mu.Lock()
	order := slices.Clone(s.order[l.topic])
	s.mu.Unlock()
	late, high := 0, -1
	for _, n := range order {
		if !l.wasAcked(n) {
			continue
		}
		if n < high {
			late++
		}
		high = max(high, n)
	}
	return late
}
