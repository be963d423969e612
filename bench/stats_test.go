package bench

import (
	"fmt"
	"os"
	"testing"
	"time"
)

func TestPercentileNearestRank(t *testing.T) {
	var l Latencies
	if l.Percentile(99) != 0 {
		t.Error("no samples: want 0")
	}
	for i := 100; i >= 1; i-- { // 1ms..100ms, added out of order
		l.Add(time.Duration(i) * time.Millisecond)
	}
	for p, want := range map[float64]time.Duration{50: 50 * time.Millisecond, 99: 99 * time.Millisecond, 99.9: 100 * time.Millisecond, 100: 100 * time.Millisecond, 1: time.Millisecond} {
		if got := l.Percentile(p); got != want {
			t.Errorf("p%v = %v, want %v", p, got, want)
		}
	}
	var one Latencies
	one.Add(7 * time.Millisecond)
	if one.Percentile(50) != 7*time.Millisecond || one.Percentile(99.9) != 7*time.Millisecond {
		t.Error("a single sample is every percentile")
	}
}

func TestStreamsCountLossDuplicatesOrder(t *testing.T) {
	var s Streams
	for _, n := range []uint64{0, 1, 3, 2, 3, 5} { // 4 lost, 3 twice, 2 after 3
		s.Seen("a", n)
	}
	for n := range uint64(4) {
		s.Seen("b", n)
	}
	got := s.Tally(map[string]uint64{"a": 6, "b": 4, "c": 2}) // c got nothing
	want := Tally{Received: 5 + 4, Lost: 1 + 2, Duplicates: 1, OutOfOrder: 1, FirstOutOfOrder: "a: 2 after 3"}
	if got != want {
		t.Errorf("tally %+v, want %+v", got, want)
	}
}

func TestSummarise(t *testing.T) {
	for _, c := range []struct {
		runs []float64
		want string
	}{
		{[]float64{3, 1, 2}, "2 1 3"},
		{[]float64{4, 1, 3, 2}, "2.5 1 4"},
		{[]float64{5}, "5 5 5"},
	} {
		s := Summarise(c.runs)
		if got := fmt.Sprint(s.Median, s.Min, s.Max); got != c.want {
			t.Errorf("Summarise(%v) = %s, want %s", c.runs, got, c.want)
		}
	}
	if s := Summarise(nil); s.Median != 0 || s.Runs != nil {
		t.Errorf("no runs: %+v", s)
	}
}

func TestCPUTimeAndRSSOfThisProcess(t *testing.T) {
	start, err := CPUTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(100 * time.Millisecond)
	for x := 0; time.Now().Before(deadline); x++ { // burn some CPU
	}
	end, err := CPUTime(os.Getpid())
	if err != nil || end <= start {
		t.Errorf("CPU time %v then %v (%v): want it to grow while busy", start, end, err)
	}
	if n, err := RSS(os.Getpid()); err != nil || n < 1<<20 {
		t.Errorf("RSS %d, %v: want at least a MiB", n, err)
	}
}

func TestStreamsOutOfOrderOverEveryStream(t *testing.T) {
	var s Streams
	for _, n := range []uint64{0, 2, 1, 3} {
		s.Seen("a", n)
	}
	for _, n := range []uint64{5, 4, 3} {
		s.Seen("b", n)
	}
	if got := s.OutOfOrder(); got != 3 {
		t.Errorf("OutOfOrder() = %d, want 3 (one in a, two in b)", got)
	}
}
