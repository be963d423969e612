// Command testsummary reads `go test -json` on its standard input, prints what
// a plain `go test` would (the ok/FAIL line of each package, and the whole
// output of each failed test), and ends with what was skipped and why, and
// which tests failed, then the slowest tests (what a suite's time goes to).
// `make test` (scripts/test.sh) pipes the tests into it.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "testsummary:", err)
		os.Exit(1)
	}
}

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action     string
	Package    string
	ImportPath string // build-output, build-fail
	Test       string
	Output     string
	// FailedBuild names the package that did not build, on a package's fail.
	FailedBuild string
	// Elapsed is a test's time in seconds, on its pass or fail.
	Elapsed float64
}

// timed is a top-level test's time.
type timed struct {
	pkg, test string
	elapsed   float64
}

// slowest is how many of the slowest tests the summary names.
const slowest = 10

// skip is a skipped test and the reason it gave.
type skip struct{ pkg, test, reason string }

type summary struct {
	out     io.Writer
	pending map[string][]string // package + "\x00" + test: its output so far
	failed  map[string]bool     // packages with a test whose output was printed
	skips   []skip
	fails   []string
	times   []timed
}

func run(in io.Reader, out io.Writer) error {
	s := &summary{out: out, pending: map[string][]string{}, failed: map[string]bool{}}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			// Not an event: the go command's own messages (a package that
			// does not build before Go 1.24, for instance).
			fmt.Fprintf(out, "%s\n", line)
			continue
		}
		s.event(e)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	s.report()
	return nil
}

func (s *summary) event(e event) {
	key := e.Package + "\x00" + e.Test
	switch e.Action {
	case "build-output":
		fmt.Fprint(s.out, e.Output)
	case "output":
		if e.Test == "" {
			// The package's own lines: ok, FAIL, coverage, a panic outside
			// any test. The per-test markers (-v style) are dropped.
			if isMarker(e.Output) {
				return
			}
			s.pending[key] = append(s.pending[key], e.Output)
			if strings.HasPrefix(e.Output, "ok  ") || strings.HasPrefix(e.Output, "FAIL\t") ||
				strings.HasPrefix(e.Output, "?   ") {
				fmt.Fprint(s.out, strings.Join(s.flushPackage(e.Package), ""))
			}
			return
		}
		s.pending[key] = append(s.pending[key], e.Output)
	case "fail":
		s.time(e)
		if e.Test == "" {
			if e.FailedBuild != "" {
				s.fails = append(s.fails, e.Package+" (does not build)")
			}
			return
		}
		s.fails = append(s.fails, e.Package+" "+e.Test)
		s.failed[e.Package] = true
		for _, l := range s.pending[key] {
			if !strings.HasPrefix(l, "=== ") {
				fmt.Fprint(s.out, l)
			}
		}
		delete(s.pending, key)
	case "skip":
		if e.Test != "" {
			s.skips = append(s.skips, skip{e.Package, e.Test, reason(s.pending[key])})
		}
		delete(s.pending, key)
	case "pass":
		s.time(e)
		if e.Test != "" {
			delete(s.pending, key)
		}
	}
}

// time notes a top-level test's time (its subtests' are within it).
func (s *summary) time(e event) {
	if e.Test != "" && !strings.Contains(e.Test, "/") {
		s.times = append(s.times, timed{e.Package, e.Test, e.Elapsed})
	}
}

// flushPackage returns the package's own lines to print when it ends; when it
// failed without a failed test to show for it (a crash, a timeout), every
// line its tests wrote comes first.
func (s *summary) flushPackage(pkg string) []string {
	own := s.pending[pkg+"\x00"]
	delete(s.pending, pkg+"\x00")
	failedPkg := false
	for _, l := range own {
		if strings.HasPrefix(l, "FAIL") {
			failedPkg = true
		}
	}
	var lines []string
	for key, out := range s.pending {
		p, _, _ := strings.Cut(key, "\x00")
		if p != pkg {
			continue
		}
		if failedPkg && !s.failed[pkg] {
			lines = append(lines, out...)
		}
		delete(s.pending, key)
	}
	return append(lines, own...)
}

// isMarker reports whether a line is one of the per-test lines that -json
// adds (it runs the tests as -v does) and a plain `go test` does not print.
func isMarker(l string) bool {
	t := strings.TrimSpace(l)
	return strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- PASS") ||
		strings.HasPrefix(t, "--- SKIP") || l == "PASS\n"
}

// reason is what t.Skip said: the last line a skipped test logged, or,
// since a cleanup may log after the skip, the last that reads like a
// reason to skip.
func reason(out []string) string {
	last, likely := "", ""
	for _, l := range out {
		t := strings.TrimSpace(l)
		if t == "" || isMarker(l) {
			continue
		}
		// "file_test.go:12: the reason" → "the reason"
		if f, rest, ok := strings.Cut(t, ": "); ok && strings.Contains(f, ".go:") {
			t = rest
		}
		last = t
		lower := strings.ToLower(t)
		for _, w := range []string{"skip", "not set", "not installed", "known bug", "needs", "short"} {
			if strings.Contains(lower, w) {
				likely = t
			}
		}
	}
	switch {
	case likely != "":
		return likely
	case last != "":
		return last
	}
	return "no reason given"
}

func (s *summary) report() {
	if len(s.skips) > 0 {
		by := map[string][]skip{}
		for _, k := range s.skips {
			by[k.reason] = append(by[k.reason], k)
		}
		reasons := make([]string, 0, len(by))
		for r := range by {
			reasons = append(reasons, r)
		}
		sort.Slice(reasons, func(i, j int) bool {
			if len(by[reasons[i]]) != len(by[reasons[j]]) {
				return len(by[reasons[i]]) > len(by[reasons[j]])
			}
			return reasons[i] < reasons[j]
		})
		fmt.Fprintf(s.out, "\n%d %s skipped:\n", len(s.skips), plural(len(s.skips), "test", "tests"))
		servers := false
		for _, r := range reasons {
			ks := by[r]
			names := make([]string, 0, len(ks))
			for _, k := range ks {
				names = append(names, k.test)
			}
			sort.Strings(names)
			fmt.Fprintf(s.out, "  %3d  %s\n       %s\n", len(ks), r, abbreviate(names, 6))
			if strings.Contains(r, "ROOST_TEST_") || strings.Contains(r, "not installed") {
				servers = true
			}
		}
		if servers {
			fmt.Fprintln(s.out, "\nStart the test servers (Postgres, Redis, stripe-mock) with `make services` and run the")
			fmt.Fprintln(s.out, "`export` lines it prints, or leave ROOST_TEST_*_URL unset and `make test` starts the installed")
			fmt.Fprintln(s.out, "ones itself; ROOST_TEST_STRICT=1 turns these skips into failures.")
		}
	}
	if len(s.times) > 0 {
		sort.SliceStable(s.times, func(i, j int) bool { return s.times[i].elapsed > s.times[j].elapsed })
		fmt.Fprintln(s.out, "\nSlowest tests:")
		for _, t := range s.times[:min(slowest, len(s.times))] {
			fmt.Fprintf(s.out, "  %7.1fs  %s %s\n", t.elapsed, t.pkg, t.test)
		}
	}
	if len(s.fails) > 0 {
		fmt.Fprintln(s.out, "\nFailed:")
		for _, f := range s.fails {
			fmt.Fprintf(s.out, "  %s\n", f)
		}
	}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func abbreviate(names []string, n int) string {
	if len(names) <= n {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:n], ", "), len(names)-n)
}
