-- Alerts that match how DSLs work (issue 16 item 5) and exclusions taught
-- by false positives (item 3).

-- A site's capture alerts set in the console, over collector.toml's
-- (alerts.rs): the categories that alert at once whatever the severity,
-- and the threshold alerts, one "category count days" line each. One row
-- per site that has them; deleting it returns the site to collector.toml.
CREATE TABLE site_alert_settings (
    site_id            INTEGER PRIMARY KEY REFERENCES sites(id),
    instant_categories TEXT NOT NULL,   -- one category per line
    thresholds         TEXT NOT NULL,   -- "category count days" per line
    updated_at         INTEGER NOT NULL,
    updated_by         TEXT NOT NULL
);

-- Each threshold crossing that was alerted, written with its notification
-- event in the batch's transaction. A crossing is alerted once: no other
-- for the same subject and category while the last one is within the
-- threshold's period (`alerts::should_alert`).
CREATE TABLE capture_threshold_alerts (
    id           INTEGER PRIMARY KEY,
    site_id      INTEGER NOT NULL REFERENCES sites(id),
    subject_kind TEXT NOT NULL,          -- device | account
    subject      TEXT NOT NULL,          -- device id or account name
    category     TEXT NOT NULL,
    count        INTEGER NOT NULL,
    days         INTEGER NOT NULL,
    crossed_at   INTEGER NOT NULL,       -- the crossing capture's time
    event_id     INTEGER NOT NULL REFERENCES notification_events(id)
);
CREATE INDEX capture_threshold_alerts_key
    ON capture_threshold_alerts(site_id, subject_kind, subject, category, crossed_at);

-- Counting a device's or an account's captures of a category in a period.
CREATE INDEX captures_device_category ON captures(device_id, category, occurred_at);
CREATE INDEX captures_account_category ON captures(account, category, occurred_at);

-- A site's own notification routes (one role per row), edited by
-- administrators; a site without any uses collector.toml's.
CREATE TABLE site_routes (
    id         INTEGER PRIMARY KEY,
    site_id    INTEGER NOT NULL REFERENCES sites(id),
    kind       TEXT NOT NULL,
    role       TEXT NOT NULL,
    timing     TEXT NOT NULL,            -- immediate | digest
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    UNIQUE (site_id, kind, role, timing)
);

-- An exclusion a DSL added from a capture ("not a concern"): the policy
-- versions before and after, so it can be undone.
CREATE TABLE policy_exclusions (
    id             INTEGER PRIMARY KEY,
    capture_id     INTEGER NOT NULL,     -- kept when the capture is purged
    site_id        INTEGER NOT NULL REFERENCES sites(id),
    rule_id        TEXT NOT NULL,
    what           TEXT NOT NULL,        -- phrase | title | website
    version_before INTEGER NOT NULL,     -- 0: the project's default
    version_after  INTEGER NOT NULL,
    undone_version INTEGER,              -- the version that restored it
    at             INTEGER NOT NULL,
    actor          TEXT NOT NULL
);
CREATE INDEX policy_exclusions_capture ON policy_exclusions(capture_id);
