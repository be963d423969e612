package bench_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/roosthub/roost/bench"
	"github.com/roosthub/roost/bench/benchtest"
)

// TestScenariosSmoke runs each scenario at a tiny size against bare mochi:
// everything sent arrives, once and in order.
func TestScenariosSmoke(t *testing.T) {
	target := benchtest.Mochi(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := bench.Conn(ctx, target, 50, 0, 10*time.Millisecond)
	if err != nil || c.Failures != 0 || c.PerSecond <= 0 || c.ConnackP99 <= 0 {
		t.Errorf("conn: %+v, %v", c, err)
	}
	for _, qos := range []byte{0, 1} {
		r, err := bench.P2P(ctx, target, 3, qos, 64, 0, 200*time.Millisecond)
		if err != nil {
			t.Fatalf("p2p qos %d: %v", qos, err)
		}
		if r.Tally.Lost != 0 || r.Tally.Duplicates != 0 || r.Tally.OutOfOrder != 0 || uint64(r.Tally.Received) != r.Sent || r.FirstError != "" {
			t.Errorf("p2p qos %d: %+v", qos, r)
		}
		if r.P50 <= 0 || r.P99 < r.P50 || r.P999 < r.P99 {
			t.Errorf("p2p qos %d percentiles: %+v", qos, r)
		}
	}
	// A pipelining publisher keeps 8 in flight: still everything arrives,
	// once and in order.
	if r, err := bench.P2PPipelined(ctx, target, 3, 64, 8, 200*time.Millisecond); err != nil || r.Window != 8 || r.Tally.Lost != 0 || r.Tally.Duplicates != 0 ||
		r.Tally.OutOfOrder != 0 || uint64(r.Tally.Received) != r.Sent || r.FirstError != "" {
		t.Errorf("p2p pipelined: %+v, %v", r, err)
	}
	f, err := bench.Fanout(ctx, target, 20, 1, 200, 250*time.Millisecond)
	if err != nil || f.Tally.Lost != 0 || f.Tally.Duplicates != 0 || f.Sent < 25 || uint64(f.Tally.Received) != f.Sent*20 {
		t.Errorf("fanout to 20 at QoS 1: %+v, %v", f, err)
	}
	// The broker runs in this process: its memory is ours, and what the
	// runtime already holds may be reused, so only the reading is checked.
	per, closeIdle, err := bench.IdleConnections(ctx, target, os.Getpid(), 100, 10*time.Millisecond)
	if err != nil {
		t.Errorf("idle connections: %v", err)
	} else {
		t.Logf("%.0f bytes per idle connection (broker and clients together)", per)
	}
	closeIdle()
	r, err := bench.P2P(ctx, target, 2, 1, 16, 400, 250*time.Millisecond) // fixed rate
	if err != nil || r.Tally.Lost != 0 || r.Sent < 50 || r.Sent > 150 {
		t.Errorf("p2p at 400/s for 250ms: %+v, %v", r, err)
	}
	for _, group := range []int{0, 3} {
		in, err := bench.Fanin(ctx, target, 40, group, 1, 800, 250*time.Millisecond)
		if err != nil || in.Tally.Lost != 0 || in.Tally.Duplicates != 0 || in.Tally.OutOfOrder != 0 || in.Sent < 100 || uint64(in.Tally.Received) != in.Sent {
			t.Errorf("fanin from 40 to a group of %d: %+v, %v", group, in, err)
		}
		if group > 0 && (in.Spread[0] == 0 || in.Spread[0]+in.Spread[1] > in.Tally.Received) {
			t.Errorf("fanin to a group of %d: every member should get a share: %+v", group, in)
		}
	}
	// Whether a step is sustained depends on the machine's load at that
	// moment (its p99), so the search is checked by its moves, not by the
	// rate it finds: it doubles after a sustained step and goes halfway
	// back after one that was not, and no step loses a message.
	const d = 150 * time.Millisecond
	s, err := bench.MaxSustained(ctx, target, 2, 1, 16, 200, d, 3, 10*time.Millisecond)
	if err != nil || len(s.Steps) != 3 || s.Offered[0] != 200 {
		t.Fatalf("sustained-rate search: %+v, %v", s, err)
	}
	good, bad := 0, 0
	for i, st := range s.Steps {
		if st.Tally.Lost != 0 || st.Tally.Duplicates != 0 || st.Tally.OutOfOrder != 0 {
			t.Errorf("sustained-rate search, step %d: %+v", i, st)
		}
		rate := s.Offered[i]
		if bench.Sustainable(st, rate, d, 10*time.Millisecond) {
			good = rate
		} else {
			bad = rate
		}
		want := 2 * rate
		if bad != 0 {
			want = (good + bad) / 2
		}
		if i+1 < len(s.Offered) && s.Offered[i+1] != want {
			t.Errorf("sustained-rate search offered %v: after step %d want %d next", s.Offered, i, want)
		}
	}
	if s.PerSecond != float64(good) {
		t.Errorf("sustained-rate search found %v/s, want the last sustained rate %d", s.PerSecond, good)
	}
}

func TestSustainableJudgesEveryCondition(t *testing.T) {
	ok := bench.P2PResult{Sent: 1000, P99: 2}
	if !bench.Sustainable(ok, 1000, time.Second, 10*time.Millisecond) {
		t.Fatalf("a clean run at the offered rate is sustainable")
	}
	for name, r := range map[string]bench.P2PResult{
		"lost":        {Sent: 1000, P99: 2, Tally: bench.Tally{Lost: 1}},
		"duplicate":   {Sent: 1000, P99: 2, Tally: bench.Tally{Duplicates: 1}},
		"reordered":   {Sent: 1000, P99: 2, Tally: bench.Tally{OutOfOrder: 1}},
		"slow":        {Sent: 1000, P99: 10},
		"fell behind": {Sent: 900, P99: 2},
		"failed":      {Sent: 1000, P99: 2, FirstError: "EOF"},
	} {
		if bench.Sustainable(r, 1000, time.Second, 10*time.Millisecond) {
			t.Errorf("%s: judged sustainable", name)
		}
	}
}
