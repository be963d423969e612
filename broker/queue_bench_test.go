package broker_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/broker/store/memory"
	"github.com/roosthub/roost/broker/store/pebble"
	"github.com/roosthub/roost/broker/store/redis"
	"github.com/roosthub/roost/tenants"
)

// benchStores opens each session store for an end-to-end benchmark.
func benchStores(b *testing.B) map[string]func() broker.SessionStore {
	m := map[string]func() broker.SessionStore{
		"memory": func() broker.SessionStore { return memory.New() },
		"embedded": func() broker.SessionStore {
			s, err := pebble.New(pebble.Config{Dir: b.TempDir()})
			if err != nil {
				b.Fatal(err)
			}
			return s
		},
	}
	if url := os.Getenv("ROOST_TEST_REDIS_URL"); url != "" {
		m["redis"] = func() broker.SessionStore {
			s, err := redis.New(context.Background(), redis.Config{URL: url, Prefix: fmt.Sprintf("bench-%d", time.Now().UnixNano())})
			if err != nil {
				b.Fatal(err)
			}
			return s
		}
	}
	return m
}

// benchTenant makes a tenant whose queues hold what a benchmark sends.
func benchTenant(b *testing.B, s *stack) {
	s.tenant("bench")
	plan := tenants.PlanEnterprise
	unlimited := int64(1 << 40)
	lift := map[string]*int64{"publish_rate": &unlimited, "tenant_publish_rate": &unlimited,
		"bandwidth_in": &unlimited, "bandwidth_out": &unlimited}
	if _, err := s.store.AdminUpdateTenant(ctx, "bench", tenants.AdminTenantUpdate{Plan: &plan, Quotas: lift}); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkPersistentQueueIn: 32 MQTT 5 publishers, each waiting for every
// PUBACK, send 100-byte QoS 1 messages to 8 offline persistent subscribers
// (one each): every message is queued in the session store before its
// PUBACK. Compare msgs/s with memory's in the same run.
//
//	go test -run '^$' -bench PersistentQueue -benchtime 20000x ./broker
func BenchmarkPersistentQueueIn(b *testing.B) {
	const publishers, subscribers = 32, 8
	for _, name := range []string{"memory", "embedded", "redis"} {
		open, ok := benchStores(b)[name]
		if !ok {
			continue
		}
		b.Run(name, func(b *testing.B) {
			st := open()
			defer st.Close()
			s := newStack(b, func(c *broker.Config) { c.Sessions = st; c.Log = slog.New(slog.DiscardHandler) })
			benchTenant(b, s)
			for i := range subscribers {
				id := fmt.Sprintf("sub%d", i)
				c := mustV5(b, s.addr, "bench/"+id, s.device("bench", id), id, keepSession)
				c.sub(b, "q/"+id, 1)
				c.Disconnect(&paho.Disconnect{})
			}
			pubs := benchPublishers(b, s, "bench", publishers)
			b.ResetTimer()
			publishEach(b, pubs, b.N, func(i int) string { return fmt.Sprintf("q/sub%d", i%subscribers) })
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkPersistentQueueDrain: a persistent subscriber reconnects to
// b.N queued 100-byte QoS 1 messages and acknowledges each; the time is
// from its CONNECT to the last message. Compare msgs/s with memory's.
func BenchmarkPersistentQueueDrain(b *testing.B) {
	const round = 50_000 // below the 65,535 a session can hold
	for _, name := range []string{"memory", "embedded", "redis"} {
		open, ok := benchStores(b)[name]
		if !ok {
			continue
		}
		b.Run(name, func(b *testing.B) {
			st := open()
			defer st.Close()
			s := newStack(b, func(c *broker.Config) { c.Sessions = st; c.Log = slog.New(slog.DiscardHandler) })
			benchTenant(b, s)
			secret := s.device("bench", "sub")
			c := mustV5(b, s.addr, "bench/sub", secret, "sub", keepSession)
			c.sub(b, "q", 1)
			c.Disconnect(&paho.Disconnect{})
			pubs := benchPublishers(b, s, "bench", 16)
			var elapsed time.Duration
			for done := 0; done < b.N; {
				n := min(round, b.N-done)
				publishEach(b, pubs, n, func(int) string { return "q" })
				start := time.Now()
				sub := mustV5(b, s.addr, "bench/sub", secret, "sub", keepSession)
				for range n {
					select {
					case <-sub.msgs:
					case <-time.After(10 * time.Second):
						b.Fatalf("drain stalled")
					}
				}
				elapsed += time.Since(start)
				sub.Disconnect(&paho.Disconnect{})
				done += n
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
		})
	}
}

// benchPublishers connects n MQTT 5 publishers, each a device of its own.
func benchPublishers(b *testing.B, s *stack, tenant string, n int) []*v5 {
	pubs := make([]*v5, 0, n)
	for i := range n {
		id := fmt.Sprintf("pub%d", i)
		pubs = append(pubs, mustV5(b, s.addr, tenant+"/"+id, s.device(tenant, id), id))
	}
	return pubs
}

// publishEach sends n 100-byte QoS 1 messages, the publishers taking them
// in turn as each gets its PUBACK; topic names the i-th message's topic.
func publishEach(b *testing.B, pubs []*v5, n int, topic func(i int) string) {
	payload := make([]byte, 100)
	var next atomic.Int64
	var wg sync.WaitGroup
	for _, p := range pubs {
		wg.Go(func() {
			for {
				i := int(next.Add(1))
				if i > n {
					return
				}
				r, err := p.Publish(context.Background(), &paho.Publish{Topic: topic(i), QoS: 1, Payload: payload})
				if err != nil || r.ReasonCode >= 0x80 {
					b.Errorf("publish: %v %+v", err, r)
					return
				}
			}
		})
	}
	wg.Wait()
}
