package broker_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roosthub/roost/bench/mqttc"
	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/internal/testenv"
)

// BenchmarkP2PQoS1 measures QoS 1 messages from one publisher to one
// subscriber through a hub, with write batching on and off, for a
// publisher that waits for each PUBACK (window=1, as roost-bench's p2p
// scenario) and one that keeps window publishes in flight. It reports
// messages a second, the hub's socket writes per message (to both
// connections) and the process's CPU time per message.
//
//	go test -run '^$' -bench P2PQoS1 -benchtime 20000x -count 3 ./broker/
func BenchmarkP2PQoS1(b *testing.B) {
	for _, window := range []int{1, 16} {
		for _, on := range []bool{false, true} {
			b.Run(fmt.Sprintf("window=%d/batching=%t", window, on), func(b *testing.B) {
				was := broker.SetWriteBatching(on)
				defer broker.SetWriteBatching(was)
				benchP2P(b, window)
			})
		}
	}
}

// benchDialer connects acme's devices to s as MQTT clients closed when
// the benchmark ends, each device created on first use.
func benchDialer(ctx context.Context, b *testing.B, s *stack) func(device string) *mqttc.Client {
	return func(device string) *mqttc.Client {
		c, err := mqttc.Dial(ctx, s.addr, mqttc.Options{ClientID: device, Username: user("acme", device), Password: s.device("acme", device), KeepAlive: 60})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		return c
	}
}

func benchP2P(b *testing.B, window int) {
	s := newStack(b)
	s.tenant("acme")
	s.liftPublishLimits("acme", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dial := benchDialer(ctx, b, s)
	sub := dial("sub")
	var got atomic.Int64
	all := make(chan struct{})
	// ahead keeps the publishers at most 512 messages ahead of the
	// subscriber: mochi drops a message for a subscriber whose write queue
	// (1,024) is full, and a publisher that outruns its subscriber would
	// measure that instead.
	ahead := make(chan struct{}, 512)
	sub.OnMessage = func(string, []byte) {
		<-ahead
		if got.Add(1) == int64(b.N) {
			close(all)
		}
	}
	if code, err := sub.Subscribe(ctx, "p2p", 1); err != nil || code != 1 {
		b.Fatalf("subscribe: %v (code %#x)", err, code)
	}
	pub := dial("pub")
	writes := func() int64 {
		return broker.SocketWrites(s.hub, "acme", "pub") + broker.SocketWrites(s.hub, "acme", "sub")
	}
	before, cpu := writes(), testenv.CPUTime()
	b.ResetTimer()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range window {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				ahead <- struct{}{}
				if err := pub.Publish(ctx, "p2p", []byte("0123456789abcdef"), 1); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	select {
	case <-all:
	case <-ctx.Done():
		b.Fatalf("%d of %d messages delivered (%d dropped by mochi)", got.Load(), b.N, broker.Dropped(s.hub, "acme"))
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	b.ReportMetric(float64(writes()-before)/float64(b.N), "writes/msg")
	b.ReportMetric(float64((testenv.CPUTime()-cpu).Microseconds())/float64(b.N), "cpu-µs/msg")
}
