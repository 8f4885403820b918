//! The bound: eviction classes (`Priority`), which event is in which, and
//! making room when an append would pass `max_bytes` (lowest class first,
//! oldest first within it, never a class above the new event's own),
//! counting what goes per report class in the state table.

use hallmonitor_proto::v1;
use sqlx::{Row, Sqlite};

use super::{Outbox, ROW_OVERHEAD, Result};
use crate::state::key;

/// Eviction classes, lowest evicted first. Stored in the `priority`
/// column: values are never reused (1 was reports before they became
/// unevictable; migration 0003 moved them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Heartbeats and facts: compactable, the first to go.
    Telemetry = 0,
    /// Sessions, MFA completions, enforcement results.
    Record = 2,
    /// Captures of severity 1–3.
    Capture = 3,
    /// Captures of severity 4–5: never evicted.
    Protected = 4,
    /// Reports about the outbox itself (evictions, a replaced file): never
    /// evicted, or the collector's eviction totals would be short by what
    /// was in the evicted reports. Few and small: new counts merge into
    /// the unsent report (`take_eviction_report`).
    Report = 5,
}

pub fn classify(body: &v1::event::Body) -> (&'static str, Priority) {
    use v1::event::Body;
    match body {
        Body::Heartbeat(_) => ("heartbeat", Priority::Telemetry),
        Body::HeartbeatInterval(_) => ("heartbeat_interval", Priority::Telemetry),
        Body::Facts(_) => ("facts", Priority::Telemetry),
        Body::OutboxReport(_) => ("outbox_report", Priority::Report),
        Body::Session(_) => ("session", Priority::Record),
        Body::Mfa(_) => ("mfa", Priority::Record),
        Body::Enforcement(_) => ("enforcement", Priority::Record),
        Body::FileAlert(_) => ("file_alert", Priority::Record),
        Body::Capture(c) if c.severity >= 4 => ("capture", Priority::Protected),
        Body::Capture(_) => ("capture", Priority::Capture),
        // Two per session, and the signal a pupil would most like lost.
        Body::MonitoringGap(_) => ("monitoring_gap", Priority::Protected),
        // Tamper signals, few and small (a helper restarted in a loop is
        // one per user per confirmation period): never evicted.
        Body::AgentSignal(_) => ("agent_signal", Priority::Protected),
        // An agreement on record; one per account and version.
        Body::AupAnswer(_) => ("aup_answer", Priority::Protected),
    }
}

/// Classes eviction is counted and reported by.
pub const REPORT_CLASSES: [&str; 6] = [
    "telemetry",
    "sessions",
    "mfa",
    "captures",
    "enforcement",
    "other",
];

fn report_class(kind: &str) -> &'static str {
    match kind {
        "heartbeat" | "heartbeat_interval" | "facts" => "telemetry",
        "session" => "sessions",
        "mfa" => "mfa",
        "capture" => "captures",
        "enforcement" => "enforcement",
        _ => "other",
    }
}

impl Outbox {
    /// Evicts events of `priority` or lower (oldest first, lowest class
    /// first) until `size` more bytes fit. Returns the new byte count.
    pub(super) async fn make_room(
        &self,
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        mut bytes: u64,
        size: u64,
        priority: Priority,
    ) -> Result<u64> {
        while bytes + size > self.max_bytes {
            let victims = sqlx::query(
                "SELECT seq, kind, length(payload) AS len FROM outbox WHERE priority <= ? \
                 ORDER BY priority, seq LIMIT 256",
            )
            .bind(priority as i64)
            .fetch_all(&mut **tx)
            .await
            .map_err(self.db())?;
            if victims.is_empty() {
                break;
            }
            let mut freed_enough = false;
            let mut last = 0i64;
            let mut counts: Vec<(String, u64)> = Vec::new();
            for row in &victims {
                last = row.get("seq");
                let kind: String = row.get("kind");
                bytes = bytes.saturating_sub(row.get::<i64, _>("len") as u64 + ROW_OVERHEAD);
                match counts.iter_mut().find(|(k, _)| *k == kind) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((kind, 1)),
                }
                if bytes + size <= self.max_bytes {
                    freed_enough = true;
                    break;
                }
            }
            let first_priority = priority as i64;
            sqlx::query(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE priority <= ? \
                 ORDER BY priority, seq LIMIT ?)",
            )
            .bind(first_priority)
            .bind(counts.iter().map(|(_, n)| *n as i64).sum::<i64>())
            .execute(&mut **tx)
            .await
            .map_err(self.db())?;
            for (kind, n) in &counts {
                count_eviction(tx, kind, *n).await.map_err(self.db())?;
            }
            tracing::warn!(up_to_seq = last, evicted = ?counts, "outbox full: evicted events");
            if freed_enough {
                break;
            }
        }
        Ok(bytes)
    }
}

