//! The queue: appending events (one multi-row INSERT when they fit the
//! bound, evicting otherwise), merging unsent heartbeats into one
//! interval, reading batches for the stream within the byte budget
//! (quarantining an event too large to ever send), and deleting what the
//! collector acknowledged.

use hallmonitor_proto::v1;
use jiff::Timestamp;
use prost::Message;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::evict::{Priority, classify, count_eviction};
use super::state_table::{set_state_in, state_number};
use super::{
    BATCH_BYTES, Books, MAX_EVENT_BYTES, Outbox, OutboxError, OutboxStats, ROW_OVERHEAD, Result,
};
use crate::state::key;

/// An event encoded for the outbox, not yet stored.
struct NewRow {
    kind: &'static str,
    priority: Priority,
    occurred_at: Timestamp,
    payload: Vec<u8>,
    /// Bytes it counts against the bound.
    size: u64,
}

impl NewRow {
    fn new((occurred_at, body): (Timestamp, v1::event::Body)) -> NewRow {
        let (kind, priority) = classify(&body);
        let payload = v1::Event {
            body: Some(body),
            ..Default::default()
        }
        .encode_to_vec();
        let size = payload.len() as u64 + ROW_OVERHEAD;
        NewRow {
            kind,
            priority,
            occurred_at,
            payload,
            size,
        }
    }
}

/// Inserts `rows` with one statement; returns their sequence numbers in
/// input order.
async fn insert_rows(
    connection: &mut sqlx::SqliteConnection,
    rows: &[NewRow],
) -> std::result::Result<Vec<u64>, sqlx::Error> {
    let mut insert: QueryBuilder<Sqlite> =
        QueryBuilder::new("INSERT INTO outbox (event_id, kind, priority, occurred_at, payload) ");
    insert.push_values(rows, |mut row, new| {
        row.push_bind(uuid::Uuid::now_v7().to_string())
            .push_bind(new.kind)
            .push_bind(new.priority as i64)
            .push_bind(new.occurred_at.as_millisecond())
            .push_bind(new.payload.as_slice());
    });
    insert.push(" RETURNING seq");
    let mut seqs: Vec<i64> = insert
        .build_query_scalar()
        .fetch_all(&mut *connection)
        .await?;
    // RETURNING order is unspecified; AUTOINCREMENT numbers rows in
    // insertion order, so sorted numbers match input order.
    seqs.sort_unstable();
    Ok(seqs.into_iter().map(|s| s as u64).collect())
}

/// Rows per multi-row INSERT (5 parameters each, well under SQLite's
/// limit of 32,766).
const INSERT_CHUNK: usize = 1_000;

impl Outbox {
    /// Appends one event; returns its sequence number once committed, or
    /// `None` when the outbox was full and the event was dropped (counted
    /// as an eviction).
    pub async fn append(
        &self,
        occurred_at: Timestamp,
        body: v1::event::Body,
    ) -> Result<Option<u64>> {
        Ok(self
            .append_all(vec![(occurred_at, body)])
            .await?
            .into_iter()
            .next())
    }

    /// Appends events in one transaction, in order, evicting to stay within
    /// the bound (see the module docs). Returns the sequence numbers of the
    /// events stored; an event dropped because nothing could make room for
    /// it has none.
    pub async fn append_all(&self, events: Vec<(Timestamp, v1::event::Body)>) -> Result<Vec<u64>> {
        let mut books = self.books.lock().await;
        let rows: Vec<NewRow> = events.into_iter().map(NewRow::new).collect();
        let total: u64 = rows.iter().map(|r| r.size).sum();
        if books.bytes + total <= self.max_bytes {
            // The common case: everything fits, so no eviction decisions
            // and one multi-row INSERT per chunk. One statement is atomic
            // on its own; several need a transaction.
            let mut seqs = Vec::with_capacity(rows.len());
            if rows.len() <= INSERT_CHUNK {
                let mut connection = self.pool.acquire().await.map_err(self.db())?;
                seqs = insert_rows(&mut connection, &rows)
                    .await
                    .map_err(self.db())?;
            } else {
                let mut tx = self.pool.begin().await.map_err(self.db())?;
                for chunk in rows.chunks(INSERT_CHUNK) {
                    seqs.extend(insert_rows(&mut tx, chunk).await.map_err(self.db())?);
                }
                tx.commit().await.map_err(self.db())?;
            }
            books.bytes += total;
            return Ok(seqs);
        }
        let mut tx = self.pool.begin().await.map_err(self.db())?;
        let mut seqs = Vec::with_capacity(rows.len());
        let mut bytes = books.bytes;
        for NewRow {
            kind,
            priority,
            occurred_at,
            payload,
            size,
        } in rows
        {
            if bytes + size > self.max_bytes {
                // Protected events evict what they can but are kept anyway.
                let evictable = priority.min(Priority::Capture);
                bytes = self.make_room(&mut tx, bytes, size, evictable).await?;
                if bytes + size > self.max_bytes && priority < Priority::Protected {
                    count_eviction(&mut tx, kind, 1).await.map_err(self.db())?;
                    tracing::warn!(kind, "outbox full: new event dropped");
                    continue;
                }
            }
            let seq: i64 = sqlx::query_scalar(
                "INSERT INTO outbox (event_id, kind, priority, occurred_at, payload) VALUES (?, ?, ?, ?, ?) RETURNING seq",
            )
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(kind)
            .bind(priority as i64)
            .bind(occurred_at.as_millisecond())
            .bind(payload)
            .fetch_one(&mut *tx)
            .await
            .map_err(self.db())?;
            bytes += size;
            seqs.push(seq as u64);
        }
        tx.commit().await.map_err(self.db())?;
        books.bytes = bytes;
        Ok(seqs)
    }

