-- Shadows: each device's desired and reported state (DESIGN: issue 22),
-- one row per device, gone with the device. doc holds the state and its
-- per-field timestamps as JSON; version counts the writes, for optimistic
-- concurrency.

CREATE TABLE shadows (
    tenant     TEXT NOT NULL,
    device     TEXT NOT NULL,
    version    BIGINT NOT NULL,
    doc        TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant, device),
    FOREIGN KEY (tenant, device) REFERENCES devices (tenant, name) ON DELETE CASCADE
);
