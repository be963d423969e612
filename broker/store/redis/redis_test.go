package redis_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/roosthub/roost/broker/store"
	"github.com/roosthub/roost/broker/store/redis"
	"github.com/roosthub/roost/broker/store/storetest"
	"github.com/roosthub/roost/internal/testenv"
)

func TestRedis(t *testing.T) { runContract(t, redisURL(t)) }

// runContract runs the store contract (storetest) on the Redis at url,
// each test under a key prefix of its own.
func runContract(t *testing.T, url string) {
	storetest.Run(t, func(t *testing.T) (storetest.Store, func() storetest.Store) {
		prefix := uniquePrefix()
		open := func() storetest.Store {
			s, err := redis.New(context.Background(), redis.Config{URL: url, Prefix: prefix})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
		s := open()
		t.Cleanup(func() { s.Close() })
		return s, open
	})
}

func redisURL(t *testing.T) string {
	t.Helper()
	url := os.Getenv("ROOST_TEST_REDIS_URL")
	if url == "" {
		testenv.Require(t, "ROOST_TEST_REDIS_URL is not set; `make services` starts a local Redis and prints it")
	}
	return url
}

func uniquePrefix() string {
	b := make([]byte, 6)
	rand.Read(b)
	return "roost-test-" + hex.EncodeToString(b)
}

// mustOpen opens a store under a key prefix of its own.
func mustOpen(t *testing.T) *redis.Store {
	t.Helper()
	s, err := redis.New(context.Background(), redis.Config{URL: redisURL(t), Prefix: uniquePrefix()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// waitQueued waits until n appends wait for a leader.
func waitQueued(t *testing.T, s *redis.Store, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.Queued() != n {
		if time.Now().After(deadline) {
			t.Fatalf("got %d appends queued behind a send in flight, want %d", s.Queued(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func message(topic string) store.Message {
	return store.Message{Topic: topic, Payload: []byte("x"), QoS: 1, Created: time.Now().Truncate(time.Millisecond)}
}

// appendAll has writers appending one message at a time each, rounds
// times, to one of queues queues (writer w to queue w%queues), with the
// first send held (s.HoldFirstSend's entered and release) until all other
// writers have queued behind it: their first appends must go in one
// pipeline. The first writer starts alone and the others once its send is
// held, so that it is the first send's only append. It checks that every
// queue's numbers are gapless from 1, that each writer's are increasing,
// and that Read returns every message once, in number order.
func appendAll(t *testing.T, s *redis.Store, entered <-chan struct{}, release func(), writers, rounds, queues int) {
	t.Helper()
	ctx := context.Background()
	seqs := make([][]uint64, writers)
	var wg sync.WaitGroup
	for w := range writers {
		if w == 1 {
			<-entered
		}
		wg.Go(func() {
			for i := range rounds {
				got, err := s.Append(ctx, "t", []store.Item{{ClientID: fmt.Sprintf("q%d", w%queues), Message: message(fmt.Sprintf("w%d/%d", w, i))}}, store.Receipt{})
				if err != nil {
					t.Errorf("writer %d append %d: %v", w, i, err)
					return
				}
				seqs[w] = append(seqs[w], got[0])
			}
		})
	}
	waitQueued(t, s, writers-1)
	release()
	wg.Wait()

	want := map[int]map[uint64]string{} // queue → seq → topic
	for w, ss := range seqs {
		q := w % queues
		if want[q] == nil {
			want[q] = map[uint64]string{}
		}
		for i, seq := range ss {
			if i > 0 && seq <= ss[i-1] {
				t.Errorf("writer %d got %d after %d, want increasing", w, seq, ss[i-1])
			}
			if prev, ok := want[q][seq]; ok {
				t.Errorf("queue %d: number %d given to %s and w%d/%d", q, seq, prev, w, i)
			}
			want[q][seq] = fmt.Sprintf("w%d/%d", w, i)
		}
	}
	for q := range queues {
		msgs, err := s.Read(ctx, "t", fmt.Sprintf("q%d", q), 0, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) != len(want[q]) {
			t.Errorf("queue %d: read %d messages, want %d", q, len(msgs), len(want[q]))
		}
		for i, m := range msgs {
			if m.Seq != uint64(i+1) {
				t.Errorf("queue %d: message %d numbered %d, want %d", q, i, m.Seq, i+1)
			}
			if m.Topic != want[q][m.Seq] {
				t.Errorf("queue %d: message %d is %q, want %q", q, m.Seq, m.Topic, want[q][m.Seq])
			}
		}
	}
}

func TestAppendGroups(t *testing.T) {
	s := mustOpen(t)
	trips := s.CountTrips()
	entered, release := s.HoldFirstSend(nil)
	t.Cleanup(release)
	const writers = 64
	appendAll(t, s, entered, release, writers, 20, 4)
	if trips.Grouped.Load() == 0 {
		t.Errorf("got no pipeline of more than one append (%d alone, %d pipelines), want some", trips.Singles.Load(), trips.Pipelines.Load())
	}
	if got, want := trips.Singles.Load()+trips.Piped.Load(), int64(writers*20); got != want {
		t.Errorf("got %d script calls, want %d, one an append", got, want)
	}
	t.Logf("%d appends in %d round trips", writers*20, trips.Singles.Load()+trips.Pipelines.Load())
}

// TestAppendNoScript: Redis loses the script (SCRIPT FLUSH) while a
// group is waiting; the group's EVALSHAs are refused and sent again by
// EVAL, once each.
func TestAppendNoScript(t *testing.T) {
	s := mustOpen(t)
	ctx := context.Background()
	// The script is loaded, so that the held call is an EVALSHA that
	// succeeds and the flush after it takes the group's script away.
	if _, err := s.Append(ctx, "t", []store.Item{{ClientID: "warm", Message: message("warm")}}, store.Receipt{}); err != nil {
		t.Fatal(err)
	}
	trips := s.CountTrips()
	entered, release := s.HoldFirstSend(func() {
		if err := s.Client().ScriptFlush(ctx).Err(); err != nil {
			t.Error(err)
		}
	})
	t.Cleanup(release)
	const writers = 16
	appendAll(t, s, entered, release, writers, 5, 3)
	if got := trips.Evals.Load(); got < writers-1 {
		t.Errorf("got %d appends sent again by EVAL in a pipeline, want at least %d", got, writers-1)
	}
}

func TestAppendWithdrawn(t *testing.T) {
	s := mustOpen(t)
	ctx := context.Background()
	entered, release := s.HoldFirstSend(nil)
	t.Cleanup(release)
	first := make(chan error, 1)
	go func() {
		_, err := s.Append(ctx, "t", []store.Item{{ClientID: "a", Message: message("first")}}, store.Receipt{})
		first <- err
	}()
	<-entered
	cctx, cancel := context.WithCancel(ctx)
	queued := make(chan error, 1)
	go func() {
		_, err := s.Append(cctx, "t", []store.Item{{ClientID: "b", Message: message("withdrawn")}}, store.Receipt{ClientID: "pub", PacketID: 7})
		queued <- err
	}()
	waitQueued(t, s, 1)
	cancel()
	if err := <-queued; !errors.Is(err, context.Canceled) {
		t.Errorf("got %v from the append whose ctx ended in the queue, want %v", err, context.Canceled)
	}
	if n := s.Queued(); n != 0 {
		t.Errorf("got %d appends queued after the withdrawal, want 0", n)
	}
	release()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	info, err := s.QueueInfo(ctx, "t", "b")
	if err != nil {
		t.Fatal(err)
	}
	if info.Len != 0 || info.MaxSeq != 0 {
		t.Errorf("withdrawn append's queue has %d messages, last number %d, want none", info.Len, info.MaxSeq)
	}
	if n, err := s.Client().SCard(ctx, s.SessionKey("t", "pub", "r")).Result(); err != nil || n != 0 {
		t.Errorf("withdrawn append's receipt set has %d members (%v), want 0", n, err)
	}
	// The store still appends: the lead was not left taken.
	if _, err := s.Append(ctx, "t", []store.Item{{ClientID: "b", Message: message("after")}}, store.Receipt{}); err != nil {
		t.Fatal(err)
	}
}

// TestAppendErrorsAreOwn: one append of a group fails (its queue's
// counter is not a number); the others in its pipeline are stored.
func TestAppendErrorsAreOwn(t *testing.T) {
	s := mustOpen(t)
	ctx := context.Background()
	if err := s.Client().Set(ctx, s.SessionKey("t", "broken", "seq"), "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	trips := s.CountTrips()
	entered, release := s.HoldFirstSend(nil)
	t.Cleanup(release)
	const writers = 8
	errs := make([]error, writers)
	var wg sync.WaitGroup
	start := func(w int) {
		cid := fmt.Sprintf("ok%d", w)
		if w == writers/2 {
			cid = "broken"
		}
		wg.Go(func() {
			_, errs[w] = s.Append(ctx, "t", []store.Item{{ClientID: cid, Message: message("m")}}, store.Receipt{})
		})
	}
	start(0)
	<-entered
	for w := 1; w < writers; w++ {
		start(w)
	}
	waitQueued(t, s, writers-1)
	release()
	wg.Wait()
	for w, err := range errs {
		if w == writers/2 {
			if err == nil {
				t.Errorf("append to the broken queue: got no error, want one")
			}
			continue
		}
		if err != nil {
			t.Errorf("append %d: got %v, want none", w, err)
		}
	}
	if trips.Grouped.Load() == 0 {
		t.Errorf("got no pipeline of more than one append, want the %d queued", writers-1)
	}
}

// TestAppendAfterClose: appends queued behind a send when the store
// closes fail; none waits for ever.
func TestAppendAfterClose(t *testing.T) {
	s := mustOpen(t)
	ctx := context.Background()
	entered, release := s.HoldFirstSend(nil)
	t.Cleanup(release)
	const writers = 8
	errs := make(chan error, writers)
	for w := range writers {
		if w == 1 {
			<-entered // the first send holds the first append alone
		}
		go func() {
			_, err := s.Append(ctx, "t", []store.Item{{ClientID: fmt.Sprintf("q%d", w), Message: message("m")}}, store.Receipt{})
			errs <- err
		}()
	}
	waitQueued(t, s, writers-1)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	release()
	failed := 0
	for range writers {
		if err := <-errs; err != nil {
			failed++
		}
	}
	if failed < writers-1 {
		t.Errorf("got %d appends failed after Close, want at least the %d queued", failed, writers-1)
	}
	if _, err := s.Append(ctx, "t", []store.Item{{ClientID: "q0", Message: message("late")}}, store.Receipt{}); err == nil {
		t.Errorf("append after Close: got no error, want one")
	}
}

// TestAppendReplyLost: Redis runs an append, and the connection breaks
// before its reply is read. The append fails (its publisher is not
// acknowledged, and sends it again), and it is stored once: the client
// does not send it again on a new connection, which would number its
// message a second time. The store goes on working after.
func TestAppendReplyLost(t *testing.T) {
	ctx := context.Background()
	cfg := redis.Config{URL: redisURL(t), Prefix: uniquePrefix()}
	probe, err := redis.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { probe.Close() })
	queued := func() int64 {
		n, err := probe.Client().ZCard(ctx, probe.SessionKey("t", "c", "q")).Result()
		if err != nil {
			t.Error(err)
		}
		return n
	}
	dial, lost := testenv.LosingReplyDialer(func(p []byte) bool { return bytes.Contains(p, []byte("evalsha")) }, func() bool { return queued() > 0 })
	s, err := redis.OpenDialing(ctx, cfg, dial)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })

	item := []store.Item{{ClientID: "c", Message: message("a/b")}}
	if seqs, err := s.Append(ctx, "t", item, store.Receipt{}); err == nil {
		t.Fatalf("append whose reply was lost: got numbers %v and no error, want an error", seqs)
	}
	if !lost() {
		t.Fatal("the append's reply was not lost after Redis ran it")
	}
	if n := queued(); n != 1 {
		t.Fatalf("got %d messages queued after an append whose reply was lost, want 1 (sent once)", n)
	}
	seqs, err := s.Append(ctx, "t", item, store.Receipt{})
	if err != nil {
		t.Fatalf("append after the lost reply: %v", err)
	}
	if len(seqs) != 1 || seqs[0] != 2 {
		t.Errorf("append after the lost reply: got numbers %v, want [2]", seqs)
	}
}

// TestReadReplyLost: a read whose reply is lost is sent again, on a new
// connection, and succeeds: only Append's script calls are never sent
// twice.
func TestReadReplyLost(t *testing.T) {
	ctx := context.Background()
	cfg := redis.Config{URL: redisURL(t), Prefix: uniquePrefix()}
	dial, lost := testenv.LosingReplyDialer(func(p []byte) bool { return bytes.Contains(p, []byte("zrangebyscore")) }, func() bool { return true })
	s, err := redis.OpenDialing(ctx, cfg, dial)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if _, err := s.Append(ctx, "t", []store.Item{{ClientID: "c", Message: message("a/b")}}, store.Receipt{}); err != nil {
		t.Fatal(err)
	}
	msgs, err := s.Read(ctx, "t", "c", 0, 10)
	if err != nil || len(msgs) != 1 || msgs[0].Topic != "a/b" {
		t.Fatalf("read whose first reply was lost: %d messages, %v; want the one, read again", len(msgs), err)
	}
	if !lost() {
		t.Error("no read's reply was lost")
	}
}

// TestAppendRefusedSentAgain: an append Redis refused without running it
// (a replica's READONLY, as during a failover) is sent again, as go-redis
// would have, and stored once.
func TestAppendRefusedSentAgain(t *testing.T) {
	ctx := context.Background()
	cfg := redis.Config{URL: redisURL(t), Prefix: uniquePrefix()}
	dial, refused := testenv.RefusingDialer(func(p []byte) bool { return bytes.Contains(p, []byte("evalsha")) },
		"-READONLY You can't write against a read only replica.\r\n")
	s, err := redis.OpenDialing(ctx, cfg, dial)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	seqs, err := s.Append(ctx, "t", []store.Item{{ClientID: "c", Message: message("a/b")}}, store.Receipt{})
	if err != nil || len(seqs) != 1 || seqs[0] != 1 {
		t.Fatalf("append refused once without running: numbers %v, %v; want [1]", seqs, err)
	}
	if !refused() {
		t.Fatal("no append was refused")
	}
	if msgs, err := s.Read(ctx, "t", "c", 0, 10); err != nil || len(msgs) != 1 {
		t.Fatalf("queue after an append refused once: %d messages, %v; want 1", len(msgs), err)
	}
}
