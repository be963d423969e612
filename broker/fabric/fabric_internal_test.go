package fabric

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"testing"
	"time"

	"github.com/roosthub/roost/internal/testenv"
)

func testFabrics(t *testing.T) (*Redis, *Redis) {
	open := testOpener(t)
	return open("a", nil), open("b", nil)
}

// testOpener returns a function that opens the fabric of a node, under a
// key prefix of the test's own; dial, if not nil, makes its connections.
func testOpener(t *testing.T) func(node string, dial dialer) *Redis {
	url := testenv.RedisURL(t)
	b := make([]byte, 6)
	rand.Read(b)
	prefix := "roost-fabric-" + hex.EncodeToString(b)
	return func(node string, dial dialer) *Redis {
		f, err := open(context.Background(), Config{URL: url, Prefix: prefix, Node: node, Lease: time.Second}, dial)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
}

// TestStaleRoutesRefused: a sender whose copy of the routes missed a
// change (its notification lost) is refused by the version check, reads
// the routes again and sends to the new route: a route written before a
// SUBACK is never missed.
func TestStaleRoutesRefused(t *testing.T) {
	fa, fb := testFabrics(t)
	ctx := context.Background()
	joined, err := fa.Join(ctx, "acme", false, func(Message) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	ta := joined.(*Tenant)
	got := make(chan Message, 10)
	tb, err := fb.Join(ctx, "acme", false, func(m Message) error { got <- m; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ta.current(ctx); err != nil {
		t.Fatal(err)
	}
	// As if the change's notification never reached a: a stops reading
	// the channel (and its renewals, which read the routes again now and
	// then) before b writes the route.
	fa.stop()
	<-fa.stopped
	ta.mu.Lock()
	ta.stale = false
	ta.mu.Unlock()
	if err := tb.Add(ctx, "t/#"); err != nil {
		t.Fatal(err)
	}
	n, err := ta.Send(ctx, Message{Topic: "t/1", Payload: []byte("x"), QoS: 1}, nil)
	if err != nil || n != 1 {
		t.Fatalf("send: %d inboxes, %v; want 1", n, err)
	}
	if fa.Stats().Stale == 0 {
		t.Error("the stale routes were not refused")
	}
	select {
	case m := <-got:
		if m.Topic != "t/1" || string(m.Payload) != "x" || m.QoS != 1 {
			t.Errorf("delivered %+v", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the message did not reach the new route's owner")
	}
}

// TestLapsedOwnerSwept: an owner that stops renewing (its node died) loses
// its routes and inbox once its lease lapsed; a home's routes stay.
func TestLapsedOwnerSwept(t *testing.T) {
	fa, fb := testFabrics(t)
	ctx := context.Background()
	if _, err := fa.Join(ctx, "acme", false, func(Message) error { return nil }); err != nil {
		t.Fatal(err)
	}
	tb, err := fb.Join(ctx, "acme", false, func(Message) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	th, err := fb.Join(ctx, "other", true, func(Message) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if err := tb.Add(ctx, "t/#"); err != nil {
		t.Fatal(err)
	}
	if err := th.Add(ctx, "h/#"); err != nil {
		t.Fatal(err)
	}
	fb.stop() // b stops renewing, as a dead node would
	<-fb.stopped
	deadline := time.Now().Add(10 * time.Second)
	for {
		routes, _ := fa.rdb.HKeys(ctx, fa.key("acme", "routes")).Result()
		if len(routes) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lapsed owner's routes stay: %q", routes)
		}
		time.Sleep(100 * time.Millisecond)
	}
	home, _ := fa.rdb.HKeys(ctx, fa.key("other", "routes")).Result()
	if len(home) != 1 {
		t.Errorf("the home's routes: %q; want them kept for its successor", home)
	}
	// b comes back: its membership was gone, so its owner is told.
	lapsed := make(chan struct{}, 1)
	tb.(*Tenant).OnLapse(func() { lapsed <- struct{}{} })
	if err := fb.renew(ctx, []*Tenant{tb.(*Tenant)}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lapsed:
	default:
		t.Error("b, back after its membership was swept, was not told")
	}
}

// TestNoSweepAfterSharedOutage: when Redis was away for every node, every
// membership lapsed; the first node back sweeps nobody until it has itself
// renewed for a lease, by when the others are back too.
func TestNoSweepAfterSharedOutage(t *testing.T) {
	fa, fb := testFabrics(t)
	ctx := context.Background()
	ja, err := fa.Join(ctx, "acme", false, func(Message) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	jb, err := fb.Join(ctx, "acme", false, func(Message) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if err := jb.Add(ctx, "t/#"); err != nil {
		t.Fatal(err)
	}
	for _, f := range []*Redis{fa, fb} {
		f.stop()
		<-f.stopped
		f.renewedSince.Store(0) // as after failed renewals
	}
	members := fa.key("acme", "members")
	fa.rdb.HSet(ctx, members, ja.(*Tenant).owner, 0, jb.(*Tenant).owner, 0) // both lapsed
	if err := fa.renew(ctx, []*Tenant{ja.(*Tenant)}); err != nil {
		t.Fatal(err)
	}
	if routes, _ := fa.rdb.HKeys(ctx, fa.key("acme", "routes")).Result(); len(routes) != 1 {
		t.Fatalf("routes after the first node back renewed: %q; want b's kept", routes)
	}
}

func TestEntryRoundTrip(t *testing.T) {
	in := Message{Topic: "a/b", Payload: []byte{0, 1, 2}, QoS: 2, Retain: true, Props: []byte(`{"x":1}`), Groups: []string{"$share/g/a/#", "$share/h/#"},
		Seqs: map[string]uint64{"c1": 7, "c/2": 1 << 40}}
	out, err := decode([]byte(encode(in)))
	if err != nil || out.Topic != in.Topic || string(out.Payload) != string(in.Payload) || out.QoS != 2 || !out.Retain ||
		string(out.Props) != string(in.Props) || len(out.Groups) != 2 || out.Groups[1] != "$share/h/#" ||
		len(out.Seqs) != 2 || out.Seqs["c1"] != 7 || out.Seqs["c/2"] != 1<<40 || out.Kick != "" {
		t.Fatalf("round trip: %+v, %v", out, err)
	}
	if out.Passed {
		t.Error("a message not passed on decoded as passed")
	}
	turn, err := decode([]byte(encode(Message{Topic: "a", QoS: 1, Groups: []string{"$share/g/a"}, Passed: true})))
	if err != nil || !turn.Passed || turn.QoS != 1 || len(turn.Groups) != 1 {
		t.Fatalf("passed turn round trip: %+v, %v", turn, err)
	}
	kick, err := decode([]byte(encode(Message{Kick: "dev", Epoch: 9})))
	if err != nil || kick.Kick != "dev" || kick.Epoch != 9 || kick.Topic != "" {
		t.Fatalf("kick round trip: %+v, %v", kick, err)
	}
	if _, err := decode([]byte(encode(in))[:len(encode(in))-3]); err == nil {
		t.Error("a truncated entry decoded")
	}
	for _, bad := range []string{"", "\x02\x01", "\x01\x01\x05", "\x01\x01\x00\x09abc"} {
		if _, err := decode([]byte(bad)); err == nil {
			t.Errorf("decode(%q): no error", bad)
		}
	}
}

// TestSeedSessions: seeding writes an away session's routes from its stored
// subscriptions, replacing the ones it had, held by no node, and makes the
// seeding node the one it was last on; a session whose client is connected
// to a node keeps its routes; a message for the seeded session is then
// queued by a sender (a copy), sent to no node.
func TestSeedSessions(t *testing.T) {
	fa, fb := testFabrics(t)
	ctx := context.Background()
	joined, err := fb.Join(ctx, "acme", false, func(Message) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	tb := joined.(*Tenant)
	// "here" is connected to b; "away" left b with an old subscription.
	for _, id := range []string{"here", "away"} {
		if err := tb.AddSession(ctx, id, "old/#", 1, false); err != nil {
			t.Fatal(err)
		}
		if err := tb.Attach(ctx, id, 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := tb.Detach(ctx, "away"); err != nil {
		t.Fatal(err)
	}
	seeded, err := fa.SeedSessions(ctx, "acme", []Seed{
		{ClientID: "here", Filters: []SessionFilter{{Filter: "new/#", QoS: 1}}},
		{ClientID: "away", Filters: []SessionFilter{{Filter: "new/#", QoS: 2, NoLocal: true}}},
		{ClientID: "stored", Filters: []SessionFilter{{Filter: "s/+", QoS: 1}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seeded) != 2 || seeded[0] != "away" || seeded[1] != "stored" {
		t.Errorf("seeded %v, want away and stored (here is connected to b)", seeded)
	}
	routes, err := fa.rdb.HGetAll(ctx, fa.key("acme", "routes")).Result()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"@here\x00old/#": "1|b",
		"@away\x00new/#": "2n|",
		"@stored\x00s/+": "1|",
	}
	for f, v := range want {
		if routes[f] != v {
			t.Errorf("route %q = %q, want %q", f, routes[f], v)
		}
	}
	if _, ok := routes["@away\x00old/#"]; ok {
		t.Error("the away session kept the route of a filter it no longer has")
	}
	at, _ := fa.rdb.HGetAll(ctx, fa.key("acme", "at")).Result()
	if at["away"] != "a" || at["stored"] != "a" || at["here"] != "b" {
		t.Errorf("last on: %v, want away and stored on a (the seeding node), here on b", at)
	}
	// A publish on b for s/1 queues a copy for "stored" and sends nothing.
	var copies []Copy
	n, err := tb.SendQueued(ctx, Message{Topic: "s/1", Payload: []byte("x"), QoS: 1}, Local{
		Queue: func(_ context.Context, cs []Copy) ([]uint64, error) {
			copies = append(copies, cs...)
			return make([]uint64, len(cs)), nil
		}})
	if err != nil || n != 0 {
		t.Errorf("a send for the seeded away session reached %d nodes (%v), want none", n, err)
	}
	if len(copies) != 1 || copies[0] != (Copy{ClientID: "stored", QoS: 1}) {
		t.Errorf("copies queued %v, want one for stored at QoS 1", copies)
	}
}

// TestKickHandOver: a node resuming a session kicks the node its client
// was on and learns whether to wait for its release: yes while that node
// renews its membership (AwaitRelease returns once it released the
// session under the kick's epoch, not under an older one), no once it
// stopped renewing (dead), so that a reconnection is not held up for it.
func TestKickHandOver(t *testing.T) {
	fa, fb := testFabrics(t)
	ctx := context.Background()
	kicks := make(chan Message, 10)
	ja, err := fa.Join(ctx, "acme", false, func(m Message) error {
		if m.Kick != "" {
			kicks <- m
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	jb, err := fb.Join(ctx, "acme", false, func(Message) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	ta, tb := ja.(*Tenant), jb.(*Tenant)
	if told, err := tb.Kick(ctx, "c1", 7); err != nil || told {
		t.Fatalf("kick of a session attached nowhere: told %v, %v; want false", told, err)
	}
	if err := ta.Attach(ctx, "c1", 3); err != nil {
		t.Fatal(err)
	}
	if told, err := ta.Kick(ctx, "c1", 4); err != nil || told {
		t.Fatalf("kick of a session attached to the kicking node: told %v, %v; want false", told, err)
	}
	told, err := tb.Kick(ctx, "c1", 7)
	if err != nil || !told {
		t.Fatalf("kick of a session attached to a renewing node: told %v, %v; want true", told, err)
	}
	select {
	case m := <-kicks:
		if m.Kick != "c1" || m.Epoch != 7 {
			t.Errorf("kick received: %+v", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the kick did not reach the node the session was on")
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if tb.AwaitRelease(short, "c1", 7) {
		t.Fatal("released before the node released it")
	}
	if err := ta.Release(ctx, "c1", 6); err != nil {
		t.Fatal(err)
	}
	short2, cancel2 := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel2()
	if tb.AwaitRelease(short2, "c1", 7) {
		t.Fatal("a release under an older claim taken for this one's")
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		ta.Release(ctx, "c1", 7)
	}()
	wait, cancel3 := context.WithTimeout(ctx, 5*time.Second)
	defer cancel3()
	if !tb.AwaitRelease(wait, "c1", 7) {
		t.Fatal("the release was not seen")
	}

	fa.stop() // a stops renewing, as a dead node would
	<-fa.stopped
	// Lease 1 s, renewed every 200 ms: after about half a lease without a
	// renewal, a is not waited for; it is told all the same.
	deadline := time.Now().Add(5 * time.Second)
	for {
		told, err := tb.Kick(ctx, "c1", 8)
		if err != nil {
			t.Fatal(err)
		}
		if !told {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a node that stopped renewing is still reported as one to wait for")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// It is told all the same: its tenant's reader, still running, gets
	// the kick (and takes it from the inbox).
	for {
		select {
		case m := <-kicks:
			if m.Epoch == 8 {
				return
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the node that stopped renewing was not told")
		}
	}
}

// TestSendReplyLost: Redis runs a send, and the connection breaks before
// its reply is read. The send fails (the publisher is not acknowledged),
// and the message is in the other owner's inbox once: the client does not
// send it again on a new connection, which would deliver it twice.
func TestSendReplyLost(t *testing.T) {
	var lost func() bool
	ta, got := sendToB(t, func(fb *Redis, inbox string, sends func([]byte) bool) dialer {
		ran := func() bool {
			n, _ := fb.rdb.XLen(context.Background(), inbox).Result()
			return n > 0 || fb.Stats().Received > 0
		}
		var dial dialer
		dial, lost = testenv.LosingReplyDialer(sends, ran)
		return dial
	})
	ctx := context.Background()
	if n, err := ta.Send(ctx, Message{Topic: "t/1", Payload: []byte("x"), QoS: 2}, nil); err == nil {
		t.Fatalf("send whose reply was lost: got %d inboxes and no error, want an error", n)
	}
	if !lost() {
		t.Fatal("the send's reply was not lost after Redis ran it")
	}
	if n, err := ta.Send(ctx, Message{Topic: "t/1", Payload: []byte("y"), QoS: 2}, nil); err != nil || n != 1 {
		t.Fatalf("send after the lost reply: %d inboxes, %v; want 1", n, err)
	}
	if xs := countBefore(t, got, "x", "y"); xs != 1 {
		t.Errorf("got the message whose send's reply was lost %d times, want 1", xs)
	}
}

// countBefore counts the messages of payload p delivered before the first
// of payload last. An inbox is delivered in order: once last is, every p
// sent before it is.
func countBefore(t *testing.T, got <-chan Message, p, last string) int {
	t.Helper()
	n := 0
	for {
		select {
		case m := <-got:
			switch string(m.Payload) {
			case p:
				n++
			case last:
				return n
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%q did not arrive", last)
		}
	}
}

// TestHomeReadReplyLost: Redis hands a home's read an entry, and the
// connection breaks before the reply is read. The entry is pending for the
// home in Redis; the home reads its pending entries again and delivers it
// (a read sent again would take only new entries, and leave it there).
func TestHomeReadReplyLost(t *testing.T) {
	openNode := testOpener(t)
	ctx := context.Background()
	fa := openNode("a", nil)
	inbox := fa.key("acme", "in:"+Home)
	taken := func() bool {
		p, err := fa.rdb.XPending(ctx, inbox, Home).Result()
		return err == nil && p.Count > 0
	}
	reads := func(p []byte) bool { return bytes.Contains(bytes.ToLower(p), []byte("xreadgroup")) }
	dial, lost := testenv.LosingReplyDialer(reads, taken)
	fh := openNode("h", dial)
	got := make(chan Message, 10)
	th, err := fh.Join(ctx, "acme", true, func(m Message) error { got <- m; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if err := th.Add(ctx, "t/#"); err != nil {
		t.Fatal(err)
	}
	ta, err := fa.Join(ctx, "acme", false, func(Message) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if n, err := ta.Send(ctx, Message{Topic: "t/1", Payload: []byte("x"), QoS: 1}, nil); err != nil || n != 1 {
		t.Fatalf("send to the home: %d inboxes, %v; want 1", n, err)
	}
	select {
	case m := <-got:
		if string(m.Payload) != "x" {
			t.Errorf("delivered %+v", m)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the entry whose read reply was lost was never delivered")
	}
	if !lost() {
		t.Error("no read's reply was lost after Redis took the entry: the case was not made")
	}
}

// TestSendRefusedSentAgain: a send Redis refused without running it (a
// replica's READONLY, as during a failover) is sent again, as go-redis
// would have, and delivered once.
func TestSendRefusedSentAgain(t *testing.T) {
	var refused func() bool
	ta, got := sendToB(t, func(_ *Redis, _ string, sends func([]byte) bool) dialer {
		var dial dialer
		dial, refused = testenv.RefusingDialer(sends, "-READONLY You can't write against a read only replica.\r\n")
		return dial
	})
	ctx := context.Background()
	for _, p := range []string{"x", "y"} {
		if n, err := ta.Send(ctx, Message{Topic: "t/1", Payload: []byte(p), QoS: 2}, nil); err != nil || n != 1 {
			t.Fatalf("send %s: %d inboxes, %v; want 1 (the refused send sent again)", p, n, err)
		}
	}
	if !refused() {
		t.Fatal("no send was refused")
	}
	if xs := countBefore(t, got, "x", "y"); xs != 1 {
		t.Errorf("got the message whose first send was refused %d times, want 1", xs)
	}
}

type dialer = func(ctx context.Context, network, addr string) (net.Conn, error)

// sendToB opens node b, with a route for t/#, and node a, whose
// connections make dialFor's dialer given b and its inbox (sends matches
// a's sends to it), with the send script loaded (so that a send a test
// breaks is one that runs); it returns a's tenant and what b delivers.
func sendToB(t *testing.T, dialFor func(fb *Redis, inbox string, sends func([]byte) bool) dialer) (*Tenant, <-chan Message) {
	t.Helper()
	openNode := testOpener(t)
	ctx := context.Background()
	fb := openNode("b", nil)
	inbox := fb.key("acme", "in:b")
	sends := func(p []byte) bool { return bytes.Contains(p, []byte("evalsha")) && bytes.Contains(p, []byte(inbox)) }
	fa := openNode("a", dialFor(fb, inbox, sends))
	if err := sendScript.Load(ctx, fa.rdb).Err(); err != nil {
		t.Fatal(err)
	}
	ta, err := fa.Join(ctx, "acme", false, func(Message) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan Message, 10)
	tb, err := fb.Join(ctx, "acme", false, func(m Message) error { got <- m; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if err := tb.Add(ctx, "t/#"); err != nil {
		t.Fatal(err)
	}
	return ta.(*Tenant), got
}

// TestDropSessionSparesClaimedSession: ending a session without a claim
// (its client leaving with no expiry) leaves it alone while another live
// node's client holds its routes (it claimed the session since); a claim,
// the session held by no one or by the dropping node, or a holder whose
// membership lapsed, let it go. An expiry also spares a session the
// expiring node holds.
func TestDropSessionSparesClaimedSession(t *testing.T) {
	fa, fb := testFabrics(t)
	ctx := context.Background()
	join := func(f *Redis) *Tenant {
		j, err := f.Join(ctx, "acme", false, func(Message) error { return nil })
		if err != nil {
			t.Fatal(err)
		}
		return j.(*Tenant)
	}
	ta, tb := join(fa), join(fb)
	const field = "@c1\x00t/#"
	routed := func() bool {
		t.Helper()
		n, err := fa.rdb.HExists(ctx, ta.routes, field).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	hold := func(on *Tenant) {
		t.Helper()
		if err := on.AddSession(ctx, "c1", "t/#", 1, false); err != nil {
			t.Fatal(err)
		}
		if err := on.Attach(ctx, "c1", 5); err != nil {
			t.Fatal(err)
		}
	}
	drop := func(epoch uint64) {
		t.Helper()
		if err := ta.DropSession(ctx, "c1", epoch); err != nil {
			t.Fatal(err)
		}
	}

	hold(tb)
	drop(0)
	if !routed() {
		t.Fatal("a drop without a claim removed the routes of a session another live node's client holds")
	}
	drop(9)
	if routed() {
		t.Fatal("a drop under a claim made here left the session's routes")
	}

	hold(tb)
	if err := tb.Detach(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	drop(0)
	if routed() {
		t.Fatal("a drop left the routes of a session held by no one")
	}

	hold(ta)
	drop(0)
	if routed() {
		t.Fatal("a drop left the routes of a session held by the dropping node")
	}

	// An expiry spares a session any live node holds, the expiring one
	// included (its client came back after the record was deleted).
	for _, on := range []*Tenant{ta, tb} {
		hold(on)
		if err := ta.ExpireSession(ctx, "c1"); err != nil {
			t.Fatal(err)
		}
		if !routed() {
			t.Fatalf("an expiry removed the routes of a session held by %s", on.owner)
		}
		if err := on.Detach(ctx, "c1"); err != nil {
			t.Fatal(err)
		}
		if err := ta.ExpireSession(ctx, "c1"); err != nil {
			t.Fatal(err)
		}
		if routed() {
			t.Fatal("an expiry left the routes of a session held by no one")
		}
	}

	hold(tb)
	fb.stop() // b stops renewing, as a dead node would
	<-fb.stopped
	deadline := time.Now().Add(5 * time.Second)
	for drop(0); routed(); drop(0) {
		if time.Now().After(deadline) {
			t.Fatal("the routes held by a node whose membership lapsed were never dropped")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
