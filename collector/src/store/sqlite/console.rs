//! SQLite: console accounts and sessions, sign-in throttling, reading the
//! audit log, and the console's device search.

use async_trait::async_trait;
use jiff::Timestamp;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::devices::{DEVICE_SELECT, device_from_row};
use super::{SqliteStore, instant, millis};
use crate::model::{Connectivity, ConsoleRole, DeviceRecord, SiteId};
use crate::rules::activity::ActivityStatus;
use crate::store::{
    AuditQuery, AuditRecord, AuditSites, ConsoleSession, ConsoleUser, DashboardFigures,
    DeviceQuery, NewConsoleUser, Result, StoreError, UserChange,
};

const USER_SELECT: &str = "SELECT u.id, u.username, u.password_hash, u.role, u.all_sites, u.disabled, \
     u.totp_secret, u.created_at, (SELECT group_concat(site_id) FROM console_user_sites s WHERE s.user_id = u.id) AS sites \
     FROM console_users u";

fn user_from_row(r: &SqliteRow) -> Result<ConsoleUser> {
    let role: String = r.try_get("role")?;
    let sites: Option<String> = r.try_get("sites")?;
    let mut sites: Vec<SiteId> = sites
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| s.parse().ok().map(SiteId))
        .collect();
    sites.sort();
    Ok(ConsoleUser {
        id: r.try_get("id")?,
        username: r.try_get("username")?,
        password_hash: r.try_get("password_hash")?,
        role: ConsoleRole::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown console role '{role}'")))?,
        all_sites: r.try_get("all_sites")?,
        sites,
        disabled: r.try_get("disabled")?,
        totp_secret: r.try_get("totp_secret")?,
        created_at: instant(r.try_get("created_at")?)?,
    })
}

impl SqliteStore {
    /// One index range of the audit log: every row (`site` `None`), or one
    /// site's (`Some(Some(id))`), or the collector-wide rows
    /// (`Some(None)`), newest first, filtered and limited.
    async fn audit_rows(
        &self,
        query: &AuditQuery,
        site: Option<Option<SiteId>>,
    ) -> Result<Vec<AuditRecord>> {
        let mut sql: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT id, at, site_id, actor, action, target, detail, address FROM audit_log WHERE 1 = 1",
        );
        match site {
            None => {}
            Some(None) => {
                sql.push(" AND site_id IS NULL");
            }
            Some(Some(id)) => {
                sql.push(" AND site_id = ").push_bind(id.0);
            }
        }
        if !query.actor.is_empty() {
            sql.push(" AND instr(actor, ")
                .push_bind(query.actor.clone())
                .push(") > 0");
        }
        if !query.action.is_empty() {
            sql.push(" AND substr(action, 1, ")
                .push_bind(query.action.chars().count() as i64)
                .push(") = ")
                .push_bind(query.action.clone());
        }
        if let Some(before) = query.before {
            sql.push(" AND id < ").push_bind(before);
        }
        sql.push(" ORDER BY id DESC LIMIT ")
            .push_bind(query.limit as i64);
        let rows = sql.build().fetch_all(&self.reader).await?;
        rows.iter().map(audit_from_row).collect()
    }
}

fn audit_from_row(r: &SqliteRow) -> Result<AuditRecord> {
    Ok(AuditRecord {
        id: r.try_get("id")?,
        at: instant(r.try_get("at")?)?,
        site: r.try_get::<Option<i64>, _>("site_id")?.map(SiteId),
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        detail: r.try_get("detail")?,
        address: r.try_get("address")?,
    })
}

