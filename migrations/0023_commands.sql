-- Commands queued for a device (issue 22): each kept until an hour after
-- it expires, with the reply the device sent, if any (base64 in reply);
-- gone with the device. A command is pending while it has no reply and
-- has not expired; max_pending_commands bounds a tenant's pending ones.

CREATE TABLE commands (
    id                 TEXT PRIMARY KEY,
    tenant             TEXT NOT NULL,
    device             TEXT NOT NULL,
    name               TEXT NOT NULL,
    topic              TEXT NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL,
    expires_at         TIMESTAMPTZ NOT NULL,
    replied_at         TIMESTAMPTZ,
    reply              TEXT NOT NULL DEFAULT '',
    reply_content_type TEXT NOT NULL DEFAULT '',
    FOREIGN KEY (tenant, device) REFERENCES devices (tenant, name) ON DELETE CASCADE
);
CREATE INDEX commands_tenant ON commands (tenant, expires_at);
