package redis_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/roosthub/roost/broker/store"
	"github.com/roosthub/roost/broker/store/redis"
)

// BenchmarkAppendOne: one writer appends one 13-byte message at a time to
// one queue (an outbox at window 1), against a PING: what an Append costs
// beyond its round trip.
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
		for b.Loop() {
			if _, err := s.Append(ctx, "bench", []store.Item{item}, store.Receipt{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
