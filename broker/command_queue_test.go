package broker_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

// TestQueuedCommand: a queued command is recorded; one whose TTL passed
// while its device was away is not delivered when the device comes back,
// and is expired; a live one is, and the device's reply is recorded with
// it (only its own device's, with the right correlation data, the first
// one); a reply after the expiry is ignored. A tenant's pending queued
// commands are bounded by max_pending_commands, with the wait until the
// first expires; another tenant is not held up.
func TestQueuedCommand(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	s.tenant("other")
	s.setQuota("acme", "max_pending_commands", 3)
	secret := s.device("acme", "d5")
	d6 := s.device("acme", "d6")
	otherSecret := s.device("other", "d5")
	persistent := func(c *paho.Connect) {
		c.CleanStart = false
		c.Properties = &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(600)}
	}
	dev := mustV5(t, s.addr, user("acme", "d5"), secret, "d5", persistent)
	if code := dev.sub(t, "$roost/commands/d5/#", 1); code >= 0x80 {
		t.Fatalf("d5 subscribes to its commands: 0x%x", code)
	}
	dev.Disconnect(&paho.Disconnect{})

	queue := func(tenant, name string, ttl time.Duration) (dataplane.CommandResult, error) {
		t.Helper()
		cctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return s.hub.Command(cctx, tenant, "d5", dataplane.Command{Name: name, Queue: true, TTL: ttl})
	}
	status := func(id string) tenants.QueuedCommand {
		t.Helper()
		c, err := s.store.Command(ctx, "acme", "d5", id)
		if err != nil {
			t.Fatalf("command %s: %v", id, err)
		}
		return c
	}
	short, err := queue("acme", "short", time.Second)
	if err != nil || short.Outcome != dataplane.CommandQueued {
		t.Fatalf("queue a 1s command: %+v %v", short, err)
	}
	// (Whether it is still queued depends on how long this took: a
	// second. The long one below is.)
	if c := status(short.ID); c.Topic != short.Topic || !c.ExpiresAt.Equal(short.ExpiresAt) || c.Name != "short" {
		t.Errorf("the queued command: %+v, want short on %s until %s", c, short.Topic, short.ExpiresAt)
	}
	long, err := queue("acme", "long", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if c := status(long.ID); c.Status(s.store.Now()) != tenants.CommandQueued || c.RepliedAt != nil {
		t.Errorf("the long command: %+v, want queued", c)
	}
	// Past the short one's expiry, to the second the broker counts in.
	eventually(t, 20*time.Second, "the short command expires", func() bool {
		return time.Now().After(short.ExpiresAt.Add(1100*time.Millisecond)) && status(short.ID).Status(s.store.Now()) == tenants.CommandExpired
	})

	// Back: the long one comes, the expired one (queued before it) not.
	dev = mustV5(t, s.addr, user("acme", "d5"), secret, "d5", persistent)
	m := dev.nextCommand(t)
	if !strings.HasSuffix(m.Topic, "/long/"+long.ID) {
		t.Fatalf("d5 came back to %s, want the long command %s (the short one expired)", m.Topic, long.ID)
	}
	if m.Properties == nil || m.Properties.MessageExpiry == nil || *m.Properties.MessageExpiry == 0 || *m.Properties.MessageExpiry > 3600 {
		t.Errorf("the long command's message expiry: %+v, want at most 3600s", m.Properties)
	}

	// Replies that do not count: the wrong correlation data, another
	// tenant's d5, another device of acme (refused).
	reply := m.Properties.ResponseTopic
	pctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := dev.Publish(pctx, &paho.Publish{Topic: reply, QoS: 1, Payload: []byte("forged"),
		Properties: &paho.PublishProperties{CorrelationData: []byte("not-the-id")}}); err != nil {
		t.Fatal(err)
	}
	o := mustV5(t, s.addr, user("other", "d5"), otherSecret, "d5")
	o.pub(t, reply, "other says", 1, false)
	o.barrier(t)
	if r := mustV5(t, s.addr, user("acme", "d6"), d6, "d6").pub(t, reply, "d6 says", 1, false); r.ReasonCode < 0x80 {
		t.Errorf("d6 replies for d5: PUBACK 0x%x, want refused", r.ReasonCode)
	}
	dev.barrier(t)
	if c := status(long.ID); c.Status(s.store.Now()) != tenants.CommandQueued || c.Reply != nil {
		t.Fatalf("after replies that do not count: %+v, want still queued", c)
	}
	// The reply, then a second one: the first is kept.
	if _, err := dev.Publish(pctx, &paho.Publish{Topic: reply, QoS: 1, Payload: []byte("done"),
		Properties: &paho.PublishProperties{CorrelationData: []byte(long.ID), ContentType: "text/plain"}}); err != nil {
		t.Fatal(err)
	}
	dev.pub(t, reply, "again", 1, false)
	// A reply to the expired one is ignored.
	dev.pub(t, "$roost/commands/d5/reply/"+short.ID, "too late", 1, false)
	dev.barrier(t)
	if c := status(long.ID); c.Status(s.store.Now()) != tenants.CommandReplied || string(c.Reply) != "done" || c.ReplyContentType != "text/plain" || c.RepliedAt == nil {
		t.Errorf("after the reply: %+v %q, want replied done text/plain", c, c.Reply)
	}
	if c := status(short.ID); c.Status(s.store.Now()) != tenants.CommandExpired || c.Reply != nil {
		t.Errorf("the expired command after a late reply: %+v, want expired without a reply", c)
	}
	if _, err := s.store.Command(ctx, "other", "d5", long.ID); !errors.Is(err, tenants.ErrNotFound) {
		t.Errorf("acme's command read as other's: %v, want not found", err)
	}

	// Bounded: three pending at most (the long one is answered).
	for i := range 3 {
		if _, err := queue("acme", "fill", time.Duration(10+i)*time.Minute); err != nil {
			t.Fatalf("pending command %d: %v", i+1, err)
		}
	}
	_, err = queue("acme", "over", time.Minute)
	var qe *tenants.QuotaError
	var re *tenants.RetryError
	if !errors.As(err, &qe) || qe.Quota != "max_pending_commands" || qe.Limit != 3 || !errors.As(err, &re) || re.After < 9*time.Minute || re.After > 10*time.Minute {
		t.Errorf("a fourth pending command: %v, want max_pending_commands 3 and a wait of about 10 minutes", err)
	}
	if r, err := queue("other", "fine", time.Minute); err != nil || r.Outcome != dataplane.CommandQueued {
		t.Errorf("other's command while acme is full: %+v %v", r, err)
	}

	// Bad TTLs.
	for _, c := range []dataplane.Command{{Name: "x", Queue: true, TTL: 25 * time.Hour}, {Name: "x", Queue: true, TTL: -time.Second}, {Name: "x", TTL: time.Minute}} {
		if _, err := s.hub.Command(context.Background(), "acme", "d5", c); !errors.Is(err, tenants.ErrInvalid) {
			t.Errorf("command %+v: %v, want invalid ttl", c, err)
		}
	}
}
