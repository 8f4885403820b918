-- Device-activity rule: sessions, verdicts, flags with an audited
-- lifecycle, and commands to agents.

-- One row per login session, updated by its start, update and end events.
CREATE TABLE sessions (
    device_id   TEXT NOT NULL REFERENCES devices(id),
    session_id  TEXT NOT NULL,
    account     TEXT NOT NULL,
    uid         INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER,               -- NULL while open
    active_secs INTEGER NOT NULL DEFAULT 0,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (device_id, session_id)
) WITHOUT ROWID;
-- Sessions that may reach into a window: open ones, or ended after a time.
CREATE INDEX sessions_device_end ON sessions(device_id, coalesce(ended_at, 9223372036854775807));

-- Enforcement state of a device and when a new grace period started.
ALTER TABLE devices ADD COLUMN enforcement TEXT NOT NULL DEFAULT 'enabled';
ALTER TABLE devices ADD COLUMN reenabled_at INTEGER;

-- The latest verdict of the device-activity rule per device.
CREATE TABLE device_activity (
    device_id    TEXT PRIMARY KEY REFERENCES devices(id),
    status       TEXT NOT NULL,
    used_secs    INTEGER NOT NULL,
    window_start INTEGER NOT NULL,
    breach_at    INTEGER,
    grace_until  INTEGER,
    as_of        INTEGER NOT NULL,
    -- The earliest instant at which time passing alone can change the
    -- verdict; the periodic pass re-evaluates only devices due by then.
    next_check_at INTEGER NOT NULL
);
CREATE INDEX device_activity_due ON device_activity(next_check_at);

-- Flags: at most one active flag per (device, kind, account).
-- states: open → disable_approved → disabled → reenabled; or dismissed.
CREATE TABLE flags (
    id         INTEGER PRIMARY KEY,
    site_id    INTEGER NOT NULL REFERENCES sites(id),
    device_id  TEXT NOT NULL REFERENCES devices(id),
    kind       TEXT NOT NULL,
    account    TEXT NOT NULL DEFAULT '',
    state      TEXT NOT NULL,
    opened_at  INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    summary    TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX flags_one_active ON flags(device_id, kind, account)
    WHERE state IN ('open', 'disable_approved', 'disabled');
CREATE INDEX flags_site_state ON flags(site_id, state);

-- Every flag transition: who, when, why. Append-only.
CREATE TABLE flag_transitions (
    id         INTEGER PRIMARY KEY,
    flag_id    INTEGER NOT NULL REFERENCES flags(id),
    at         INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    from_state TEXT,
    to_state   TEXT NOT NULL,
    reason     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX flag_transitions_flag ON flag_transitions(flag_id, id);

-- Commands for agents; sent on the device's stream until it reports a result.
CREATE TABLE commands (
    id           TEXT PRIMARY KEY,
    device_id    TEXT NOT NULL REFERENCES devices(id),
    kind         TEXT NOT NULL,
    reason       TEXT NOT NULL DEFAULT '',
    flag_id      INTEGER REFERENCES flags(id),
    issued_at    INTEGER NOT NULL,
    sent_at      INTEGER,
    completed_at INTEGER,
    ok           INTEGER,
    detail       TEXT NOT NULL DEFAULT ''
);
CREATE INDEX commands_pending ON commands(device_id) WHERE completed_at IS NULL;
