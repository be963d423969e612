package redis_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/roosthub/roost/broker/store"
	"github.com/roosthub/roost/broker/store/redis"
	"github.com/roosthub/roost/internal/testenv"
)

// BenchmarkAppendOne: one writer appends one 13-byte message at a time to
// one queue (an outbox at window 1), against a PING: what an Append costs
// beyond its round trip. cpu-ns/op is the CPU time the test process (not
// Redis) spent on an append.
//
//	go test -run '^$' -bench AppendOne -count 3 ./broker/store/redis
func BenchmarkAppendOne(b *testing.B) {
	url := os.Getenv("ROOST_TEST_REDIS_URL")
	if url == "" {
		b.Skip("ROOST_TEST_REDIS_URL is not set")
	}
	ctx := context.Background()
	b.Run("op=ping", func(b *testing.B) {
		opts, err := goredis.ParseURL(url)
		if err != nil {
			b.Fatal(err)
		}
		rdb := goredis.NewClient(opts)
		defer rdb.Close()
		for b.Loop() {
			if err := rdb.Ping(ctx).Err(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("op=append", func(b *testing.B) {
		s, err := redis.New(ctx, redis.Config{URL: url, Prefix: fmt.Sprintf("bench-%d", time.Now().UnixNano())})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		item := store.Item{ClientID: "outbox", Message: store.Message{Topic: "t/1", Payload: []byte(`{"n":1234567}`), QoS: 1, Created: time.Now()}}
		cpu0 := testenv.CPUTime()
		for b.Loop() {
			if _, err := s.Append(ctx, "bench", []store.Item{item}, store.Receipt{}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(testenv.CPUTime()-cpu0)/float64(b.N), "cpu-ns/op")
	})
}

// BenchmarkAppendParallel: 32 writers (a broker's committers with their
// publishers waiting) append one message at a time each, to four queues.
// trips/op is the round trips to Redis an append costs (a round trip is a
// write and a read); cpu-ns/op the CPU time the test process (not Redis)
// spent on an append, user and system.
//
//	go test -run '^$' -bench AppendParallel -count 3 ./broker/store/redis
func BenchmarkAppendParallel(b *testing.B) {
	url := os.Getenv("ROOST_TEST_REDIS_URL")
	if url == "" {
		b.Skip("ROOST_TEST_REDIS_URL is not set")
	}
	ctx := context.Background()
	s, err := redis.New(ctx, redis.Config{URL: url, Prefix: fmt.Sprintf("bench-%d", time.Now().UnixNano())})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	trips := s.CountTrips()
	b.SetParallelism(max(1, 32/runtime.GOMAXPROCS(0)))
	var writer atomic.Int64
	cpu0 := testenv.CPUTime()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		queue := fmt.Sprintf("outbox-%d", writer.Add(1)%4)
		item := store.Item{ClientID: queue, Message: store.Message{Topic: "t/1", Payload: []byte(`{"n":1234567}`), QoS: 1, Created: time.Now()}}
		for pb.Next() {
			if _, err := s.Append(ctx, "bench", []store.Item{item}, store.Receipt{}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(testenv.CPUTime()-cpu0)/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(trips.Singles.Load()+trips.Pipelines.Load())/float64(b.N), "trips/op")
}
