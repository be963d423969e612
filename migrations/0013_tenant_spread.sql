-- A tenant may be served by several data-plane nodes at once: its home
-- widens it when its connections pass the fleet's threshold and its plan's
-- max_nodes is above one. width is how many nodes serve it: its home and
-- the width-1 other nodes ranking first for it by rendezvous hashing. Every
-- node serving it touches seen_at; a row nobody touched for a minute is
-- stale, and the tenant starts on one node again.
CREATE TABLE tenant_spread (
    tenant  TEXT PRIMARY KEY,
    width   INTEGER NOT NULL,
    seen_at TIMESTAMPTZ NOT NULL
);
