package auth

import (
	"sync"
	"testing"
	"time"

	"github.com/roosthub/roost/internal/testenv"
)

// TestReserveIsAllOrNothing: an attempt is counted against all its keys or
// none, and parallel attempts get exactly the free ones.
func TestReserveIsAllOrNothing(t *testing.T) {
	clk := testenv.NewClock(time.Now())
	l := newLimiter(clk.Now)
	b := budget{name: "b", free: 3, perHour: 100}
	tight := budget{name: "tight", free: 1, perHour: 100}
	if _, wait := l.reserve(charge{b, "x"}, charge{tight, "y"}); wait != 0 {
		t.Fatal("first attempt refused")
	}
	if _, wait := l.reserve(charge{b, "x"}, charge{tight, "y"}); wait == 0 {
		t.Fatal("second attempt on tight passed")
	}
	// The refused attempt counted nothing against b: two free ones are left.
	for i := range 2 {
		if _, wait := l.reserve(charge{b, "x"}); wait != 0 {
			t.Fatalf("free attempt %d on b refused: %v", i+2, wait)
		}
	}
	if _, wait := l.reserve(charge{b, "x"}); wait != time.Second {
		t.Errorf("the attempt after the free ones: wait %v, want 1s", wait)
	}

	var wg sync.WaitGroup
	var mu sync.Mutex
	passed := 0
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, wait := l.reserve(charge{b, "parallel"}); wait == 0 {
				mu.Lock()
				passed++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if passed != 3 {
		t.Errorf("%d of 50 parallel attempts passed, want the 3 free ones", passed)
	}
}

// TestRefund: a refunded attempt leaves nothing behind; forgiving ends a
// streak; the hourly bound counts what was not refunded.
func TestRefund(t *testing.T) {
	clk := testenv.NewClock(time.Now())
	l := newLimiter(clk.Now)
	b := budget{name: "b", free: 2, perHour: 5}
	for range 10 {
		tk, wait := l.reserve(charge{b, "ok"})
		if wait != 0 {
			t.Fatal("an attempt that is always refunded was refused")
		}
		tk.refund()
	}
	l.reserve(charge{b, "k"})
	l.reserve(charge{b, "k"})
	if l.wait(charge{b, "k"}) == 0 {
		t.Fatal("two failures did not start the wait")
	}
	clk.Advance(time.Second)
	tk, _ := l.reserve(charge{b, "k"})
	tk.refund(b) // a success forgives the streak
	if w := l.wait(charge{b, "k"}); w != 0 {
		t.Errorf("after a forgiven success: wait %v, want 0", w)
	}
	l.reserve(charge{b, "k"})
	clk.Advance(3 * time.Second)
	l.reserve(charge{b, "k"})
	clk.Advance(3 * time.Second)
	l.reserve(charge{b, "k"})
	if w := l.wait(charge{b, "k"}); w < 50*time.Minute {
		t.Errorf("after five failures in the hour: wait %v, want the rest of the hour", w)
	}
}

// TestSteadyRateNeverEscalates: a budget without free attempts is an
// hourly count only: attempts at a steady rate under it never wait, however
// long they go on (a streak there would grow without end).
func TestSteadyRateNeverEscalates(t *testing.T) {
	clk := testenv.NewClock(time.Now())
	l := newLimiter(clk.Now)
	b := budget{name: "total", perHour: 10}
	for i := range 100 {
		if _, wait := l.reserve(charge{b, ""}); wait != 0 {
			t.Fatalf("attempt %d at 9 an hour waited %v", i, wait)
		}
		clk.Advance(7 * time.Minute)
	}
}

// TestTrustLapses: an address vouched for by a sign-in stays trusted for
// 30 days.
func TestTrustLapses(t *testing.T) {
	clk := testenv.NewClock(time.Now())
	l := newLimiter(clk.Now)
	l.trust("k")
	if !l.isTrusted("k") || l.isTrusted("other") {
		t.Fatal("trust not recorded, or given to another key")
	}
	clk.Advance(31 * 24 * time.Hour)
	if l.isTrusted("k") {
		t.Error("trust outlived 30 days")
	}
}
