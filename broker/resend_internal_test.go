package broker

import (
	"net"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// gated is a client on a connection with a resend gate.
func gated(t *testing.T) (*mqtt.Client, *deviceConn, *resendGate) {
	conn, peer := net.Pipe()
	t.Cleanup(func() { conn.Close(); peer.Close() })
	dc := &deviceConn{Conn: conn}
	cl := mqtt.New(nil).NewClient(dc, "t", "c", false)
	g := &resendGate{listed: make(chan struct{}), done: make(chan struct{}), listedLimit: resendListedLimit}
	dc.resend.Store(g)
	return cl, dc, g
}

// returns runs fn and reports whether it returned within d.
func returns(fn func(), d time.Duration) bool {
	done := make(chan struct{})
	go func() { fn(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// TestResendGate: a new delivery waits in its ACL check until mochi's
// resend has read the inflight messages (its first resend is handed
// over), and its write waits until the resend is done; a resend's write
// never waits; once done, the gate is gone.
func TestResendGate(t *testing.T) {
	cl, dc, g := gated(t)
	publish := func(dup bool) *packets.Packet {
		return &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Dup: dup}, PacketID: 7, Payload: []byte("x")}
	}
	listed := make(chan struct{})
	go func() { awaitListed(cl, dc); close(listed) }()
	written := make(chan struct{})
	go func() { throughGate(cl, g, publish(false)); close(written) }()
	select {
	case <-listed:
		t.Fatal("a new delivery went on before the resend read the inflight messages")
	case <-written:
		t.Fatal("a new delivery was written before the resend was done")
	case <-time.After(2 * resendGateWait):
	}
	gatedDelivery(cl, publish(false)) // a new delivery's hand-over: not the resend's
	select {
	case <-listed:
		t.Fatal("a new delivery's hand-over was taken for the resend's")
	case <-time.After(2 * resendGateWait):
	}
	gatedDelivery(cl, publish(true)) // the resend's first
	select {
	case <-listed:
	case <-time.After(5 * time.Second):
		t.Fatal("a new delivery still waits after the resend read the inflight messages")
	}
	if !returns(func() { throughGate(cl, g, publish(true)) }, time.Second) {
		t.Fatal("a resend's write waited")
	}
	select {
	case <-written:
		t.Fatal("a new delivery was written before the resend was done")
	case <-time.After(2 * resendGateWait):
	}
	resendDone(dc)
	select {
	case <-written:
	case <-time.After(5 * time.Second):
		t.Fatal("a new delivery's write still waits after the resend was done")
	}
	if dc.resend.Load() != nil {
		t.Error("the gate outlived the resend")
	}
}

// TestResendGateClosed: a delivery waiting for a resend that never comes
// (the connection ended first) stops waiting.
func TestResendGateClosed(t *testing.T) {
	cl, dc, g := gated(t)
	if returns(func() { awaitListed(cl, dc) }, 2*resendGateWait) {
		t.Fatal("a delivery went on before the resend read the inflight messages")
	}
	write := func() {
		throughGate(cl, g, &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 1, Payload: []byte("x")})
	}
	done := make(chan struct{})
	go func() { write(); close(done) }()
	cl.Stop(packets.ErrServerShuttingDown)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("a delivery waited on after its connection closed")
	}
}

// TestResendGateListedLimit: a delivery waiting for a resend that does not
// read the inflight messages (its connection open, its CONNACK's write
// stalled) goes on once the limit has passed; its write still waits for
// the resend to be done.
func TestResendGateListedLimit(t *testing.T) {
	cl, dc, g := gated(t)
	g.listedLimit = 300 * time.Millisecond
	if returns(func() { awaitListed(cl, dc) }, g.listedLimit/2) {
		t.Fatal("a delivery went on before the limit")
	}
	if !returns(func() { awaitListed(cl, dc) }, g.listedLimit+5*time.Second) {
		t.Fatal("a delivery waited past its limit for the resend")
	}
	if cl.Closed() {
		t.Fatal("the connection closed: the wait did not end on its limit")
	}
	if returns(func() {
		throughGate(cl, g, &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 1, Payload: []byte("x")})
	}, 2*resendGateWait) {
		t.Fatal("a new delivery's write went on before the resend was done")
	}
	resendDone(dc) // lets the write above go
}
