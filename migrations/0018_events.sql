-- Events: each tenant's lifecycle, quota, billing and data-plane events,
-- kept for the tenant's event_retention quota. The id orders them (and is
-- the cursor of pages and of streams' Last-Event-ID); body is the event as
-- JSON; type, device and at are kept apart for filtering and pruning.
-- No foreign key: an event may outlive a tenant deleted meanwhile, and
-- the pruner removes the events of deleted tenants.

CREATE TABLE events (
    id     BIGSERIAL PRIMARY KEY,
    tenant TEXT NOT NULL,
    type   TEXT NOT NULL,
    device TEXT NOT NULL DEFAULT '',
    at     TIMESTAMPTZ NOT NULL,
    body   TEXT NOT NULL
);
CREATE INDEX events_tenant ON events (tenant, id);
CREATE INDEX events_tenant_type ON events (tenant, type, id);
CREATE INDEX events_tenant_device ON events (tenant, device, id);
CREATE INDEX events_tenant_at ON events (tenant, at);
