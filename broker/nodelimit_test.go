package broker_test

import (
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/tenants"
)

// TestNodeConnectionsBounded: past MaxNodeConnections a connection is
// closed as it is accepted, counted by reason; the devices connected keep
// working, and one leaving makes room for the next. Connections in
// handshake count as much as served ones.
func TestNodeConnectionsBounded(t *testing.T) {
	s := newStack(t, func(c *broker.Config) { c.MaxNodeConnections = 3 })
	s.tenant("acme")
	secret := s.device("acme", "d1", tenants.ClientIDsAny)
	a := mustV5(t, s.addr, user("acme", "d1"), secret, "a")
	b := mustV5(t, s.addr, user("acme", "d1"), secret, "b")
	silent := dialFrom(t, "127.0.0.2", s.addr) // in handshake: it counts
	// Counted in handshake, it is counted against the bound too (the one
	// accept loop counts both before it accepts the next).
	eventually(t, 5*time.Second, "the silent connection counted", func() bool { return broker.SourceHandshakes(s.hub, "127.0.0.2") == 1 })
	if open, refused := judge(t, "127.0.0.3", s.addr, 1, nil); open != 0 || refused != 1 {
		t.Fatal("a fourth connection was left open, want it closed at once")
	}
	if got := scraped(t, s.hub, "roost_handshakes_dropped_total", "reason", "refused_node_full"); got != 1 {
		t.Errorf("roost_handshakes_dropped_total{reason=refused_node_full} = %v, want 1", got)
	}
	a.sub(t, "t/#", 1)
	b.pub(t, "t/x", "still served", 1, false)
	a.expect(t, "t/x", "still served")
	silent.Close()
	eventually(t, 5*time.Second, "a device connects once the silent connection left", func() bool {
		// Until the hub has seen the silent one leave, a connection is
		// closed as it is accepted (a reset, here).
		conn, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
		if err != nil {
			return false
		}
		c, err := connectV5(t, conn, user("acme", "d1"), secret, "c")
		if err != nil {
			return false
		}
		c.Disconnect(&paho.Disconnect{})
		return true
	})
}

func TestDefaultNodeConnections(t *testing.T) {
	for _, tc := range []struct {
		files uint64
		want  int
	}{
		{0, 0}, {100, 0}, {1_024, 922}, {20_000, 18_000}, {1_048_576, 1_046_528},
	} {
		if got := broker.DefaultNodeConnections(tc.files); got != tc.want {
			t.Errorf("DefaultNodeConnections(%d) = %d, want %d", tc.files, got, tc.want)
		}
	}
}
