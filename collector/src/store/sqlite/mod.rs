//! SQLite backend: one file in WAL mode. All writes go through a pool of one
//! connection (the single writer), reads through a separate pool, so readers
//! never wait on a batch commit and writers never contend for the lock.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use super::{Result, StoreError};
use crate::model::{DeviceFacts, Enforcement, Site, SiteId};
#[cfg(test)]
use crate::store::{DeviceStore, SiteStore};

mod activity;
mod alerts;
mod api_tokens;
mod audit;
mod aup;
mod console;
mod devices;
mod incidents;
mod ingest;
mod mfa;
mod notify;
mod policies;
mod report;
mod sites;
mod tamper;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// How close captures must be to join an incident.
    incident_window: jiff::SignedDuration,
    /// `collector.toml`'s capture alerts (under each site's console
    /// override, read in the batch's transaction).
    alerts: std::sync::Arc<crate::alerts::FileAlerts>,
}

impl SqliteStore {
    /// Opens (creating if `create`) the database file and applies pending
    /// migrations.
    pub async fn open(path: &Path, create: bool) -> Result<Self> {
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL: a commit survives a process crash; only a power
            // loss can drop the last transactions, never corrupt the file.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            // A connection handed back still inside a transaction (a COMMIT
            // that failed on a full disk leaves one) is closed and replaced,
            // so the single writer recovers by itself when space returns.
            .after_release(|connection, _| {
                Box::pin(async move {
                    let clean = !sqlx::Connection::is_in_transaction(connection);
                    if !clean {
                        tracing::warn!(
                            "store writer left inside a failed transaction; reconnecting"
                        );
                    }
                    Ok(clean)
                })
            })
            .connect_with(options.clone())
            .await?;
        MIGRATIONS.run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        Ok(SqliteStore {
            writer,
            reader,
            incident_window: crate::incidents::DEFAULT_INCIDENT_WINDOW,
            alerts: Default::default(),
        })
    }

    /// SQLite's `quick_check`: Ok, or what it found (the first lines).
    pub async fn quick_check(&self) -> Result<Result<(), String>> {
        let found: Vec<String> = sqlx::query_scalar("PRAGMA quick_check(10)")
            .fetch_all(&self.writer)
            .await?;
        Ok(match found.as_slice() {
            [ok] if ok == "ok" => Ok(()),
            _ => Err(found.join("; ")),
        })
    }

    /// A consistent copy of the database at `to` (`VACUUM INTO`), taken
    /// while the collector runs; `to` must not exist.
    pub async fn backup(&self, to: &Path) -> Result<()> {
        sqlx::query("VACUUM INTO ?")
            .bind(to.to_string_lossy().into_owned())
            .execute(&self.reader)
            .await?;
        Ok(())
    }

    pub fn with_incident_window(mut self, window: jiff::SignedDuration) -> Self {
        self.incident_window = window;
        self
    }

    /// `collector.toml`'s capture alerts (`alerts::FileAlerts`); the
    /// built-in defaults until set.
    pub fn with_alerts(mut self, alerts: crate::alerts::FileAlerts) -> Self {
        self.alerts = std::sync::Arc::new(alerts);
        self
    }

    /// Closes both pools, the writer last: closing the last connection
    /// checkpoints the WAL into the database file and removes it, which a
    /// read-only connection may not do.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

fn millis(t: Timestamp) -> i64 {
    t.as_millisecond()
}

fn instant(ms: i64) -> Result<Timestamp> {
    Timestamp::from_millisecond(ms).map_err(|e| StoreError::Corrupt(format!("timestamp {ms}: {e}")))
}

fn optional_instant(ms: Option<i64>) -> Result<Option<Timestamp>> {
    ms.map(instant).transpose()
}

fn site_from_row(row: &SqliteRow) -> Result<Site> {
    Ok(Site {
        id: SiteId(row.try_get("id")?),
        name: row.try_get("name")?,
        timezone: row.try_get("timezone")?,
    })
}

fn enforcement(row: &SqliteRow) -> Result<Enforcement> {
    let text: String = row.try_get("enforcement")?;
    Enforcement::parse(&text)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown enforcement state '{text}'")))
}

fn facts_json(facts: &DeviceFacts) -> String {
    // Serialising plain data with string keys cannot fail.
    serde_json::to_string(facts).expect("facts serialise")
}

/// Test fixtures shared by the store's and its callers' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::model::DeviceId;
    use crate::store::Enrollment;

