package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

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
