package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

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

	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the README walk-through failed: %v\n--- output ---\n%s\n--- server log ---\n%s", err, out, h.stderr)
	}
	for _, want := range []string{`"username": "acme/sensor-1"`, "commands/sensor-1 reboot", "tenant.create", "device.create", "acl_rule.create", "api_key.create"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("walk-through output lacks %q:\n%s", want, out)
		}
	}
}
