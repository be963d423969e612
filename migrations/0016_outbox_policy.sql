-- What a destination's full outbox (max_outbox) does with a new message
-- matching a rule: 'drop_oldest' drops the oldest waiting, 'refuse'
-- refuses the QoS 1 or 2 publish with quota exceeded.

ALTER TABLE tenants ADD COLUMN outbox_policy TEXT NOT NULL DEFAULT 'drop_oldest';
