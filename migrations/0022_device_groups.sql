-- Device groups (issue 22): the groups a device is in, as a JSON array of
-- group names, listed and filtered with the dialect's JSON functions as
-- metadata is. ACL rules may name a group instead of a device ('' for a
-- rule that names none). A CA may provision the unknown devices its
-- certificates name, from a template (JSON, '' for a CA that does not).

ALTER TABLE devices ADD COLUMN group_names TEXT NOT NULL DEFAULT '[]';
ALTER TABLE acl_rules ADD COLUMN device_group TEXT NOT NULL DEFAULT '';
ALTER TABLE tenant_cas ADD COLUMN provisioning TEXT NOT NULL DEFAULT '';
