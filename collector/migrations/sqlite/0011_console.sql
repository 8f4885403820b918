-- The web console: accounts scoped to sites, server-side sessions, login
-- throttling, and where each audited action came from.

ALTER TABLE console_users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
-- Base32 TOTP secret; '' when the account has no second factor.
ALTER TABLE console_users ADD COLUMN totp_secret TEXT NOT NULL DEFAULT '';
-- The last TOTP time step accepted, so a code is never accepted twice.
ALTER TABLE console_users ADD COLUMN totp_last_step INTEGER NOT NULL DEFAULT 0;
-- Every site (1), or only those in console_user_sites (0).
ALTER TABLE console_users ADD COLUMN all_sites INTEGER NOT NULL DEFAULT 1;
ALTER TABLE console_users ADD COLUMN password_changed_at INTEGER;
UPDATE console_users SET all_sites = 0 WHERE site_id IS NOT NULL;

CREATE TABLE console_user_sites (
    user_id INTEGER NOT NULL REFERENCES console_users(id),
    site_id INTEGER NOT NULL REFERENCES sites(id),
    PRIMARY KEY (user_id, site_id)
);
INSERT INTO console_user_sites (user_id, site_id)
    SELECT id, site_id FROM console_users WHERE site_id IS NOT NULL;

-- A signed-in browser. The cookie holds a random token; only its SHA-256
-- is kept. `verified` is 0 between the password and the TOTP code.
CREATE TABLE console_sessions (
    token_sha256 TEXT PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES console_users(id),
    csrf_token   TEXT NOT NULL,
    verified     INTEGER NOT NULL,
    address      TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL
);
CREATE INDEX console_sessions_user ON console_sessions(user_id);

-- Failed sign-ins, for throttling by account and by address.
CREATE TABLE login_failures (
    id       INTEGER PRIMARY KEY,
    username TEXT NOT NULL,
    address  TEXT NOT NULL,
    at       INTEGER NOT NULL
);
CREATE INDEX login_failures_user ON login_failures(username, at);
CREATE INDEX login_failures_address ON login_failures(address, at);

ALTER TABLE audit_log ADD COLUMN address TEXT NOT NULL DEFAULT '';
CREATE INDEX audit_log_at ON audit_log(at);

-- Device search and keyset pagination.
CREATE INDEX devices_site_hostname ON devices(site_id, hostname, id);
CREATE INDEX devices_hostname ON devices(hostname, id);

-- Devices in use per day, for the dashboard: one row per (local day,
-- device) with any session, and a count per (site, day) kept with it, so
-- the dashboard reads 28 rows instead of every session. Days are the
-- site's local dates; rows from before this migration use UTC dates.
CREATE TABLE device_days (
    day       TEXT NOT NULL,
    device_id TEXT NOT NULL,
    site_id   INTEGER NOT NULL,
    PRIMARY KEY (day, device_id)
) WITHOUT ROWID;
CREATE TABLE site_days (
    site_id INTEGER NOT NULL,
    day     TEXT NOT NULL,
    devices INTEGER NOT NULL,
    PRIMARY KEY (site_id, day)
) WITHOUT ROWID;
INSERT OR IGNORE INTO device_days (day, device_id, site_id)
    SELECT DISTINCT date(x.started_at / 1000, 'unixepoch'), x.device_id, d.site_id
    FROM sessions x JOIN devices d ON d.id = x.device_id;
INSERT INTO site_days (site_id, day, devices)
    SELECT site_id, day, count(*) FROM device_days GROUP BY site_id, day;

-- Finding devices by an account that signed in on them.
CREATE INDEX sessions_account ON sessions(account, device_id);
