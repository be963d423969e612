package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/roosthub/roost/bench/benchtest"
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
