package billing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// ErrOff is returned by everything that needs Stripe when billing is off.
var ErrOff = errors.New("billing is off on this hub (no ROOST_STRIPE_KEY): every tenant is on the free plan or on the plan the operator sets")

// Defaults.
const (
	DefaultGrace      = 7 * 24 * time.Hour
	DefaultMeterEvent = "roost_messages"
	// settle is how long after an hour ends its usage is taken as final:
	// the data plane flushes its meters about once a second.
	settle = 2 * time.Minute
	// maxBackoff bounds the wait between failed reports.
	maxBackoff = 10 * time.Minute
)

// Config configures the billing service.
type Config struct {
	Store *tenants.Store
	// Stripe is the Stripe client; nil turns billing off.
	Stripe *Stripe
	// Meter receives usage; nil means Stripe.
	Meter Meter
	// WebhookSecret verifies webhook signatures (whsec_…).
	WebhookSecret string
	// MeterEvent is the event_name of the Stripe meter the plans' metered
	// prices use.
	MeterEvent string
	// Grace is how long a tenant whose payment failed keeps running before
	// it is suspended.
	Grace time.Duration
	// ConsoleURL is where Checkout and the portal send the user back.
	ConsoleURL string
	Events     events.Sink
	Log        *slog.Logger
	Now        func() time.Time
}

// Service runs billing: the customer flow, webhooks, usage reports, spend
// caps and dunning.
type Service struct {
	cfg Config

	mu sync.Mutex
	// backoff holds, per tenant, how many reports failed in a row and when
	// to try again.
	backoff map[string]retry
}

type retry struct {
	failures int
	next     time.Time
}

// New returns the billing service.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil {
		return nil, errors.New("billing: no store")
	}
	if cfg.Stripe != nil && cfg.Meter == nil {
		cfg.Meter = cfg.Stripe
	}
	if cfg.MeterEvent == "" {
		cfg.MeterEvent = DefaultMeterEvent
	}
	if cfg.Grace == 0 {
		cfg.Grace = DefaultGrace
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Events == nil {
		cfg.Events = discard{}
	}
	if cfg.ConsoleURL == "" {
		cfg.ConsoleURL = "http://localhost:8080"
	}
	return &Service{cfg: cfg, backoff: map[string]retry{}}, nil
}

type discard struct{}

func (discard) Emit(events.Event) {}

// Enabled reports whether billing is on.
func (s *Service) Enabled() bool { return s != nil && s.cfg.Stripe != nil }

func (s *Service) emit(tenant, typ, reason string, limit int64) {
	s.cfg.Events.Emit(events.Event{Time: s.cfg.Now().UTC(), Tenant: tenant, Type: typ, Reason: reason, Limit: limit})
}

// returnURL is the console's billing page of a tenant.
func (s *Service) returnURL(tenant, query string) string {
	u := s.cfg.ConsoleURL + "/tenants/" + url.PathEscape(tenant) + "/billing"
	if query != "" {
		u += "?" + query
	}
	return u
}

// customer returns the tenant's Stripe customer, creating it on first need.
func (s *Service) customer(ctx context.Context, tenant, email string) (string, error) {
	a, err := s.cfg.Store.BillingAccount(ctx, tenant)
	if err != nil {
		return "", err
	}
	if a.Customer != "" {
		return a.Customer, nil
	}
	// Idempotent per tenant: two first checkouts at once get one customer.
	id, err := s.cfg.Stripe.CreateCustomer(ctx, tenant, email)
	if err != nil {
		return "", err
	}
	u, err := s.cfg.Store.UpdateBilling(ctx, tenant, "billing.customer", func(u *tenants.BillingUpdate) error {
		if u.Account.Customer == "" {
			u.Account.Customer = id
		}
		return nil
	})
	return u.Account.Customer, err
}

