//! Hall Monitor collector: enrols devices, receives what agents stream,
//! stores it, applies the schools' rules (device activity, 2FA freshness,
//! suspicious activity), keeps flags, incidents and evidence, notifies
//! people and serves the JSON API. `main.rs` and `commands/` only parse and
//! run the command line; everything they run lives here so tests and
//! benches reach it.
//!
//! Architecture invariants: only `store` runs SQL; wire types
//! (`hallmonitor_proto::v1`) are converted to `model` at the edge
//! (`ingest`, `enroll`, `ingest::downstream`) and appear nowhere else.

pub mod alerts;
pub mod annual_review;
pub mod api;
pub mod aup;
pub mod auth;
pub mod compliance;
pub mod config;
pub mod console;
pub mod directory;
pub mod enroll;
pub mod evidence;
pub mod evidence_export;
pub mod exclusions;
pub mod flags;
pub mod incidents;
pub mod ingest;
pub mod init;
pub mod listener;
pub mod logging;
pub mod memory;
pub mod model;
pub mod notify;
pub mod pki;
pub mod policies;
pub mod render;
pub mod review;
pub mod risk;
pub mod rules;
pub mod serve;
pub mod signins;
pub mod site_settings;
pub mod store;
pub mod tamper;

use std::path::Path;

use anyhow::Context;

/// The SQLite database inside a data directory.
pub const DATABASE_FILE: &str = "collector.db";

/// Opens the store of an initialised data directory (never creates one).
pub async fn open_store(data: &Path) -> anyhow::Result<store::SqliteStore> {
    let db = data.join(DATABASE_FILE);
    if !db.exists() {
        anyhow::bail!(
            "{} is not an initialised collector data directory (no {DATABASE_FILE}); run `hallmonitor-collector init` first",
            data.display()
        );
    }
    // An empty file would silently become an empty collector (every agent
    // then refused as unknown): a lost or truncated database is an error.
    if std::fs::metadata(&db).is_ok_and(|m| m.len() == 0) {
        anyhow::bail!(
            "{} is empty (0 bytes): the collector's database was lost or truncated. {RESTORE}",
            db.display()
        );
    }
    store::SqliteStore::open(&db, false)
        .await
        .with_context(|| format!("opening {}. {RESTORE}", db.display()))
}

/// How to get a database back, for every message that finds it damaged.
pub const RESTORE: &str = "Stop the collector, move the damaged collector.db and its -wal and -shm \
files aside (an old -wal would be replayed onto the backup), copy the last backup \
(`hallmonitor-collector backup --to FILE` makes one) to DATA/collector.db and start again; \
agents resend everything they still hold.";

/// Opens the store and checks the database's integrity (`quick_check`)
/// before anything is served from it.
pub async fn open_checked_store(data: &Path) -> anyhow::Result<store::SqliteStore> {
    let store = open_store(data).await?;
    let db = data.join(DATABASE_FILE);
    match store
        .quick_check()
        .await
        .with_context(|| format!("checking {}. {RESTORE}", db.display()))?
    {
        Ok(()) => Ok(store),
        Err(found) => anyhow::bail!(
            "{} is damaged (quick_check: {found}); not serving from it. {RESTORE}",
            db.display()
        ),
    }
}
