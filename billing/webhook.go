package billing

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// WebhookTolerance is how old a webhook's signed timestamp may be.
const WebhookTolerance = 300 * time.Second

// ErrSignature is a webhook whose signature does not verify: wrong secret,
// a body changed in transit (even re-serialised), or a stale timestamp.
var ErrSignature = errors.New("the Stripe-Signature does not verify")

// HandleWebhook verifies and applies a Stripe event. Each event id is applied
// once, however often and however concurrently Stripe delivers it; events
// of types Roost does not handle, and events for no tenant, are accepted and
// ignored. An error other than ErrSignature or ErrOff is worth a redelivery.
func (s *Service) HandleWebhook(ctx context.Context, payload []byte, signature string) error {
	if !s.Enabled() {
		return ErrOff
	}
	if s.cfg.WebhookSecret == "" {
		return errors.New("billing: ROOST_STRIPE_WEBHOOK_SECRET is not set, so no webhook can be verified")
	}
	ev, err := webhook.ConstructEventWithOptions(payload, signature, s.cfg.WebhookSecret,
		webhook.ConstructEventOptions{Tolerance: WebhookTolerance, IgnoreAPIVersionMismatch: true})
	if err != nil {
		return fmt.Errorf("%w: %v", ErrSignature, err)
	}
	if ev.Data == nil {
		return fmt.Errorf("%w: event %s has no data", ErrSignature, ev.ID)
	}
	at := time.Unix(ev.Created, 0).UTC()
	var (
		tenant string
		apply  func(*tenants.BillingUpdate) error
		after  func(before, after tenants.BillingUpdate)
	)
	switch ev.Type {
	case "checkout.session.completed":
		var cs stripe.CheckoutSession
		if err := json.Unmarshal(ev.Data.Raw, &cs); err != nil {
			return fmt.Errorf("checkout session in %s: %w", ev.ID, err)
		}
		if cs.Mode != stripe.CheckoutSessionModeSubscription || cs.Subscription == nil {
			return nil
		}
		tenant, err = s.tenantOf(ctx, idOf(cs.Customer), cs.ClientReferenceID)
		apply = func(u *tenants.BillingUpdate) error {
			if err := s.claimCustomer(u, idOf(cs.Customer)); err != nil {
				return err
			}
			if at.Before(u.Account.SubscriptionAt) {
				return nil // a newer subscription state is already applied
			}
			u.Account.Subscription, u.Account.SubscriptionAt = cs.Subscription.ID, at
			if plan := cs.Metadata["plan"]; s.planExists(plan) {
				u.Account.Plan = plan
			}
			if u.Account.Status == "" && (cs.PaymentStatus == stripe.CheckoutSessionPaymentStatusPaid || cs.PaymentStatus == stripe.CheckoutSessionPaymentStatusNoPaymentRequired) {
				u.Account.Status = "active"
			}
			s.applyPlan(u, at)
			return nil
		}
	case "customer.subscription.created", "customer.subscription.updated", "customer.subscription.deleted":
		var sub stripe.Subscription
		if err := json.Unmarshal(ev.Data.Raw, &sub); err != nil {
			return fmt.Errorf("subscription in %s: %w", ev.ID, err)
		}
		tenant, err = s.tenantOf(ctx, idOf(sub.Customer), sub.Metadata["tenant"])
		if err == nil {
			err = s.breakTie(ctx, tenant, at, &sub)
		}
		apply = func(u *tenants.BillingUpdate) error {
			if err := s.claimCustomer(u, idOf(sub.Customer)); err != nil {
				return err
			}
			if at.Before(u.Account.SubscriptionAt) {
				return nil
			}
			status := string(sub.Status)
			if ev.Type == "customer.subscription.deleted" {
				status = string(stripe.SubscriptionStatusCanceled)
			}
			if u.Account.Subscription != "" && u.Account.Subscription != sub.ID && !billable(status) {
				return nil // an old subscription ending does not end the current one
			}
			u.Account.Subscription, u.Account.Status, u.Account.SubscriptionAt = sub.ID, status, at
			if plan := s.planOf(&sub); plan != "" {
				u.Account.Plan = plan
			}
			u.Account.PeriodStart, u.Account.PeriodEnd = unixOrZero(sub.CurrentPeriodStart), unixOrZero(sub.CurrentPeriodEnd)
			s.applyPlan(u, at)
			return nil
		}
	case "invoice.paid", "invoice.payment_failed":
		var in stripe.Invoice
		if err := json.Unmarshal(ev.Data.Raw, &in); err != nil {
			return fmt.Errorf("invoice in %s: %w", ev.ID, err)
		}
		tenant, err = s.tenantOf(ctx, idOf(in.Customer), in.Metadata["tenant"])
		paid := ev.Type == "invoice.paid"
		apply = func(u *tenants.BillingUpdate) error {
			if err := s.claimCustomer(u, idOf(in.Customer)); err != nil {
				return err
			}
			u.Invoice = &tenants.Invoice{ID: in.ID, Status: string(in.Status), AmountDue: in.AmountDue, AmountPaid: in.AmountPaid,
				Currency: string(in.Currency), URL: in.HostedInvoiceURL, CreatedAt: unixOrZero(in.Created)}
			if u.Invoice.CreatedAt.IsZero() {
				u.Invoice.CreatedAt = at
			}
			if at.Before(u.Account.InvoiceAt) {
				return nil // a newer payment outcome is already applied
			}
			if !paid {
				// A payment in the same second wins: Stripe's times are
				// seconds, and a failure is only news after the last payment.
				if !at.After(u.Account.InvoiceAt) && !u.Account.InvoiceAt.IsZero() {
					return nil
				}
				u.Account.InvoiceAt = at
				if u.Account.PaymentFailedAt.IsZero() {
					u.Account.PaymentFailedAt = at
				}
				return nil
			}
			u.Account.InvoiceAt = at
			u.Account.PaymentFailedAt = time.Time{}
			if u.Account.SuspendedByBilling {
				u.Tenant.Suspended, u.Account.SuspendedByBilling = false, false
			}
			return nil
		}
		after = func(b, a tenants.BillingUpdate) {
			switch {
			case !paid && b.Account.PaymentFailedAt.IsZero() && !a.Account.PaymentFailedAt.IsZero():
				s.emit(tenant, events.PaymentFailed, fmt.Sprintf("invoice %s was not paid; the tenant is suspended on %s unless it is paid",
					in.ID, a.Account.PaymentFailedAt.Add(s.cfg.Grace).Format(time.RFC3339)), 0)
			case paid && b.Account.SuspendedByBilling && !a.Account.SuspendedByBilling:
				s.emit(tenant, events.BillingResumed, "invoice "+in.ID+" was paid", 0)
			case paid && !b.Account.PaymentFailedAt.IsZero():
				s.emit(tenant, events.PaymentSucceeded, "invoice "+in.ID+" was paid", 0)
			}
		}
	default:
		return nil // not one Roost acts on
	}
	if errors.Is(err, tenants.ErrNotFound) {
		s.cfg.Log.Warn("stripe event for no tenant of this hub; ignored", "event", ev.ID, "type", ev.Type)
		return nil
	}
	if err != nil {
		return err
	}
	var before tenants.BillingUpdate
	applied, err := s.cfg.Store.ApplyStripeEvent(ctx, ev.ID, string(ev.Type), tenant, func(u *tenants.BillingUpdate) error {
		before = *u
		return apply(u)
	})
	if errors.Is(err, tenants.ErrNotFound) {
		s.cfg.Log.Warn("stripe event for a tenant deleted meanwhile; ignored", "event", ev.ID, "tenant", tenant)
		return nil
	}
	if err != nil || !applied {
		return err
	}
	s.cfg.Log.Info("stripe event applied", "event", ev.ID, "type", ev.Type, "tenant", tenant)
	// The effect is committed; what follows tells the tenant about it.
	acct, err := s.cfg.Store.BillingAccount(ctx, tenant)
	if err != nil {
		return nil
	}
	t, err := s.cfg.Store.Tenant(ctx, tenant)
	if err != nil {
		return nil
	}
	if before.Tenant.Plan != t.Plan {
		s.emit(tenant, events.PlanChanged, fmt.Sprintf("plan %s → %s (subscription %s)", before.Tenant.Plan, t.Plan, acct.Status), 0)
	}
	if b := before.Account; b.Subscription != acct.Subscription || b.Status != acct.Status {
		s.emit(tenant, events.SubscriptionChanged, fmt.Sprintf("subscription %s %s → %s %s (plan %s)",
			cmp.Or(b.Subscription, "none"), cmp.Or(b.Status, "none"), cmp.Or(acct.Subscription, "none"), cmp.Or(acct.Status, "none"), t.Plan), 0)
	}
	if after != nil {
		after(before, tenants.BillingUpdate{Tenant: t, Account: acct})
	}
	return nil
}

