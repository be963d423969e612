package broker_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roosthub/roost/bench/mqttc"
	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
)

// liftRates raises a tenant's rate quotas out of a benchmark's way.
func liftRates(b testing.TB, s *stack, tenant string) {
	unlimited := int64(1 << 40)
	lift := map[string]*int64{"publish_rate": &unlimited, "tenant_publish_rate": &unlimited, "connect_rate": &unlimited,
		"bandwidth_in": &unlimited, "bandwidth_out": &unlimited, "messages_per_month": &unlimited}
	if _, err := s.store.AdminUpdateTenant(ctx, tenant, tenants.AdminTenantUpdate{Quotas: lift}); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkQuotaHooks: what the quota checks and metering cost. 32 MQTT 5
// publishers, each waiting for every PUBACK, send QoS 1 messages that one
// subscriber receives, with the hooks on and off in the same run (rates
// lifted, so nothing is refused). Compare msgs/s.
//
//	go test -run '^$' -bench QuotaHooks -benchtime 20000x -count 3 ./broker
func BenchmarkQuotaHooks(b *testing.B) {
	for _, mode := range []string{"off", "on"} {
		b.Run(mode, func(b *testing.B) {
			s := newStack(b, func(c *broker.Config) { c.Log = slog.New(slog.DiscardHandler) })
			broker.SetLimitsOff(s.hub, mode == "off")
			s.tenant("bench")
			liftRates(b, s, "bench")
			sub := mustV5(b, s.addr, "bench/sub", s.device("bench", "sub"), "sub")
			sub.sub(b, "m/#", 0)
			var got atomic.Int64
			go func() {
				for range sub.msgs {
					got.Add(1)
				}
			}()
			pubs := benchPublishers(b, s, "bench", 32)
			b.ResetTimer()
			publishEach(b, pubs, b.N, func(int) string { return "m/x" })
			for got.Load() < int64(b.N) {
				time.Sleep(time.Millisecond)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkConnect: connections through the ingress, 64 dialing at once,
// each closed (DISCONNECT, then close) once its CONNACK arrives; connects/s
// is connects a second. cpu-µs/connect is the CPU time the process (the
// hub and its clients alike) spent per connect, which other load on the
// machine disturbs far less than the rate: compare it A/B.
//
//	go test -run '^$' -bench 'Connect$' -benchtime 5000x ./broker
func BenchmarkConnect(b *testing.B) {
	s := newStack(b, func(c *broker.Config) { c.Log = slog.New(slog.DiscardHandler) })
	s.tenant("bench")
	liftRates(b, s, "bench")
	// Closed connections may linger a moment (see linger.go): they must
	// not count against the tenant's connections.
	s.setQuota("bench", "max_connections", 1<<40)
	secret := s.device("bench", "d", tenants.ClientIDsAny)
	cpu0 := testenv.CPUTime()
	connectAll(b, s.addr, "bench/d", secret)
	b.ReportMetric(float64((testenv.CPUTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/connect")
}

// connectAll makes b.N connections to addr as username, 64 dialing at
// once, each closed once its CONNACK arrives, and reports connects/s.
func connectAll(b *testing.B, addr, username, secret string) {
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	for range 64 {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				c, err := mqttc.Dial(context.Background(), addr, mqttc.Options{ClientID: fmt.Sprintf("c%d", i), Username: username, Password: secret})
				if err != nil {
					b.Error(err)
					return
				}
				c.Close()
			}
		})
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "connects/s")
}
