-- Stretches of time an agent could not watch a session and said so (a
-- tamper signal): today a graphical session with no session helper
-- connected. Kept from the agents' `monitoring_gap` events, START opening
-- a row and END closing it (an END alone, its START evicted on the device,
-- makes a closed row). `devices list` and `devices show` read it.
CREATE TABLE monitoring_gaps (
    device_id  TEXT NOT NULL REFERENCES devices(id),
    session_id TEXT NOT NULL,
    kind       TEXT NOT NULL,
    account    TEXT NOT NULL,
    uid        INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at   INTEGER,               -- NULL while open
    PRIMARY KEY (device_id, session_id, kind, started_at)
) WITHOUT ROWID;
CREATE INDEX monitoring_gaps_open ON monitoring_gaps(device_id) WHERE ended_at IS NULL;
