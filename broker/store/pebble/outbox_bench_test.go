package pebble_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/roosthub/roost/broker/store"
	"github.com/roosthub/roost/broker/store/pebble"
	"github.com/roosthub/roost/internal/testenv"
)

// benchStore is a store whose log is written but not fsynced within the
// benchmark (an hour's sync interval), so that ns/op is the store's CPU
// rather than the disk's.
func benchStore(b *testing.B) *pebble.Store {
	b.Helper()
	s, err := pebble.New(pebble.Config{Dir: b.TempDir(), SyncInterval: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// reportCPU reports the CPU time used since start per op, as cpu-ns/op
// (the store's background work, its flushes and compactions, included).
func reportCPU(b *testing.B, start time.Duration) {
	b.Helper()
	b.ReportMetric(float64(testenv.CPUTime()-start)/float64(b.N), "cpu-ns/op")
}

// BenchmarkAppend: appends of one message each (an outbox copy), and of
// one message to 16 sessions (a fan-out), one append at a time.
//
//	go test -run '^$' -bench Append -benchmem ./broker/store/pebble
func BenchmarkAppend(b *testing.B) {
	for _, clients := range []int{1, 16} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			ctx := context.Background()
			s := benchStore(b)
			msg := store.Message{Topic: "t/1", Payload: make([]byte, 100), QoS: 1, Created: time.Now()}
			items := make([]store.Item, clients)
			for i := range items {
				items[i] = store.Item{ClientID: fmt.Sprintf("sub-%d", i), Message: msg}
			}
			start := testenv.CPUTime()
			for b.Loop() {
				if _, err := s.Append(ctx, "acme", items, store.Receipt{}); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, start)
		})
	}
}

// BenchmarkOutboxCycle is the outbox's use of the store, per message:
// for each of several outboxes in turn, an append of a batch of messages
// (as a group commit writes them under load), a read of the batch from
// the outbox's head and its acknowledgement, as the webhook worker does.
// The outboxes take turns, so that the memtable holds the deletions of
// many queues; ns/op and cpu-ns/op are per message. The last case, of
// small messages in batches of 64, fills the memtable with the most
// acknowledgements of runs (see rangeAckMin in pebble.go).
//
//	go test -run '^$' -bench OutboxCycle -benchmem ./broker/store/pebble
func BenchmarkOutboxCycle(b *testing.B) {
	for _, bc := range []struct{ batch, payload int }{{1, 100}, {10, 100}, {100, 100}, {64, 8}} {
		batch := bc.batch
		b.Run(fmt.Sprintf("batch=%d,payload=%d", batch, bc.payload), func(b *testing.B) {
			ctx := context.Background()
			s := benchStore(b)
			msg := store.Message{Topic: "t/1", Payload: make([]byte, bc.payload), QoS: 1, Created: time.Now()}
			const outboxes = 4
			var heads [outboxes]uint64
			var items [outboxes][]store.Item
			for o := range items {
				items[o] = make([]store.Item, batch)
				for i := range items[o] {
					items[o][i] = store.Item{ClientID: fmt.Sprintf("outbox-%d", o), Message: msg}
				}
			}
			n := 0
			start := testenv.CPUTime()
			for b.Loop() {
				if n++; n%batch != 0 {
					continue
				}
				o := n / batch % outboxes
				cid := items[o][0].ClientID
				if _, err := s.Append(ctx, "acme", items[o], store.Receipt{}); err != nil {
					b.Fatal(err)
				}
				qs, err := s.Read(ctx, "acme", cid, heads[o], batch)
				if err != nil || len(qs) != batch {
					b.Fatalf("read %d messages (%v), want %d", len(qs), err, batch)
				}
				seqs := make([]uint64, len(qs))
				for i, q := range qs {
					seqs[i] = q.Seq
				}
				if err := s.Ack(ctx, "acme", cid, 0, seqs); err != nil {
					b.Fatal(err)
				}
				heads[o] = seqs[len(seqs)-1]
			}
			reportCPU(b, start)
		})
	}
}

// BenchmarkAckBatch: acknowledgements of a run of messages read from the
// queue's head, as the outbox worker makes them (a batch of up to 100)
// and a session draining its backlog does, each behind the deletions of
// those before (not yet compacted).
//
//	go test -run '^$' -bench AckBatch -benchmem ./broker/store/pebble
func BenchmarkAckBatch(b *testing.B) {
	for _, n := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("seqs=%d", n), func(b *testing.B) {
			ctx := context.Background()
			s := benchStore(b)
			msg := store.Message{Topic: "t/1", Payload: make([]byte, 100), QoS: 1, Created: time.Now()}
			items := make([]store.Item, 10*n)
			for i := range items {
				items[i] = store.Item{ClientID: "outbox", Message: msg}
			}
			var seqs []uint64
			for b.Loop() {
				if len(seqs) < n {
					b.StopTimer()
					got, err := s.Append(ctx, "acme", items, store.Receipt{})
					if err != nil {
						b.Fatal(err)
					}
					seqs = append(seqs, got...)
					b.StartTimer()
				}
				if err := s.Ack(ctx, "acme", "outbox", 0, seqs[:n]); err != nil {
					b.Fatal(err)
				}
				seqs = seqs[n:]
			}
		})
	}
}
