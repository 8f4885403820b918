-- Each audit row names the site whose thing it is about (a device, flag,
-- incident, enrolment secret, policy, setting, or an account of one site),
-- so a school's administrator or DSL reads their own school's trail.
-- NULL: collector-wide (accounts of every site, the collector itself),
-- read only by accounts that see every site.
ALTER TABLE audit_log ADD COLUMN site_id INTEGER REFERENCES sites(id);

-- The audit page's site filter, newest first, in keyset pages:
-- WHERE site_id = ? [AND id < ?] ORDER BY id DESC LIMIT ?.
CREATE INDEX audit_log_site ON audit_log(site_id, id);

-- Older rows: the site where the target names it.
UPDATE audit_log SET site_id = (SELECT d.site_id FROM devices d WHERE d.id = audit_log.target)
    WHERE site_id IS NULL AND target IN (SELECT id FROM devices);
UPDATE audit_log SET site_id = (SELECT f.site_id FROM flags f
        WHERE 'flag ' || f.id = audit_log.target)
    WHERE site_id IS NULL AND target LIKE 'flag %';
UPDATE audit_log SET site_id = (SELECT i.site_id FROM incidents i
        WHERE 'incident ' || i.id = audit_log.target)
    WHERE site_id IS NULL AND target LIKE 'incident %';
UPDATE audit_log SET site_id = (SELECT e.site_id FROM enrollment_secrets e
        WHERE 'secret ' || e.id = audit_log.target)
    WHERE site_id IS NULL AND target LIKE 'secret %';
UPDATE audit_log SET site_id = (SELECT s.id FROM sites s
        WHERE 'site ' || s.name = audit_log.target OR 'site=' || s.name = audit_log.detail)
    WHERE site_id IS NULL AND (target LIKE 'site %' OR detail LIKE 'site=%');
-- Policy saves: 'site ID policy vN'.
UPDATE audit_log SET site_id = (SELECT s.id FROM sites s
        WHERE audit_log.target LIKE 'site ' || s.id || ' policy v%')
    WHERE site_id IS NULL AND action = 'policy.set';
-- Accounts of exactly one site.
UPDATE audit_log SET site_id = (SELECT MIN(us.site_id) FROM console_users u
        JOIN console_user_sites us ON us.user_id = u.id
        WHERE 'user ' || u.username = audit_log.target AND u.all_sites = 0
        GROUP BY u.id HAVING COUNT(*) = 1)
    WHERE site_id IS NULL AND target LIKE 'user %';
