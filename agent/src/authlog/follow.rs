//! Following the places two-step sign-ins are read from, for the daemon's
//! auth-logs task.
//!
//! One system source, chosen when the daemon starts (`[mfa] source`,
//! `choose`): the journal's root-written entries or the text logs, never
//! both, because rsyslog copies the journal's lines into the text logs and
//! reading both would count each completion twice. The PAM hook's own log
//! is followed with either.
//!
//! Guarantee: a completion read is appended to the outbox once. Where each
//! place was read up to (`authlog:<path>` for a file, `authlog:journal` for
//! the journal's cursor) is kept in memory and in the outbox state; it
//! advances only after what was read from there has been appended, and a
//! failed outbox write is logged once and tried again at the next read
//! instead of ending the task. The source last read is kept too
//! (`authlog_source`; a device with text-log positions but none is taken
//! to have read the files): on a device switching source, the new
//! source's places start from where they stand now (the journal's newest
//! entry, a text log's end), so what the old one sent is not sent again,
//! while a new device reads each place from its beginning. Limits: a
//! crash between an append and the state write after it sends that read
//! again; what was written to the old source after its last read, before
//! the switch, is not counted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hallmonitor_proto::v1;
use jiff::Timestamp;

use super::{Found, Pattern, Position, journal};
use crate::config::{MfaConfig, MfaSourceKind};
use crate::outbox::Outbox;
use crate::state::{State, key};
use crate::task::TaskContext;
use std::time::Duration;
use tokio::sync::Notify;

/// Where system two-step sign-ins are read from on this device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Entries journald attributes to root (`_UID=0`).
    Journal,
    /// The text logs in `[mfa] auth_logs`.
    Files,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Journal => "journal",
            Source::Files => "files",
        }
    }
}

/// The source `setting` names; for `auto`, the journal when `journald`
/// (`journal::journald_runs` in the daemon) says it runs, called only
/// then. Also says why, for the log.
pub fn choose(
    setting: MfaSourceKind,
    journald: impl FnOnce() -> Result<(), String>,
) -> (Source, String) {
    match setting {
        MfaSourceKind::Journal => (Source::Journal, "mfa.source is \"journal\"".into()),
        MfaSourceKind::Files => (Source::Files, "mfa.source is \"files\"".into()),
        MfaSourceKind::Auto => match journald() {
            Ok(()) => (
                Source::Journal,
                "mfa.source is \"auto\" and journald runs".into(),
            ),
            Err(why) => (
                Source::Files,
                format!("mfa.source is \"auto\" and journald does not run ({why})"),
            ),
        },
    }
}

/// Entries read from the journal at most per read; the rest at the next.
const JOURNAL_BATCH: usize = 1000;

/// The outbox, in the errors said once.
const OUTBOX: &str = "outbox";

/// A place sign-ins are read from.
#[derive(Clone, Debug)]
enum Place {
    /// A text log the system logger writes.
    SystemLog(PathBuf),
    /// The PAM hook's own log.
    HookLog(PathBuf),
    Journal,
}

impl Place {
    /// Where its position is kept in the outbox state.
    fn key(&self) -> String {
        match self {
            Place::SystemLog(path) | Place::HookLog(path) => key::authlog_file(path),
            Place::Journal => key::AUTHLOG_JOURNAL.into(),
        }
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::SystemLog(path) | Place::HookLog(path) => path.display().fmt(f),
            Place::Journal => f.write_str("the journal"),
        }
    }
}

/// Where reading of a place goes on from: a `Position` as JSON, or a
/// journal cursor, as the outbox state holds them.
struct Mark {
    value: Option<String>,
    /// Whether the outbox state holds `value` already.
    stored: bool,
}

