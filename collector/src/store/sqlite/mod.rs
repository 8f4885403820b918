//! SQLite backend: one file in WAL mode. All writes go through a pool of one
//! connection (the single writer), reads through a separate pool, so readers
//! never wait on a batch commit and writers never contend for the lock.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{
    ActivityChanges, ActivityInput, ActivityVerdict, AuditEntry, DeviceFilter, DirectoryImport,
    Enrollment, IdentityChange, MfaVerdict, NewMfaCompletion, NewSecret, Result, SitePolicy, Store,
    StoreError, StoredActivity, StoredPair, StreamDevice,
};
use crate::directory::DirectoryAccount;
use crate::flags::{FlagAction, FlagError, FlagRecord, FlagState, FlagTransition};
use crate::model::{
    BatchOutcome, CommandRecord, DeviceFacts, DeviceId, DeviceRecord, DeviceStatus, Enforcement,
    EnrollmentSecretInfo, Event, EventBody, GapRecord, OutboxHealth, SecretRejection, Site, SiteId,
};
use crate::rules::mfa::MfaStatus;

mod activity;
mod incidents;
mod mfa;
mod notify;
mod policies;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Events per multi-row INSERT: 7 bound values each, well under SQLite's
/// limit of 32,766 variables per statement.
const INSERT_CHUNK: usize = 500;

#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// How close captures must be to join an incident.
    incident_window: jiff::SignedDuration,
}

impl SqliteStore {
    /// Opens (creating if `create`) the database file and applies pending
    /// migrations.
    pub async fn open(path: &Path, create: bool) -> Result<Self> {
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL: a commit survives a process crash; only a power
            // loss can drop the last transactions, never corrupt the file.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            // A connection handed back still inside a transaction (a COMMIT
            // that failed on a full disk leaves one) is closed and replaced,
            // so the single writer recovers by itself when space returns.
            .after_release(|connection, _| {
                Box::pin(async move {
                    let clean = !sqlx::Connection::is_in_transaction(connection);
                    if !clean {
                        tracing::warn!(
                            "store writer left inside a failed transaction; reconnecting"
                        );
                    }
                    Ok(clean)
                })
            })
            .connect_with(options.clone())
            .await?;
        MIGRATIONS.run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        Ok(SqliteStore {
            writer,
            reader,
            incident_window: crate::incidents::DEFAULT_INCIDENT_WINDOW,
        })
    }

    /// SQLite's `quick_check`: Ok, or what it found (the first lines).
    pub async fn quick_check(&self) -> Result<Result<(), String>> {
        let found: Vec<String> = sqlx::query_scalar("PRAGMA quick_check(10)")
            .fetch_all(&self.writer)
            .await?;
        Ok(match found.as_slice() {
            [ok] if ok == "ok" => Ok(()),
            _ => Err(found.join("; ")),
        })
    }

    /// A consistent copy of the database at `to` (`VACUUM INTO`), taken
    /// while the collector runs; `to` must not exist.
    pub async fn backup(&self, to: &Path) -> Result<()> {
        sqlx::query("VACUUM INTO ?")
            .bind(to.to_string_lossy().into_owned())
            .execute(&self.reader)
            .await?;
        Ok(())
    }

