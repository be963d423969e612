package pebble_test

import (
	"context"
	"testing"
	"time"

	"github.com/roosthub/roost/broker/store"
	"github.com/roosthub/roost/broker/store/pebble"
)

// BenchmarkAck: a subscriber acknowledging its queue ten messages an
// Ack, in order, behind the deletions of the acknowledgements before
// (not yet compacted), as a session draining its backlog does.
//
//	go test -run '^$' -bench Ack ./broker/store/pebble
func BenchmarkAck(b *testing.B) {
	ctx := context.Background()
	s, err := pebble.New(pebble.Config{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	msg := store.Message{Topic: "t/1", Payload: make([]byte, 100), QoS: 1, Created: time.Now()}
	items := make([]store.Item, 1000)
	for i := range items {
		items[i] = store.Item{ClientID: "sub", Message: msg}
	}
	var seqs []uint64
	b.ResetTimer()
	for b.Loop() {
		if len(seqs) < 10 {
			b.StopTimer()
			got, err := s.Append(ctx, "acme", items, store.Receipt{})
			if err != nil {
				b.Fatal(err)
			}
			seqs = append(seqs, got...)
			b.StartTimer()
		}
		if err := s.Ack(ctx, "acme", "sub", 0, seqs[:10]); err != nil {
			b.Fatal(err)
		}
		seqs = seqs[10:]
	}
}
