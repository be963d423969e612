package cluster_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/cluster"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// TestRemotePublishEvent: a control plane running apart has a billing
// event published in its tenant by the tenant's node: a device of the
// tenant subscribed to $events/billing/# gets it as JSON, a device of
// another tenant subscribed alike does not; an event without an $events
// topic is refused with its field, and a wrong token publishes nothing.
func TestRemotePublishEvent(t *testing.T) {
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
	log := slog.New(slog.DiscardHandler)
	hub, err := broker.New(broker.Config{Directory: store, Changes: store.Changes(), Log: log, Events: events.NewMemory(10)})
	if err != nil {
		t.Fatal(err)
	}
	defer hub.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go hub.Serve(ln)
	node := httptest.NewServer(cluster.Serve(hub, nil, token, log))
	defer node.Close()
	if err := store.AnnounceNode(ctx, tenants.Node{ID: "n1", URL: node.URL, ForwardAddr: ln.Addr().String()}); err != nil {
		t.Fatal(err)
	}

	got := map[string]chan *paho.Publish{}
	for _, slug := range []string{"acme", "other"} {
		if _, err := store.CreateTenant(ctx, acc.ID, tenants.TenantInput{Slug: slug}); err != nil {
			t.Fatal(err)
		}
		if _, err := store.CreateACLRule(ctx, slug, tenants.ACLRuleInput{Effect: tenants.Allow, Action: tenants.ActionSubscribe, Topic: "$events/billing/#"}); err != nil {
			t.Fatal(err)
		}
		_, secret, err := store.CreateDevice(ctx, slug, tenants.DeviceInput{Name: "d1"})
		if err != nil {
			t.Fatal(err)
		}
		ch := make(chan *paho.Publish, 10)
		got[slug] = ch
		conn, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c := paho.NewClient(paho.ClientConfig{Conn: conn, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
			func(pr paho.PublishReceived) (bool, error) { ch <- pr.Packet; return true, nil }}})
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if _, err := c.Connect(cctx, &paho.Connect{ClientID: "d1", KeepAlive: 30, CleanStart: true, Username: slug + "/d1", UsernameFlag: true,
			Password: []byte(secret), PasswordFlag: true}); err != nil {
			t.Fatal(err)
		}
		sa, err := c.Subscribe(cctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "$events/billing/#"}}})
		cancel()
		if err != nil || sa.Reasons[0] != 0 {
			t.Fatalf("%s: subscribe: %v %v", slug, sa, err)
		}
		defer c.Disconnect(&paho.Disconnect{})
	}

	remote := cluster.NewRemote(store, token, log)
	at := time.Now().UTC().Truncate(time.Second)
	if err := remote.PublishEvent(ctx, events.Event{Time: at, Tenant: "acme", Type: events.PlanChanged, Reason: "plan free → pro"}); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got["acme"]:
		var e events.Event
		if err := json.Unmarshal(p.Payload, &e); err != nil || p.Topic != "$events/billing/plan_changed" ||
			e.Tenant != "acme" || e.Type != events.PlanChanged || !e.Time.Equal(at) || e.Reason != "plan free → pro" {
			t.Errorf("acme's device got %s %s (%v)", p.Topic, p.Payload, err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("acme's device got no billing event in 20 s")
	}

	var fe *tenants.FieldError
	if err := remote.PublishEvent(ctx, events.Event{Tenant: "acme", Type: events.Connected}); !errors.As(err, &fe) || fe.Field != "type" {
		t.Errorf("an event without a topic: %v, want a field error on type", err)
	}
	wrong := cluster.NewRemote(store, token+"x", log)
	if err := wrong.PublishEvent(ctx, events.Event{Tenant: "acme", Type: events.PaymentFailed}); err == nil {
		t.Error("a wrong token published an event")
	}
	// Another event of acme's came after the refused ones: other's device,
	// subscribed as long, got none of acme's.
	if err := remote.PublishEvent(ctx, events.Event{Time: at, Tenant: "acme", Type: events.PaymentSucceeded}); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got["acme"]:
		if p.Topic != "$events/billing/payment_succeeded" {
			t.Errorf("acme's second event: %s, want payment_succeeded (not the refused ones)", p.Topic)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("acme's device got no second billing event in 20 s")
	}
	select {
	case p := <-got["other"]:
		t.Errorf("other's device got %s %s", p.Topic, p.Payload)
	default:
	}
}