/// The places of one source and the hook's log, and where each was read
/// up to.
pub struct Follower {
    source: Source,
    places: Vec<Place>,
    /// State keys of the configured text logs (`authlog_source` predates
    /// the journal: with one of these stored, the files were read).
    system_log_keys: Vec<String>,
    /// Whether this device read the other source before (from the state,
    /// at the first read).
    switching: Option<bool>,
    /// Whether `authlog_source` names `source` in the state.
    recorded: bool,
    journalctl: Vec<String>,
    patterns: Arc<Vec<Pattern>>,
    /// Loaded from the outbox state at a place's first read.
    marks: HashMap<String, Mark>,
    /// The last error said of each place (and of the outbox), so each is
    /// logged once.
    said: HashMap<String, String>,
}

impl Follower {
    pub fn new(
        config: &MfaConfig,
        source: Source,
        data_dir: &Path,
        patterns: Vec<Pattern>,
    ) -> Follower {
        let mut places: Vec<Place> = match source {
            Source::Journal => vec![Place::Journal],
            Source::Files => config
                .auth_logs
                .iter()
                .cloned()
                .map(Place::SystemLog)
                .collect(),
        };
        places.push(Place::HookLog(super::hook_log(data_dir)));
        Follower {
            source,
            places,
            system_log_keys: config
                .auth_logs
                .iter()
                .map(|p| key::authlog_file(p))
                .collect(),
            switching: None,
            recorded: false,
            journalctl: config.journalctl.clone(),
            patterns: Arc::new(patterns),
            marks: HashMap::new(),
            said: HashMap::new(),
        }
    }

    /// Folders whose changes are worth a read (rotation creates files);
    /// the journal is only polled.
    pub fn folders(&self) -> Vec<PathBuf> {
        let mut folders: Vec<PathBuf> = self
            .places
            .iter()
            .filter_map(|place| match place {
                Place::SystemLog(path) | Place::HookLog(path) => path.parent(),
                Place::Journal => None,
            })
            .map(Path::to_path_buf)
            .collect();
        folders.sort();
        folders.dedup();
        folders
    }

    /// Reads every place once and appends the completions found; returns
    /// how many were stored. A place that cannot be read (a refused log,
    /// journalctl failing) and an outbox that cannot be written are logged
    /// once and tried again at the next call; only a reader that panicked
    /// is an error.
    pub async fn read_all(&mut self, outbox: &Outbox) -> anyhow::Result<usize> {
        if self.switching.is_none() {
            match self.previous_source(outbox).await {
                Ok(previous) => {
                    let switching = previous.is_some_and(|p| p != self.source);
                    if switching {
                        tracing::info!(
                            from = previous.map(Source::name),
                            to = self.source.name(),
                            "two-step sign-in source changed on this device: the new one is read from now on"
                        );
                    }
                    self.recorded = previous == Some(self.source);
                    self.switching = Some(switching);
                }
                Err(e) => {
                    self.say(OUTBOX, &"the outbox", e.to_string());
                    return Ok(0);
                }
            }
        }
        let mut stored = 0;
        for place in self.places.clone() {
            stored += self.read_place(&place, outbox).await?;
        }
        self.record_source(outbox).await;
        Ok(stored)
    }

    /// The source this device read before, if any.
    async fn previous_source(&self, outbox: &Outbox) -> crate::outbox::Result<Option<Source>> {
        let state = State::new(outbox);
        if let Some(source) = state.authlog_source().await? {
            return Ok(Some(source));
        }
        if self.system_log_keys.is_empty() || !state.any_authlog_mark(&self.system_log_keys).await?
        {
            return Ok(None);
        }
        Ok(Some(Source::Files))
    }

    /// Once every place of the source has its start stored, records the
    /// source, so a restart goes on from the stored marks.
    async fn record_source(&mut self, outbox: &Outbox) {
        if self.recorded {
            return;
        }
        let started = self
            .places
            .iter()
            .all(|place| self.marks.get(&place.key()).is_some_and(|mark| mark.stored));
        if !started {
            return;
        }
        match State::new(outbox).set_authlog_source(self.source).await {
            Ok(()) => {
                self.recorded = true;
                self.outbox_written();
            }
            Err(e) => self.say(OUTBOX, &"the outbox", e.to_string()),
        }
    }

