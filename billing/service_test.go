package billing_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/roosthub/roost/billing"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
)

const secret = "whsec_test_secret"

const plansFile = `
plans:
  pro:
    stripe_price: price_pro
    stripe_metered_price: price_pro_messages
    overage_cents_per_million: 500
  business:
    stripe_price: price_business
    stripe_metered_price: price_business_messages
`

// meter records what it is sent; fail makes the next n reports fail after
// they reached it (an answer lost on the way back).
type meter struct {
	mu   sync.Mutex
	sent []billing.MeterEvent
	fail int
}

func (m *meter) Report(_ context.Context, e billing.MeterEvent) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sent = append(m.sent, e)
	if m.fail > 0 {
		m.fail--
		return errors.New("connection reset")
	}
	return nil
}

type harness struct {
	t      *testing.T
	store  *tenants.Store
	svc    *billing.Service
	clock  *testenv.Clock
	events *events.Memory
	meter  *meter
}

var ctx = tenants.WithActor(context.Background(), "test")

// newHarness: a fresh SQLite store with the plans file and one tenant,
// acme, whose Stripe customer is cus_acme; billing against stripe-mock.
func newHarness(t *testing.T) *harness {
	t.Helper()
	store, err := tenants.Open(ctx, "", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	if _, err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	plans, err := tenants.LoadPlans(strings.NewReader(plansFile))
	if err != nil {
		t.Fatal(err)
	}
	store.SetPlans(plans)
	h := &harness{t: t, store: store, clock: testenv.NewClock(time.Date(2026, 11, 10, 12, 0, 0, 0, time.UTC)), events: events.NewMemory(100), meter: &meter{}}
	h.svc, err = billing.New(billing.Config{
		Store: store, Stripe: billing.NewStripe("sk_test_123", testenv.StripeURL(t)), Meter: h.meter,
		WebhookSecret: secret, Grace: 7 * 24 * time.Hour, Events: h.events, Now: h.clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.tenant("acme", "cus_acme")
	return h
}

// tenant creates a tenant whose Stripe customer is customer.
func (h *harness) tenant(slug, customer string) {
	h.t.Helper()
	acc, err := h.store.CreateAccount(ctx, tenants.Signup{Email: slug + "@example.com", Password: "correct horse battery"})
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.store.CreateTenant(ctx, acc.ID, tenants.TenantInput{Slug: slug}); err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.store.UpdateBilling(ctx, slug, "test", func(u *tenants.BillingUpdate) error {
		u.Account.Customer = customer
		return nil
	}); err != nil {
		h.t.Fatal(err)
	}
}

// event is a Stripe event as Stripe sends it.
func event(id, typ string, created time.Time, object map[string]any) []byte {
	b, err := json.Marshal(map[string]any{
		"id": id, "object": "event", "type": typ, "created": created.Unix(), "api_version": stripe.APIVersion,
		"livemode": false, "pending_webhooks": 1, "data": map[string]any{"object": object},
	})
	if err != nil {
		panic(err)
	}
	return b
}

func subscription(id, customer, status, price string) map[string]any {
	return map[string]any{
		"id": id, "object": "subscription", "customer": customer, "status": status,
		"current_period_start": 1793577600, "current_period_end": 1796256000,
		"items":    map[string]any{"object": "list", "data": []any{map[string]any{"id": "si_1", "object": "subscription_item", "price": map[string]any{"id": price, "object": "price"}}}},
		"metadata": map[string]any{},
	}
}

func invoice(id, customer, status string) map[string]any {
	return map[string]any{"id": id, "object": "invoice", "customer": customer, "status": status, "amount_due": 2900,
		"amount_paid": 0, "currency": "usd", "hosted_invoice_url": "https://invoice.stripe.com/" + id, "created": 1793577600}
}

// signed signs payload as Stripe does, at t.
func signed(payload []byte, t time.Time) string {
	return webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: payload, Secret: secret, Timestamp: t}).Header
}

func (h *harness) deliver(payload []byte) {
	h.t.Helper()
	if err := h.svc.HandleWebhook(ctx, payload, signed(payload, time.Now())); err != nil {
		h.t.Fatalf("webhook: %v", err)
	}
}

func (h *harness) state(slug string) (tenants.Tenant, tenants.BillingAccount) {
	h.t.Helper()
	tn, err := h.store.Tenant(ctx, slug)
	if err != nil {
		h.t.Fatal(err)
	}
	a, err := h.store.BillingAccount(ctx, slug)
	if err != nil {
		h.t.Fatal(err)
	}
	return tn, a
}

func (h *harness) countEvents(slug, typ string) int {
	n := 0
	for _, e := range h.events.Recent(slug) {
		if e.Type == typ {
			n++
		}
	}
	return n
}

// TestWebhookSignature: a wrong secret, a stale timestamp, a body
// re-serialised after signing and a missing header are refused; nothing
// they carry is applied.
func TestWebhookSignature(t *testing.T) {
	h := newHarness(t)
	body := event("evt_sig", "customer.subscription.created", time.Now(), subscription("sub_1", "cus_acme", "active", "price_pro"))
	var reserialised map[string]any
	json.Unmarshal(body, &reserialised)
	again, _ := json.MarshalIndent(reserialised, "", " ")
	wrong := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: body, Secret: "whsec_other", Timestamp: time.Now()}).Header
	for _, c := range []struct {
		name, header string
		body         []byte
	}{
		{"wrong secret", wrong, body},
		{"stale timestamp", signed(body, time.Now().Add(-301*time.Second)), body},
		{"re-serialised body", signed(body, time.Now()), again},
		{"no signature", "", body},
		{"garbage signature", "t=1,v1=deadbeef", body},
	} {
		if err := h.svc.HandleWebhook(ctx, c.body, c.header); !errors.Is(err, billing.ErrSignature) {
			t.Errorf("%s: got %v, want ErrSignature", c.name, err)
		}
	}
	if tn, _ := h.state("acme"); tn.Plan != tenants.PlanFree {
		t.Fatalf("a refused webhook changed the plan to %s", tn.Plan)
	}
	// Within the tolerance it is taken.
	if err := h.svc.HandleWebhook(ctx, body, signed(body, time.Now().Add(-290*time.Second))); err != nil {
		t.Fatalf("a 290 s old signature: %v", err)
	}
	if tn, _ := h.state("acme"); tn.Plan != tenants.PlanPro {
		t.Errorf("plan after a verified subscription: %s", tn.Plan)
	}
	// Types Roost does not handle, and customers of no tenant, are accepted.
	h.deliver(event("evt_other", "charge.refunded", time.Now(), map[string]any{"id": "ch_1", "object": "charge"}))
	h.deliver(event("evt_stranger", "invoice.payment_failed", time.Now(), invoice("in_x", "cus_stranger", "open")))
}

