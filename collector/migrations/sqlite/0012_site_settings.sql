-- A site's device-activity thresholds and evidence retention set in the
-- console, over collector.toml's (see site_settings.rs). One row per site
-- that has them; the row holds all five values, and deleting it returns
-- the site to collector.toml.
CREATE TABLE site_settings (
    site_id          INTEGER PRIMARY KEY REFERENCES sites(id),
    window_days      INTEGER NOT NULL,
    required_minutes INTEGER NOT NULL,
    warning_days     INTEGER NOT NULL,
    auto_disable     INTEGER NOT NULL,
    retention_days   INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    updated_by       TEXT NOT NULL
);
