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

// TestConnectionTimeAcrossTheHour: connection time is booked to the hour
// it was spent in, whole seconds with the fraction carried, though it is
// written only at the tenant's turn (or the final flush): the first flush
// after the hour turns does not give the old hour's time to the new one,
// nor the turn's wait the new hour's to the old.
func TestConnectionTimeAcrossTheHour(t *testing.T) {
	// The tenant's turns are at 10 and 40 s past the minute.
	tests := []struct {
		name  string
		live  int64
		start time.Time // when the connections come, at a flush
		final time.Time // the final flush, zero for none
		// want is the connection-seconds by hour; written, when they
		// were written (at the tenant's turns and the final flush).
		want    map[time.Time]int64
		written []time.Time
	}{
		{
			name: "across a month's end", live: 2,
			start: time.Date(2026, 11, 30, 23, 59, 50, 0, time.UTC),
			want: map[time.Time]int64{
				time.Date(2026, 11, 30, 23, 0, 0, 0, time.UTC): 20, // 2 connections for 10 s
				time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC):   40, // and for 20 s
			},
			written: []time.Time{
				time.Date(2026, 12, 1, 0, 0, 10, 300e6, time.UTC), // the first flush of the turn at 00:00:10
				time.Date(2026, 12, 1, 0, 0, 40, 600e6, time.UTC),
			},
		},
		{
			name: "fractions carried", live: 1,
			start: time.Date(2026, 12, 4, 10, 59, 50, 500e6, time.UTC),
			want: map[time.Time]int64{
				time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC): 9,  // 9.5 s, the half carried
				time.Date(2026, 12, 4, 11, 0, 0, 0, time.UTC): 20, // 20 s and the half; the other half waits
			},
			written: []time.Time{
				time.Date(2026, 12, 4, 11, 0, 10, 100e6, time.UTC),
				time.Date(2026, 12, 4, 11, 0, 40, 600e6, time.UTC),
			},
		},
		{
			name: "final flush after the hour's turn", live: 2,
			start: time.Date(2026, 12, 4, 10, 59, 50, 0, time.UTC),
			final: time.Date(2026, 12, 4, 11, 0, 5, 0, time.UTC),
			want: map[time.Time]int64{
				time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC): 20,
				time.Date(2026, 12, 4, 11, 0, 0, 0, time.UTC): 10,
			},
			written: []time.Time{time.Date(2026, 12, 4, 11, 0, 5, 0, time.UTC)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &meter{tenant: "acme", monthStart: monthOf(tt.start), last: tt.start, connEvery: 30 * time.Second, connPhase: 10 * time.Second}
			m.cur.Store(newBucket(tt.start.Truncate(time.Hour), 0))
			m.live.Store(tt.live)
			got := map[time.Time]int64{}
			var written []time.Time
			take := func(now time.Time, final bool) {
				for _, d := range m.take(now, final) {
					if d.ConnectionSeconds > 0 {
						got[d.Hour] += d.ConnectionSeconds
						if len(written) == 0 || !written[len(written)-1].Equal(now) {
							written = append(written, now)
						}
					}
				}
			}
			// Flushes every 0.7 s, so that the hour turns between two;
			// the connections end at a flush at 20 s past the hour (or
			// at the final flush).
			end := tt.start.Truncate(time.Minute).Add(time.Minute + 20*time.Second)
			if !tt.final.IsZero() {
				end = tt.final
			}
			clock := tt.start.Add(700 * time.Millisecond)
			for ; clock.Before(end); clock = clock.Add(700 * time.Millisecond) {
				take(clock, false)
			}
			if !tt.final.IsZero() {
				take(tt.final, true)
			} else {
				take(end, false)
				m.live.Store(0)
				for clock = end.Add(time.Second); clock.Before(end.Add(25 * time.Second)); clock = clock.Add(700 * time.Millisecond) {
					take(clock, false)
				}
			}
			if len(got) != len(tt.want) {
				t.Errorf("connection-seconds by hour %v, want %v", got, tt.want)
			}
			for hour, want := range tt.want {
				if got[hour] != want {
					t.Errorf("connection-seconds of %v: got %d, want %d", hour.Format(time.DateTime), got[hour], want)
				}
			}
			if fmt.Sprint(written) != fmt.Sprint(tt.written) {
				t.Errorf("written at %v, want at %v (the tenant's turns)", written, tt.written)
			}
		})
	}
}