    /// Appends a heartbeat, merging it into the newest row when that row is
    /// an unsent heartbeat (or merged interval) with the same interval.
    pub async fn append_heartbeat(&self, at: Timestamp, heartbeat: v1::Heartbeat) -> Result<()> {
        {
            let mut books = self.books.lock().await;
            let newest = sqlx::query(
                "SELECT seq, kind, occurred_at, payload FROM outbox ORDER BY seq DESC LIMIT 1",
            )
            .fetch_optional(&self.pool)
            .await
            .map_err(self.db())?;
            if let Some(row) = newest {
                let seq: i64 = row.get("seq");
                let kind: String = row.get("kind");
                let unsent = seq as u64 > books.sent_up_to;
                if unsent && (kind == "heartbeat" || kind == "heartbeat_interval") {
                    let payload: Vec<u8> = row.get("payload");
                    let started = Timestamp::from_millisecond(row.get("occurred_at")).unwrap_or(at);
                    if let Some(merged) = merge_heartbeat(&payload, started, at, &heartbeat) {
                        let new_payload = v1::Event {
                            body: Some(merged),
                            ..Default::default()
                        }
                        .encode_to_vec();
                        sqlx::query("UPDATE outbox SET kind = 'heartbeat_interval', payload = ? WHERE seq = ?")
                            .bind(&new_payload)
                            .bind(seq)
                            .execute(&self.pool)
                            .await
                            .map_err(self.db())?;
                        books.bytes = (books.bytes + new_payload.len() as u64)
                            .saturating_sub(payload.len() as u64);
                        return Ok(());
                    }
                }
            }
        }
        self.append(at, v1::event::Body::Heartbeat(heartbeat))
            .await?;
        Ok(())
    }

