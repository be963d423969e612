package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
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

// TestUsageFinalFlushRetries: the final flush, which has no next flush to
// give what the store refused to, tries again a few times within a bound;
// what the store takes is recorded once, and what it never takes is logged
// once, with the tenants and totals lost. A tenant that is gone is dropped.
func TestUsageFinalFlushRetries(t *testing.T) {
	acme := tenants.Usage{MessagesIn: 3, BytesIn: 300, MessagesOut: 2, BytesOut: 100, ConnectionSeconds: 5, PeakConnections: 1}
	beta := tenants.Usage{MessagesIn: 1, BytesIn: 10, ConnectionSeconds: 5, PeakConnections: 1}
	tests := []struct {
		name   string
		refuse func(call int, d tenants.UsageDelta) bool
		calls  int
		want   map[string]tenants.Usage
		lost   []string // in the one error logged, none for none
	}{
		{
			name:   "taken at once",
			refuse: func(int, tenants.UsageDelta) bool { return false },
			calls:  1, want: map[string]tenants.Usage{"acme": acme, "beta": beta},
		},
		{
			name:   "the store back after two refusals",
			refuse: func(call int, _ tenants.UsageDelta) bool { return call <= 2 },
			calls:  3, want: map[string]tenants.Usage{"acme": acme, "beta": beta},
		},
		{
			name:   "one tenant's refused once",
			refuse: func(call int, d tenants.UsageDelta) bool { return call == 1 && d.Tenant == "beta" },
			calls:  2, want: map[string]tenants.Usage{"acme": acme, "beta": beta},
		},
		{
			name:   "one tenant's never taken",
			refuse: func(_ int, d tenants.UsageDelta) bool { return d.Tenant == "beta" },
			calls:  4, want: map[string]tenants.Usage{"acme": acme},
			lost: []string{"tenants=beta", "messages=1", "bytes=10", "connection_seconds=5"},
		},
		{
			name:   "the store never back",
			refuse: func(int, tenants.UsageDelta) bool { return true },
			calls:  4, want: map[string]tenants.Usage{},
			lost: []string{"tenants=acme,beta", "messages=6", "bytes=410", "connection_seconds=10"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The store refuses a tenant that is gone (its rows' key is).
			refuse := func(call int, d tenants.UsageDelta) bool { return d.Tenant == "gone" || tt.refuse(call, d) }
			store := &fakeUsage{refuse: refuse, got: map[string]tenants.Usage{}}
			logs := &testenv.Buffer{}
			start := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
			clock := start
			h := &Hub{cfg: Config{UsageInterval: time.Second, Usage: store, Directory: tenantDirectory{gone: "gone"}},
				log: slog.New(slog.NewTextHandler(logs, nil)), now: func() time.Time { return clock }}
			for _, tenant := range []string{"acme", "beta", "gone"} {
				h.meterOf(tenant).connected()
				h.meterOf(tenant).in(10)
			}
			a := h.meterOf("acme")
			a.in(100)
			a.in(190)
			a.out(50)
			a.out(50)
			clock = start.Add(5 * time.Second)

			began := time.Now()
			h.flushUsage(true)
			took := time.Since(began)
			if took > flushTimeout {
				t.Errorf("the final flush took %v, want at most %v", took, flushTimeout)
			}
			store.mu.Lock()
			defer store.mu.Unlock()
			if store.calls != tt.calls {
				t.Errorf("%d calls to the store, want %d", store.calls, tt.calls)
			}
			// One deadline for the whole flush, tries again included:
			// Close cannot hang on a store that does not answer.
			for i, d := range store.deadlines {
				if d.IsZero() || !d.Equal(store.deadlines[0]) || d.Sub(began) > took+flushTimeout {
					t.Errorf("call %d's deadline %v after the flush began, want the first call's, at most %v", i+1, d.Sub(began), flushTimeout)
				}
			}
			if fmt.Sprint(store.got) != fmt.Sprint(tt.want) {
				t.Errorf("recorded %+v, want %+v", store.got, tt.want)
			}
			var errs []string
			for _, line := range strings.Split(logs.String(), "\n") {
				if strings.Contains(line, "level=ERROR") {
					errs = append(errs, line)
				}
			}
			switch {
			case tt.lost == nil && len(errs) > 0:
				t.Errorf("errors logged %q, want none", errs)
			case tt.lost != nil && len(errs) != 1:
				t.Errorf("errors logged %q, want one", errs)
			case tt.lost != nil:
				for _, attr := range tt.lost {
					if !strings.Contains(errs[0], " "+attr+" ") {
						t.Errorf("error logged %q, want it to say %s", errs[0], attr)
					}
				}
			}
		})
	}
}

// fakeUsage is a usage store that refuses the deltas refuse says, call
// by call (from 1), and sums the others by tenant.
type fakeUsage struct {
	refuse func(call int, d tenants.UsageDelta) bool

	mu        sync.Mutex
	calls     int
	deadlines []time.Time
	got       map[string]tenants.Usage
}

func (s *fakeUsage) AddUsage(ctx context.Context, deltas []tenants.UsageDelta) ([]tenants.UsageDelta, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	deadline, _ := ctx.Deadline()
	s.deadlines = append(s.deadlines, deadline)
	var failed []tenants.UsageDelta
	for _, d := range deltas {
		if s.refuse(s.calls, d) {
			failed = append(failed, d)
			continue
		}
		u := s.got[d.Tenant]
		u.Add(d.Usage)
		s.got[d.Tenant] = u
	}
	if failed != nil {
		return failed, errors.New("refused")
	}
	return nil, nil
}

func (s *fakeUsage) MonthMessages(context.Context, string, time.Time) (int64, error) { return 0, nil }

// tenantDirectory knows every tenant but the one gone.
type tenantDirectory struct {
	Directory
	gone string
}

func (d tenantDirectory) Tenant(_ context.Context, slug string) (tenants.Tenant, error) {
	if slug == d.gone {
		return tenants.Tenant{}, tenants.ErrNotFound
	}
	return tenants.Tenant{Slug: slug}, nil
}