// Checkout starts a Checkout session that subscribes the tenant to plan and
// returns its URL.
func (s *Service) Checkout(ctx context.Context, tenant, plan, email string) (string, error) {
	if !s.Enabled() {
		return "", ErrOff
	}
	p, ok := s.cfg.Store.Plans()[plan]
	if !ok {
		return "", &tenants.FieldError{Field: "plan", Message: fmt.Sprintf("unknown plan %q", plan)}
	}
	if p.StripePrice == "" {
		return "", &tenants.FieldError{Field: "plan", Message: fmt.Sprintf("plan %s cannot be bought through Checkout (it has no Stripe price)", plan)}
	}
	a, err := s.cfg.Store.BillingAccount(ctx, tenant)
	if err != nil {
		return "", err
	}
	if billable(a.Status) {
		return "", fmt.Errorf("the tenant already has a subscription (%s, %s); change its plan in the customer portal: %w", a.Plan, a.Status, tenants.ErrConflict)
	}
	customer, err := s.customer(ctx, tenant, email)
	if err != nil {
		return "", err
	}
	return s.cfg.Stripe.CheckoutURL(ctx, tenant, customer, Plan{Name: p.Name, FlatPrice: p.StripePrice, MeteredPrice: p.StripeMeteredPrice},
		s.returnURL(tenant, "checkout=done"), s.returnURL(tenant, "checkout=cancelled"))
}

// Portal opens the customer portal of the tenant and returns its URL.
func (s *Service) Portal(ctx context.Context, tenant, email string) (string, error) {
	if !s.Enabled() {
		return "", ErrOff
	}
	customer, err := s.customer(ctx, tenant, email)
	if err != nil {
		return "", err
	}
	return s.cfg.Stripe.PortalURL(ctx, customer, s.returnURL(tenant, ""))
}

// billable reports whether a subscription in this status pays for its plan:
// past_due and unpaid keep the plan until dunning suspends the tenant.
func billable(status string) bool {
	switch status {
	case "active", "trialing", "past_due", "unpaid":
		return true
	}
	return false
}

// Overview is a tenant's billing page.
type Overview struct {
	Enabled      bool              `json:"enabled"`
	Plan         string            `json:"plan"`
	Subscription *Subscription     `json:"subscription"`
	Usage        UsageSummary      `json:"usage"`
	SpendCap     *tenants.SpendCap `json:"spend_cap"`
	Dunning      *Dunning          `json:"dunning"`
	Invoices     []tenants.Invoice `json:"invoices"`
}

// Subscription is the tenant's Stripe subscription.
type Subscription struct {
	ID                 string     `json:"id"`
	Status             string     `json:"status"`
	Plan               string     `json:"plan"`
	CurrentPeriodStart *time.Time `json:"current_period_start"`
	CurrentPeriodEnd   *time.Time `json:"current_period_end"`
}

// UsageSummary is the month's messages against the allowance.
type UsageSummary struct {
	Month           string `json:"month"`
	Messages        int64  `json:"messages"`
	Allowance       int64  `json:"allowance"`
	OverageMessages int64  `json:"overage_messages"`
	// OverageCents estimates what the overage costs at the plan's price.
	OverageCents int64 `json:"overage_cents"`
}

// Dunning says a payment failed and when the tenant will be suspended.
type Dunning struct {
	PaymentFailedAt time.Time `json:"payment_failed_at"`
	SuspendsAt      time.Time `json:"suspends_at"`
	Suspended       bool      `json:"suspended"`
}

// Overview returns the tenant's billing page.
func (s *Service) Overview(ctx context.Context, tenant string) (Overview, error) {
	t, err := s.cfg.Store.Tenant(ctx, tenant)
	if err != nil {
		return Overview{}, err
	}
	a, err := s.cfg.Store.BillingAccount(ctx, tenant)
	if err != nil {
		return Overview{}, err
	}
	now := s.cfg.Now()
	messages, err := s.cfg.Store.MonthMessages(ctx, tenant, now)
	if err != nil {
		return Overview{}, err
	}
	invoices, err := s.cfg.Store.Invoices(ctx, tenant, 12)
	if err != nil {
		return Overview{}, err
	}
	o := Overview{Enabled: s.Enabled(), Plan: t.Plan, SpendCap: t.SpendCap, Invoices: invoices, Usage: summarize(t, messages, now)}
	if a.Subscription != "" {
		o.Subscription = &Subscription{ID: a.Subscription, Status: a.Status, Plan: a.Plan,
			CurrentPeriodStart: timeOrNil(a.PeriodStart), CurrentPeriodEnd: timeOrNil(a.PeriodEnd)}
	}
	if !a.PaymentFailedAt.IsZero() {
		o.Dunning = &Dunning{PaymentFailedAt: a.PaymentFailedAt, SuspendsAt: a.PaymentFailedAt.Add(s.cfg.Grace), Suspended: a.SuspendedByBilling}
	}
	return o, nil
}

