package cluster_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/cluster"
	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

const token = "rop_cluster-test-token-0123456789"

// TestRemote: a control plane's Remote reaches a node's hub through the
// internal API: watch and publish, store errors keep their kind, a wrong
// token is refused, and no node is ErrUnavailable.
func TestRemote(t *testing.T) {
	ctx := tenants.WithActor(context.Background(), "test")
	store, err := tenants.Open(ctx, "", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if _, err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	acc, err := store.CreateAccount(ctx, tenants.Signup{Email: "o@example.com", Password: "correct horse battery"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.CreateTenant(ctx, acc.ID, tenants.TenantInput{Slug: "acme"}); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	ev := events.NewMemory(10)
	hub, err := broker.New(broker.Config{Directory: store, Changes: store.Changes(), Log: log, Events: ev})
	if err != nil {
		t.Fatal(err)
	}
	defer hub.Close()
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go hub.Serve(ln)

	remote := cluster.NewRemote(store, token, log)
	if err := remote.Publish(ctx, "acme", dataplane.Message{Topic: "a", Payload: []byte("x")}); !errors.Is(err, tenants.ErrUnavailable) {
		t.Fatalf("publish with no node: %v", err)
	}
	node := httptest.NewServer(cluster.Serve(hub, ev, token, log))
	defer node.Close()
	if err := store.AnnounceNode(ctx, tenants.Node{ID: "n1", URL: node.URL, ForwardAddr: ln.Addr().String()}); err != nil {
		t.Fatal(err)
	}

	got := make(chan dataplane.Message, 4)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := remote.Watch(wctx, "acme", "alice", "s/#", func(m dataplane.Message) { got <- m }); err != nil {
		t.Fatal(err)
	}
	if err := remote.Publish(ctx, "acme", dataplane.Message{Topic: "s/1", Payload: []byte{0, 1, 2}, QoS: 1}); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if m.Topic != "s/1" || string(m.Payload) != "\x00\x01\x02" || m.QoS != 1 {
			t.Errorf("watched %+v", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the remote watch got nothing")
	}
	var fe *tenants.FieldError
	if err := remote.Publish(ctx, "acme", dataplane.Message{Topic: "s/+"}); !errors.As(err, &fe) || fe.Field != "topic" {
		t.Errorf("a bad topic through the remote: %v", err)
	}
	if err := remote.Watch(ctx, "acme", "alice", "$SYS/#", func(dataplane.Message) {}); !errors.As(err, &fe) || fe.Field != "filter" {
		t.Errorf("a bad filter through the remote: %v", err)
	}
	if n := remote.ConnectionCount("acme"); n != 0 {
		t.Errorf("connections: %d", n)
	}
	// Events: the node's and the control plane's own, merged by time.
	local := events.NewMemory(10)
	local.Emit(events.Event{Time: time.Now().Add(-time.Hour), Tenant: "acme", Type: events.PlanChanged})
	ev.Emit(events.Event{Time: time.Now(), Tenant: "acme", Type: events.Connected, Device: "d1"})
	ev.Emit(events.Event{Time: time.Now(), Tenant: "other", Type: events.Connected, Device: "x"})
	merged := cluster.Events{Remote: remote, Local: local}.Recent("acme")
	if len(merged) != 2 || merged[0].Type != events.PlanChanged || merged[1].Device != "d1" {
		t.Errorf("merged events: %+v", merged)
	}

	// A caller without the token gets nothing from a node.
	wrong := cluster.NewRemote(store, token+"x", log)
	if err := wrong.Publish(ctx, "acme", dataplane.Message{Topic: "s/2"}); err == nil {
		t.Error("a wrong token published")
	}
	// A node that stopped announcing drops out.
	if err := store.RetireNode(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	if err := remote.Publish(ctx, "acme", dataplane.Message{Topic: "s/3"}); !errors.Is(err, tenants.ErrUnavailable) {
		t.Errorf("publish after the node retired: %v", err)
	}
}
