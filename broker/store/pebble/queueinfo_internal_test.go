package pebble

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble"

	"github.com/roosthub/roost/broker/store"
)

// queued is the number of messages Read finds in a queue.
func queued(t *testing.T, s *Store, clientID string) int {
	t.Helper()
	qs, err := s.Read(context.Background(), "acme", clientID, 0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	return len(qs)
}

// items are n messages for client c.
func items(n int) []store.Item {
	its := make([]store.Item, n)
	for i := range its {
		its[i] = store.Item{ClientID: "c", Message: store.Message{Topic: "t", Payload: []byte("m"), QoS: 1, Created: time.Now()}}
	}
	return its
}

func appendN(t *testing.T, s *Store, clientID string, n int) []uint64 {
	t.Helper()
	its := items(n)
	for i := range its {
		its[i].ClientID = clientID
	}
	seqs, err := s.Append(context.Background(), "acme", its, store.Receipt{})
	if err != nil {
		t.Fatal(err)
	}
	return seqs
}

// TestQueueLengthFromOlderFormat: a database written before the counts
// of removed messages (no 'k' keys, no format key) gets them when it is
// opened, from what its queues hold: the lengths are exact after.
func TestQueueLengthFromOlderFormat(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := New(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	a := appendN(t, s, "a", 10)
	appendN(t, s, "b", 3)
	seqs := appendN(t, s, "gone", 2)
	if err := s.Ack(ctx, "acme", "a", 0, []uint64{a[2], a[5], a[6]}); err != nil {
		t.Fatal(err)
	}
	if err := s.Ack(ctx, "acme", "gone", 0, seqs); err != nil {
		t.Fatal(err)
	}
	// As the older version left it.
	b := s.db.NewBatch()
	for _, cid := range []string{"a", "b", "gone"} {
		b.Delete(clientKey('k', "acme", cid), nil)
	}
	b.Delete(formatKey, nil)
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = New(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for cid, want := range map[string]int{"a": 7, "b": 3, "gone": 0, "never": 0} {
		info, err := s.QueueInfo(ctx, "acme", cid)
		if err != nil || info.Len != want || info.Len != queued(t, s, cid) {
			t.Errorf("queue %s after the upgrade: %+v, %v; want %d queued", cid, info, err, want)
		}
	}
	if err := s.Ack(ctx, "acme", "a", 0, a[:2]); err != nil {
		t.Fatal(err)
	}
	if info, _ := s.QueueInfo(ctx, "acme", "a"); info.Len != 5 || info.MinSeq != a[3] {
		t.Errorf("queue a after two more acknowledgements: %+v; want 5 queued from %d", info, a[3])
	}
}

// TestQueueLengthUnderConcurrentWrites: appends (not fenced), acks and
// the session's deletion racing each other leave QueueInfo's length
// equal to what the queue holds, after they end and after a reopen.
func TestQueueLengthUnderConcurrentWrites(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := New(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	acks := make(chan uint64, 10_000)
	for range 4 {
		wg.Go(func() {
			for range 50 {
				seqs, err := s.Append(ctx, "acme", items(5), store.Receipt{})
				if err != nil {
					t.Error(err)
					return
				}
				for _, seq := range seqs {
					acks <- seq
				}
			}
		})
	}
	var ackers sync.WaitGroup
	ackers.Go(func() {
		i := 0
		for seq := range acks {
			i++
			if i%3 == 0 {
				continue // stays queued
			}
			// Twice, at times: the second removes nothing.
			if err := s.Ack(ctx, "acme", "c", 0, []uint64{seq, seq - uint64(i%2)}); err != nil {
				t.Error(err)
				return
			}
			if i%97 == 0 {
				if err := s.DeleteSession(ctx, "acme", "c", 0); err != nil {
					t.Error(err)
					return
				}
			}
		}
	})
	wg.Wait()
	close(acks)
	ackers.Wait()
	for round := range 2 {
		info, err := s.QueueInfo(ctx, "acme", "c")
		if n := queued(t, s, "c"); err != nil || info.Len != n {
			t.Fatalf("round %d: QueueInfo %+v, %v; the queue holds %d", round, info, err, n)
		}
		t.Logf("round %d: %d queued of %d", round, info.Len, info.MaxSeq)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if s, err = New(Config{Dir: dir}); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
}