async fn set_sites(
    tx: &mut sqlx::SqliteConnection,
    user: i64,
    sites: &Option<Vec<SiteId>>,
) -> Result<()> {
    sqlx::query("DELETE FROM console_user_sites WHERE user_id = ?")
        .bind(user)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE console_users SET all_sites = ? WHERE id = ?")
        .bind(sites.is_none())
        .bind(user)
        .execute(&mut *tx)
        .await?;
    for site in sites.iter().flatten() {
        sqlx::query("INSERT OR IGNORE INTO console_user_sites (user_id, site_id) VALUES (?, ?)")
            .bind(user)
            .bind(site.0)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// `%` and `_` in a search are literal.
fn like_pattern(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

#[async_trait]
impl crate::store::ConsoleStore for SqliteStore {
    async fn create_console_user(&self, user: NewConsoleUser<'_>, at: Timestamp) -> Result<i64> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let done: std::result::Result<i64, sqlx::Error> = sqlx::query_scalar(
            "INSERT INTO console_users (username, password_hash, role, created_at, password_changed_at) \
             VALUES (?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(user.username)
        .bind(user.password_hash)
        .bind(user.role.as_str())
        .bind(millis(at))
        .bind(millis(at))
        .fetch_one(&mut *tx)
        .await;
        let id = match done {
            Ok(id) => id,
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::UserExists(user.username.into()));
            }
            Err(e) => return Err(e.into()),
        };
        set_sites(&mut tx, id, &user.sites).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn console_user_by_name(&self, username: &str) -> Result<Option<ConsoleUser>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{USER_SELECT} WHERE u.username = ?"
        )))
        .bind(username)
        .fetch_optional(&self.writer)
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn console_user(&self, id: i64) -> Result<Option<ConsoleUser>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("{USER_SELECT} WHERE u.id = ?")))
            .bind(id)
            .fetch_optional(&self.writer)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn console_users(&self) -> Result<Vec<ConsoleUser>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{USER_SELECT} ORDER BY u.username"
        )))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn update_console_user(
        &self,
        id: i64,
        change: UserChange,
        at: Timestamp,
    ) -> Result<bool> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let done = match &change {
            UserChange::Password(hash) => sqlx::query(
                "UPDATE console_users SET password_hash = ?, password_changed_at = ? WHERE id = ?",
            )
            .bind(hash)
            .bind(millis(at))
            .bind(id)
            .execute(&mut *tx)
            .await?,
            UserChange::Disabled(disabled) => {
                sqlx::query("UPDATE console_users SET disabled = ? WHERE id = ?")
                    .bind(disabled)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
            }
            UserChange::Role { role, .. } => {
                sqlx::query("UPDATE console_users SET role = ? WHERE id = ?")
                    .bind(role.as_str())
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
            }
            UserChange::Totp(secret) => {
                sqlx::query("UPDATE console_users SET totp_secret = ? WHERE id = ?")
                    .bind(secret)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
            }
        };
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        if let UserChange::Role { sites, .. } = &change {
            set_sites(&mut tx, id, sites).await?;
        }
        if matches!(change, UserChange::Disabled(true)) {
            sqlx::query("DELETE FROM console_sessions WHERE user_id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn create_console_session(
        &self,
        token_sha256: &str,
        user: i64,
        csrf_token: &str,
        verified: bool,
        address: &str,
        at: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO console_sessions (token_sha256, user_id, csrf_token, verified, address, created_at, last_seen_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(token_sha256)
        .bind(user)
        .bind(csrf_token)
        .bind(verified)
        .bind(address)
        .bind(millis(at))
        .bind(millis(at))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn console_session(&self, token_sha256: &str) -> Result<Option<ConsoleSession>> {
        let row = sqlx::query(
            "SELECT user_id, csrf_token, verified, address, created_at, last_seen_at \
             FROM console_sessions WHERE token_sha256 = ?",
        )
        .bind(token_sha256)
        .fetch_optional(&self.writer)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let Some(user) = self.console_user(row.try_get("user_id")?).await? else {
            return Ok(None);
        };
        Ok(Some(ConsoleSession {
            user,
            csrf_token: row.try_get("csrf_token")?,
            verified: row.try_get("verified")?,
            address: row.try_get("address")?,
            created_at: instant(row.try_get("created_at")?)?,
            last_seen_at: instant(row.try_get("last_seen_at")?)?,
        }))
    }

    async fn touch_console_session(
        &self,
        token_sha256: &str,
        verified: bool,
        at: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE console_sessions SET last_seen_at = ?, verified = max(verified, ?) WHERE token_sha256 = ?",
        )
        .bind(millis(at))
        .bind(verified)
        .bind(token_sha256)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn end_console_session(&self, token_sha256: &str) -> Result<()> {
        sqlx::query("DELETE FROM console_sessions WHERE token_sha256 = ?")
            .bind(token_sha256)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn end_console_sessions(&self, user: i64, except: Option<&str>) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM console_sessions WHERE user_id = ? AND (? IS NULL OR token_sha256 <> ?2)",
        )
        .bind(user)
        .bind(except)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    async fn record_login_failure(
        &self,
        username: &str,
        address: &str,
        at: Timestamp,
    ) -> Result<i64> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO login_failures (username, address, at) VALUES (?, ?, ?) RETURNING id",
        )
        .bind(username)
        .bind(address)
        .bind(millis(at))
        .fetch_one(&mut *tx)
        .await?;
        // Old rows go: throttling looks back at most a day.
        sqlx::query("DELETE FROM login_failures WHERE at < ?")
            .bind(millis(at) - 86_400_000)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn forget_login_failure(&self, id: i64) -> Result<()> {
        sqlx::query("DELETE FROM login_failures WHERE id = ?")
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn use_totp_step(&self, user: i64, step: u64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE console_users SET totp_last_step = ? WHERE id = ? AND totp_last_step < ?",
        )
        .bind(step as i64)
        .bind(user)
        .bind(step as i64)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn login_failures(
        &self,
        username: &str,
        address: &str,
        since: Timestamp,
    ) -> Result<(u64, u64)> {
        let (user, addr): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM login_failures WHERE username = ?1 AND at >= ?3), \
                    (SELECT count(*) FROM login_failures WHERE address = ?2 AND at >= ?3)",
        )
        .bind(username)
        .bind(address)
        .bind(millis(since))
        .fetch_one(&self.writer)
        .await?;
        Ok((user as u64, addr as u64))
    }

    async fn clear_login_failures(&self, username: &str) -> Result<()> {
        sqlx::query("DELETE FROM login_failures WHERE username = ?")
            .bind(username)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn audit_entries(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>> {
        let mut sites: Vec<Option<SiteId>> = match &query.sites {
            AuditSites::All => return self.audit_rows(query, None).await,
            AuditSites::CollectorWide => vec![None],
            AuditSites::Only(list) => list.iter().copied().map(Some).collect(),
        };
        sites.sort();
        sites.dedup();
        let mut rows = Vec::new();
        for site in sites {
            rows.extend(self.audit_rows(query, Some(site)).await?);
        }
        rows.sort_by_key(|r| std::cmp::Reverse(r.id));
        rows.truncate(query.limit);
        Ok(rows)
    }

    async fn audit_for_target(&self, target: &str, limit: usize) -> Result<Vec<AuditRecord>> {
        let rows = sqlx::query(
            "SELECT id, at, site_id, actor, action, target, detail, address FROM audit_log \
             WHERE target = ? ORDER BY id DESC LIMIT ?",
        )
        .bind(target)
        .bind(limit as i64)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn device_page(&self, query: &DeviceQuery) -> Result<Vec<DeviceRecord>> {
        let mut sql: QueryBuilder<Sqlite> = QueryBuilder::new(DEVICE_SELECT);
        sql.push(" WHERE 1 = 1");
        if let Some(sites) = &query.sites {
            if sites.is_empty() {
                return Ok(Vec::new());
            }
            sql.push(" AND d.site_id IN (");
            let mut list = sql.separated(", ");
            for site in sites {
                list.push_bind(site.0);
            }
            list.push_unseparated(")");
        }
        let text = query.text.trim();
        if !text.is_empty() {
            let pattern = like_pattern(text);
            sql.push(" AND (d.hostname LIKE ")
                .push_bind(pattern.clone())
                .push(" ESCAPE '\\' OR d.id = ")
                .push_bind(text.to_owned())
                .push(" OR d.serial_number = ")
                .push_bind(text.to_owned())
                .push(" OR d.id IN (SELECT x.device_id FROM sessions x WHERE x.account = ")
                .push_bind(text.to_lowercase())
                .push("))");
        }
        // The OS, connectivity and compliance are columns of the keyset
        // indexes (migration 0014), so these conditions are checked on
        // index entries and only matching rows are read.
        let os = query.os.trim();
        if !os.is_empty() {
            sql.push(" AND d.os_name LIKE ")
                .push_bind(like_pattern(os))
                .push(" ESCAPE '\\'");
        }
        if let (Some(connectivity), Some(now)) = (query.connectivity, query.now) {
            // Online while `now` is at most `online_until` (last seen plus
            // three heartbeats, as `DeviceRecord::connectivity`); never
            // seen is NULL, offline.
            sql.push(match connectivity {
                Connectivity::Online => " AND d.online_until >= ",
                Connectivity::Offline => " AND (d.online_until IS NULL OR d.online_until < ",
            })
            .push_bind(millis(now));
            if connectivity == Connectivity::Offline {
                sql.push(")");
            }
        }
        if let Some(status) = query.compliance {
            sql.push(" AND d.compliance = ").push_bind(status.as_str());
        }
        if let Some((hostname, id)) = &query.after {
            sql.push(" AND (d.hostname, d.id) > (")
                .push_bind(hostname.clone())
                .push(", ")
                .push_bind(id.clone())
                .push(")");
        }
        sql.push(" ORDER BY d.hostname, d.id LIMIT ")
            .push_bind(query.limit.max(1) as i64);
        let rows = sql.build().fetch_all(&self.reader).await?;
        rows.iter().map(device_from_row).collect()
    }

    async fn dashboard(
        &self,
        sites: Option<&[SiteId]>,
        days: &[jiff::civil::Date],
        now: Timestamp,
    ) -> Result<DashboardFigures> {
        // The site condition, as a list of ids bound into each query.
        fn scoped(sql: &mut QueryBuilder<Sqlite>, column: &str, sites: Option<&[SiteId]>) {
            if let Some(sites) = sites {
                sql.push(format!(" AND {column} IN (NULL"));
                for site in sites {
                    sql.push(", ").push_bind(site.0);
                }
                sql.push(")");
            }
        }
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT count(*), coalesce(sum(d.last_seen_at IS NOT NULL AND d.last_seen_at >= ",
        );
        q.push_bind(millis(now))
            .push(" - 3000 * max(d.heartbeat_interval_secs, 1)), 0) FROM devices d WHERE d.status <> 'revoked'");
        scoped(&mut q, "d.site_id", sites);
        let (devices, online): (i64, i64) = q.build_query_as().fetch_one(&self.reader).await?;

        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT a.status, count(*) FROM device_activity a JOIN devices d ON d.id = a.device_id WHERE d.status <> 'revoked'",
        );
        scoped(&mut q, "d.site_id", sites);
        q.push(" GROUP BY a.status");
        let rows: Vec<(String, i64)> = q.build_query_as().fetch_all(&self.reader).await?;
        let mut compliance: Vec<(ActivityStatus, u64)> = rows
            .into_iter()
            .filter_map(|(s, n)| Some((ActivityStatus::parse(&s)?, n as u64)))
            .collect();
        compliance.sort_by_key(|(s, _)| *s as u8);

        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT kind, count(*) FROM flags WHERE state IN ('open', 'disable_approved', 'disabled')",
        );
        scoped(&mut q, "site_id", sites);
        q.push(" GROUP BY kind ORDER BY kind");
        let flags: Vec<(String, i64)> = q.build_query_as().fetch_all(&self.reader).await?;

        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT severity, count(*) FROM incidents WHERE status = 'open'");
        scoped(&mut q, "site_id", sites);
        q.push(" GROUP BY severity ORDER BY severity DESC");
        let incidents: Vec<(i64, i64)> = q.build_query_as().fetch_all(&self.reader).await?;

        // Read from the per-day counts ingest keeps (`device_days`).
        let mut daily_active = vec![0u64; days.len()];
        if let (Some(first), Some(last)) = (days.first(), days.last()) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("SELECT day, sum(devices) FROM site_days WHERE day >= ");
            q.push_bind(first.to_string())
                .push(" AND day <= ")
                .push_bind(last.to_string());
            scoped(&mut q, "site_id", sites);
            q.push(" GROUP BY day");
            let rows: Vec<(String, i64)> = q.build_query_as().fetch_all(&self.reader).await?;
            for (day, n) in rows {
                if let Some(i) = days.iter().position(|d| d.to_string() == day) {
                    daily_active[i] = n as u64;
                }
            }
        }
        Ok(DashboardFigures {
            devices: devices as u64,
            online: online as u64,
            compliance,
            flags: flags.into_iter().map(|(k, n)| (k, n as u64)).collect(),
            incidents: incidents.into_iter().map(|(s, n)| (s, n as u64)).collect(),
            daily_active,
        })
    }
}

#[cfg(test)]
mod device_list_tests;

#[cfg(test)]
mod tests {
    use jiff::{SignedDuration, Timestamp};

    use crate::model::{ConsoleRole, DeviceFacts, DeviceId};
    use crate::store::sqlite::testing::store_with_device;
    use crate::store::{
        ConsoleStore, DeviceQuery, DeviceStore, Enrollment, NewConsoleUser, SiteStore, UserChange,
    };

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap() + SignedDuration::from_secs(secs)
    }

    #[tokio::test]
    async fn accounts_sessions_and_throttling() {
        let dir = tempfile::tempdir().unwrap();
        let (store, site, _) = store_with_device(dir.path(), t(0)).await;
        let other = store.create_site("Other", "UTC", t(0)).await.unwrap();
        let id = store
            .create_console_user(
                NewConsoleUser {
                    username: "dsl1",
                    password_hash: "h",
                    role: ConsoleRole::Dsl,
                    sites: Some(vec![site.id]),
                },
                t(0),
            )
            .await
            .unwrap();
        let user = store.console_user_by_name("dsl1").await.unwrap().unwrap();
        assert_eq!((user.id, user.role), (id, ConsoleRole::Dsl));
        assert!(user.sees_site(site.id) && !user.sees_site(other.id));
        assert!(
            store
                .create_console_user(
                    NewConsoleUser {
                        username: "dsl1",
                        password_hash: "h",
                        role: ConsoleRole::Admin,
                        sites: None,
                    },
                    t(0),
                )
                .await
                .is_err(),
            "names are unique"
        );
        store
            .update_console_user(
                id,
                UserChange::Role {
                    role: ConsoleRole::Technician,
                    sites: Some(vec![site.id, other.id]),
                },
                t(1),
            )
            .await
            .unwrap();
        let user = store.console_user(id).await.unwrap().unwrap();
        assert_eq!(user.role, ConsoleRole::Technician);
        assert_eq!(user.sites.len(), 2);

        store
            .create_console_session("s1", id, "c1", true, "127.0.0.1", t(2))
            .await
            .unwrap();
        store
            .create_console_session("s2", id, "c2", false, "127.0.0.2", t(3))
            .await
            .unwrap();
        let s2 = store.console_session("s2").await.unwrap().unwrap();
        assert!(!s2.verified);
        store.touch_console_session("s2", true, t(4)).await.unwrap();
        let s2 = store.console_session("s2").await.unwrap().unwrap();
        assert!(s2.verified && s2.last_seen_at == t(4));
        assert_eq!(store.end_console_sessions(id, Some("s2")).await.unwrap(), 1);
        assert!(store.console_session("s1").await.unwrap().is_none());
        // Disabling ends the rest.
        store
            .update_console_user(id, UserChange::Disabled(true), t(5))
            .await
            .unwrap();
        assert!(store.console_session("s2").await.unwrap().is_none());

        for i in 0..3 {
            store
                .record_login_failure("dsl1", "10.0.0.1", t(10 + i))
                .await
                .unwrap();
        }
        store
            .record_login_failure("other", "10.0.0.1", t(20))
            .await
            .unwrap();
        assert_eq!(
            store
                .login_failures("dsl1", "10.0.0.1", t(0))
                .await
                .unwrap(),
            (3, 4)
        );
        assert_eq!(
            store
                .login_failures("dsl1", "10.0.0.1", t(12))
                .await
                .unwrap(),
            (1, 2)
        );
        let attempt = store
            .record_login_failure("dsl1", "10.0.0.2", t(30))
            .await
            .unwrap();
        store.forget_login_failure(attempt).await.unwrap();
        assert_eq!(
            store
                .login_failures("dsl1", "10.0.0.2", t(0))
                .await
                .unwrap(),
            (3, 0)
        );
        assert!(store.use_totp_step(id, 100).await.unwrap());
        assert!(!store.use_totp_step(id, 100).await.unwrap(), "a step once");
        assert!(
            !store.use_totp_step(id, 99).await.unwrap(),
            "nor an earlier one"
        );
        assert!(store.use_totp_step(id, 101).await.unwrap());
        store.clear_login_failures("dsl1").await.unwrap();
        assert_eq!(
            store
                .login_failures("dsl1", "10.0.0.9", t(0))
                .await
                .unwrap(),
            (0, 0)
        );
    }

    #[tokio::test]
    async fn device_pages_follow_the_keyset_and_the_filters() {
        let dir = tempfile::tempdir().unwrap();
        let (store, site, _) = store_with_device(dir.path(), t(0)).await;
        for n in 0..7 {
            let facts = DeviceFacts {
                hostname: format!("lab-{n:02}"),
                machine_id: format!("m-lab-{n}"),
                serial_number: format!("SER{n}"),
                os_name: if n % 2 == 0 { "Debian" } else { "Ubuntu" }.into(),
                ..DeviceFacts::default()
            };
            store
                .save_enrollment(Enrollment::active(
                    DeviceId::from_string(format!("dev-lab-{n}")),
                    site.id,
                    facts,
                    format!("cert-{n}"),
                    t(0),
                ))
                .await
                .unwrap();
        }
        let query = |text: &str, after: Option<(String, String)>| DeviceQuery {
            sites: Some(vec![site.id]),
            text: text.into(),
            after,
            limit: 3,
            ..DeviceQuery::default()
        };
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .device_page(&query("lab", after.clone()))
                .await
                .unwrap();
            if page.is_empty() {
                break;
            }
            let last = page.last().unwrap();
            after = Some((last.hostname.clone(), last.id.to_string()));
            seen.extend(page.into_iter().map(|d| d.hostname));
        }
        let want: Vec<String> = (0..7).map(|n| format!("lab-{n:02}")).collect();
        assert_eq!(seen, want, "every device once, in order");
        let by_serial = store.device_page(&query("SER3", None)).await.unwrap();
        assert_eq!(by_serial.len(), 1);
        assert_eq!(by_serial[0].hostname, "lab-03");
        let percent = store.device_page(&query("%", None)).await.unwrap();
        assert!(percent.is_empty(), "% is literal");
        let ubuntu = store
            .device_page(&DeviceQuery {
                os: "ubun".into(),
                limit: 50,
                ..DeviceQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(ubuntu.len(), 3);
        let nowhere = store
            .device_page(&DeviceQuery {
                sites: Some(vec![]),
                limit: 50,
                ..DeviceQuery::default()
            })
            .await
            .unwrap();
        assert!(nowhere.is_empty(), "no site, no device");
    }

    #[tokio::test]
    async fn days_in_use_are_counted_once_per_device_and_day() {
        use crate::model::{Event, EventBody, Seq, SessionKind, SessionRecord};
        use crate::store::IngestStore;
        let dir = tempfile::tempdir().unwrap();
        let (store, site, device) = store_with_device(dir.path(), t(0)).await;
        // The site is in Europe/London; t(0) is 2027-01-15 08:00 there.
        let session = |n: u64, start: i64, end: Option<i64>| Event {
            seq: Seq(n),
            event_id: format!("e{n}"),
            occurred_at: t(start),
            body: EventBody::Session(SessionRecord {
                session_id: format!("s{n}"),
                account: "pupil1".into(),
                uid: 1000,
                kind: SessionKind::Graphical,
                started_at: t(start),
                ended_at: end.map(t),
                active_secs: 60,
            }),
        };
        let events = vec![
            // 08:00 to 08:00 the next day: two days.
            session(1, 0, Some(86_400)),
            // Later on the first day: no new count.
            session(2, 3_600, Some(7_200)),
        ];
        store
            .record_batch(&device, &events, t(90_000))
            .await
            .unwrap();
        let days: Vec<jiff::civil::Date> = ["2027-01-14", "2027-01-15", "2027-01-16", "2027-01-17"]
            .iter()
            .map(|d| d.parse().unwrap())
            .collect();
        let figures = store
            .dashboard(Some(&[site.id]), &days, t(90_000))
            .await
            .unwrap();
        assert_eq!(figures.daily_active, vec![0, 1, 1, 0]);
        assert_eq!(figures.devices, 1);
        let other = store
            .dashboard(Some(&[crate::model::SiteId(999)]), &days, t(90_000))
            .await
            .unwrap();
        assert_eq!(other.daily_active, vec![0, 0, 0, 0], "another site's days");
    }
}
