//! The durable outbox: a SQLite file (`DATA/outbox.db`, WAL mode).
//!
//! Guarantees:
//! - An event is committed here before anything tries to send it, and is
//!   deleted only when the collector acknowledges the batch holding it
//!   (`acknowledge`), which the collector sends after its own commit.
//! - Sequence numbers increase strictly and are never reused
//!   (AUTOINCREMENT), and `raise_sequence_floor` keeps them above anything
//!   the collector already holds even if this file is lost.
//! - What survives a crash: every committed append. WAL with
//!   synchronous=NORMAL survives a killed process intact; a power cut can
//!   lose the last few commits but never corrupts the file.
//! - A file that cannot be opened or fails SQLite's integrity check is moved
//!   aside (`outbox.db.corrupt-<time>`) and a new one started; `open`
//!   returns where it went so the agent can report it.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use hallmonitor_proto::v1;
use jiff::Timestamp;
use prost::Message;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub const FILE_NAME: &str = "outbox.db";

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {path}: {source}")]
    Database {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
    #[error("outbox {path}: migration: {source}")]
    Migration {
        path: PathBuf,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("outbox {path}: moving a corrupt file aside: {source}")]
    MoveAside {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("outbox {path}: stored event {seq} is unreadable: {detail}")]
    BadRow {
        path: PathBuf,
        seq: i64,
        detail: String,
    },
}

pub type Result<T> = std::result::Result<T, OutboxError>;

/// Eviction classes, lowest evicted first (the bounded-outbox work uses them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Heartbeats and facts: compactable, the first to go.
    Telemetry = 0,
    /// Reports about the outbox itself.
    Report = 1,
    /// Sessions, MFA completions, enforcement results.
    Record = 2,
    /// Captures of severity 1–3.
    Capture = 3,
    /// Captures of severity 4–5: never evicted.
    Protected = 4,
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
    }
}

/// Queue figures for `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub depth: u64,
    pub oldest_seq: Option<u64>,
    pub oldest_occurred_at: Option<Timestamp>,
    /// The sequence number the next append gets.
    pub next_seq: u64,
}

#[derive(Clone)]
pub struct Outbox {
    pool: SqlitePool,
    path: PathBuf,
}

impl Outbox {
    /// Opens or creates the outbox in `dir`. A corrupt file is moved aside
    /// and replaced; the second value says where it went.
    pub async fn open(dir: &Path) -> Result<(Outbox, Option<PathBuf>)> {
        let path = dir.join(FILE_NAME);
        match Self::open_checked(&path).await {
            Ok(outbox) => Ok((outbox, None)),
            Err(e) if path.exists() => {
                tracing::error!(error = %e, path = %path.display(), "outbox unreadable; moving it aside and starting a new one");
                let moved = move_aside(&path)?;
                let outbox = Self::open_checked(&path).await?;
                outbox
                    .set_state("corrupt_moved_to", &moved.display().to_string())
                    .await?;
                Ok((outbox, Some(moved)))
            }
            Err(e) => Err(e),
        }
    }

    /// Opens an existing outbox without writing (for `status`).
    pub async fn open_read_only(dir: &Path) -> Result<Outbox> {
        let path = dir.join(FILE_NAME);
        let options = Self::options(&path).read_only(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|source| OutboxError::Database {
                path: path.clone(),
                source,
            })?;
        Ok(Outbox { pool, path })
    }

    fn options(path: &Path) -> SqliteConnectOptions {
        SqliteConnectOptions::from_str("sqlite://")
            .expect("static URL parses")
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
    }

