package broker

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
)

// BenchmarkIdleInstances measures what an idle tenant broker costs: heap and
// CPU per instance while nothing happens, for Roost's instances and, in the
// same run, for bare mochi-mqtt servers with default options.
//
//	go test -run '^$' -bench IdleInstances -benchtime 1x ./broker
func BenchmarkIdleInstances(b *testing.B) {
	const n = 500
	const idle = 3 * time.Second
	for _, kind := range []string{"roost", "mochi-default"} {
		b.Run(kind, func(b *testing.B) {
			for range b.N {
				heap, cpu := measureIdle(b, kind, n, idle)
				b.ReportMetric(heap/1024, "KiB/instance")
				b.ReportMetric(cpu*1000, "cpu-ms/s/1k-instances")
			}
		})
	}
}

func measureIdle(b *testing.B, kind string, n int, idle time.Duration) (heapPerInstance, cpuPerSecPer1k float64) {
	h := &Hub{log: discardLog(), now: time.Now}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	var closers []func()
	for i := range n {
		switch kind {
		case "roost":
			inst, err := newInstance(h, tenants.Tenant{Slug: fmt.Sprintf("t%04d", i), Plan: tenants.PlanFree})
			if err != nil {
				b.Fatal(err)
			}
			closers = append(closers, inst.close)
		default:
			srv := mqtt.New(&mqtt.Options{Logger: discardLog()})
			srv.AddListener(&handoff{srv: srv})
			if err := srv.Serve(); err != nil {
				b.Fatal(err)
			}
			closers = append(closers, func() { srv.Close() })
		}
	}
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	heapPerInstance = float64(int64(after.HeapInuse)-int64(before.HeapInuse)) / float64(n)

	start := testenv.CPUTime()
	time.Sleep(idle)
	used := testenv.CPUTime() - start
	cpuPerSecPer1k = used.Seconds() / idle.Seconds() * 1000 / float64(n)
	return heapPerInstance, cpuPerSecPer1k
}
