package main

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/roosthub/roost/internal/testenv"
)

// TestHelpAligned: roost --help lists every command with its description
// starting in one column.
func TestHelpAligned(t *testing.T) {
	var out strings.Builder
	if err := run(context.Background(), []string{"--help"}, env(nil), &out, &out); err != nil {
		t.Fatal(err)
	}
	column := -1
	listed := 0
	for _, line := range strings.Split(out.String(), "\n") {
		name, _, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok || !strings.HasPrefix(line, "  ") {
			continue
		}
		listed++
		col := len(line) - len(strings.TrimLeft(line[2+len(name):], " "))
		if column == -1 {
			column = col
		} else if col != column {
			t.Errorf("%q: its description starts at column %d, the others' at %d", name, col, column)
		}
	}
	if listed != len(commands) {
		t.Errorf("help lists %d commands, want %d:\n%s", listed, len(commands), out.String())
	}
}

// TestServeHelp: serve -h starts with a usage line and lists every setting
// once, under headings by concern, each with its variable.
func TestServeHelp(t *testing.T) {
	for _, cmd := range []string{roleAll, roleControl, roleData} {
		err := run(context.Background(), []string{cmd, "-h"}, env(nil), new(strings.Builder), new(strings.Builder))
		var help *helpError
		if !errors.As(err, &help) {
			t.Fatalf("%s -h: %v, want the help", cmd, err)
		}
		text := help.text
		if !strings.HasPrefix(text, "usage: roost "+cmd+" [flags]\n") {
			t.Errorf("%s -h starts %q, want a usage line", cmd, text[:min(len(text), 40)])
		}
		if strings.Contains(text, "\nOther:\n") {
			t.Errorf("%s -h: a setting is in no group:\n%s", cmd, text)
		}
		last := -1
		for _, g := range settingGroups {
			i := strings.Index(text, "\n"+g.title+":\n")
			if i < last {
				t.Errorf("%s -h: group %q missing or out of order", cmd, g.title)
			}
			last = i
		}
		for _, s := range (&config{}).settings() {
			if n := strings.Count(text, "  --"+s.name+" ") + strings.Count(text, "  --"+s.name+"\n"); n != 1 {
				t.Errorf("%s -h lists --%s %d times, want once", cmd, s.name, n)
			}
			if !strings.Contains(text, "        "+envName(s.name)) {
				t.Errorf("%s -h does not name %s", cmd, envName(s.name))
			}
		}
	}
}

// TestFailedStartLeavesNothing: a start that fails because a port is taken
// leaves no data dir behind (nor an operator token in one that was there)
// and prints no token, which could never be shown again.
func TestFailedStartLeavesNothing(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	existing := t.TempDir()
	for _, tc := range []struct {
		name, dir string
		args      []string
		want      string
	}{
		{"API port taken", filepath.Join(t.TempDir(), "roost-data"), []string{"--http-addr", taken.Addr().String(), "--mqtt-addr", "127.0.0.1:0"}, "ROOST_HTTP_ADDR"},
		{"MQTT port taken", filepath.Join(t.TempDir(), "roost-data"), []string{"--http-addr", "127.0.0.1:0", "--mqtt-addr", taken.Addr().String()}, "ROOST_MQTT_ADDR"},
		{"MQTT port taken, data dir there", existing, []string{"--http-addr", "127.0.0.1:0", "--mqtt-addr", taken.Addr().String()}, "ROOST_MQTT_ADDR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr testenv.Buffer
			err := run(context.Background(), append([]string{"serve"}, tc.args...), env(map[string]string{"ROOST_DATA_DIR": tc.dir}), &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("serve with a port taken: %v, want an error naming %s", err, tc.want)
			}
			if strings.Contains(stdout.String(), "operator token") {
				t.Errorf("a failed start printed the operator token:\n%s", stdout.String())
			}
			if tc.dir == existing {
				if _, err := os.Stat(filepath.Join(tc.dir, adminTokenFile)); err == nil {
					t.Error("a failed start kept an operator token it never showed")
				}
			} else if _, err := os.Stat(tc.dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a failed start left its data dir %s behind (%v)", tc.dir, err)
			}
		})
	}
}

// TestRolesNameEveryMissingSetting: roost controlplane (and dataplane)
// without Postgres and the operator token names both at once.
func TestRolesNameEveryMissingSetting(t *testing.T) {
	for _, role := range []string{roleControl, roleData} {
		err := run(context.Background(), []string{role}, env(map[string]string{"ROOST_DATA_DIR": t.TempDir()}), new(strings.Builder), new(strings.Builder))
		if err == nil {
			t.Fatalf("%s without settings started", role)
		}
		for _, want := range []string{"ROOST_DATABASE_URL", "ROOST_ADMIN_TOKEN", "needs 2 more settings"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: %q does not say %q", role, err, want)
			}
		}
	}
}
