-- Billing with Stripe: each tenant's Stripe customer and subscription as the
-- webhooks last reported them, its dunning state, how far its usage has been
-- reported to Stripe, and an optional spend cap; the Stripe events applied,
-- so that each is applied once. The spend cap is the tenant's, beside its
-- plan: the data plane reads it with the quotas.

ALTER TABLE tenants ADD COLUMN spend_cap_cents BIGINT;
ALTER TABLE tenants ADD COLUMN spend_cap_block BOOLEAN NOT NULL DEFAULT FALSE;

CREATE TABLE billing_accounts (
    tenant              TEXT PRIMARY KEY REFERENCES tenants (slug) ON DELETE CASCADE,
    customer            TEXT NOT NULL DEFAULT '',
    subscription        TEXT NOT NULL DEFAULT '',
    status              TEXT NOT NULL DEFAULT '',
    plan                TEXT NOT NULL DEFAULT '',
    period_start        TIMESTAMPTZ,
    period_end          TIMESTAMPTZ,
    -- The Stripe creation time of the newest subscription state and of the
    -- newest invoice event applied: older events arriving late change nothing.
    subscription_at     TIMESTAMPTZ,
    invoice_at          TIMESTAMPTZ,
    payment_failed_at   TIMESTAMPTZ,
    suspended_by_billing BOOLEAN NOT NULL DEFAULT FALSE,
    -- Usage is reported to Stripe for every whole hour before metered_through.
    metered_through     TIMESTAMPTZ,
    -- The month and highest level (80, 100) of the last spend warning sent.
    spend_warned_month  TEXT NOT NULL DEFAULT '',
    spend_warned_level  BIGINT NOT NULL DEFAULT 0,
    updated_at          TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX billing_accounts_customer ON billing_accounts (customer) WHERE customer <> '';

CREATE TABLE billing_invoices (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL REFERENCES tenants (slug) ON DELETE CASCADE,
    status      TEXT NOT NULL,
    amount_due  BIGINT NOT NULL,
    amount_paid BIGINT NOT NULL,
    currency    TEXT NOT NULL,
    url         TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX billing_invoices_tenant ON billing_invoices (tenant, created_at);

CREATE TABLE stripe_events (
    id          TEXT PRIMARY KEY,
    type        TEXT NOT NULL,
    tenant      TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL
);
