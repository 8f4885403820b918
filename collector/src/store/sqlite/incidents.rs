//! SQLite: captures and incidents.

use async_trait::async_trait;
use jiff::Timestamp;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

use super::{SqliteStore, instant, millis, optional_instant};
use crate::alerts::{FileAlerts, Subject, Threshold, should_alert, threshold_summary};
use crate::incidents::{CaptureRow, IncidentRecord};
use crate::model::{CaptureRecord, CaptureReview, ContextEntry, DeviceId, SiteId};
use crate::review::{
    CaptureStatus, Change, Decision, HistoryEntry, IncidentReview, ReviewError, ReviewRequest,
    ReviewState,
};
use crate::store::{DeviceFilter, Result, StoreError};

/// Records a capture event (inside `record_batch`): the capture row, its
/// incident (joined or opened), and a notification event when the incident
/// becomes severe.
#[allow(clippy::too_many_arguments)]
pub(super) async fn record_capture(
    tx: &mut SqliteConnection,
    window: jiff::SignedDuration,
    alerts: &FileAlerts,
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
    let opened = open.is_none();
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
    let capture_id: i64 = sqlx::query_scalar(
        "INSERT INTO captures (incident_id, device_id, seq, occurred_at, rule_id, category, severity, matched_text, \
         window_title, process_name, account, image_sha256, image_status, no_image_reason, repeat_count, \
         kind, file_path, file_sha256, policy_version) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
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
    .fetch_one(&mut *tx)
    .await?;
    for (position, entry) in capture.context.iter().enumerate() {
        sqlx::query(
            "INSERT INTO capture_context (capture_id, position, title, process_name, first_seen, last_seen) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(capture_id)
        .bind(position as i64)
        .bind(&entry.title)
        .bind(&entry.process_name)
        .bind(millis(entry.first_seen))
        .bind(millis(entry.last_seen))
        .execute(&mut *tx)
        .await?;
    }
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
    let (name,): (String,) = sqlx::query_as("SELECT name FROM sites WHERE id = ?")
        .bind(site)
        .fetch_one(&mut *tx)
        .await?;
    let console = super::alerts::alert_override_in(tx, site).await?;
    let settings = alerts.effective(&name, console).settings;
    // The first capture of an incident in an instant category, unless it
    // already alerted as severe.
    if opened && !became_severe && settings.is_instant(&capture.category) {
        sqlx::query(
            "INSERT INTO notification_events (site_id, kind, device_id, severity, summary, at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(site)
        .bind(crate::alerts::CAPTURE_INSTANT)
        .bind(device.as_str())
        .bind(severity)
        .bind(format!("incident #{incident}: {}", capture.category))
        .bind(millis(at))
        .execute(&mut *tx)
        .await?;
    }
    for threshold in settings.thresholds_for(&capture.category) {
        record_threshold(
            tx,
            site,
            device,
            incident,
            occurred_at,
            capture,
            threshold,
            at,
        )
        .await?;
    }
    Ok(())
}

/// Counts the device's and the account's captures of the threshold's
/// category in the period ending at this capture (false positives left
/// out), and writes one `capture_threshold` event when either crosses
/// (`alerts::should_alert`), with an alert row for each subject that did.
#[allow(clippy::too_many_arguments)]
async fn record_threshold(
    tx: &mut SqliteConnection,
    site: i64,
    device: &DeviceId,
    incident: i64,
    occurred_at: Timestamp,
    capture: &CaptureRecord,
    threshold: &Threshold,
    at: Timestamp,
) -> Result<()> {
    let since = millis(occurred_at - threshold.period());
    let mut crossed: Vec<(Subject, String, u64)> = Vec::new();
    for subject in [Subject::Device, Subject::Account] {
        let (key, count): (String, i64) = match subject {
            Subject::Device => (
                device.as_str().to_owned(),
                sqlx::query_scalar(
                    "SELECT count(*) FROM captures WHERE device_id = ? AND category = ?                      AND occurred_at > ? AND occurred_at <= ? AND review_status <> 'false_positive'",
                )
                .bind(device.as_str())
                .bind(&capture.category)
                .bind(since)
                .bind(millis(occurred_at))
                .fetch_one(&mut *tx)
                .await?,
            ),
            Subject::Account if capture.account.is_empty() => continue,
            Subject::Account => (
                capture.account.clone(),
                sqlx::query_scalar(
                    "SELECT count(*) FROM captures WHERE account = ? AND category = ?                      AND occurred_at > ? AND occurred_at <= ? AND review_status <> 'false_positive'                      AND device_id IN (SELECT id FROM devices WHERE site_id = ?)",
                )
                .bind(&capture.account)
                .bind(&capture.category)
                .bind(since)
                .bind(millis(occurred_at))
                .bind(site)
                .fetch_one(&mut *tx)
                .await?,
            ),
        };
        let period = threshold.period();
        let nearest: Option<i64> = sqlx::query_scalar(
            "SELECT crossed_at FROM capture_threshold_alerts WHERE site_id = ? AND subject_kind = ?              AND subject = ? AND category = ? AND days = ? AND crossed_at > ? AND crossed_at < ?              ORDER BY abs(crossed_at - ?) LIMIT 1",
        )
        .bind(site)
        .bind(subject.as_str())
        .bind(&key)
        .bind(&capture.category)
        .bind(i64::from(threshold.days))
        .bind(millis(occurred_at - period))
        .bind(millis(occurred_at + period))
        .bind(millis(occurred_at))
        .fetch_optional(&mut *tx)
        .await?;
        let nearest = nearest.map(super::instant).transpose()?;
        if should_alert(count as u64, threshold, nearest, occurred_at) {
            crossed.push((subject, key, count as u64));
        }
    }
    // One message when the device and the account cross together.
    let Some((first, _, count)) = crossed.first() else {
        return Ok(());
    };
    let event: i64 = sqlx::query_scalar(
        "INSERT INTO notification_events (site_id, kind, device_id, severity, summary, at)          VALUES (?, ?, ?, 0, ?, ?) RETURNING id",
    )
    .bind(site)
    .bind(crate::alerts::CAPTURE_THRESHOLD)
    .bind(device.as_str())
    .bind(threshold_summary(*first, *count, threshold, incident))
    .bind(millis(at))
    .fetch_one(&mut *tx)
    .await?;
    for (subject, key, count) in &crossed {
        sqlx::query(
            "INSERT INTO capture_threshold_alerts (site_id, subject_kind, subject, category, count, days, crossed_at, event_id)              VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(site)
        .bind(subject.as_str())
        .bind(key)
        .bind(&capture.category)
        .bind(*count as i64)
        .bind(i64::from(threshold.days))
        .bind(millis(occurred_at))
        .bind(event)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

const INCIDENT_SELECT: &str = "SELECT i.*, s.name AS site, d.hostname, \
     (SELECT count(*) FROM captures c WHERE c.incident_id = i.id AND c.review_status = 'new') AS unreviewed, \
     (SELECT count(*) FROM captures c WHERE c.incident_id = i.id AND c.review_status IN ('new', 'triaged')) AS open_captures, \
     (SELECT count(*) FROM captures c WHERE c.incident_id = i.id) AS held_captures, \
     (SELECT min(c.occurred_at) FROM captures c WHERE c.incident_id = i.id AND c.review_status = 'new') AS oldest_unreviewed \
     FROM incidents i JOIN sites s ON s.id = i.site_id JOIN devices d ON d.id = i.device_id";

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
        review: IncidentReview {
            unreviewed: r.try_get("unreviewed")?,
            open: r.try_get("open_captures")?,
            oldest_unreviewed_at: optional_instant(r.try_get("oldest_unreviewed")?)?,
        },
        // Captures held now: a purge leaves the incident's count as it was.
        reviewed: r.try_get::<i64, _>("open_captures")? == 0
            && r.try_get::<i64, _>("held_captures")? > 0,
    })
}

fn capture_from_row(r: &SqliteRow) -> Result<CaptureRow> {
    let status: String = r.try_get("review_status")?;
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
        context: Vec::new(),
        review: CaptureReview {
            status: parse_status(&status)?,
            grade: r.try_get("grade")?,
            outcome: r.try_get("outcome")?,
            reference: r.try_get("outcome_reference")?,
            first_reviewed_at: optional_instant(r.try_get("first_reviewed_at")?)?,
            first_review_ms: r.try_get("first_review_ms")?,
        },
    })
}

fn parse_status(text: &str) -> Result<CaptureStatus> {
    CaptureStatus::parse(text)
        .ok_or_else(|| StoreError::Corrupt(format!("capture review status '{text}'")))
}

/// One history row: what `Change` it records, in three text columns.
fn change_columns(change: &Change) -> (&'static str, String, String, &str, &str) {
    match change {
        Change::Status {
            from,
            to,
            outcome,
            reference,
        } => (
            "status",
            from.as_str().to_owned(),
            to.as_str().to_owned(),
            outcome,
            reference,
        ),
        Change::Grade { from, to } => ("grade", from.to_string(), to.to_string(), "", ""),
        Change::Note { text } => ("note", String::new(), String::new(), text, ""),
    }
}

fn history_from_row(r: &SqliteRow) -> Result<HistoryEntry> {
    let kind: String = r.try_get("kind")?;
    let from: String = r.try_get("from_value")?;
    let to: String = r.try_get("to_value")?;
    let text: String = r.try_get("text")?;
    let grade = |v: &str| {
        v.parse::<i64>()
            .map_err(|_| StoreError::Corrupt(format!("capture review grade '{v}'")))
    };
    let change = match kind.as_str() {
        "status" => Change::Status {
            from: parse_status(&from)?,
            to: parse_status(&to)?,
            outcome: text,
            reference: r.try_get("reference")?,
        },
        "grade" => Change::Grade {
            from: grade(&from)?,
            to: grade(&to)?,
        },
        "note" => Change::Note { text },
        other => {
            return Err(StoreError::Corrupt(format!(
                "capture review kind '{other}'"
            )));
        }
    };
    Ok(HistoryEntry {
        capture_id: r.try_get("capture_id")?,
        at: instant(r.try_get("at")?)?,
        actor: r.try_get("actor")?,
        change,
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
             AND (?3 IS NULL OR i.status = ?3) \
             ORDER BY oldest_unreviewed IS NULL, oldest_unreviewed, i.severity DESC, i.last_at DESC"
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
        let mut captures = rows
            .iter()
            .map(capture_from_row)
            .collect::<Result<Vec<_>>>()?;
        let context = sqlx::query(
            "SELECT x.* FROM capture_context x JOIN captures c ON c.id = x.capture_id \
             WHERE c.incident_id = ? ORDER BY x.capture_id, x.position",
        )
        .bind(id)
        .fetch_all(&self.reader)
        .await?;
        for row in &context {
            let capture_id: i64 = row.try_get("capture_id")?;
            let entry = ContextEntry {
                title: row.try_get("title")?,
                process_name: row.try_get("process_name")?,
                first_seen: instant(row.try_get("first_seen")?)?,
                last_seen: instant(row.try_get("last_seen")?)?,
            };
            if let Some(capture) = captures.iter_mut().find(|c| c.id == capture_id) {
                capture.context.push(entry);
            }
        }
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

    async fn capture_place(&self, capture: i64) -> Result<Option<(i64, SiteId)>> {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT c.incident_id, i.site_id FROM captures c JOIN incidents i ON i.id = c.incident_id WHERE c.id = ?",
        )
        .bind(capture)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.map(|(incident, site)| (incident, SiteId(site))))
    }

    async fn review_capture(
        &self,
        capture: i64,
        request: &ReviewRequest,
        actor: &str,
        at: Timestamp,
    ) -> Result<std::result::Result<Decision, ReviewError>> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query(
            "SELECT incident_id, review_status, severity, grade, occurred_at, first_reviewed_at \
             FROM captures WHERE id = ?",
        )
        .bind(capture)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(Err(ReviewError::NotFound(capture)));
        };
        let incident: i64 = row.try_get("incident_id")?;
        let state = ReviewState {
            id: capture,
            status: parse_status(&row.try_get::<String, _>("review_status")?)?,
            pregrade: row.try_get("severity")?,
            grade: row.try_get("grade")?,
            occurred_at: instant(row.try_get("occurred_at")?)?,
            first_reviewed_at: optional_instant(row.try_get("first_reviewed_at")?)?,
        };
        let decision = match crate::review::decide(&state, request, at) {
            Ok(decision) => decision,
            Err(refused) => return Ok(Err(refused)),
        };
        sqlx::query("UPDATE captures SET review_status = ?, grade = ? WHERE id = ?")
            .bind(decision.status.as_str())
            .bind(decision.grade)
            .bind(capture)
            .execute(&mut *tx)
            .await?;
        if let Some((outcome, reference)) = &decision.outcome {
            sqlx::query("UPDATE captures SET outcome = ?, outcome_reference = ? WHERE id = ?")
                .bind(outcome)
                .bind(reference)
                .bind(capture)
                .execute(&mut *tx)
                .await?;
        }
        if let Some((when, waited)) = decision.first_review {
            sqlx::query(
                "UPDATE captures SET first_reviewed_at = ?, first_review_ms = ? WHERE id = ? AND first_reviewed_at IS NULL",
            )
            .bind(millis(when))
            .bind(waited.as_millis() as i64)
            .bind(capture)
            .execute(&mut *tx)
            .await?;
        }
        for change in &decision.changes {
            let (kind, from, to, text, reference) = change_columns(change);
            sqlx::query(
                "INSERT INTO capture_reviews (capture_id, incident_id, at, actor, kind, from_value, to_value, text, reference) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(capture)
            .bind(incident)
            .bind(millis(at))
            .bind(actor)
            .bind(kind)
            .bind(from)
            .bind(to)
            .bind(text)
            .bind(reference)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Ok(decision))
    }

    async fn incident_history(&self, incident: i64) -> Result<Vec<HistoryEntry>> {
        let rows = sqlx::query(
            "SELECT capture_id, at, actor, kind, from_value, to_value, text, reference \
             FROM capture_reviews WHERE incident_id = ? ORDER BY id",
        )
        .bind(incident)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(history_from_row).collect()
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
                sqlx::query("DELETE FROM capture_context WHERE capture_id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
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
    use crate::store::sqlite::testing::{snapshot, store_with_device};
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
                matched_text: "matched words".into(),
                window_title: "a window".into(),
                image_sha256: image.into(),
                image_status: "verified".into(),
                no_image_reason: String::new(),
                ..snapshot(category, 3)
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

    #[tokio::test]
    async fn a_review_is_applied_with_its_history_in_one_go_and_refusals_change_nothing() {
        use crate::review::{CaptureStatus as S, Change, Grade, ReviewError, ReviewRequest};
        let dir = tempfile::tempdir().unwrap();
        let (store, _site, device) = store_with_device(dir.path(), t(0)).await;
        store
            .record_batch(
                &device,
                &[
                    capture(1, t(1), "weapons", "aa"),
                    capture(2, t(2), "weapons", "bb"),
                    capture(3, t(3), "drugs", "cc"),
                ],
                t(3),
            )
            .await
            .unwrap();
        let list = store
            .list_incidents(&DeviceFilter::default(), None)
            .await
            .unwrap();
        // Both incidents wait; the one whose new capture is oldest first.
        assert_eq!(list[0].category, "weapons");
        assert_eq!(list[0].review.unreviewed, 2);
        assert_eq!(list[0].review.oldest_unreviewed_at, Some(t(1)));
        assert!(!list[0].reviewed);
        let weapons = list[0].id;
        let (_, captures, site) = store.incident(weapons).await.unwrap().unwrap();
        let (first, second) = (captures[0].id, captures[1].id);
        assert_eq!(
            store.capture_place(first).await.unwrap(),
            Some((weapons, site))
        );
        assert_eq!(store.capture_place(999).await.unwrap(), None);

        // Refused: nothing written, not even the note.
        let refused = store
            .review_capture(
                first,
                &ReviewRequest {
                    status: Some(S::Concern),
                    note: "a note".into(),
                    ..ReviewRequest::default()
                },
                "console:dsl1",
                t(1),
            )
            .await
            .unwrap();
        assert_eq!(refused, Err(ReviewError::OutcomeRequired("concern")));
        assert!(store.incident_history(weapons).await.unwrap().is_empty());
        assert_eq!(
            store
                .review_capture(999, &ReviewRequest::default(), "x", t(1))
                .await
                .unwrap(),
            Err(ReviewError::NotFound(999))
        );

        // Triaged an hour after the capture, then closed with a regrade.
        store
            .review_capture(
                first,
                &ReviewRequest {
                    status: Some(S::Triaged),
                    ..ReviewRequest::default()
                },
                "console:dsl1",
                t(2),
            )
            .await
            .unwrap()
            .unwrap();
        store
            .review_capture(
                first,
                &ReviewRequest {
                    status: Some(S::Escalated),
                    grade: Some(Grade::new(5).unwrap()),
                    outcome: "referred to the LADO".into(),
                    reference: "CPOMS-77".into(),
                    note: "head teacher told".into(),
                },
                "cli:dsl.jones",
                t(3),
            )
            .await
            .unwrap()
            .unwrap();
        let (_, captures, _) = store.incident(weapons).await.unwrap().unwrap();
        let reviewed = &captures[0].review;
        assert_eq!(reviewed.status, S::Escalated);
        assert_eq!(reviewed.grade, Some(5));
        assert_eq!(captures[0].severity, 3, "the pregrade is kept");
        assert_eq!(reviewed.outcome, "referred to the LADO");
        assert_eq!(reviewed.reference, "CPOMS-77");
        assert_eq!(reviewed.first_reviewed_at, Some(t(2)));
        assert_eq!(reviewed.first_review_ms, Some(3600 * 1000));
        let history = store.incident_history(weapons).await.unwrap();
        let kinds: Vec<_> = history
            .iter()
            .map(|h| match &h.change {
                Change::Status { to, .. } => to.as_str(),
                Change::Grade { .. } => "grade",
                Change::Note { .. } => "note",
            })
            .collect();
        assert_eq!(kinds, ["triaged", "escalated", "grade", "note"]);
        assert_eq!(history[1].actor, "cli:dsl.jones");
        assert_eq!(history[2].change, Change::Grade { from: 3, to: 5 });

        // One capture still new: the incident is not reviewed yet, and now
        // the drugs incident (no older new capture) waits longer.
        let list = store
            .list_incidents(&DeviceFilter::default(), None)
            .await
            .unwrap();
        assert_eq!(list[0].category, "weapons");
        assert_eq!(list[0].review.oldest_unreviewed_at, Some(t(2)));
        store
            .review_capture(
                second,
                &ReviewRequest {
                    status: Some(S::FalsePositive),
                    outcome: "a history lesson".into(),
                    ..ReviewRequest::default()
                },
                "console:dsl1",
                t(4),
            )
            .await
            .unwrap()
            .unwrap();
        let list = store
            .list_incidents(&DeviceFilter::default(), None)
            .await
            .unwrap();
        assert_eq!(list[0].category, "drugs", "the unreviewed one first");
        let weapons_now = list.iter().find(|i| i.id == weapons).unwrap();
        assert!(weapons_now.reviewed);
        assert_eq!(
            weapons_now.status, "open",
            "the incident's own status is the DSL's"
        );

        // Retention takes a capture's history with it.
        store.close_incident(weapons, "done", t(5)).await.unwrap();
        let ids: Vec<i64> = store
            .expired_captures(site, t(24 * 400))
            .await
            .unwrap()
            .iter()
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(store.purge_captures(&ids, t(24 * 400)).await.unwrap(), 2);
        assert!(store.incident_history(weapons).await.unwrap().is_empty());
        let gone = store
            .list_incidents(&DeviceFilter::default(), Some("closed"))
            .await
            .unwrap();
        assert!(!gone[0].reviewed, "no captures held: not called reviewed");
    }
}
