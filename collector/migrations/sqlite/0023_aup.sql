-- Sites' acceptable-use policies (issue 16 item 7), versioned like the
-- site policy: every save is a new version (1, 2, ...); the highest is
-- the one agents are sent and their session helpers show.
CREATE TABLE site_aups (
    site_id     INTEGER NOT NULL REFERENCES sites(id),
    version     INTEGER NOT NULL,
    aup_toml    TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    PRIMARY KEY (site_id, version)
);

-- Every answer a user gave, as its agent reported it (the event's
-- device and sequence number: a retried event is stored once). The
-- account is pupil-level data: shown only to roles that may see it.
CREATE TABLE aup_answers (
    device_id   TEXT NOT NULL REFERENCES devices(id),
    seq         INTEGER NOT NULL,
    site_id     INTEGER NOT NULL REFERENCES sites(id),
    account     TEXT NOT NULL,
    version     INTEGER NOT NULL,
    answer      TEXT NOT NULL CHECK (answer IN ('accept', 'decline')),
    -- What the agent did about a decline ('' for an accept).
    outcome     TEXT NOT NULL,
    answered_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (device_id, seq)
);

CREATE INDEX aup_answers_by_site ON aup_answers (site_id, answered_at DESC);
