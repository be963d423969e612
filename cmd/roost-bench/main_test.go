package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/bench"
	"github.com/roosthub/roost/bench/benchtest"
	"github.com/roosthub/roost/internal/testenv"
)

// TestRunReports runs each scenario briefly against bare mochi: a line per
// run, a summary, and a JSON report with the runs and no loss.
func TestRunReports(t *testing.T) {
	target := benchtest.Mochi(t)
	for _, args := range [][]string{
		{"-scenario", "p2p", "-pairs", "2", "-duration", "150ms"},
		{"-scenario", "conn", "-n", "40", "-hold", "10ms"},
	} {
		out := filepath.Join(t.TempDir(), "r.json")
		var stdout bytes.Buffer
		full := append([]string{"-addr", target.Addr, "-name", "mochi", "-runs", "2", "-json", out}, args...)
		if err := run(context.Background(), full, &stdout); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		if n := strings.Count(stdout.String(), "run "); n != 2 || !strings.Contains(stdout.String(), "median") {
			t.Errorf("%v: output\n%s", args, stdout.String())
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		var rep struct {
			Runs    []json.RawMessage
			Summary struct{ Median float64 }
			Tally   struct{ Lost, Duplicates int }
		}
		if err := json.Unmarshal(b, &rep); err != nil || len(rep.Runs) != 2 || rep.Summary.Median <= 0 || rep.Tally.Lost != 0 || rep.Tally.Duplicates != 0 {
			t.Errorf("%v: report %s (%v)", args, b, err)
		}
	}
	if err := run(context.Background(), []string{"-addr", target.Addr, "-scenario", "nonsense", "-runs", "1"}, &bytes.Buffer{}); err == nil {
		t.Error("an unknown scenario was accepted")
	}
}

// TestAddrFlags checks how -addr, -pub-addr and -sub-addr are read: one
// -addr as it always was, comma-separated lists taken apart, and lists
// that are not host:port refused, as are -pub-addr and -sub-addr for
// scenarios without publishers and subscribers.
func TestAddrFlags(t *testing.T) {
	for _, tc := range []struct {
		addr, pub, sub, scenario string
		want                     bench.Target
		err                      string
	}{
		{addr: "127.0.0.1:1883", scenario: "p2p", want: bench.Target{Addr: "127.0.0.1:1883"}},
		{addr: "broker", scenario: "conn", want: bench.Target{Addr: "broker"}}, // not checked, as before
		{addr: "a:1, b:2,c:3", scenario: "conn", want: bench.Target{Addr: "a:1", Addrs: []string{"a:1", "b:2", "c:3"}}},
		{addr: "a:1", pub: "a:1", sub: "b:2,[::1]:3", scenario: "p2p",
			want: bench.Target{Addr: "a:1", PubAddrs: []string{"a:1"}, SubAddrs: []string{"b:2", "[::1]:3"}}},
		{addr: "a:1", sub: "a:1,b:2", scenario: "fanout", want: bench.Target{Addr: "a:1", SubAddrs: []string{"a:1", "b:2"}}},
		{addr: "a:1,,b:2", scenario: "conn", err: "-addr"},
		{addr: "a:1,b", scenario: "hold", err: "-addr"},
		{addr: "a:1", pub: "a:1,b:", scenario: "p2p", err: "-pub-addr"},
		{addr: "a:1", sub: "nonsense", scenario: "fanout", err: "-sub-addr"},
		{addr: "a:1", pub: "b:2", scenario: "conn", err: "p2p and fanout"},
		{addr: "a:1", sub: "b:2", scenario: "hold", err: "p2p and fanout"},
	} {
		var got target
		err := got.setAddrs(tc.addr, tc.pub, tc.sub, tc.scenario)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%+v: error %v, want one about %s", tc, err, tc.err)
		case tc.err == "" && err != nil:
			t.Errorf("%+v: %v", tc, err)
		case tc.err == "" && (got.Addr != tc.want.Addr || !slices.Equal(got.Addrs, tc.want.Addrs) ||
			!slices.Equal(got.PubAddrs, tc.want.PubAddrs) || !slices.Equal(got.SubAddrs, tc.want.SubAddrs)):
			t.Errorf("%+v: got %+v", tc, got.Target)
		}
	}
	// Through run: refused before anything connects.
	for _, args := range [][]string{
		{"-addr", "a:1,", "-scenario", "conn"},
		{"-pub-addr", "a:1", "-scenario", "hold"},
		{"-keepalive", "0"},
		{"-keepalive", "70000"},
	} {
		if err := run(context.Background(), args, &bytes.Buffer{}); err == nil {
			t.Errorf("%v was accepted", args)
		}
	}
}

