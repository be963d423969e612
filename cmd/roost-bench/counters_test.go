package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roosthub/roost/bench"
	"github.com/roosthub/roost/bench/mqttc"
	"github.com/roosthub/roost/internal/testenv"
)

// TestParseCounters reads Roost's metrics as /metrics writes them: the
// families asked for, summed over tenants (the busiest by name and the
// rest as _other), named by their other labels in order; comments, other
// families and timestamps pass; a line that is not a sample is an error.
func TestParseCounters(t *testing.T) {
	const text = `# HELP roost_messages_dropped_total Messages dropped for connected clients.
# TYPE roost_messages_dropped_total counter
roost_messages_dropped_total{tenant="bench",reason="max_queued"} 0
roost_messages_dropped_total{tenant="bench",reason="pending_writes"} 78
roost_messages_dropped_total{reason="pending_writes",tenant="_other"} 22
roost_messages_dropped_total{tenant="we\"ird, {t}",reason="pending_writes"} 1 1733300000000
roost_messages_total{direction="in",tenant="bench"} 442905
roost_messages_total{tenant="bench",direction="out"} 4.42827e+05
roost_quota_exceeded_total{quota="bandwidth_out",tenant="bench"} 3
roost_handshakes_dropped_total{reason="rate"} 2
roost_tenant_brokers 3
go_gc_duration_seconds{quantile="0.5"} 1.2e-05
`
	got, err := parseCounters(strings.NewReader(text), countedFamilies)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{
		`roost_messages_dropped_total{reason="max_queued"}`:     0,
		`roost_messages_dropped_total{reason="pending_writes"}`: 101,
		`roost_messages_total{direction="in"}`:                  442905,
		`roost_messages_total{direction="out"}`:                 442827,
		`roost_quota_exceeded_total{quota="bandwidth_out"}`:     3,
		`roost_handshakes_dropped_total{reason="rate"}`:         2,
	}
	if len(got) != len(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d (all: %v)", k, got[k], v, got)
		}
	}
	for _, bad := range []string{
		`roost_messages_total{direction="in"`,
		`roost_messages_total{direction="in} 1`,
		`roost_messages_total`,
		`roost_messages_total{direction="in"} one`,
		`roost_messages_total{direction=in} 1`,
	} {
		if got, err := parseCounters(strings.NewReader(bad+"\n"), countedFamilies); err == nil {
			t.Errorf("%q: got %v, want an error", bad, got)
		}
	}
}

// TestCountsBetween: a run's counts are the later reading less the earlier;
// drops go by reason; a counter that went down started again.
func TestCountsBetween(t *testing.T) {
	before := map[string]int64{
		`roost_messages_dropped_total{reason="pending_writes"}`: 10,
		`roost_messages_dropped_total{reason="max_queued"}`:     5,
		`roost_messages_total{direction="out"}`:                 1000,
	}
	after := map[string]int64{
		`roost_messages_dropped_total{reason="pending_writes"}`: 88,
		`roost_messages_dropped_total{reason="max_queued"}`:     2, // the tenant's broker started again
		`roost_messages_total{direction="out"}`:                 3000,
		`roost_throttled_total`:                                 4, // new
	}
	c := countsBetween(before, after)
	if c.Dropped["pending_writes"] != 78 || c.Dropped["max_queued"] != 2 || len(c.Dropped) != 2 {
		t.Errorf("dropped %v, want pending_writes 78 and max_queued 2", c.Dropped)
	}
	if c.Counters[`roost_messages_total{direction="out"}`] != 2000 || c.Counters["roost_throttled_total"] != 4 || len(c.Counters) != 2 {
		t.Errorf("counters %v, want 2,000 out and 4 throttled", c.Counters)
	}
	if c.dropped() != 80 {
		t.Errorf("dropped() = %d, want 80", c.dropped())
	}
	if n := lostIn(bench.P2PResult{Tally: bench.Tally{Lost: 7}}); n == nil || *n != 7 {
		t.Errorf("lost in a p2p run: %v, want 7", n)
	}
	if n := lostIn(bench.ConnResult{}); n != nil {
		t.Errorf("lost in a connect run: %v, want none (no tally)", *n)
	}
}

