package billing_test

import (
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/roosthub/roost/billing"
	"github.com/roosthub/roost/internal/testenv"
)

// TestStripeAgainstStripeMock: a customer, a Checkout session for a plan and
// a portal session, against stripe-mock (which answers from Stripe's
// OpenAPI spec).
func TestStripeAgainstStripeMock(t *testing.T) {
	s := billing.NewStripe("sk_test_123", testenv.StripeURL(t))
	ctx := context.Background()
	customer, err := s.CreateCustomer(ctx, "acme", "owner@example.com")
	if err != nil || !strings.HasPrefix(customer, "cus_") {
		t.Fatalf("CreateCustomer: %q %v", customer, err)
	}
	checkout, err := s.CheckoutURL(ctx, "acme", customer, billing.Plan{Name: "pro", FlatPrice: "price_pro", MeteredPrice: "price_pro_messages"},
		"https://console.example.com/billing?done=1", "https://console.example.com/billing")
	if u, perr := url.Parse(checkout); err != nil || perr != nil || u.Scheme != "https" {
		t.Errorf("CheckoutURL: %q %v", checkout, err)
	}
	portal, err := s.PortalURL(ctx, customer, "https://console.example.com/billing")
	if u, perr := url.Parse(portal); err != nil || perr != nil || u.Scheme != "https" {
		t.Errorf("PortalURL: %q %v", portal, err)
	}
	if _, err := s.CheckoutURL(ctx, "acme", customer, billing.Plan{Name: "free"}, "https://x", "https://x"); err == nil {
		t.Error("a plan without a price was sent to Checkout")
	}
	if _, err := s.PortalURL(ctx, "", "https://x"); err == nil {
		t.Error("a portal session without a customer was asked for")
	}
}
