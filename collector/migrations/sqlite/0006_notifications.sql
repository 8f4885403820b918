-- Notifications: who is told what, and a durable outbox of messages.

-- Per-site recipients with a role. Webhook secrets sign each POST.
CREATE TABLE recipients (
    id             INTEGER PRIMARY KEY,
    site_id        INTEGER NOT NULL REFERENCES sites(id),
    role           TEXT NOT NULL,
    channel        TEXT NOT NULL,          -- email | webhook
    address        TEXT NOT NULL,          -- email address or URL
    webhook_format TEXT NOT NULL DEFAULT 'json',
    webhook_secret TEXT NOT NULL DEFAULT '',
    created_at     INTEGER NOT NULL,
    UNIQUE (site_id, role, channel, address)
);

-- Something that may need telling, written in the same transaction as the
-- flag (or reminder) that caused it; expanded into messages by the worker.
CREATE TABLE notification_events (
    id          INTEGER PRIMARY KEY,
    site_id     INTEGER NOT NULL REFERENCES sites(id),
    kind        TEXT NOT NULL,
    flag_id     INTEGER,
    device_id   TEXT,
    account     TEXT NOT NULL DEFAULT '',
    severity    INTEGER NOT NULL DEFAULT 0,
    summary     TEXT NOT NULL DEFAULT '',
    at          INTEGER NOT NULL,
    expanded_at INTEGER
);
CREATE INDEX notification_events_new ON notification_events(id) WHERE expanded_at IS NULL;

-- One message to one address. Claimed with a lease so that several
-- collector instances sharing the database send each message once.
CREATE TABLE notifications (
    id              INTEGER PRIMARY KEY,
    event_id        INTEGER REFERENCES notification_events(id),
    site_id         INTEGER NOT NULL REFERENCES sites(id),
    channel         TEXT NOT NULL,
    address         TEXT NOT NULL,
    webhook_format  TEXT NOT NULL DEFAULT 'json',
    webhook_secret  TEXT NOT NULL DEFAULT '',
    timing          TEXT NOT NULL,         -- immediate | digest
    subject         TEXT NOT NULL,
    body            TEXT NOT NULL,
    payload         TEXT NOT NULL DEFAULT '{}',
    status          TEXT NOT NULL DEFAULT 'pending',  -- pending | sent | dead | digested
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT NOT NULL DEFAULT '',
    lease_owner     TEXT,
    lease_until     INTEGER,
    digest_id       INTEGER REFERENCES notifications(id),
    created_at      INTEGER NOT NULL,
    sent_at         INTEGER,
    UNIQUE (event_id, channel, address, timing)
);
CREATE INDEX notifications_due ON notifications(status, next_attempt_at);

-- When each site's daily digest last went out (local date).
CREATE TABLE digests (
    site_id   INTEGER PRIMARY KEY REFERENCES sites(id),
    last_date TEXT NOT NULL
);
