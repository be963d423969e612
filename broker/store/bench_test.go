package store_test

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roosthub/roost/broker/store"
	"github.com/roosthub/roost/broker/store/memory"
	"github.com/roosthub/roost/broker/store/pebble"
	"github.com/roosthub/roost/broker/store/redis"
)

// backend is a session store under benchmark.
type backend interface {
	Append(ctx context.Context, tenant string, items []store.Item, r store.Receipt) ([]uint64, error)
	Read(ctx context.Context, tenant, clientID string, after uint64, limit int) ([]store.Queued, error)
	Ack(ctx context.Context, tenant, clientID string, epoch uint64, seqs []uint64) error
	Close() error
}

func backends(b *testing.B) map[string]func() backend {
	m := map[string]func() backend{
		"memory": func() backend { return memory.New() },
		"embedded": func() backend {
			s, err := pebble.New(pebble.Config{Dir: b.TempDir()})
			if err != nil {
				b.Fatal(err)
			}
			return s
		},
	}
	if url := os.Getenv("ROOST_TEST_REDIS_URL"); url != "" {
		m["redis"] = func() backend {
			s, err := redis.New(context.Background(), redis.Config{URL: url, Prefix: fmt.Sprintf("bench-%d", time.Now().UnixNano())})
			if err != nil {
				b.Fatal(err)
			}
			return s
		}
	}
	return m
}

// BenchmarkQueueIn: 64 publishers each append one 100-byte message at a time
// to one of 100 sessions' queues; the figure to compare is msgs/s against
// memory's in the same run.
//
//	go test -run '^$' -bench Queue -benchtime 2s ./broker/store
func BenchmarkQueueIn(b *testing.B) {
	for name, open := range backends(b) {
		b.Run(name, func(b *testing.B) {
			s := open()
			defer s.Close()
			payload := make([]byte, 100)
			var n atomic.Int64
			b.SetParallelism(32) // 64 goroutines on 2 cores
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := n.Add(1)
					item := store.Item{ClientID: fmt.Sprintf("c%d", i%100), Message: store.Message{Topic: "t", Payload: payload, QoS: 1, Created: time.Now()}}
					if _, err := s.Append(context.Background(), "bench", []store.Item{item}, store.Receipt{}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkQueueDrain: one session drains its queue 100 messages at a time,
// acknowledging what it read.
func BenchmarkQueueDrain(b *testing.B) {
	for name, open := range backends(b) {
		b.Run(name, func(b *testing.B) {
			s := open()
			defer s.Close()
			payload := make([]byte, 100)
			batch := make([]store.Item, 1000)
			for i := range batch {
				batch[i] = store.Item{ClientID: "c", Message: store.Message{Topic: "t", Payload: payload, QoS: 1, Created: time.Now()}}
			}
			for filled := 0; filled < b.N; filled += len(batch) {
				if _, err := s.Append(context.Background(), "bench", batch, store.Receipt{}); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			var after uint64
			for done := 0; done < b.N; {
				qs, err := s.Read(context.Background(), "bench", "c", after, 100)
				if err != nil || len(qs) == 0 {
					b.Fatalf("read: %v (%d)", err, len(qs))
				}
				after = qs[len(qs)-1].Seq
				seqs := make([]uint64, len(qs))
				for i, q := range qs {
					seqs[i] = q.Seq
				}
				if err := s.Ack(context.Background(), "bench", "c", 0, seqs); err != nil {
					b.Fatal(err)
				}
				done += len(qs)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
