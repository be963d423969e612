package main

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/roosthub/roost/internal/testenv"
)

// TestSplitBillingEvents: with the control plane (billing on, against
// stripe-mock) and the data plane in separate processes, a signed Stripe
// webhook that moves a tenant to pro raises plan_changed on the control
// plane; it is stored there (GET /events) and relayed to the tenant's
// node, where a device subscribed to $events/billing/# gets it.
func TestSplitBillingEvents(t *testing.T) {
	pg := testenv.StartPostgres(t)
	const admin = "rop_split-test-token-0123456789"
	const secret = "whsec_split_test"
	common := []string{"ROOST_DATABASE_URL=" + pg.URL, "ROOST_ADMIN_TOKEN=" + admin, "ROOST_SESSION_STORE=memory",
		"ROOST_PLANS_FILE=../../docs/plans.example.yaml"}
	cp := &process{t: t, role: "controlplane", httpAddr: freeAddr(t)}
	cp.env = append(common, "ROOST_DATA_DIR="+t.TempDir(), "ROOST_HTTP_ADDR="+cp.httpAddr,
		"ROOST_STRIPE_KEY=sk_test_123", "ROOST_STRIPE_WEBHOOK_SECRET="+secret, "ROOST_STRIPE_API_URL="+testenv.StripeURL(t))
	cp.start()
	defer cp.kill()
	dp := &process{t: t, role: "dataplane", httpAddr: freeAddr(t), mqttAddr: freeAddr(t)}
	dp.env = append(common, "ROOST_DATA_DIR="+t.TempDir(), "ROOST_HTTP_ADDR="+dp.httpAddr, "ROOST_MQTT_ADDR="+dp.mqttAddr)
	dp.start()
	defer dp.kill()

	var session struct{ Token string }
	cp.api("POST", "/v1/signup", "", map[string]string{"email": "split@example.com", "password": "correct horse battery"}, &session)
	tok := session.Token
	cp.api("POST", "/v1/tenants", tok, map[string]string{"slug": "acme"}, nil)
	cp.api("POST", "/v1/tenants/acme/acl/rules", tok, map[string]any{"effect": "allow", "action": "subscribe", "topic": "$events/billing/#"}, nil)
	var d1 struct{ Secret string }
	cp.api("POST", "/v1/tenants/acme/devices", tok, map[string]string{"name": "d1"}, &d1)

	got := make(chan *paho.Publish, 10)
	var c *paho.Client
	var err error
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		c, err = mqttClient(dp.mqttAddr, "acme/d1", d1.Secret, "d1", false, nil, func(p *paho.Publish) { got <- p })
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("d1 did not connect: %v\n%s", err, dp.log)
		}
	}
	defer c.Disconnect(&paho.Disconnect{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "$events/billing/#"}}}); err != nil || sa.Reasons[0] != 0 {
		t.Fatalf("subscribe: %v %v", sa, err)
	}

	// Stripe: acme's new subscription to pro (the tenant named in its
	// metadata, as Checkout writes it).
	now := time.Now()
	body, _ := json.Marshal(map[string]any{"id": "evt_split", "object": "event", "type": "customer.subscription.created", "created": now.Unix(),
		"api_version": stripe.APIVersion, "livemode": false, "data": map[string]any{"object": map[string]any{
			"id": "sub_split", "object": "subscription", "customer": "cus_split", "status": "active", "metadata": map[string]any{"tenant": "acme"},
			"current_period_start": now.Unix(), "current_period_end": now.AddDate(0, 1, 0).Unix(),
			"items": map[string]any{"object": "list", "data": []any{map[string]any{"id": "si_1", "object": "subscription_item",
				"price": map[string]any{"id": "price_1ProMonthlyReplaceMe", "object": "price"}}}}}}})
	req, _ := http.NewRequest("POST", "http://"+cp.httpAddr+"/v1/billing/webhook", strings.NewReader(string(body)))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Stripe-Signature", webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: body, Secret: secret, Timestamp: time.Now()}).Header)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("webhook: %s\n%s", resp.Status, cp.log)
	}

	select {
	case p := <-got:
		var e struct{ Tenant, Type, Reason string }
		if err := json.Unmarshal(p.Payload, &e); err != nil || p.Topic != "$events/billing/plan_changed" || e.Tenant != "acme" || e.Type != "plan_changed" {
			t.Errorf("d1 got %s %s (%v), want acme's plan_changed", p.Topic, p.Payload, err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("d1 got no billing event in 20 s\ncontrol plane:\n%s\ndata plane:\n%s", cp.log, dp.log)
	}
	// Stored off the webhook's path too, independently of the relay.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var page struct {
			Items []struct{ Type, Tenant string }
		}
		cp.api("GET", "/v1/tenants/acme/events?type=plan_changed", tok, nil, &page)
		if len(page.Items) == 1 && page.Items[0].Tenant == "acme" {
			break
		}
		if len(page.Items) > 1 || time.Now().After(deadline) {
			t.Fatalf("acme's plan_changed events on the control plane: %+v, want one", page.Items)
		}
	}
}
