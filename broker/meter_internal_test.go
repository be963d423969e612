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
// turn, once a period, except at the final flush, which takes every whole
// second.
func TestConnectionTimeFinalFlush(t *testing.T) {
	start := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC) // a multiple of 30 s
	m := &meter{tenant: "acme", monthStart: monthOf(start), last: start, connEvery: 30 * time.Second, connPhase: 10 * time.Second}
	m.cur.Store(newBucket(start.Truncate(time.Hour), 0))
	m.live.Store(2)
	if d := m.take(start.Add(1500*time.Millisecond), false); len(d) != 0 {
		t.Fatalf("flush before the tenant's turn %+v, want nothing", d)
	}
	d := m.take(start.Add(2*time.Second), true)
	if len(d) != 1 || d[0].ConnectionSeconds != 4 {
		t.Fatalf("final flush %+v, want 4 connection-seconds (2 connections for 2 s)", d)
	}
	m.live.Store(1)
	if d := m.take(start.Add(9*time.Second), false); len(d) != 0 {
		t.Fatalf("flush at 10:00:09 %+v, want nothing before the turn at 10:00:10", d)
	}
	if d := m.take(start.Add(11*time.Second), false); len(d) != 1 || d[0].ConnectionSeconds != 9 {
		t.Fatalf("flush at the tenant's turn %+v, want 9 connection-seconds", d)
	}
	if d := m.take(start.Add(39*time.Second), false); len(d) != 0 {
		t.Fatalf("second flush in one period %+v, want nothing", d)
	}
}

// TestConnectionTimeKeepsItsTurn: after an outage that ended every
// tenant's connections, each tenant still flushes at its own phase, not
// all at the first flush after they come back.
func TestConnectionTimeKeepsItsTurn(t *testing.T) {
	h := &Hub{cfg: Config{UsageInterval: time.Second}}
	start := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	clock := start
	h.now = func() time.Time { return clock }
	const n = 300
	meters := make([]*meter, n)
	for i := range meters {
		meters[i] = h.meterOf(fmt.Sprintf("tenant-%d", i))
		meters[i].live.Store(1)
	}
	// Every tenant flushes once in the first period; then the outage.
	for clock = start; clock.Before(start.Add(30 * time.Second)); clock = clock.Add(time.Second) {
		for _, m := range meters {
			m.take(clock, false)
		}
	}
	for _, m := range meters {
		m.live.Store(0)
	}
	for ; clock.Before(start.Add(150 * time.Second)); clock = clock.Add(time.Second) {
		for _, m := range meters {
			m.take(clock, false)
		}
	}
	for _, m := range meters {
		m.live.Store(1)
	}
	// Back together: count the flushes of each second of one period.
	most := 0
	for end := clock.Add(30 * time.Second); clock.Before(end); clock = clock.Add(time.Second) {
		flushed := 0
		for _, m := range meters {
			for _, d := range m.take(clock, false) {
				if d.ConnectionSeconds > 0 {
					flushed++
				}
			}
		}
		most = max(most, flushed)
	}
	if most > 3*n/30 {
		t.Errorf("%d of %d tenants flushed connection time in one second after an outage, want about %d", most, n, n/30)
	}
}
