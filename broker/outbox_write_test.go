package broker_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/broker/store"
	"github.com/roosthub/roost/broker/store/memory"
)

// appendCounter is a memory store that records the client ids of each
// Append's items.
type appendCounter struct {
	*memory.Store
	mu      sync.Mutex
	appends [][]string
}

func (s *appendCounter) Append(ctx context.Context, tenant string, items []store.Item, r store.Receipt) ([]uint64, error) {
	ids := make([]string, len(items))
	for i, it := range items {
		ids[i] = it.ClientID
	}
	s.mu.Lock()
	s.appends = append(s.appends, ids)
	s.mu.Unlock()
	return s.Store.Append(ctx, tenant, items, r)
}

// writes counts the Appends with a copy for an outbox, and among them
// those that also carry a copy for a session.
func (s *appendCounter) writes() (outbox, both, sessionOnly int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ids := range s.appends {
		out, sess := false, false
		for _, id := range ids {
			if strings.HasPrefix(id, "\x00out:") {
				out = true
			} else {
				sess = true
			}
		}
		switch {
		case out && sess:
			outbox++
			both++
		case out:
			outbox++
		case sess:
			sessionOnly++
		}
	}
	return outbox, both, sessionOnly
}

// TestOutboxOneWritePerPublish: a QoS 1 publish matching a rule with a
// destination, with a persistent session subscribed, is stored for the
// outbox and for the session in one Append before its PUBACK, not two;
// the subscriber and the receiver get every message.
func TestOutboxOneWritePerPublish(t *testing.T) {
	st := &appendCounter{Store: memory.New()}
	s := newOutboxStack(t, time.Minute, func(c *broker.Config) { c.Sessions = st })
	s.tenant("acme")
	rc := newWebhookReceiver(t)
	s.destination("acme", "hook", rc, "p2p", "")
	sub := mustV5(t, s.addr, user("acme", "sub"), s.device("acme", "sub"), "sub", keepSession)
	if code := sub.sub(t, "p2p", 1); code != 1 {
		t.Fatalf("SUBACK 0x%02x, want 1", code)
	}
	pub := mustV5(t, s.addr, user("acme", "pub"), s.device("acme", "pub"), "pub")
	const n = 20
	for i := range n {
		if r := pub.pub(t, "p2p", fmt.Sprintf(`{"n":%d}`, i), 1, false); r.ReasonCode != 0 {
			t.Fatalf("PUBACK 0x%02x, want 0", r.ReasonCode)
		}
		// Acknowledged: the outbox already holds it.
		if out, _, _ := st.writes(); out != i+1 {
			t.Fatalf("after PUBACK %d the outbox was written %d times, want %d", i+1, out, i+1)
		}
	}
	for i := range n {
		sub.expect(t, "p2p", fmt.Sprintf(`{"n":%d}`, i))
	}
	eventually(t, 20*time.Second, "the receiver has every message", func() bool { return len(rc.messages()) >= n })
	out, both, sessionOnly := st.writes()
	if out != n || both != n || sessionOnly != 0 {
		t.Errorf("%d publishes made %d outbox writes (%d with the session's copy) and %d session-only writes; want %d, all with the copy, and none alone",
			n, out, both, sessionOnly, n)
	}
}
