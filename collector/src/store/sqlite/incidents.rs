//! SQLite: captures and incidents.

use async_trait::async_trait;
use jiff::Timestamp;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

use super::{SqliteStore, instant, millis};
use crate::incidents::{CaptureRow, IncidentRecord};
use crate::model::{CaptureRecord, DeviceId, SiteId};
use crate::store::{DeviceFilter, Result};

/// Records a capture event (inside `record_batch`): the capture row, its
/// incident (joined or opened), and a notification event when the incident
/// becomes severe.
pub(super) async fn record_capture(
    tx: &mut SqliteConnection,
    window: jiff::SignedDuration,
    device: &DeviceId,
    seq: u64,
    occurred_at: Timestamp,
    capture: &CaptureRecord,
    at: Timestamp,
) -> Result<()> {
    // A resent capture (in a batch that also held new events) was applied
    // when first stored.
    let held: Option<i64> =
        sqlx::query_scalar("SELECT id FROM captures WHERE device_id = ? AND seq = ?")
            .bind(device.as_str())
            .bind(seq as i64)
            .fetch_optional(&mut *tx)
            .await?;
    if held.is_some() {
        return Ok(());
    }
    let site: i64 = sqlx::query_scalar("SELECT site_id FROM devices WHERE id = ?")
        .bind(device.as_str())
        .fetch_one(&mut *tx)
        .await?;
    let open: Option<(i64, i64)> = sqlx::query_as(
        "SELECT id, severity FROM incidents WHERE device_id = ? AND account = ? AND category = ? \
         AND status = 'open' AND last_at >= ? ORDER BY id DESC LIMIT 1",
    )
    .bind(device.as_str())
    .bind(&capture.account)
    .bind(&capture.category)
    .bind(millis(occurred_at - window))
    .fetch_optional(&mut *tx)
    .await?;
    let severity = i64::from(capture.severity);
    let (incident, became_severe) = match open {
        Some((id, before)) => {
            sqlx::query(
                "UPDATE incidents SET severity = max(severity, ?), last_at = max(last_at, ?), \
                 capture_count = capture_count + 1 WHERE id = ?",
            )
            .bind(severity)
            .bind(millis(occurred_at))
            .bind(id)
            .execute(&mut *tx)
            .await?;
            (id, before < 4 && severity >= 4)
        }
        None => {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO incidents (site_id, device_id, account, category, severity, opened_at, last_at, capture_count) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, 1) RETURNING id",
            )
            .bind(site)
            .bind(device.as_str())
            .bind(&capture.account)
            .bind(&capture.category)
            .bind(severity)
            .bind(millis(occurred_at))
            .bind(millis(occurred_at))
            .fetch_one(&mut *tx)
            .await?;
            (id, severity >= 4)
        }
    };
    sqlx::query(
        "INSERT INTO captures (incident_id, device_id, seq, occurred_at, rule_id, category, severity, matched_text, \
         window_title, process_name, account, image_sha256, image_status, no_image_reason, repeat_count, \
         kind, file_path, file_sha256, policy_version) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(incident)
    .bind(device.as_str())
    .bind(seq as i64)
    .bind(millis(occurred_at))
    .bind(&capture.rule_id)
    .bind(&capture.category)
    .bind(severity)
    .bind(&capture.matched_text)
    .bind(&capture.window_title)
    .bind(&capture.process_name)
    .bind(&capture.account)
    .bind(&capture.image_sha256)
    .bind(&capture.image_status)
    .bind(&capture.no_image_reason)
    .bind(i64::from(capture.repeat_count))
    .bind(&capture.kind)
    .bind(&capture.file_path)
    .bind(&capture.file_sha256)
    .bind(capture.policy_version as i64)
    .execute(&mut *tx)
    .await?;
    if became_severe {
        // Category and severity only: no matched text, no account.
        sqlx::query(
            "INSERT INTO notification_events (site_id, kind, device_id, severity, summary, at) VALUES (?, 'capture_severe', ?, ?, ?, ?)",
        )
        .bind(site)
        .bind(device.as_str())
        .bind(severity)
        .bind(format!("incident #{incident}: {}", capture.category))
        .bind(millis(at))
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

const INCIDENT_SELECT: &str = "SELECT i.*, s.name AS site, d.hostname FROM incidents i \
     JOIN sites s ON s.id = i.site_id JOIN devices d ON d.id = i.device_id";

fn incident_from_row(r: &SqliteRow) -> Result<IncidentRecord> {
    Ok(IncidentRecord {
        id: r.try_get("id")?,
        site: r.try_get("site")?,
        device_id: DeviceId::from_string(r.try_get::<String, _>("device_id")?),
        hostname: r.try_get("hostname")?,
        account: r.try_get("account")?,
        category: r.try_get("category")?,
        severity: r.try_get("severity")?,
        status: r.try_get("status")?,
        opened_at: instant(r.try_get("opened_at")?)?,
        last_at: instant(r.try_get("last_at")?)?,
        capture_count: r.try_get("capture_count")?,
    })
}

#[async_trait]
impl crate::store::IncidentStore for SqliteStore {
    async fn list_incidents(
        &self,
        filter: &DeviceFilter,
        status: Option<&str>,
    ) -> Result<Vec<IncidentRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{INCIDENT_SELECT} WHERE (?1 IS NULL OR i.site_id = ?1) AND (?2 IS NULL OR i.device_id = ?2) \
             AND (?3 IS NULL OR i.status = ?3) ORDER BY i.severity DESC, i.last_at DESC"
        )))
        .bind(filter.site.map(|s| s.0))
        .bind(filter.device.as_ref().map(|d| d.as_str().to_owned()))
        .bind(status)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(incident_from_row).collect()
    }

    async fn incident(&self, id: i64) -> Result<Option<(IncidentRecord, Vec<CaptureRow>, SiteId)>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{INCIDENT_SELECT} WHERE i.id = ?"
        )))
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let incident = incident_from_row(&row)?;
        let site = SiteId(row.try_get("site_id")?);
        let rows =
            sqlx::query("SELECT * FROM captures WHERE incident_id = ? ORDER BY occurred_at, id")
                .bind(id)
                .fetch_all(&self.reader)
                .await?;
        let captures = rows
            .iter()
            .map(|r| {
                Ok(CaptureRow {
                    id: r.try_get("id")?,
                    seq: r.try_get("seq")?,
                    occurred_at: instant(r.try_get("occurred_at")?)?,
                    rule_id: r.try_get("rule_id")?,
                    category: r.try_get("category")?,
                    severity: r.try_get("severity")?,
                    matched_text: r.try_get("matched_text")?,
                    window_title: r.try_get("window_title")?,
                    process_name: r.try_get("process_name")?,
                    account: r.try_get("account")?,
                    image_sha256: r.try_get("image_sha256")?,
                    image_status: r.try_get("image_status")?,
                    no_image_reason: r.try_get("no_image_reason")?,
                    repeat_count: r.try_get("repeat_count")?,
                    kind: r.try_get("kind")?,
                    file_path: r.try_get("file_path")?,
                    file_sha256: r.try_get("file_sha256")?,
                    policy_version: r.try_get("policy_version")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some((incident, captures, site)))
    }

    async fn close_incident(&self, id: i64, reason: &str, at: Timestamp) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE incidents SET status = 'closed', closed_at = ?, close_reason = ? WHERE id = ? AND status = 'open'",
        )
        .bind(millis(at))
        .bind(reason)
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn expired_captures(
        &self,
        site: SiteId,
        before: Timestamp,
    ) -> Result<Vec<(i64, String)>> {
        Ok(sqlx::query_as(
            "SELECT c.id, c.image_sha256 FROM captures c JOIN incidents i ON i.id = c.incident_id \
             WHERE i.site_id = ? AND c.occurred_at < ? AND i.status = 'closed' ORDER BY c.id",
        )
        .bind(site.0)
        .bind(millis(before))
        .fetch_all(&self.reader)
        .await?)
    }

    async fn purge_captures(&self, ids: &[i64], before: Timestamp) -> Result<u64> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let mut purged = 0;
        for id in ids {
            let row: Option<(String, i64)> = sqlx::query_as(
                "DELETE FROM captures WHERE id = ? AND occurred_at < ? RETURNING device_id, seq",
            )
            .bind(id)
            .bind(millis(before))
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((device, seq)) = row {
                // The event row stays (it is the record that this sequence
                // number arrived); what it said goes.
                sqlx::query(
                    "UPDATE events SET body = json_object('kind', kind, 'purged', json('true')) \
                     WHERE device_id = ? AND seq = ? AND kind IN ('capture', 'file_alert')",
                )
                .bind(device)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
                purged += 1;
            }
        }
        tx.commit().await?;
        Ok(purged)
    }

    async fn image_in_use(&self, sha256: &str) -> Result<bool> {
        let used: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM captures WHERE image_sha256 = ? LIMIT 1")
                .bind(sha256)
                .fetch_optional(&self.writer)
                .await?;
        Ok(used.is_some())
    }
}

