-- X.509 device authentication: a tenant's certificate authorities, and the
-- certificates (or their fingerprints) pinned to a device.

CREATE TABLE tenant_cas (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL REFERENCES tenants (slug) ON DELETE CASCADE,
    subject     TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    certificate TEXT NOT NULL,
    not_after   TIMESTAMPTZ NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    UNIQUE (tenant, fingerprint)
);
CREATE INDEX tenant_cas_tenant ON tenant_cas (tenant, id);

CREATE TABLE device_certificates (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    device      TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    subject     TEXT NOT NULL,
    not_after   TIMESTAMPTZ,
    created_at  TIMESTAMPTZ NOT NULL,
    FOREIGN KEY (tenant, device) REFERENCES devices (tenant, name) ON DELETE CASCADE,
    UNIQUE (tenant, device, fingerprint)
);
CREATE INDEX device_certificates_device ON device_certificates (tenant, device, id);
