//! Unapproved software: new executables or scripts appearing in users'
//! Downloads folders or on removable media become file-alert events.
//!
//! The daemon watches the configured folders (`[files] watch`, globs such
//! as `/home/*/Downloads` and `/media/*/*`, expanded when the watcher
//! starts and again every minute so new users and new media are picked
//! up) with `notify`. A file counts when its name ends in one of the
//! configured extensions or it is executable; the alert carries its path,
//! SHA-256 and the account that owns it.
//!
//! The folders belong to pupils, so everything in them is hostile: a file
//! is opened without following a symbolic link (`O_NOFOLLOW`) and without
//! waiting for a FIFO's writer (`O_NONBLOCK`), judged on the open handle
//! (`fstat`: a regular file, its owner), and hashed with streaming reads on
//! a blocking thread, at most `[files] max_hash_bytes` of it (a larger file
//! is alerted with an empty hash). Memory is bounded too: at most
//! `QUEUE` paths wait (further events are dropped and counted, and the
//! folders are looked through again), and the file versions already
//! reported, keyed by (device, inode, size, modification time), are capped
//! at `REPORTED` (the oldest forgotten first: a file forgotten and touched
//! again is reported again).

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hallmonitor_proto::v1;
use jiff::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::config::FilesConfig;
use crate::outbox::Outbox;

/// Paths waiting to be looked at.
pub const QUEUE: usize = 1024;
/// File versions remembered as reported.
pub const REPORTED: usize = 4096;
/// Folders are looked through at most this deep after dropped events.
const RESCAN_DEPTH: usize = 4;
/// …and at most this many entries each time.
const RESCAN_ENTRIES: usize = 20_000;

/// Whether the name looks like software we should not wait for: browsers
/// download to a temporary name first.
fn name_counts(path: &Path, extensions: &[String], executable: bool) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if name.ends_with(".part") || name.ends_with(".crdownload") || name.starts_with('.') {
        return false;
    }
    extensions
        .iter()
        .any(|e| name.ends_with(&format!(".{}", e.to_lowercase())))
        || executable
}

/// Whether `path` looks like software: a regular file (not a symbolic
/// link) with a listed extension or an execute bit.
pub fn is_software(path: &Path, extensions: &[String]) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    meta.is_file() && name_counts(path, extensions, meta.permissions().mode() & 0o111 != 0)
}

/// One version of one file: reported once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub device: u64,
    pub inode: u64,
    pub size: u64,
    pub modified_ns: i128,
}

