-- What a publish the tenant's rules deny does to its device's connection:
-- 'ignore' acknowledges it and drops it, 'disconnect' closes a 3.1.1
-- connection (MQTT 5 is answered 0x87 either way).

ALTER TABLE tenants ADD COLUMN deny_action TEXT NOT NULL DEFAULT 'ignore';
