package broker

import (
	"fmt"
	"testing"
	"time"
)

// TestConnectionTimeSpread: the tenants' connection time reaches the store
// spread over the flush period, each tenant in its own phase, not in one
// burst of a row per tenant.
func TestConnectionTimeSpread(t *testing.T) {
	const tenants, every = 1000, 30 * time.Second
	perSecond := map[time.Duration]int{}
	for i := range tenants {
		phase := connPhase(fmt.Sprintf("tenant-%d", i), every)
		if phase < 0 || phase >= every {
			t.Fatalf("phase %v outside [0, %v)", phase, every)
		}
		perSecond[phase.Truncate(time.Second)]++
	}
	if len(perSecond) != 30 {
		t.Errorf("phases in %d of the period's 30 seconds, want all", len(perSecond))
	}
	for s, n := range perSecond {
		if n > 3*tenants/30 {
			t.Errorf("%d of %d tenants flush in second %v of the period, want about %d", n, tenants, s, tenants/30)
		}
	}
	if connPhase("acme", 0) != 0 {
		t.Error("a zero period must give a zero phase")
	}
}

// TestConnectionTimeFinalFlush: connection time waits for the tenant's
// turn, except at the final flush, which takes every whole second.
func TestConnectionTimeFinalFlush(t *testing.T) {
	start := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	m := &meter{tenant: "acme", monthStart: monthOf(start), connEvery: 30 * time.Second, connFlushed: start}
	m.cur.Store(newBucket(start.Truncate(time.Hour), 0))
	m.live.Store(2)
	if d := m.take(start, false); len(d) != 0 {
		t.Fatalf("first flush %+v, want nothing", d)
	}
	if d := m.take(start.Add(1500*time.Millisecond), false); len(d) != 0 {
		t.Fatalf("flush before the tenant's turn %+v, want nothing", d)
	}
	d := m.take(start.Add(2*time.Second), true)
	if len(d) != 1 || d[0].ConnectionSeconds != 4 {
		t.Fatalf("final flush %+v, want 4 connection-seconds (2 connections for 2 s)", d)
	}
	m.live.Store(1)
	if d := m.take(start.Add(20*time.Second), false); len(d) != 0 {
		t.Fatalf("flush 18 s after the last %+v, want nothing before 30 s", d)
	}
	if d := m.take(start.Add(33*time.Second), false); len(d) != 1 || d[0].ConnectionSeconds != 31 {
		t.Fatalf("flush at the tenant's turn %+v, want 31 connection-seconds", d)
	}
}
