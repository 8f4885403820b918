-- A device's standing, beside its enforcement state:
--   active   streams and counts for the rules;
--   pending  enrolled with the machine id or serial of a known device but
--            without proof of that device's key: a technician approves it
--            (a second machine, e.g. a cloned image) or links it (the same
--            machine, re-imaged); its stream is refused until then;
--   revoked  its certificate is no longer accepted (`devices revoke`, or
--            replaced by a linked device).
ALTER TABLE devices ADD COLUMN status TEXT NOT NULL DEFAULT 'active';
ALTER TABLE devices ADD COLUMN status_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE devices ADD COLUMN status_changed_at INTEGER;
-- The known device whose machine id or serial number this one shares.
ALTER TABLE devices ADD COLUMN duplicate_of TEXT;
-- When the certificate or status last changed: connected streams of a
-- device changed since are checked and closed when no longer valid.
ALTER TABLE devices ADD COLUMN identity_changed_at INTEGER NOT NULL DEFAULT 0;
CREATE INDEX devices_identity_changed ON devices(identity_changed_at);
