package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/roosthub/roost/internal/testenv"
)

// walkthrough returns the shell commands of the README's walk-through: the
// sh blocks between the walkthrough markers.
func walkthrough(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "<!-- walkthrough:start -->")
	section, _, ok2 := strings.Cut(rest, "<!-- walkthrough:end -->")
	if !ok || !ok2 {
		t.Fatal("README.md has no walkthrough markers")
	}
	var script strings.Builder
	for {
		_, after, found := strings.Cut(section, "```sh\n")
		if !found {
			break
		}
		block, next, _ := strings.Cut(after, "```")
		script.WriteString(block)
		section = next
	}
	if script.Len() == 0 {
		t.Fatal("the walkthrough has no sh blocks")
	}
	return script.String()
}

// TestReadmeWalkthrough runs the README's curl walk-through, as written,
// against a real `roost serve` started the way `make run` starts it.
func TestReadmeWalkthrough(t *testing.T) {
	for _, tool := range []string{"bash", "curl", "jq", "mosquitto_sub"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Require(t, tool+" is not installed; the README walk-through needs it")
		}
	}
	script := walkthrough(t)
	dir := t.TempDir()
	h := startServe(t, map[string]string{"ROOST_DATA_DIR": filepath.Join(dir, "roost-data")})
	script = strings.ReplaceAll(script, "http://localhost:8080", h.url)
	_, mqttPort, _ := strings.Cut(h.mqtt, ":")
	script = strings.ReplaceAll(script, "-p 1883", "-p "+mqttPort)

	// Twice against the same server and data: the second run must not trip
	// over the first one's account, tenant or device.
	for run := 1; run <= 2; run++ {
		cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("run %d of the README walk-through failed: %v\n--- output ---\n%s\n--- server log ---\n%s", run, err, out, h.stderr)
		}
		if !regexp.MustCompile(`"username": "acme-[0-9]+/sensor-1"`).Match(out) {
			t.Errorf("run %d: walk-through output lacks the device's username:\n%s", run, out)
		}
		for _, want := range []string{"commands/sensor-1 reboot", "tenant.create", "device.create", "acl_rule.create", "api_key.create"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("run %d: walk-through output lacks %q:\n%s", run, want, out)
			}
		}
		if run == 1 {
			// The names are made of the time in seconds: the second run
			// starts in another second.
			time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second)))
		}
	}
}

// TestReadmeWalkthroughFailsVisibly: when the server answers an error, the
// walk-through stops at once and shows the answer, instead of carrying on with
// an empty token or waiting for ever.
func TestReadmeWalkthroughFailsVisibly(t *testing.T) {
	for _, tool := range []string{"bash", "curl", "jq"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Require(t, tool+" is not installed; the README walk-through needs it")
		}
	}
	script := walkthrough(t)
	dir := t.TempDir()
	h := startServe(t, map[string]string{"ROOST_DATA_DIR": filepath.Join(dir, "roost-data")})
	script = strings.ReplaceAll(script, "http://localhost:8080", h.url)
	// A password too short for sign-up: the first command gets a problem.
	script = strings.Replace(script, `"password": "a long passphrase"`, `"password": "short"`, 1)
	start := time.Now()
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("the walk-through passed with a rejected sign-up:\n%s", out)
	}
	if !strings.Contains(string(out), "password") || !strings.Contains(string(out), "jq: error") {
		t.Errorf("the failed sign-up's answer is not shown:\n%s", out)
	}
	if strings.Contains(string(out), "tenant") {
		t.Errorf("the walk-through carried on after the failed sign-up:\n%s", out)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the failing walk-through took %v", d)
	}
}

// TestDocLinks: every relative link in the README and docs/ names a file
// that exists and, with a #fragment, a heading in it (GitHub's anchors).
func TestDocLinks(t *testing.T) {
	files, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, "../../README.md")
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	checked := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range link.FindAllStringSubmatch(outsideCode(string(b)), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			path, frag, _ := strings.Cut(target, "#")
			file := f
			if path != "" {
				file = filepath.Join(filepath.Dir(f), path)
			}
			checked++
			if _, err := os.Stat(file); err != nil {
				t.Errorf("%s links to %s, which does not exist", filepath.Base(f), target)
				continue
			}
			if frag == "" {
				continue
			}
			body, err := os.ReadFile(file)
			if err != nil {
				t.Errorf("%s links to %s: %v", filepath.Base(f), target, err)
				continue
			}
			if !anchors(string(body))[frag] {
				t.Errorf("%s links to %s: %s has no heading #%s", filepath.Base(f), target, path, frag)
			}
		}
	}
	if checked < 10 {
		t.Errorf("checked %d links, want the README's and docs' links (10 or more)", checked)
	}
}

// outsideCode is markdown without its fenced code blocks.
func outsideCode(md string) string {
	var b strings.Builder
	fenced := false
	for _, line := range strings.Split(md, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fenced = !fenced
			continue
		}
		if !fenced {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// anchors are the fragments GitHub gives a markdown file's headings.
func anchors(md string) map[string]bool {
	a := map[string]bool{}
	for _, line := range strings.Split(outsideCode(md), "\n") {
		if !strings.HasPrefix(line, "#") {
			continue
		}
		title := strings.TrimSpace(strings.TrimLeft(line, "#"))
		var slug strings.Builder
		for _, r := range strings.ToLower(title) {
			switch {
			case r == ' ':
				slug.WriteRune('-')
			case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
				slug.WriteRune(r)
			}
		}
		a[slug.String()] = true
	}
	return a
}