#[cfg(test)]
mod tests {
    use jiff::{SignedDuration, Timestamp};

    use crate::model::{CaptureRecord, Event, EventBody, Seq, SiteId};
    use crate::store::sqlite::testing::store_with_device;
    use crate::store::{DeviceFilter, IncidentStore, IngestStore};

    fn t(hours: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap() + SignedDuration::from_hours(hours)
    }

    fn capture(seq: u64, at: Timestamp, category: &str, image: &str) -> Event {
        Event {
            seq: Seq(seq),
            event_id: format!("e-{seq}"),
            occurred_at: at,
            body: EventBody::Capture(CaptureRecord {
                rule_id: "r1".into(),
                category: category.into(),
                severity: 3,
                matched_text: "matched words".into(),
                window_title: "a window".into(),
                process_name: "firefox".into(),
                account: "pupil1".into(),
                image_sha256: image.into(),
                image_status: "verified".into(),
                no_image_reason: String::new(),
                repeat_count: 0,
                kind: "snapshot".into(),
                file_path: String::new(),
                file_sha256: String::new(),
                policy_version: 0,
                image: Vec::new(),
            }),
        }
    }

    #[tokio::test]
    async fn retention_takes_only_old_captures_of_closed_incidents_and_keeps_the_event_record() {
        let dir = tempfile::tempdir().unwrap();
        let (store, site, device) = store_with_device(dir.path(), t(0)).await;
        // Two incidents: "gambling" (old capture, then closed) and
        // "weapons" (old capture, left open); one recent gambling capture
        // in an incident of its own (the window has passed).
        let events = [
            capture(1, t(1), "gambling", "aa"),
            capture(2, t(2), "weapons", "bb"),
            capture(3, t(24 * 40), "gambling", "cc"),
        ];
        store
            .record_batch(&device, &events, t(24 * 40))
            .await
            .unwrap();
        let incidents = store
            .list_incidents(&DeviceFilter::one(device.clone()), None)
            .await
            .unwrap();
        assert_eq!(incidents.len(), 3, "{incidents:?}");
        let old_gambling = incidents
            .iter()
            .find(|i| i.category == "gambling" && i.opened_at == t(1))
            .unwrap();
        assert!(
            store
                .close_incident(old_gambling.id, "no concern", t(24 * 41))
                .await
                .unwrap()
        );
        assert!(
            !store
                .close_incident(old_gambling.id, "again", t(24 * 41))
                .await
                .unwrap()
        );
        let recent = incidents
            .iter()
            .find(|i| i.opened_at == t(24 * 40))
            .unwrap();
        store
            .close_incident(recent.id, "done", t(24 * 41))
            .await
            .unwrap();

        let before = t(24 * 30);
        let expired = store.expired_captures(site.id, before).await.unwrap();
        assert_eq!(
            expired.len(),
            1,
            "only the old capture of a closed incident: {expired:?}"
        );
        assert_eq!(expired[0].1, "aa");
        assert!(
            store
                .expired_captures(SiteId(site.id.0 + 1), before)
                .await
                .unwrap()
                .is_empty(),
            "another site's retention does not reach them"
        );
        assert!(store.image_in_use("aa").await.unwrap());

        let ids: Vec<i64> = expired.iter().map(|(id, _)| *id).collect();
        assert_eq!(store.purge_captures(&ids, before).await.unwrap(), 1);
        assert!(!store.image_in_use("aa").await.unwrap());
        assert!(
            store.image_in_use("bb").await.unwrap(),
            "open incident kept"
        );
        assert!(
            store.image_in_use("cc").await.unwrap(),
            "recent capture kept"
        );
        // A second pass finds nothing, and a purge with an id that is not
        // old enough deletes nothing.
        assert!(
            store
                .expired_captures(site.id, before)
                .await
                .unwrap()
                .is_empty()
        );
        let (recent_capture, _) =
            store.expired_captures(site.id, t(24 * 50)).await.unwrap()[0].clone();
        assert_eq!(
            store
                .purge_captures(&[recent_capture], before)
                .await
                .unwrap(),
            0
        );

        // The event rows stay (the sequence is the record of arrival), with
        // what the purged one said emptied.
        let kinds = store.event_kinds(&device).await.unwrap();
        assert_eq!(kinds.len(), 3);
        let body: String = sqlx::query_scalar("SELECT body FROM events WHERE seq = 1")
            .fetch_one(&store.reader)
            .await
            .unwrap();
        assert!(
            body.contains("purged") && !body.contains("matched words"),
            "{body}"
        );
        let kept: String = sqlx::query_scalar("SELECT body FROM events WHERE seq = 2")
            .fetch_one(&store.reader)
            .await
            .unwrap();
        assert!(kept.contains("weapons"), "{kept}");
    }
}
