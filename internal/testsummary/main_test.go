package main

import (
	"os"
	"strings"
	"testing"
)

// TestSummary feeds the `go test -json` of a small module (testdata: one
// passing, one skipping for a server, one failing, one skipping subtest, a
// package that panics and one that does not build) and checks what a person
// reading `make test` sees.
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
	} {
		if !strings.Contains(got, want) {
			t.Errorf("the summary lacks %q:\n%s", want, got)
		}
	}
	for _, unwanted := range []string{"=== RUN", "--- PASS", "TestOK", "noise"} {
		if strings.Contains(got, unwanted) {
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
