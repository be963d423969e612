package broker

import (
	"context"
	"sync/atomic"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/broker/store"
)

// denyHost is a sessionHost whose read rules can change: topics in deny
// are no longer readable.
type denyHost struct {
	plainHost
	deny atomic.Value // map[string]bool
}

func (h *denyHost) mayRead(_ *mqtt.Client, topic string) bool {
	d, _ := h.deny.Load().(map[string]bool)
	return !d[topic]
}

// TestReconcileDropsUnreadable: copies queued while their topics were
// readable, which the connection lacks, are sent again by reconcile only if
// the session may still read them; one whose read permission was revoked
// meanwhile is not sent, and leaves the queue here and in the store.
func TestReconcileDropsUnreadable(t *testing.T) {
	host := &denyHost{}
	p, st, cl := claimedClient(t, host, "keeper")
	msg := func(topic string) store.Message {
		return toStore(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: topic, Payload: []byte(topic), PacketID: 1})
	}
	seqs, err := st.Append(context.Background(), "acme", []store.Item{
		{ClientID: cl.ID, Message: msg("q/open")}, {ClientID: cl.ID, Message: msg("q/secret")}, {ClientID: cl.ID, Message: msg("q/open2")},
	}, store.Receipt{})
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.stored[cl.ID] = true
	p.storedN.Store(1)
	p.live[cl.ID] = cl
	p.outstanding[cl.ID] = append([]uint64(nil), seqs...)
	p.mu.Unlock()
	// The rule letting the session read q/secret is revoked while the
	// copies wait.
	host.deny.Store(map[string]bool{"q/secret": true})

	p.reconcile(cl)

	var sent []string
	for _, pk := range cl.State.Inflight.GetAll(false) {
		sent = append(sent, pk.TopicName)
	}
	if len(sent) != 2 || sent[0] == "q/secret" || sent[1] == "q/secret" {
		t.Errorf("reconcile sent %v, want q/open and q/open2 only", sent)
	}
	p.mu.Lock()
	out := append([]uint64(nil), p.outstanding[cl.ID]...)
	p.mu.Unlock()
	if len(out) != 2 || out[0] != seqs[0] || out[1] != seqs[2] {
		t.Errorf("outstanding %v, want %v without the revoked copy %d", out, []uint64{seqs[0], seqs[2]}, seqs[1])
	}
	left, err := st.Read(context.Background(), "acme", cl.ID, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range left {
		if q.Message.Topic == "q/secret" {
			t.Errorf("the revoked copy is still in the store: %+v", q)
		}
	}
	if len(left) != 2 {
		t.Errorf("the store holds %d copies, want the 2 readable ones", len(left))
	}
	// A second reconcile sends nothing more.
	p.reconcile(cl)
	if n := cl.State.Inflight.Len(); n != 2 {
		t.Errorf("after a second reconcile %d inflight, want 2", n)
	}
}
