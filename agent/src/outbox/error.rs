//! The outbox's errors, and what each says about the file: corrupt (only
//! this moves it aside), transient (a full disk, an I/O error, another
//! process's lock: try again later) or neither.

use std::path::PathBuf;

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
pub(super) enum Fault {
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

    pub(super) fn fault(&self) -> Fault {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
