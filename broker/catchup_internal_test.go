package broker

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/broker/fabric"
	"github.com/roosthub/roost/broker/store"
	"github.com/roosthub/roost/broker/store/memory"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// stepStore is a session store whose next Append or Read runs a step once
// the store has done it and before its caller goes on: the moment another
// goroutine may act in between.
type stepStore struct {
	*memory.Store
	afterAppend, afterRead func()
}

func (s *stepStore) Append(ctx context.Context, tenant string, items []store.Item, r store.Receipt) ([]uint64, error) {
	seqs, err := s.Store.Append(ctx, tenant, items, r)
	if step := s.afterAppend; step != nil {
		s.afterAppend = nil
		step()
	}
	return seqs, err
}

func (s *stepStore) Read(ctx context.Context, tenant, clientID string, after uint64, limit int) ([]store.Queued, error) {
	q, err := s.Store.Read(ctx, tenant, clientID, after, limit)
	if step := s.afterRead; step != nil {
		s.afterRead = nil
		step()
	}
	return q, err
}

// plainHost is a sessionHost that allows everything.
type plainHost struct{}

func (plainHost) mayRead(*mqtt.Client, string) bool               { return true }
func (plainHost) quotas() tenants.Quotas                          { return tenants.Quotas{MaxQueued: 100} }
func (plainHost) queuePolicy(context.Context) tenants.QueuePolicy { return tenants.DropNewest }
func (plainHost) heldWill(string) *store.Will                     { return nil }
func (plainHost) fenced()                                         {}
func (plainHost) raise(events.Event)                              {}

// newKeeper is a tenant's persistence where sessions live anywhere, with
// the session "keeper" connected and subscribed to q/#.
func newKeeper(t *testing.T) (*persistence, *stepStore, *mqtt.Client) {
	t.Helper()
	st := &stepStore{Store: memory.New()}
	srv := mqtt.New(nil)
	p := newPersistence(st, "acme", srv, plainHost{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	p.anywhere = true
	cl := pipeClient(t, srv, "keeper")
	srv.Clients.Add(cl)
	srv.Topics.Subscribe(cl.ID, packets.Subscription{Filter: "q/#", Qos: 1})
	if err := p.claim(context.Background(), cl.ID); err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.stored[cl.ID] = true
	p.storedN.Store(1)
	p.live[cl.ID] = cl
	p.mu.Unlock()
	return p, st, cl
}

// arrival is a message from another node whose sender queued copy seq
// for the session clientID.
func arrival(payload, clientID string, seq uint64) fabric.Message {
	return fabric.Message{Topic: "q/x", Payload: []byte(payload), QoS: 1, Seqs: map[string]uint64{clientID: seq}}
}

func publishOf(payload string) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: "q/x", Payload: []byte(payload),
		PacketID: 1, Created: time.Now().Unix()}
}

