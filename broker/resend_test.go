package broker_test

import (
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/tenants"
)

// TestResumedInOrder: a connection that resumes a stored session is sent
// what the session held before anything published after its CONNACK,
// each message once [MQTT-4.6.0-1]: a session it keeps (the store holds
// new deliveries back, see persistence.holds) and one it resumes for
// itself alone (MQTT 5, Clean Start 0, no session expiry: the store does
// not queue for it; see resend.go). The spread case is
// TestSpreadResumedInOrder.
func TestResumedInOrder(t *testing.T) {
	for _, c := range []struct {
		name    string
		connect func(*paho.Connect)
	}{{"kept", keepSession}, {"for one connection", func(c *paho.Connect) { c.CleanStart = false }}} {
		t.Run(c.name, func(t *testing.T) {
			d := newDurable(t)
			d.tenant("acme")
			secret := d.device("acme", "d", tenants.ClientIDsAny)
			left := mustV5(t, d.addr, user("acme", "d"), secret, "pc", keepSession)
			left.sub(t, "q/#", 1)
			left.Disconnect(&paho.Disconnect{})
			resumedInOrder(t, d.stack, secret, d.addr, c.connect, nil)
		})
	}
}

// resumedInOrder publishes many messages for the tenant acme's session
// "pc" (subscribed to q/#, its client away), then resumes it on addr,
// with a client that reads its CONNACK and then nothing for a while, as
// on a slow link: the resend of what the session held fills the socket's
// buffers and waits, while three more messages are published. The client
// must get the held ones in order, then the three, each once. queued, if
// given, waits until n messages are queued (else a barrier on the
// publisher's connection does).
func resumedInOrder(t *testing.T, s *stack, secret, addr string, connect func(*paho.Connect), queued func(n int)) {
	t.Helper()
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(s.logs.String())
		}
	})
	const held = 400
	lifted := int64(1_000_000)
	for _, q := range []string{"publish_rate", "tenant_publish_rate"} {
		s.setQuota("acme", q, lifted)
	}
	pub := mustV5(t, s.addr, user("acme", "d"), secret, "p")
	pad := strings.Repeat("x", 4<<10)
	for i := range held {
		pub.pub(t, "q/x", fmt.Sprint(i, " ", pad), 1, false)
	}
	if queued != nil {
		queued(held)
	} else {
		pub.barrier(t)
	}
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	paused := &pausedConn{Conn: raw, resume: make(chan struct{})}
	once, err := connectV5(t, paused, user("acme", "d"), secret, "pc", connect)
	if err != nil {
		t.Fatal(err)
	}
	paused.paused.Store(true)
	if !once.connack.SessionPresent {
		t.Fatal("the session was not resumed (CONNACK session present 0)")
	}
	for i := range 3 {
		if r := pub.pub(t, "q/x", fmt.Sprint("live ", i), 1, false); r.ReasonCode >= 0x80 {
			t.Fatalf("publish live %d: PUBACK 0x%02X", i, r.ReasonCode)
		}
	}
	time.Sleep(300 * time.Millisecond)
	close(paused.resume)
	want := make([]string, 0, held+3)
	for i := range held {
		want = append(want, fmt.Sprint(i))
	}
	for i := range 3 {
		want = append(want, fmt.Sprint("live ", i))
	}
	for i, w := range want {
		select {
		case m := <-once.msgs:
			if got, _, _ := strings.Cut(string(m.Payload), " x"); got != w {
				t.Fatalf("message %d: got %q, want %q", i, got, w)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("message %d (%q) did not come within 5s", i, w)
		}
	}
	once.quiet(t, 300*time.Millisecond, "a message twice")
}

// pausedConn is a client's connection that stops reading once paused,
// until resume is closed.
type pausedConn struct {
	net.Conn
	paused atomic.Bool
	resume chan struct{}
}

func (c *pausedConn) Read(b []byte) (int, error) {
	if c.paused.Load() {
		<-c.resume
	}
	return c.Conn.Read(b)
}