// breakTie re-reads a subscription from Stripe when an event about it bears
// the same second as the state already applied: Stripe's event times are
// seconds and its deliveries unordered, so which of the two is newer is
// unknown, and Stripe's current state settles it.
func (s *Service) breakTie(ctx context.Context, tenant string, at time.Time, sub *stripe.Subscription) error {
	a, err := s.cfg.Store.BillingAccount(ctx, tenant)
	if err != nil || !at.Equal(a.SubscriptionAt) || a.Subscription != sub.ID {
		return err
	}
	fresh, err := s.cfg.Stripe.Subscription(ctx, sub.ID)
	if err != nil {
		return err // answered 500: Stripe delivers the event again later
	}
	customer, items := sub.Customer, sub.Items
	*sub = *fresh
	sub.Customer = customer // the same subscription, the same customer
	if s.planOfItems(fresh.Items) == "" {
		sub.Items = items
	}
	return nil
}

// tenantOf finds the tenant of a Stripe customer; hint (the tenant Roost
// wrote into the object's metadata) serves a tenant whose customer id is
// not recorded yet.
func (s *Service) tenantOf(ctx context.Context, customer, hint string) (string, error) {
	if customer != "" {
		t, err := s.cfg.Store.TenantOfCustomer(ctx, customer)
		if !errors.Is(err, tenants.ErrNotFound) {
			return t, err
		}
	}
	if hint == "" {
		return "", fmt.Errorf("stripe customer %q: %w", customer, tenants.ErrNotFound)
	}
	a, err := s.cfg.Store.BillingAccount(ctx, hint)
	if err != nil {
		return "", err
	}
	if a.Customer != "" && a.Customer != customer {
		return "", fmt.Errorf("tenant %s has another Stripe customer: %w", hint, tenants.ErrNotFound)
	}
	return hint, nil
}

