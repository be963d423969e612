-- Each running tenant lives on one data-plane node, its home: the node
-- that holds its row here runs its broker, and every other node forwards
-- the tenant's device connections to it. A node claims a tenant when its
-- broker starts there and releases it when the broker stops; the claim of
-- a node no longer announcing itself can be taken over. A draining node
-- keeps its claims, and its row, until its brokers have stopped and their
-- sessions are stored, so that no other node starts them early.

ALTER TABLE data_plane_nodes ADD COLUMN forward_addr TEXT NOT NULL DEFAULT '';
ALTER TABLE data_plane_nodes ADD COLUMN draining BOOLEAN NOT NULL DEFAULT FALSE;

CREATE TABLE tenant_placements (
    tenant TEXT PRIMARY KEY,
    node   TEXT NOT NULL,
    since  TIMESTAMPTZ NOT NULL
);
CREATE INDEX tenant_placements_node ON tenant_placements (node);
