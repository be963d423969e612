package storetest

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roosthub/roost/tenants"
)

// testBilling: billing accounts, invoices and spend caps round-trip; a
// customer belongs to one tenant; a change of plan or suspension through
// billing is announced; the operator resuming a tenant waives its dunning.
func testBilling(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	owner := mustAccount(t, s, "billing@example.com")
	mustTenant(t, s, owner, "payer")
	mustTenant(t, s, owner, "other")

	a, err := s.BillingAccount(ctx, "payer")
	if err != nil || a.Tenant != "payer" || a.Customer != "" {
		t.Fatalf("fresh billing account: %+v %v", a, err)
	}
	if _, err := s.BillingAccount(ctx, "nobody"); err == nil {
		t.Fatal("a billing account for no tenant")
	}
	var announced atomic.Int64
	cancel := s.Changes().Subscribe(func(c tenants.Change) {
		if c.Tenant == "payer" && c.Kind == tenants.TenantChanged {
			announced.Add(1)
		}
	})
	defer cancel()

	failed := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)
	u, err := s.UpdateBilling(ctx, "payer", "billing.test", func(u *tenants.BillingUpdate) error {
		u.Account.Customer, u.Account.Subscription, u.Account.Status, u.Account.Plan = "cus_payer", "sub_1", "active", tenants.PlanPro
		u.Account.PaymentFailedAt, u.Account.MeteredThrough = failed, failed.Truncate(time.Hour)
		u.Tenant.Plan = tenants.PlanPro
		u.Tenant.SpendCap = &tenants.SpendCap{Cents: 1000, Block: true}
		u.Invoice = &tenants.Invoice{ID: "in_1", Status: "open", AmountDue: 2900, Currency: "usd", URL: "https://invoice", CreatedAt: failed}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if announced.Load() != 1 {
		t.Errorf("a plan change through billing was announced %d times, want 1", announced.Load())
	}
	got, err := s.BillingAccount(ctx, "payer")
	if err != nil || got.Customer != "cus_payer" || got.Status != "active" || !got.PaymentFailedAt.Equal(failed) || !got.MeteredThrough.Equal(failed.Truncate(time.Hour)) {
		t.Errorf("billing account after update: %+v %v (update returned %+v)", got, err, u.Account)
	}
	tn, err := s.Tenant(ctx, "payer")
	if err != nil || tn.Plan != tenants.PlanPro || tn.SpendCap == nil || *tn.SpendCap != (tenants.SpendCap{Cents: 1000, Block: true}) {
		t.Fatalf("tenant after billing update: %+v %v", tn, err)
	}
	// The blocking cap buys 1000 cents / 500 cents per million = 2M messages.
	if q, want := tn.Quotas().MessagesPerMonth, tenants.PlanQuotas(tenants.PlanPro).MessagesPerMonth+2_000_000; q != want || tn.BillsOverage() {
		t.Errorf("blocking cap: messages_per_month %d (want %d), bills overage %v", q, want, tn.BillsOverage())
	}
	if who, err := s.TenantOfCustomer(ctx, "cus_payer"); err != nil || who != "payer" {
		t.Errorf("TenantOfCustomer: %q %v", who, err)
	}
	invs, err := s.Invoices(ctx, "payer", 10)
	if err != nil || len(invs) != 1 || invs[0].ID != "in_1" || invs[0].AmountDue != 2900 {
		t.Errorf("invoices: %+v %v", invs, err)
	}
	if invs, _ := s.Invoices(ctx, "other", 10); len(invs) != 0 {
		t.Errorf("another tenant sees %d invoices", len(invs))
	}
	// Another tenant cannot take the customer, nor the invoice.
	_, err = s.UpdateBilling(ctx, "other", "billing.test", func(u *tenants.BillingUpdate) error {
		u.Account.Customer = "cus_payer"
		return nil
	})
	wantErr(t, "a second tenant claiming a customer", err, tenants.ErrConflict)
	if _, err := s.UpdateBilling(ctx, "other", "billing.test", func(u *tenants.BillingUpdate) error {
		u.Invoice = &tenants.Invoice{ID: "in_1", Status: "paid", CreatedAt: failed}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if invs, _ := s.Invoices(ctx, "payer", 10); len(invs) != 1 || invs[0].Status != "open" {
		t.Errorf("another tenant changed an invoice: %+v", invs)
	}
	if accts, err := s.BillingAccounts(ctx); err != nil || len(accts) != 1 || accts[0].Tenant != "payer" {
		t.Errorf("accounts with a customer: %+v %v", accts, err)
	}

	// Suspended by billing; the operator resumes: dunning is waived.
	if _, err := s.UpdateBilling(ctx, "payer", "billing.suspend", func(u *tenants.BillingUpdate) error {
		u.Tenant.Suspended, u.Account.SuspendedByBilling = true, true
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	resume := false
	if _, err := s.AdminUpdateTenant(ctx, "payer", tenants.AdminTenantUpdate{Suspended: &resume}); err != nil {
		t.Fatal(err)
	}
	got, _ = s.BillingAccount(ctx, "payer")
	if got.SuspendedByBilling || !got.PaymentFailedAt.IsZero() {
		t.Errorf("operator resume left dunning: %+v", got)
	}
}

// testStripeEventsOnce: an event id is applied once, even when delivered
// three times at once; a failed application records nothing.
func testStripeEventsOnce(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	owner := mustAccount(t, s, "events@example.com")
	mustTenant(t, s, owner, "evented")
	var effects atomic.Int64
	apply := func(u *tenants.BillingUpdate) error {
		effects.Add(1)
		u.Account.SpendWarnedLevel++
		return nil
	}
	var wg sync.WaitGroup
	var applied atomic.Int64
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok, err := s.ApplyStripeEvent(ctx, "evt_1", "invoice.paid", "evented", apply)
			if err != nil {
				t.Errorf("ApplyStripeEvent: %v", err)
			}
			if ok {
				applied.Add(1)
			}
		}()
	}
	wg.Wait()
	a, _ := s.BillingAccount(ctx, "evented")
	if applied.Load() != 1 || a.SpendWarnedLevel != 1 {
		t.Errorf("one event delivered 3× at once: applied %d times, effect %d, want 1", applied.Load(), a.SpendWarnedLevel)
	}
	// An application that fails records nothing: a redelivery applies it.
	boom := func(u *tenants.BillingUpdate) error { return tenants.ErrConflict }
	if _, err := s.ApplyStripeEvent(ctx, "evt_2", "invoice.paid", "evented", boom); err == nil {
		t.Fatal("a failing application reported success")
	}
	if ok, err := s.ApplyStripeEvent(ctx, "evt_2", "invoice.paid", "evented", apply); !ok || err != nil {
		t.Errorf("redelivery after a failure: applied %v %v", ok, err)
	}
}