func summarize(t tenants.Tenant, messages int64, now time.Time) UsageSummary {
	allowance := t.Allowance()
	u := UsageSummary{Month: now.UTC().Format("2006-01"), Messages: messages, Allowance: allowance}
	if t.PlanDetails().BillsOverage() {
		u.OverageMessages = max(0, messages-allowance)
		u.OverageCents = u.OverageMessages * t.PlanDetails().OverageCentsPerMillion / 1_000_000
	}
	return u
}

func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// SetSpendCap sets or (with nil) removes the tenant's spend cap. A blocking
// cap takes effect in the data plane as a quota change does.
func (s *Service) SetSpendCap(ctx context.Context, tenant string, c *tenants.SpendCap) error {
	if c != nil && c.Cents < 0 {
		return &tenants.FieldError{Field: "spend_cap.cents", Message: "must not be negative"}
	}
	_, err := s.cfg.Store.UpdateBilling(ctx, tenant, "billing.spend_cap", func(u *tenants.BillingUpdate) error {
		u.Tenant.SpendCap = c
		u.Account.SpendWarnedLevel = 0 // a new cap warns afresh
		return nil
	})
	return err
}

// Run does the periodic work every interval until ctx ends: usage reports,
// spend warnings and dunning.
func (s *Service) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := s.Tick(ctx); err != nil && ctx.Err() == nil {
			s.cfg.Log.Warn("billing", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Tick does the periodic work once, for every tenant with a Stripe
// customer. One tenant's failure does not hold up the others.
func (s *Service) Tick(ctx context.Context) error {
	accounts, err := s.cfg.Store.BillingAccounts(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, a := range accounts {
		if err := s.dunning(ctx, a); err != nil {
			errs = append(errs, fmt.Errorf("dunning %s: %w", a.Tenant, err))
		}
		if err := s.warnSpend(ctx, a); err != nil {
			errs = append(errs, fmt.Errorf("spend cap %s: %w", a.Tenant, err))
		}
		if s.cfg.Meter != nil {
			if err := s.report(ctx, a); err != nil {
				errs = append(errs, fmt.Errorf("usage of %s: %w", a.Tenant, err))
			}
		}
	}
	return errors.Join(errs...)
}

// dunning suspends a tenant whose payment failed longer than the grace
// period ago. A tenant the operator suspended stays the operator's to
// resume.
func (s *Service) dunning(ctx context.Context, a tenants.BillingAccount) error {
	if a.PaymentFailedAt.IsZero() || a.SuspendedByBilling || s.cfg.Now().Before(a.PaymentFailedAt.Add(s.cfg.Grace)) {
		return nil
	}
	suspended := false
	_, err := s.cfg.Store.UpdateBilling(ctx, a.Tenant, "billing.suspend", func(u *tenants.BillingUpdate) error {
		if u.Account.PaymentFailedAt.IsZero() || u.Account.SuspendedByBilling || u.Tenant.Suspended {
			return nil // paid, or suspended, meanwhile
		}
		u.Tenant.Suspended, u.Account.SuspendedByBilling = true, true
		suspended = true
		return nil
	})
	if err == nil && suspended {
		s.cfg.Log.Info("tenant suspended for an unpaid invoice", "tenant", a.Tenant, "payment_failed_at", a.PaymentFailedAt)
		s.emit(a.Tenant, events.BillingSuspended, fmt.Sprintf("payment failed on %s and the %s grace period is over", a.PaymentFailedAt.Format(time.RFC3339), s.cfg.Grace), 0)
	}
	return err
}

// warnSpend warns a tenant once a month at 80% and at 100% of its spend cap.
func (s *Service) warnSpend(ctx context.Context, a tenants.BillingAccount) error {
	tenant := a.Tenant
	t, err := s.cfg.Store.Tenant(ctx, tenant)
	if err != nil || t.SpendCap == nil || !t.PlanDetails().BillsOverage() {
		return err
	}
	now := s.cfg.Now()
	messages, err := s.cfg.Store.MonthMessages(ctx, tenant, now)
	if err != nil {
		return err
	}
	spent := summarize(t, messages, now).OverageCents
	level := int64(0)
	switch capc := t.SpendCap.Cents; {
	case spent >= capc:
		level = 100
	case spent*10 >= capc*8:
		level = 80
	}
	month := now.UTC().Format("2006-01")
	if level == 0 || (a.SpendWarnedMonth == month && level <= a.SpendWarnedLevel) {
		return nil // nothing new to say
	}
	warn := false
	_, err = s.cfg.Store.UpdateBilling(ctx, tenant, "", func(u *tenants.BillingUpdate) error {
		if u.Account.SpendWarnedMonth != month {
			u.Account.SpendWarnedMonth, u.Account.SpendWarnedLevel = month, 0
		}
		if level > u.Account.SpendWarnedLevel {
			u.Account.SpendWarnedLevel, warn = level, true
		}
		return nil
	})
	if err == nil && warn {
		then := "usage continues and is billed"
		if t.SpendCap.Block {
			then = "messages past the cap are refused"
		}
		if level < 100 {
			then = "at 100% " + then
		}
		s.emit(tenant, events.SpendWarning, fmt.Sprintf("%d%% of the spend cap reached (%d of %d cents this month); %s", level, spent, t.SpendCap.Cents, then), t.SpendCap.Cents)
	}
	return err
}

// report sends Stripe the tenant's billable messages of every whole hour not
// yet reported, oldest first, and moves the tenant's cursor past each hour
// once Stripe took it. An hour's identifier is the tenant, the meter and
// the hour, so a retry after a lost answer is counted once.
func (s *Service) report(ctx context.Context, a tenants.BillingAccount) error {
	if a.MeteredThrough.IsZero() || a.Customer == "" {
		return nil // no paid subscription yet
	}
	s.mu.Lock()
	r := s.backoff[a.Tenant]
	s.mu.Unlock()
	now := s.cfg.Now()
	if now.Before(r.next) {
		return nil
	}
	t, err := s.cfg.Store.Tenant(ctx, a.Tenant)
	if err != nil {
		return err
	}
	closed := now.Add(-settle).UTC().Truncate(time.Hour)
	for h := a.MeteredThrough; h.Before(closed); h = h.Add(time.Hour) {
		value, err := s.billableIn(ctx, t, h)
		if err == nil && value > 0 {
			err = s.cfg.Meter.Report(ctx, MeterEvent{
				EventName:  s.cfg.MeterEvent,
				Customer:   a.Customer,
				Identifier: fmt.Sprintf("roost:%s:%s:%s", a.Tenant, s.cfg.MeterEvent, h.Format("2006-01-02T15Z")),
				Value:      value,
				Time:       h.Add(time.Hour - time.Second),
			})
		}
		if err != nil {
			r.failures++
			r.next = now.Add(min(maxBackoff, time.Second<<min(r.failures, 20)))
			s.mu.Lock()
			s.backoff[a.Tenant] = r
			s.mu.Unlock()
			return err
		}
		next := h.Add(time.Hour)
		if _, err := s.cfg.Store.UpdateBilling(ctx, a.Tenant, "", func(u *tenants.BillingUpdate) error {
			if u.Account.MeteredThrough.Before(next) {
				u.Account.MeteredThrough = next
			}
			return nil
		}); err != nil {
			return err
		}
	}
	s.mu.Lock()
	delete(s.backoff, a.Tenant)
	s.mu.Unlock()
	return nil
}

// billableIn is the tenant's messages in hour h past its monthly allowance:
// what the month had beyond the allowance after the hour, less what it had
// before it.
func (s *Service) billableIn(ctx context.Context, t tenants.Tenant, h time.Time) (int64, error) {
	if !t.PlanDetails().BillsOverage() {
		return 0, nil
	}
	month := tenants.MonthStart(h)
	before, err := s.cfg.Store.Messages(ctx, t.Slug, month, h)
	if err != nil {
		return 0, err
	}
	in, err := s.cfg.Store.Messages(ctx, t.Slug, h, h.Add(time.Hour))
	if err != nil {
		return 0, err
	}
	allowance := t.Allowance()
	return max(0, before+in-allowance) - max(0, before-allowance), nil
}