    async fn read_place(&mut self, place: &Place, outbox: &Outbox) -> anyhow::Result<usize> {
        let key = place.key();
        if !self.marks.contains_key(&key) {
            match self.starting_mark(place, outbox).await? {
                Ok(mark) => {
                    self.marks.insert(key.clone(), mark);
                }
                Err(error) => {
                    self.say(&key, place, error);
                    return Ok(0);
                }
            }
        }
        let from = self.marks[&key].value.clone();
        let (reading, journalctl, patterns) = (
            place.clone(),
            self.journalctl.clone(),
            self.patterns.clone(),
        );
        let read = tokio::task::spawn_blocking(move || {
            read(&reading, from, &journalctl, &patterns, Timestamp::now())
        })
        .await?;
        let (found, next) = match read {
            Ok(read) => read,
            Err(error) => {
                self.say(&key, place, error);
                return Ok(0);
            }
        };
        self.said.remove(&key);
        let mut stored = 0;
        if !found.is_empty() {
            tracing::info!(log = %place, count = found.len(), "two-step sign-ins seen");
            match outbox.append_all(events(found)).await {
                Ok(seqs) => {
                    stored = seqs.len();
                    self.outbox_written();
                }
                Err(e) => {
                    // The mark stays: the same completions are read again.
                    self.say(OUTBOX, &"the outbox", e.to_string());
                    return Ok(0);
                }
            }
        }
        let mark = self.marks.get_mut(&key).expect("loaded above");
        if next != mark.value {
            mark.value = next;
            mark.stored = false;
        }
        if mark.stored {
            return Ok(stored);
        }
        // From here on the mark in memory is ahead of the stored one, so a
        // failed write repeats nothing: it is written again next time.
        let unstored = mark.value.clone().unwrap_or_default();
        match State::new(outbox).set_authlog_mark(&key, &unstored).await {
            Ok(()) => {
                self.marks.get_mut(&key).expect("loaded above").stored = true;
                self.outbox_written();
            }
            Err(e) => self.say(OUTBOX, &"the outbox", e.to_string()),
        }
        Ok(stored)
    }

    /// Where a place's first read starts: on a device switching source, a
    /// system place starts where it stands now; otherwise at its stored
    /// mark, or its beginning. The inner error is one to retry (outbox or
    /// journalctl); the outer, a reader that panicked.
    async fn starting_mark(
        &self,
        place: &Place,
        outbox: &Outbox,
    ) -> anyhow::Result<Result<Mark, String>> {
        let switching = self.switching == Some(true) && !matches!(place, Place::HookLog(_));
        if !switching {
            return Ok(match State::new(outbox).authlog_mark(&place.key()).await {
                // Empty: stored as "from the beginning".
                Ok(value) => Ok(Mark {
                    value: value.filter(|v| !v.is_empty()),
                    stored: true,
                }),
                Err(e) => Err(e.to_string()),
            });
        }
        let (starting, journalctl) = (place.clone(), self.journalctl.clone());
        let now = tokio::task::spawn_blocking(move || match &starting {
            Place::Journal => journal::latest_cursor(&journalctl),
            Place::SystemLog(path) | Place::HookLog(path) => super::end_position(path)?
                .map(|p| serde_json::to_string(&p).map_err(std::io::Error::other))
                .transpose(),
        })
        .await?;
        Ok(match now {
            // Stored even when None, replacing a mark the source left
            // before it was switched away from.
            Ok(value) => Ok(Mark {
                value,
                stored: false,
            }),
            Err(e) => Err(format!("finding where it stands now: {e}")),
        })
    }

