package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/roosthub/roost/api"
	"github.com/roosthub/roost/billing"
	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
)

const webhookSecret = "whsec_api_test"

// newBillingEnv is an env with billing on against stripe-mock and the pro
// and business plans priced.
//
// Billing's events are stored at once and relayed to the hub, as roost
// serve does, for the tenant's rules and $events topics.
func newBillingEnv(t *testing.T, more ...func(*api.Config)) (*env, *billing.Service) {
	t.Helper()
	stripeURL := testenv.StripeURL(t)
	var svc *billing.Service
	e := newEnvWith(t, func(cfg *api.Config) {
		for _, f := range more {
			f(cfg)
		}
		plans, err := tenants.LoadPlans(strings.NewReader(
			"plans:\n  pro: {stripe_price: price_pro, stripe_metered_price: price_pro_messages}\n" +
				"  business: {stripe_price: price_business, stripe_metered_price: price_business_messages}\n"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.Store.SetPlans(plans)
		relay := events.NewRelay(cfg.DataPlane.(*broker.Hub).PublishEvent, cfg.Log)
		t.Cleanup(func() { relay.Close() })
		svc, err = billing.New(billing.Config{Store: cfg.Store, Stripe: billing.NewStripe("sk_test_123", stripeURL),
			WebhookSecret: webhookSecret, Events: events.Tee{storeSink{cfg.Store}, relay}, Log: cfg.Log, Now: cfg.Now,
			ConsoleURL: "https://console.example.com"})
		if err != nil {
			t.Fatal(err)
		}
		cfg.Billing = svc
	})
	return e, svc
}

// stripeEvent is a signed Stripe event: its body and Stripe-Signature.
func stripeEvent(id, typ string, created time.Time, object map[string]any) (string, string) {
	b, _ := json.Marshal(map[string]any{"id": id, "object": "event", "type": typ, "created": created.Unix(),
		"api_version": stripe.APIVersion, "livemode": false, "data": map[string]any{"object": object}})
	sig := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: b, Secret: webhookSecret, Timestamp: time.Now()}).Header
	return string(b), sig
}

