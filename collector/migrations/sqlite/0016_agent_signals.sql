-- What agents say about themselves (started, stopped, stopped uncleanly,
-- configuration changed, upgraded, clock jumped, session helper gone),
-- kept from their `agent_signal` events for the device page and
-- `devices show`; some kinds open a `tamper` flag (see `tamper.rs`).
CREATE TABLE agent_signals (
    device_id   TEXT NOT NULL REFERENCES devices(id),
    seq         INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    occurred_at INTEGER NOT NULL,
    detail      TEXT NOT NULL,        -- the signal's fields, JSON
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;
-- The newest signals of a device.
CREATE INDEX agent_signals_newest ON agent_signals(device_id, occurred_at);

-- The "agent silent since" rule: active devices by when they were last
-- heard from; whether a device got a tamper flag since (sign-ins mapped
-- to a device are found through `mfa_completions_device`).
CREATE INDEX devices_silent ON devices(last_seen_at) WHERE status = 'active';
CREATE INDEX flags_device_kind ON flags(device_id, kind, opened_at);
