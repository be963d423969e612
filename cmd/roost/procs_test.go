package main

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/roosthub/roost/internal/testenv"
)

// TestSyncProcsOnOneCore: `roost serve` given one CPU (pinned by
// taskset, as a container's CPU limit of 1 would have the runtime do)
// runs with two Ps when its embedded store fsyncs each write, so that the
// connections run on while Pebble's log writer sits in fdatasync; with
// the store syncing on an interval, or GOMAXPROCS set, it keeps what the
// runtime or the operator chose.
func TestSyncProcsOnOneCore(t *testing.T) {
	if _, err := exec.LookPath("taskset"); err != nil {
		testenv.Require(t, "taskset is not installed (apt-get install util-linux)")
	}
	bin := roostBinary(t)
	for _, tc := range []struct {
		name   string
		env    []string
		raised bool
	}{
		{"always", nil, true},
		{"interval", []string{"ROOST_STORE_SYNC=interval"}, false},
		{"set", []string{"GOMAXPROCS=1"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			httpAddr, mqttAddr := freeAddr(t), freeAddr(t)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "taskset", "-c", "0", bin, "serve")
			cmd.Env = append(os.Environ(), append([]string{"GOMAXPROCS=", "ROOST_DATA_DIR=" + t.TempDir(),
				"ROOST_HTTP_ADDR=" + httpAddr, "ROOST_MQTT_ADDR=" + mqttAddr}, tc.env...)...)
			log := &testenv.Buffer{}
			cmd.Stdout, cmd.Stderr = log, log
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() {
				cmd.Process.Kill()
				cmd.Wait()
			}()
			ready := false
			for deadline := time.Now().Add(30 * time.Second); !ready && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
				if resp, err := http.Get("http://" + httpAddr + "/readyz"); err == nil {
					resp.Body.Close()
					ready = resp.StatusCode == http.StatusOK
				}
			}
			if !ready {
				t.Fatalf("roost serve did not become ready:\n%s", log)
			}
			raised := strings.Contains(log.String(), "GOMAXPROCS raised")
			if raised != tc.raised || raised && !strings.Contains(log.String(), "from=1 to=2") {
				t.Errorf("GOMAXPROCS raised from 1 to 2: %t, want %t\n%s", raised, tc.raised, log)
			}
		})
	}
}