// deliver posts a Stripe event to the webhook.
func (e *env) deliver(id, typ string, created time.Time, object map[string]any) response {
	e.t.Helper()
	body, sig := stripeEvent(id, typ, created, object)
	req, _ := http.NewRequest("POST", e.url+"/v1/billing/webhook", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Stripe-Signature", sig)
	return e.send(req)
}

func TestBillingOff(t *testing.T) {
	e := newEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	r := e.do("GET", "/v1/tenants/acme/billing", u.token, nil)
	want(t, r, 200, "billing overview")
	if r.json()["enabled"] != false || r.str("plan") != "free" {
		t.Errorf("billing off: %s", r.body)
	}
	wantProblem(t, e.do("POST", "/v1/tenants/acme/billing/checkout", u.token, map[string]string{"plan": "pro"}), 409, "billing_off", "", "checkout, billing off")
	wantProblem(t, e.do("POST", "/v1/tenants/acme/billing/portal", u.token, nil), 409, "billing_off", "", "portal, billing off")
	r = e.deliver("evt_1", "invoice.paid", time.Now(), map[string]any{"id": "in_1", "object": "invoice"})
	wantProblem(t, r, 409, "billing_off", "", "webhook, billing off")
	if !strings.Contains(r.str("detail"), "ROOST_STRIPE_KEY") {
		t.Errorf("the problem does not say how to turn billing on: %s", r.body)
	}
}

// TestBillingFlow: free → pro through Checkout (stripe-mock) and signed
// webhooks, the new quotas reaching a connected device; a failed payment,
// after the grace period, suspends the tenant (its device is dropped and
// refused) and a payment resumes it. Other tenants reach none of it.
func TestBillingFlow(t *testing.T) {
	e, svc := newBillingEnv(t)
	owner, bob := e.signup("owner"), e.signup("bob")
	e.mustTenant(owner, "acme")
	e.mustTenant(bob, "bobco")
	_, viewerKey := e.mustKey(owner.token, "acme", tenants.RoleViewer)
	secret := e.mustDevice(owner.token, "acme", "d1")

	discs := make(chan *paho.Disconnect, 1)
	c, err := e.dialMQTT(t, "acme/d1", secret, "d1", paho.ClientConfig{OnServerDisconnect: func(d *paho.Disconnect) { discs <- d }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(&paho.Disconnect{})
	subscribe := func(from, n int) []byte {
		t.Helper()
		var opts []paho.SubscribeOptions
		for i := from; i < from+n; i++ {
			opts = append(opts, paho.SubscribeOptions{Topic: fmt.Sprintf("t/%d", i), QoS: 1})
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: opts})
		if sa == nil {
			t.Fatalf("subscribe: %v", err)
		}
		return sa.Reasons
	}
	free := tenants.PlanQuotas(tenants.PlanFree).MaxSubscriptions
	if rs := subscribe(0, int(free)+1); rs[len(rs)-1] != 0x97 {
		t.Fatalf("subscription %d on free: reason %#x, want 0x97", free+1, rs[len(rs)-1])
	}

	// Checkout: owners and admins only; a paid plan with a price.
	checkout := "/v1/tenants/acme/billing/checkout"
	wantProblem(t, e.do("POST", checkout, viewerKey, map[string]string{"plan": "pro"}), 403, "forbidden", "", "checkout by a viewer")
	wantProblem(t, e.do("POST", checkout, owner.token, map[string]string{"plan": "free"}), 400, "invalid", "plan", "checkout to free")
	wantProblem(t, e.do("POST", checkout, owner.token, map[string]string{"plan": "gold"}), 400, "invalid", "plan", "checkout to an unknown plan")
	wantProblem(t, e.do("POST", checkout, owner.token, map[string]string{"plan": "enterprise"}), 400, "invalid", "plan", "checkout to a plan without a price")
	wantProblem(t, e.do("POST", checkout, owner.token, `{"plan": "pro", "price": "price_free"}`), 400, "unknown_field", "price", "checkout with an extra field")
	r := e.do("POST", checkout, owner.token, map[string]string{"plan": "pro"})
	want(t, r, 200, "checkout")
	if !strings.HasPrefix(r.str("url"), "https://") {
		t.Errorf("checkout URL: %s", r.body)
	}
	acct, err := e.store.BillingAccount(context.Background(), "acme")
	if err != nil || !strings.HasPrefix(acct.Customer, "cus_") {
		t.Fatalf("no Stripe customer after checkout: %+v %v", acct, err)
	}
	customer := acct.Customer
	r = e.do("POST", "/v1/tenants/acme/billing/portal", owner.token, nil)
	want(t, r, 200, "portal")
	if !strings.HasPrefix(r.str("url"), "https://") {
		t.Errorf("portal URL: %s", r.body)
	}

	// Stripe reports the paid checkout and the subscription.
	now := time.Now()
	want(t, e.deliver("evt_cs", "checkout.session.completed", now, map[string]any{
		"id": "cs_1", "object": "checkout.session", "mode": "subscription", "customer": customer, "subscription": "sub_1",
		"client_reference_id": "acme", "payment_status": "paid", "metadata": map[string]any{"tenant": "acme", "plan": "pro"},
	}), 200, "checkout.session.completed")
	sub := map[string]any{"id": "sub_1", "object": "subscription", "customer": customer, "status": "active",
		"current_period_start": now.Unix(), "current_period_end": now.AddDate(0, 1, 0).Unix(),
		"items": map[string]any{"object": "list", "data": []any{map[string]any{"id": "si_1", "object": "subscription_item", "price": map[string]any{"id": "price_pro", "object": "price"}}}}}
	want(t, e.deliver("evt_sub", "customer.subscription.created", now, sub), 200, "customer.subscription.created")
	r = e.do("GET", "/v1/tenants/acme/billing", viewerKey, nil)
	want(t, r, 200, "billing overview")
	if r.str("plan") != "pro" || r.json()["subscription"].(map[string]any)["status"] != "active" || r.json()["dunning"] != nil {
		t.Fatalf("after the subscription: %s", r.body)
	}
	// The connected device has pro's quotas now, without reconnecting, as
	// soon as the hub has applied the change (it does so asynchronously).
	var code byte
	for i := range 50 {
		if code = subscribe(100+i, 1)[0]; code == 1 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code != 1 {
		t.Errorf("another subscription on pro: reason %#x, want granted QoS 1", code)
	}
	wantProblem(t, e.do("POST", checkout, owner.token, map[string]string{"plan": "business"}), 409, "conflict", "", "checkout while subscribed")

	// Other tenants: none of acme's billing, and no way to change it.
	for _, p := range []struct{ method, path string }{
		{"GET", "/v1/tenants/acme/billing"}, {"PATCH", "/v1/tenants/acme/billing"},
		{"POST", "/v1/tenants/acme/billing/checkout"}, {"POST", "/v1/tenants/acme/billing/portal"},
	} {
		wantProblem(t, e.do(p.method, p.path, bob.token, map[string]any{"plan": "pro", "spend_cap": nil}), 404, "not_found", "", "bob: "+p.method+" "+p.path)
	}
	r = e.do("GET", "/v1/tenants/bobco/billing", bob.token, nil)
	if r.str("plan") != "free" || r.json()["subscription"] != nil || len(r.json()["invoices"].([]any)) != 0 {
		t.Errorf("bob's billing shows acme's: %s", r.body)
	}

	// Spend cap: set by an admin, refused to a viewer, validated.
	wantProblem(t, e.do("PATCH", "/v1/tenants/acme/billing", viewerKey, map[string]any{"spend_cap": map[string]any{"cents": 5000, "block": true}}), 403, "forbidden", "", "spend cap by a viewer")
	wantProblem(t, e.do("PATCH", "/v1/tenants/acme/billing", owner.token, map[string]any{"spend_cap": map[string]any{"cents": -5}}), 400, "invalid", "spend_cap.cents", "negative spend cap")
	wantProblem(t, e.do("PATCH", "/v1/tenants/acme/billing", owner.token, map[string]any{"spend_cap": "lots"}), 400, "invalid", "spend_cap", "spend cap of the wrong type")
	r = e.do("PATCH", "/v1/tenants/acme/billing", owner.token, map[string]any{"spend_cap": map[string]any{"cents": 5000, "block": true}})
	want(t, r, 200, "set spend cap")
	if c := r.json()["spend_cap"].(map[string]any); c["cents"] != float64(5000) || c["block"] != true {
		t.Errorf("spend cap: %s", r.body)
	}
	r = e.do("PATCH", "/v1/tenants/acme/billing", owner.token, map[string]any{"spend_cap": nil})
	want(t, r, 200, "remove spend cap")
	if r.json()["spend_cap"] != nil {
		t.Errorf("spend cap after removal: %s", r.body)
	}

	// A bad signature changes nothing.
	body, _ := stripeEvent("evt_forged", "customer.subscription.deleted", now, sub)
	req, _ := http.NewRequest("POST", e.url+"/v1/billing/webhook", strings.NewReader(body))
	req.Header.Set("Stripe-Signature", fmt.Sprintf("t=%d,v1=%064x", now.Unix(), 1))
	wantProblem(t, e.send(req), 400, "bad_signature", "", "forged webhook")

	// The payment fails: dunning; after the grace period, suspended.
	want(t, e.deliver("evt_fail", "invoice.payment_failed", now.Add(time.Second), map[string]any{"id": "in_1", "object": "invoice",
		"customer": customer, "status": "open", "amount_due": 2900, "currency": "usd", "hosted_invoice_url": "https://invoice.stripe.com/i/1"}), 200, "invoice.payment_failed")
	r = e.do("GET", "/v1/tenants/acme/billing", owner.token, nil)
	if r.json()["dunning"] == nil || r.json()["dunning"].(map[string]any)["suspended"] != false {
		t.Fatalf("no dunning after a failed payment: %s", r.body)
	}
	r = e.do("GET", "/v1/tenants/acme/events?type=payment_failed", owner.token, nil)
	if len(r.json()["items"].([]any)) != 1 {
		t.Errorf("payment_failed events: %s", r.body)
	}
	e.clock.Advance(billing.DefaultGrace + time.Minute)
	if err := svc.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-discs:
		t.Logf("device dropped at suspension: reason %#x", d.ReasonCode)
	case <-time.After(5 * time.Second):
		t.Fatal("the device stayed connected to a suspended tenant")
	}
	if code := e.connack(t, "acme/d1", secret); code != 0x8A {
		t.Fatalf("connect while suspended: CONNACK %#x, want 0x8A", code)
	}
	// Paid: resumed, the device connects again.
	want(t, e.deliver("evt_paid", "invoice.paid", now.Add(2*time.Second), map[string]any{"id": "in_1", "object": "invoice",
		"customer": customer, "status": "paid", "amount_due": 2900, "amount_paid": 2900, "currency": "usd"}), 200, "invoice.paid")
	if code := e.connack(t, "acme/d1", secret); code != 0 {
		t.Fatalf("connect after payment: CONNACK %#x", code)
	}
	r = e.do("GET", "/v1/tenants/acme/billing", viewerKey, nil) // a week on, the session has expired
	want(t, r, 200, "billing after payment")
	invs, _ := r.json()["invoices"].([]any)
	if r.json()["dunning"] != nil || len(invs) != 1 || invs[0].(map[string]any)["status"] != "paid" {
		t.Errorf("after payment: %s", r.body)
	}
}

// connack connects over MQTT v5 and returns the CONNACK's reason code.
func (e *env) connack(t *testing.T, username, password string) byte {
	t.Helper()
	conn, err := net.Dial("tcp", e.mqttAddr)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, device, _ := strings.Cut(username, "/")
	ca, err := c.Connect(ctx, &paho.Connect{ClientID: device, KeepAlive: 30, CleanStart: true, Username: username, UsernameFlag: true,
		Password: []byte(password), PasswordFlag: true})
	if ca == nil {
		t.Fatalf("connect: no CONNACK: %v", err)
	}
	if ca.ReasonCode == 0 {
		c.Disconnect(&paho.Disconnect{})
	}
	return ca.ReasonCode
}