// TestWebhookOnce: one event delivered three times at once has one effect.
func TestWebhookOnce(t *testing.T) {
	h := newHarness(t)
	h.deliver(event("evt_sub", "customer.subscription.created", h.clock.Now().Add(-time.Hour), subscription("sub_1", "cus_acme", "active", "price_pro")))
	body := event("evt_fail", "invoice.payment_failed", h.clock.Now(), invoice("in_1", "cus_acme", "open"))
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := h.svc.HandleWebhook(ctx, body, signed(body, time.Now())); err != nil {
				t.Errorf("concurrent delivery: %v", err)
			}
		}()
	}
	wg.Wait()
	if n := h.countEvents("acme", events.PaymentFailed); n != 1 {
		t.Errorf("payment_failed events after 3 deliveries: %d, want 1", n)
	}
	if n := h.countEvents("acme", events.PlanChanged); n != 1 {
		t.Errorf("plan_changed events: %d, want 1", n)
	}
	_, a := h.state("acme")
	if a.PaymentFailedAt.IsZero() {
		t.Error("the failed payment was not recorded")
	}
	entries, _, err := h.store.Audit(ctx, "acme", tenants.Page{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	applied := 0
	for _, e := range entries {
		if e.Action == "billing.invoice.payment_failed" {
			applied++
		}
	}
	if applied != 1 {
		t.Errorf("the event was applied %d times (audit), want 1", applied)
	}
}

// TestSubscriptionChangedEvents: a subscription created, going past due
// and cancelled each raise subscription_changed saying from what to what;
// the creation and the cancellation move the plan (plan_changed), the
// status change alone does not, and a redelivery raises nothing.
func TestSubscriptionChangedEvents(t *testing.T) {
	h := newHarness(t)
	h.tenant("other", "cus_other")
	at := h.clock.Now().Add(-time.Hour)
	h.deliver(event("evt_1", "customer.subscription.created", at, subscription("sub_1", "cus_acme", "active", "price_pro")))
	h.deliver(event("evt_1", "customer.subscription.created", at, subscription("sub_1", "cus_acme", "active", "price_pro")))
	h.deliver(event("evt_2", "customer.subscription.updated", at.Add(time.Minute), subscription("sub_1", "cus_acme", "past_due", "price_pro")))
	h.deliver(event("evt_3", "customer.subscription.deleted", at.Add(2*time.Minute), subscription("sub_1", "cus_acme", "canceled", "price_pro")))
	var reasons []string
	for _, e := range h.events.Recent("acme") {
		if e.Type == events.SubscriptionChanged {
			reasons = append(reasons, e.Reason)
		}
	}
	want := []string{
		"subscription none none → sub_1 active (plan pro)",
		"subscription sub_1 active → sub_1 past_due (plan pro)",
		"subscription sub_1 past_due → sub_1 canceled (plan free)",
	}
	if !slices.Equal(reasons, want) {
		t.Errorf("subscription_changed reasons:\n%q\nwant\n%q", reasons, want)
	}
	if n := h.countEvents("acme", events.PlanChanged); n != 2 {
		t.Errorf("plan_changed events: %d, want 2 (to pro, to free)", n)
	}
	if n := h.countEvents("other", events.SubscriptionChanged); n != 0 {
		t.Errorf("another tenant has %d subscription_changed events", n)
	}
}

// TestWebhookOrder: whatever order Stripe delivers in, the newest state
// wins: invoice.paid before customer.subscription.created ends active on
// pro without dunning; an older subscription state after a newer one, and
// a payment failure older than a payment, change nothing.
func TestWebhookOrder(t *testing.T) {
	h := newHarness(t)
	t0 := h.clock.Now().Add(-time.Hour)
	h.deliver(event("evt_paid", "invoice.paid", t0.Add(2*time.Second), invoice("in_1", "cus_acme", "paid")))
	h.deliver(event("evt_created", "customer.subscription.created", t0, subscription("sub_1", "cus_acme", "incomplete", "price_pro")))
	h.deliver(event("evt_updated", "customer.subscription.updated", t0.Add(time.Second), subscription("sub_1", "cus_acme", "active", "price_pro")))
	tn, a := h.state("acme")
	if tn.Plan != tenants.PlanPro || a.Status != "active" || !a.PaymentFailedAt.IsZero() || tn.Suspended {
		t.Fatalf("after paid, created, updated: plan %s, status %s, failed at %v, suspended %v", tn.Plan, a.Status, a.PaymentFailedAt, tn.Suspended)
	}

	// The same three in the reverse order.
	h.tenant("rev", "cus_rev")
	h.deliver(event("evt_r_updated", "customer.subscription.updated", t0.Add(time.Second), subscription("sub_r", "cus_rev", "active", "price_business")))
	h.deliver(event("evt_r_created", "customer.subscription.created", t0, subscription("sub_r", "cus_rev", "incomplete", "price_business")))
	h.deliver(event("evt_r_paid", "invoice.paid", t0.Add(2*time.Second), invoice("in_r", "cus_rev", "paid")))
	if tn, a := h.state("rev"); tn.Plan != tenants.PlanBusiness || a.Status != "active" {
		t.Fatalf("after updated, created, paid: plan %s, status %s", tn.Plan, a.Status)
	}

	// Two states of one second, the newer delivered first: Stripe's current
	// state (stripe-mock's subscription is active) settles it.
	h.tenant("tie", "cus_tie")
	h.deliver(event("evt_t_updated", "customer.subscription.updated", t0, subscription("sub_t", "cus_tie", "active", "price_pro")))
	h.deliver(event("evt_t_created", "customer.subscription.created", t0, subscription("sub_t", "cus_tie", "incomplete", "price_pro")))
	if tn, a := h.state("tie"); tn.Plan != tenants.PlanPro || a.Status != "active" {
		t.Fatalf("after updated and created in one second: plan %s, status %s", tn.Plan, a.Status)
	}
	// A payment and a failure in one second: the payment wins.
	h.deliver(event("evt_t_paid", "invoice.paid", t0, invoice("in_t", "cus_tie", "paid")))
	h.deliver(event("evt_t_failed", "invoice.payment_failed", t0, invoice("in_t", "cus_tie", "open")))
	if _, a := h.state("tie"); !a.PaymentFailedAt.IsZero() {
		t.Error("a failure in the same second as a payment started dunning")
	}

	// A failure older than the payment already applied changes nothing.
	h.deliver(event("evt_old_fail", "invoice.payment_failed", t0.Add(time.Second), invoice("in_0", "cus_acme", "open")))
	if _, a := h.state("acme"); !a.PaymentFailedAt.IsZero() {
		t.Error("a late, older payment failure started dunning")
	}
	// Cancelled: back to free; a late "active" from before the cancellation
	// does not bring pro back.
	h.deliver(event("evt_deleted", "customer.subscription.deleted", t0.Add(3*time.Second), subscription("sub_1", "cus_acme", "canceled", "price_pro")))
	h.deliver(event("evt_late", "customer.subscription.updated", t0.Add(2*time.Second), subscription("sub_1", "cus_acme", "active", "price_pro")))
	if tn, a := h.state("acme"); tn.Plan != tenants.PlanFree || a.Status != "canceled" {
		t.Errorf("after cancellation and a late update: plan %s, status %s", tn.Plan, a.Status)
	}
	// A webhook cannot move another tenant's customer.
	h.deliver(event("evt_steal", "customer.subscription.updated", t0.Add(4*time.Second), subscription("sub_1", "cus_rev", "canceled", "price_pro")))
	if tn, _ := h.state("rev"); tn.Plan != tenants.PlanBusiness {
		t.Errorf("rev's plan after an event for a subscription it does not have: %s", tn.Plan)
	}
}

// TestDunning: a failed payment starts the grace period; when it is over
// the tenant is suspended; a payment resumes it. An operator's suspension
// is not lifted by a payment.
func TestDunning(t *testing.T) {
	h := newHarness(t)
	start := h.clock.Now()
	h.deliver(event("evt_sub", "customer.subscription.created", start, subscription("sub_1", "cus_acme", "active", "price_pro")))
	h.deliver(event("evt_fail", "invoice.payment_failed", start, invoice("in_1", "cus_acme", "open")))
	o, err := h.svc.Overview(ctx, "acme")
	if err != nil || o.Dunning == nil || !o.Dunning.SuspendsAt.Equal(start.Add(7*24*time.Hour)) || o.Dunning.Suspended {
		t.Fatalf("overview in grace: %+v %v", o.Dunning, err)
	}
	h.clock.Set(start.Add(7*24*time.Hour - time.Minute))
	if err := h.svc.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if tn, _ := h.state("acme"); tn.Suspended {
		t.Fatal("suspended inside the grace period")
	}
	h.clock.Set(start.Add(7*24*time.Hour + time.Minute))
	if err := h.svc.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if tn, a := h.state("acme"); !tn.Suspended || !a.SuspendedByBilling || h.countEvents("acme", events.BillingSuspended) != 1 {
		t.Fatalf("after the grace period: suspended %v by billing %v", tn.Suspended, a.SuspendedByBilling)
	}
	h.svc.Tick(ctx)
	if n := h.countEvents("acme", events.BillingSuspended); n != 1 {
		t.Errorf("suspended %d times", n)
	}
	h.deliver(event("evt_paid", "invoice.paid", h.clock.Now(), invoice("in_1", "cus_acme", "paid")))
	if tn, a := h.state("acme"); tn.Suspended || a.SuspendedByBilling || !a.PaymentFailedAt.IsZero() || tn.Plan != tenants.PlanPro {
		t.Fatalf("after payment: %+v %+v", tn, a)
	}
	if h.countEvents("acme", events.BillingResumed) != 1 {
		t.Error("no billing_resumed event")
	}

	// Suspended by the operator: a payment does not resume it.
	yes := true
	if _, err := h.store.AdminUpdateTenant(ctx, "acme", tenants.AdminTenantUpdate{Suspended: &yes}); err != nil {
		t.Fatal(err)
	}
	h.deliver(event("evt_paid2", "invoice.paid", h.clock.Now().Add(time.Second), invoice("in_2", "cus_acme", "paid")))
	if tn, _ := h.state("acme"); !tn.Suspended {
		t.Error("a payment lifted the operator's suspension")
	}
	o, _ = h.svc.Overview(ctx, "acme")
	if len(o.Invoices) != 2 || o.Invoices[0].ID == "" {
		t.Errorf("invoices: %+v", o.Invoices)
	}
}

// addUsage records messages in the hour of at.
func (h *harness) addUsage(slug string, at time.Time, messages int64) {
	h.t.Helper()
	if _, err := h.store.AddUsage(ctx, []tenants.UsageDelta{{Tenant: slug, Hour: at, Usage: tenants.Usage{MessagesIn: messages}}}); err != nil {
		h.t.Fatal(err)
	}
}

// TestMeterReports: every whole hour past the allowance is reported once
// with its overage, under an identifier of tenant, meter and hour; a report
// whose answer was lost is sent again under the same identifier after a
// backoff, and the hours are never counted twice.
func TestMeterReports(t *testing.T) {
	h := newHarness(t)
	month := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	allowance := tenants.PlanQuotas(tenants.PlanPro).MessagesPerMonth
	h.addUsage("acme", month.Add(time.Hour), allowance-100) // before the subscription: counts to the allowance
	sub := month.Add(10 * time.Hour)
	h.deliver(event("evt_sub", "customer.subscription.created", sub.Add(5*time.Minute), subscription("sub_1", "cus_acme", "active", "price_pro")))
	h.addUsage("acme", sub, 40)                  // within the allowance
	h.addUsage("acme", sub.Add(time.Hour), 300)  // 60 within, 240 over
	h.addUsage("acme", sub.Add(3*time.Hour), 50) // all over
	h.addUsage("acme", sub.Add(4*time.Hour), 70) // the hour still open

	h.clock.Set(sub.Add(4*time.Hour + 30*time.Minute))
	h.meter.fail = 1
	if err := h.svc.Tick(ctx); err == nil {
		t.Fatal("a failed report was not reported")
	}
	// Backing off: the next tick a moment later sends nothing.
	h.clock.Set(h.clock.Now().Add(100 * time.Millisecond))
	h.svc.Tick(ctx)
	if len(h.meter.sent) != 1 {
		t.Fatalf("reports while backing off: %d", len(h.meter.sent))
	}
	h.clock.Set(h.clock.Now().Add(5 * time.Second))
	if err := h.svc.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	h.svc.Tick(ctx) // nothing new
	ids := map[string]int64{}
	for _, e := range h.meter.sent {
		if prev, dup := ids[e.Identifier]; dup && prev != e.Value {
			t.Errorf("%s sent with %d, then %d", e.Identifier, prev, e.Value)
		}
		ids[e.Identifier] = e.Value
		if e.Customer != "cus_acme" || e.EventName != billing.DefaultMeterEvent {
			t.Errorf("meter event %+v", e)
		}
	}
	want := map[string]int64{
		"roost:acme:roost_messages:2026-11-01T11Z": 240,
		"roost:acme:roost_messages:2026-11-01T13Z": 50,
	}
	if len(ids) != len(want) {
		t.Errorf("reported %v, want %v", ids, want)
	}
	for id, v := range want {
		if ids[id] != v {
			t.Errorf("%s: reported %d, want %d (all: %v)", id, ids[id], v, ids)
		}
	}
	if len(h.meter.sent) != 3 {
		t.Errorf("sent %d reports, want 3 (one resent after the lost answer)", len(h.meter.sent))
	}
	if h.meter.sent[0].Identifier != h.meter.sent[1].Identifier {
		t.Errorf("the retry used another identifier: %s then %s", h.meter.sent[0].Identifier, h.meter.sent[1].Identifier)
	}
	if _, a := h.state("acme"); !a.MeteredThrough.Equal(sub.Add(4 * time.Hour)) {
		t.Errorf("metered through %v, want %v", a.MeteredThrough, sub.Add(4*time.Hour))
	}
}

// TestMeterEventAgainstStripeMock: a meter event is a request Stripe's API
// accepts.
func TestMeterEventAgainstStripeMock(t *testing.T) {
	s := billing.NewStripe("sk_test_123", testenv.StripeURL(t))
	err := s.Report(ctx, billing.MeterEvent{EventName: "roost_messages", Customer: "cus_acme", Identifier: "roost:acme:roost_messages:2026-11-01T11Z", Value: 240, Time: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSpendCap: warnings at 80% and 100% once a month each; a blocking cap
// turns into the tenant's messages_per_month.
func TestSpendCap(t *testing.T) {
	h := newHarness(t)
	now := h.clock.Now()
	h.deliver(event("evt_sub", "customer.subscription.created", now, subscription("sub_1", "cus_acme", "active", "price_pro")))
	if err := h.svc.SetSpendCap(ctx, "acme", &tenants.SpendCap{Cents: 100}); err != nil {
		t.Fatal(err)
	}
	if err := h.svc.SetSpendCap(ctx, "acme", &tenants.SpendCap{Cents: -1}); !errors.Is(err, tenants.ErrInvalid) {
		t.Errorf("a negative cap: %v", err)
	}
	allowance := tenants.PlanQuotas(tenants.PlanPro).MessagesPerMonth
	// 100 cents at 500 per million buys 200,000 messages.
	h.addUsage("acme", now, allowance+150_000) // 75 cents
	h.svc.Tick(ctx)
	if n := h.countEvents("acme", events.SpendWarning); n != 0 {
		t.Fatalf("warnings at 75%%: %d", n)
	}
	h.addUsage("acme", now, 10_000) // 80 cents
	h.svc.Tick(ctx)
	h.svc.Tick(ctx)
	if n := h.countEvents("acme", events.SpendWarning); n != 1 {
		t.Fatalf("warnings at 80%%: %d, want 1", n)
	}
	h.addUsage("acme", now, 40_000) // 100 cents
	h.svc.Tick(ctx)
	h.svc.Tick(ctx)
	evs := h.events.Recent("acme")
	if n := h.countEvents("acme", events.SpendWarning); n != 2 || !strings.Contains(evs[len(evs)-1].Reason, "100%") || evs[len(evs)-1].Limit != 100 {
		t.Fatalf("warnings at 100%%: %d, want 2 (last: %+v)", n, evs[len(evs)-1])
	}
	o, err := h.svc.Overview(ctx, "acme")
	if err != nil || o.Usage.OverageMessages != 200_000 || o.Usage.OverageCents != 100 || o.Usage.Allowance != allowance || o.SpendCap == nil {
		t.Errorf("overview: %+v %v", o.Usage, err)
	}
	if err := h.svc.SetSpendCap(ctx, "acme", &tenants.SpendCap{Cents: 100, Block: true}); err != nil {
		t.Fatal(err)
	}
	tn, _ := h.state("acme")
	if tn.Quotas().MessagesPerMonth != allowance+200_000 || tn.BillsOverage() {
		t.Errorf("blocking cap: messages_per_month %d, bills overage %v", tn.Quotas().MessagesPerMonth, tn.BillsOverage())
	}
	if err := h.svc.SetSpendCap(ctx, "acme", nil); err != nil {
		t.Fatal(err)
	}
	if tn, _ := h.state("acme"); tn.SpendCap != nil || !tn.BillsOverage() {
		t.Errorf("cap removed: %+v", tn.SpendCap)
	}
}
