-- A rule's projection: a CEL expression whose value, as JSON, is what the
-- rule sends instead of the message's payload; '' sends the payload.
ALTER TABLE export_rules ADD COLUMN projection TEXT NOT NULL DEFAULT '';
