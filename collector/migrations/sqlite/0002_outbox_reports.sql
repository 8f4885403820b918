-- Agents report what their outbox had to evict or repair; the device view
-- sums these reports, so they get an index of their own.
CREATE INDEX events_outbox_reports ON events(device_id, seq) WHERE kind = 'outbox_report';
