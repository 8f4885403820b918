-- The annual review (annual_review.rs) and the DSL's risk profile
-- (risk.rs) read a site's incidents and captures over a period, a site's
-- flags by when they opened, its 2FA verdicts by status, and one
-- account's or one device's captures, each through an index.
CREATE INDEX incidents_site_last ON incidents(site_id, last_at);
CREATE INDEX incidents_site_account ON incidents(site_id, account, status);
CREATE INDEX captures_account ON captures(account, occurred_at);
CREATE INDEX captures_device_time ON captures(device_id, occurred_at);
CREATE INDEX flags_site_opened ON flags(site_id, opened_at);
CREATE INDEX mfa_pairs_site ON mfa_pairs(site_id, status);
