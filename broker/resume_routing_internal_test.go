package broker

import (
	"context"
	"io"
	"log/slog"
	"maps"
	"net"
	"slices"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/broker/store"
	"github.com/roosthub/roost/broker/store/memory"
)

// TestResumeWhileRouting: a session resumes while a message for it is
// still being routed to the client object its new connection took over
// (mochi copied that object's waiting messages a moment before the message
// reached it). Handing it to the old object asks for a recheck; the new
// connection's established runs before the routing ends and finds the copy
// still routing. Once it is routed the copy must be sent on the new
// connection, not left for the sweep 30 seconds later, after newer ones
// (TestQueueOverflowDropsOldest once got 7-10 and not 11 within 5 s).
func TestResumeWhileRouting(t *testing.T) {
	ctx := context.Background()
	st := memory.New()
	srv := mqtt.New(nil)
	p := newPersistence(st, "acme", srv, plainHost{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	server, client := net.Pipe()
	go io.Copy(io.Discard, client)
	t.Cleanup(func() { client.Close(); server.Close() })
	cl := srv.NewClient(server, listenerID, "sub", false)
	cl.Properties.ProtocolVersion = 5
	cl.Properties.Props.SessionExpiryInterval = 60
	srv.Clients.Add(cl)
	if err := p.claim(ctx, cl.ID); err != nil {
		t.Fatal(err)
	}
	// The copy is stored and tagged: mochi is routing it.
	pk := publishOf("11")
	seqs, err := st.Append(ctx, "acme", []store.Item{{ClientID: cl.ID, Message: toStore(pk)}}, store.Receipt{})
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.outstanding[cl.ID] = []uint64{seqs[0]}
	pk = p.tagLocked(pk, map[string]uint64{cl.ID: seqs[0]})
	// handedOver gave it to the object taken over: look again once routed.
	p.recheck[cl.ID] = true
	p.mu.Unlock()

	p.established(cl, false) // the new connection is ready; the copy still routing
	if n := cl.State.Inflight.Len(); n != 0 {
		t.Fatalf("established sent %d messages while the copy was being routed, want none yet", n)
	}
	p.routed(pk) // mochi is done routing it (to the old object)
	sent := cl.State.Inflight.GetAll(false)
	if len(sent) != 1 || string(sent[0].Payload) != "11" {
		t.Fatalf("after the routing ended the new connection has %d messages in flight, want the copy 11", len(sent))
	}
	if seq := p.inflight[cl.ID][sent[0].PacketID]; seq != seqs[0] {
		t.Errorf("the resent copy is noted as seq %d, want %d", seq, seqs[0])
	}
}

// TestHoldKeepsQueueOrder: a session's deliveries are held back while an
// older copy of its queue is still on its way, and sent from the queue in
// queue order once it arrived; the hold then ends. Copy a is being routed
// (perhaps to the client object the connection took over, where it would
// be lost); b reaches the connection before it is established, c after:
// written as mochi hands them over, b and c would overtake a (issue 19's
// takeover ordering). Once a is routed, a, b and c go out in that order,
// and d, delivered after, is mochi's own.
func TestHoldKeepsQueueOrder(t *testing.T) {
	ctx := context.Background()
	st := memory.New()
	srv := mqtt.New(nil)
	p := newPersistence(st, "acme", srv, plainHost{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	server, client := net.Pipe()
	go io.Copy(io.Discard, client)
	t.Cleanup(func() { client.Close(); server.Close() })
	cl := srv.NewClient(server, listenerID, "sub", false)
	cl.Properties.ProtocolVersion = 5
	cl.Properties.Props.SessionExpiryInterval = 60
	srv.Clients.Add(cl)
	if err := p.claim(ctx, cl.ID); err != nil {
		t.Fatal(err)
	}
	// stored queues a copy and tags the publish, as the store hook does.
	stored := func(payload string) (packets.Packet, uint64) {
		pk := publishOf(payload)
		seqs, err := st.Append(ctx, "acme", []store.Item{{ClientID: cl.ID, Message: toStore(pk)}}, store.Receipt{})
		if err != nil {
			t.Fatal(err)
		}
		p.mu.Lock()
		p.outstanding[cl.ID] = insertSeq(p.outstanding[cl.ID], seqs[0])
		pk = p.tagLocked(pk, map[string]uint64{cl.ID: seqs[0]})
		p.mu.Unlock()
		return pk, seqs[0]
	}
	// deliver hands a tagged publish to the connection as mochi does:
	// in its inflight messages with a packet id, then OnQosPublish. It
	// reports whether the delivery stands (not withheld).
	deliver := func(pk packets.Packet) bool {
		id, err := cl.NextPacketID()
		if err != nil {
			t.Fatal(err)
		}
		pk.PacketID = uint16(id)
		cl.State.Inflight.Set(pk)
		p.handedOver(cl, pk)
		pubID, _ := pubIDOf(pk)
		p.mu.Lock()
		defer p.mu.Unlock()
		_, withheld := p.unsend[cl.ID][pubID]
		return !withheld
	}
	a, seqA := stored("a") // being routed
	b, seqB := stored("b")
	if deliver(b) {
		t.Fatal("b was delivered before the connection was established: it would overtake what mochi resends")
	}
	p.routed(b)
	p.established(cl, false)
	c, seqC := stored("c")
	if deliver(c) {
		t.Fatal("c was delivered while a, older, was still being routed")
	}
	p.routed(c)
	p.mu.Lock()
	sentEarly := len(p.inflight[cl.ID])
	p.mu.Unlock()
	if sentEarly != 0 {
		t.Fatalf("%d messages sent while a, older than them, was still being routed; want none", sentEarly)
	}
	p.routed(a) // a reached nobody here (the old client object)
	bySeq := map[uint64]uint16{}
	p.mu.Lock()
	for id, seq := range p.inflight[cl.ID] {
		bySeq[seq] = id
	}
	holding := p.holding[cl.ID]
	p.mu.Unlock()
	for _, seq := range []uint64{seqA, seqB, seqC} {
		if _, ok := bySeq[seq]; !ok {
			t.Fatalf("copy %d was not sent once a was routed (sent: %v)", seq, bySeq)
		}
	}
	if !(bySeq[seqA] < bySeq[seqB] && bySeq[seqB] < bySeq[seqC]) {
		t.Errorf("sent with packet ids a %d, b %d, c %d: want them in queue order", bySeq[seqA], bySeq[seqB], bySeq[seqC])
	}
	if holding {
		t.Error("the session still holds its deliveries after everything held was sent")
	}
	d, seqD := stored("d")
	if !deliver(d) {
		t.Fatal("d was withheld after the hold ended")
	}
	p.routed(d)
	p.mu.Lock()
	defer p.mu.Unlock()
	if got := p.inflight[cl.ID]; len(got) != 4 || !slices.Contains(slices.Collect(maps.Values(got)), seqD) {
		t.Errorf("in flight after d: %v; want a, b, c and d, each once", got)
	}
}
