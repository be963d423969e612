-- The data-plane nodes a control plane running apart reaches for what only
-- they know: live connections, queues, disconnects, publishes, watches.
-- Each node writes its row every few seconds and deletes it as it drains.

CREATE TABLE data_plane_nodes (
    id      TEXT PRIMARY KEY,
    url     TEXT NOT NULL,
    seen_at TIMESTAMPTZ NOT NULL
);
