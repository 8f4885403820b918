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
//! - A file SQLite calls corrupt (SQLITE_CORRUPT, SQLITE_NOTADB) or that
//!   fails `PRAGMA quick_check` is moved aside (`outbox.db.corrupt-<time>`)
//!   and a new one started; `open` returns where it went so the agent can
//!   report it. Nothing else moves it: a full disk, an I/O error or another
//!   process's lock leaves the file and its events alone and `open` says
//!   the outbox is unavailable (`OpenError::Unavailable`), so the daemon
//!   waits and tries again.
//! - Bounded (`max_bytes`, counted as payload plus a fixed per-row
//!   overhead). When an append would pass the bound, events are evicted in
//!   this order: telemetry (heartbeats, facts) first, then records
//!   (sessions, MFA, enforcement, file alerts), then captures of severity
//!   1–3; oldest first within a class. An append never evicts a class
//!   above its own: if nothing at or below it can go, the new event itself
//!   is dropped (and counted). Captures of severity 4–5 and the outbox's
//!   own reports are never evicted and are always accepted, even past the
//!   bound. Every eviction is counted per class in the state table (never
//!   evicted); `take_eviction_report` adds the counts not yet reported to
//!   the one unsent `OutboxReport` (or starts one), so what the collector
//!   is told adds up to exactly what was evicted.
//! - Consecutive heartbeats that have never been sent are merged into one
//!   `HeartbeatInterval` (first, last, count), so a month offline is one
//!   row, not 40,000. A row handed to the stream once (`read_for_send`), or
//!   numbered by an earlier process, is never rewritten, even after a
//!   disconnect: its ack may have been lost after the collector committed
//!   it, and a rewrite would then be ignored as a duplicate.

use std::collections::HashMap;
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

use crate::state::{State, key};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub const FILE_NAME: &str = "outbox.db";
/// Beside the outbox while the daemon cannot open it: why (for `status`).
pub const UNAVAILABLE_FILE: &str = "outbox.unavailable";

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
    #[error("outbox {path}: integrity check failed: {detail}")]
    IntegrityCheck { path: PathBuf, detail: String },
}

pub type Result<T> = std::result::Result<T, OutboxError>;

/// Why `Outbox::open` failed. A corrupt file never ends here: it is moved
/// aside and replaced. In both cases the file was left as it was, with
/// every event in it.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The disk is full, an I/O error, another process holds a lock: try
    /// again later.
    #[error("outbox unavailable: {0}")]
    Unavailable(OutboxError),
    /// Neither corruption nor passing (permissions, a link where the file
    /// should be, a schema this agent does not know): a person must look.
    #[error(transparent)]
    Failed(OutboxError),
}

/// What an error met while opening says about the outbox file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// The file is damaged: only this moves it aside.
    Corrupt,
    /// The file may be fine; the disk, the system or a lock is not, for now.
    Transient,
    Other,
}

impl OutboxError {
    /// A full disk, an I/O error or another process's lock: the file may
    /// be fine, and trying later may work.
    pub fn is_transient(&self) -> bool {
        self.fault() == Fault::Transient
    }

    fn fault(&self) -> Fault {
        use sqlx::migrate::MigrateError;
        match self {
            OutboxError::IntegrityCheck { .. } => Fault::Corrupt,
            OutboxError::Database { source, .. }
            | OutboxError::Migration {
                source: MigrateError::Execute(source) | MigrateError::ExecuteMigration(source, _),
                ..
            } => sqlx_fault(source),
            OutboxError::Io { source, .. } => io_fault(source),
            _ => Fault::Other,
        }
    }
}

fn sqlx_fault(error: &sqlx::Error) -> Fault {
    match error {
        sqlx::Error::Database(e) => {
            // sqlx gives SQLite's extended result code.
            match e.code().and_then(|c| c.parse::<i32>().ok()) {
                Some(code) => sqlite_fault(code),
                None => Fault::Other,
            }
        }
        sqlx::Error::Io(e) => io_fault(e),
        sqlx::Error::PoolTimedOut => Fault::Transient,
        _ => Fault::Other,
    }
}

