-- What a full persistent-session queue does with a new message.

ALTER TABLE tenants ADD COLUMN queue_policy TEXT NOT NULL DEFAULT 'drop_oldest';
