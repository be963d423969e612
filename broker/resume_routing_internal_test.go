package broker

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"

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

	p.established(cl) // the new connection is ready; the copy still routing
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