    async fn open_checked(path: &Path) -> Result<Outbox> {
        let db = |source| OutboxError::Database {
            path: path.into(),
            source,
        };
        // One connection: the daemon is the only writer.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(Self::options(path))
            .await
            .map_err(db)?;
        let check: String = sqlx::query_scalar("PRAGMA quick_check")
            .fetch_one(&pool)
            .await
            .map_err(db)?;
        if check != "ok" {
            pool.close().await;
            return Err(db(sqlx::Error::Protocol(format!(
                "integrity check failed: {check}"
            ))));
        }
        MIGRATIONS
            .run(&pool)
            .await
            .map_err(|source| OutboxError::Migration {
                path: path.into(),
                source,
            })?;
        Ok(Outbox {
            pool,
            path: path.into(),
        })
    }

    fn db(&self) -> impl Fn(sqlx::Error) -> OutboxError + '_ {
        |source| OutboxError::Database {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends one event; returns its sequence number once committed.
    pub async fn append(&self, occurred_at: Timestamp, body: v1::event::Body) -> Result<u64> {
        Ok(self.append_all(vec![(occurred_at, body)]).await?[0])
    }

    /// Appends events in one transaction, in order.
    pub async fn append_all(&self, events: Vec<(Timestamp, v1::event::Body)>) -> Result<Vec<u64>> {
        let mut tx = self.pool.begin().await.map_err(self.db())?;
        let mut seqs = Vec::with_capacity(events.len());
        for (occurred_at, body) in events {
            let (kind, priority) = classify(&body);
            let payload = v1::Event {
                body: Some(body),
                ..Default::default()
            }
            .encode_to_vec();
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
            seqs.push(seq as u64);
        }
        tx.commit().await.map_err(self.db())?;
        Ok(seqs)
    }

    /// Up to `limit` events with sequence numbers above `after`, in order.
    pub async fn read_after(&self, after: u64, limit: usize) -> Result<Vec<v1::Event>> {
        let rows = sqlx::query("SELECT seq, event_id, occurred_at, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?")
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
        let done = sqlx::query("DELETE FROM outbox WHERE seq BETWEEN ? AND ?")
            .bind(first_seq as i64)
            .bind(last_seq as i64)
            .execute(&self.pool)
            .await
            .map_err(self.db())?;
        Ok(done.rows_affected())
    }

    pub async fn stats(&self) -> Result<OutboxStats> {
        let row = sqlx::query(
            "SELECT count(*) AS depth, min(seq) AS oldest_seq, \
             (SELECT occurred_at FROM outbox ORDER BY seq LIMIT 1) AS oldest_at, \
             coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0) AS last_seq FROM outbox",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(self.db())?;
        let oldest_at: Option<i64> = row.get("oldest_at");
        Ok(OutboxStats {
            depth: row.get::<i64, _>("depth") as u64,
            oldest_seq: row.get::<Option<i64>, _>("oldest_seq").map(|s| s as u64),
            oldest_occurred_at: oldest_at.and_then(|ms| Timestamp::from_millisecond(ms).ok()),
            next_seq: row.get::<i64, _>("last_seq") as u64 + 1,
        })
    }

    /// Makes the next sequence number greater than `committed`: after a lost
    /// or replaced outbox, new events must not collide with ones the
    /// collector already holds (it would ignore them as duplicates).
    pub async fn raise_sequence_floor(&self, committed: u64) -> Result<bool> {
        let stats = self.stats().await?;
        if stats.next_seq > committed {
            return Ok(false);
        }
        let mut tx = self.pool.begin().await.map_err(self.db())?;
        let updated = sqlx::query("UPDATE sqlite_sequence SET seq = ? WHERE name = 'outbox'")
            .bind(committed as i64)
            .execute(&mut *tx)
            .await
            .map_err(self.db())?;
        if updated.rows_affected() == 0 {
            sqlx::query("INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)")
                .bind(committed as i64)
                .execute(&mut *tx)
                .await
                .map_err(self.db())?;
        }
        tx.commit().await.map_err(self.db())?;
        tracing::warn!(
            committed,
            "outbox sequence raised past what the collector already holds"
        );
        Ok(true)
    }

    pub async fn set_state(&self, key: &str, value: &str) -> Result<()> {
        self.set_states(&[(key, value)]).await
    }

    pub async fn set_states(&self, pairs: &[(&str, &str)]) -> Result<()> {
        let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new("INSERT INTO state (key, value) ");
        insert.push_values(pairs, |mut row, (k, v)| {
            row.push_bind(k.to_string()).push_bind(v.to_string());
        });
        insert.push(" ON CONFLICT (key) DO UPDATE SET value = excluded.value");
        insert
            .build()
            .execute(&self.pool)
            .await
            .map_err(self.db())?;
        Ok(())
    }

    pub async fn state(&self, key: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT value FROM state WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.db())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn move_aside(path: &Path) -> Result<PathBuf> {
    let stamp = Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
    let target = path.with_file_name(format!("{FILE_NAME}.corrupt-{stamp}"));
    std::fs::rename(path, &target).map_err(|source| OutboxError::MoveAside {
        path: path.into(),
        source,
    })?;
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", path.display()));
        if side.exists() {
            let _ = std::fs::rename(&side, format!("{}{suffix}", target.display()));
        }
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(n: u64) -> v1::event::Body {
        v1::event::Body::Heartbeat(v1::Heartbeat {
            uptime_secs: n,
            interval_secs: 60,
        })
    }

    #[tokio::test]
    async fn append_read_acknowledge() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, moved) = Outbox::open(dir.path()).await.unwrap();
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
            let (outbox, _) = Outbox::open(dir.path()).await.unwrap();
            outbox.append(t, heartbeat(1)).await.unwrap();
            outbox.append(t, heartbeat(2)).await.unwrap();
            outbox.acknowledge(1, 2).await.unwrap();
            outbox.close().await;
        }
        let (outbox, _) = Outbox::open(dir.path()).await.unwrap();
        assert_eq!(
            outbox.append(t, heartbeat(3)).await.unwrap(),
            3,
            "never reused"
        );
    }

