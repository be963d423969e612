// Package benchtest starts brokers for the load generator's own tests.
package benchtest

import (
	"net"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/roosthub/roost/bench"
)

// Mochi starts a bare mochi-mqtt broker that lets everyone in, on a free
// loopback port, for the test's lifetime.
func Mochi(t testing.TB) bench.Target {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := mqtt.New(&mqtt.Options{})
	if err := srv.AddHook(new(bench.AllowAll), nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddListener(listeners.NewNet("bench", ln)); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return bench.Target{Name: "mochi", Addr: ln.Addr().String(), ClientPrefix: "bench-"}
}
