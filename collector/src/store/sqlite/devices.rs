//! Devices and their enrolment: secrets, certificates, standing, listing.

use async_trait::async_trait;
use jiff::Timestamp;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::{
    SqliteStore, enforcement, facts_json, instant, millis, optional_instant, site_from_row,
};
use crate::model::{
    DeviceFacts, DeviceId, DeviceRecord, DeviceStatus, EnrollmentSecretInfo, SecretRejection, Site,
    SiteId,
};
use crate::store::{Enrollment, IdentityChange, NewSecret, Result, StoreError, StreamDevice};

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

pub(super) fn device_from_row(row: &SqliteRow) -> Result<DeviceRecord> {
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

pub(super) const DEVICE_SELECT: &str = "SELECT d.id, s.name AS site, s.timezone AS site_timezone, d.hostname, d.enrolled_at, d.last_seen_at, \
     d.heartbeat_interval_secs, d.last_seq, d.events_stored, d.facts_json, d.facts_updated_at, \
     d.enforcement, d.reenabled_at, d.policy_version, d.status, d.status_reason, d.duplicate_of, \
     (SELECT count(*) FROM monitoring_gaps g WHERE g.device_id = d.id AND g.ended_at IS NULL) AS open_gaps \
     FROM devices d JOIN sites s ON s.id = d.site_id";

const SECRET_SELECT: &str = "SELECT e.id, s.name AS site, e.hint, e.label, e.created_at, e.expires_at, \
     e.revoked_at, e.uses, e.last_used_at FROM enrollment_secrets e JOIN sites s ON s.id = e.site_id";

#[async_trait]
impl crate::store::DeviceStore for SqliteStore {
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
}
