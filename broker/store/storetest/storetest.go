// Package storetest is the contract every session store back-end meets:
// memory, pebble, redis and hbase run the same suite.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/broker/store"
)

// Store is the back-end interface under test: the one the broker uses.
type Store = broker.SessionStore

// Run runs the suite. open returns an empty store; reopen, if not nil,
// returns a new store over the same data (after the first is closed), to
// prove that nothing lives only in memory.
func Run(t *testing.T, open func(t *testing.T) (s Store, reopen func() Store)) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s Store, reopen func() Store)
	}{
		{"Sessions", testSessions},
		{"Session", testSession},
		{"QueueOrder", testQueueOrder},
		{"Ack", testAck},
		{"AckLeavesOthers", testAckLeavesOthers},
		{"Fencing", testFencing},
		{"ConcurrentClaims", testConcurrentClaims},
		{"NumbersAfterClaim", testNumbersAfterClaim},
		{"AckMany", testAckMany},
		{"BatchAcrossClients", testBatch},
		{"ConcurrentAppends", testConcurrentAppends},
		{"Retained", testRetained},
		{"TenantsApart", testTenantsApart},
		{"AwkwardClientIDs", testAwkwardIDs},
		{"DeleteSessionDropsQueue", testDeleteSession},
		{"PurgeTenant", testPurgeTenant},
		{"Survives", testSurvives},
		{"Receipts", testReceipts},
		{"Marks", testMarks},
		{"QueueWithoutSession", testQueueWithoutSession},
		{"QueueLength", testQueueLength},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, reopen := open(t)
			tc.fn(t, s, reopen)
		})
	}
}

var ctx = context.Background()

func msg(topic, payload string) store.Message {
	return store.Message{Topic: topic, Payload: []byte(payload), QoS: 1, Created: time.Unix(1700000000, 123).UTC()}
}

func mustAppend(t *testing.T, s Store, tenant, clientID string, payloads ...string) []uint64 {
	t.Helper()
	var items []store.Item
	for _, p := range payloads {
		items = append(items, store.Item{ClientID: clientID, Message: msg("t/"+clientID, p)})
	}
	seqs, err := s.Append(ctx, tenant, items, store.Receipt{})
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	if len(seqs) != len(items) {
		t.Fatalf("Append returned %d sequence numbers for %d items", len(seqs), len(items))
	}
	return seqs
}

func payloads(qs []store.Queued) string {
	var b bytes.Buffer
	for i, q := range qs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(q.Payload)
	}
	return b.String()
}

func testSessions(t *testing.T, s Store, _ func() Store) {
	sess := store.Session{
		ClientID: "c1", Device: "d1", ProtocolVersion: 5, Expiry: 3600,
		DisconnectedAt: time.Unix(1700000000, 0).UTC(),
		Subscriptions:  []store.Subscription{{Filter: "a/#", QoS: 1, NoLocal: true, Identifier: 7}, {Filter: "$share/g/b", QoS: 2}},
	}
	if err := s.SaveSession(ctx, "acme", sess); err != nil {
		t.Fatal(err)
	}
	got, err := s.Sessions(ctx, "acme")
	if err != nil || len(got) != 1 {
		t.Fatalf("Sessions: got %d, %v; want 1", len(got), err)
	}
	if fmt.Sprintf("%+v", got[0]) != fmt.Sprintf("%+v", sess) {
		t.Errorf("session read back:\n got %+v\nwant %+v", got[0], sess)
	}
	// A session keeps the Will that waits out its delay.
	will := store.Will{Topic: "status/d1", Payload: []byte("gone\x00"), QoS: 1, Retain: true, Properties: []byte(`{"user":[]}`),
		Due: time.Unix(1700000060, 0).UTC()}
	sess.Will = &will
	if err := s.SaveSession(ctx, "acme", sess); err != nil {
		t.Fatal(err)
	}
	got, _ = s.Sessions(ctx, "acme")
	if len(got) != 1 || got[0].Will == nil || !reflect.DeepEqual(*got[0].Will, will) {
		t.Fatalf("session with a Will read back: got %+v, want its Will %+v", got, will)
	}
	sess.Will = nil
	sess.Subscriptions = sess.Subscriptions[:1]
	sess.DisconnectedAt = time.Time{}
	if err := s.SaveSession(ctx, "acme", sess); err != nil {
		t.Fatal(err)
	}
	got, _ = s.Sessions(ctx, "acme")
	if len(got) != 1 || len(got[0].Subscriptions) != 1 || !got[0].DisconnectedAt.IsZero() || got[0].Will != nil {
		t.Errorf("overwritten session: got %+v", got)
	}
	if err := s.DeleteSession(ctx, "acme", "c1", 0); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Sessions(ctx, "acme"); len(got) != 0 {
		t.Errorf("deleted session still listed: %+v", got)
	}
	if err := s.DeleteSession(ctx, "acme", "never", 0); err != nil {
		t.Errorf("deleting an unknown session: %v", err)
	}
}

