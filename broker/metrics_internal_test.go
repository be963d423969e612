package broker

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestMetricsSeriesBounded: with 1,000 metered tenants the collector emits
// the busiest 20 by name and sums the rest under "_other": the series count
// does not grow with the number of tenants, and nothing is lost in the sum.
func TestMetricsSeriesBounded(t *testing.T) {
	h := &Hub{log: discardLog(), now: time.Now, cfg: Config{Events: discard{}}, in: &ingress{hs: newHandshakes(1, 1, 1, time.Second, discardLog())},
		reg: newRegistry(Config{Now: time.Now, Log: discardLog()}, nil), changes: newChangeApplier(Config{Now: time.Now, Log: discardLog()}, nil, nil)}
	var total int64
	for i := range 1000 {
		m := h.meterOf(fmt.Sprintf("t%04d", i))
		for range i % 7 {
			m.in(10)
		}
		m.out(1)
		total += int64(i%7) + 1
	}
	busiest := h.meterOf("t0999")
	for range 100 {
		busiest.in(1)
	}
	total += 100
	h.quotaHit("t0999", "d", "c", "publish_rate", 5) // the busiest: a series of its own
	h.quotaHit("t0001", "d", "c", "publish_rate", 5) // summed into _other
	h.quotaHit("t0002", "d", "c", "publish_rate", 5)
	c := h.Collector(20)
	n := testutil.CollectAndCount(c) - 2 // the two roost_quota_exceeded_total series
	const perTenant = 12                 // connections, 2 messages, 2 bytes, throttled, denied, auth failures, 2 dropped, queued, session claims
	const totals = 7                     // tenants metered, brokers, forwarded connections, forwards, change retries, fenced writes, lease refusals

	handshakes := 1 + int(nDropReasons) + 2 // in handshake, dropped by reason, attempt-rate keys by scope
	if want := 21*perTenant + totals + handshakes; n != want {
		t.Errorf("%d series for 1,000 tenants, want %d (20 tenants + _other, %d each, and %d totals)", n, want, perTenant, totals)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	own := false
	hits := map[string]float64{}
	for _, f := range families {
		if f.GetName() == "roost_quota_exceeded_total" {
			for _, m := range f.GetMetric() {
				hits[m.GetLabel()[1].GetValue()] = m.GetCounter().GetValue()
			}
		}
		if f.GetName() != "roost_messages_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			sum += m.GetCounter().GetValue()
			if labels["tenant"] == "t0999" && labels["direction"] == "in" && int64(m.GetCounter().GetValue()) == busiest.totalIn.Load() {
				own = true
			}
		}
	}
	if !own {
		t.Error("the busiest tenant has no series of its own")
	}
	if fmt.Sprint(hits) != "map[_other:2 t0999:1]" {
		t.Errorf("quota hits by tenant: %v", hits)
	}
	if int64(sum) != total {
		t.Errorf("messages over all series %v, want %d", sum, total)
	}
}
