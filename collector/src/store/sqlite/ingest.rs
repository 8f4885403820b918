//! What agents stream: hellos, batches of events (with their effects on sessions, captures, 2FA completions, command results, monitoring gaps and agent signals, and the tamper flags these open, in the batch's transaction), and outbox health.

use async_trait::async_trait;
use jiff::Timestamp;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{
    SqliteStore, activity, aup, facts_json, incidents, instant, mfa, millis, optional_instant,
    tamper,
};
use crate::model::{BatchOutcome, DeviceId, Event, EventBody, GapRecord, OutboxHealth, SiteId};
use crate::store::{NewMfaCompletion, Result};

/// Events per multi-row INSERT: 7 bound values each, well under SQLite's
/// limit of 32,766 variables per statement.
const INSERT_CHUNK: usize = 500;

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

async fn device_site(tx: &mut sqlx::SqliteConnection, device: &DeviceId) -> Result<SiteId> {
    let site: i64 = sqlx::query_scalar("SELECT site_id FROM devices WHERE id = ?")
        .bind(device.as_str())
        .fetch_one(&mut *tx)
        .await?;
    Ok(SiteId(site))
}

fn event_json(body: &EventBody) -> String {
    match body {
        EventBody::Other { json, .. } => json.to_string(),
        other => serde_json::to_string(other).expect("event bodies serialise"),
    }
}

#[async_trait]
impl crate::store::IngestStore for SqliteStore {
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
        // The sequence numbers stored now (not resent ones).
        let mut new_seqs = std::collections::HashSet::new();
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
            insert.push(" ON CONFLICT (device_id, seq) DO NOTHING RETURNING seq");
            let seqs: Vec<i64> = insert.build_query_scalar().fetch_all(&mut *tx).await?;
            new_seqs.extend(seqs.into_iter().map(|seq| seq as u64));
        }
        let stored = new_seqs.len() as u64;

        // Sessions and command results take effect with the batch that
        // carried them. A duplicate event was applied when first stored.
        if stored > 0 {
            let sessions: Vec<&crate::model::SessionRecord> = events
                .iter()
                .filter_map(|e| match &e.body {
                    EventBody::Session(session) => Some(session),
                    _ => None,
                })
                .collect();
            activity::mark_days_in_use(&mut tx, device, &sessions).await?;
            for event in events {
                match &event.body {
                    EventBody::Session(session) => {
                        activity::upsert_session(&mut tx, device, session, received_at).await?
                    }
                    EventBody::MonitoringGap(gap) => {
                        record_gap(&mut tx, device, gap).await?;
                        // A session without its helper: a sign of
                        // interference, decided in `tamper`.
                        let summary = crate::tamper::gap_interference(gap);
                        if let (true, Some(summary)) = (new_seqs.contains(&event.seq.0), summary) {
                            let site = device_site(&mut tx, device).await?;
                            tamper::raise(&mut tx, site, device, &summary, received_at).await?;
                        }
                    }
                    EventBody::AgentSignal(signal) => {
                        let new = tamper::record_signal(
                            &mut tx,
                            device,
                            event.seq.0,
                            event.occurred_at,
                            signal,
                        )
                        .await?;
                        let summary = crate::tamper::interference(signal, event.occurred_at);
                        if let (true, Some(summary)) = (new, summary) {
                            let site = device_site(&mut tx, device).await?;
                            tamper::raise(&mut tx, site, device, &summary, received_at).await?;
                        }
                    }
                    EventBody::AupAnswer(answer) => {
                        aup::record_answer(&mut tx, device, event.seq.0, answer, received_at)
                            .await?
                    }
                    EventBody::Capture(_) | EventBody::FileAlert { .. } => {
                        let Some(evidence) = crate::incidents::evidence_of(&event.body) else {
                            continue;
                        };
                        incidents::record_capture(
                            &mut tx,
                            self.incident_window,
                            &self.alerts,
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
                        let completion = NewMfaCompletion {
                            site: device_site(&mut tx, device).await?,
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
}
