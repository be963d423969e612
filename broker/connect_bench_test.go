package broker_test

import (
	"log/slog"
	"net"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/roosthub/roost/bench"
	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// BenchmarkConnectMochi is BenchmarkConnect against bare mochi-mqtt tuned
// as Roost tunes a tenant's instance (as roost-bench -serve-mochi
// -mochi-tuned runs it): the same clients, in the same process, so that
// the difference in cpu-µs/connect between the two is the brokers'. Run
// both in one invocation and compare them side by side:
//
//	go test -run '^$' -bench 'Connect(Mochi)?$' -benchtime 10000x -count 5 ./broker
func BenchmarkConnectMochi(b *testing.B) {
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumClientWritesPending = 1024
	caps.TopicAliasMaximum = 64
	srv := mqtt.New(&mqtt.Options{Capabilities: caps, Logger: slog.New(slog.DiscardHandler)})
	if err := srv.AddHook(new(bench.AllowAll), nil); err != nil {
		b.Fatal(err)
	}
	// mochi's TCP listener takes an address: a free one, found by
	// listening on port 0 and closing.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "bench", Address: addr})); err != nil {
		b.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { srv.Close() })
	cpu0 := cpuTime()
	connectAll(b, addr, "bench/d", "secret")
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/connect")
}

// BenchmarkConnectServe is BenchmarkConnect with the hub's events going
// where `roost serve` sends them (cmd/roost/node.go): the in-memory log of
// each tenant's recent events and the Recorder, which stores them in the
// directory (SQLite here) for GET /events. It is the Roost side of the
// comparison with BenchmarkConnectMochi:
//
//	go test -run '^$' -bench 'Connect(Serve|Mochi)$' -benchtime 5000x -count 5 ./broker
func BenchmarkConnectServe(b *testing.B) {
	s := newStack(b, func(c *broker.Config) {
		c.Log = slog.New(slog.DiscardHandler)
		rec := events.NewRecorder(events.RecorderConfig{Writer: c.Directory.(events.Writer)})
		// Closed after the hub (cleanups run last first), before the store.
		b.Cleanup(func() { rec.Close() })
		c.Events = events.Tee{events.NewMemory(1000), rec}
	})
	s.tenant("bench")
	liftRates(b, s, "bench")
	s.setQuota("bench", "max_connections", 1<<40)
	secret := s.device("bench", "d", tenants.ClientIDsAny)
	cpu0 := cpuTime()
	connectAll(b, s.addr, "bench/d", secret)
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/connect")
}
