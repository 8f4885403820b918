-- Suspicious-activity captures and the incidents they open. Images are not
-- here: they are encrypted files under DATA/evidence, named by the SHA-256
-- of the image.

CREATE TABLE incidents (
    id            INTEGER PRIMARY KEY,
    site_id       INTEGER NOT NULL REFERENCES sites(id),
    device_id     TEXT NOT NULL REFERENCES devices(id),
    account       TEXT NOT NULL,
    category      TEXT NOT NULL,
    severity      INTEGER NOT NULL,
    status        TEXT NOT NULL DEFAULT 'open',   -- open | closed
    opened_at     INTEGER NOT NULL,
    last_at       INTEGER NOT NULL,
    capture_count INTEGER NOT NULL DEFAULT 0,
    closed_at     INTEGER,
    close_reason  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX incidents_key ON incidents(device_id, account, category, status);

CREATE TABLE captures (
    id             INTEGER PRIMARY KEY,
    incident_id    INTEGER NOT NULL REFERENCES incidents(id),
    device_id      TEXT NOT NULL REFERENCES devices(id),
    seq            INTEGER NOT NULL,
    occurred_at    INTEGER NOT NULL,
    rule_id        TEXT NOT NULL,
    category       TEXT NOT NULL,
    severity       INTEGER NOT NULL,
    matched_text   TEXT NOT NULL,
    window_title   TEXT NOT NULL,
    process_name   TEXT NOT NULL,
    account        TEXT NOT NULL,
    image_sha256   TEXT NOT NULL DEFAULT '',
    -- verified | no_image | hash_mismatch
    image_status   TEXT NOT NULL,
    no_image_reason TEXT NOT NULL DEFAULT '',
    repeat_count   INTEGER NOT NULL DEFAULT 0,
    UNIQUE (device_id, seq)
);
CREATE INDEX captures_incident ON captures(incident_id, occurred_at);