    /// Logs `error` about `what` (at `key`) unless it was the last said.
    fn say(&mut self, key: &str, what: &dyn std::fmt::Display, error: String) {
        if self.said.get(key) == Some(&error) {
            return;
        }
        if key == OUTBOX {
            tracing::warn!(error = %error, "cannot write two-step sign-ins to the outbox; will retry");
        } else {
            tracing::warn!(log = %what, error = %error, "cannot read authentication log; will retry");
        }
        self.said.insert(key.to_owned(), error);
    }

    fn outbox_written(&mut self) {
        if self.said.remove(OUTBOX).is_some() {
            tracing::info!("two-step sign-ins written to the outbox again");
        }
    }
}

/// Reads `place` from `from` (its mark); the completions and the next mark.
fn read(
    place: &Place,
    from: Option<String>,
    journalctl: &[String],
    patterns: &[Pattern],
    now: Timestamp,
) -> Result<(Vec<Found>, Option<String>), String> {
    match place {
        Place::SystemLog(path) | Place::HookLog(path) => {
            // An unreadable stored position reads the file from its start.
            let position: Option<Position> = from.and_then(|json| serde_json::from_str(&json).ok());
            let (found, position) = super::read_new(path, position.as_ref(), patterns, now)
                .map_err(|e| e.to_string())?;
            let next = position
                .map(|p| serde_json::to_string(&p))
                .transpose()
                .map_err(|e| e.to_string())?;
            Ok((found, next))
        }
        Place::Journal => {
            journal::read_journal(journalctl, from.as_deref(), patterns, now, JOURNAL_BATCH)
                .map_err(|e| e.to_string())
        }
    }
}

fn events(found: Vec<Found>) -> Vec<(Timestamp, v1::event::Body)> {
    found
        .into_iter()
        .map(|f| {
            (
                f.at,
                v1::event::Body::Mfa(v1::MfaCompletion {
                    account: f.account,
                    method: f.method,
                    source: f.source,
                }),
            )
        })
        .collect()
}