    pub fn with_incident_window(mut self, window: jiff::SignedDuration) -> Self {
        self.incident_window = window;
        self
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

fn millis(t: Timestamp) -> i64 {
    t.as_millisecond()
}

fn instant(ms: i64) -> Result<Timestamp> {
    Timestamp::from_millisecond(ms).map_err(|e| StoreError::Corrupt(format!("timestamp {ms}: {e}")))
}

fn optional_instant(ms: Option<i64>) -> Result<Option<Timestamp>> {
    ms.map(instant).transpose()
}

fn site_from_row(row: &SqliteRow) -> Result<Site> {
    Ok(Site {
        id: SiteId(row.try_get("id")?),
        name: row.try_get("name")?,
        timezone: row.try_get("timezone")?,
    })
}

fn secret_from_row(row: &SqliteRow) -> Result<EnrollmentSecretInfo> {
    Ok(EnrollmentSecretInfo {
        id: row.try_get("id")?,
        site: row.try_get("site")?,
        hint: row.try_get("hint")?,
        label: row.try_get("label")?,
        created_at: instant(row.try_get("created_at")?)?,
        expires_at: optional_instant(row.try_get("expires_at")?)?,
        revoked_at: optional_instant(row.try_get("revoked_at")?)?,
        uses: row.try_get::<i64, _>("uses")? as u64,
        last_used_at: optional_instant(row.try_get("last_used_at")?)?,
    })
}

fn device_from_row(row: &SqliteRow) -> Result<DeviceRecord> {
    let id: String = row.try_get("id")?;
    let facts_json: String = row.try_get("facts_json")?;
    let facts: DeviceFacts = serde_json::from_str(&facts_json)
        .map_err(|e| StoreError::Corrupt(format!("facts of device {id}: {e}")))?;
    Ok(DeviceRecord {
        id: DeviceId::from_string(id),
        site: row.try_get("site")?,
        site_timezone: row.try_get("site_timezone")?,
        hostname: row.try_get("hostname")?,
        enrolled_at: instant(row.try_get("enrolled_at")?)?,
        last_seen_at: optional_instant(row.try_get("last_seen_at")?)?,
        heartbeat_interval_secs: row.try_get::<i64, _>("heartbeat_interval_secs")? as u32,
        last_seq: row.try_get::<i64, _>("last_seq")? as u64,
        events_stored: row.try_get::<i64, _>("events_stored")? as u64,
        facts,
        facts_updated_at: instant(row.try_get("facts_updated_at")?)?,
        enforcement: enforcement(row)?,
        reenabled_at: optional_instant(row.try_get("reenabled_at")?)?,
        policy_version: row.try_get::<i64, _>("policy_version")? as u64,
        status: device_status(row)?,
        status_reason: row.try_get("status_reason")?,
        duplicate_of: row
            .try_get::<Option<String>, _>("duplicate_of")?
            .map(DeviceId::from_string),
        open_gaps: row.try_get::<i64, _>("open_gaps")? as u64,
    })
}

fn device_status(row: &SqliteRow) -> Result<DeviceStatus> {
    let text: String = row.try_get("status")?;
    DeviceStatus::parse(&text)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown device status '{text}'")))
}

fn enforcement(row: &SqliteRow) -> Result<Enforcement> {
    let text: String = row.try_get("enforcement")?;
    Enforcement::parse(&text)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown enforcement state '{text}'")))
}

const DEVICE_SELECT: &str = "SELECT d.id, s.name AS site, s.timezone AS site_timezone, d.hostname, d.enrolled_at, d.last_seen_at, \
     d.heartbeat_interval_secs, d.last_seq, d.events_stored, d.facts_json, d.facts_updated_at, \
     d.enforcement, d.reenabled_at, d.policy_version, d.status, d.status_reason, d.duplicate_of, \
     (SELECT count(*) FROM monitoring_gaps g WHERE g.device_id = d.id AND g.ended_at IS NULL) AS open_gaps \
     FROM devices d JOIN sites s ON s.id = d.site_id";

const SECRET_SELECT: &str = "SELECT e.id, s.name AS site, e.hint, e.label, e.created_at, e.expires_at, \
     e.revoked_at, e.uses, e.last_used_at FROM enrollment_secrets e JOIN sites s ON s.id = e.site_id";

/// Monitoring gaps `outbox_health` returns at most.
const GAPS_SHOWN: i64 = 20;

/// Opens (START) or closes (END) a monitoring gap. Keyed by its start, so
/// a repeated START is a no-op and an END whose START was lost still
/// leaves a closed row.
async fn record_gap(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    device: &DeviceId,
    gap: &GapRecord,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO monitoring_gaps (device_id, session_id, kind, account, uid, started_at, ended_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (device_id, session_id, kind, started_at) \
         DO UPDATE SET ended_at = coalesce(excluded.ended_at, monitoring_gaps.ended_at)",
    )
    .bind(device.as_str())
    .bind(&gap.session_id)
    .bind(&gap.gap)
    .bind(&gap.account)
    .bind(i64::from(gap.uid))
    .bind(millis(gap.started_at))
    .bind(gap.ended_at.map(millis))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn facts_json(facts: &DeviceFacts) -> String {
    // Serialising plain data with string keys cannot fail.
    serde_json::to_string(facts).expect("facts serialise")
}

fn event_json(body: &EventBody) -> String {
    match body {
        EventBody::Other { json, .. } => json.to_string(),
        other => serde_json::to_string(other).expect("event bodies serialise"),
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_site(&self, name: &str, timezone: &str, at: Timestamp) -> Result<Site> {
        let row = sqlx::query("INSERT INTO sites (name, timezone, created_at) VALUES (?, ?, ?) RETURNING id, name, timezone")
            .bind(name)
            .bind(timezone)
            .bind(millis(at))
            .fetch_one(&self.writer)
            .await;
        match row {
            Ok(row) => site_from_row(&row),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::SiteExists(name.into()))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn site_by_name(&self, name: &str) -> Result<Option<Site>> {
        let row = sqlx::query("SELECT id, name, timezone FROM sites WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(site_from_row).transpose()
    }

    async fn create_enrollment_secret(&self, secret: NewSecret) -> Result<EnrollmentSecretInfo> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO enrollment_secrets (site_id, secret_sha256, hint, label, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(secret.site.0)
        .bind(&secret.secret_sha256)
        .bind(&secret.hint)
        .bind(&secret.label)
        .bind(millis(secret.at))
        .bind(secret.expires_at.map(millis))
        .fetch_one(&self.writer)
        .await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SECRET_SELECT} WHERE e.id = ?"
        )))
        .bind(id)
        .fetch_one(&self.writer)
        .await?;
        secret_from_row(&row)
    }

    async fn list_enrollment_secrets(
        &self,
        site: Option<SiteId>,
    ) -> Result<Vec<EnrollmentSecretInfo>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SECRET_SELECT} WHERE (?1 IS NULL OR e.site_id = ?1) ORDER BY e.id"
        )))
        .bind(site.map(|s| s.0))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(secret_from_row).collect()
    }

    async fn revoke_enrollment_secret(&self, site: SiteId, id: i64, at: Timestamp) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE enrollment_secrets SET revoked_at = ? WHERE id = ? AND site_id = ? AND revoked_at IS NULL",
        )
        .bind(millis(at))
        .bind(id)
        .bind(site.0)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn redeem_enrollment_secret(
        &self,
        secret_sha256: &str,
        at: Timestamp,
    ) -> Result<Result<Site, SecretRejection>> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query(
            "SELECT e.id AS secret_id, e.expires_at, e.revoked_at, s.id, s.name, s.timezone \
             FROM enrollment_secrets e JOIN sites s ON s.id = e.site_id WHERE e.secret_sha256 = ?",
        )
        .bind(secret_sha256)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(Err(SecretRejection::Unknown));
        };
        if row.try_get::<Option<i64>, _>("revoked_at")?.is_some() {
            return Ok(Err(SecretRejection::Revoked));
        }
        if let Some(expires) = row.try_get::<Option<i64>, _>("expires_at")?
            && expires <= millis(at)
        {
            return Ok(Err(SecretRejection::Expired));
        }
        let site = site_from_row(&row)?;
        sqlx::query("UPDATE enrollment_secrets SET uses = uses + 1, last_used_at = ? WHERE id = ?")
            .bind(millis(at))
            .bind(row.try_get::<i64, _>("secret_id")?)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Ok(site))
    }

    async fn device_for_machine(&self, machine_id: &str, serial: &str) -> Result<Option<DeviceId>> {
        let id: Option<String> = sqlx::query_scalar(
            "SELECT id FROM (\
               SELECT id, status, enrolled_at, 0 AS by FROM devices WHERE ?1 <> '' AND machine_id = ?1 \
               UNION ALL \
               SELECT id, status, enrolled_at, 1 AS by FROM devices WHERE ?2 <> '' AND serial_number = ?2) \
             ORDER BY by, status <> 'active', enrolled_at LIMIT 1",
        )
        .bind(machine_id)
        .bind(serial)
        .fetch_optional(&self.writer)
        .await?;
        Ok(id.map(DeviceId::from_string))
    }

    async fn save_enrollment(&self, e: Enrollment) -> Result<bool> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let existed: Option<i64> = sqlx::query_scalar("SELECT 1 FROM devices WHERE id = ?")
            .bind(e.device_id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let at = millis(e.at);
        if existed.is_some() {
            sqlx::query(
                "UPDATE devices SET machine_id = ?, serial_number = ?, hostname = ?, \
                 reenrolled_at = ?, cert_sha256 = ?, facts_json = ?, facts_updated_at = ?, \
                 identity_changed_at = ? WHERE id = ?",
            )
            .bind(&e.facts.machine_id)
            .bind(&e.facts.serial_number)
            .bind(&e.facts.hostname)
            .bind(at)
            .bind(&e.cert_sha256)
            .bind(facts_json(&e.facts))
            .bind(at)
            .bind(at)
            .bind(e.device_id.as_str())
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(
                "INSERT INTO devices (id, site_id, machine_id, serial_number, hostname, enrolled_at, \
                 cert_sha256, facts_json, facts_updated_at, status, status_reason, status_changed_at, \
                 duplicate_of, identity_changed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(e.device_id.as_str())
            .bind(e.site.0)
            .bind(&e.facts.machine_id)
            .bind(&e.facts.serial_number)
            .bind(&e.facts.hostname)
            .bind(at)
            .bind(&e.cert_sha256)
            .bind(facts_json(&e.facts))
            .bind(at)
            .bind(e.status.as_str())
            .bind(&e.status_reason)
            .bind(at)
            .bind(e.duplicate_of.as_ref().map(DeviceId::as_str))
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(existed.is_some())
    }

    async fn device_by_certificate(&self, cert_sha256: &str) -> Result<Option<StreamDevice>> {
        let row = sqlx::query(
            "SELECT id, site_id, last_seq, status, status_reason FROM devices WHERE cert_sha256 = ?",
        )
        .bind(cert_sha256)
        .fetch_optional(&self.writer)
        .await?;
        row.map(|row| {
            Ok(StreamDevice {
                id: DeviceId::from_string(row.try_get::<String, _>("id")?),
                site: SiteId(row.try_get("site_id")?),
                last_seq: row.try_get::<i64, _>("last_seq")? as u64,
                status: device_status(&row)?,
                status_reason: row.try_get("status_reason")?,
            })
        })
        .transpose()
    }

    async fn set_device_status(
        &self,
        device: &DeviceId,
        status: DeviceStatus,
        reason: &str,
        at: Timestamp,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE devices SET status = ?, status_reason = ?, status_changed_at = ?, \
             identity_changed_at = ? WHERE id = ?",
        )
        .bind(status.as_str())
        .bind(reason)
        .bind(millis(at))
        .bind(millis(at))
        .bind(device.as_str())
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn identity_changes_since(&self, after: Timestamp) -> Result<Vec<IdentityChange>> {
        let rows = sqlx::query(
            "SELECT id, cert_sha256, status, status_reason, identity_changed_at FROM devices \
             WHERE identity_changed_at > ? ORDER BY identity_changed_at",
        )
        .bind(millis(after))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(IdentityChange {
                    device: DeviceId::from_string(row.try_get::<String, _>("id")?),
                    cert_sha256: row.try_get("cert_sha256")?,
                    status: device_status(row)?,
                    status_reason: row.try_get("status_reason")?,
                    at: instant(row.try_get("identity_changed_at")?)?,
                })
            })
            .collect()
    }

    async fn record_hello(
        &self,
        device: &DeviceId,
        heartbeat_interval_secs: u32,
        policy_version: u64,
        at: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE devices SET last_seen_at = max(coalesce(last_seen_at, 0), ?), \
             heartbeat_interval_secs = ?, policy_version = ? WHERE id = ?",
        )
        .bind(millis(at))
        .bind(i64::from(heartbeat_interval_secs.max(1)))
        .bind(policy_version as i64)
        .bind(device.as_str())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn record_batch(
        &self,
        device: &DeviceId,
        events: &[Event],
        received_at: Timestamp,
    ) -> Result<BatchOutcome> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let received = millis(received_at);
        let mut stored: u64 = 0;
        for chunk in events.chunks(INSERT_CHUNK) {
            let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO events (device_id, seq, event_id, kind, occurred_at, received_at, body) ",
            );
            insert.push_values(chunk, |mut row, event| {
                row.push_bind(device.as_str().to_owned())
                    .push_bind(event.seq.0 as i64)
                    .push_bind(event.event_id.clone())
                    .push_bind(event.body.kind().to_owned())
                    .push_bind(millis(event.occurred_at))
                    .push_bind(received)
                    .push_bind(event_json(&event.body));
            });
            insert.push(" ON CONFLICT (device_id, seq) DO NOTHING");
            stored += insert.build().execute(&mut *tx).await?.rows_affected();
        }

        // Sessions and command results take effect with the batch that
        // carried them. A duplicate event was applied when first stored.
        if stored > 0 {
            for event in events {
                match &event.body {
                    EventBody::Session(session) => {
                        activity::upsert_session(&mut tx, device, session, received_at).await?
                    }
                    EventBody::MonitoringGap(gap) => record_gap(&mut tx, device, gap).await?,
                    EventBody::Capture(_) | EventBody::FileAlert { .. } => {
                        let Some(evidence) = crate::incidents::evidence_of(&event.body) else {
                            continue;
                        };
                        incidents::record_capture(
                            &mut tx,
                            self.incident_window,
                            device,
                            event.seq.0,
                            event.occurred_at,
                            &evidence,
                            received_at,
                        )
                        .await?
                    }
                    EventBody::Mfa {
                        account,
                        method,
                        source,
                    } => {
                        let site: i64 =
                            sqlx::query_scalar("SELECT site_id FROM devices WHERE id = ?")
                                .bind(device.as_str())
                                .fetch_one(&mut *tx)
                                .await?;
                        let completion = NewMfaCompletion {
                            site: SiteId(site),
                            device: Some(device.clone()),
                            account: account.to_lowercase(),
                            completed_at: event.occurred_at,
                            source: "agent".into(),
                            method: method.clone(),
                            external_id: format!("{device}:{}", event.seq.0),
                            device_hint: source.clone(),
                        };
                        mfa::record_completions(&mut tx, &[completion], received_at).await?;
                    }
                    EventBody::Enforcement {
                        command_id,
                        command,
                        ok,
                        detail,
                    } => {
                        activity::apply_enforcement_result(
                            &mut tx,
                            device,
                            command_id,
                            *command,
                            *ok,
                            detail,
                            received_at,
                        )
                        .await?
                    }
                    _ => {}
                }
            }
        }

        // The newest facts win, even when older facts arrive later.
        let newest_facts = events
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::Facts(f) => Some((e.occurred_at, f)),
                _ => None,
            })
            .max_by_key(|(at, _)| *at);
        if let Some((at, facts)) = newest_facts {
            sqlx::query(
                "UPDATE devices SET facts_json = ?, facts_updated_at = ?, hostname = ? \
                 WHERE id = ? AND facts_updated_at <= ?",
            )
            .bind(facts_json(facts))
            .bind(millis(at))
            .bind(&facts.hostname)
            .bind(device.as_str())
            .bind(millis(at))
            .execute(&mut *tx)
            .await?;
        }
        let interval = events.iter().rev().find_map(|e| match e.body {
            EventBody::Heartbeat { interval_secs, .. } if interval_secs > 0 => {
                Some(i64::from(interval_secs))
            }
            _ => None,
        });
        let max_seq = events.iter().map(|e| e.seq.0).max().unwrap_or(0) as i64;
        sqlx::query(
            "UPDATE devices SET last_seen_at = max(coalesce(last_seen_at, 0), ?), last_seq = max(last_seq, ?), \
             events_stored = events_stored + ?, heartbeat_interval_secs = coalesce(?, heartbeat_interval_secs) \
             WHERE id = ?",
        )
        .bind(received)
        .bind(max_seq)
        .bind(stored as i64)
        .bind(interval)
        .bind(device.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let stored = stored as u32;
        Ok(BatchOutcome {
            stored,
            duplicates: events.len() as u32 - stored,
        })
    }

    async fn list_devices(&self, site: Option<SiteId>) -> Result<Vec<DeviceRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{DEVICE_SELECT} WHERE (?1 IS NULL OR d.site_id = ?1) ORDER BY s.name, d.hostname, d.id"
        )))
        .bind(site.map(|s| s.0))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(device_from_row).collect()
    }

    async fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{DEVICE_SELECT} WHERE d.id = ?"
        )))
        .bind(id.as_str())
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(device_from_row).transpose()
    }

    async fn outbox_health(&self, device: &DeviceId) -> Result<OutboxHealth> {
        let row = sqlx::query(
            "SELECT coalesce(sum(json_extract(body, '$.evicted_telemetry')), 0) AS telemetry, \
             coalesce(sum(json_extract(body, '$.evicted_sessions')), 0) AS sessions, \
             coalesce(sum(json_extract(body, '$.evicted_mfa')), 0) AS mfa, \
             coalesce(sum(json_extract(body, '$.evicted_captures')), 0) AS captures, \
             coalesce(sum(json_extract(body, '$.evicted_enforcement')), 0) AS enforcement, \
             coalesce(sum(json_extract(body, '$.evicted_other')), 0) AS other, \
             count(nullif(json_extract(body, '$.corrupt_file_moved_to'), '')) AS corrupt, \
             coalesce(sum(json_extract(body, '$.quarantined')), 0) AS quarantined, \
             coalesce(sum(json_extract(body, '$.captures_refused')), 0) AS captures_refused, \
             max(occurred_at) AS last_at \
             FROM events WHERE device_id = ? AND kind = 'outbox_report'",
        )
        .bind(device.as_str())
        .fetch_one(&self.reader)
        .await?;
        let mut health = OutboxHealth {
            corrupt_replacements: row.try_get::<i64, _>("corrupt")? as u64,
            last_report_at: optional_instant(row.try_get("last_at")?)?,
            quarantined: row.try_get::<i64, _>("quarantined")? as u64,
            captures_refused: row.try_get::<i64, _>("captures_refused")? as u64,
            ..OutboxHealth::default()
        };
        // Open gaps first, then the latest closed ones.
        let gaps = sqlx::query(
            "SELECT kind, session_id, account, uid, started_at, ended_at FROM monitoring_gaps \
             WHERE device_id = ? ORDER BY ended_at IS NOT NULL, started_at DESC LIMIT ?",
        )
        .bind(device.as_str())
        .bind(GAPS_SHOWN)
        .fetch_all(&self.reader)
        .await?;
        for row in &gaps {
            health.monitoring_gaps.push(GapRecord {
                gap: row.try_get("kind")?,
                session_id: row.try_get("session_id")?,
                account: row.try_get("account")?,
                uid: row.try_get::<i64, _>("uid")? as u32,
                started_at: instant(row.try_get("started_at")?)?,
                ended_at: optional_instant(row.try_get("ended_at")?)?,
            });
        }
        for class in [
            "telemetry",
            "sessions",
            "mfa",
            "captures",
            "enforcement",
            "other",
        ] {
            health
                .evicted
                .insert(class.to_owned(), row.try_get::<i64, _>(class)? as u64);
        }
        Ok(health)
    }

    async fn event_kinds(&self, device: &DeviceId) -> Result<Vec<(u64, String)>> {
        let rows = sqlx::query("SELECT seq, kind FROM events WHERE device_id = ? ORDER BY seq")
            .bind(device.as_str())
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<i64, _>("seq")? as u64, r.try_get("kind")?)))
            .collect()
    }

    async fn create_console_user(
        &self,
        username: &str,
        password_hash: &str,
        role: &str,
        site: Option<SiteId>,
        at: Timestamp,
    ) -> Result<()> {
        let done = sqlx::query(
            "INSERT INTO console_users (username, password_hash, role, site_id, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(username)
        .bind(password_hash)
        .bind(role)
        .bind(site.map(|s| s.0))
        .bind(millis(at))
        .execute(&self.writer)
        .await;
        match done {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::UserExists(username.into()))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn append_audit(&self, entry: AuditEntry<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(millis(entry.at))
        .bind(entry.actor)
        .bind(entry.action)
        .bind(entry.target)
        .bind(entry.detail)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn activity_inputs(
        &self,
        filter: &DeviceFilter,
        since: Timestamp,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<Vec<ActivityInput>> {
        activity::activity_inputs(self, filter, since, after, limit).await
    }

    async fn record_activity(
        &self,
        verdicts: &[ActivityVerdict],
        at: Timestamp,
    ) -> Result<ActivityChanges> {
        activity::record_activity(self, verdicts, at).await
    }

    async fn stored_activity(&self, filter: &DeviceFilter) -> Result<Vec<StoredActivity>> {
        activity::stored_activity(self, filter).await
    }

    async fn devices_due(&self, at: Timestamp, limit: usize) -> Result<Vec<DeviceId>> {
        activity::devices_due(self, at, limit).await
    }

    async fn list_flags(
        &self,
        filter: &DeviceFilter,
        state: Option<FlagState>,
    ) -> Result<Vec<FlagRecord>> {
        activity::list_flags(self, filter, state).await
    }

    async fn flag(&self, id: i64) -> Result<Option<FlagRecord>> {
        let mut connection = self.reader.acquire().await?;
        activity::flag(&mut connection, id).await
    }

    async fn flag_history(&self, id: i64) -> Result<Vec<FlagTransition>> {
        activity::flag_history(self, id).await
    }

    async fn transition_flag(
        &self,
        id: i64,
        action: FlagAction,
        actor: &str,
        reason: &str,
        at: Timestamp,
    ) -> Result<Result<FlagRecord, FlagError>> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let outcome = activity::transition_in(&mut tx, id, action, actor, reason, at).await?;
        if outcome.is_ok() {
            tx.commit().await?;
        }
        Ok(outcome)
    }

    async fn import_directory(
        &self,
        site: SiteId,
        accounts: &[DirectoryAccount],
        at: Timestamp,
    ) -> Result<DirectoryImport> {
        mfa::import_directory(self, site, accounts, at).await
    }

    async fn directory(&self, site: SiteId) -> Result<Vec<DirectoryAccount>> {
        mfa::directory(self, site).await
    }

    async fn record_mfa_completions(
        &self,
        completions: &[NewMfaCompletion],
        at: Timestamp,
    ) -> Result<u64> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let inserted = mfa::record_completions(&mut tx, completions, at).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    async fn mfa_completions_for(
        &self,
        devices: &[DeviceId],
        as_of: Timestamp,
    ) -> Result<Vec<(DeviceId, String, Timestamp)>> {
        mfa::completions_for(self, devices, as_of).await
    }

    async fn record_mfa(&self, verdicts: &[MfaVerdict], at: Timestamp) -> Result<ActivityChanges> {
        mfa::record_mfa(self, verdicts, at).await
    }

    async fn mfa_pairs(
        &self,
        filter: &DeviceFilter,
        status: Option<MfaStatus>,
    ) -> Result<Vec<StoredPair>> {
        mfa::pairs(self, filter, status).await
    }

    async fn create_api_token(
        &self,
        site: SiteId,
        token_sha256: &str,
        label: &str,
        at: Timestamp,
    ) -> Result<i64> {
        mfa::create_api_token(self, site, token_sha256, label, at).await
    }

    async fn list_api_tokens(&self, site: Option<SiteId>) -> Result<Vec<super::ApiTokenInfo>> {
        mfa::list_api_tokens(self, site).await
    }

    async fn revoke_api_token(&self, site: SiteId, id: i64, at: Timestamp) -> Result<bool> {
        mfa::revoke_api_token(self, site, id, at).await
    }

    async fn use_api_token(
        &self,
        token_sha256: &str,
        at: Timestamp,
    ) -> Result<Option<super::ApiTokenInfo>> {
        mfa::use_api_token(self, token_sha256, at).await
    }

    async fn add_recipient(&self, recipient: &super::Recipient, at: Timestamp) -> Result<i64> {
        notify::add_recipient(self, recipient, at).await
    }

    async fn recipients(&self, site: Option<SiteId>) -> Result<Vec<super::Recipient>> {
        notify::recipients(self, site).await
    }

    async fn remove_recipient(&self, site: SiteId, id: i64) -> Result<bool> {
        notify::remove_recipient(self, site, id).await
    }

    async fn new_notification_events(&self, limit: usize) -> Result<Vec<super::NotificationEvent>> {
        notify::new_events(self, limit).await
    }

    async fn queue_notifications(
        &self,
        event: Option<i64>,
        messages: &[super::NewNotification],
        at: Timestamp,
    ) -> Result<u64> {
        notify::queue(self, event, messages, at).await
    }

    async fn claim_notifications(
        &self,
        owner: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
        channels: &[&str],
    ) -> Result<Vec<super::Notification>> {
        notify::claim(self, owner, now, lease_until, limit, channels).await
    }

    async fn notification_sent(&self, id: i64, at: Timestamp) -> Result<()> {
        notify::sent(self, id, at).await
    }

    async fn notification_failed(
        &self,
        id: i64,
        error: &str,
        retry_at: Option<Timestamp>,
    ) -> Result<()> {
        notify::failed(self, id, error, retry_at).await
    }

    async fn pending_digest(&self, site: SiteId) -> Result<Vec<super::Notification>> {
        notify::pending_digest(self, site).await
    }

    async fn queue_digest(
        &self,
        site: SiteId,
        digests: &[(super::NewNotification, Vec<i64>)],
        local_date: &str,
        at: Timestamp,
    ) -> Result<()> {
        notify::queue_digest(self, site, digests, local_date, at).await
    }

    async fn digest_last_date(&self, site: SiteId) -> Result<Option<String>> {
        notify::digest_last_date(self, site).await
    }

    async fn list_notifications(&self, status: Option<&str>) -> Result<Vec<super::Notification>> {
        notify::list(self, status).await
    }

    async fn sites(&self) -> Result<Vec<Site>> {
        notify::sites(self).await
    }

    async fn list_incidents(
        &self,
        filter: &DeviceFilter,
        status: Option<&str>,
    ) -> Result<Vec<crate::incidents::IncidentRecord>> {
        incidents::list(self, filter, status).await
    }

    async fn incident(
        &self,
        id: i64,
    ) -> Result<
        Option<(
            crate::incidents::IncidentRecord,
            Vec<crate::incidents::CaptureRow>,
            SiteId,
        )>,
    > {
        incidents::show(self, id).await
    }

    async fn close_incident(&self, id: i64, reason: &str, at: Timestamp) -> Result<bool> {
        incidents::close(self, id, reason, at).await
    }

    async fn expired_captures(&self, before: Timestamp) -> Result<Vec<(i64, String)>> {
        incidents::expired(self, before).await
    }

    async fn purge_captures(&self, ids: &[i64], before: Timestamp) -> Result<u64> {
        incidents::purge(self, ids, before).await
    }

    async fn image_in_use(&self, sha256: &str) -> Result<bool> {
        incidents::image_in_use(self, sha256).await
    }

    async fn pending_commands(&self, device: &DeviceId) -> Result<Vec<CommandRecord>> {
        activity::commands(self, Some(device), false).await
    }

    async fn unsent_commands(&self) -> Result<Vec<CommandRecord>> {
        activity::commands(self, None, true).await
    }

    async fn mark_command_sent(&self, id: &str, at: Timestamp) -> Result<()> {
        activity::mark_command_sent(self, id, at).await
    }

    async fn save_site_policy(
        &self,
        site: SiteId,
        text: &str,
        sha256: &str,
        comment: &str,
        actor: &str,
        at: Timestamp,
    ) -> Result<u64> {
        policies::save(self, site, text, sha256, comment, actor, at).await
    }

    async fn site_policy(&self, site: SiteId, version: Option<u64>) -> Result<Option<SitePolicy>> {
        policies::get(self, site, version).await
    }

    async fn site_policy_history(&self, site: SiteId) -> Result<Vec<SitePolicy>> {
        policies::history(self, site).await
    }

    async fn current_policy_versions(&self) -> Result<Vec<(SiteId, u64)>> {
        policies::current_versions(self).await
    }

    async fn device_policy_versions(&self, site: SiteId) -> Result<Vec<(u64, u64)>> {
        policies::device_versions(self, site).await
    }
}

/// Test fixtures shared by the store's and its callers' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A store in `dir` with site "Cabot" and device "dev-1" (machine id
    /// "m-1") enrolled at `at`.
    pub(crate) async fn store_with_device(
        dir: &Path,
        at: Timestamp,
    ) -> (SqliteStore, Site, DeviceId) {
        let store = SqliteStore::open(&dir.join("c.db"), true).await.unwrap();
        let site = store
            .create_site("Cabot", "Europe/London", at)
            .await
            .unwrap();
        let device = DeviceId::from_string("dev-1");
        let facts = DeviceFacts {
            machine_id: "m-1".into(),
            ..DeviceFacts::default()
        };
        store
            .save_enrollment(Enrollment::active(
                device.clone(),
                site.id,
                facts,
                "00".into(),
                at,
            ))
            .await
            .unwrap();
        (store, site, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2 MiB tmpfs, unmounted on drop: a disk that can be filled.
    struct SmallDisk(tempfile::TempDir);

    impl SmallDisk {
        /// None (with a message) where mounting is not allowed.
        fn mount() -> Option<SmallDisk> {
            let dir = tempfile::tempdir().unwrap();
            let mounted = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
                .arg(dir.path())
                .output();
            match mounted {
                Ok(out) if out.status.success() => Some(SmallDisk(dir)),
                other => {
                    eprintln!("skipped: cannot mount a tmpfs here ({other:?})");
                    None
                }
            }
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0.path())
                .status();
        }
    }

    fn enrollment(n: usize, site: SiteId) -> Enrollment {
        Enrollment::active(
            DeviceId::from_string(format!("dev-{n}")),
            site,
            DeviceFacts {
                hostname: "x".repeat(64 * 1024),
                machine_id: format!("m-{n}"),
                ..DeviceFacts::default()
            },
            format!("{n:064}"),
            Timestamp::now(),
        )
    }

    #[tokio::test]
    async fn the_writer_recovers_by_itself_when_a_full_disk_has_space_again() {
        let Some(disk) = SmallDisk::mount() else {
            return;
        };
        let store = SqliteStore::open(&disk.0.path().join("c.db"), true)
            .await
            .unwrap();
        let site = store
            .create_site("Cabot", "Europe/London", Timestamp::now())
            .await
            .unwrap();
        // Fill the disk: first with a file, then with rows until a write
        // fails.
        let filler = disk.0.path().join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while std::io::Write::write_all(&mut file, &block).is_ok() {}
        drop(file);
        let mut n = 0;
        let failed = loop {
            n += 1;
            if let Err(e) = store.save_enrollment(enrollment(n, site.id)).await {
                break e;
            }
            assert!(n < 1_000, "the disk never filled");
        };
        eprintln!("full: {failed}");
        // Space returns: the next writes succeed without a restart.
        std::fs::remove_file(&filler).unwrap();
        for m in n + 1..n + 4 {
            store
                .save_enrollment(enrollment(m, site.id))
                .await
                .unwrap_or_else(|e| panic!("write {m} after space returned: {e}"));
        }
        store.close().await;
    }

    #[tokio::test]
    async fn backups_are_whole_and_sound() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("c.db"), true)
            .await
            .unwrap();
        let site = store
            .create_site("Cabot", "Europe/London", Timestamp::now())
            .await
            .unwrap();
        store.save_enrollment(enrollment(1, site.id)).await.unwrap();
        let copy = dir.path().join("backup.db");
        store.backup(&copy).await.unwrap();
        let restored = SqliteStore::open(&copy, false).await.unwrap();
        assert_eq!(restored.quick_check().await.unwrap(), Ok(()));
        assert_eq!(restored.list_devices(None).await.unwrap().len(), 1);
    }
}
