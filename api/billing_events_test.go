package api_test

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/tenants"
)

// TestBillingEventsOutward: billing's events, raised by signed Stripe
// webhooks (stripe-mock makes the customer), reach everything lifecycle
// events do, for their tenant only: the stored history (GET /events by
// type), the app stream, a rule on $events/billing/# (with a condition)
// delivering to a signature-checking webhook, and a device subscribed to
// $events/billing/#. Another tenant with the same rule, stream and
// subscriber gets none of them.
func TestBillingEventsOutward(t *testing.T) {
	e, _ := newBillingEnv(t, allowLoopback(t))
	owner, bob := e.signup("owner"), e.signup("bob")
	e.mustTenant(owner, "acme")
	e.mustTenant(bob, "bobco")
	_, viewerKey := e.mustKey(owner.token, "acme", tenants.RoleViewer)
	_, bobKey := e.mustKey(bob.token, "bobco", tenants.RoleViewer)

	// Each tenant: a webhook, a rule on its billing events, a device
	// allowed to subscribe to them, and a stream of its events.
	type side struct {
		rc     *hookReceiver
		mu     sync.Mutex
		mqtt   []string // the topics the device got
		stream *stream
	}
	sides := map[string]*side{}
	for _, tc := range []struct{ tenant, token, key, condition string }{
		{"acme", owner.token, viewerKey, `payload.type != "payment_succeeded"`},
		{"bobco", bob.token, bobKey, ""},
	} {
		sd := &side{rc: newHookReceiver(t)}
		sides[tc.tenant] = sd
		r := e.do("POST", "/v1/tenants/"+tc.tenant+"/destinations", tc.token, map[string]any{"name": "ingest", "type": "webhook", "url": sd.rc.URL + "/roost"})
		want(t, r, 201, tc.tenant+": create destination")
		sd.rc.set(r.str("secret"), http.StatusNoContent)
		rule := map[string]string{"filter": "$events/billing/#", "destination": "ingest"}
		if tc.condition != "" {
			rule["condition"] = tc.condition
		}
		want(t, e.do("POST", "/v1/tenants/"+tc.tenant+"/rules", tc.token, rule), 201, tc.tenant+": billing events rule")
		want(t, e.do("POST", "/v1/tenants/"+tc.tenant+"/acl/rules", tc.token, map[string]any{"effect": "allow", "action": "subscribe", "topic": "$events/billing/#"}),
			201, tc.tenant+": ACL rule")
		secret := e.mustDevice(tc.token, tc.tenant, "watcher")
		c, err := e.dialMQTT(t, tc.tenant+"/watcher", secret, "watcher", paho.ClientConfig{
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
				sd.mu.Lock()
				sd.mqtt = append(sd.mqtt, pr.Packet.Topic)
				sd.mu.Unlock()
				return true, nil
			}},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Disconnect(&paho.Disconnect{})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "$events/billing/#", QoS: 0}}})
		cancel()
		if err != nil || sa.Reasons[0] != 0 {
			t.Fatalf("%s: subscribe to $events/billing/#: %v %v", tc.tenant, sa, err)
		}
		sd.stream = e.openStream("/v1/tenants/"+tc.tenant+"/stream?events=1", tc.key, "")
		if sd.stream.status != 200 {
			t.Fatalf("%s: stream: %d %s", tc.tenant, sd.stream.status, sd.stream.body)
		}
		sd.stream.next("ready")
	}

	// acme subscribes to pro through Checkout, its payment fails, then
	// it pays: plan_changed and subscription_changed, payment_failed,
	// payment_succeeded.
	want(t, e.do("POST", "/v1/tenants/acme/billing/checkout", owner.token, map[string]string{"plan": "pro"}), 200, "checkout")
	acct, err := e.store.BillingAccount(context.Background(), "acme")
	if err != nil || acct.Customer == "" {
		t.Fatalf("no Stripe customer after checkout: %+v %v", acct, err)
	}
	now := time.Now()
	sub := map[string]any{"id": "sub_1", "object": "subscription", "customer": acct.Customer, "status": "active",
		"current_period_start": now.Unix(), "current_period_end": now.AddDate(0, 1, 0).Unix(),
		"items": map[string]any{"object": "list", "data": []any{map[string]any{"id": "si_1", "object": "subscription_item", "price": map[string]any{"id": "price_pro", "object": "price"}}}}}
	want(t, e.deliver("evt_sub", "customer.subscription.created", now, sub), 200, "customer.subscription.created")
	want(t, e.deliver("evt_fail", "invoice.payment_failed", now.Add(time.Second), map[string]any{"id": "in_1", "object": "invoice",
		"customer": acct.Customer, "status": "open", "amount_due": 2900, "currency": "usd"}), 200, "invoice.payment_failed")
	want(t, e.deliver("evt_paid", "invoice.paid", now.Add(2*time.Second), map[string]any{"id": "in_1", "object": "invoice",
		"customer": acct.Customer, "status": "paid", "amount_due": 2900, "amount_paid": 2900, "currency": "usd"}), 200, "invoice.paid")
	all := []string{"plan_changed", "subscription_changed", "payment_failed", "payment_succeeded"}

	// The history, by type: acme's, not bobco's.
	for _, typ := range all {
		r := e.do("GET", "/v1/tenants/acme/events?type="+typ, viewerKey, nil)
		want(t, r, 200, "acme's "+typ)
		if items := asSlice(r.json()["items"]); len(items) != 1 || items[0].(map[string]any)["tenant"] != "acme" {
			t.Errorf("acme's %s events: %s, want one", typ, r.body)
		}
		r = e.do("GET", "/v1/tenants/bobco/events?type="+typ, bobKey, nil)
		if items := asSlice(r.json()["items"]); len(items) != 0 {
			t.Errorf("bobco's %s events: %s, want none", typ, r.body)
		}
	}
	wantProblem(t, e.do("GET", "/v1/tenants/acme/events?type=plan_changed", bobKey, nil), 404, "not_found", "", "bob's key on acme's events")

	// The stream: the three, in order, as stored (between the watcher's
	// own connected and subscribed events, stored off their path).
	var streamed []string
	for len(streamed) < len(all) {
		var ev struct{ Type, Tenant string }
		json.Unmarshal([]byte(sides["acme"].stream.next("event").data), &ev)
		if ev.Tenant != "acme" {
			t.Errorf("acme's stream sent %+v", ev)
		}
		if ev.Type != "connected" && ev.Type != "subscribed" {
			streamed = append(streamed, ev.Type)
		}
	}
	if !slices.Equal(streamed, all) {
		t.Errorf("acme's stream: %v, want %v", streamed, all)
	}

	// The webhook (the rule's condition leaves payment_succeeded out) and
	// the device: each event comes independently, in no set order.
	type wireMsg struct {
		Topic   string
		Payload struct{ Type, Tenant string }
	}
	hooked := func(rc *hookReceiver) []wireMsg {
		rc.mu.Lock()
		defer rc.mu.Unlock()
		var out []wireMsg
		for _, b := range rc.bodies {
			var batch struct{ Messages []wireMsg }
			if err := json.Unmarshal(b, &batch); err != nil {
				t.Fatalf("webhook body: %v: %s", err, b)
			}
			out = append(out, batch.Messages...)
		}
		return out
	}
	topics := func(sd *side) []string {
		sd.mu.Lock()
		defer sd.mu.Unlock()
		return slices.Sorted(slices.Values(sd.mqtt))
	}
	wantHooked := []string{"$events/billing/payment_failed", "$events/billing/plan_changed", "$events/billing/subscription_changed"}
	wantMQTT := []string{"$events/billing/payment_failed", "$events/billing/payment_succeeded", "$events/billing/plan_changed", "$events/billing/subscription_changed"}
	var got []string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		got = got[:0]
		for _, m := range hooked(sides["acme"].rc) {
			got = append(got, m.Topic)
			if m.Payload.Tenant != "acme" || "$events/billing/"+m.Payload.Type != m.Topic {
				t.Fatalf("acme's webhook got %+v", m)
			}
		}
		slices.Sort(got)
		if len(got) >= len(wantHooked) && len(topics(sides["acme"])) >= len(wantMQTT) {
			break
		}
	}
	if !slices.Equal(got, wantHooked) {
		t.Errorf("acme's webhook got %v, want %v", got, wantHooked)
	}
	if m := topics(sides["acme"]); !slices.Equal(m, wantMQTT) {
		t.Errorf("acme's device got %v, want %v", m, wantMQTT)
	}
	if _, bad := sides["acme"].rc.counts(); bad != 0 {
		t.Errorf("%d webhook requests badly signed", bad)
	}

	// bobco: nothing anywhere. Its stream, rule and subscriber are as
	// live as acme's, which got theirs: what could have leaked would have
	// come by now.
	for end := time.Now().Add(300 * time.Millisecond); time.Now().Before(end); {
		select {
		case ev := <-sides["bobco"].stream.events:
			if ev.event == "event" && !strings.Contains(ev.data, `"connected"`) && !strings.Contains(ev.data, `"subscribed"`) {
				t.Errorf("bobco's stream sent %s", ev.data)
			}
		case <-time.After(time.Until(end)):
		}
	}
	if n := hooked(sides["bobco"].rc); len(n) != 0 {
		t.Errorf("bobco's webhook got %+v", n)
	}
	if m := topics(sides["bobco"]); len(m) != 0 {
		t.Errorf("bobco's device got %v", m)
	}
}