/// By SQLite extended result code, whose low byte is the primary code
/// (https://sqlite.org/rescode.html).
fn sqlite_fault(extended: i32) -> Fault {
    const BUSY: i32 = 5;
    const LOCKED: i32 = 6;
    const NOMEM: i32 = 7;
    const READONLY: i32 = 8;
    const IOERR: i32 = 10;
    const CORRUPT: i32 = 11;
    const FULL: i32 = 13;
    const CANTOPEN: i32 = 14;
    const NOTADB: i32 = 26;
    match extended & 0xff {
        CORRUPT | NOTADB => Fault::Corrupt,
        // CANTOPEN and READONLY are what a full disk or a file system
        // remounted read-only after errors can look like at open.
        BUSY | LOCKED | NOMEM | READONLY | IOERR | FULL | CANTOPEN => Fault::Transient,
        _ => Fault::Other,
    }
}

fn io_fault(error: &std::io::Error) -> Fault {
    match error.raw_os_error() {
        Some(
            libc::ENOSPC
            | libc::EDQUOT
            | libc::EIO
            | libc::EROFS
            | libc::EAGAIN
            | libc::EINTR
            | libc::ENOMEM
            | libc::EBUSY,
        ) => Fault::Transient,
        _ => Fault::Other,
    }
}

/// How long a statement waits for another connection's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes counted per row on top of its payload (ids, times, index entry).
pub const ROW_OVERHEAD: u64 = 96;
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

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

/// Queue figures for `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub depth: u64,
    pub oldest_seq: Option<u64>,
    pub oldest_occurred_at: Option<Timestamp>,
    /// The sequence number the next append gets.
    pub next_seq: u64,
    /// Bytes counted against the bound.
    pub bytes: u64,
}

/// In-memory bookkeeping, guarded by one lock so appends, compaction,
/// eviction and the stream's reads never interleave.
#[derive(Debug, Default)]
struct Books {
    /// Rows at or below this may have been sent (handed to a stream now or
    /// by an earlier process): the collector may hold them, so they are
    /// never rewritten. Never lowered, not even when a connection drops:
    /// an ack lost after the collector's commit would make a rewritten row
    /// a "duplicate" it ignores.
    sent_up_to: u64,
    /// Bytes counted against the bound.
    bytes: u64,
}