    /// A store in `dir` with site "Cabot" and device "dev-1" (machine id
    /// "m-1") enrolled at `at`.
    pub(crate) async fn store_with_device(
        dir: &Path,
        at: Timestamp,
    ) -> (SqliteStore, Site, DeviceId) {
        let store = SqliteStore::open(&dir.join("c.db"), true).await.unwrap();
        let site = store
            .create_site("Cabot", "Europe/London", at)
            .await
            .unwrap();
        let device = DeviceId::from_string("dev-1");
        let facts = DeviceFacts {
            machine_id: "m-1".into(),
            ..DeviceFacts::default()
        };
        store
            .save_enrollment(Enrollment::active(
                device.clone(),
                site.id,
                facts,
                "00".into(),
                at,
            ))
            .await
            .unwrap();
        (store, site, device)
    }

    /// Records `capture` as the device's first event, at `at`: the
    /// incident it opened and the capture's id.
    pub(crate) async fn record_first_capture(
        store: &SqliteStore,
        device: &DeviceId,
        capture: crate::model::CaptureRecord,
        at: Timestamp,
    ) -> (i64, i64) {
        use crate::store::{IncidentStore, IngestStore};
        let event = crate::model::Event {
            seq: crate::model::Seq(1),
            event_id: "e1".into(),
            occurred_at: at,
            body: crate::model::EventBody::Capture(capture),
        };
        store.record_batch(device, &[event], at).await.unwrap();
        let incident = store
            .list_incidents(&crate::store::DeviceFilter::default(), None)
            .await
            .unwrap()[0]
            .id;
        let capture = store.incident(incident).await.unwrap().unwrap().1[0].id;
        (incident, capture)
    }

    /// A snapshot capture without an image, rule `CATEGORY-1`, by
    /// `pupil1` in Firefox: tests change the fields they care about.
    pub(crate) fn snapshot(category: &str, severity: u8) -> crate::model::CaptureRecord {
        crate::model::CaptureRecord {
            rule_id: format!("{category}-1"),
            category: category.into(),
            severity,
            matched_text: "matched words".into(),
            window_title: "matched words - Mozilla Firefox".into(),
            process_name: "firefox".into(),
            account: "pupil1".into(),
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DeviceId;
    use crate::store::Enrollment;

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
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0.path())
                .status();
        }
    }

    fn enrollment(n: usize, site: SiteId) -> Enrollment {
        Enrollment::active(
            DeviceId::from_string(format!("dev-{n}")),
            site,
            DeviceFacts {
                hostname: "x".repeat(64 * 1024),
                machine_id: format!("m-{n}"),
                ..DeviceFacts::default()
            },
            format!("{n:064}"),
            Timestamp::now(),
        )
    }

    #[tokio::test]
    async fn the_writer_recovers_by_itself_when_a_full_disk_has_space_again() {
        let Some(disk) = SmallDisk::mount() else {
            return;
        };
        let store = SqliteStore::open(&disk.0.path().join("c.db"), true)
            .await
            .unwrap();
        let site = store
            .create_site("Cabot", "Europe/London", Timestamp::now())
            .await
            .unwrap();
        // Fill the disk: first with a file, then with rows until a write
        // fails.
        let filler = disk.0.path().join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while std::io::Write::write_all(&mut file, &block).is_ok() {}
        drop(file);
        let mut n = 0;
        let failed = loop {
            n += 1;
            if let Err(e) = store.save_enrollment(enrollment(n, site.id)).await {
                break e;
            }
            assert!(n < 1_000, "the disk never filled");
        };
        eprintln!("full: {failed}");
        // Space returns: the next writes succeed without a restart.
        std::fs::remove_file(&filler).unwrap();
        for m in n + 1..n + 4 {
            store
                .save_enrollment(enrollment(m, site.id))
                .await
                .unwrap_or_else(|e| panic!("write {m} after space returned: {e}"));
        }
        store.close().await;
    }

    #[tokio::test]
    async fn backups_are_whole_and_sound() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("c.db"), true)
            .await
            .unwrap();
        let site = store
            .create_site("Cabot", "Europe/London", Timestamp::now())
            .await
            .unwrap();
        store.save_enrollment(enrollment(1, site.id)).await.unwrap();
        let copy = dir.path().join("backup.db");
        store.backup(&copy).await.unwrap();
        let restored = SqliteStore::open(&copy, false).await.unwrap();
        assert_eq!(restored.quick_check().await.unwrap(), Ok(()));
        assert_eq!(restored.list_devices(None).await.unwrap().len(), 1);
    }
}