var roostBuild struct {
	once sync.Once
	path string
	err  error
	out  []byte
}

// roostBinary builds roost from this tree once for the package's tests.
func roostBinary(t *testing.T) string {
	t.Helper()
	roostBuild.once.Do(func() {
		dir, err := os.MkdirTemp("", "roost-bench-test")
		if err != nil {
			roostBuild.err = err
			return
		}
		roostBuild.path = filepath.Join(dir, "roost")
		roostBuild.out, roostBuild.err = exec.Command("go", "build", "-o", roostBuild.path, "../roost").CombinedOutput()
	})
	if roostBuild.err != nil {
		t.Fatalf("build roost: %v\n%s", roostBuild.err, roostBuild.out)
	}
	return roostBuild.path
}

// TestCountersSeeDrops makes Roost and bare mochi drop messages for a
// subscriber that stops reading, and reads their counters as the suite
// does: each counts pending_writes drops, which is what the suite puts
// beside the bench's loss.
func TestCountersSeeDrops(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts roost")
	}
	var roostLogs, mochiLogs bytes.Buffer
	roost, err := startRoost(context.Background(), roostBinary(t), t.TempDir(), false, &roostLogs)
	if err != nil {
		t.Fatalf("start roost: %v\n%s", err, roostLogs.String())
	}
	t.Cleanup(roost.stop)
	mochi, err := startMochi("mochi", true, false, &mochiLogs)
	if err != nil {
		t.Fatalf("start mochi: %v\n%s", err, mochiLogs.String())
	}
	t.Cleanup(mochi.stop)
	for _, p := range []*process{roost, mochi} {
		t.Run(p.target.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			before, err := p.counters()
			if err != nil {
				t.Fatalf("counters: %v", err)
			}
			// The subscriber's reader stops at its first message: the
			// kernel's buffers fill, then the broker's queue for it.
			stuck := make(chan struct{})
			defer close(stuck)
			opts := func(id string) mqttc.Options {
				return mqttc.Options{ClientID: "drops-" + id, Username: p.target.Username, Password: p.target.Password, KeepAlive: 60}
			}
			sub, err := mqttc.Dial(ctx, p.target.Addr, opts("sub"))
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			sub.OnMessage = func(string, []byte) { <-stuck }
			if code, err := sub.Subscribe(ctx, "drops/t", 0); err != nil || code > 2 {
				t.Fatalf("subscribe: %v (code %#x)", err, code)
			}
			pub, err := mqttc.Dial(ctx, p.target.Addr, opts("pub"))
			if err != nil {
				t.Fatal(err)
			}
			defer pub.Close()
			payload := make([]byte, 4096)
			var c runCounts
			// Until the broker counts drops: at most 64 MiB, far more than
			// the kernel's buffers and 1,024 queued packets hold.
			for sent := 0; sent < 16384 && c.Dropped["pending_writes"] == 0; sent += 1024 {
				for range 1024 {
					if err := pub.Publish(ctx, "drops/t", payload, 0); err != nil {
						t.Fatalf("publish: %v", err)
					}
				}
				// A QoS 1 round trip: the broker has taken what came before.
				if err := pub.Publish(ctx, "drops/ack", payload[:16], 1); err != nil {
					t.Fatalf("publish QoS 1: %v", err)
				}
				after, err := p.counters()
				if err != nil {
					t.Fatalf("counters: %v", err)
				}
				c = countsBetween(before, after)
			}
			t.Logf("%s counted %v dropped, %v", p.target.Name, c.Dropped, c.Counters)
			if c.Dropped["pending_writes"] <= 0 {
				b, _ := json.Marshal(c)
				t.Errorf("%s counted %s for a subscriber that stopped reading, want pending_writes drops", p.target.Name, b)
			}
		})
	}
}

