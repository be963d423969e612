package broker_test

import (
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/broker/store/memory"
)

// TestDeletedTenantPurged: deleting a tenant removes its persistent
// sessions, their queued messages and its retained messages from the
// session store; another tenant keeps its own.
func TestDeletedTenantPurged(t *testing.T) {
	sessions := memory.New()
	s := newStack(t, func(c *broker.Config) { c.Sessions = sessions })
	for _, tn := range []string{"gone", "stays"} {
		s.tenant(tn)
		sub := mustV5(t, s.addr, user(tn, "sub"), s.device(tn, "sub"), "sub", func(cp *paho.Connect) {
			cp.CleanStart = false
			cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(3600)}
		})
		sub.sub(t, "q/#", 1)
		sub.Disconnect(&paho.Disconnect{})
		pub := mustV5(t, s.addr, user(tn, "pub"), s.device(tn, "pub"), "pub")
		pub.pub(t, "q/1", "queued", 1, false)
		pub.pub(t, "state", "retained", 1, true)
	}
	if ss, _ := sessions.Sessions(t.Context(), "gone"); len(ss) == 0 {
		t.Fatal("no persistent session stored before the deletion")
	}
	if err := s.store.DeleteTenant(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the deleted tenant's sessions and retained messages to be purged", func() bool {
		ss, _ := sessions.Sessions(t.Context(), "gone")
		rs, _ := sessions.Retained(t.Context(), "gone")
		q, _ := sessions.Read(t.Context(), "gone", "sub", 0, 10)
		return len(ss) == 0 && len(rs) == 0 && len(q) == 0
	})
	ss, _ := sessions.Sessions(t.Context(), "stays")
	rs, _ := sessions.Retained(t.Context(), "stays")
	q, _ := sessions.Read(t.Context(), "stays", "sub", 0, 10)
	if len(ss) != 1 || len(rs) != 1 || len(q) != 1 {
		t.Errorf("the other tenant: %d sessions, %d retained, %d queued", len(ss), len(rs), len(q))
	}
}
