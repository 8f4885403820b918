//! Opening the outbox: creating it private, checking it (`quick_check`),
//! migrating it, and moving a corrupt file aside for a new one; opening
//! it read-only for `status` and `check`.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::error::Fault;
use super::{Books, FILE_NAME, OpenError, Outbox, OutboxError, ROW_OVERHEAD, Result};
use crate::state::State;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a statement waits for another connection's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

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
    use crate::outbox::DEFAULT_MAX_BYTES;
    use crate::outbox::test_events::{heartbeat, session};
    use crate::state::key;
    use sqlx::Connection;

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