// listenerLog records the listener each client connected through.
type listenerLog struct {
	mqtt.HookBase
	mu sync.Mutex
	by map[string]string // client id → listener id
}

func (*listenerLog) ID() string           { return "listener-log" }
func (*listenerLog) Provides(b byte) bool { return b == mqtt.OnConnect }
func (h *listenerLog) OnConnect(cl *mqtt.Client, _ packets.Packet) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.by[cl.ID] = cl.Net.Listener
	return nil
}

// count is how many clients whose id contains part connected through each
// listener, and forgets them, so that the next scenario counts afresh.
func (h *listenerLog) count(part string) map[string]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]int{}
	for id, ln := range h.by {
		if strings.Contains(id, part) {
			out[ln]++
			delete(h.by, id)
		}
	}
	return out
}

// twoListeners starts bare mochi listening on two addresses, "a" and "b",
// as one broker: publishers at one reach subscribers at the other, as on
// the nodes of a fleet serving one tenant.
func twoListeners(t *testing.T) (a, b string, log *listenerLog) {
	t.Helper()
	srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler)})
	log = &listenerLog{by: map[string]string{}}
	for _, h := range []mqtt.Hook{new(bench.AllowAll), log} {
		if err := srv.AddHook(h, nil); err != nil {
			t.Fatal(err)
		}
	}
	var addrs []string
	for _, id := range []string{"a", "b"} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.AddListener(listeners.NewNet(id, ln)); err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, ln.Addr().String())
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return addrs[0], addrs[1], log
}

