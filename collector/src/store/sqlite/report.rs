//! `ReportStore` for SQLite: the annual review's and the risk profile's
//! reads. Each reads one site through an index of migration 0020 (or an
//! older one): `devices_site`, `monitoring_gaps_open`, `flags_site_opened`,
//! `incidents_site_last` then `captures_incident`, `captures_account`,
//! `captures_device_time`, `incidents_site_account`, `mfa_pairs_site`
//! (the `query_plans_use_indexes` test checks them).

use async_trait::async_trait;
use jiff::Timestamp;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::{SqliteStore, instant, millis, optional_instant};
use crate::annual_review::{CaptureFact, CoverageFacts, FlagSpan, IncidentFact, Period};
use crate::model::SiteId;
use crate::review::CaptureStatus;
use crate::risk::Subject;
use crate::store::{OpenIncident, ReportStore, Result, StoreError};

const COVERAGE: &str = "SELECT count(*) AS enrolled, coalesce(sum(last_seen_at >= ?2), 0) AS reporting \
     FROM devices WHERE site_id = ?1 AND status = 'active'";

const HELPERS_MISSING: &str = "SELECT count(DISTINCT g.device_id) FROM monitoring_gaps g \
     JOIN devices d ON d.id = g.device_id \
     WHERE g.ended_at IS NULL AND d.site_id = ?1 AND d.status = 'active'";

const ACTIVITY_NOW: &str = "SELECT a.status, count(*) AS n FROM devices d \
     JOIN device_activity a ON a.device_id = d.id \
     WHERE d.site_id = ?1 AND d.status = 'active' GROUP BY a.status ORDER BY a.status";

const MFA_NOW: &str = "SELECT status, count(*) AS n FROM mfa_pairs WHERE site_id = ?1 GROUP BY status ORDER BY status";

const SIGNALS: &str = "SELECT s.kind AS status, count(*) AS n FROM devices d \
     JOIN agent_signals s ON s.device_id = d.id AND s.occurred_at >= ?2 AND s.occurred_at < ?3 \
     WHERE d.site_id = ?1 GROUP BY s.kind ORDER BY s.kind";

const FLAGS: &str = "SELECT kind, opened_at, state, updated_at FROM flags \
     WHERE site_id = ?1 AND opened_at < ?3 \
     AND (state IN ('open', 'disable_approved', 'disabled') OR updated_at >= ?2)";

const CAPTURE_COLUMNS: &str = "c.occurred_at, c.device_id, c.account, c.category, c.rule_id, \
     c.severity, c.grade, c.review_status, c.first_review_ms, \
     coalesce(da.role = 'staff', 0) AS staff";

fn captures_in_period_sql() -> String {
    format!(
        "SELECT {CAPTURE_COLUMNS} FROM incidents i \
         JOIN captures c ON c.incident_id = i.id \
         LEFT JOIN directory_accounts da ON da.site_id = i.site_id AND da.username = c.account \
         WHERE i.site_id = ?1 AND i.last_at >= ?2 AND i.opened_at < ?3 \
         AND c.occurred_at >= ?2 AND c.occurred_at < ?3"
    )
}

const INCIDENTS: &str = "SELECT opened_at, category, severity, status, closed_at FROM incidents \
     WHERE site_id = ?1 AND opened_at < ?3 \
     AND (last_at >= ?2 OR status = 'open' OR closed_at >= ?2)";

fn subject_captures_sql(by_account: bool) -> String {
    let key = if by_account {
        "c.account = ?4"
    } else {
        "c.device_id = ?4"
    };
    format!(
        "SELECT {CAPTURE_COLUMNS} FROM captures c \
         JOIN incidents i ON i.id = c.incident_id \
         LEFT JOIN directory_accounts da ON da.site_id = i.site_id AND da.username = c.account \
         WHERE {key} AND c.occurred_at >= ?2 AND c.occurred_at < ?3 AND i.site_id = ?1 \
         ORDER BY c.occurred_at"
    )
}

