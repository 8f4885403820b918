-- Events too large to ever fit a message to the collector, moved out of
-- the outbox so they do not block everything behind them; kept for a
-- technician, counted in state key `quarantined`.
CREATE TABLE quarantine (
    seq            INTEGER PRIMARY KEY,
    event_id       TEXT NOT NULL,
    kind           TEXT NOT NULL,
    occurred_at    INTEGER NOT NULL,
    payload        BLOB NOT NULL,
    quarantined_at INTEGER NOT NULL
);
