package pebble

import (
	"context"
	"fmt"
	"maps"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble"

	"github.com/roosthub/roost/broker/store"
)

// queueModel is what a queue of client "c" must hold: the numbers of its
// messages, its last number and the numbers marked.
type queueModel struct {
	held   map[uint64]bool
	marked map[uint64]bool
	last   uint64
}

func newModel() *queueModel {
	return &queueModel{held: map[uint64]bool{}, marked: map[uint64]bool{}}
}

// add appends n messages to the queue and the model.
func (m *queueModel) add(t *testing.T, s *Store, n int) []uint64 {
	t.Helper()
	seqs := appendN(t, s, "c", n)
	for _, seq := range seqs {
		m.held[seq] = true
		m.last = max(m.last, seq)
	}
	return seqs
}

// mark marks the messages seqs.
func (m *queueModel) mark(t *testing.T, s *Store, seqs ...uint64) {
	t.Helper()
	for _, seq := range seqs {
		if err := s.Mark(context.Background(), "acme", "c", 0, seq, uint16(seq), false); err != nil {
			t.Fatal(err)
		}
		m.marked[seq] = true
	}
}

// ack acknowledges seqs in the store and the model.
func (m *queueModel) ack(t *testing.T, s *Store, seqs ...uint64) {
	t.Helper()
	if err := s.Ack(context.Background(), "acme", "c", 0, seqs); err != nil {
		t.Fatal(err)
	}
	for _, seq := range seqs {
		delete(m.held, seq)
		delete(m.marked, seq)
	}
}