pub(super) async fn count_eviction(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    kind: &str,
    n: u64,
) -> sqlx::Result<()> {
    let key = key::evicted(report_class(kind));
    sqlx::query(
        "INSERT INTO state (key, value) VALUES (?, ?) \
         ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + CAST(excluded.value AS INTEGER) AS TEXT)",
    )
    .bind(key)
    .bind(n.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::test_events::{capture, cost, evicted, heartbeat, session};
    use jiff::Timestamp;

    #[test]
    fn severe_captures_are_protected() {
        let capture = |severity| {
            v1::event::Body::Capture(v1::Capture {
                severity,
                ..Default::default()
            })
        };
        assert_eq!(classify(&capture(5)).1, Priority::Protected);
        assert_eq!(classify(&capture(4)).1, Priority::Protected);
        assert_eq!(classify(&capture(3)).1, Priority::Capture);
        assert!(classify(&heartbeat(1)).1 < classify(&capture(1)).1);
    }

    async fn kinds(outbox: &Outbox) -> Vec<String> {
        outbox
            .read_after(0, 10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| classify(&e.body.unwrap()).0.to_owned())
            .collect()
    }

    #[tokio::test]
    async fn full_outbox_evicts_in_priority_order_and_never_severe_captures() {
        let dir = tempfile::tempdir().unwrap();
        // Room for exactly ten 1 KiB captures, and less than a session more.
        let bound = 10 * cost(capture(5, 1024)) + 50;
        let (outbox, _) = Outbox::open(dir.path(), bound).await.unwrap();
        let t = Timestamp::now();
        outbox
            .append_all(vec![(t, heartbeat(1)), (t, session()), (t, heartbeat(2))])
            .await
            .unwrap();
        outbox
            .append_all((0..4).map(|_| (t, capture(2, 1024))).collect())
            .await
            .unwrap();
        outbox
            .append_all((0..5).map(|_| (t, capture(5, 1024))).collect())
            .await
            .unwrap();
        // Full now. More severe captures push out the lowest classes first:
        // heartbeats, then the session, then the severity-2 captures.
        outbox.append(t, capture(5, 1024)).await.unwrap();
        assert_eq!(evicted(&outbox).await, [("telemetry", 2), ("sessions", 1)]);
        let left = kinds(&outbox).await;
        assert!(
            !left.contains(&"heartbeat".to_string()) && !left.contains(&"session".to_string()),
            "{left:?}"
        );
        outbox
            .append_all((0..4).map(|_| (t, capture(4, 1024))).collect())
            .await
            .unwrap();
        assert_eq!(
            evicted(&outbox).await,
            [("telemetry", 2), ("sessions", 1), ("captures", 4)]
        );
        // Only protected captures remain: a heartbeat cannot displace them
        // and is dropped itself; another severe capture is still accepted.
        assert!(
            outbox
                .append_all(vec![(t, heartbeat(3))])
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            evicted(&outbox).await,
            [("telemetry", 3), ("sessions", 1), ("captures", 4)]
        );
        outbox.append(t, capture(5, 1024)).await.unwrap();
        let left = outbox.read_after(0, 100).await.unwrap();
        assert_eq!(left.len(), 11);
        assert!(
            left.iter()
                .all(|e| matches!(&e.body, Some(v1::event::Body::Capture(c)) if c.severity >= 4))
        );
        assert!(
            outbox.stats().await.unwrap().bytes > bound,
            "severe captures may pass the bound"
        );
    }

    #[tokio::test]
    async fn a_new_event_never_evicts_a_more_important_one() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = Outbox::open(dir.path(), 3 * cost(capture(3, 1000)) + 50)
            .await
            .unwrap();
        let t = Timestamp::now();
        outbox
            .append_all((0..3).map(|_| (t, capture(3, 1000))).collect())
            .await
            .unwrap();
        let stored = outbox.append_all(vec![(t, session())]).await.unwrap();
        assert!(stored.is_empty(), "the session is dropped, not a capture");
        assert_eq!(evicted(&outbox).await, [("sessions", 1)]);
        assert_eq!(kinds(&outbox).await, ["capture", "capture", "capture"]);
    }
}