// testSession: the single-session read finds one session by its client id
// and fills it as Sessions does (pending releases sorted, epoch), never
// another tenant's, and nothing once it is deleted.
func testSession(t *testing.T, s Store, reopen func() Store) {
	if got, found, err := s.Session(ctx, "acme", "c1"); err != nil || found {
		t.Fatalf("Session of an absent session: %+v, found %v, %v; want not found, no error", got, found, err)
	}
	e, err := s.Claim(ctx, "acme", "c1")
	if err != nil {
		t.Fatal(err)
	}
	will := store.Will{Topic: "status/c1", Payload: []byte("gone"), QoS: 1, Retain: true, Due: time.Unix(1700000060, 0).UTC()}
	sess := store.Session{
		ClientID: "c1", Device: "d1", ProtocolVersion: 5, Expiry: 3600,
		DisconnectedAt: time.Unix(1700000000, 0).UTC(),
		Subscriptions:  []store.Subscription{{Filter: "a/#", QoS: 1, NoLocal: true, Identifier: 7}, {Filter: "$share/g/b", QoS: 2}},
		Will:           &will, Epoch: e,
	}
	if err := s.SaveSession(ctx, "acme", sess); err != nil {
		t.Fatal(err)
	}
	// Neighbours: another session of the tenant, one whose id starts with
	// this one's, and the same client id in other tenants (one whose slug
	// starts with this one's).
	for _, o := range []struct{ tenant, clientID string }{{"acme", "c2"}, {"acme", "c10"}, {"beta", "c1"}, {"acmex", "c1"}} {
		if err := s.SaveSession(ctx, o.tenant, store.Session{ClientID: o.clientID, Device: o.tenant + "-" + o.clientID}); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []uint16{9, 3} { // QoS 2 publishes not yet released
		if _, err := s.Append(ctx, "acme", []store.Item{{ClientID: "sub", Message: msg("t", "m")}}, store.Receipt{ClientID: "c1", PacketID: id}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Append(ctx, "acme", []store.Item{{ClientID: "sub", Message: msg("t", "m")}}, store.Receipt{ClientID: "c2", PacketID: 5}); err != nil {
		t.Fatal(err)
	}
	check := func(st Store) {
		t.Helper()
		got, found, err := st.Session(ctx, "acme", "c1")
		if err != nil || !found {
			t.Fatalf("Session of a saved session: found %v, %v", found, err)
		}
		want := sess
		want.PendingRelease = []uint16{3, 9}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("Session read back:\n got %+v (will %+v)\nwant %+v (will %+v)", got, got.Will, want, want.Will)
		}
		all, err := st.Sessions(ctx, "acme")
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(all, func(x store.Session) bool { return x.ClientID == "c1" })
		if i < 0 || !reflect.DeepEqual(got, all[i]) {
			t.Errorf("Session and Sessions differ:\n  Session  %+v\n  Sessions %+v", got, all)
		}
	}
	check(s)
	if reopen != nil {
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = reopen()
		defer s.Close()
		check(s)
	}
	// Tenants apart: the same client id elsewhere is that tenant's own.
	for _, tn := range []string{"beta", "acmex"} {
		got, found, err := s.Session(ctx, tn, "c1")
		if err != nil || !found || got.Device != tn+"-c1" || got.PendingRelease != nil || got.Epoch != 0 || got.Will != nil {
			t.Errorf("tenant %s's session c1: %+v, found %v, %v; want its own, no receipts, epoch 0", tn, got, found, err)
		}
	}
	for _, o := range []struct{ tenant, clientID string }{{"gamma", "c1"}, {"acm", "c1"}, {"acme", "c"}, {"acme", "sub"}} {
		if got, found, err := s.Session(ctx, o.tenant, o.clientID); err != nil || found {
			t.Errorf("tenant %s, client %s has no session: got %+v, found %v, %v", o.tenant, o.clientID, got, found, err)
		}
	}
	if err := s.DeleteSession(ctx, "acme", "c1", e); err != nil {
		t.Fatal(err)
	}
	if got, found, err := s.Session(ctx, "acme", "c1"); err != nil || found {
		t.Errorf("Session of a deleted session: %+v, found %v, %v; want not found", got, found, err)
	}
	if got, found, err := s.Session(ctx, "beta", "c1"); err != nil || !found || got.Device != "beta-c1" {
		t.Errorf("deleting acme's c1 touched beta's: %+v, found %v, %v", got, found, err)
	}
}

func testQueueOrder(t *testing.T, s Store, _ func() Store) {
	seqs := mustAppend(t, s, "acme", "c1", "a", "b", "c")
	more := mustAppend(t, s, "acme", "c1", "d")
	all := append(seqs, more...)
	for i := 1; i < len(all); i++ {
		if all[i] <= all[i-1] {
			t.Fatalf("sequence numbers %v do not increase", all)
		}
	}
	qs, err := s.Read(ctx, "acme", "c1", 0, 10)
	if err != nil || payloads(qs) != "a,b,c,d" {
		t.Fatalf("Read: got %q, %v; want a,b,c,d", payloads(qs), err)
	}
	if qs[0].Seq != all[0] || qs[3].Seq != all[3] || qs[0].Topic != "t/c1" || qs[0].QoS != 1 || !qs[0].Created.Equal(msg("", "").Created) {
		t.Errorf("read back %+v", qs[0])
	}
	qs, _ = s.Read(ctx, "acme", "c1", all[1], 1)
	if payloads(qs) != "c" {
		t.Errorf("Read after the second, limit 1: got %q, want c", payloads(qs))
	}
	info, err := s.QueueInfo(ctx, "acme", "c1")
	if err != nil || info.Len != 4 || info.MinSeq != all[0] || info.MaxSeq != all[3] || !info.Oldest.Equal(msg("", "").Created) {
		t.Errorf("QueueInfo: got %+v, %v", info, err)
	}
	empty, err := s.QueueInfo(ctx, "acme", "nobody")
	if err != nil || empty.Len != 0 {
		t.Errorf("QueueInfo of an empty queue: %+v, %v", empty, err)
	}
	// A large payload and an expiry survive the trip.
	big := msg("big", "")
	big.Payload = bytes.Repeat([]byte{0, 1, 2, 255}, 64<<10)
	big.Expires = time.Unix(1800000000, 0).UTC()
	big.Properties = []byte{1, 2, 3}
	if _, err := s.Append(ctx, "acme", []store.Item{{ClientID: "c2", Message: big}}, store.Receipt{}); err != nil {
		t.Fatal(err)
	}
	qs, _ = s.Read(ctx, "acme", "c2", 0, 1)
	if len(qs) != 1 || !bytes.Equal(qs[0].Payload, big.Payload) || !qs[0].Expires.Equal(big.Expires) || !bytes.Equal(qs[0].Properties, big.Properties) {
		t.Errorf("a 256 KiB message did not survive")
	}
}

func testAck(t *testing.T, s Store, _ func() Store) {
	seqs := mustAppend(t, s, "acme", "c1", "a", "b", "c", "d")
	if err := s.Ack(ctx, "acme", "c1", 0, seqs[:2]); err != nil {
		t.Fatal(err)
	}
	qs, _ := s.Read(ctx, "acme", "c1", 0, 10)
	if payloads(qs) != "c,d" {
		t.Errorf("after acknowledging the first two: got %q, want c,d", payloads(qs))
	}
	// Out of order: the last one first.
	if err := s.Ack(ctx, "acme", "c1", 0, seqs[3:]); err != nil {
		t.Fatal(err)
	}
	qs, _ = s.Read(ctx, "acme", "c1", 0, 10)
	if payloads(qs) != "c" {
		t.Errorf("after acknowledging the last: got %q, want c", payloads(qs))
	}
	if err := s.Ack(ctx, "acme", "c1", 0, []uint64{seqs[2], seqs[2], 999999}); err != nil {
		t.Errorf("acknowledging one twice and one never queued: %v", err)
	}
	info, _ := s.QueueInfo(ctx, "acme", "c1")
	if info.Len != 0 || info.MaxSeq != seqs[3] {
		t.Errorf("after acknowledging all: %+v; want empty, max seq kept at %d", info, seqs[3])
	}
	// Numbers are never reused.
	next := mustAppend(t, s, "acme", "c1", "e")
	if next[0] <= seqs[3] {
		t.Errorf("sequence %d reused after acks (last was %d)", next[0], seqs[3])
	}
}

// testAckLeavesOthers is the loss two brokers writing one queue caused
// when delivered messages were deleted as a range "up to N": the queue's
// owner deletes what it delivered, and what the other queued, above and
// below those numbers, stays.
func testAckLeavesOthers(t *testing.T, s Store, _ func() Store) {
	mine := mustAppend(t, s, "acme", "sub", "m1")
	theirs := mustAppend(t, s, "acme", "sub", "t1", "t2")
	mine = append(mine, mustAppend(t, s, "acme", "sub", "m2")...)
	theirs = append(theirs, mustAppend(t, s, "acme", "sub", "t3")...)
	if err := s.Ack(ctx, "acme", "sub", 0, mine); err != nil {
		t.Fatal(err)
	}
	qs, _ := s.Read(ctx, "acme", "sub", 0, 10)
	if payloads(qs) != "t1,t2,t3" {
		t.Errorf("after the owner acknowledged its own: got %q, want t1,t2,t3 (the other writer's)", payloads(qs))
	}
}

func testFencing(t *testing.T, s Store, reopen func() Store) {
	// A session never claimed has epoch 0.
	if err := s.SaveSession(ctx, "acme", store.Session{ClientID: "c1"}); err != nil {
		t.Fatalf("saving a session never claimed, epoch 0: %v", err)
	}
	e1, err := s.Claim(ctx, "acme", "c1")
	if err != nil || e1 == 0 {
		t.Fatalf("Claim: %d, %v", e1, err)
	}
	e2, err := s.Claim(ctx, "acme", "c1")
	if err != nil || e2 <= e1 {
		t.Fatalf("second Claim: %d, %v; want above %d", e2, err, e1)
	}
	if other, _ := s.Claim(ctx, "beta", "c1"); other != 1 {
		t.Errorf("another tenant's session with the same id: epoch %d, want 1 (its own)", other)
	}
	seqs := mustAppend(t, s, "acme", "c1", "a", "b")
	if _, err := s.Append(ctx, "acme", []store.Item{{ClientID: "c1", Message: msg("t", "c")}}, store.Receipt{ClientID: "c1", PacketID: 7}); err != nil {
		t.Fatal(err)
	}
	// The owner before the last claim is refused everywhere it writes.
	stale := map[string]error{
		"SaveSession":   s.SaveSession(ctx, "acme", store.Session{ClientID: "c1", Device: "stale", Epoch: e1}),
		"Mark":          s.Mark(ctx, "acme", "c1", e1, seqs[0], 3, false),
		"Ack":           s.Ack(ctx, "acme", "c1", e1, seqs),
		"Release":       s.Release(ctx, "acme", "c1", e1, 7),
		"DeleteSession": s.DeleteSession(ctx, "acme", "c1", e1),
	}
	for op, err := range stale {
		if !errors.Is(err, store.ErrFenced) {
			t.Errorf("%s under a stale epoch: %v, want store.ErrFenced", op, err)
		}
	}
	ss, _ := s.Sessions(ctx, "acme")
	if len(ss) != 1 || ss[0].Device != "" || ss[0].Epoch != e2 || !slices.Equal(ss[0].PendingRelease, []uint16{7}) {
		t.Fatalf("after refused stale writes: %+v; want the record untouched, epoch %d, receipt 7 kept", ss, e2)
	}
	if qs, _ := s.Read(ctx, "acme", "c1", 0, 10); payloads(qs) != "a,b,c" || qs[0].PacketID != 0 {
		t.Errorf("after refused stale writes the queue is %q (first mark %d); want a,b,c unmarked", payloads(qs), qs[0].PacketID)
	}
	// The current owner writes.
	if err := s.SaveSession(ctx, "acme", store.Session{ClientID: "c1", Device: "d", Epoch: e2}); err != nil {
		t.Fatal(err)
	}
	if err := s.Mark(ctx, "acme", "c1", e2, seqs[1], 4, true); err != nil {
		t.Fatal(err)
	}
	if err := s.Ack(ctx, "acme", "c1", e2, seqs[:1]); err != nil {
		t.Fatal(err)
	}
	if err := s.Release(ctx, "acme", "c1", e2, 7); err != nil {
		t.Fatal(err)
	}
	qs, _ := s.Read(ctx, "acme", "c1", 0, 10)
	if payloads(qs) != "b,c" || qs[0].PacketID != 4 || !qs[0].Released {
		t.Errorf("the owner's writes: queue %q, mark %d/%v; want b,c with b marked 4, released", payloads(qs), qs[0].PacketID, qs[0].Released)
	}
	// The epoch survives a restart and the session's deletion: a deleted
	// session's id does not start again at an epoch a stale owner holds.
	if reopen != nil {
		s.Close()
		s = reopen()
		defer s.Close()
	}
	if err := s.DeleteSession(ctx, "acme", "c1", e2); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveSession(ctx, "acme", store.Session{ClientID: "c1", Epoch: e1}); !errors.Is(err, store.ErrFenced) {
		t.Errorf("saving under a stale epoch after the session was deleted: %v, want store.ErrFenced", err)
	}
	if e3, err := s.Claim(ctx, "acme", "c1"); err != nil || e3 <= e2 {
		t.Errorf("Claim after deletion: %d, %v; want above %d", e3, err, e2)
	}
}

// testNumbersAfterClaim: a claimed session's queue numbers keep rising
// across a reopen, the epoch kept beside them notwithstanding.
func testNumbersAfterClaim(t *testing.T, s Store, reopen func() Store) {
	e, err := s.Claim(ctx, "acme", "c1")
	if err != nil {
		t.Fatal(err)
	}
	seqs := mustAppend(t, s, "acme", "c1", "a", "b", "c", "d", "e")
	if err := s.Ack(ctx, "acme", "c1", e, seqs); err != nil {
		t.Fatal(err)
	}
	if reopen != nil {
		s.Close()
		s = reopen()
		defer s.Close()
	}
	next := mustAppend(t, s, "acme", "c1", "f")
	if next[0] <= seqs[len(seqs)-1] {
		t.Errorf("after a claim, acks and a reopen the next number is %d; the last given was %d", next[0], seqs[len(seqs)-1])
	}
}

// testAckMany acknowledges more messages at once than a Redis script can
// take as arguments, with marks among them.
func testAckMany(t *testing.T, s Store, _ func() Store) {
	const n = 9000
	items := make([]store.Item, n)
	for i := range items {
		items[i] = store.Item{ClientID: "c1", Message: msg("t", "x")}
	}
	seqs, err := s.Append(ctx, "acme", items, store.Receipt{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Mark(ctx, "acme", "c1", 0, seqs[n/2], 5, false); err != nil {
		t.Fatal(err)
	}
	if err := s.Ack(ctx, "acme", "c1", 0, seqs[:n-1]); err != nil {
		t.Fatalf("acknowledging %d messages at once: %v", n-1, err)
	}
	if info, err := s.QueueInfo(ctx, "acme", "c1"); err != nil || info.Len != 1 || info.MinSeq != seqs[n-1] {
		t.Errorf("after acknowledging all but the last: %+v, %v", info, err)
	}
}

// testConcurrentClaims: claims racing for one session each get their own
// epoch.
func testConcurrentClaims(t *testing.T, s Store, _ func() Store) {
	const n = 16
	epochs := make([]uint64, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e, err := s.Claim(ctx, "acme", "c1")
			if err != nil {
				t.Error(err)
			}
			epochs[i] = e
		}()
	}
	wg.Wait()
	slices.Sort(epochs)
	if len(slices.Compact(slices.Clone(epochs))) != n {
		t.Errorf("concurrent claims got epochs %v: two claims shared one", epochs)
	}
}

func testBatch(t *testing.T, s Store, _ func() Store) {
	items := []store.Item{
		{ClientID: "a", Message: msg("x", "a1")}, {ClientID: "b", Message: msg("x", "b1")},
		{ClientID: "a", Message: msg("x", "a2")}, {ClientID: "c", Message: msg("x", "c1")},
	}
	seqs, err := s.Append(ctx, "acme", items, store.Receipt{})
	if err != nil || len(seqs) != 4 || seqs[2] <= seqs[0] {
		t.Fatalf("Append: %v, %v", seqs, err)
	}
	for cid, want := range map[string]string{"a": "a1,a2", "b": "b1", "c": "c1"} {
		qs, _ := s.Read(ctx, "acme", cid, 0, 10)
		if payloads(qs) != want {
			t.Errorf("queue %s: got %q, want %q", cid, payloads(qs), want)
		}
	}
}

func testConcurrentAppends(t *testing.T, s Store, _ func() Store) {
	const writers, each = 8, 50
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if _, err := s.Append(ctx, "acme", []store.Item{{ClientID: "hot", Message: msg("x", fmt.Sprintf("%d-%d", w, i))}}, store.Receipt{}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	qs, err := s.Read(ctx, "acme", "hot", 0, writers*each+10)
	if err != nil || len(qs) != writers*each {
		t.Fatalf("read %d of %d (%v)", len(qs), writers*each, err)
	}
	seen := map[uint64]bool{}
	last := map[byte]int{}
	for i, q := range qs {
		if seen[q.Seq] || (i > 0 && q.Seq <= qs[i-1].Seq) {
			t.Fatalf("sequence %d repeated or out of order", q.Seq)
		}
		seen[q.Seq] = true
		var w, n int
		fmt.Sscanf(string(q.Payload), "%d-%d", &w, &n)
		if prev, ok := last[byte(w)]; ok && n <= prev {
			t.Fatalf("writer %d's messages out of order", w)
		}
		last[byte(w)] = n
	}
}

func testRetained(t *testing.T, s Store, _ func() Store) {
	for _, m := range []store.Message{msg("a/1", "one"), msg("a/2", "two"), msg("a/1", "uno")} {
		m.Retain = true
		if err := s.SetRetained(ctx, "acme", m); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Retained(ctx, "acme")
	if err != nil || len(got) != 2 {
		t.Fatalf("Retained: %d, %v; want 2", len(got), err)
	}
	byTopic := map[string]string{}
	for _, m := range got {
		byTopic[m.Topic] = string(m.Payload)
	}
	if byTopic["a/1"] != "uno" || byTopic["a/2"] != "two" {
		t.Errorf("retained: got %v", byTopic)
	}
	if err := s.SetRetained(ctx, "acme", store.Message{Topic: "a/1", Retain: true}); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Retained(ctx, "acme"); len(got) != 1 || got[0].Topic != "a/2" {
		t.Errorf("after clearing a/1: got %+v", got)
	}
}

func testTenantsApart(t *testing.T, s Store, _ func() Store) {
	for _, tn := range []string{"alpha", "bravo"} {
		if err := s.SaveSession(ctx, tn, store.Session{ClientID: "same", Device: tn + "-dev"}); err != nil {
			t.Fatal(err)
		}
		mustAppend(t, s, tn, "same", tn+"-msg")
		m := msg("status", tn+"-retained")
		if err := s.SetRetained(ctx, tn, m); err != nil {
			t.Fatal(err)
		}
	}
	for _, tn := range []string{"alpha", "bravo"} {
		ss, _ := s.Sessions(ctx, tn)
		qs, _ := s.Read(ctx, tn, "same", 0, 10)
		rs, _ := s.Retained(ctx, tn)
		if len(ss) != 1 || ss[0].Device != tn+"-dev" || payloads(qs) != tn+"-msg" || len(rs) != 1 || string(rs[0].Payload) != tn+"-retained" {
			t.Errorf("tenant %s sees sessions %+v, queue %q, retained %d", tn, ss, payloads(qs), len(rs))
		}
	}
	if err := s.DeleteSession(ctx, "alpha", "same", 0); err != nil {
		t.Fatal(err)
	}
	if qs, _ := s.Read(ctx, "bravo", "same", 0, 10); payloads(qs) != "bravo-msg" {
		t.Errorf("deleting alpha's session touched bravo's queue: %q", payloads(qs))
	}
	// A tenant whose slug is a prefix of another's shares nothing with it.
	mustAppend(t, s, "ab", "c", "short")
	mustAppend(t, s, "abc", "c", "long")
	if qs, _ := s.Read(ctx, "ab", "c", 0, 10); payloads(qs) != "short" {
		t.Errorf("tenant ab reads %q", payloads(qs))
	}
}

func testAwkwardIDs(t *testing.T, s Store, _ func() Store) {
	ids := []string{"a:b", "a", "a:b:c", "{x}", "}{", "a/b", "ünï", "a\x00b", "", "x y", "a_acme", "b"}
	for _, id := range ids {
		mustAppend(t, s, "acme", id, "for "+id)
		if err := s.SaveSession(ctx, "acme", store.Session{ClientID: id}); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range ids {
		qs, err := s.Read(ctx, "acme", id, 0, 10)
		if err != nil || payloads(qs) != "for "+id {
			t.Errorf("client id %q reads %q (%v)", id, payloads(qs), err)
		}
	}
	ss, _ := s.Sessions(ctx, "acme")
	if len(ss) != len(ids) {
		t.Errorf("%d sessions listed, want %d", len(ss), len(ids))
	}
}

func testDeleteSession(t *testing.T, s Store, _ func() Store) {
	if err := s.SaveSession(ctx, "acme", store.Session{ClientID: "c1"}); err != nil {
		t.Fatal(err)
	}
	mustAppend(t, s, "acme", "c1", "a", "b")
	mustAppend(t, s, "acme", "c10", "other")
	if err := s.DeleteSession(ctx, "acme", "c1", 0); err != nil {
		t.Fatal(err)
	}
	if qs, _ := s.Read(ctx, "acme", "c1", 0, 10); len(qs) != 0 {
		t.Errorf("queue of a deleted session: %q", payloads(qs))
	}
	if qs, _ := s.Read(ctx, "acme", "c10", 0, 10); payloads(qs) != "other" {
		t.Errorf("deleting c1 touched c10: %q", payloads(qs))
	}
}

// testPurgeTenant: a purged tenant has no session, queue or retained
// message left; another tenant with the same client ids keeps its own.
func testPurgeTenant(t *testing.T, s Store, _ func() Store) {
	for _, tn := range []string{"gone", "stays"} {
		for _, cid := range []string{"c1", "c2"} {
			if err := s.SaveSession(ctx, tn, store.Session{ClientID: cid, Expiry: 60}); err != nil {
				t.Fatal(err)
			}
			mustAppend(t, s, tn, cid, tn+"-"+cid)
		}
		if err := s.SetRetained(ctx, tn, msg("state", tn)); err != nil {
			t.Fatal(err)
		}
	}
	sessions, retained, err := store.PurgeTenant(ctx, s, "gone")
	if err != nil || sessions != 2 || retained != 1 {
		t.Fatalf("PurgeTenant: %d sessions, %d retained, %v", sessions, retained, err)
	}
	ss, _ := s.Sessions(ctx, "gone")
	rs, _ := s.Retained(ctx, "gone")
	q, _ := s.Read(ctx, "gone", "c1", 0, 10)
	if len(ss) != 0 || len(rs) != 0 || len(q) != 0 {
		t.Errorf("after the purge: %d sessions, %d retained, queue %q", len(ss), len(rs), payloads(q))
	}
	ss, _ = s.Sessions(ctx, "stays")
	rs, _ = s.Retained(ctx, "stays")
	q, _ = s.Read(ctx, "stays", "c1", 0, 10)
	if len(ss) != 2 || len(rs) != 1 || payloads(q) != "stays-c1" {
		t.Errorf("the other tenant after the purge: %d sessions, %d retained, queue %q", len(ss), len(rs), payloads(q))
	}
	if _, _, err := store.PurgeTenant(ctx, s, "gone"); err != nil {
		t.Errorf("a second purge: %v", err)
	}
}

func testSurvives(t *testing.T, s Store, reopen func() Store) {
	if reopen == nil {
		t.Skip("this back-end keeps nothing across a restart, by design")
	}
	if err := s.SaveSession(ctx, "acme", store.Session{ClientID: "c1", Expiry: 60}); err != nil {
		t.Fatal(err)
	}
	seqs := mustAppend(t, s, "acme", "c1", "a", "b")
	if err := s.SetRetained(ctx, "acme", msg("r", "kept")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := reopen()
	defer s2.Close()
	ss, _ := s2.Sessions(ctx, "acme")
	qs, _ := s2.Read(ctx, "acme", "c1", 0, 10)
	rs, _ := s2.Retained(ctx, "acme")
	if len(ss) != 1 || payloads(qs) != "a,b" || len(rs) != 1 {
		t.Fatalf("after reopening: sessions %d, queue %q, retained %d", len(ss), payloads(qs), len(rs))
	}
	next := mustAppend(t, s2, "acme", "c1", "c")
	if next[0] <= seqs[1] {
		t.Errorf("after reopening, sequence %d reuses one at or below %d", next[0], seqs[1])
	}
}

// testReceipts: a QoS 2 publisher's receipt is stored with the messages of
// its publish, listed with its session until released, kept apart by
// tenant and client, and gone with the session.
func testReceipts(t *testing.T, s Store, reopen func() Store) {
	for _, tn := range []string{"acme", "other"} {
		if err := s.SaveSession(ctx, tn, store.Session{ClientID: "pub"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SaveSession(ctx, "acme", store.Session{ClientID: "pub2"}); err != nil {
		t.Fatal(err)
	}
	appendFrom := func(tenant, pub string, id uint16) {
		t.Helper()
		items := []store.Item{{ClientID: "s1", Message: msg("t", "m")}, {ClientID: "s2", Message: msg("t", "m")}}
		if _, err := s.Append(ctx, tenant, items, store.Receipt{ClientID: pub, PacketID: id}); err != nil {
			t.Fatal(err)
		}
	}
	appendFrom("acme", "pub", 9)
	appendFrom("acme", "pub", 3)
	appendFrom("acme", "pub", 65535)
	appendFrom("acme", "pub2", 4)
	if _, err := s.Append(ctx, "acme", []store.Item{{ClientID: "s1", Message: msg("t", "no receipt")}}, store.Receipt{}); err != nil {
		t.Fatal(err)
	}
	pending := func(st Store, tenant string) string {
		t.Helper()
		ss, err := st.Sessions(ctx, tenant)
		if err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(ss, func(a, b store.Session) int { return strings.Compare(a.ClientID, b.ClientID) })
		var b bytes.Buffer
		for _, sess := range ss {
			fmt.Fprintf(&b, "%s%v ", sess.ClientID, sess.PendingRelease)
		}
		return b.String()
	}
	if got, want := pending(s, "acme"), "pub[3 9 65535] pub2[4] "; got != want {
		t.Errorf("pending releases: got %q, want %q", got, want)
	}
	if got, want := pending(s, "other"), "pub[] "; got != want {
		t.Errorf("another tenant's pending releases: got %q, want %q", got, want)
	}
	if qs, _ := s.Read(ctx, "acme", "s2", 0, 10); len(qs) != 4 {
		t.Errorf("the publishes with receipts queued %d messages for s2, want 4", len(qs))
	}
	if err := s.Release(ctx, "acme", "pub", 0, 9); err != nil {
		t.Fatal(err)
	}
	if err := s.Release(ctx, "acme", "pub", 0, 1234); err != nil {
		t.Errorf("releasing an unknown receipt: %v", err)
	}
	if got, want := pending(s, "acme"), "pub[3 65535] pub2[4] "; got != want {
		t.Errorf("after releasing 9: got %q, want %q", got, want)
	}
	if reopen != nil {
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = reopen()
		defer s.Close()
		if got, want := pending(s, "acme"), "pub[3 65535] pub2[4] "; got != want {
			t.Errorf("after reopening: got %q, want %q", got, want)
		}
	}
	if err := s.DeleteSession(ctx, "acme", "pub", 0); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveSession(ctx, "acme", store.Session{ClientID: "pub"}); err != nil {
		t.Fatal(err)
	}
	if got, want := pending(s, "acme"), "pub[] pub2[4] "; got != want {
		t.Errorf("a new session kept the old one's receipts: got %q, want %q", got, want)
	}
}

// testMarks: a QoS 2 message's packet id and release are read back with it,
// survive a reopen, go with the message when acknowledged, and a mark on a
// message no longer queued is ignored.
func testMarks(t *testing.T, s Store, reopen func() Store) {
	seqs := mustAppend(t, s, "acme", "c1", "a", "b", "c", "d")
	mustAppend(t, s, "other", "c1", "x", "y")
	mark := func(st Store, tenant string, seq uint64, id uint16, released bool) {
		t.Helper()
		if err := st.Mark(ctx, tenant, "c1", 0, seq, id, released); err != nil {
			t.Fatal(err)
		}
	}
	marks := func(st Store, tenant string) string {
		t.Helper()
		qs, err := st.Read(ctx, tenant, "c1", 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		for _, q := range qs {
			fmt.Fprintf(&b, "%s:%d:%t ", q.Payload, q.PacketID, q.Released)
		}
		return b.String()
	}
	mark(s, "acme", seqs[0], 7, false)
	mark(s, "acme", seqs[0], 7, true)
	mark(s, "acme", seqs[1], 65535, false)
	mark(s, "acme", seqs[3], 1, false)
	if got, want := marks(s, "acme"), "a:7:true b:65535:false c:0:false d:1:false "; got != want {
		t.Errorf("marks: got %q, want %q", got, want)
	}
	if got, want := marks(s, "other"), "x:0:false y:0:false "; got != want {
		t.Errorf("another tenant's queue: got %q, want %q", got, want)
	}
	if qs, _ := s.Read(ctx, "acme", "c1", seqs[2], 10); len(qs) != 1 || qs[0].PacketID != 1 {
		t.Errorf("reading from the middle: %+v", qs)
	}
	if reopen != nil {
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = reopen()
		defer s.Close()
		if got, want := marks(s, "acme"), "a:7:true b:65535:false c:0:false d:1:false "; got != want {
			t.Errorf("after reopening: got %q, want %q", got, want)
		}
	}
	if err := s.Ack(ctx, "acme", "c1", 0, seqs[:2]); err != nil {
		t.Fatal(err)
	}
	mark(s, "acme", seqs[0], 9, true) // acknowledged: ignored
	if got, want := marks(s, "acme"), "c:0:false d:1:false "; got != want {
		t.Errorf("after acknowledging a and b: got %q, want %q", got, want)
	}
	if info, err := s.QueueInfo(ctx, "acme", "c1"); err != nil || info.Len != 2 || info.MinSeq != seqs[2] {
		t.Errorf("queue info after a mark on an acknowledged message: %+v, %v", info, err)
	}
	next := mustAppend(t, s, "acme", "c1", "e")
	if got, want := marks(s, "acme"), "c:0:false d:1:false e:0:false "; got != want {
		t.Errorf("a new message has a mark: got %q, want %q", got, want)
	}
	if err := s.Ack(ctx, "acme", "c1", 0, append(seqs[2:], next...)); err != nil {
		t.Fatal(err)
	}
	if got := marks(s, "acme"); got != "" {
		t.Errorf("after acknowledging everything: %q", got)
	}
}

// testQueueWithoutSession: a queue under a client id no MQTT client can
// have (with U+0000, as the broker's outboxes and dead letters use), and
// no session record: appended to in one write with another, read in
// order with its opaque properties, claimed and acknowledged under the
// claim's epoch (a stale epoch is fenced), never listed as a session, and
// kept across a restart.
func testQueueWithoutSession(t *testing.T, s Store, reopen func() Store) {
	out, dead := "\x00out:dst_1", "\x00dead:dst_1"
	props := []byte{1, 0, 3, 'i', 'd', 0}
	items := []store.Item{
		{ClientID: out, Message: store.Message{Topic: "s/1", Payload: []byte("a"), QoS: 1, Created: time.Unix(1700000000, 0).UTC(), Properties: props}},
		{ClientID: dead, Message: msg("s/1", "x")},
		{ClientID: out, Message: msg("s/2", "b")},
	}
	if _, err := s.Append(ctx, "acme", items, store.Receipt{}); err != nil {
		t.Fatal(err)
	}
	mustAppend(t, s, "acme", out, "c")
	qs, err := s.Read(ctx, "acme", out, 0, 10)
	if err != nil || payloads(qs) != "a,b,c" || !bytes.Equal(qs[0].Properties, props) {
		t.Fatalf("outbox reads %q (%v), properties %v; want a,b,c with %v", payloads(qs), err, qs[0].Properties, props)
	}
	info, err := s.QueueInfo(ctx, "acme", out)
	if err != nil || info.Len != 3 || !info.Oldest.Equal(time.Unix(1700000000, 0)) {
		t.Errorf("QueueInfo %+v (%v), want 3 messages, the oldest at 1700000000", info, err)
	}
	old, err := s.Claim(ctx, "acme", out)
	if err != nil {
		t.Fatal(err)
	}
	epoch, err := s.Claim(ctx, "acme", out)
	if err != nil || epoch <= old {
		t.Fatalf("second claim: epoch %d (%v), want above %d", epoch, err, old)
	}
	if err := s.Ack(ctx, "acme", out, old, []uint64{qs[0].Seq}); !errors.Is(err, store.ErrFenced) {
		t.Errorf("Ack under a stale epoch: %v, want ErrFenced", err)
	}
	if err := s.Ack(ctx, "acme", out, epoch, []uint64{qs[0].Seq, qs[1].Seq}); err != nil {
		t.Fatal(err)
	}
	if qs, _ := s.Read(ctx, "acme", out, 0, 10); payloads(qs) != "c" {
		t.Errorf("after the Ack the outbox reads %q, want c", payloads(qs))
	}
	if qs, _ := s.Read(ctx, "acme", dead, 0, 10); payloads(qs) != "x" {
		t.Errorf("the dead letters read %q, want x", payloads(qs))
	}
	if qs, _ := s.Read(ctx, "other", out, 0, 10); len(qs) != 0 {
		t.Errorf("another tenant reads %d of acme's outbox", len(qs))
	}
	if ss, _ := s.Sessions(ctx, "acme"); len(ss) != 0 {
		t.Errorf("%d sessions listed, want none: a queue is not a session", len(ss))
	}
	if reopen == nil {
		return
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := reopen()
	defer s2.Close()
	if qs, _ := s2.Read(ctx, "acme", out, 0, 10); payloads(qs) != "c" {
		t.Errorf("after reopening the outbox reads %q, want c", payloads(qs))
	}
	if err := s2.Ack(ctx, "acme", out, old, []uint64{1}); !errors.Is(err, store.ErrFenced) {
		t.Errorf("after reopening, Ack under a stale epoch: %v, want ErrFenced", err)
	}
}

// testQueueLength: QueueInfo's length, first and last numbers stay exact
// through appends, acknowledgements in the middle of the queue (one
// named twice, one acknowledged before, one never queued), a deleted
// session and appends after it, and a reopen: the length is always what
// Read returns.
func testQueueLength(t *testing.T, s Store, reopen func() Store) {
	check := func(s Store, what string) {
		t.Helper()
		qs, err := s.Read(ctx, "acme", "c1", 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.QueueInfo(ctx, "acme", "c1")
		if err != nil {
			t.Fatalf("%s: QueueInfo: %v", what, err)
		}
		if info.Len != len(qs) {
			t.Errorf("%s: QueueInfo says %d queued, Read returns %d (%s)", what, info.Len, len(qs), payloads(qs))
		}
		if len(qs) > 0 && (info.MinSeq != qs[0].Seq || !info.Oldest.Equal(qs[0].Created)) {
			t.Errorf("%s: QueueInfo's first is %d (%v), want %d (%v)", what, info.MinSeq, info.Oldest, qs[0].Seq, qs[0].Created)
		}
	}
	seqs := mustAppend(t, s, "acme", "c1", "a", "b", "c", "d", "e", "f", "g", "h")
	mustAppend(t, s, "acme", "c10", "other")
	check(s, "after 8 appends")
	if err := s.Ack(ctx, "acme", "c1", 0, []uint64{seqs[3], seqs[5], seqs[3]}); err != nil {
		t.Fatal(err)
	}
	check(s, "after acknowledging d and f, d twice")
	if err := s.Ack(ctx, "acme", "c1", 0, []uint64{seqs[5], seqs[0], seqs[7] + 1000}); err != nil {
		t.Fatal(err)
	}
	check(s, "after acknowledging f again, a, and one never queued")
	if info, _ := s.QueueInfo(ctx, "acme", "c1"); info.Len != 5 || info.MinSeq != seqs[1] || info.MaxSeq != seqs[7] {
		t.Errorf("after the acknowledgements: %+v; want 5 queued from %d to %d", info, seqs[1], seqs[7])
	}
	if err := s.Mark(ctx, "acme", "c1", 0, seqs[2], 9, false); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveSession(ctx, "acme", store.Session{ClientID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSession(ctx, "acme", "c1", 0); err != nil {
		t.Fatal(err)
	}
	check(s, "after the session was deleted")
	more := mustAppend(t, s, "acme", "c1", "i", "j", "k")
	if err := s.Ack(ctx, "acme", "c1", 0, append(seqs[:3:3], more[1])); err != nil {
		t.Fatal(err)
	}
	check(s, "after appends to the deleted session's queue, and acknowledgements of old and new")
	if info, _ := s.QueueInfo(ctx, "acme", "c1"); info.Len != 2 || info.MinSeq != more[0] || info.MaxSeq != more[2] {
		t.Errorf("after the deletion: %+v; want i and k queued, %d to %d", info, more[0], more[2])
	}
	if info, _ := s.QueueInfo(ctx, "acme", "c10"); info.Len != 1 {
		t.Errorf("another client's queue: %+v, want 1 queued", info)
	}
	if reopen == nil {
		return
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := reopen()
	defer s2.Close()
	check(s2, "after reopening")
	mustAppend(t, s2, "acme", "c1", "l")
	if err := s2.Ack(ctx, "acme", "c1", 0, more[:1]); err != nil {
		t.Fatal(err)
	}
	check(s2, "after reopening, an append and an acknowledgement")
}
