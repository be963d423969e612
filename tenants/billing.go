package tenants

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"time"
)

// BillingAccount is a tenant's standing with Stripe, as the webhooks last
// reported it, and Roost's bookkeeping about it.
type BillingAccount struct {
	Tenant       string
	Customer     string
	Subscription string
	// Status is the subscription's Stripe status: active, trialing,
	// past_due, unpaid, canceled, incomplete…; empty without one.
	Status string
	// Plan is the plan the subscription pays for.
	Plan        string
	PeriodStart time.Time
	PeriodEnd   time.Time
	// SubscriptionAt and InvoiceAt are the Stripe creation times of the
	// newest subscription state and invoice event applied: an older event
	// arriving later changes nothing.
	SubscriptionAt time.Time
	InvoiceAt      time.Time
	// PaymentFailedAt is when the payments started failing; zero when the
	// last invoice event was a payment.
	PaymentFailedAt time.Time
	// SuspendedByBilling says the tenant is suspended because it did not
	// pay, so that a payment resumes it (and nothing else does).
	SuspendedByBilling bool
	// MeteredThrough: usage of every hour before it has been reported.
	MeteredThrough time.Time
	// The month (2026-11) and level (80, 100) of the last spend warning.
	SpendWarnedMonth string
	SpendWarnedLevel int64
	UpdatedAt        time.Time
}

// Invoice is a Stripe invoice of a tenant, as the webhooks reported it.
type Invoice struct {
	ID         string    `json:"id"`
	Status     string    `json:"status"`
	AmountDue  int64     `json:"amount_due"`
	AmountPaid int64     `json:"amount_paid"`
	Currency   string    `json:"currency"`
	URL        string    `json:"url"`
	CreatedAt  time.Time `json:"created_at"`
}

// BillingUpdate is what a billing change reads and may modify: the tenant
// (its plan, suspension and spend cap go through the same path as an
// operator's change), its billing account, and an invoice to record.
type BillingUpdate struct {
	Tenant  Tenant
	Account BillingAccount
	Invoice *Invoice
}

const billingColumns = `tenant, customer, subscription, status, plan, period_start, period_end, subscription_at, invoice_at,
	payment_failed_at, suspended_by_billing, metered_through, spend_warned_month, spend_warned_level, updated_at`

func scanBillingAccount(r rowScanner) (BillingAccount, error) {
	var a BillingAccount
	var ps, pe, sa, ia, pf, mt sql.NullTime
	if err := r.Scan(&a.Tenant, &a.Customer, &a.Subscription, &a.Status, &a.Plan, &ps, &pe, &sa, &ia, &pf,
		&a.SuspendedByBilling, &mt, &a.SpendWarnedMonth, &a.SpendWarnedLevel, &a.UpdatedAt); err != nil {
		return BillingAccount{}, err
	}
	a.PeriodStart, a.PeriodEnd, a.SubscriptionAt, a.InvoiceAt, a.PaymentFailedAt, a.MeteredThrough =
		utcOrZero(ps), utcOrZero(pe), utcOrZero(sa), utcOrZero(ia), utcOrZero(pf), utcOrZero(mt)
	a.UpdatedAt = a.UpdatedAt.UTC()
	return a, nil
}

func utcOrZero(t sql.NullTime) time.Time {
	if !t.Valid {
		return time.Time{}
	}
	return t.Time.UTC()
}

func sqlTime(t time.Time) sql.NullTime {
	if t.IsZero() {
		return sql.NullTime{}
	}
	return sql.NullTime{Time: t.UTC().Truncate(time.Microsecond), Valid: true}
}

// BillingAccount returns the tenant's billing account; a tenant that never
// reached Stripe has an empty one.
func (s *Store) BillingAccount(ctx context.Context, tenant string) (BillingAccount, error) {
	a, err := scanBillingAccount(s.db.QueryRowContext(ctx, `SELECT `+billingColumns+` FROM billing_accounts WHERE tenant = $1`, tenant))
	if err == sql.ErrNoRows {
		if _, err := s.Tenant(ctx, tenant); err != nil {
			return BillingAccount{}, err
		}
		return BillingAccount{Tenant: tenant}, nil
	}
	return a, err
}

