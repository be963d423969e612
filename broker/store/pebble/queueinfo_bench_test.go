package pebble_test

import (
	"context"
	"testing"
	"time"

	"github.com/roosthub/roost/broker/store"
	"github.com/roosthub/roost/broker/store/pebble"
)

// BenchmarkQueueInfo: QueueInfo of a queue 10k messages long, as the
// broker asks it per copy it queues through the fabric, per outbox
// backlog and per session in a tenant's queue summary; "acked" has the
// 10k behind 10k more acknowledged (their deletions not yet compacted).
//
//	go test -run '^$' -bench QueueInfo ./broker/store/pebble
func BenchmarkQueueInfo(b *testing.B) {
	for _, bc := range []struct {
		name          string
		queued, acked int
	}{{"queued=10k", 10_000, 0}, {"queued=10k,acked=10k", 10_000, 10_000}} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			s, err := pebble.New(pebble.Config{Dir: b.TempDir()})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			msg := store.Message{Topic: "t/1", Payload: make([]byte, 100), QoS: 1, Created: time.Now()}
			var seqs []uint64
			for n := bc.queued + bc.acked; n > 0; n -= 1000 {
				items := make([]store.Item, min(n, 1000))
				for i := range items {
					items[i] = store.Item{ClientID: "sub", Message: msg}
				}
				got, err := s.Append(ctx, "acme", items, store.Receipt{})
				if err != nil {
					b.Fatal(err)
				}
				seqs = append(seqs, got...)
			}
			if err := s.Ack(ctx, "acme", "sub", 0, seqs[:bc.acked]); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for b.Loop() {
				info, err := s.QueueInfo(ctx, "acme", "sub")
				if err != nil || info.Len != bc.queued {
					b.Fatalf("QueueInfo: %+v, %v; want %d queued", info, err, bc.queued)
				}
			}
		})
	}
}
