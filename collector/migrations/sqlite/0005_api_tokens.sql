-- Tokens for the HTTPS JSON API, one site each. Only a SHA-256 of the
-- token is kept; it is printed once when created.
CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY,
    site_id      INTEGER NOT NULL REFERENCES sites(id),
    token_sha256 TEXT NOT NULL UNIQUE,
    label        TEXT NOT NULL DEFAULT '',
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER,
    last_used_at INTEGER
);
