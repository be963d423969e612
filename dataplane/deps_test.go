package dataplane_test

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestControlPlaneIndependentOfEngine checks that the REST API and the
// console compile without the MQTT engine: they know the data plane only
// through this package.
func TestControlPlaneIndependentOfEngine(t *testing.T) {
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	out, err := exec.Command(goTool, "list", "-deps", "github.com/roosthub/roost/api", "github.com/roosthub/roost/web").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list listed only %q", deps)
	}
	for _, dep := range deps {
		if strings.HasPrefix(dep, "github.com/mochi-mqtt/") || dep == "github.com/roosthub/roost/broker" {
			t.Errorf("api or web depends on %s", dep)
		}
	}
}