    #[tokio::test]
    async fn floor_jumps_past_collector_high_water_mark() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = Outbox::open(dir.path()).await.unwrap();
        assert!(outbox.raise_sequence_floor(41).await.unwrap());
        assert_eq!(
            outbox.append(Timestamp::now(), heartbeat(1)).await.unwrap(),
            42
        );
        assert!(
            !outbox.raise_sequence_floor(10).await.unwrap(),
            "never lowers"
        );
        assert_eq!(
            outbox.append(Timestamp::now(), heartbeat(1)).await.unwrap(),
            43
        );
    }

    #[tokio::test]
    async fn garbage_file_is_moved_aside_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE_NAME),
            b"this is not a database, just some garbage bytes".repeat(200),
        )
        .unwrap();
        let (outbox, moved) = Outbox::open(dir.path()).await.unwrap();
        let moved = moved.expect("reported as moved");
        assert!(moved.exists());
        assert!(
            moved
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("outbox.db.corrupt-")
        );
        assert_eq!(
            outbox.append(Timestamp::now(), heartbeat(1)).await.unwrap(),
            1
        );
        assert_eq!(
            outbox.state("corrupt_moved_to").await.unwrap(),
            Some(moved.display().to_string())
        );
    }

    #[tokio::test]
    async fn truncated_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (outbox, _) = Outbox::open(dir.path()).await.unwrap();
            let t = Timestamp::now();
            outbox
                .append_all((0..2000).map(|n| (t, heartbeat(n))).collect())
                .await
                .unwrap();
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&outbox.pool)
                .await
                .unwrap();
            outbox.close().await;
        }
        let path = dir.path().join(FILE_NAME);
        let len = std::fs::metadata(&path).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len / 3).unwrap();
        drop(file);
        let (outbox, moved) = Outbox::open(dir.path()).await.unwrap();
        assert!(moved.is_some(), "truncation detected");
        assert_eq!(outbox.stats().await.unwrap().depth, 0);
    }

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
}