impl FileKey {
    fn of(meta: &std::fs::Metadata) -> FileKey {
        FileKey {
            device: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            modified_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// The file versions already reported, at most `capacity` of them; the
/// oldest is forgotten first. A new version of a file (a new mtime) whose
/// content is what was reported for that file already is not reported
/// again.
#[derive(Debug)]
pub struct Reported {
    capacity: usize,
    keys: HashSet<FileKey>,
    order: VecDeque<FileKey>,
    /// The SHA-256 last reported per (device, inode).
    contents: std::collections::HashMap<(u64, u64), String>,
}

impl Reported {
    pub fn new(capacity: usize) -> Reported {
        Reported {
            capacity: capacity.max(1),
            keys: HashSet::new(),
            order: VecDeque::new(),
            contents: Default::default(),
        }
    }

    /// Remembers this version and its content; false when the version was
    /// reported already, or the file's content is the one reported last.
    pub fn insert_content(&mut self, key: FileKey, sha256: &str) -> bool {
        let new_version = self.insert(key);
        let file = (key.device, key.inode);
        let same_content =
            !sha256.is_empty() && self.contents.get(&file).is_some_and(|s| s == sha256);
        self.contents.insert(file, sha256.to_owned());
        if self.contents.len() > self.capacity * 2 {
            let kept: HashSet<(u64, u64)> = self.keys.iter().map(|k| (k.device, k.inode)).collect();
            self.contents.retain(|file, _| kept.contains(file));
        }
        new_version && !same_content
    }

    /// Remembers `key`; false when it was already there.
    pub fn insert(&mut self, key: FileKey) -> bool {
        if !self.keys.insert(key) {
            return false;
        }
        self.order.push_back(key);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
        true
    }

    pub fn contains(&self, key: &FileKey) -> bool {
        self.keys.contains(key)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Opens `path` if it is a regular file, without following a symbolic
/// link or waiting for a FIFO; the metadata is the open file's.
fn open_regular(path: &Path) -> std::io::Result<(File, std::fs::Metadata)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok((file, meta))
}

/// SHA-256 of `file`, read in chunks; None when it is longer than `max`
/// bytes (then not read at all) or grows past it while read.
fn sha256(file: File, len: u64, max: u64) -> std::io::Result<Option<String>> {
    if len > max {
        return Ok(None);
    }
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut reader = file.take(max + 1);
    let mut buffer = vec![0; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        total += n as u64;
        if total > max {
            return Ok(None);
        }
        context.update(&buffer[..n]);
    }
    Ok(Some(
        context
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    ))
}

/// The alert for a software file at `path` not reported yet (None when it
/// is not software, cannot be read, or was reported). Blocking: call it
/// from a blocking thread.
pub fn examine(
    path: &Path,
    config: &FilesConfig,
    reported: &Mutex<Reported>,
) -> Option<v1::FileAlert> {
    let (file, meta) = open_regular(path).ok()?;
    // An empty file is one just created and about to be written: its
    // close (or rename into place) brings it back.
    if meta.size() == 0 || !name_counts(path, &config.extensions, meta.mode() & 0o111 != 0) {
        return None;
    }
    let key = FileKey::of(&meta);
    if reported.lock().ok()?.contains(&key) {
        return None;
    }
    let sha256 = sha256(file, meta.size(), config.max_hash_bytes).ok()?;
    if sha256.is_none() {
        tracing::info!(
            size = meta.size(),
            max = config.max_hash_bytes,
            "file too large to hash; alerting without a hash"
        );
    }
    if !reported
        .lock()
        .ok()?
        .insert_content(key, sha256.as_deref().unwrap_or_default())
    {
        return None;
    }
    Some(v1::FileAlert {
        path: path.display().to_string(),
        rule_id: "unapproved-software".into(),
        category: "unapproved-software".into(),
        severity: config.severity,
        account: crate::accounts::account_of(meta.uid()),
        sha256: sha256.unwrap_or_default(),
    })
}

/// The alert for a file (None when it cannot be read, e.g. gone again, is
/// not a regular file, or is empty), hashed up to the default size limit.
pub fn alert(path: &Path, severity: u32) -> Option<v1::FileAlert> {
    let (file, meta) = open_regular(path).ok()?;
    if meta.size() == 0 {
        return None; // being written
    }
    let max = FilesConfig::default().max_hash_bytes;
    let sha256 = sha256(file, meta.size(), max).ok()?;
    Some(v1::FileAlert {
        path: path.display().to_string(),
        rule_id: "unapproved-software".into(),
        category: "unapproved-software".into(),
        severity,
        account: crate::accounts::account_of(meta.uid()),
        sha256: sha256.unwrap_or_default(),
    })
}

/// The folders the globs name now.
pub fn expand(globs: &[String]) -> Vec<PathBuf> {
    let mut folders: Vec<PathBuf> = globs
        .iter()
        .filter_map(|g| glob::glob(g).ok())
        .flatten()
        .filter_map(Result::ok)
        .filter(|p| p.is_dir())
        .collect();
    folders.sort();
    folders.dedup();
    folders
}

/// Hands a path from the watcher's thread to the loop without waiting: a
/// full queue drops it and counts.
fn enqueue(queue: &tokio::sync::mpsc::Sender<PathBuf>, path: PathBuf, dropped: &AtomicU64) {
    if queue.try_send(path).is_err() {
        dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Regular files under `folders` (not following links) whose inode changed
/// at or after `since` (Unix seconds; a pupil can set a file's modification
/// time, not its change time), at most `depth` folders down and `limit`
/// entries in all: what dropped events may have named.
fn files_under(folders: &[PathBuf], since: i64, depth: usize, limit: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut seen = 0;
    let mut pending: Vec<(PathBuf, usize)> = folders.iter().map(|f| (f.clone(), 0)).collect();
    while let Some((folder, level)) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > limit {
                return found;
            }
            match entry.file_type() {
                Ok(t) if t.is_file() && entry.metadata().is_ok_and(|m| m.ctime() >= since) => {
                    found.push(entry.path())
                }
                Ok(t) if t.is_dir() && level < depth => pending.push((entry.path(), level + 1)),
                _ => {}
            }
        }
    }
    found
}

/// Watches the configured folders for new software and queues a file
/// alert per new file version (see the module docs).
pub async fn watch(
    config: FilesConfig,
    outbox: Outbox,
    wake: Arc<crate::stream::Wake>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use notify::Watcher;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<PathBuf>(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let (sender, counter) = (tx.clone(), dropped.clone());
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // A rename into place, a write finished, or a change of mode (a
        // file made executable with chmod +x becomes software).
        if matches!(
            event.kind,
            notify::EventKind::Create(_)
                | notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
                | notify::EventKind::Modify(notify::event::ModifyKind::Metadata(_))
                | notify::EventKind::Access(notify::event::AccessKind::Close(
                    notify::event::AccessMode::Write
                ))
        ) {
            for path in event.paths {
                enqueue(&sender, path, &counter);
            }
        }
    };
    // Never into a link: `ln -s / ~/Downloads/x` must not make the agent
    // watch (and hash) the whole file system.
    let settings = notify::Config::default().with_follow_symlinks(false);
    let mut watcher = match notify::RecommendedWatcher::new(handler, settings) {
        Ok(watcher) => watcher,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch folders for unapproved software");
            shutdown.cancelled().await;
            return Ok(());
        }
    };
    let config = Arc::new(config);
    let reported = Arc::new(Mutex::new(Reported::new(REPORTED)));
    let started = Timestamp::now().as_second();
    let mut watched: Vec<PathBuf> = Vec::new();
    let mut rescan = tokio::time::interval(Duration::from_secs(60));
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = rescan.tick() => {
                for folder in expand(&config.watch) {
                    if !watched.contains(&folder)
                        && watcher.watch(&folder, notify::RecursiveMode::Recursive).is_ok()
                    {
                        tracing::info!(folder = %folder.display(), "watching for unapproved software");
                        watched.push(folder);
                    }
                }
                let lost = dropped.swap(0, Ordering::Relaxed);
                if lost > 0 {
                    // Events were dropped: look through the folders for
                    // what they named (already reported files are skipped).
                    tracing::warn!(dropped = lost, "file events dropped; looking through the watched folders");
                    let folders = watched.clone();
                    let missed = tokio::task::spawn_blocking(move || {
                        files_under(&folders, started, RESCAN_DEPTH, RESCAN_ENTRIES)
                    })
                    .await?;
                    for path in missed {
                        enqueue(&tx, path, &dropped);
                    }
                }
            }
            path = rx.recv() => {
                let Some(path) = path else { return Ok(()) };
                let (config, reported) = (config.clone(), reported.clone());
                let alert = tokio::task::spawn_blocking(move || examine(&path, &config, &reported)).await?;
                let Some(alert) = alert else { continue };
                // A write error (a full disk) is not worth stopping the
                // agent for: say so and go on watching.
                match outbox
                    .append(Timestamp::now(), v1::event::Body::FileAlert(alert))
                    .await
                {
                    Ok(_) => wake.notify_one(),
                    Err(e) => tracing::error!(error = %e, "cannot queue a file alert"),
                }
            }
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_same_content_written_again_is_not_reported_again() {
        let mut reported = Reported::new(8);
        let version = |modified_ns| FileKey {
            device: 1,
            inode: 2,
            size: 10,
            modified_ns,
        };
        assert!(reported.insert_content(version(1), "aa"));
        assert!(
            !reported.insert_content(version(2), "aa"),
            "rewritten, same bytes"
        );
        assert!(reported.insert_content(version(3), "bb"), "new content");
        assert!(
            !reported.insert_content(version(3), "bb"),
            "the same version"
        );
    }

    use super::*;

    #[test]
    fn software_is_recognised_by_extension_or_execute_bit() {
        let dir = tempfile::tempdir().unwrap();
        let exts = vec!["sh".to_string(), "exe".into(), "AppImage".into()];
        let file = |name: &str, mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, b"#!/bin/sh\necho hi\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        };
        assert!(is_software(&file("game.EXE", 0o644), &exts));
        assert!(is_software(&file("tool.AppImage", 0o644), &exts));
        assert!(is_software(&file("run", 0o755), &exts), "execute bit");
        assert!(!is_software(&file("essay.docx", 0o644), &exts));
        assert!(
            !is_software(&file("setup.exe.part", 0o644), &exts),
            "still downloading"
        );
        let alert = alert(&dir.path().join("game.EXE"), 2).unwrap();
        assert_eq!(alert.severity, 2);
        assert_eq!(alert.sha256.len(), 64);
        assert!(
            expand(&[format!("{}/*", dir.path().display())]).is_empty(),
            "files are not folders"
        );
        assert_eq!(
            expand(&[dir.path().display().to_string()]),
            [dir.path().to_path_buf()]
        );
    }

    #[test]
    fn a_symlink_to_a_root_only_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("shadow");
        std::fs::write(&secret, b"root:$6$secret:19000:0:99999:7:::\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("game.sh");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        let exts = vec!["sh".to_string()];
        assert!(!is_software(&link, &exts), "a symlink is not software");
        assert_eq!(alert(&link, 2), None, "the target is not read");
    }

    #[test]
    fn a_fifo_does_not_block_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("setup.sh");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o755) }, 0);
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(alert(&fifo, 2)).unwrap());
        let result = finished
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("alert() returned (a FIFO with no writer must not block it)");
        assert_eq!(result, None);
        let reported = Mutex::new(Reported::new(8));
        let fifo = dir.path().join("setup.sh");
        let (done, finished) = std::sync::mpsc::channel();
        let config = FilesConfig::default();
        std::thread::spawn(move || done.send(examine(&fifo, &config, &reported)).unwrap());
        let result = finished
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("examine() returned");
        assert_eq!(result, None);
    }

    #[test]
    fn the_reported_set_stays_bounded() {
        let mut reported = Reported::new(3);
        let key = |inode| FileKey {
            device: 1,
            inode,
            size: 10,
            modified_ns: 0,
        };
        for inode in 0..1000 {
            assert!(reported.insert(key(inode)));
            assert!(reported.len() <= 3);
        }
        assert!(!reported.insert(key(999)), "remembered");
        assert!(!reported.contains(&key(0)), "the oldest is forgotten first");
        assert!(reported.contains(&key(997)));
    }

    #[test]
    fn each_file_version_is_reported_once_and_large_files_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let config = FilesConfig {
            max_hash_bytes: 16,
            ..FilesConfig::default()
        };
        let reported = Mutex::new(Reported::new(8));
        let path = dir.path().join("tool.sh");
        std::fs::write(&path, b"echo hi\n").unwrap();
        let first = examine(&path, &config, &reported).expect("new software");
        assert_eq!(first.sha256.len(), 64);
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        assert_eq!(first.account, crate::accounts::account_of(me));
        assert_eq!(examine(&path, &config, &reported), None, "same version");
        std::fs::write(&path, b"echo a longer script than sixteen bytes\n").unwrap();
        let second = examine(&path, &config, &reported).expect("a new version");
        assert_eq!(
            second.sha256, "",
            "over max_hash_bytes: alerted, not hashed"
        );
        assert_eq!(
            examine(&dir.path().join("essay.docx"), &config, &reported),
            None
        );
        std::fs::write(dir.path().join("empty.sh"), b"").unwrap();
        assert_eq!(
            examine(&dir.path().join("empty.sh"), &config, &reported),
            None,
            "still being written"
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_growing() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let dropped = AtomicU64::new(0);
        for n in 0..5 {
            enqueue(&tx, PathBuf::from(format!("/x/{n}")), &dropped);
        }
        assert_eq!(dropped.load(Ordering::Relaxed), 3);
        assert_eq!(rx.try_recv().unwrap(), PathBuf::from("/x/0"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/run.sh"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", dir.path().join("a/link.sh")).unwrap();
        let found = files_under(&[dir.path().to_path_buf()], 0, 4, 100);
        assert_eq!(found, [dir.path().join("a/b/run.sh")], "files, not links");
        assert!(files_under(&[dir.path().to_path_buf()], i64::MAX, 4, 100).is_empty());
    }

    /// The loop as the daemon runs it: one alert per file version, links
    /// not followed, a FIFO not waited for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_watcher_reports_each_new_program_once() {
        let root = tempfile::tempdir().unwrap();
        let watched = root.path().join("Downloads");
        std::fs::create_dir(&watched).unwrap();
        let (outbox, _) = Outbox::open(root.path(), crate::outbox::DEFAULT_MAX_BYTES)
            .await
            .unwrap();
        let config = FilesConfig {
            watch: vec![watched.display().to_string()],
            ..FilesConfig::default()
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(watch(
            config,
            outbox.clone(),
            Arc::new(crate::stream::Wake::default()),
            shutdown.clone(),
        ));
        let depth = || async { outbox.stats().await.unwrap().depth };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        // Until the folder is watched, renaming the same file back and
        // forth changes nothing the alert is keyed on, so it is reported
        // once however many renames are seen.
        let (part, program) = (watched.join("game.sh.part"), watched.join("game.sh"));
        std::fs::write(&part, b"#!/bin/sh\necho hi\n").unwrap();
        while depth().await == 0 {
            assert!(tokio::time::Instant::now() < deadline, "no alert");
            std::fs::rename(&part, &program).unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            std::fs::rename(&program, &part).unwrap();
        }
        std::fs::rename(&part, &program).unwrap();
        // Neither of these is a program file to read; neither may stall
        // the loop.
        let name = std::ffi::CString::new(
            watched
                .join("pipe.sh")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o755) }, 0);
        std::os::unix::fs::symlink("/etc/shadow", watched.join("link.sh")).unwrap();
        // A last new program: the queue is in order, so once its alert is
        // in, everything before it was looked at.
        std::fs::write(watched.join("last.sh"), b"echo last\n").unwrap();
        while depth().await < 2 {
            assert!(tokio::time::Instant::now() < deadline, "the loop stalled");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(depth().await, 2, "game.sh once, last.sh once, nothing else");
        shutdown.cancel();
        task.await.unwrap().unwrap();
        outbox.close().await;
    }
}
