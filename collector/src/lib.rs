//! Hall Monitor collector: receives what agents stream, stores it, and (in
//! later modules) applies the schools' rules. `main.rs` only parses the
//! command line; everything it runs lives here so tests and benches reach it.

pub mod api;
pub mod auth;
pub mod cli;
pub mod compliance;
pub mod config;
pub mod directory;
pub mod enroll;
pub mod evidence;
pub mod flags;
pub mod incidents;
pub mod ingest;
pub mod init;
pub mod listener;
pub mod model;
pub mod notify;
pub mod pki;
pub mod policies;
pub mod rules;
pub mod serve;
pub mod signins;
pub mod store;

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
    store::SqliteStore::open(&db, false)
        .await
        .with_context(|| format!("opening {}", db.display()))
}