    /// Like `read_after`, and marks what it returns as sent, so it is never
    /// rewritten (heartbeats, reports) even if the connection drops.
    /// A batch holds at most `limit` events and `BATCH_BYTES` of payload
    /// (at least one event), so it always fits the stream's message limit;
    /// an event larger than `MAX_EVENT_BYTES` alone is moved to the
    /// quarantine table (counted in the state, never retried for ever).
    pub async fn read_for_send(&self, after: u64, limit: usize) -> Result<Vec<v1::Event>> {
        let mut books = self.books.lock().await;
        let count = loop {
            let sizes: Vec<(i64, i64)> = sqlx::query_as(
                "SELECT seq, length(payload) FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            )
            .bind(after as i64)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(self.db())?;
            let Some(&(first_seq, first_size)) = sizes.first() else {
                return Ok(Vec::new());
            };
            if first_size as u64 > MAX_EVENT_BYTES {
                self.quarantine(&mut books, first_seq).await?;
                continue;
            }
            break batch_len(sizes.iter().map(|&(_, size)| size as u64));
        };
        let events = self.read_after(after, count).await?;
        if let Some(last) = events.last() {
            books.sent_up_to = books.sent_up_to.max(last.seq);
        }
        Ok(events)
    }

    /// Moves an event too large to ever send out of the outbox, keeping it
    /// for a technician (`quarantine` table) and counting it.
    async fn quarantine(&self, books: &mut Books, seq: i64) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(self.db())?;
        let moved: Option<(String, i64)> = sqlx::query_as(
            "INSERT INTO quarantine (seq, event_id, kind, occurred_at, payload, quarantined_at) \
             SELECT seq, event_id, kind, occurred_at, payload, ? FROM outbox WHERE seq = ? \
             RETURNING kind, length(payload)",
        )
        .bind(Timestamp::now().as_millisecond())
        .bind(seq)
        .fetch_optional(&mut *tx)
        .await
        .map_err(self.db())?;
        sqlx::query("DELETE FROM outbox WHERE seq = ?")
            .bind(seq)
            .execute(&mut *tx)
            .await
            .map_err(self.db())?;
        let total = state_number(&mut tx, key::QUARANTINED)
            .await
            .map_err(self.db())?
            + 1;
        set_state_in(&mut tx, key::QUARANTINED, &total.to_string())
            .await
            .map_err(self.db())?;
        tx.commit().await.map_err(self.db())?;
        if let Some((kind, size)) = moved {
            books.bytes = books.bytes.saturating_sub(size as u64 + ROW_OVERHEAD);
            tracing::error!(
                seq,
                kind,
                size,
                limit = MAX_EVENT_BYTES,
                "an event too large to send was moved to the outbox's quarantine"
            );
        }
        Ok(())
    }

    /// The stream lost its connection. Rows it sent stay unrewritable
    /// (`Books::sent_up_to`): the collector may have committed them and
    /// lost only the ack, so there is nothing to release. Kept as the
    /// stream's statement of the event.
    pub async fn release_claims(&self) {}

    /// Up to `limit` events with sequence numbers above `after`, in order.
    pub async fn read_after(&self, after: u64, limit: usize) -> Result<Vec<v1::Event>> {
        let rows = sqlx::query(
            "SELECT seq, event_id, occurred_at, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(after as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(self.db())?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.get("seq");
                let payload: Vec<u8> = row.get("payload");
                let mut event =
                    v1::Event::decode(payload.as_slice()).map_err(|e| OutboxError::BadRow {
                        path: self.path.clone(),
                        seq,
                        detail: e.to_string(),
                    })?;
                let ms: i64 = row.get("occurred_at");
                event.seq = seq as u64;
                event.event_id = row.get("event_id");
                event.occurred_at = Some(hallmonitor_proto::Timestamp {
                    seconds: ms.div_euclid(1000),
                    nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
                });
                Ok(event)
            })
            .collect()
    }

    /// Deletes the events of an acknowledged batch.
    pub async fn acknowledge(&self, first_seq: u64, last_seq: u64) -> Result<u64> {
        let mut books = self.books.lock().await;
        let row = sqlx::query(
            "DELETE FROM outbox WHERE seq BETWEEN ? AND ? RETURNING length(payload) + ? AS size",
        )
        .bind(first_seq as i64)
        .bind(last_seq as i64)
        .bind(ROW_OVERHEAD as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(self.db())?;
        let freed: u64 = row.iter().map(|r| r.get::<i64, _>("size") as u64).sum();
        books.bytes = books.bytes.saturating_sub(freed);
        Ok(row.len() as u64)
    }

    pub async fn stats(&self) -> Result<OutboxStats> {
        let row = sqlx::query(
            "SELECT count(*) AS depth, min(seq) AS oldest_seq, \
             (SELECT occurred_at FROM outbox ORDER BY seq LIMIT 1) AS oldest_at, \
             coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0) AS last_seq, \
             coalesce(sum(length(payload)), 0) + count(*) * ? AS bytes FROM outbox",
        )
        .bind(ROW_OVERHEAD as i64)
        .fetch_one(&self.pool)
        .await
        .map_err(self.db())?;
        let oldest_at: Option<i64> = row.get("oldest_at");
        Ok(OutboxStats {
            depth: row.get::<i64, _>("depth") as u64,
            oldest_seq: row.get::<Option<i64>, _>("oldest_seq").map(|s| s as u64),
            oldest_occurred_at: oldest_at.and_then(|ms| Timestamp::from_millisecond(ms).ok()),
            next_seq: row.get::<i64, _>("last_seq") as u64 + 1,
            bytes: row.get::<i64, _>("bytes") as u64,
        })
    }
}

