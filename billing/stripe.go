// Package billing is Roost's side of Stripe: a customer per tenant, plan
// changes through Checkout, the customer portal, verified webhooks and
// metered usage.
package billing

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"
)

// Plan is a paid plan's Stripe prices: a flat monthly price and a metered
// price for usage beyond the allowance.
type Plan struct {
	Name         string
	FlatPrice    string
	MeteredPrice string
}

// Stripe calls Stripe's API.
type Stripe struct {
	api *client.API
}

// NewStripe returns a client for Stripe's API with key; apiURL, if not
// empty, points it elsewhere (stripe-mock in tests).
func NewStripe(key, apiURL string) *Stripe {
	var backends *stripe.Backends
	if apiURL != "" {
		cfg := &stripe.BackendConfig{URL: stripe.String(apiURL), LeveledLogger: &stripe.LeveledLogger{Level: stripe.LevelError}}
		backends = &stripe.Backends{
			API:     stripe.GetBackendWithConfig(stripe.APIBackend, cfg),
			Connect: stripe.GetBackendWithConfig(stripe.ConnectBackend, cfg),
			Uploads: stripe.GetBackendWithConfig(stripe.UploadsBackend, cfg),
		}
	}
	return &Stripe{api: client.New(key, backends)}
}

// CreateCustomer makes the Stripe customer of a tenant. It is idempotent
// per tenant: a retry after a lost answer returns the same customer.
func (s *Stripe) CreateCustomer(ctx context.Context, tenant, email string) (string, error) {
	p := &stripe.CustomerParams{Email: stripe.String(email), Description: stripe.String("Roost tenant " + tenant)}
	p.Context = ctx
	p.AddMetadata("tenant", tenant)
	p.SetIdempotencyKey("roost-customer-" + tenant)
	c, err := s.api.Customers.New(p)
	if err != nil {
		return "", fmt.Errorf("stripe: create customer: %w", err)
	}
	return c.ID, nil
}

// CheckoutURL starts a Checkout session that subscribes a customer to a
// plan, and returns where to send the user.
func (s *Stripe) CheckoutURL(ctx context.Context, tenant, customer string, plan Plan, successURL, cancelURL string) (string, error) {
	if plan.FlatPrice == "" {
		return "", errors.New("billing: the plan has no Stripe price")
	}
	if customer == "" {
		return "", errors.New("billing: no Stripe customer")
	}
	items := []*stripe.CheckoutSessionLineItemParams{{Price: stripe.String(plan.FlatPrice), Quantity: stripe.Int64(1)}}
	if plan.MeteredPrice != "" {
		items = append(items, &stripe.CheckoutSessionLineItemParams{Price: stripe.String(plan.MeteredPrice)})
	}
	p := &stripe.CheckoutSessionParams{
		Mode:              stripe.String(string(stripe.CheckoutSessionModeSubscription)),
		Customer:          stripe.String(customer),
		ClientReferenceID: stripe.String(tenant),
		LineItems:         items,
		SuccessURL:        stripe.String(successURL),
		CancelURL:         stripe.String(cancelURL),
		SubscriptionData:  &stripe.CheckoutSessionSubscriptionDataParams{Metadata: map[string]string{"tenant": tenant, "plan": plan.Name}},
	}
	p.Context = ctx
	p.AddMetadata("tenant", tenant)
	p.AddMetadata("plan", plan.Name)
	sess, err := s.api.CheckoutSessions.New(p)
	if err != nil {
		return "", fmt.Errorf("stripe: create checkout session: %w", err)
	}
	if sess.URL == "" {
		return "", errors.New("stripe: the checkout session has no URL")
	}
	return sess.URL, nil
}

// PortalURL opens a customer portal session and returns its URL.
func (s *Stripe) PortalURL(ctx context.Context, customer, returnURL string) (string, error) {
	if customer == "" {
		return "", errors.New("billing: no Stripe customer")
	}
	p := &stripe.BillingPortalSessionParams{Customer: stripe.String(customer), ReturnURL: stripe.String(returnURL)}
	p.Context = ctx
	sess, err := s.api.BillingPortalSessions.New(p)
	if err != nil {
		return "", fmt.Errorf("stripe: create portal session: %w", err)
	}
	if sess.URL == "" {
		return "", errors.New("stripe: the portal session has no URL")
	}
	return sess.URL, nil
}

// MeterEvent is an amount of usage for a Stripe Billing Meter.
type MeterEvent struct {
	// EventName is the meter's event_name.
	EventName string
	Customer  string
	// Identifier makes the event unique: Stripe counts one event per
	// identifier, so a retry after a lost answer does not count twice.
	Identifier string
	Value      int64
	Time       time.Time
}

// Meter receives usage.
type Meter interface {
	Report(ctx context.Context, e MeterEvent) error
}

// Report sends a meter event. The identifier is also the request's
// idempotency key.
func (s *Stripe) Report(ctx context.Context, e MeterEvent) error {
	p := &stripe.BillingMeterEventParams{
		EventName:  stripe.String(e.EventName),
		Identifier: stripe.String(e.Identifier),
		Payload:    map[string]string{"stripe_customer_id": e.Customer, "value": strconv.FormatInt(e.Value, 10)},
		Timestamp:  stripe.Int64(e.Time.Unix()),
	}
	p.Context = ctx
	p.SetIdempotencyKey(e.Identifier)
	if _, err := s.api.BillingMeterEvents.New(p); err != nil {
		return fmt.Errorf("stripe: meter event %s: %w", e.Identifier, err)
	}
	return nil
}

// Subscription reads a subscription as Stripe has it now.
func (s *Stripe) Subscription(ctx context.Context, id string) (*stripe.Subscription, error) {
	p := &stripe.SubscriptionParams{}
	p.Context = ctx
	sub, err := s.api.Subscriptions.Get(id, p)
	if err != nil {
		return nil, fmt.Errorf("stripe: read subscription %s: %w", id, err)
	}
	return sub, nil
}
