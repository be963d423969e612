package dataout_test

import (
	"errors"
	"testing"
	"time"

	"github.com/roosthub/roost/dataout"
)

var failed = dataout.Attempt{Status: 500, Kind: dataout.ErrorStatus, Err: errors.New("500")}

func TestBackoffFullJitter(t *testing.T) {
	for _, tc := range []struct {
		n    int
		r    float64
		want time.Duration
	}{
		{1, 0.999999999, time.Second - 1}, {1, 0, 0}, {2, 0.5, time.Second}, {4, 0.5, 4 * time.Second},
		{13, 0.5, 30 * time.Minute}, {100, 0.5, 30 * time.Minute}, {100, 0.25, 15 * time.Minute},
	} {
		p := dataout.Policy{Base: time.Second, Max: time.Hour, Rand: func() float64 { return tc.r }}
		if got := p.Backoff(tc.n); got.Round(time.Millisecond) != tc.want.Round(time.Millisecond) {
			t.Errorf("Backoff(%d) with rand %v = %v, want %v", tc.n, tc.r, got, tc.want)
		}
	}
}

// TestPolicyToHorizon drives a batch that always fails through the
// policy on a fake clock, always waiting the longest jitter allows: the
// waits double up to the cap, no retry is scheduled past the horizon, the
// last attempt is at the horizon, and the batch is dead after it.
func TestPolicyToHorizon(t *testing.T) {
	p := dataout.Policy{Base: time.Second, Max: time.Hour, Horizon: 24 * time.Hour, Rand: func() float64 { return 1 }}
	first := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	now := first
	var waits []time.Duration
	for n := 1; ; n++ {
		d := p.Decide(first, n, now, failed)
		if d.Outcome == dataout.Dead {
			if now.Before(first.Add(24 * time.Hour)) {
				t.Fatalf("dead at %v, before the horizon", now.Sub(first))
			}
			break
		}
		if d.Outcome != dataout.Retry || !d.At.After(now) && n > 1 {
			t.Fatalf("attempt %d: %+v", n, d)
		}
		if d.At.After(first.Add(24 * time.Hour)) {
			t.Fatalf("attempt %d: retry at %v, past the horizon", n, d.At.Sub(first))
		}
		waits = append(waits, d.At.Sub(now))
		now = d.At
		if n > 1000 {
			t.Fatal("never dead")
		}
	}
	for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second} {
		if waits[i] != want {
			t.Errorf("wait %d: %v, want %v", i+1, waits[i], want)
		}
	}
	if waits[20] != time.Hour {
		t.Errorf("wait 21: %v, want the 1h cap", waits[20])
	}
	if n := len(waits); n < 30 || n > 40 {
		t.Errorf("%d attempts in 24h, want about 35", n)
	}
}

func TestPolicyDecide(t *testing.T) {
	p := dataout.Policy{Base: time.Second, Max: time.Minute, Horizon: time.Hour, Rand: func() float64 { return 0.5 }}
	first := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	if d := p.Decide(first, 1, first, dataout.Attempt{Status: 200}); d.Outcome != dataout.Delivered {
		t.Errorf("200: %+v, want delivered", d)
	}
	if d := p.Decide(first, 30, first.Add(2*time.Hour), dataout.Attempt{Status: 200}); d.Outcome != dataout.Delivered {
		t.Errorf("a 200 past the horizon: %+v, want delivered", d)
	}
	if d := p.Decide(first, 3, first.Add(time.Minute), failed); d.Outcome != dataout.Retry || d.At != first.Add(time.Minute+2*time.Second) {
		t.Errorf("third failure: %+v, want retry in 2s", d)
	}
	ra := failed
	ra.RetryAfter = 45 * time.Second
	if d := p.Decide(first, 1, first, ra); d.At != first.Add(45*time.Second) {
		t.Errorf("Retry-After 45s: retry at +%v, want +45s", d.At.Sub(first))
	}
	ra.RetryAfter = 24 * time.Hour
	if d := p.Decide(first, 1, first, ra); d.At != first.Add(time.Minute) {
		t.Errorf("Retry-After 24h: retry at +%v, want the 1m cap", d.At.Sub(first))
	}
	if d := p.Decide(first, 9, first.Add(59*time.Minute+50*time.Second), failed); d.At != first.Add(time.Hour) {
		t.Errorf("near the horizon: retry at +%v, want exactly the horizon", d.At.Sub(first))
	}
	if d := p.Decide(first, 10, first.Add(time.Hour), failed); d.Outcome != dataout.Dead {
		t.Errorf("at the horizon: %+v, want dead", d)
	}
}
