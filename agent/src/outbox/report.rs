//! What the collector is told about the outbox itself: the eviction,
//! quarantine and refused-capture counts not reported yet, added to the
//! one unsent `OutboxReport` (or a new one) in the transaction that marks
//! them reported, so the collector's sums equal the agent's totals.

use hallmonitor_proto::v1;
use jiff::Timestamp;
use prost::Message;

use super::evict::{Priority, REPORT_CLASSES};
use super::state_table::{set_state_in, state_number};
use super::{Outbox, OutboxError, ROW_OVERHEAD, Result};
use crate::state::key;

impl Outbox {
    /// Eviction counts not yet reported, as an `OutboxReport`, in the same
    /// transaction that marks them reported: added to the newest report
    /// that was never sent, else appended as a new one. Returns that
    /// report's sequence number; None when there is nothing to report.
    ///
    /// Reports are never evicted (`Priority::Report`) and at most one of
    /// them is unsent, so the collector's sum of what it was told equals
    /// the agent's totals exactly.
    pub async fn take_eviction_report(&self) -> Result<Option<u64>> {
        let mut books = self.books.lock().await;
        let mut tx = self.pool.begin().await.map_err(self.db())?;
        let counters = report_counters();
        let mut new = [0u64; REPORTED_COUNTS];
        for ((total_key, reported_key), new) in counters.iter().zip(new.iter_mut()) {
            let total = state_number(&mut tx, total_key).await.map_err(self.db())?;
            let reported = state_number(&mut tx, reported_key)
                .await
                .map_err(self.db())?;
            *new = total.saturating_sub(reported);
            if *new > 0 {
                set_state_in(&mut tx, reported_key, &total.to_string())
                    .await
                    .map_err(self.db())?;
            }
        }
        if new.iter().all(|n| *n == 0) {
            return Ok(None);
        }
        let unsent: Option<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, payload FROM outbox WHERE kind = 'outbox_report' AND seq > ? \
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(books.sent_up_to as i64)
        .fetch_optional(&mut *tx)
        .await
        .map_err(self.db())?;
        let (seq, old_len, mut report) = match unsent {
            Some((seq, payload)) => match v1::Event::decode(payload.as_slice()) {
                Ok(v1::Event {
                    body: Some(v1::event::Body::OutboxReport(report)),
                    ..
                }) => (Some(seq), payload.len(), report),
                _ => {
                    return Err(OutboxError::BadRow {
                        path: self.path.clone(),
                        seq,
                        detail: "an outbox_report row holds another event".into(),
                    });
                }
            },
            None => (None, 0, v1::OutboxReport::default()),
        };
        add_counts(&mut report, new);
        let payload = v1::Event {
            body: Some(v1::event::Body::OutboxReport(report)),
            ..Default::default()
        }
        .encode_to_vec();
        let now = Timestamp::now().as_millisecond();
        let (seq, added) = match seq {
            Some(seq) => {
                sqlx::query("UPDATE outbox SET payload = ?, occurred_at = ? WHERE seq = ?")
                    .bind(&payload)
                    .bind(now)
                    .bind(seq)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.db())?;
                (seq, payload.len() as u64)
            }
            None => {
                let seq: i64 = sqlx::query_scalar(
                    "INSERT INTO outbox (event_id, kind, priority, occurred_at, payload) \
                     VALUES (?, 'outbox_report', ?, ?, ?) RETURNING seq",
                )
                .bind(uuid::Uuid::now_v7().to_string())
                .bind(Priority::Report as i64)
                .bind(now)
                .bind(&payload)
                .fetch_one(&mut *tx)
                .await
                .map_err(self.db())?;
                (seq, payload.len() as u64 + ROW_OVERHEAD)
            }
        };
        tx.commit().await.map_err(self.db())?;
        // Past the bound if need be: a report is a few bytes and the only
        // way the collector learns what was lost.
        books.bytes = (books.bytes + added).saturating_sub(old_len as u64);
        Ok(Some(seq as u64))
    }
}

/// How many counters an `OutboxReport` carries.
const REPORTED_COUNTS: usize = REPORT_CLASSES.len() + 2;

/// The counters an `OutboxReport` carries, in `add_counts` order: the
/// state key of each lifetime total and of the part already reported.
fn report_counters() -> [(String, String); REPORTED_COUNTS] {
    let evicted = REPORT_CLASSES.map(|c| (key::evicted(c), key::evicted_reported(c)));
    let [a, b, c, d, e, f] = evicted;
    let other = |total: &str| (total.to_owned(), key::reported(total));
    [
        a,
        b,
        c,
        d,
        e,
        f,
        other(key::QUARANTINED),
        other(key::CAPTURES_REFUSED),
    ]
}

