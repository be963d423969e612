package pebble

import (
	"context"
	"encoding/binary"
	"testing"

	"github.com/cockroachdb/pebble"
)

// removedCount reads the queue's count of removed messages ('k').
func removedCount(t *testing.T, s *Store, clientID string) uint64 {
	t.Helper()
	n, err := readUint64(s.db, clientKey('k', "acme", clientID))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestQueueInfoHealsAfterOlderVersion: an older version, run on the
// database after this one had counted its queues, removes messages
// without counting them; reopened by this version (the format key set,
// so nothing recounts at the open), QueueInfo finds its view
// inconsistent, counts that queue, rewrites its count and returns what
// the queue holds, without an error.
func TestQueueInfoHealsAfterOlderVersion(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := New(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	head := appendN(t, s, "head", 10)
	appendN(t, s, "gone", 3)
	appendN(t, s, "over", 2)
	for _, cid := range []string{"head", "gone", "over"} {
		if _, err := s.QueueInfo(ctx, "acme", cid); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// The older version: it acknowledges and deletes sessions without
	// the 'k' keys.
	db, err := pebble.Open(dir, options(nil))
	if err != nil {
		t.Fatal(err)
	}
	b := db.NewBatch()
	for _, seq := range head[:3] {
		b.Delete(queueKey("acme", "head", seq), nil)
	}
	gp := clientKey('q', "acme", "gone")
	b.DeleteRange(gp, upperBound(gp), nil)
	// A count above the last number: damage of some kind the count
	// recovers from the same way.
	b.Set(clientKey('k', "acme", "over"), binary.BigEndian.AppendUint64(nil, 100), nil)
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = New(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, tc := range []struct {
		cid          string
		len          int
		min, removed uint64
	}{
		{"head", 7, head[3], 3},
		{"gone", 0, 0, 3},
		{"over", 2, 1, 0},
	} {
		for round := range 2 { // healed, then read from the count
			info, err := s.QueueInfo(ctx, "acme", tc.cid)
			if err != nil || info.Len != tc.len || info.MinSeq != tc.min || info.Len != queued(t, s, tc.cid) {
				t.Errorf("queue %s, round %d: QueueInfo %+v, %v; want %d queued from %d", tc.cid, round, info, err, tc.len, tc.min)
			}
			if got := removedCount(t, s, tc.cid); got != tc.removed {
				t.Errorf("queue %s, round %d: %d counted removed, want %d", tc.cid, round, got, tc.removed)
			}
		}
	}
	// Counted right, acknowledgements count on from there.
	if err := s.Ack(ctx, "acme", "head", 0, head[2:5]); err != nil {
		t.Fatal(err)
	}
	if info, err := s.QueueInfo(ctx, "acme", "head"); err != nil || info.Len != 5 || info.MinSeq != head[5] {
		t.Errorf("queue head after two more acknowledgements: %+v, %v; want 5 queued from %d", info, err, head[5])
	}
}

// TestQueueInfoLowIsAHint: a low above the first message of QueueInfo's
// view (as a QueueInfo of a newer view can have set it) does not make it
// fail, nor skip the messages below it.
func TestQueueInfoLowIsAHint(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		low  uint64
	}{
		{"above every message", 50},
		{"above the first", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(Config{Dir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			seqs := appendN(t, s, "c", 3)
			s.lows[string(clientKey('q', "acme", "c"))] = tc.low
			info, err := s.QueueInfo(ctx, "acme", "c")
			if err != nil || info.Len != 3 || info.MinSeq != seqs[0] {
				t.Errorf("QueueInfo %+v, %v; want 3 queued from %d", info, err, seqs[0])
			}
		})
	}
}

// TestAckCountsWhatWasQueued: an Ack counts removed each message it
// deletes once, and none it names twice, acknowledged before or not yet
// numbered.
func TestAckCountsWhatWasQueued(t *testing.T) {
	ctx := context.Background()
	s, err := New(Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	seqs := appendN(t, s, "c", 5)
	for _, ack := range [][]uint64{
		{seqs[1], seqs[1], seqs[0], 99},
		{seqs[0], seqs[2]},
		{seqs[4]},
	} {
		if err := s.Ack(ctx, "acme", "c", 0, ack); err != nil {
			t.Fatal(err)
		}
	}
	if got := removedCount(t, s, "c"); got != 4 {
		t.Errorf("%d counted removed, want 4", got)
	}
	if info, err := s.QueueInfo(ctx, "acme", "c"); err != nil || info.Len != 1 || info.MinSeq != seqs[3] {
		t.Errorf("QueueInfo %+v, %v; want 1 queued from %d", info, err, seqs[3])
	}
}

// TestDeleteSessionForgetsQueue: the queue's low and last number cached
// in memory go with the session (client ids come and gone do not grow
// them), and its numbers go on from the last after.
func TestDeleteSessionForgetsQueue(t *testing.T) {
	ctx := context.Background()
	s, err := New(Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	appendN(t, s, "c", 3)
	if _, err := s.QueueInfo(ctx, "acme", "c"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSession(ctx, "acme", "c", 0); err != nil {
		t.Fatal(err)
	}
	if len(s.lows) != 0 || len(s.seqs) != 0 {
		t.Errorf("after DeleteSession: lows %v, seqs %v; want none", s.lows, s.seqs)
	}
	seqs := appendN(t, s, "c", 1)
	if info, err := s.QueueInfo(ctx, "acme", "c"); err != nil || seqs[0] != 4 || info.Len != 1 || info.MinSeq != 4 {
		t.Errorf("appended %v after DeleteSession: QueueInfo %+v, %v; want 1 queued from 4", seqs, info, err)
	}
}

// TestQueueInfoLowNewerThanView: a QueueInfo whose view is older than
// the low another QueueInfo raised meanwhile returns its view's first
// message, not the low's. The view holds 1, 3 and 5 (2 and 4
// acknowledged); before the first QueueInfo reads on, 1 is acknowledged
// and a second QueueInfo finds 3.
func TestQueueInfoLowNewerThanView(t *testing.T) {
	ctx := context.Background()
	s, err := New(Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	seqs := appendN(t, s, "c", 5)
	if err := s.Ack(ctx, "acme", "c", 0, []uint64{seqs[1], seqs[3]}); err != nil {
		t.Fatal(err)
	}
	s.viewTaken = func() {
		s.viewTaken = nil
		if err := s.Ack(ctx, "acme", "c", 0, seqs[:1]); err != nil {
			t.Fatal(err)
		}
		if info, err := s.QueueInfo(ctx, "acme", "c"); err != nil || info.MinSeq != seqs[2] {
			t.Fatalf("the second QueueInfo: %+v, %v; want queued from %d", info, err, seqs[2])
		}
	}
	info, err := s.QueueInfo(ctx, "acme", "c")
	if err != nil || info.Len != 3 || info.MinSeq != seqs[0] {
		t.Errorf("QueueInfo of the older view: %+v, %v; want 3 queued from %d", info, err, seqs[0])
	}
}
