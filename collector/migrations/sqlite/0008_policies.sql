-- Suspicious-activity policies per site, versioned: every save is a new
-- version (1, 2, ...); the highest is the one agents are sent. Empty text
-- means the project's default policy.
CREATE TABLE site_policies (
    site_id     INTEGER NOT NULL REFERENCES sites(id),
    version     INTEGER NOT NULL,
    policy_toml TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    comment     TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    PRIMARY KEY (site_id, version)
);

-- The site policy version each agent last said it holds (0 = none).
ALTER TABLE devices ADD COLUMN policy_version INTEGER NOT NULL DEFAULT 0;

-- Evidence rows are screen snapshots or file alerts (new software on the
-- device), and record the policy version that matched.
ALTER TABLE captures ADD COLUMN kind TEXT NOT NULL DEFAULT 'snapshot';
ALTER TABLE captures ADD COLUMN file_path TEXT NOT NULL DEFAULT '';
ALTER TABLE captures ADD COLUMN file_sha256 TEXT NOT NULL DEFAULT '';
ALTER TABLE captures ADD COLUMN policy_version INTEGER NOT NULL DEFAULT 0;