// TestSuiteOnlyFigures runs one figure of the suite alone, as the loss and
// the profiles of issue 20 were studied: -only names it, -runs sets how
// many runs it takes, -profile writes a CPU profile of each Go broker for
// each run; nothing else is measured and there is no whole-machine run.
func TestSuiteOnlyFigures(t *testing.T) {
	if testing.Short() {
		t.Skip("builds roost and starts five brokers")
	}
	if _, err := exec.LookPath("mosquitto"); err != nil {
		if _, err := os.Stat("/usr/sbin/mosquitto"); err != nil {
			testenv.Require(t, "mosquitto is not installed (apt-get install mosquitto)")
		}
	}
	dir, profiles := t.TempDir(), t.TempDir()
	var stdout bytes.Buffer
	const figure = "p2p_qos1_pipelined_throughput"
	if err := runSuite(context.Background(), "smoke", figure, roostBinary(t), dir, suiteExtra{runs: 2, profile: profiles}, &stdout); err != nil {
		t.Fatalf("suite: %v\n%s", err, stdout.String())
	}
	b, err := os.ReadFile(filepath.Join(dir, "smoke-only.json"))
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		Targets []string
		Figures map[string]map[string]float64
		Runs    map[string]map[string][]any
		Drops   map[string]map[string][]runCounts
	}
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	var figures []string
	for f := range res.Figures {
		figures = append(figures, f)
	}
	slices.Sort(figures)
	if got, want := strings.Join(figures, ","), figure+",p2p_qos1_pipelined_write_syscalls_per_msg"; got != want {
		t.Errorf("figures %s, want %s", got, want)
	}
	if got, want := strings.Join(res.Targets, ","), "roost,mochi,mosquitto,nats"; got != want {
		t.Errorf("targets %s, want %s (mochi-default measures memory only)", got, want)
	}
	for _, target := range []string{"roost", "mochi", "mosquitto", "nats"} {
		if n := len(res.Runs[figure][target]); n != 2 {
			t.Errorf("%s: %d runs, want 2", target, n)
		}
		_, counted := res.Drops[figure][target]
		if want := target == "roost" || target == "mochi"; counted != want {
			t.Errorf("%s: drops there %v, want %v", target, counted, want)
		}
		for run := 1; run <= 2; run++ {
			fi, err := os.Stat(filepath.Join(profiles, fmt.Sprintf("%s-%s-%d.pprof", target, figure, run)))
			if want := target != "mosquitto"; (err == nil && fi.Size() > 0) != want {
				t.Errorf("%s: profile of run %d there: %v (%v), want %v", target, run, err == nil, err, want)
			}
		}
	}
}

// TestSettle: a broker is idle once it uses under a tenth of a CPU, and
// settle returns at once on a process that does nothing (this test's
// own, between tests), long before its bound.
func TestSettle(t *testing.T) {
	for _, tc := range []struct {
		cpu  time.Duration
		want bool
	}{
		{0, true},
		{20 * time.Millisecond, true}, // two ticks of CPU time in 250 ms
		{25 * time.Millisecond, false},
		{250 * time.Millisecond, false},
	} {
		if got := idleOver(tc.cpu, settleEvery); got != tc.want {
			t.Errorf("idleOver(%v, %v) = %v, want %v", tc.cpu, settleEvery, got, tc.want)
		}
	}
	waited, err := settle(os.Getpid(), time.Minute)
	if err != nil || waited >= time.Minute {
		t.Errorf("settle on an idle process: waited %v (%v), want it to return before its bound", waited, err)
	}
}

// TestProfileKinds takes a CPU profile and an execution trace from a
// debug listener as the suite's (serveDebug's) and writes each whole.
func TestProfileKinds(t *testing.T) {
	addr, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	if err := serveDebug(addr, nil); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, kind := range []string{"profile", "trace"} {
		path := filepath.Join(dir, kind)
		if err := profile(addr, kind, time.Second, path)(); err != nil {
			t.Fatalf("%s: %v", kind, err)
		}
		if fi, err := os.Stat(path); err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v, want a file with the %s", kind, err, kind)
		}
	}
	if err := profile(addr, "nothing", time.Second, filepath.Join(dir, "nothing"))(); err == nil {
		t.Error("an unknown kind: got no error")
	}
}
