-- What was on screen before a capture: the session's distinct
-- active-window titles in the site's context window (policy key
-- `context_minutes`), as the device sent them (bounded at ingest: at most
-- 200 per capture). Deleted with their capture (retention purge).

CREATE TABLE capture_context (
    capture_id   INTEGER NOT NULL REFERENCES captures(id) ON DELETE CASCADE,
    position     INTEGER NOT NULL,  -- 0 = oldest
    title        TEXT NOT NULL,
    process_name TEXT NOT NULL,
    first_seen   INTEGER NOT NULL,
    last_seen    INTEGER NOT NULL,
    PRIMARY KEY (capture_id, position)
) WITHOUT ROWID;