// BillingAccounts lists every billing account with a Stripe customer.
func (s *Store) BillingAccounts(ctx context.Context) ([]BillingAccount, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+billingColumns+` FROM billing_accounts WHERE customer <> '' ORDER BY tenant`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []BillingAccount
	for rows.Next() {
		a, err := scanBillingAccount(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// TenantOfCustomer returns the tenant whose Stripe customer this is.
func (s *Store) TenantOfCustomer(ctx context.Context, customer string) (string, error) {
	var t string
	err := s.db.QueryRowContext(ctx, `SELECT tenant FROM billing_accounts WHERE customer = $1 AND customer <> ''`, customer).Scan(&t)
	return t, notFound(err, "stripe customer %s", customer)
}

// Invoices lists a tenant's most recent invoices, newest first.
func (s *Store) Invoices(ctx context.Context, tenant string, limit int) ([]Invoice, error) {
	rows, err := s.db.QueryContext(ctx,
		`SELECT id, status, amount_due, amount_paid, currency, url, created_at FROM billing_invoices
		 WHERE tenant = $1 ORDER BY created_at DESC, id DESC LIMIT $2`, tenant, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Invoice{}
	for rows.Next() {
		var in Invoice
		if err := rows.Scan(&in.ID, &in.Status, &in.AmountDue, &in.AmountPaid, &in.Currency, &in.URL, &in.CreatedAt); err != nil {
			return nil, err
		}
		in.CreatedAt = in.CreatedAt.UTC()
		out = append(out, in)
	}
	return out, rows.Err()
}

// UpdateBilling reads the tenant and its billing account under the tenant's
// row lock, lets change modify them, and writes back what changed in one
// transaction. A change of plan, suspension or spend cap is announced to
// the data plane as an operator's change is. The change is audited as
// action, unless action is empty (bookkeeping: how far usage was reported)
// and the tenant did not change.
func (s *Store) UpdateBilling(ctx context.Context, tenant, action string, change func(*BillingUpdate) error) (BillingUpdate, error) {
	var u BillingUpdate
	changed := false
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var err error
		if u, changed, err = s.updateBilling(ctx, tx, tenant, action, change); err != nil || !changed {
			return err
		}
		return s.notify(ctx, tx, Change{Kind: TenantChanged, Tenant: tenant})
	})
	if err == nil && changed {
		s.changes.Publish(Change{Kind: TenantChanged, Tenant: tenant})
	}
	return u, err
}

// ApplyStripeEvent applies a Stripe event to a tenant once: the event's id
// is recorded in the same transaction as its effect, so a redelivery, even
// a concurrent one, reports applied false and changes nothing.
func (s *Store) ApplyStripeEvent(ctx context.Context, id, typ, tenant string, change func(*BillingUpdate) error) (applied bool, err error) {
	changed := false
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO stripe_events (id, type, tenant, received_at) VALUES ($1, $2, $3, $4)`,
			id, typ, tenant, s.timestamp()); err != nil {
			if isUniqueViolation(err) {
				return errAlreadyApplied
			}
			return err
		}
		var err error
		if _, changed, err = s.updateBilling(ctx, tx, tenant, "billing."+typ, change); err != nil || !changed {
			return err
		}
		return s.notify(ctx, tx, Change{Kind: TenantChanged, Tenant: tenant})
	})
	if err == errAlreadyApplied {
		return false, nil
	}
	if err == nil && changed {
		s.changes.Publish(Change{Kind: TenantChanged, Tenant: tenant})
	}
	return err == nil, err
}

var errAlreadyApplied = fmt.Errorf("stripe event already applied")

func (s *Store) updateBilling(ctx context.Context, tx *sql.Tx, tenant, action string, change func(*BillingUpdate) error) (BillingUpdate, bool, error) {
	if err := s.lockTenant(ctx, tx, tenant); err != nil {
		return BillingUpdate{}, false, err
	}
	t, err := s.scanTenant(tx.QueryRowContext(ctx, `SELECT `+tenantColumns+` FROM tenants t WHERE t.slug = $1`, tenant))
	if err != nil {
		return BillingUpdate{}, false, err
	}
	a, err := scanBillingAccount(tx.QueryRowContext(ctx, `SELECT `+billingColumns+` FROM billing_accounts WHERE tenant = $1`, tenant))
	if err == sql.ErrNoRows {
		a, err = BillingAccount{Tenant: tenant}, nil
	}
	if err != nil {
		return BillingUpdate{}, false, err
	}
	before := t
	u := BillingUpdate{Tenant: t, Account: a}
	if err := change(&u); err != nil {
		return BillingUpdate{}, false, err
	}
	u.Tenant.Slug, u.Account.Tenant = tenant, tenant
	u.Account.UpdatedAt = s.timestamp()
	ac := u.Account
	if _, err := tx.ExecContext(ctx,
		`INSERT INTO billing_accounts (`+billingColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
		 ON CONFLICT (tenant) DO UPDATE SET customer = excluded.customer, subscription = excluded.subscription,
			status = excluded.status, plan = excluded.plan, period_start = excluded.period_start, period_end = excluded.period_end,
			subscription_at = excluded.subscription_at, invoice_at = excluded.invoice_at, payment_failed_at = excluded.payment_failed_at,
			suspended_by_billing = excluded.suspended_by_billing, metered_through = excluded.metered_through,
			spend_warned_month = excluded.spend_warned_month, spend_warned_level = excluded.spend_warned_level, updated_at = excluded.updated_at`,
		tenant, ac.Customer, ac.Subscription, ac.Status, ac.Plan, sqlTime(ac.PeriodStart), sqlTime(ac.PeriodEnd),
		sqlTime(ac.SubscriptionAt), sqlTime(ac.InvoiceAt), sqlTime(ac.PaymentFailedAt), ac.SuspendedByBilling,
		sqlTime(ac.MeteredThrough), ac.SpendWarnedMonth, ac.SpendWarnedLevel, ac.UpdatedAt); err != nil {
		if isUniqueViolation(err) {
			return BillingUpdate{}, false, fmt.Errorf("stripe customer %s belongs to another tenant: %w", ac.Customer, ErrConflict)
		}
		return BillingUpdate{}, false, err
	}
	if in := u.Invoice; in != nil {
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO billing_invoices (id, tenant, status, amount_due, amount_paid, currency, url, created_at)
			 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
			 ON CONFLICT (id) DO UPDATE SET status = excluded.status, amount_due = excluded.amount_due,
				amount_paid = excluded.amount_paid, url = excluded.url
			 WHERE billing_invoices.tenant = excluded.tenant`,
			in.ID, tenant, in.Status, in.AmountDue, in.AmountPaid, in.Currency, in.URL, in.CreatedAt.UTC().Truncate(time.Microsecond)); err != nil {
			return BillingUpdate{}, false, err
		}
	}
	changed := u.Tenant.Plan != before.Plan || u.Tenant.Suspended != before.Suspended || !sameCap(u.Tenant.SpendCap, before.SpendCap)
	if changed {
		if _, ok := s.plans[u.Tenant.Plan]; !ok {
			return BillingUpdate{}, false, fmt.Errorf("billing: unknown plan %q", u.Tenant.Plan)
		}
		if err := s.writeTenant(ctx, tx, &u.Tenant, cmp.Or(action, "billing.update")); err != nil {
			return BillingUpdate{}, false, err
		}
	} else if action != "" {
		if err := s.audit(ctx, tx, tenant, action, "tenant:"+tenant); err != nil {
			return BillingUpdate{}, false, err
		}
	}
	return u, changed, nil
}

func sameCap(a, b *SpendCap) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}
