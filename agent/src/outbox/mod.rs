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
//!   is dropped (and counted). Captures of severity 4–5, monitoring gaps,
//!   agent signals and the outbox's own reports are never evicted and are
//!   always accepted, even past the bound. Every eviction is counted per class in the state table (never
//!   evicted); `take_eviction_report` adds the counts not yet reported to
//!   the one unsent `OutboxReport` (or starts one), so what the collector
//!   is told adds up to exactly what was evicted.
//! - Consecutive heartbeats that have never been sent are merged into one
//!   `HeartbeatInterval` (first, last, count), so a month offline is one
//!   row, not 40,000. A row handed to the stream once (`read_for_send`), or
//!   numbered by an earlier process, is never rewritten, even after a
//!   disconnect: its ack may have been lost after the collector committed
//!   it, and a rewrite would then be ignored as a duplicate.
//!
//! Files by concern: `open` (creating, checking, moving a corrupt file
//! aside), `queue` (append, heartbeat merging, batches, acknowledgement),
//! `evict` (classes and the bound), `report` (`OutboxReport`s about the
//! outbox itself), `sequence` (the numbering floor), `error` (what a
//! failure says about the file) and `state_table` (the raw `state` table
//! that `crate::state` types).

mod error;
mod evict;
mod open;
mod queue;
mod report;
mod sequence;
mod state_table;

pub use error::{OpenError, OutboxError, Result};
pub use evict::{Priority, REPORT_CLASSES, classify};

use std::path::PathBuf;

use jiff::Timestamp;
use sqlx::sqlite::SqlitePool;

pub const FILE_NAME: &str = "outbox.db";

/// Beside the outbox while the daemon cannot open it: why (for `status`).
pub const UNAVAILABLE_FILE: &str = "outbox.unavailable";

/// Bytes counted per row on top of its payload (ids, times, index entry).
pub const ROW_OVERHEAD: u64 = 96;

pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Payload bytes one batch carries at most: half the 16 MiB message limit
/// of both ends, leaving room for framing.
pub const BATCH_BYTES: u64 = 8 * 1024 * 1024;

/// An event larger than this is never sent (it could not fit a message).
pub const MAX_EVENT_BYTES: u64 = 12 * 1024 * 1024;

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

impl Outbox {
    fn db(&self) -> impl Fn(sqlx::Error) -> OutboxError + '_ {
        |source| OutboxError::Database {
            path: self.path.clone(),
            source,
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Events the outbox's tests queue.
#[cfg(test)]
mod test_events {
    use hallmonitor_proto::v1;
    use prost::Message;

    use super::{Outbox, ROW_OVERHEAD};
    use crate::state::State;

    pub fn heartbeat(n: u64) -> v1::event::Body {
        v1::event::Body::Heartbeat(v1::Heartbeat {
            uptime_secs: n,
            interval_secs: 60,
        })
    }

    pub const HEARTBEAT: v1::Heartbeat = v1::Heartbeat {
        uptime_secs: 0,
        interval_secs: 60,
    };

    pub fn capture(severity: u32, size: usize) -> v1::event::Body {
        v1::event::Body::Capture(v1::Capture {
            severity,
            image_png: vec![7; size],
            ..Default::default()
        })
    }

    pub fn session() -> v1::event::Body {
        v1::event::Body::Session(v1::SessionEvent {
            account: "u1".into(),
            ..Default::default()
        })
    }

    /// Bytes one event counts against the bound.
    pub fn cost(body: v1::event::Body) -> u64 {
        v1::Event {
            body: Some(body),
            ..Default::default()
        }
        .encoded_len() as u64
            + ROW_OVERHEAD
    }

    pub async fn evicted(outbox: &Outbox) -> Vec<(&'static str, u64)> {
        State::new(outbox)
            .eviction_totals()
            .await
            .unwrap()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}
