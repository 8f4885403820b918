-- Hall Monitor agent outbox. Every event is written here before it is sent
-- and deleted only after the collector acknowledged committing it.
-- AUTOINCREMENT: sequence numbers are never reused, even after deletion.
CREATE TABLE outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL,
    kind        TEXT NOT NULL,
    -- eviction class when the outbox is full: lower goes first
    priority    INTEGER NOT NULL,
    occurred_at INTEGER NOT NULL,   -- ms since the Unix epoch, UTC
    -- protobuf-encoded hallmonitor.v1.Event body: the wire schema is the
    -- stable format, so events queued by one agent version are readable
    -- by the next
    payload     BLOB NOT NULL
);

-- Daemon state that `hallmonitor-agent status` reads.
CREATE TABLE state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