/// Adds counts (in `report_counters` order) to a report.
fn add_counts(report: &mut v1::OutboxReport, counts: [u64; REPORTED_COUNTS]) {
    let [
        telemetry,
        sessions,
        mfa,
        captures,
        enforcement,
        other,
        quarantined,
        captures_refused,
    ] = counts;
    report.quarantined += quarantined;
    report.captures_refused += captures_refused;
    report.evicted_telemetry += telemetry;
    report.evicted_sessions += sessions;
    report.evicted_mfa += mfa;
    report.evicted_captures += captures;
    report.evicted_enforcement += enforcement;
    report.evicted_other += other;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::DEFAULT_MAX_BYTES;
    use crate::outbox::test_events::{HEARTBEAT, capture, cost, evicted, session};
    use crate::state::State;

    #[tokio::test]
    async fn eviction_report_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = Outbox::open(dir.path(), 2 * cost(capture(1, 1000)) + 50)
            .await
            .unwrap();
        let t = Timestamp::now();
        outbox
            .append_all((0..5).map(|_| (t, capture(1, 1000))).collect())
            .await
            .unwrap();
        assert_eq!(evicted(&outbox).await, [("captures", 3)]);
        let seq = outbox
            .take_eviction_report()
            .await
            .unwrap()
            .expect("a report");
        let events = outbox.read_after(seq - 1, 1).await.unwrap();
        match &events[0].body {
            Some(v1::event::Body::OutboxReport(r)) => assert_eq!(r.evicted_captures, 3),
            other => panic!("expected a report, got {other:?}"),
        }
        assert_eq!(
            outbox.take_eviction_report().await.unwrap(),
            None,
            "nothing new to report"
        );
    }

    #[tokio::test]
    async fn quarantined_events_and_refused_captures_are_reported_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = Outbox::open(dir.path(), DEFAULT_MAX_BYTES).await.unwrap();
        let report = |seq: u64| {
            let outbox = outbox.clone();
            async move {
                match outbox.read_after(seq - 1, 1).await.unwrap().remove(0).body {
                    Some(v1::event::Body::OutboxReport(r)) => r,
                    other => panic!("expected a report, got {other:?}"),
                }
            }
        };
        outbox
            .set_states(&[(key::QUARANTINED, "2"), (key::CAPTURES_REFUSED, "5")])
            .await
            .unwrap();
        let first = outbox
            .take_eviction_report()
            .await
            .unwrap()
            .expect("a report");
        let r = report(first).await;
        assert_eq!((r.quarantined, r.captures_refused), (2, 5));
        // Unsent: later counts merge into it, as differences.
        outbox.set_state(key::CAPTURES_REFUSED, "7").await.unwrap();
        let merged = outbox
            .take_eviction_report()
            .await
            .unwrap()
            .expect("a report");
        assert_eq!(merged, first, "merged into the unsent report");
        let r = report(merged).await;
        assert_eq!((r.quarantined, r.captures_refused), (2, 7));
        assert_eq!(outbox.take_eviction_report().await.unwrap(), None);
    }

    /// Adds the eviction counts of the reports among `events` to `sums`
    /// (in `REPORT_CLASSES` order).
    fn add_reported(sums: &mut [u64; 6], events: &[v1::Event]) {
        for event in events {
            if let Some(v1::event::Body::OutboxReport(r)) = &event.body {
                for (sum, n) in sums.iter_mut().zip([
                    r.evicted_telemetry,
                    r.evicted_sessions,
                    r.evicted_mfa,
                    r.evicted_captures,
                    r.evicted_enforcement,
                    r.evicted_other,
                ]) {
                    *sum += n;
                }
            }
        }
    }

    #[tokio::test]
    async fn eviction_reports_are_never_evicted_so_the_totals_reported_are_exact() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = Outbox::open(dir.path(), 8 * 1024).await.unwrap();
        let t = Timestamp::now();
        let mut acked = 0;
        // What the collector was told, from the batches it acknowledged.
        let mut told = [0u64; 6];
        for round in 0..40u64 {
            let mut events = vec![(t, v1::event::Body::Heartbeat(HEARTBEAT))];
            events.extend((0..30).map(|_| (t, session())));
            outbox.append_all(events).await.unwrap();
            // The producer reports at every heartbeat tick.
            outbox.take_eviction_report().await.unwrap();
            // Now and then the stream sends a batch and gets its ack, so
            // some reports are sent and later counts start a new row.
            if round % 7 == 3 {
                let batch = outbox.read_for_send(acked, 20).await.unwrap();
                let (first, last) = (batch[0].seq, batch.last().unwrap().seq);
                outbox.acknowledge(first, last).await.unwrap();
                add_reported(&mut told, &batch);
                acked = last;
                outbox.release_claims().await;
            }
        }
        let totals = State::new(&outbox).eviction_totals().await.unwrap();
        assert!(
            totals
                .iter()
                .any(|(class, n)| *class == "sessions" && *n > 500),
            "{totals:?}"
        );
        // The rest is still queued and will be told: one report, however
        // many ticks added to it since the last one was sent.
        let queued = outbox.read_after(acked, 100_000).await.unwrap();
        let reports = queued
            .iter()
            .filter(|e| matches!(e.body, Some(v1::event::Body::OutboxReport(_))))
            .count();
        assert_eq!(reports, 1);
        add_reported(&mut told, &queued);
        let told: Vec<(&str, u64)> = REPORT_CLASSES.into_iter().zip(told).collect();
        assert_eq!(told, totals);
    }
}
