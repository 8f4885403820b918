-- 2FA-freshness rule: the site directory, evidence of two-step sign-ins,
-- the verdict per (device, account) pair, and reminders to send.

-- Who is staff and who is a pupil, per site (replaced as a whole by each
-- import).
CREATE TABLE directory_accounts (
    site_id      INTEGER NOT NULL REFERENCES sites(id),
    username     TEXT NOT NULL,
    role         TEXT NOT NULL,
    email        TEXT NOT NULL DEFAULT '',
    display_name TEXT NOT NULL DEFAULT '',
    imported_at  INTEGER NOT NULL,
    PRIMARY KEY (site_id, username)
) WITHOUT ROWID;
CREATE INDEX directory_email ON directory_accounts(site_id, email) WHERE email <> '';

-- A completed two-step sign-in. (source, external_id) makes imports and
-- agent events idempotent. device_id is NULL when no device matched.
CREATE TABLE mfa_completions (
    id           INTEGER PRIMARY KEY,
    site_id      INTEGER NOT NULL REFERENCES sites(id),
    device_id    TEXT REFERENCES devices(id),
    account      TEXT NOT NULL,
    completed_at INTEGER NOT NULL,
    source       TEXT NOT NULL,
    method       TEXT NOT NULL DEFAULT '',
    external_id  TEXT NOT NULL,
    device_hint  TEXT NOT NULL DEFAULT '',
    recorded_at  INTEGER NOT NULL,
    UNIQUE (source, external_id)
);
CREATE INDEX mfa_completions_device ON mfa_completions(device_id, account, completed_at);

-- The latest verdict per (device, staff account) pair.
CREATE TABLE mfa_pairs (
    device_id       TEXT NOT NULL REFERENCES devices(id),
    account         TEXT NOT NULL,
    site_id         INTEGER NOT NULL REFERENCES sites(id),
    status          TEXT NOT NULL,
    last_mfa        INTEGER,
    expires_at      INTEGER,
    last_session_at INTEGER NOT NULL,
    as_of           INTEGER NOT NULL,
    PRIMARY KEY (device_id, account)
) WITHOUT ROWID;

-- "Your two-step sign-in on this device expires soon": one per expiry.
CREATE TABLE mfa_reminders (
    id         INTEGER PRIMARY KEY,
    site_id    INTEGER NOT NULL REFERENCES sites(id),
    device_id  TEXT NOT NULL REFERENCES devices(id),
    account    TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    queued_at  INTEGER NOT NULL,
    sent_at    INTEGER,
    UNIQUE (device_id, account, expires_at)
);