/// Folds a heartbeat into the stored heartbeat or interval `payload`
/// (which started at `started`). None when they differ in interval.
fn merge_heartbeat(
    payload: &[u8],
    started: Timestamp,
    at: Timestamp,
    hb: &v1::Heartbeat,
) -> Option<v1::event::Body> {
    let stored = v1::Event::decode(payload).ok()?.body?;
    let ts = |t: Timestamp| hallmonitor_proto::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    };
    let (first, count, interval) = match stored {
        v1::event::Body::Heartbeat(h) => (ts(started), 1, h.interval_secs),
        v1::event::Body::HeartbeatInterval(i) => (i.first?, i.count, i.interval_secs),
        _ => return None,
    };
    (interval == hb.interval_secs).then(|| {
        v1::event::Body::HeartbeatInterval(v1::HeartbeatInterval {
            first: Some(first),
            last: Some(ts(at)),
            interval_secs: interval,
            count: count + 1,
        })
    })
}

/// How many of the events with these payload sizes make one batch: as
/// many as fit `BATCH_BYTES`, and always the first.
fn batch_len(sizes: impl Iterator<Item = u64>) -> usize {
    let mut total = 0u64;
    let mut count = 0;
    for size in sizes {
        if count > 0 && total + size > BATCH_BYTES {
            break;
        }
        total += size;
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::DEFAULT_MAX_BYTES;
    use crate::outbox::test_events::{HEARTBEAT, heartbeat};
    use crate::state::State;

    #[test]
    fn batches_fit_the_byte_budget_and_always_take_the_first_event() {
        const MIB: u64 = 1024 * 1024;
        let cases: [(&str, &[u64], usize); 5] = [
            ("empty", &[], 0),
            ("small events all fit", &[100, 200, 300], 3),
            ("stops before the budget", &[3 * MIB, 3 * MIB, 3 * MIB], 2),
            ("exactly the budget", &[4 * MIB, 4 * MIB, 1], 2),
            ("a large first event goes alone", &[9 * MIB, 1], 1),
        ];
        for (name, sizes, expected) in cases {
            assert_eq!(batch_len(sizes.iter().copied()), expected, "{name}");
        }
    }

    fn capture_of(bytes: usize) -> v1::event::Body {
        v1::event::Body::Capture(v1::Capture {
            rule_id: "r".into(),
            severity: 5,
            image_png: vec![7; bytes],
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn large_events_are_batched_by_bytes_and_one_too_large_is_quarantined() {
        const MIB: usize = 1024 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = Outbox::open(dir.path(), DEFAULT_MAX_BYTES).await.unwrap();
        let now = Timestamp::now();
        outbox.append(now, capture_of(13 * MIB)).await.unwrap();
        for _ in 0..5 {
            outbox.append(now, capture_of(3 * MIB)).await.unwrap();
        }
        let batch = outbox.read_for_send(0, 500).await.unwrap();
        assert_eq!(batch.len(), 2, "two 3 MiB captures fit 8 MiB");
        assert_eq!(
            batch[0].seq, 2,
            "the 13 MiB event no longer blocks the rest"
        );
        assert_eq!(State::new(&outbox).quarantined().await.unwrap(), 1);
        let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM quarantine")
            .fetch_one(&outbox.pool)
            .await
            .unwrap();
        assert_eq!(kept, 1, "kept for a technician");
        let rest = outbox.read_for_send(3, 500).await.unwrap();
        assert_eq!(rest.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
    }

    #[tokio::test]
    async fn append_read_acknowledge() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, moved) = Outbox::open(dir.path(), DEFAULT_MAX_BYTES).await.unwrap();
        assert!(moved.is_none());
        let t = Timestamp::from_second(1_700_000_000).unwrap();
        let seqs = outbox
            .append_all((1..=5).map(|n| (t, heartbeat(n))).collect())
            .await
            .unwrap();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        let batch = outbox.read_after(2, 10).await.unwrap();
        assert_eq!(batch.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(batch[0].occurred_at.unwrap().seconds, 1_700_000_000);
        assert!(!batch[0].event_id.is_empty());
        assert_eq!(outbox.acknowledge(1, 3).await.unwrap(), 3);
        let stats = outbox.stats().await.unwrap();
        assert_eq!(
            (stats.depth, stats.oldest_seq, stats.next_seq),
            (2, Some(4), 6)
        );
    }

    #[tokio::test]
    async fn sequence_numbers_survive_reopen_and_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let t = Timestamp::now();
        {
            let (outbox, _) = Outbox::open(dir.path(), DEFAULT_MAX_BYTES).await.unwrap();
            outbox.append(t, heartbeat(1)).await.unwrap();
            outbox.append(t, heartbeat(2)).await.unwrap();
            outbox.acknowledge(1, 2).await.unwrap();
            outbox.close().await;
        }
        let (outbox, _) = Outbox::open(dir.path(), DEFAULT_MAX_BYTES).await.unwrap();
        assert_eq!(
            outbox.append(t, heartbeat(3)).await.unwrap(),
            Some(3),
            "never reused"
        );
    }

    #[tokio::test]
    async fn unsent_heartbeats_merge_into_one_interval() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = Outbox::open(dir.path(), DEFAULT_MAX_BYTES).await.unwrap();
        let start = Timestamp::from_second(1_800_000_000).unwrap();
        for i in 0..1000 {
            let at = start + jiff::SignedDuration::from_secs(60 * i);
            outbox
                .append_heartbeat(
                    at,
                    v1::Heartbeat {
                        uptime_secs: 0,
                        interval_secs: 60,
                    },
                )
                .await
                .unwrap();
        }
        let events = outbox.read_after(0, 10).await.unwrap();
        assert_eq!(events.len(), 1, "a thousand heartbeats, one row");
        match &events[0].body {
            Some(v1::event::Body::HeartbeatInterval(i)) => {
                assert_eq!(i.count, 1000);
                assert_eq!(i.first.unwrap().seconds, 1_800_000_000);
                assert_eq!(i.last.unwrap().seconds, 1_800_000_000 + 60 * 999);
            }
            other => panic!("expected an interval, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn claimed_heartbeats_are_never_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = Outbox::open(dir.path(), DEFAULT_MAX_BYTES).await.unwrap();
        let t = Timestamp::now();
        let hb = v1::Heartbeat {
            uptime_secs: 0,
            interval_secs: 60,
        };
        outbox.append_heartbeat(t, hb).await.unwrap();
        let sent = outbox.read_for_send(0, 10).await.unwrap();
        outbox.append_heartbeat(t, hb).await.unwrap();
        let all = outbox.read_after(0, 10).await.unwrap();
        assert_eq!(all.len(), 2, "the in-flight heartbeat stays as sent");
        assert_eq!(all[0], sent[0]);
        // Another heartbeat still merges into the unsent one.
        outbox.append_heartbeat(t, hb).await.unwrap();
        assert_eq!(outbox.read_after(0, 10).await.unwrap().len(), 2);
        // A heartbeat with another interval is not merged.
        outbox
            .append_heartbeat(
                t,
                v1::Heartbeat {
                    uptime_secs: 0,
                    interval_secs: 5,
                },
            )
            .await
            .unwrap();
        assert_eq!(outbox.read_after(0, 10).await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_heartbeat_sent_once_is_never_folded_into_even_after_a_disconnect() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = Outbox::open(dir.path(), DEFAULT_MAX_BYTES).await.unwrap();
        let t = Timestamp::now();
        outbox.append_heartbeat(t, HEARTBEAT).await.unwrap();
        let sent = outbox.read_for_send(0, 10).await.unwrap();
        // The connection drops before the ack arrives (the collector may
        // have committed the row).
        outbox.release_claims().await;
        outbox.append_heartbeat(t, HEARTBEAT).await.unwrap();
        let all = outbox.read_after(0, 10).await.unwrap();
        assert_eq!(all.len(), 2, "a new row, not folded into the sent one");
        assert_eq!(all[0], sent[0], "the sent row is unchanged");
        // Nor after a restart of the daemon.
        outbox.close().await;
        let (outbox, _) = Outbox::open(dir.path(), DEFAULT_MAX_BYTES).await.unwrap();
        let before = outbox.read_after(0, 10).await.unwrap();
        outbox.read_for_send(0, 10).await.unwrap();
        outbox.close().await;
        let (outbox, _) = Outbox::open(dir.path(), DEFAULT_MAX_BYTES).await.unwrap();
        outbox.append_heartbeat(t, HEARTBEAT).await.unwrap();
        let after = outbox.read_after(0, 10).await.unwrap();
        assert_eq!(after.len(), 3);
        assert_eq!(after[..2], before[..]);
        // Unsent heartbeats still merge.
        outbox.append_heartbeat(t, HEARTBEAT).await.unwrap();
        assert_eq!(outbox.read_after(0, 10).await.unwrap().len(), 3);
    }
}
