-- A tenant CA belongs to the one tenant that registered it: registering a CA
-- and listing a tenant's CAs look for other tenants holding the same
-- fingerprint, which this index answers without reading every tenant's CAs.

CREATE INDEX tenant_cas_fingerprint ON tenant_cas (fingerprint);
