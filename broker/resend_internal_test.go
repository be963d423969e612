package broker

import (
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// TestResendGate: a new delivery's write waits until the resend is done;
// one the resend wrote meanwhile (the same delivery: its packet id and its
// payload) is not written again from the queue, while the others are. The
// session's own held messages are not noted. The gate is gone once the
// pending writes are through, or at the first write of a delivery handed
// over after it opened.
func TestResendGate(t *testing.T) {
	srv := mqtt.New(nil)
	cl := srv.NewClient(nil, "t", "c", false)
	dc := &deviceConn{}
	g := &resendGate{done: make(chan struct{})}
	dc.resend.Store(g)
	publish := func(id uint16, payload []byte, dup bool) *packets.Packet {
		return &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Dup: dup}, PacketID: id, Payload: payload}
	}
	resent, other := []byte("resent"), []byte("other")
	g.handedOver(publish(7, resent, false))
	g.handedOver(publish(9, other, false))
	g.handedOver(publish(10, []byte{}, false)) // an empty payload: not told apart, not noted

	// A new delivery waits for the resend.
	wrote := make(chan bool, 1)
	go func() { wrote <- throughGate(cl, dc, g, publish(7, resent, false)) }()
	select {
	case <-wrote:
		t.Fatal("a new delivery went out before the resend was done")
	case <-time.After(2 * resendGateWait):
	}
	// The resend writes it, and a message the session held.
	for _, pk := range []*packets.Packet{publish(7, resent, true), publish(8, []byte("held"), true)} {
		if !throughGate(cl, dc, g, pk) {
			t.Fatalf("resend of %d not written", pk.PacketID)
		}
	}
	if _, noted := g.pending[8]; noted {
		t.Error("a message the session held was noted as pending")
	}
	resendDone(dc)
	if <-wrote {
		t.Error("a delivery resent at the CONNACK was written again from the write queue")
	}
	if dc.resend.Load() != g {
		t.Fatal("the gate went with a pending write still to come")
	}
	if !throughGate(cl, dc, g, publish(9, other, false)) {
		t.Error("a pending delivery that was not resent was not written")
	}
	if dc.resend.Load() != nil {
		t.Error("the gate outlived its pending writes")
	}

	// A pending write that never comes (mochi held it back for the
	// client's receive maximum): the gate goes at the first write of a
	// delivery handed over since it opened.
	g = &resendGate{done: make(chan struct{})}
	dc.resend.Store(g)
	g.handedOver(publish(3, other, false))
	resendDone(dc)
	if !throughGate(cl, dc, g, publish(4, resent, false)) {
		t.Error("a delivery handed over after the gate opened was not written")
	}
	if dc.resend.Load() != nil {
		t.Error("the gate outlived the resend's pending writes")
	}
}

// TestResendGateClosed: a delivery waiting for a resend that never comes
// (the connection ended first) stops waiting.
func TestResendGateClosed(t *testing.T) {
	srv := mqtt.New(nil)
	cl := srv.NewClient(nil, "t", "c", false)
	dc := &deviceConn{}
	g := &resendGate{done: make(chan struct{})}
	dc.resend.Store(g)
	done := make(chan struct{})
	go func() {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 1, Payload: []byte("x")}
		throughGate(cl, dc, g, &pk)
		close(done)
	}()
	cl.Stop(packets.ErrServerShuttingDown)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("a delivery waited on after its connection closed")
	}
}
