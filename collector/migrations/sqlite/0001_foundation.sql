-- Hall Monitor collector, SQLite schema: sites, enrolment, devices, events.
-- Instants are INTEGER milliseconds since the Unix epoch (UTC).

CREATE TABLE sites (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    timezone    TEXT NOT NULL DEFAULT 'Europe/London',
    created_at  INTEGER NOT NULL
);

-- Only a SHA-256 of each secret is kept; `hint` is its first characters.
CREATE TABLE enrollment_secrets (
    id            INTEGER PRIMARY KEY,
    site_id       INTEGER NOT NULL REFERENCES sites(id),
    secret_sha256 TEXT NOT NULL UNIQUE,
    hint          TEXT NOT NULL,
    label         TEXT NOT NULL DEFAULT '',
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER,
    revoked_at    INTEGER,
    uses          INTEGER NOT NULL DEFAULT 0,
    last_used_at  INTEGER
);

CREATE TABLE devices (
    id                      TEXT PRIMARY KEY,
    site_id                 INTEGER NOT NULL REFERENCES sites(id),
    machine_id              TEXT NOT NULL,
    serial_number           TEXT NOT NULL,
    hostname                TEXT NOT NULL,
    enrolled_at             INTEGER NOT NULL,
    reenrolled_at           INTEGER,
    -- SHA-256 of the DER client certificate currently valid for the device.
    cert_sha256             TEXT NOT NULL UNIQUE,
    facts_json              TEXT NOT NULL,
    facts_updated_at        INTEGER NOT NULL,
    last_seen_at            INTEGER,
    heartbeat_interval_secs INTEGER NOT NULL DEFAULT 60,
    last_seq                INTEGER NOT NULL DEFAULT 0,
    events_stored           INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX devices_site ON devices(site_id);
CREATE INDEX devices_machine_id ON devices(machine_id) WHERE machine_id <> '';
CREATE INDEX devices_serial ON devices(serial_number) WHERE serial_number <> '';

-- Every event an agent sent, once: (device_id, seq) is the idempotency key.
CREATE TABLE events (
    device_id   TEXT NOT NULL REFERENCES devices(id),
    seq         INTEGER NOT NULL,
    event_id    TEXT NOT NULL,
    kind        TEXT NOT NULL,
    occurred_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    body        TEXT NOT NULL,
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;

CREATE TABLE console_users (
    id            INTEGER PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL,
    -- NULL: every site; otherwise the one site this account may see.
    site_id       INTEGER REFERENCES sites(id),
    created_at    INTEGER NOT NULL
);

-- Who did what, when and why. Append-only.
CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY,
    at      INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    detail  TEXT NOT NULL DEFAULT ''
);