fn subject_incidents_sql(by_account: bool) -> String {
    let key = if by_account {
        "i.site_id = ?1 AND i.account = ?2 AND i.status = 'open'"
    } else {
        "i.device_id = ?2 AND +i.site_id = ?1 AND i.status = 'open'"
    };
    format!(
        "SELECT i.id, d.hostname, i.category, i.severity, i.opened_at, i.capture_count \
         FROM incidents i JOIN devices d ON d.id = i.device_id \
         WHERE {key} ORDER BY i.severity DESC, i.opened_at"
    )
}

fn subject_key(subject: &Subject) -> (bool, String) {
    match subject {
        Subject::Account(account) => (true, account.clone()),
        Subject::Device(device) => (false, device.as_str().to_owned()),
    }
}

fn capture_fact(row: &SqliteRow) -> Result<CaptureFact> {
    let status: String = row.try_get("review_status")?;
    Ok(CaptureFact {
        occurred_at: instant(row.try_get("occurred_at")?)?,
        device: row.try_get("device_id")?,
        account: row.try_get("account")?,
        staff: row.try_get::<i64, _>("staff")? != 0,
        category: row.try_get("category")?,
        rule_id: row.try_get("rule_id")?,
        severity: row.try_get("severity")?,
        grade: row.try_get("grade")?,
        status: CaptureStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("capture review status '{status}'")))?,
        first_review_ms: row.try_get("first_review_ms")?,
    })
}

fn status_counts(rows: &[SqliteRow]) -> Result<Vec<(String, u64)>> {
    rows.iter()
        .map(|r| Ok((r.try_get("status")?, r.try_get::<i64, _>("n")? as u64)))
        .collect()
}

#[async_trait]
impl ReportStore for SqliteStore {
    async fn coverage(&self, site: SiteId, reporting_since: Timestamp) -> Result<CoverageFacts> {
        let row = sqlx::query(COVERAGE)
            .bind(site.0)
            .bind(millis(reporting_since))
            .fetch_one(&self.reader)
            .await?;
        let missing: i64 = sqlx::query_scalar(HELPERS_MISSING)
            .bind(site.0)
            .fetch_one(&self.reader)
            .await?;
        Ok(CoverageFacts {
            enrolled: row.try_get::<i64, _>("enrolled")? as u64,
            reporting: row.try_get::<i64, _>("reporting")? as u64,
            helpers_missing: missing as u64,
        })
    }

    async fn verdicts_now(&self, site: SiteId) -> Result<(Vec<(String, u64)>, Vec<(String, u64)>)> {
        let activity = sqlx::query(ACTIVITY_NOW)
            .bind(site.0)
            .fetch_all(&self.reader)
            .await?;
        let mfa = sqlx::query(MFA_NOW)
            .bind(site.0)
            .fetch_all(&self.reader)
            .await?;
        Ok((status_counts(&activity)?, status_counts(&mfa)?))
    }

    async fn signals_in_period(&self, site: SiteId, period: Period) -> Result<Vec<(String, u64)>> {
        let rows = sqlx::query(SIGNALS)
            .bind(site.0)
            .bind(millis(period.from))
            .bind(millis(period.to))
            .fetch_all(&self.reader)
            .await?;
        status_counts(&rows)
    }

