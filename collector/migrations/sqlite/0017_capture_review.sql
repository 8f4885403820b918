-- The DSL's review of each capture (collector/src/review.rs): a status
-- (new, triaged, false_positive, no_concern, concern, escalated), the
-- DSL's grade beside the rule's severity (kept as the pregrade), the
-- outcome and the school's own record reference, and when the capture was
-- first reviewed (its first move out of 'new') with how long that took.
ALTER TABLE captures ADD COLUMN review_status TEXT NOT NULL DEFAULT 'new';
ALTER TABLE captures ADD COLUMN grade INTEGER;
ALTER TABLE captures ADD COLUMN outcome TEXT NOT NULL DEFAULT '';
ALTER TABLE captures ADD COLUMN outcome_reference TEXT NOT NULL DEFAULT '';
ALTER TABLE captures ADD COLUMN first_reviewed_at INTEGER;
-- first_reviewed_at - occurred_at, in milliseconds: the figure a report's
-- median and 90th percentile read.
ALTER TABLE captures ADD COLUMN first_review_ms INTEGER;
CREATE INDEX captures_review ON captures(incident_id, review_status, occurred_at);

-- Who did what when: every status change, regrade and note. Goes with its
-- capture when retention purges it (it may name a pupil); the audit log
-- keeps that it happened.
CREATE TABLE capture_reviews (
    id           INTEGER PRIMARY KEY,
    capture_id   INTEGER NOT NULL REFERENCES captures(id) ON DELETE CASCADE,
    incident_id  INTEGER NOT NULL REFERENCES incidents(id),
    at           INTEGER NOT NULL,
    actor        TEXT NOT NULL,
    kind         TEXT NOT NULL,            -- status | grade | note
    from_value   TEXT NOT NULL DEFAULT '',
    to_value     TEXT NOT NULL DEFAULT '',
    text         TEXT NOT NULL DEFAULT '', -- outcome or note
    reference    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX capture_reviews_incident ON capture_reviews(incident_id, id);
CREATE INDEX capture_reviews_capture ON capture_reviews(capture_id);
