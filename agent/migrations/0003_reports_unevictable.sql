-- Outbox reports are never evicted (Priority::Report = 5, above severe
-- captures): an evicted report made the collector's eviction totals short.
UPDATE outbox SET priority = 5 WHERE kind = 'outbox_report';