/// Follows where two-step sign-ins are logged and queues an MFA-completion
/// event per accepted second factor (see `authlog::follow`). Bad patterns
/// end the task; a log or journal it cannot read, or an outbox it cannot
/// write, is logged and tried again at the next tick.
pub async fn watch(ctx: TaskContext) -> anyhow::Result<()> {
    let TaskContext {
        config,
        outbox,
        wake,
        shutdown,
    } = ctx;
    use notify::Watcher;
    let patterns = config.mfa.compiled().map_err(|e| anyhow::anyhow!(e))?;
    let (setting, journalctl) = (config.mfa.source, config.mfa.journalctl.clone());
    let (source, why) = tokio::task::spawn_blocking(move || {
        choose(setting, || {
            crate::authlog::journal::journald_runs(
                &journalctl,
                std::path::Path::new(crate::authlog::journal::SOCKET),
            )
        })
    })
    .await?;
    tracing::info!(source = source.name(), reason = %why, "reading two-step sign-ins");
    let mut follower = Follower::new(&config.mfa, source, &config.data_dir, patterns);
    // Wake on any change in the logs' folders (rotation creates files).
    let changed = Arc::new(Notify::new());
    let notifier = changed.clone();
    let mut watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
        notifier.notify_one();
    })
    .ok();
    if let Some(watcher) = watcher.as_mut() {
        for folder in follower.folders() {
            if let Err(e) = watcher.watch(&folder, notify::RecursiveMode::NonRecursive) {
                tracing::debug!(folder = %folder.display(), error = %e, "not watching; polling only");
            }
        }
    }
    let mut poll =
        tokio::time::interval(Duration::from_secs(u64::from(config.mfa.poll_secs.get())));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = poll.tick() => {}
            _ = changed.notified() => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        if follower.read_all(&outbox).await? > 0 {
            wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::DEFAULT_MAX_BYTES;

    const MODULE: &str = "sshd(pam_google_authenticator)";

    fn patterns() -> Vec<Pattern> {
        MfaConfig::default().compiled().unwrap()
    }

    #[test]
    fn the_source_is_the_setting_or_for_auto_whether_journald_runs() {
        use MfaSourceKind::{Auto, Files, Journal};
        let cases = [
            (
                "journal, whatever journald does",
                Journal,
                Err("no socket"),
                Source::Journal,
            ),
            (
                "files, whatever journald does",
                Files,
                Ok(()),
                Source::Files,
            ),
            ("auto where journald runs", Auto, Ok(()), Source::Journal),
            (
                "auto where it does not",
                Auto,
                Err("no socket"),
                Source::Files,
            ),
        ];
        for (name, setting, journald, want) in cases {
            let mut checked = false;
            let (source, why) = choose(setting, || {
                checked = true;
                journald.map_err(String::from)
            });
            assert_eq!(source, want, "{name}");
            assert_eq!(checked, setting == Auto, "{name}: journald checked");
            if journald.is_err() && setting == Auto {
                assert!(why.contains("no socket"), "{name}: {why}");
            }
        }
    }

    /// A stand-in for journalctl in `dir`, printing the lines of
    /// `dir/entries.json` after `--after-cursor` (all without one; the
    /// last N with `-n N`; failing for a cursor it does not hold), and
    /// appending its arguments to `dir/calls`. Run through `sh`: executing
    /// a file just written can fail with ETXTBSY while other tests fork.
    fn stand_in(dir: &Path) -> Vec<String> {
        let script = dir.join("journalctl");
        std::fs::write(
            &script,
            format!(
                r#"#!/bin/sh
entries={entries}
echo "$@" >> {calls}
after=
count=
while [ $# -gt 0 ]; do
  case "$1" in
    --after-cursor=*) after="${{1#--after-cursor=}}" ;;
    -n) count="$2"; shift ;;
  esac
  shift
done
touch "$entries"
if [ -n "$count" ]; then tail -n "$count" "$entries"; exit 0; fi
if [ -z "$after" ]; then cat "$entries"; exit 0; fi
grep -q "\"__CURSOR\":\"$after\"" "$entries" || exit 1
awk -v c="\"__CURSOR\":\"$after\"" 'seen {{ print }} index($0, c) {{ seen = 1 }}' "$entries"
"#,
                entries = dir.join("entries.json").display(),
                calls = dir.join("calls").display(),
            ),
        )
        .unwrap();
        vec!["sh".into(), script.display().to_string()]
    }

    /// Adds an entry of `uid` for `account`'s second factor to the
    /// stand-in's journal.
    fn journal_entry(dir: &Path, uid: &str, account: &str, cursor: &str) {
        let line = serde_json::json!({
            "__CURSOR": cursor,
            "__REALTIME_TIMESTAMP": "1795000000000000",
            "_UID": uid,
            "SYSLOG_IDENTIFIER": MODULE,
            "MESSAGE": format!("Accepted google_authenticator for {account}"),
        });
        append(&dir.join("entries.json"), &format!("{line}\n"));
    }

    /// The line rsyslog writes for the same second factor, or that
    /// `logger -t 'sshd(pam_google_authenticator)'` forges.
    fn text_line(account: &str) -> String {
        format!(
            "Nov 20 08:01:02 lab-07 {MODULE}[12366]: Accepted google_authenticator for {account}\n"
        )
    }

    fn append(path: &Path, text: &str) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
    }

    fn last_call(dir: &Path) -> String {
        let calls = std::fs::read_to_string(dir.join("calls")).unwrap();
        calls.lines().last().unwrap().to_owned()
    }

    /// A device's folder: the stand-in, a text auth log, the data folder.
    struct Device {
        dir: tempfile::TempDir,
        config: MfaConfig,
        outbox: Outbox,
    }

    impl Device {
        async fn new() -> Device {
            let dir = tempfile::tempdir().unwrap();
            let config = MfaConfig {
                journalctl: stand_in(dir.path()),
                auth_logs: vec![dir.path().join("auth.log")],
                ..MfaConfig::default()
            };
            let (outbox, _) = Outbox::open(dir.path(), DEFAULT_MAX_BYTES).await.unwrap();
            Device {
                dir,
                config,
                outbox,
            }
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }

        fn follower(&self, source: Source) -> Follower {
            Follower::new(&self.config, source, self.path(), patterns())
        }

        /// The accounts of the completions in the outbox, in order.
        async fn completions(&self) -> Vec<String> {
            let events = self.outbox.read_after(0, 1000).await.unwrap();
            events
                .into_iter()
                .filter_map(|e| match e.body {
                    Some(v1::event::Body::Mfa(m)) => Some(m.account),
                    _ => None,
                })
                .collect()
        }

        async fn state(&self, key: &str) -> Option<String> {
            self.outbox.state(key).await.unwrap()
        }
    }

    #[tokio::test]
    async fn the_journal_counts_roots_entries_once_and_never_the_text_log() {
        let device = Device::new().await;
        let (dir, log) = (device.path(), device.path().join("auth.log"));
        // Already in the text log: not read from the journal's side.
        append(&log, &text_line("x.staff"));
        journal_entry(dir, "0", "a.staff", "c1");
        // What `logger` run by a pupil becomes in the journal.
        journal_entry(dir, "1001", "e.staff", "c2");
        let mut follower = device.follower(Source::Journal);
        assert_eq!(follower.read_all(&device.outbox).await.unwrap(), 1);
        assert_eq!(device.completions().await, ["a.staff"]);
        assert_eq!(
            device.state(key::AUTHLOG_JOURNAL).await.as_deref(),
            Some("c2")
        );

        // A forged line in the text log; a forged and a real entry in the
        // journal.
        append(&log, &text_line("e.staff"));
        journal_entry(dir, "1001", "e.staff", "c3");
        journal_entry(dir, "0", "b.staff", "c4");
        assert_eq!(follower.read_all(&device.outbox).await.unwrap(), 1);
        assert!(
            last_call(dir).contains("--after-cursor=c2"),
            "{}",
            last_call(dir)
        );
        assert_eq!(device.completions().await, ["a.staff", "b.staff"]);
        assert_eq!(
            device.state(key::AUTHLOG_JOURNAL).await.as_deref(),
            Some("c4")
        );
        assert_eq!(
            device.state(key::AUTHLOG_SOURCE).await.as_deref(),
            Some("journal")
        );
        let text_log_key = key::authlog_file(&log);
        assert_eq!(
            device.state(&text_log_key).await,
            None,
            "text log never read"
        );

        // A restart goes on from the stored cursor.
        let mut restarted = device.follower(Source::Journal);
        assert_eq!(restarted.read_all(&device.outbox).await.unwrap(), 0);
        assert!(
            last_call(dir).contains("--after-cursor=c4"),
            "{}",
            last_call(dir)
        );
        assert_eq!(device.completions().await, ["a.staff", "b.staff"]);
    }

    #[tokio::test]
    async fn switching_source_sends_nothing_twice() {
        let device = Device::new().await;
        let (dir, log) = (device.path(), device.path().join("auth.log"));
        // rsyslog copies each journal entry into the text log.
        let both = |account: &str, cursor: &str| {
            journal_entry(dir, "0", account, cursor);
            append(&log, &text_line(account));
        };
        both("a.staff", "c1");
        let mut files = device.follower(Source::Files);
        assert_eq!(files.read_all(&device.outbox).await.unwrap(), 1);
        // An agent from before the journal: positions, but no source.
        device
            .outbox
            .set_state(key::AUTHLOG_SOURCE, "")
            .await
            .unwrap();

        // Journald comes: the journal is read from its newest entry.
        let mut journal = device.follower(Source::Journal);
        assert_eq!(journal.read_all(&device.outbox).await.unwrap(), 0);
        both("b.staff", "c2");
        assert_eq!(journal.read_all(&device.outbox).await.unwrap(), 1);
        assert_eq!(device.completions().await, ["a.staff", "b.staff"]);

        // And goes: the text log is read from its end, not from the
        // position the files source left.
        both("c.staff", "c3");
        let mut files = device.follower(Source::Files);
        assert_eq!(files.read_all(&device.outbox).await.unwrap(), 0);
        both("d.staff", "c4");
        assert_eq!(files.read_all(&device.outbox).await.unwrap(), 1);
        assert_eq!(
            device.completions().await,
            ["a.staff", "b.staff", "d.staff"],
            "c.staff was written between the two reads: the limit of a switch"
        );
        // Started again as files: the stored position, nothing repeated.
        both("e.staff", "c5");
        let mut restarted = device.follower(Source::Files);
        assert_eq!(restarted.read_all(&device.outbox).await.unwrap(), 1);
        assert_eq!(device.completions().await.len(), 4);
    }

    /// Makes the outbox's writes to `table` fail (as on a full disk) until
    /// `heal` drops the trigger.
    async fn break_writes(dir: &Path, table: &str) -> sqlx::SqliteConnection {
        use sqlx::Connection;
        let url = format!("sqlite://{}", dir.join(crate::outbox::FILE_NAME).display());
        let mut connection = sqlx::SqliteConnection::connect(&url).await.unwrap();
        for when in ["INSERT", "UPDATE"] {
            // Test-only text from the literals above.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE TRIGGER broken_{table}_{when} BEFORE {when} ON {table} \
                 BEGIN SELECT RAISE(FAIL, 'disk full'); END"
            )))
            .execute(&mut connection)
            .await
            .unwrap();
        }
        connection
    }

    async fn heal(mut connection: sqlx::SqliteConnection, table: &str) {
        for when in ["INSERT", "UPDATE"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP TRIGGER broken_{table}_{when}"
            )))
            .execute(&mut connection)
            .await
            .unwrap();
        }
    }

    #[tokio::test]
    async fn a_failed_outbox_write_is_retried_without_losing_or_repeating() {
        let device = Device::new().await;
        let dir = device.path();
        journal_entry(dir, "0", "a.staff", "c1");
        let mut follower = device.follower(Source::Journal);

        // The append fails: the cursor stays, and the entry is read again.
        let broken = break_writes(dir, "outbox").await;
        assert_eq!(follower.read_all(&device.outbox).await.unwrap(), 0);
        assert_eq!(follower.read_all(&device.outbox).await.unwrap(), 0);
        assert_eq!(device.state(key::AUTHLOG_JOURNAL).await, None);
        heal(broken, "outbox").await;
        assert_eq!(follower.read_all(&device.outbox).await.unwrap(), 1);
        assert_eq!(device.completions().await, ["a.staff"]);
        assert_eq!(
            device.state(key::AUTHLOG_JOURNAL).await.as_deref(),
            Some("c1")
        );

        // The append works but the cursor cannot be stored: the next read
        // goes on from the cursor in memory, and stores it.
        journal_entry(dir, "0", "b.staff", "c2");
        let broken = break_writes(dir, "state").await;
        assert_eq!(follower.read_all(&device.outbox).await.unwrap(), 1);
        assert_eq!(
            device.state(key::AUTHLOG_JOURNAL).await.as_deref(),
            Some("c1")
        );
        heal(broken, "state").await;
        assert_eq!(follower.read_all(&device.outbox).await.unwrap(), 0);
        assert!(
            last_call(dir).contains("--after-cursor=c2"),
            "{}",
            last_call(dir)
        );
        assert_eq!(
            device.state(key::AUTHLOG_JOURNAL).await.as_deref(),
            Some("c2")
        );
        assert_eq!(device.completions().await, ["a.staff", "b.staff"]);
    }
}