    async fn flags_in_period(&self, site: SiteId, period: Period) -> Result<Vec<FlagSpan>> {
        let rows = sqlx::query(FLAGS)
            .bind(site.0)
            .bind(millis(period.from))
            .bind(millis(period.to))
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| {
                let state: String = r.try_get("state")?;
                let active = matches!(state.as_str(), "open" | "disable_approved" | "disabled");
                Ok(FlagSpan {
                    kind: r.try_get("kind")?,
                    opened_at: instant(r.try_get("opened_at")?)?,
                    // A flag in a final state last moved when it closed.
                    closed_at: if active {
                        None
                    } else {
                        Some(instant(r.try_get("updated_at")?)?)
                    },
                })
            })
            .collect()
    }

    async fn captures_in_period(&self, site: SiteId, period: Period) -> Result<Vec<CaptureFact>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(captures_in_period_sql()))
            .bind(site.0)
            .bind(millis(period.from))
            .bind(millis(period.to))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(capture_fact).collect()
    }

    async fn incidents_in_period(&self, site: SiteId, period: Period) -> Result<Vec<IncidentFact>> {
        let rows = sqlx::query(INCIDENTS)
            .bind(site.0)
            .bind(millis(period.from))
            .bind(millis(period.to))
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| {
                let status: String = r.try_get("status")?;
                Ok(IncidentFact {
                    opened_at: instant(r.try_get("opened_at")?)?,
                    category: r.try_get("category")?,
                    severity: r.try_get("severity")?,
                    closed_at: if status == "open" {
                        None
                    } else {
                        optional_instant(r.try_get("closed_at")?)?
                    },
                })
            })
            .collect()
    }

    async fn subject_captures(
        &self,
        site: SiteId,
        subject: &Subject,
        period: Period,
    ) -> Result<Vec<CaptureFact>> {
        let (by_account, key) = subject_key(subject);
        let rows = sqlx::query(sqlx::AssertSqlSafe(subject_captures_sql(by_account)))
            .bind(site.0)
            .bind(millis(period.from))
            .bind(millis(period.to))
            .bind(key)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(capture_fact).collect()
    }

    async fn subject_open_incidents(
        &self,
        site: SiteId,
        subject: &Subject,
    ) -> Result<Vec<OpenIncident>> {
        let (by_account, key) = subject_key(subject);
        let rows = sqlx::query(sqlx::AssertSqlSafe(subject_incidents_sql(by_account)))
            .bind(site.0)
            .bind(key)
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(OpenIncident {
                    id: r.try_get("id")?,
                    hostname: r.try_get("hostname")?,
                    category: r.try_get("category")?,
                    severity: r.try_get("severity")?,
                    opened_at: instant(r.try_get("opened_at")?)?,
                    capture_count: r.try_get("capture_count")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CaptureRecord, Event, EventBody, Seq, SignalKind, SignalRecord};
    use crate::review::{Grade, ReviewRequest};
    use crate::store::sqlite::testing::store_with_device;
    use crate::store::{DeviceFilter, IncidentStore, IngestStore};

    fn capture_event(seq: u64, at: Timestamp, account: &str, severity: u8) -> Event {
        Event {
            seq: Seq(seq),
            event_id: format!("e{seq}"),
            occurred_at: at,
            body: EventBody::Capture(CaptureRecord {
                rule_id: "weapons-1".into(),
                category: "weapons".into(),
                severity,
                matched_text: "buy a knife".into(),
                window_title: "buy a knife - Chromium".into(),
                process_name: "chromium".into(),
                account: account.into(),
                image_sha256: String::new(),
                image_status: "no_image".into(),
                no_image_reason: "test".into(),
                repeat_count: 0,
                kind: "snapshot".into(),
                file_path: String::new(),
                file_sha256: String::new(),
                policy_version: 0,
                image: Vec::new(),
                context: Vec::new(),
            }),
        }
    }

    #[tokio::test]
    async fn a_sites_period_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let now = Timestamp::now();
        let hour = jiff::SignedDuration::from_hours(1);
        let (store, site, device) = store_with_device(dir.path(), now - 1000 * hour).await;
        let events = [
            capture_event(1, now - 10 * hour, "pupil1", 3),
            capture_event(2, now - 9 * hour, "pupil1", 3),
            // Before the period.
            capture_event(3, now - 900 * hour, "pupil2", 5),
            Event {
                seq: Seq(4),
                event_id: "e4".into(),
                occurred_at: now - 8 * hour,
                body: EventBody::AgentSignal(SignalRecord::new(SignalKind::Started)),
            },
        ];
        store.record_batch(&device, &events, now).await.unwrap();
        // The first capture is reviewed an hour after it happened.
        let incidents = store
            .list_incidents(&DeviceFilter::default(), None)
            .await
            .unwrap();
        assert_eq!(incidents.len(), 2);
        let recent = incidents.iter().find(|i| i.account == "pupil1").unwrap();
        let (_, captures, _) = store.incident(recent.id).await.unwrap().unwrap();
        store
            .review_capture(
                captures[0].id,
                &ReviewRequest {
                    status: Some(CaptureStatus::Concern),
                    grade: Some(Grade::new(5).unwrap()),
                    outcome: "spoke to the pupil".into(),
                    ..ReviewRequest::default()
                },
                "console:dsl1",
                now - 9 * hour,
            )
            .await
            .unwrap()
            .unwrap();

        let period = Period::new(now - 100 * hour, now).unwrap();
        let facts = store.captures_in_period(site.id, period).await.unwrap();
        assert_eq!(facts.len(), 2);
        let reviewed = facts.iter().find(|f| f.grade.is_some()).unwrap();
        assert_eq!(reviewed.grade, Some(5));
        assert_eq!(reviewed.severity, 3, "the pregrade is kept");
        assert_eq!(reviewed.status, CaptureStatus::Concern);
        assert_eq!(reviewed.first_review_ms, Some(3_600_000));
        assert!(!reviewed.staff);

        let signals = store.signals_in_period(site.id, period).await.unwrap();
        assert_eq!(signals, [("started".to_owned(), 1)]);
        let incidents = store.incidents_in_period(site.id, period).await.unwrap();
        assert_eq!(incidents.len(), 2, "the old one is still open");
        let coverage = store.coverage(site.id, now - 24 * hour).await.unwrap();
        assert_eq!(coverage.enrolled, 1);
        let by_account = store
            .subject_captures(site.id, &Subject::Account("pupil1".into()), period)
            .await
            .unwrap();
        assert_eq!(by_account.len(), 2);
        let by_device = store
            .subject_captures(site.id, &Subject::Device(device.clone()), period)
            .await
            .unwrap();
        assert_eq!(by_device.len(), 2);
        let open = store
            .subject_open_incidents(site.id, &Subject::Account("pupil2".into()))
            .await
            .unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].severity, 5);
        // Another site sees none of it.
        let other = store
            .subject_captures(SiteId(site.id.0 + 1), &Subject::Device(device), period)
            .await
            .unwrap();
        assert!(other.is_empty());
    }

    /// Every report query reads through an index, never a whole table.
    #[tokio::test]
    async fn query_plans_use_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _, _) = store_with_device(dir.path(), Timestamp::now()).await;
        let queries = [
            ("coverage", COVERAGE.to_owned(), "devices_site"),
            ("helpers", HELPERS_MISSING.to_owned(), "devices_site"),
            ("activity", ACTIVITY_NOW.to_owned(), "devices_site"),
            ("mfa", MFA_NOW.to_owned(), "mfa_pairs_site"),
            ("flags", FLAGS.to_owned(), "flags_site_opened"),
            ("signals", SIGNALS.to_owned(), "agent_signals_newest"),
            ("captures", captures_in_period_sql(), "incidents_site_last"),
            ("incidents", INCIDENTS.to_owned(), "incidents_site_last"),
            ("by account", subject_captures_sql(true), "captures_account"),
            (
                "by device",
                subject_captures_sql(false),
                "captures_device_time",
            ),
            (
                "open by account",
                subject_incidents_sql(true),
                "incidents_site_account",
            ),
            (
                "open by device",
                subject_incidents_sql(false),
                "incidents_key",
            ),
        ];
        for (name, sql, index) in queries {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                .bind(1_i64)
                .bind(0_i64)
                .bind(1_i64)
                .bind("x")
                .fetch_all(&store.reader)
                .await
                .unwrap();
            let plan: Vec<String> = rows
                .iter()
                .map(|r| r.try_get::<String, _>("detail").unwrap())
                .collect();
            let text = plan.join("\n");
            assert!(text.contains(index), "{name}: {text}");
            for line in &plan {
                let scans_table = line.starts_with("SCAN ") && !line.contains("USING");
                assert!(!scans_table, "{name} scans a table: {text}");
            }
        }
    }
}