// TestSpreadOverAddresses runs each scenario with its clients spread over
// two listeners of one broker, and checks where each kind of client
// connected: p2p's publishers at -pub-addr and subscribers at -sub-addr,
// fanout's subscribers over -sub-addr in turn (with a p99 for each), conn's
// and hold's clients over -addr in turn; and nothing lost.
func TestSpreadOverAddresses(t *testing.T) {
	a, b, log := twoListeners(t)
	type report struct {
		Target struct {
			PubAddrs []string `json:"pub_addrs"`
			SubAddrs []string `json:"sub_addrs"`
			Addrs    []string `json:"addrs"`
		}
		Runs  []json.RawMessage
		Tally struct{ Lost, Duplicates, OutOfOrder int }
	}
	invoke := func(args ...string) (report, string) {
		t.Helper()
		out := filepath.Join(t.TempDir(), "r.json")
		var stdout bytes.Buffer
		if err := run(context.Background(), append([]string{"-runs", "1", "-json", out}, args...), &stdout); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, stdout.String())
		}
		var rep report
		b, err := os.ReadFile(out)
		if err == nil {
			err = json.Unmarshal(b, &rep)
		}
		if err != nil || len(rep.Runs) != 1 || rep.Tally.Lost != 0 || rep.Tally.Duplicates != 0 || rep.Tally.OutOfOrder != 0 {
			t.Errorf("%v: report %s (%v)", args, b, err)
		}
		return rep, stdout.String()
	}
	same := func(what string, got, want map[string]int) {
		t.Helper()
		if len(got) != len(want) {
			t.Errorf("%s connected through %v, want %v", what, got, want)
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s connected through %v, want %v", what, got, want)
			}
		}
	}

	rep, _ := invoke("-scenario", "p2p", "-pairs", "3", "-duration", "150ms", "-pub-addr", a, "-sub-addr", b)
	same("p2p publishers", log.count("-pub-"), map[string]int{"a": 3})
	same("p2p subscribers", log.count("-sub-"), map[string]int{"b": 3})
	if !slices.Equal(rep.Target.PubAddrs, []string{a}) || !slices.Equal(rep.Target.SubAddrs, []string{b}) {
		t.Errorf("p2p report's target: %+v", rep.Target)
	}

	rep, stdout := invoke("-scenario", "fanout", "-subs", "10", "-qos", "1", "-rate", "200", "-duration", "150ms", "-pub-addr", b, "-sub-addr", a+","+b)
	same("fanout publisher", log.count("fan-pub-"), map[string]int{"b": 1})
	same("fanout subscribers", log.count("fan-"), map[string]int{"a": 5, "b": 5})
	var fan struct {
		Sent      int
		Tally     struct{ Received int }
		P99ByAddr map[string]float64 `json:"p99_ms_by_addr"`
	}
	if err := json.Unmarshal(rep.Runs[0], &fan); err != nil || fan.Sent == 0 || fan.Tally.Received != 10*fan.Sent ||
		len(fan.P99ByAddr) != 2 || fan.P99ByAddr[a] <= 0 || fan.P99ByAddr[b] <= 0 {
		t.Errorf("fanout run: %s (%v)", rep.Runs[0], err)
	}
	if !strings.Contains(stdout, "p99 by address: ") || !strings.Contains(stdout, a+" ") || !strings.Contains(stdout, b+" ") {
		t.Errorf("fanout output:\n%s", stdout)
	}

	invoke("-scenario", "conn", "-n", "40", "-hold", "10ms", "-addr", a+","+b)
	same("conn clients", log.count("-conn-"), map[string]int{"a": 20, "b": 20})

	rep, stdout = invoke("-scenario", "hold", "-n", "30", "-hold", "10ms", "-addr", b+","+a)
	same("hold clients", log.count("-hold-"), map[string]int{"a": 15, "b": 15})
	var held bench.HoldResult
	if err := json.Unmarshal(rep.Runs[0], &held); err != nil || held.Held != 30 || held.Attempted != 30 || held.Failures != 0 ||
		held.Dropped != 0 || held.HeldByAddr[a] != 15 || held.HeldByAddr[b] != 15 || held.PerSecond <= 0 {
		t.Errorf("hold run: %s (%v)", rep.Runs[0], err)
	}
	if !strings.Contains(stdout, "holding 30 connections (0 of 30 failed)") || !slices.Equal(rep.Target.Addrs, []string{b, a}) {
		t.Errorf("hold output:\n%s\ntarget %+v", stdout, rep.Target)
	}
}

