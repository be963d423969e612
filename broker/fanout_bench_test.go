package broker_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roosthub/roost/internal/testenv"
)

// BenchmarkFanOut measures one publisher's QoS 0 messages copied to subs
// subscribers of one topic through a hub: copies a second, and the
// process's CPU time per copy, the publisher and subscribers included
// (compare within one run, e.g. two builds side by side). The publisher
// keeps at most 64 messages ahead of the subscribers, so that no copy is
// dropped for a full write queue.
//
//	go test -run '^$' -bench FanOut -benchtime 2000x -count 5 ./broker/
func BenchmarkFanOut(b *testing.B) {
	for _, subs := range []int{64} {
		b.Run(fmt.Sprintf("subs=%d", subs), func(b *testing.B) { benchFanOut(b, subs) })
	}
}

func benchFanOut(b *testing.B, subs int) {
	s := newStack(b)
	s.tenant("acme")
	s.liftPublishLimits("acme", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dial := benchDialer(ctx, b, s)
	var got atomic.Int64
	progress := make(chan struct{}, 1)
	for i := range subs {
		c := dial(fmt.Sprintf("sub%d", i))
		c.OnMessage = func(string, []byte) {
			got.Add(1)
			select {
			case progress <- struct{}{}:
			default:
			}
		}
		if code, err := c.Subscribe(ctx, "fan", 0); err != nil || code != 0 {
			b.Fatalf("subscribe: %v (code %#x)", err, code)
		}
	}
	pub := dial("pub")
	payload := []byte("0123456789abcdef")
	wait := func(copies int64) {
		for got.Load() < copies {
			select {
			case <-progress:
			case <-ctx.Done():
				b.Fatalf("%d of %d copies delivered", got.Load(), copies)
			}
		}
	}
	cpu := testenv.CPUTime()
	b.ResetTimer()
	for i := range b.N {
		wait(int64(i-64) * int64(subs))
		if err := pub.Publish(ctx, "fan", payload, 0); err != nil {
			b.Fatal(err)
		}
	}
	wait(int64(b.N) * int64(subs))
	b.StopTimer()
	copies := float64(b.N) * float64(subs)
	b.ReportMetric(copies/b.Elapsed().Seconds(), "copies/s")
	b.ReportMetric(float64((testenv.CPUTime()-cpu).Nanoseconds())/copies, "cpu-ns/copy")
}
