-- The console's device list filters on the operating system, on
-- connectivity and on compliance, ordered by (hostname, id) in keyset
-- pages. Those values lived in the facts' JSON, in a computation over two
-- columns and in another table, so a filter that matched few devices read
-- the whole table to fill a page. They are now columns of `devices`, in
-- the indexes the pages are read from, so a filter is checked on index
-- entries and only the matching rows are read.
--
-- The database keeps them in step with what they are computed from, so no
-- writer (ingest, enrolment, the rule pass, the bench fixture) can forget
-- one:
--   os_name       facts_json's os_name (generated; NULL when absent).
--   online_until  the last instant the device counts as online: last seen
--                 plus three heartbeat intervals (as
--                 `DeviceRecord::connectivity`), in milliseconds;
--                 NULL when never seen (generated).
--   compliance    the status of the device's `device_activity` verdict,
--                 NULL when it has none (copied by the triggers below).
-- Generated columns added to an existing table are VIRTUAL: computed when
-- read, and stored only in the indexes, which building them fills for
-- every existing row.
ALTER TABLE devices ADD COLUMN os_name TEXT
    GENERATED ALWAYS AS (json_extract(facts_json, '$.os_name')) VIRTUAL;
ALTER TABLE devices ADD COLUMN online_until INTEGER
    GENERATED ALWAYS AS (last_seen_at + 3000 * max(heartbeat_interval_secs, 1)) VIRTUAL;
ALTER TABLE devices ADD COLUMN compliance TEXT;

UPDATE devices SET compliance = (SELECT a.status FROM device_activity a WHERE a.device_id = devices.id);

CREATE TRIGGER device_activity_compliance_insert AFTER INSERT ON device_activity
BEGIN
    UPDATE devices SET compliance = NEW.status WHERE id = NEW.device_id;
END;
-- Most verdicts repeat the last one: those write nothing to `devices`.
CREATE TRIGGER device_activity_compliance_update AFTER UPDATE OF status ON device_activity
    WHEN OLD.status IS NOT NEW.status
BEGIN
    UPDATE devices SET compliance = NEW.status WHERE id = NEW.device_id;
END;
CREATE TRIGGER device_activity_compliance_delete AFTER DELETE ON device_activity
BEGIN
    UPDATE devices SET compliance = NULL WHERE id = OLD.device_id;
END;

-- The keyset indexes of 0011, widened with the filtered columns.
DROP INDEX devices_hostname;
DROP INDEX devices_site_hostname;
CREATE INDEX devices_list ON devices(hostname, id, site_id, os_name, online_until, compliance);
CREATE INDEX devices_site_list ON devices(site_id, hostname, id, os_name, online_until, compliance);
