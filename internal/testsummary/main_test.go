package main

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestSummary feeds the `go test -json` of a small module (testdata: one
// passing, one skipping for a server, one failing, one skipping subtest, a
// package that panics and one that does not build) and checks what a person
// reading `make test` sees: no passing test but in the list of the slowest.
func TestSummary(t *testing.T) {
	in, err := os.Open("testdata/demo.json")
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	var out strings.Builder
	if err := run(in, &out); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{
		"a_test.go:5: context line\n    a_test.go:5: got 1, want 2\n--- FAIL: TestFail",
		"FAIL\tdemo\t",
		"panic: boom",
		"FAIL\tdemo/b\t",
		"c/c_test.go:3:33: undefined: undefined",
		"2 tests skipped:",
		"    1  ROOST_TEST_POSTGRES_URL is not set; `make services` starts it\n       TestSkip\n",
		"    1  slow\n       TestSub/x\n",
		"`make services`",
		"Failed:\n  demo TestFail\n  demo/b TestPanic\n  demo/c (does not build)\n",
		"Slowest tests:\n",
		"s  demo TestOK\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("the summary lacks %q:\n%s", want, got)
		}
	}
	before, _, _ := strings.Cut(got, "Slowest tests:")
	for _, unwanted := range []string{"=== RUN", "--- PASS", "TestOK", "noise"} {
		if strings.Contains(before, unwanted) {
			t.Errorf("the summary shows %q, which a plain go test does not:\n%s", unwanted, got)
		}
	}
}

func TestReason(t *testing.T) {
	for _, tc := range []struct {
		name string
		out  []string
		want string
	}{
		{"logged then skipped", []string{"=== RUN   TestX\n", "    x_test.go:3: noise\n", "    x_test.go:4: needs redis\n", "--- SKIP: TestX (0.00s)\n"}, "needs redis"},
		{"no reason", []string{"=== RUN   TestX\n", "--- SKIP: TestX (0.00s)\n"}, "no reason given"},
		{"a cleanup logs after the skip", []string{"=== RUN   TestX\n", "    x_test.go:9: KNOWN BUG, everything else passed: late\n", "    x_test.go:20: the test took 13.7s\n", "--- SKIP: TestX (13.70s)\n"}, "KNOWN BUG, everything else passed: late"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := reason(tc.out); got != tc.want {
				t.Errorf("reason = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestSlowest: the slowest top-level tests come last, slowest first, and
// at most ten of them; subtests are within their tests.
func TestSlowest(t *testing.T) {
	var in strings.Builder
	for i := range 12 {
		fmt.Fprintf(&in, `{"Action":"pass","Package":"p","Test":"Test%02d","Elapsed":%d}`+"\n", i, i)
	}
	in.WriteString(`{"Action":"pass","Package":"p","Test":"Test00/sub","Elapsed":99}` + "\n")
	var out strings.Builder
	if err := run(strings.NewReader(in.String()), &out); err != nil {
		t.Fatal(err)
	}
	_, list, ok := strings.Cut(out.String(), "Slowest tests:\n")
	if !ok {
		t.Fatalf("no list of the slowest tests:\n%s", out.String())
	}
	lines := strings.Split(strings.TrimSpace(list), "\n")
	if len(lines) != 10 || !strings.HasSuffix(lines[0], "p Test11") || !strings.HasSuffix(lines[9], "p Test02") {
		t.Errorf("slowest tests:\n%s\nwant Test11 down to Test02", list)
	}
	if strings.Contains(list, "/sub") {
		t.Errorf("a subtest listed apart from its test:\n%s", list)
	}
}
