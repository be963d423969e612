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

	"github.com/roosthub/roost/broker/fabric"
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
	p, st, cl := claimedClient(t, plainHost{}, "sub")
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
	p, st, cl := claimedClient(t, plainHost{}, "sub")
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

// TestAdoptedSessionGetsUnqueuedPublishInOrder: where sessions live
// anywhere, a publish here stored no copy for a session this broker did
// not hold yet (the fabric queued one, behind the copies queued while the
// client was away); the session is adopted for a reconnecting client as
// the publish is routed, before or after the fabric queued its copy, and
// mochi hands the publish to the new connection before its CONNACK.
// Written then, it would reach the client before the older copies the
// attach's catch-up sends (TestSpreadFleetKill once: 678 before 596-677).
// It must be withheld, kept out of mochi's resend at the CONNACK, and sent
// from the queue after the older copies. A shared group's turn, which no
// queue holds, is delivered as it comes.
func TestAdoptedSessionGetsUnqueuedPublishInOrder(t *testing.T) {
	for _, tc := range []struct {
		name          string
		adoptedBefore bool // adopted before the fabric queued the copy
		shared        bool // the session's subscription is a shared group's
	}{
		{"adopted before the fabric queued", true, false},
		{"adopted after the fabric queued", false, false},
		{"a shared group's turn", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			st := memory.New()
			srv := mqtt.New(nil)
			p := newPersistence(st, "acme", srv, plainHost{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
			p.anywhere = true
			pub := pipeClient(t, srv, "pub")
			p.mu.Lock()
			p.stored["sub"] = true
			p.storedN.Store(1)
			p.mu.Unlock()

			// The copy queued while the client was away, by the fabric.
			older, err := st.Append(ctx, "acme", []store.Item{{ClientID: "sub", Message: toStore(publishOf("older"))}}, store.Receipt{})
			if err != nil {
				t.Fatal(err)
			}
			// The publish: stored here for nobody (the session is not
			// subscribed here yet).
			pk, err := p.storeCopies(pub, publishOf("new"), new(*outboxWrite))
			if err != nil {
				t.Fatal(err)
			}
			if _, tagged := pubIDOf(pk); !tagged {
				t.Fatal("a QoS 1 publish that queued no copy here is not tagged: mochi's deliveries of it cannot be told apart")
			}
			// The client connects here: claimed, adopted, its new
			// connection in mochi's clients, not yet established.
			cl := pipeClient(t, srv, "sub")
			adopt := func() {
				sub := packets.Subscription{Filter: "q/#", Qos: 1}
				if tc.shared {
					sub.Filter = "$share/g/q/#"
				}
				srv.Clients.Add(cl)
				srv.Topics.Subscribe(cl.ID, sub)
				cl.State.Subscriptions.Add(sub.Filter, sub)
				if err := p.claim(ctx, cl.ID); err != nil {
					t.Fatal(err)
				}
			}
			// The fabric queues the session's copy (a shared group's
			// turn has none: no queue holds it).
			queue := func() {
				if tc.shared {
					return
				}
				copies := []fabric.Copy{{ClientID: "sub", QoS: 1}}
				seqs, err := p.queueCopies(ctx, pk, copies)
				if err != nil {
					t.Fatal(err)
				}
				p.queuedHere(pk, copies, seqs)
			}
			if tc.adoptedBefore {
				adopt()
				queue()
				// The copy is noted under the publish's tag: the
				// delivery maps to it, and the client's PUBACK of it
				// deletes it.
				pubID, _ := pubIDOf(pk)
				p.mu.Lock()
				seq := p.pubs[pubID].seqs[cl.ID]
				p.mu.Unlock()
				if seq != older[0]+1 {
					t.Fatalf("the fabric's copy for the session adopted here is noted as %d, want %d", seq, older[0]+1)
				}
			} else {
				queue()
				adopt()
			}

			// mochi routes the publish to it: in its inflight messages,
			// handed over, on its way to the write queue.
			id, err := cl.NextPacketID()
			if err != nil {
				t.Fatal(err)
			}
			out := pk.Copy(false)
			out.PacketID = uint16(id)
			cl.State.Inflight.Set(out)
			cl.State.Inflight.DecreaseSendQuota()
			p.handedOver(cl, out)
			p.routed(pk)
			if tc.shared {
				if p.unsent(cl, &out) {
					t.Fatal("a shared group's turn, which no queue holds, was withheld: it would be lost")
				}
				if _, ok := cl.State.Inflight.Get(out.PacketID); !ok {
					t.Fatal("a shared group's turn is no longer in the inflight messages")
				}
				return
			}
			if !p.unsent(cl, &out) {
				t.Fatal("the publish was written to a connection not yet established, ahead of the older copy in its queue")
			}
			// The CONNACK goes out: mochi's resend must not carry it.
			p.orderResend(cl)
			for _, r := range cl.State.Inflight.GetAll(false) {
				if string(r.Payload) == "new" {
					t.Fatal("the withheld publish is still in the inflight messages mochi resends after the CONNACK")
				}
			}
			// Established; the attach's catch-up sends the queue in order.
			p.established(cl, true)
			p.catchUp(cl)
			p.reconcile(cl)
			p.mu.Lock()
			bySeq := map[uint64]uint16{}
			for id, seq := range p.inflight[cl.ID] {
				bySeq[seq] = id
			}
			p.mu.Unlock()
			if len(bySeq) != 2 {
				t.Fatalf("after the catch-up %d copies are in flight (%v), want the older one and the publish", len(bySeq), bySeq)
			}
			newer := older[0] + 1
			if bySeq[older[0]] == 0 || bySeq[newer] == 0 || bySeq[older[0]] > bySeq[newer] {
				t.Errorf("sent with packet ids older %d, new %d: want the older first", bySeq[older[0]], bySeq[newer])
			}
			if n := cl.State.Inflight.Len(); n != 2 {
				t.Errorf("mochi holds %d inflight messages, want 2", n)
			}
		})
	}
}

// TestWithheldAliasAnnouncedAgain: mochi gives a delivery its outbound
// topic alias before Roost can withhold it; when the withheld delivery
// that announced the alias (topic and alias) is dropped, the next
// delivery under that alias, which mochi sends with the alias alone,
// carries the topic again, once.
func TestWithheldAliasAnnouncedAgain(t *testing.T) {
	p, _, cl := newKeeper(t)
	// withheldAnnouncing withholds a delivery announcing alias (topic
	// and alias), as handedOver does, and reports whether its write was
	// dropped.
	withheldAnnouncing := func(payload string, alias, packetID uint16) bool {
		pk := publishOf(payload)
		pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = alias, true
		p.mu.Lock()
		pk = p.tagLocked(pk, map[string]uint64{})
		pubID, _ := pubIDOf(pk)
		p.withhold(cl, pubID, packetID, 0)
		p.mu.Unlock()
		return p.unsent(cl, &pk)
	}
	if !withheldAnnouncing("a", 3, 1) {
		t.Fatal("the withheld delivery was not dropped")
	}
	announced := func(pk packets.Packet) packets.Packet {
		p.announceAlias(cl, &pk)
		return pk
	}
	aliasOnly := publishOf("b")
	aliasOnly.TopicName = ""
	aliasOnly.Properties.TopicAlias, aliasOnly.Properties.TopicAliasFlag = 3, true
	if got := announced(aliasOnly); got.TopicName != "q/x" {
		t.Fatalf("the next delivery under alias 3 has topic %q, want q/x: the client never learned the alias", got.TopicName)
	}
	if got := announced(aliasOnly); got.TopicName != "" {
		t.Errorf("a later delivery under alias 3 has topic %q again; want the alias alone once announced", got.TopicName)
	}
	other := aliasOnly
	other.Properties.TopicAlias = 4
	if got := announced(other); got.TopicName != "" {
		t.Errorf("a delivery under alias 4, never withheld, got topic %q", got.TopicName)
	}
	// One still unannounced as the connection ends is forgotten with it.
	if !withheldAnnouncing("c", 5, 2) || p.unannouncedN.Load() != 1 {
		t.Fatalf("a second withheld announcement: dropped and counted %d, want 1", p.unannouncedN.Load())
	}
	p.gone(cl)
	if n := p.unannouncedN.Load(); n != 0 {
		t.Errorf("%d unannounced aliases counted after the connection ended, want 0", n)
	}
}

// pipeClient is a v5 client object with a session that outlives its
// connection (expiry 60 s), on one end of a pipe whose other end reads
// and drops what is written.
func pipeClient(t *testing.T, srv *mqtt.Server, id string) *mqtt.Client {
	t.Helper()
	server, client := net.Pipe()
	go io.Copy(io.Discard, client)
	t.Cleanup(func() { client.Close(); server.Close() })
	cl := srv.NewClient(server, listenerID, id, false)
	cl.Properties.ProtocolVersion = 5
	cl.Properties.Props.SessionExpiryInterval = 60
	return cl
}

// claimedClient is a tenant's persistence on a memory store, judging reads
// by host, with the client id's connection (see pipeClient) in mochi's
// clients and its session claimed.
func claimedClient(t *testing.T, host sessionHost, id string) (*persistence, *memory.Store, *mqtt.Client) {
	t.Helper()
	st := memory.New()
	srv := mqtt.New(nil)
	p := newPersistence(st, "acme", srv, host, slog.New(slog.NewTextHandler(io.Discard, nil)))
	cl := pipeClient(t, srv, id)
	srv.Clients.Add(cl)
	if err := p.claim(context.Background(), cl.ID); err != nil {
		t.Fatal(err)
	}
	return p, st, cl
}

// TestStalePubackNotResent: a PUBACK mochi held among the inflight
// messages of the connection taken over (it holds one while it writes it)
// is not resent to the new connection: it would acknowledge the packet id
// the client may be giving a new publish.
func TestStalePubackNotResent(t *testing.T) {
	p, _, cl := claimedClient(t, plainHost{}, "sub")
	cl.State.Inflight.Set(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: 2})
	cl.State.Inflight.Set(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: 3})
	p.orderResend(cl)
	if _, ok := cl.State.Inflight.Get(2); ok {
		t.Error("the stale PUBACK 2 is still among the inflight messages mochi resends")
	}
	if _, ok := cl.State.Inflight.Get(3); !ok {
		t.Error("the PUBREC 3, which waits for its PUBREL, was taken out")
	}
}