// TestCatchUpLeavesCopiesBeingQueued: a catchUp that reads a copy the
// store hook has appended and not yet noted does not send it: mochi
// delivers it (TestSpreadSessionTakeover got such a copy twice).
func TestCatchUpLeavesCopiesBeingQueued(t *testing.T) {
	p, st, cl := newKeeper(t)
	done := make(chan struct{})
	st.afterAppend = func() {
		// The copy is in the store, not yet noted: a catchUp reads it now.
		read := make(chan struct{})
		st.afterRead = func() { close(read) }
		go func() {
			defer close(done)
			p.catchUp(cl)
		}()
		<-read
		// A catchUp that does not wait for the append sends the copy
		// within this time; one that waits is still waiting after it.
		select {
		case <-done:
		case <-time.After(200 * time.Millisecond):
		}
	}
	pk, err := p.beforeAck(&mqtt.Client{ID: "pub"}, publishOf("1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	<-done
	if n := cl.State.Inflight.Len(); n != 0 {
		t.Errorf("the catchUp sent %d messages, want none (the copy is mochi's to deliver)", n)
	}
	if !p.queuedFor(pk, cl.ID) {
		t.Error("the publish is not tagged with the session's copy")
	}
	if out := p.outstanding[cl.ID]; len(out) != 1 {
		t.Errorf("outstanding %v, want the one copy", out)
	}
}

// TestCatchUpLeavesCopiesAcknowledged: a copy that arrives from another
// node and is acknowledged while a catchUp reads the queue is neither
// sent again nor kept outstanding.
func TestCatchUpLeavesCopiesAcknowledged(t *testing.T) {
	p, st, cl := newKeeper(t)
	seqs, err := st.Append(context.Background(), "acme", []store.Item{{ClientID: cl.ID, Message: toStore(publishOf("1"))}}, store.Receipt{})
	if err != nil {
		t.Fatal(err)
	}
	st.afterRead = func() {
		// The copy arrives, is delivered with packet id 7 and
		// acknowledged, as deliverRemote, mochi and the PUBACK would.
		p.arrived(publishOf("1"), arrival("1", cl.ID, seqs[0]))
		out := publishOf("1")
		out.PacketID = 7
		cl.State.Inflight.Set(out)
		p.mu.Lock()
		p.inflight[cl.ID] = map[uint16]uint64{7: seqs[0]}
		p.mu.Unlock()
		p.acknowledged(cl, 7)
		cl.State.Inflight.Delete(7)
	}
	p.catchUp(cl)
	if n := cl.State.Inflight.Len(); n != 0 {
		t.Errorf("the catchUp sent %d messages, want none (the copy was acknowledged)", n)
	}
	if out := p.outstanding[cl.ID]; len(out) != 0 {
		t.Errorf("outstanding %v, want none", out)
	}
	if len(p.acking) != 0 {
		t.Errorf("acking %v, want nothing once the reads ended", p.acking)
	}
}

// TestCatchUpSendsCopiesSentNowhere: a copy another node queued and sent
// to no node where the session is is sent by the catchUp, once.
func TestCatchUpSendsCopiesSentNowhere(t *testing.T) {
	p, st, cl := newKeeper(t)
	seqs, err := st.Append(context.Background(), "acme", []store.Item{{ClientID: cl.ID, Message: toStore(publishOf("1"))}}, store.Receipt{})
	if err != nil {
		t.Fatal(err)
	}
	p.catchUp(cl)
	p.catchUp(cl)
	if n := cl.State.Inflight.Len(); n != 1 {
		t.Errorf("the catchUps sent %d messages, want the copy once", n)
	}
	if out := p.outstanding[cl.ID]; !slices.Equal(out, seqs) {
		t.Errorf("outstanding %v, want %v", out, seqs)
	}
}

// deliverArrival hands a message from another node to the session as
// deliverRemote and mochi would (arrived, then mochi's delivery under a
// new packet id, then its encoding), and reports whether it would be
// written.
func deliverArrival(p *persistence, cl *mqtt.Client, m fabric.Message) bool {
	pk, after := p.arrived(publishOf(string(m.Payload)), m)
	id, _ := cl.NextPacketID()
	out := pk.Copy(false)
	out.PacketID = uint16(id)
	cl.State.Inflight.Set(out)
	p.handedOver(cl, out)
	cl.State.Inflight.DecreaseSendQuota()
	p.routed(pk)
	after()
	return !p.unsent(cl, &out)
}

// TestArrivalOfCopyCaughtUpWithheld: a copy a catchUp read from the queue
// and sent before its sender's inbox entry arrived here (the attach, or
// the inbox, lagged) is not sent again by that entry's delivery — whether
// the client has acknowledged it meanwhile or not — and mochi keeps no
// inflight message for it.
func TestArrivalOfCopyCaughtUpWithheld(t *testing.T) {
	for _, acked := range []bool{false, true} {
		t.Run(fmt.Sprint("acknowledged ", acked), func(t *testing.T) {
			p, st, cl := newKeeper(t)
			seqs, err := st.Append(context.Background(), "acme", []store.Item{{ClientID: cl.ID, Message: toStore(publishOf("1"))}}, store.Receipt{})
			if err != nil {
				t.Fatal(err)
			}
			p.catchUp(cl)
			sent := cl.State.Inflight.GetAll(false)
			if len(sent) != 1 {
				t.Fatalf("the catchUp sent %d messages, want the copy", len(sent))
			}
			if acked {
				p.acknowledged(cl, sent[0].PacketID)
				cl.State.Inflight.Delete(sent[0].PacketID)
				cl.State.Inflight.IncreaseSendQuota()
			}
			if deliverArrival(p, cl, arrival("1", cl.ID, seqs[0])) {
				t.Error("the copy's inbox entry was written to the client again")
			}
			want := 1
			if acked {
				want = 0
			}
			if n := cl.State.Inflight.Len(); n != want {
				t.Errorf("%d inflight messages, want %d (the catchUp's)", n, want)
			}
			if out := p.outstanding[cl.ID]; len(out) != want {
				t.Errorf("outstanding %v, want %d", out, want)
			}
			if n := p.unsending.Load(); n != 0 {
				t.Errorf("%d withheld deliveries remembered, want none once encoded", n)
			}
		})
	}
}

// TestArrivalLackingCopyWithheld: a message sent here before the
// session's attach (for another subscriber; its sender queued the
// session's copy, sent nowhere) and delivered only after a catchUp sent
// that copy is not sent again; one delivered before is mapped to the copy
// and a later catchUp does not send it again.
func TestArrivalLackingCopyWithheld(t *testing.T) {
	p, st, cl := newKeeper(t)
	if _, err := st.Append(context.Background(), "acme", []store.Item{
		{ClientID: cl.ID, Message: toStore(publishOf("1"))},
		{ClientID: cl.ID, Message: toStore(publishOf("2"))},
	}, store.Receipt{}); err != nil {
		t.Fatal(err)
	}
	lacking := func(payload string) fabric.Message {
		return fabric.Message{Topic: "q/x", Payload: []byte(payload), QoS: 1}
	}
	if !deliverArrival(p, cl, lacking("1")) {
		t.Fatal("a message whose copy nothing sent yet was withheld")
	}
	p.catchUp(cl)
	if deliverArrival(p, cl, lacking("2")) {
		t.Error("a message whose copy the catchUp sent was written again")
	}
	var got []string
	for _, pk := range cl.State.Inflight.GetAll(false) {
		got = append(got, string(pk.Payload))
	}
	if slices.Sort(got); !slices.Equal(got, []string{"1", "2"}) {
		t.Errorf("inflight %v, want each copy once", got)
	}
}