// check compares the store's queue with the model: the messages Read
// finds, from the start and from the middle, their marks, QueueInfo, the
// count of removed messages and the marks' keys.
func (m *queueModel) check(t *testing.T, s *Store, stage string) {
	t.Helper()
	ctx := context.Background()
	want := slices.Sorted(maps.Keys(m.held))
	qs, err := s.Read(ctx, "acme", "c", 0, 1<<20)
	if err != nil {
		t.Fatalf("%s: Read: %v", stage, err)
	}
	got := make([]uint64, len(qs))
	for i, q := range qs {
		got[i] = q.Seq
		if marked := q.PacketID != 0; marked != m.marked[q.Seq] || (marked && q.PacketID != uint16(q.Seq)) {
			t.Errorf("%s: message %d read with packet id %d; marked: %v", stage, q.Seq, q.PacketID, m.marked[q.Seq])
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("%s: the queue holds %v, want %v", stage, got, want)
	}
	if len(want) > 1 {
		mid := want[len(want)/2]
		qs, err := s.Read(ctx, "acme", "c", mid, 3)
		if err != nil || len(qs) == 0 || qs[0].Seq != want[len(want)/2+1] {
			t.Errorf("%s: Read after %d: %v, %v; want from %d", stage, mid, qs, err, want[len(want)/2+1])
		}
	}
	info, err := s.QueueInfo(ctx, "acme", "c")
	if err != nil {
		t.Fatalf("%s: QueueInfo: %v", stage, err)
	}
	wantInfo := store.QueueInfo{Len: len(want), MaxSeq: m.last}
	if len(want) > 0 {
		wantInfo.MinSeq = want[0]
	}
	if info.Len != wantInfo.Len || info.MinSeq != wantInfo.MinSeq || info.MaxSeq != wantInfo.MaxSeq {
		t.Errorf("%s: QueueInfo %+v, want %+v", stage, info, wantInfo)
	}
	removed, err := readUint64(s.db, clientKey('k', "acme", "c"))
	if err != nil || removed != m.last-uint64(len(want)) {
		t.Errorf("%s: count of removed messages %d (%v), want %d", stage, removed, err, m.last-uint64(len(want)))
	}
	dp := clientKey('d', "acme", "c")
	if n, err := countKeys(s.db, dp); err != nil || n != uint64(len(m.marked)) {
		t.Errorf("%s: %d marks kept (%v), want %d", stage, n, err, len(m.marked))
	}
}

// span is the numbers from lo to hi.
func span(lo, hi uint64) []uint64 {
	seqs := make([]uint64, 0, hi-lo+1)
	for seq := lo; ; seq++ {
		seqs = append(seqs, seq)
		if seq == hi {
			return seqs
		}
	}
}

// without is seqs less those from lo to hi.
func without(seqs []uint64, lo, hi uint64) []uint64 {
	return slices.DeleteFunc(slices.Clone(seqs), func(seq uint64) bool { return seq >= lo && seq <= hi })
}

// TestAckShapes: acknowledgements of runs from the head, long and short,
// with gaps, naming messages acknowledged before or numbers not given
// yet, looked up with an iterator or a point read each, leave the queue,
// its marks, QueueInfo and the count of removed messages as a model
// says, before and after the store's memtable is flushed and compacted
// and after the store is reopened.
func TestAckShapes(t *testing.T) {
	dir := t.TempDir()
	s, err := New(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	m := newModel()
	m.add(t, s, 400)
	m.mark(t, s, 5, 150, 210, 290)
	m.check(t, s, "appended")

	steps := []struct {
		name   string
		seqs   []uint64
		append int // after the acknowledgement
	}{
		{"run from the head, with a mark", span(1, 100), 0},
		{"short run", span(101, 110), 0},
		{"run with a gap of messages not named", without(span(111, 200), 150, 155), 0},
		{"run behind messages acknowledged before", span(171, 300), 0},
		{"run and messages acknowledged before, unordered, twice", append(span(301, 380), 300, 290, 301, 1, 380), 0},
		{"numbers not given yet (then given)", span(m.last+1, m.last+100), 150},
		{"messages in a gap, and numbers not given yet", append(span(150, 155), m.last+1000, m.last+1007), 0},
		{"the last numbers a queue can have", span(math.MaxUint64-99, math.MaxUint64), 0},
		{"one message", []uint64{381}, 0},
		{"named twice", []uint64{382, 382, 383, 383}, 0},
	}
	for i, st := range steps {
		m.ack(t, s, st.seqs...)
		m.check(t, s, st.name)
		if st.append > 0 {
			m.add(t, s, st.append)
			m.check(t, s, st.name+", appended")
		}
		switch i {
		case 3:
			if err := s.db.Flush(); err != nil {
				t.Fatal(err)
			}
			m.check(t, s, "flushed")
		case 6:
			if err := s.db.Compact([]byte{'q'}, []byte{'r'}, true); err != nil {
				t.Fatal(err)
			}
			m.check(t, s, "compacted")
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = New(Config{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	m.check(t, s, "reopened")
	m.add(t, s, 200)
	m.ack(t, s, span(384, m.last-50)...)
	m.check(t, s, "acknowledged after the reopen")
}

// TestManyRunAcks: a worker reading batches from the queue's head and
// acknowledging them, hundreds of times, as the outbox does, among
// appends; the queue, QueueInfo and the count of removed messages stay
// right throughout, with the memtable flushed at times, and after
// reopening the store, twice.
func TestManyRunAcks(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := New(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	m := newModel()
	var head uint64
	for round := range 3 {
		for i := range 150 {
			m.add(t, s, 100+i%3)
			qs, err := s.Read(ctx, "acme", "c", head, 100)
			if err != nil || len(qs) != 100 {
				t.Fatalf("round %d, batch %d: read %d messages (%v), want 100", round, i, len(qs), err)
			}
			seqs := make([]uint64, len(qs))
			for j, q := range qs {
				seqs[j] = q.Seq
			}
			m.ack(t, s, seqs...)
			head = seqs[len(seqs)-1]
			info, err := s.QueueInfo(ctx, "acme", "c")
			if want := len(m.held); err != nil || info.Len != want || info.MaxSeq != m.last {
				t.Fatalf("round %d, batch %d: QueueInfo %+v, %v; want %d queued up to %d", round, i, info, err, want, m.last)
			}
			if i%50 == 49 {
				if err := s.db.Flush(); err != nil {
					t.Fatal(err)
				}
			}
		}
		m.check(t, s, fmt.Sprintf("round %d", round))
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if s, err = New(Config{Dir: dir}); err != nil {
			t.Fatal(err)
		}
		m.check(t, s, fmt.Sprintf("reopened after round %d", round))
	}
}

// TestAckRunsAmongAppends: acknowledgements of runs that reach above the
// last message committed, while appends race them, remove only messages
// named: every message not named stays, and the count of removed
// messages matches what the queue holds.
func TestAckRunsAmongAppends(t *testing.T) {
	ctx := context.Background()
	s, err := New(Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const appenders, appends = 4, 100
	var wg sync.WaitGroup
	for range appenders {
		wg.Go(func() {
			for range appends {
				if _, err := s.Append(ctx, "acme", items(7), store.Receipt{}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	// The acker reads up to 20 messages from its head and names every
	// number from the head to 10 above the last read, but every third,
	// until the appends end.
	named := map[uint64]bool{}
	var head uint64
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		qs, err := s.Read(ctx, "acme", "c", head, 20)
		if err != nil {
			t.Fatal(err)
		}
		if len(qs) == 0 {
			continue
		}
		last := qs[len(qs)-1].Seq
		seqs := slices.DeleteFunc(span(head+1, last+10), func(seq uint64) bool { return seq%3 == 0 })
		head = last
		if err := s.Ack(ctx, "acme", "c", 0, seqs); err != nil {
			t.Fatal(err)
		}
		for _, seq := range seqs {
			named[seq] = true
		}
	}
	qs, err := s.Read(ctx, "acme", "c", 0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	held := map[uint64]bool{}
	for _, q := range qs {
		held[q.Seq] = true
	}
	const total = appenders * appends * 7
	for seq := uint64(1); seq <= total; seq++ {
		if !held[seq] && !named[seq] {
			t.Fatalf("message %d, never acknowledged, is gone", seq)
		}
	}
	info, err := s.QueueInfo(ctx, "acme", "c")
	if err != nil || info.Len != len(qs) || info.MaxSeq != total {
		t.Fatalf("QueueInfo %+v, %v; the queue holds %d of %d", info, err, len(qs), total)
	}
	removed, err := readUint64(s.db, clientKey('k', "acme", "c"))
	if err != nil || removed != total-uint64(len(qs)) {
		t.Errorf("count of removed messages %d (%v), want %d", removed, err, total-uint64(len(qs)))
	}
	t.Logf("%d of %d messages stayed queued", len(qs), total)
}

// TestAckSpanDeletes: the batch of an acknowledgement looked up with an
// iterator holds a deletion per message it finds and per mark it finds,
// none for a number the queue does not hold, and no range deletion.
func TestAckSpanDeletes(t *testing.T) {
	s, err := New(Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m := newModel()
	m.add(t, s, 100)
	m.mark(t, s, 50, 60)
	m.ack(t, s, span(1, 10)...)
	for _, tc := range []struct {
		name       string
		seqs       []uint64
		found, del int64
	}{
		{"run from the head", span(11, 40), 30, 30},
		{"run with marks and a gap", without(span(41, 70), 55, 56), 28, 30},
		{"run behind messages acknowledged before", span(1, 30), 20, 20},
		{"numbers never given", span(101, 120), 0, 0},
	} {
		b := s.db.NewBatch()
		n, err := s.ackSpan(b, "acme", "c", tc.seqs)
		if err != nil {
			t.Fatal(err)
		}
		ranges, dels := batchKinds(t, b)
		if int64(n) != tc.found || ranges != 0 || dels != tc.del {
			t.Errorf("%s: %d found, %d range deletions, %d deletions; want %d found, none, %d", tc.name, n, ranges, dels, tc.found, tc.del)
		}
		b.Close()
	}
}

// batchKinds counts the range deletions and the deletions in b.
func batchKinds(t *testing.T, b *pebble.Batch) (ranges, dels int64) {
	t.Helper()
	r := b.Reader()
	for {
		kind, _, _, ok, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return ranges, dels
		}
		switch kind {
		case pebble.InternalKeyKindRangeDelete:
			ranges++
		case pebble.InternalKeyKindDelete:
			dels++
		}
	}
}

// TestCommitNumbersManyQueues: one append to more queues than numbering
// compares in turn numbers each queue's messages from its last, in the
// order given, and so does the next, after a reopen too.
func TestCommitNumbersManyQueues(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := New(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	const queues, each = 3 * scanQueues, 3
	var its []store.Item
	for range each {
		for q := range queues {
			its = append(its, store.Item{ClientID: fmt.Sprintf("c%d", q), Message: store.Message{Topic: "t", Payload: []byte("m"), Created: time.Now()}})
		}
	}
	for round := range 3 {
		if round == 2 {
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if s, err = New(Config{Dir: dir}); err != nil {
				t.Fatal(err)
			}
		}
		seqs, err := s.Append(ctx, "acme", its, store.Receipt{})
		if err != nil {
			t.Fatal(err)
		}
		for i, seq := range seqs {
			if want := uint64(round*each + i/queues + 1); seq != want {
				t.Fatalf("round %d: item %d (of %s) numbered %d, want %d", round, i, its[i].ClientID, seq, want)
			}
		}
	}
	for q := range queues {
		cid := fmt.Sprintf("c%d", q)
		info, err := s.QueueInfo(ctx, "acme", cid)
		if err != nil || info.Len != 3*each || info.MaxSeq != 3*each {
			t.Errorf("queue %s: %+v, %v; want %d queued", cid, info, err, 3*each)
		}
	}
}