// TestHoldStopsAfterFailures spreads hold's clients over a broker and an
// address nothing listens on: it stops connecting once -max-failures
// connects failed, and reports what it held.
func TestHoldStopsAfterFailures(t *testing.T) {
	target := benchtest.Mochi(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	out := filepath.Join(t.TempDir(), "r.json")
	var stdout bytes.Buffer
	if err := run(context.Background(), []string{"-scenario", "hold", "-runs", "1", "-n", "5000", "-max-failures", "5", "-hold", "10ms",
		"-addr", target.Addr + "," + dead, "-json", out}, &stdout); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	var rep struct{ Runs []bench.HoldResult }
	if err := json.Unmarshal(b, &rep); err != nil || len(rep.Runs) != 1 {
		t.Fatalf("report %s (%v)", b, err)
	}
	r := rep.Runs[0]
	if r.Failures < 5 || r.Attempted >= 5000 || r.Held+r.Failures != r.Attempted || r.HeldByAddr[dead] != 0 || r.HeldByAddr[target.Addr] != r.Held ||
		!strings.Contains(r.FirstFailed, dead) {
		t.Errorf("hold with a dead address: %+v", r)
	}
	if !strings.Contains(stdout.String(), "first failure: "+dead) {
		t.Errorf("output:\n%s", stdout.String())
	}
}

// TestSuiteSmoke runs the side-by-side suite at its smoke size: Roost
// (built from this tree), bare mochi-mqtt and mosquitto start, every
// scenario runs on each, and the results hold the ratios.
func TestSuiteSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds roost and starts three brokers")
	}
	if _, err := exec.LookPath("mosquitto"); err != nil {
		if _, err := os.Stat("/usr/sbin/mosquitto"); err != nil {
			testenv.Require(t, "mosquitto is not installed (apt-get install mosquitto)")
		}
	}
	dir := t.TempDir()
	roost := filepath.Join(dir, "roost")
	if out, err := exec.Command("go", "build", "-o", roost, "../roost").CombinedOutput(); err != nil {
		t.Fatalf("build roost: %v\n%s", err, out)
	}
	// The suite runs mochi in a child process of this binary: the test
	// binary stands in for roost-bench.
	var stdout bytes.Buffer
	if err := runSuite(context.Background(), "smoke", roost, dir, &stdout); err != nil {
		t.Fatalf("suite: %v\n%s", err, stdout.String())
	}
	b, err := os.ReadFile(filepath.Join(dir, "smoke.json"))
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		Targets  []string
		Ratios   map[string]*float64
		Absolute map[string]*float64
		Spread   map[string]map[string]struct{ Median, Min, Max float64 }
		Missing  map[string]string
	}
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	if strings.Join(res.Targets, ",") != "roost,mochi,mochi-default,mosquitto" || len(res.Missing) != 0 {
		t.Errorf("targets %v, missing %v", res.Targets, res.Missing)
	}
	for _, k := range []string{"p2p_qos1_throughput_roost_vs_mochi", "p2p_qos1_throughput_roost_vs_mosquitto", "fanout_qos0_throughput_roost_vs_mosquitto",
		"connect_rate_roost_vs_mosquitto", "p2p_qos1_sustained_roost_vs_mochi", "p2p_qos1_p99_latency_roost_vs_mochi",
		"fanin_qos1_throughput_roost_vs_mosquitto", "fanin_shared_qos1_throughput_roost_vs_mosquitto", "p2p_qos1_p99_latency_among_idle_tenants_vs_alone"} {
		if v := res.Ratios[k]; v == nil || *v <= 0 {
			t.Errorf("ratio %s: %v", k, v)
		}
	}
	if s := res.Spread["p2p_qos1_throughput"]["roost"]; s.Min <= 0 || s.Min > s.Median || s.Median > s.Max {
		t.Errorf("spread of p2p_qos1_throughput for roost: %+v", s)
	}
	// Memory at this size is below what resident memory resolves: only
	// that the figures are there is checked.
	if _, ok := res.Ratios["idle_conn_memory_roost_vs_mochi_default"]; !ok {
		t.Error("no ratio idle_conn_memory_roost_vs_mochi_default")
	}
	for _, k := range []string{"idle_conn_memory_bytes", "idle_tenant_memory_bytes", "idle_tenant_cpu_ms_per_s", "idle_tenant_instance_bytes"} {
		if _, ok := res.Absolute[k]; !ok {
			t.Errorf("no absolute figure %s", k)
		}
	}
	if !strings.Contains(stdout.String(), "p2p_qos1_throughput_roost_vs_mosquitto") {
		t.Errorf("no table printed:\n%s", stdout.String())
	}
}

// TestMain lets the test binary stand in for roost-bench when the suite
// starts it as the bare mochi-mqtt broker.
func TestMain(m *testing.M) {
	if len(os.Args) > 2 && os.Args[1] == "-serve-mochi" {
		if err := run(context.Background(), os.Args[1:], os.Stdout); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}