#[derive(Clone)]
pub struct Outbox {
    pool: SqlitePool,
    path: PathBuf,
    max_bytes: u64,
    books: std::sync::Arc<tokio::sync::Mutex<Books>>,
}

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
    /// Opens or creates the outbox in `dir`. A corrupt file (SQLite says
    /// so, or `quick_check` fails) is moved aside and replaced; the second
    /// value says where it went. Any other error leaves the file alone and
    /// says whether it may pass (`OpenError::Unavailable`).
    pub async fn open(
        dir: &Path,
        max_bytes: u64,
    ) -> std::result::Result<(Outbox, Option<PathBuf>), OpenError> {
        Self::open_waiting(dir, max_bytes, BUSY_TIMEOUT).await
    }

    /// `open`, waiting at most `busy_timeout` for another connection's lock.
    async fn open_waiting(
        dir: &Path,
        max_bytes: u64,
        busy_timeout: Duration,
    ) -> std::result::Result<(Outbox, Option<PathBuf>), OpenError> {
        let path = dir.join(FILE_NAME);
        let refuse = |e: OutboxError| match e.fault() {
            Fault::Transient => OpenError::Unavailable(e),
            Fault::Corrupt | Fault::Other => OpenError::Failed(e),
        };
        // Private whatever the umask (SQLite gives its -wal and -shm files
        // the main file's mode). A failure here is not corruption.
        private_file(&path)
            .map_err(|source| OutboxError::Io {
                path: path.clone(),
                source,
            })
            .map_err(refuse)?;
        let e = match Self::open_checked(&path, max_bytes, busy_timeout).await {
            Ok(outbox) => return Ok((outbox, None)),
            Err(e) if e.fault() == Fault::Corrupt => e,
            Err(e) => return Err(refuse(e)),
        };
        tracing::error!(error = %e, path = %path.display(), "outbox corrupt; moving it aside and starting a new one");
        let moved = move_aside(&path).map_err(OpenError::Failed)?;
        let outbox = Self::open_checked(&path, max_bytes, busy_timeout)
            .await
            .map_err(refuse)?;
        State::new(&outbox)
            .set_corrupt_moved_to(&moved)
            .await
            .map_err(refuse)?;
        Ok((outbox, Some(moved)))
    }

    /// Opens an existing outbox without writing (for `status`).
    pub async fn open_read_only(dir: &Path) -> Result<Outbox> {
        let path = dir.join(FILE_NAME);
        // No journal mode: setting one is a write, which a reader may not
        // do (the daemon sets WAL when it opens the file).
        let options = SqliteConnectOptions::from_str("sqlite://")
            .expect("static URL parses")
            .filename(&path)
            .read_only(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|source| OutboxError::Database {
                path: path.clone(),
                source,
            })?;
        Ok(Outbox {
            pool,
            path,
            max_bytes: u64::MAX,
            books: Default::default(),
        })
    }

    fn options(path: &Path, busy_timeout: Duration) -> SqliteConnectOptions {
        SqliteConnectOptions::from_str("sqlite://")
            .expect("static URL parses")
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(busy_timeout)
    }

    async fn open_checked(path: &Path, max_bytes: u64, busy_timeout: Duration) -> Result<Outbox> {
        let db = |source| OutboxError::Database {
            path: path.into(),
            source,
        };
        // One connection: the daemon is the only writer.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(Self::options(path, busy_timeout))
            .await
            .map_err(db)?;
        let check: String = sqlx::query_scalar("PRAGMA quick_check")
            .fetch_one(&pool)
            .await
            .map_err(db)?;
        if check != "ok" {
            pool.close().await;
            return Err(OutboxError::IntegrityCheck {
                path: path.into(),
                detail: check,
            });
        }
        MIGRATIONS
            .run(&pool)
            .await
            .map_err(|source| OutboxError::Migration {
                path: path.into(),
                source,
            })?;
        let bytes: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(length(payload)), 0) + count(*) * ? FROM outbox",
        )
        .bind(ROW_OVERHEAD as i64)
        .fetch_one(&pool)
        .await
        .map_err(db)?;
        // Whatever an earlier process numbered may have been sent: only
        // rows appended from now on can be unsent.
        let last_seq: i64 = sqlx::query_scalar(
            "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'outbox'",
        )
        .fetch_one(&pool)
        .await
        .map_err(db)?;
        let books = Books {
            sent_up_to: last_seq as u64,
            bytes: bytes as u64,
        };
        Ok(Outbox {
            pool,
            path: path.into(),
            max_bytes,
            books: std::sync::Arc::new(tokio::sync::Mutex::new(books)),
        })
    }

    fn db(&self) -> impl Fn(sqlx::Error) -> OutboxError + '_ {
        |source| OutboxError::Database {
            path: self.path.clone(),
            source,
        }
    }

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

    /// Evicts events of `priority` or lower (oldest first, lowest class
    /// first) until `size` more bytes fit. Returns the new byte count.
    async fn make_room(
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

    /// Called on every connection with the highest sequence number the
    /// collector has committed for this device. Makes the next number
    /// greater than it, and, the first time an outbox meets the collector,
    /// renumbers its pending events above it too: an outbox that replaced a
    /// lost or corrupt one restarts at 1, and events numbered below what
    /// the collector holds would be ignored as duplicates. Renumbering is
    /// safe then because nothing is sent before this hello. Returns whether
    /// anything changed.
    pub async fn raise_sequence_floor(&self, committed: u64) -> Result<bool> {
        let _books = self.books.lock().await;
        let mut tx = self.pool.begin().await.map_err(self.db())?;
        let verified = state_number(&mut tx, key::SEQUENCE_VERIFIED)
            .await
            .map_err(self.db())?
            == 1;
        let mut last: i64 = sqlx::query_scalar(
            "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'outbox'",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(self.db())?;
        let oldest: Option<i64> = sqlx::query_scalar("SELECT min(seq) FROM outbox")
            .fetch_one(&mut *tx)
            .await
            .map_err(self.db())?;
        let committed = committed as i64;
        let mut changed = false;
        if let Some(oldest) = oldest.filter(|o| !verified && *o <= committed) {
            let offset = committed + 1 - oldest;
            // Through negatives, so no row collides with another mid-update.
            sqlx::query("UPDATE outbox SET seq = -seq")
                .execute(&mut *tx)
                .await
                .map_err(self.db())?;
            sqlx::query("UPDATE outbox SET seq = ? - seq")
                .bind(offset)
                .execute(&mut *tx)
                .await
                .map_err(self.db())?;
            last += offset;
            changed = true;
            tracing::warn!(
                committed,
                offset,
                "outbox is new to the collector: pending events renumbered"
            );
        }
        if last < committed {
            last = committed;
            changed = true;
        }
        if changed {
            let updated = sqlx::query("UPDATE sqlite_sequence SET seq = ? WHERE name = 'outbox'")
                .bind(last)
                .execute(&mut *tx)
                .await
                .map_err(self.db())?;
            if updated.rows_affected() == 0 {
                sqlx::query("INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)")
                    .bind(last)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.db())?;
            }
        }
        set_state_in(&mut tx, key::SEQUENCE_VERIFIED, "1")
            .await
            .map_err(self.db())?;
        tx.commit().await.map_err(self.db())?;
        Ok(changed)
    }

    // The state table, raw: `crate::state` gives it types and owns its
    // keys.

    pub(crate) async fn set_state(&self, key: &str, value: &str) -> Result<()> {
        self.set_states(&[(key, value)]).await
    }

    pub(crate) async fn set_states(&self, pairs: &[(&str, &str)]) -> Result<()> {
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

    pub(crate) async fn state(&self, key: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT value FROM state WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.db())
    }

    /// Several keys read in one statement: a consistent snapshot, so a
    /// reader never pairs one writer's `connection` with another's
    /// `last_error`.
    pub(crate) async fn states(&self, keys: &[&str]) -> Result<HashMap<String, String>> {
        let mut select: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT key, value FROM state WHERE key IN (");
        let mut list = select.separated(", ");
        for key in keys {
            list.push_bind(key.to_string());
        }
        select.push(")");
        let rows = select
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(self.db())?;
        Ok(rows
            .into_iter()
            .map(|row| (row.get("key"), row.get("value")))
            .collect())
    }

    pub async fn close(&self) {
        self.pool.close().await;
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

async fn count_eviction(
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

async fn state_number(tx: &mut sqlx::Transaction<'_, Sqlite>, key: &str) -> sqlx::Result<u64> {
    let value: Option<String> = sqlx::query_scalar("SELECT value FROM state WHERE key = ?")
        .bind(key)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
}

async fn set_state_in(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    key: &str,
    value: &str,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        .bind(key)
        .bind(value)
        .execute(&mut **tx)
        .await?;
    Ok(())
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

/// Payload bytes one batch carries at most: half the 16 MiB message limit
/// of both ends, leaving room for framing.
pub const BATCH_BYTES: u64 = 8 * 1024 * 1024;
/// An event larger than this is never sent (it could not fit a message).
pub const MAX_EVENT_BYTES: u64 = 12 * 1024 * 1024;

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

/// Creates `path` if missing, mode 0600 outright, without following a link.
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Connection;

    fn heartbeat(n: u64) -> v1::event::Body {
        v1::event::Body::Heartbeat(v1::Heartbeat {
            uptime_secs: n,
            interval_secs: 60,
        })
    }

    #[test]
    fn only_corruption_moves_the_file_aside() {
        let cases = [
            ("SQLITE_CORRUPT", 11, Fault::Corrupt),
            ("SQLITE_CORRUPT_INDEX", 779, Fault::Corrupt),
            ("SQLITE_NOTADB (garbage)", 26, Fault::Corrupt),
            (
                "SQLITE_IOERR_SHMSIZE (full disk at open)",
                4874,
                Fault::Transient,
            ),
            ("SQLITE_IOERR_WRITE", 778, Fault::Transient),
            ("SQLITE_FULL", 13, Fault::Transient),
            ("SQLITE_BUSY (another process's lock)", 5, Fault::Transient),
            ("SQLITE_LOCKED", 6, Fault::Transient),
            ("SQLITE_CANTOPEN", 14, Fault::Transient),
            ("SQLITE_READONLY", 8, Fault::Transient),
            ("SQLITE_PERM", 3, Fault::Other),
            ("SQLITE_CONSTRAINT_UNIQUE", 2067, Fault::Other),
        ];
        for (name, code, fault) in cases {
            assert_eq!(sqlite_fault(code), fault, "{name}");
        }
        let io = |errno| std::io::Error::from_raw_os_error(errno);
        assert_eq!(io_fault(&io(libc::ENOSPC)), Fault::Transient);
        assert_eq!(io_fault(&io(libc::ELOOP)), Fault::Other, "a link");
    }

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
    async fn the_outbox_file_is_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // A file left readable (an older version, a copy) is tightened.
        std::fs::write(dir.path().join(FILE_NAME), b"").unwrap();
        std::fs::set_permissions(
            dir.path().join(FILE_NAME),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let (outbox, _) = Outbox::open(dir.path(), DEFAULT_MAX_BYTES).await.unwrap();
        outbox.close().await;
        let mode = std::fs::metadata(dir.path().join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
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
    async fn a_new_outbox_renumbers_pending_events_above_the_collector_once() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = Outbox::open(dir.path(), DEFAULT_MAX_BYTES).await.unwrap();
        let t = Timestamp::now();
        // A replacement outbox queued three events before reaching the
        // collector, which already holds up to 100.
        assert_eq!(
            outbox
                .append_all((1..=3).map(|n| (t, heartbeat(n))).collect())
                .await
                .unwrap(),
            [1, 2, 3]
        );
        assert!(outbox.raise_sequence_floor(100).await.unwrap());
        let seqs: Vec<u64> = outbox
            .read_after(0, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [101, 102, 103]);
        assert_eq!(outbox.append(t, heartbeat(4)).await.unwrap(), Some(104));
        // Once verified, pending events are never renumbered again (they may
        // have been sent).
        assert!(!outbox.raise_sequence_floor(102).await.unwrap());
        let seqs: Vec<u64> = outbox
            .read_after(0, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [101, 102, 103, 104]);
    }

    #[tokio::test]
    async fn floor_jumps_past_collector_high_water_mark() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = Outbox::open(dir.path(), DEFAULT_MAX_BYTES).await.unwrap();
        assert!(outbox.raise_sequence_floor(41).await.unwrap());
        assert_eq!(
            outbox.append(Timestamp::now(), heartbeat(1)).await.unwrap(),
            Some(42)
        );
        assert!(
            !outbox.raise_sequence_floor(10).await.unwrap(),
            "never lowers"
        );
        assert_eq!(
            outbox.append(Timestamp::now(), heartbeat(1)).await.unwrap(),
            Some(43)
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
        let (outbox, moved) = Outbox::open(dir.path(), DEFAULT_MAX_BYTES).await.unwrap();
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
            Some(1)
        );
        assert_eq!(
            outbox.state(key::CORRUPT_MOVED_TO).await.unwrap(),
            Some(moved.display().to_string())
        );
    }

    #[tokio::test]
    async fn truncated_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (outbox, _) = Outbox::open(dir.path(), DEFAULT_MAX_BYTES).await.unwrap();
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
        let (outbox, moved) = Outbox::open(dir.path(), DEFAULT_MAX_BYTES).await.unwrap();
        assert!(moved.is_some(), "truncation detected");
        assert_eq!(outbox.stats().await.unwrap().depth, 0);
    }

    fn capture(severity: u32, size: usize) -> v1::event::Body {
        v1::event::Body::Capture(v1::Capture {
            severity,
            image_png: vec![7; size],
            ..Default::default()
        })
    }

    fn session() -> v1::event::Body {
        v1::event::Body::Session(v1::SessionEvent {
            account: "u1".into(),
            ..Default::default()
        })
    }

    /// Bytes one event counts against the bound.
    fn cost(body: v1::event::Body) -> u64 {
        v1::Event {
            body: Some(body),
            ..Default::default()
        }
        .encoded_len() as u64
            + ROW_OVERHEAD
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

    async fn evicted(outbox: &Outbox) -> Vec<(&'static str, u64)> {
        State::new(outbox)
            .eviction_totals()
            .await
            .unwrap()
            .into_iter()
            .filter(|(_, n)| *n > 0)
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

    const HEARTBEAT: v1::Heartbeat = v1::Heartbeat {
        uptime_secs: 0,
        interval_secs: 60,
    };

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

    /// A second connection to the outbox file holding an exclusive lock,
    /// as another process (a backup tool, a stuck older daemon) would.
    async fn lock_exclusively(path: &Path) -> sqlx::SqliteConnection {
        let options = SqliteConnectOptions::from_str("sqlite://")
            .unwrap()
            .filename(path)
            .pragma("locking_mode", "EXCLUSIVE");
        let mut other = sqlx::SqliteConnection::connect_with(&options)
            .await
            .unwrap();
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut other)
            .await
            .unwrap();
        sqlx::query("INSERT INTO state (key, value) VALUES ('locked', 'yes')")
            .execute(&mut other)
            .await
            .unwrap();
        other
    }

    #[tokio::test]
    async fn a_locked_outbox_is_left_in_place_and_reported_as_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = Outbox::open(dir.path(), DEFAULT_MAX_BYTES).await.unwrap();
        outbox.append(Timestamp::now(), session()).await.unwrap();
        outbox.close().await;
        let lock = lock_exclusively(&dir.path().join(FILE_NAME)).await;

        let opened =
            Outbox::open_waiting(dir.path(), DEFAULT_MAX_BYTES, Duration::from_millis(100)).await;
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            !names.iter().any(|n| n.contains("corrupt")),
            "a locked file is not corrupt: {names:?}"
        );
        match opened {
            Err(OpenError::Unavailable(e)) => assert!(e.to_string().contains("locked"), "{e}"),
            Err(e) => panic!("expected unavailable, got {e}"),
            Ok((_, moved)) => panic!("opened a locked file (moved: {moved:?})"),
        }
        drop(lock);
        // Once the lock is gone the same file opens with its event.
        let (outbox, moved) = Outbox::open(dir.path(), DEFAULT_MAX_BYTES).await.unwrap();
        assert_eq!((moved, outbox.stats().await.unwrap().depth), (None, 1));
    }

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
            // Lazy: a connection a failed assertion left open cannot keep
            // the mount behind.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0.path())
                .status();
        }
    }

    #[tokio::test]
    async fn a_full_disk_leaves_the_outbox_in_place_and_reports_it_unavailable() {
        let Some(disk) = SmallDisk::mount() else {
            return;
        };
        let dir = disk.0.path();
        let (outbox, _) = Outbox::open(dir, DEFAULT_MAX_BYTES).await.unwrap();
        outbox.append(Timestamp::now(), session()).await.unwrap();
        outbox.close().await;
        // Fill the disk to the last byte.
        let mut filler = std::fs::File::create(dir.join("filler")).unwrap();
        let block = vec![0u8; 64 * 1024];
        while std::io::Write::write_all(&mut filler, &block).is_ok() {}
        while std::io::Write::write_all(&mut filler, &block[..512]).is_ok() {}
        while std::io::Write::write_all(&mut filler, &block[..1]).is_ok() {}
        drop(filler);

        match Outbox::open(dir, DEFAULT_MAX_BYTES).await {
            Err(OpenError::Unavailable(e)) => eprintln!("as expected: {e}"),
            Err(e) => panic!("expected unavailable, got {e}"),
            Ok((_, moved)) => panic!("opened on a full disk (moved: {moved:?})"),
        }
        let names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| n.contains("corrupt")), "{names:?}");
        // Room again: the same file, with its event.
        std::fs::remove_file(dir.join("filler")).unwrap();
        let (outbox, moved) = Outbox::open(dir, DEFAULT_MAX_BYTES).await.unwrap();
        assert_eq!((moved, outbox.stats().await.unwrap().depth), (None, 1));
        outbox.close().await;
    }
}
