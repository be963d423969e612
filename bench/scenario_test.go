package bench

import (
	"context"
	"net"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// mochiTarget starts a bare mochi-mqtt broker on a free loopback port.
func mochiTarget(t *testing.T) Target {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	srv := mqtt.New(&mqtt.Options{InlineClient: false})
	if err := srv.AddHook(new(allowAll), nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "t", Address: addr})); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return Target{Name: "mochi", Addr: addr, ClientPrefix: "bench-"}
}

// TestScenariosSmoke runs each scenario at a tiny size against bare mochi:
// everything sent arrives, once and in order.
func TestScenariosSmoke(t *testing.T) {
	target := mochiTarget(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Conn(ctx, target, 50, 0, 10*time.Millisecond)
	if err != nil || c.Failures != 0 || c.PerSecond <= 0 || c.ConnackP99 <= 0 {
		t.Errorf("conn: %+v, %v", c, err)
	}
	for _, qos := range []byte{0, 1} {
		r, err := P2P(ctx, target, 3, qos, 64, 0, 200*time.Millisecond)
		if err != nil {
			t.Fatalf("p2p qos %d: %v", qos, err)
		}
		if r.Tally.Lost != 0 || r.Tally.Duplicates != 0 || r.Tally.OutOfOrder != 0 || uint64(r.Tally.Received) != r.Sent || r.FirstError != "" {
			t.Errorf("p2p qos %d: %+v", qos, r)
		}
		if r.P50 <= 0 || r.P99 < r.P50 || r.P999 < r.P99 {
			t.Errorf("p2p qos %d percentiles: %+v", qos, r)
		}
	}
	r, err := P2P(ctx, target, 2, 1, 16, 400, 250*time.Millisecond) // fixed rate
	if err != nil || r.Tally.Lost != 0 || r.Sent < 50 || r.Sent > 150 {
		t.Errorf("p2p at 400/s for 250ms: %+v, %v", r, err)
	}
}

// allowAll lets every client connect, publish and subscribe.
type allowAll struct{ mqtt.HookBase }

func (*allowAll) ID() string { return "allow-all" }
func (*allowAll) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}
func (*allowAll) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }
func (*allowAll) OnACLCheck(*mqtt.Client, string, bool) bool              { return true }
