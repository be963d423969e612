-- Public keys a device signs its JSON Web Tokens with (its MQTT password).

CREATE TABLE device_keys (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    device      TEXT NOT NULL,
    algorithm   TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    FOREIGN KEY (tenant, device) REFERENCES devices (tenant, name) ON DELETE CASCADE,
    UNIQUE (tenant, device, fingerprint)
);
CREATE INDEX device_keys_device ON device_keys (tenant, device, id);
