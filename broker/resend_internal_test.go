package broker

import (
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// TestResendGate: a new delivery's write waits until the resend is done;
// one that was resent meanwhile (the same delivery: its packet id and its
// payload) is not written again, while another under the same id, or one
// with an empty payload, is. Once nothing it noted is left, the gate is
// gone.
func TestResendGate(t *testing.T) {
	srv := mqtt.New(nil)
	cl := srv.NewClient(nil, "t", "c", false)
	dc := &deviceConn{}
	g := &resendGate{done: make(chan struct{})}
	dc.resend.Store(g)
	publish := func(id uint16, payload []byte, dup bool) packets.Packet {
		return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Dup: dup}, PacketID: id, Payload: payload}
	}
	resent, other, empty := []byte("resent"), []byte("resent"), []byte{}

	// A new delivery waits for the resend.
	wrote := make(chan bool, 1)
	go func() {
		pk := publish(7, resent, false)
		wrote <- throughGate(cl, dc, g, &pk)
	}()
	select {
	case <-wrote:
		t.Fatal("a new delivery went out before the resend was done")
	case <-time.After(2 * resendGateWait):
	}
	// The resend writes it, and another message with an empty payload.
	for _, pk := range []packets.Packet{publish(7, resent, true), publish(8, empty, true)} {
		if !throughGate(cl, dc, g, &pk) {
			t.Fatalf("resend of %d not written", pk.PacketID)
		}
	}
	resendDone(dc)
	if <-wrote {
		t.Error("a delivery resent at the CONNACK was written again from the write queue")
	}
	for _, pk := range []packets.Packet{publish(7, other, false), publish(8, empty, false)} {
		if !throughGate(cl, dc, g, &pk) {
			t.Errorf("delivery %d %q not written: it was not the one resent", pk.PacketID, pk.Payload)
		}
	}
	if dc.resend.Load() != nil {
		t.Error("the gate outlived what it noted")
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