func (s *Service) claimCustomer(u *tenants.BillingUpdate, customer string) error {
	switch {
	case customer == "" || u.Account.Customer == customer:
	case u.Account.Customer == "":
		u.Account.Customer = customer
	default:
		return fmt.Errorf("stripe customer %s is not tenant %s's: %w", customer, u.Tenant.Slug, tenants.ErrConflict)
	}
	return nil
}

// applyPlan moves the tenant to the plan its subscription pays for, or to
// free when it has none that pays, and starts metering a paid subscription
// at the hour it began.
func (s *Service) applyPlan(u *tenants.BillingUpdate, at time.Time) {
	if billable(u.Account.Status) && s.planExists(u.Account.Plan) {
		u.Tenant.Plan = u.Account.Plan
		if u.Account.MeteredThrough.IsZero() {
			u.Account.MeteredThrough = at.Truncate(time.Hour)
		}
		return
	}
	if u.Account.Status != "" && u.Account.Status != string(stripe.SubscriptionStatusIncomplete) {
		u.Tenant.Plan = tenants.PlanFree
	}
}

func (s *Service) planExists(name string) bool {
	_, ok := s.cfg.Store.Plans()[name]
	return ok && name != ""
}

// planOf is the plan a subscription pays for: the plan one of its prices
// belongs to, else the plan Roost wrote into its metadata at Checkout.
func (s *Service) planOf(sub *stripe.Subscription) string {
	if p := s.planOfItems(sub.Items); p != "" {
		return p
	}
	if p := sub.Metadata["plan"]; s.planExists(p) {
		return p
	}
	return ""
}

func idOf(c *stripe.Customer) string {
	if c == nil {
		return ""
	}
	return c.ID
}

func unixOrZero(sec int64) time.Time {
	if sec == 0 {
		return time.Time{}
	}
	return time.Unix(sec, 0).UTC()
}

func (s *Service) planOfItems(items *stripe.SubscriptionItemList) string {
	if items == nil {
		return ""
	}
	for _, it := range items.Data {
		if it != nil && it.Price != nil {
			if p, ok := s.cfg.Store.Plans().ByPrice(it.Price.ID); ok {
				return p.Name
			}
		}
	}
	return ""
}
