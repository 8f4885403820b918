//! Tamper signal: a graphical session that has no session helper.
//!
//! Window titles and snapshots come only from the helper running inside
//! each graphical session. A pupil who kills it (it runs as them), or a
//! desktop that never starts it, leaves that session unwatched, so the
//! daemon compares the graphical sessions it tracks with the helpers
//! connected now and reports a `MonitoringGap` when a session has had no
//! helper for longer than a grace period, and its end when the helper
//! comes back or the session ends.
//!
//! A helper counts only when the kernel says the connecting process runs
//! the installed helper executable (`/proc/PID/exe`): a pupil's own
//! program holding the socket open is not a helper. Limit: the real
//! helper started by the pupil against a display of their own would
//! count; the collector still sees no captures from it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hallmonitor_proto::v1;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::sessions;
use crate::sessions::{Kind, Ledger};
use crate::state::{State, Stored};
use crate::task::TaskContext;

/// Helpers connected now, per uid: connections whose peer ran the helper
/// executable when it connected, counted while that process lives and is
/// not stopped.
#[derive(Debug, Default)]
pub struct HelperPresence {
    connected: Mutex<HashMap<u32, Vec<Peer>>>,
    next: std::sync::atomic::AtomicU64,
    /// The helper executables' paths and (device, inode) as installed.
    executables: Vec<(PathBuf, Option<(u64, u64)>)>,
    /// Helpers that went away (uid, when), until `signals` takes them.
    departed: Mutex<Vec<(u32, Timestamp)>>,
}

/// Departures kept at most between two takes (a helper restarted in a
/// loop must not grow the daemon).
const DEPARTURES_KEPT: usize = 1024;

/// One connected helper process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Peer {
    key: u64,
    pid: i32,
    /// Its start time (clock ticks since boot): a reused pid differs.
    started: u64,
}

impl HelperPresence {
    /// Counts connections from processes running one of `executables`.
    pub fn new(executables: Vec<PathBuf>) -> HelperPresence {
        HelperPresence {
            connected: Mutex::default(),
            next: Default::default(),
            departed: Mutex::default(),
            executables: executables
                .into_iter()
                .map(|path| {
                    let id = file_id(&path);
                    (path, id)
                })
                .collect(),
        }
    }

    /// The helper executable of this installation: `hallmonitor-session`
    /// beside this program (the daemon itself is no helper).
    pub fn installed() -> HelperPresence {
        let mut executables = Vec::new();
        if let Ok(me) = std::env::current_exe()
            && let Some(dir) = without_deleted(&me).parent()
        {
            executables.push(dir.join("hallmonitor-session"));
        }
        HelperPresence::new(executables)
    }

    /// Whether the process `pid` runs a helper executable: the very file
    /// (device and inode, which a bind mount in a namespace of the pupil's
    /// cannot fake), or, after an upgrade replaced it under a running
    /// helper, the deleted file at the same path.
    pub fn is_helper(&self, pid: Option<i32>) -> bool {
        let Some(pid) = pid.filter(|p| *p > 0) else {
            return false;
        };
        let exe = format!("/proc/{pid}/exe");
        let running = file_id(Path::new(&exe));
        let Ok(link) = std::fs::read_link(&exe) else {
            return false;
        };
        let deleted = link.to_string_lossy().ends_with(" (deleted)");
        let link = without_deleted(&link);
        self.executables
            .iter()
            .any(|(path, id)| (running.is_some() && running == *id) || (deleted && link == *path))
    }

    /// Records the helper process `pid` of `uid` as connected until the
    /// guard drops.
    pub fn enter(self: &Arc<Self>, uid: u32, pid: i32) -> PresenceGuard {
        let key = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let peer = Peer {
            key,
            pid,
            started: process_start(pid).unwrap_or(0),
        };
        self.connected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(uid)
            .or_default()
            .push(peer);
        PresenceGuard {
            presence: self.clone(),
            uid,
            key,
        }
    }

    /// The helpers that went away since the last call: (uid, when).
    pub fn take_departures(&self) -> Vec<(u32, Timestamp)> {
        std::mem::take(&mut *self.departed.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether a helper of `uid` is connected now and running: a helper
    /// stopped with SIGSTOP, or one that exited leaving its connection to
    /// a child, does not count.
    pub fn is_connected(&self, uid: u32) -> bool {
        let peers = self
            .connected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&uid)
            .cloned()
            .unwrap_or_default();
        peers.iter().any(|peer| {
            process_state(peer.pid).is_some_and(|(state, started)| {
                started == peer.started && !matches!(state, 'T' | 't' | 'Z' | 'X')
            })
        })
    }
}

/// A file's (device, inode), following links.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// A process's state letter and start time from `/proc/PID/stat`.
fn process_state(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let started = fields.get(19)?.parse().ok()?;
    Some((state, started))
}

fn process_start(pid: i32) -> Option<u64> {
    process_state(pid).map(|(_, started)| started)
}

fn without_deleted(path: &Path) -> PathBuf {
    let text = path.to_string_lossy();
    match text.strip_suffix(" (deleted)") {
        Some(kept) => PathBuf::from(kept),
        None => path.to_path_buf(),
    }
}

/// One helper connection, counted while it lives.
pub struct PresenceGuard {
    presence: Arc<HelperPresence>,
    uid: u32,
    key: u64,
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        let mut connected = self
            .presence
            .connected
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(peers) = connected.get_mut(&self.uid) {
            peers.retain(|p| p.key != self.key);
            if peers.is_empty() {
                connected.remove(&self.uid);
            }
        }
        drop(connected);
        let mut departed = self
            .presence
            .departed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if departed.len() < DEPARTURES_KEPT {
            departed.push((self.uid, Timestamp::now()));
        }
    }
}

/// What the daemon knows of gaps, kept across restarts so a gap is opened
/// and closed once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapBook {
    /// Graphical sessions whose helper has been missing since when (kept
    /// through brief returns: see `check`).
    missing_since: BTreeMap<String, Timestamp>,
    /// Sessions whose helper is back: since when.
    #[serde(default)]
    present_since: BTreeMap<String, Timestamp>,
    /// When each session's last gap closed, within the current absence.
    #[serde(default)]
    last_end: BTreeMap<String, Timestamp>,
    /// Gaps reported open, by session id: when they opened, and whose
    /// session it is (for the END after the session itself is gone).
    open: BTreeMap<String, OpenGap>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct OpenGap {
    since: Timestamp,
    account: String,
    uid: u32,
}

impl GapBook {
    pub fn open_gaps(&self) -> usize {
        self.open.len()
    }
}

/// Compares the graphical sessions open `now` (`ledger`) with the helpers
/// connected; updates `book` and returns the gap events to queue.
pub fn check(
    book: &mut GapBook,
    ledger: &Ledger,
    helper_connected: impl Fn(u32) -> bool,
    now: Timestamp,
    grace: Duration,
) -> Vec<v1::MonitoringGap> {
    let mut events = Vec::new();
    let graphical = ledger
        .iter()
        .filter(|(_, t)| t.session.kind == Kind::Graphical);
    for (id, tracked) in graphical {
        let session = &tracked.session;
        if helper_connected(session.uid) {
            // Only a helper present for a whole grace period ends the
            // absence: one run for a few seconds now and then (to look
            // present when sampled) leaves it standing, and each return
            // and departure shows as a gap closing and opening again.
            let back = *book.present_since.entry(id.clone()).or_insert(now);
            if now.duration_since(back).as_secs().max(0) as u64 >= grace.as_secs() {
                book.missing_since.remove(id);
                book.last_end.remove(id);
            }
            if let Some(open) = book.open.remove(id) {
                book.last_end.insert(id.clone(), now);
                events.push(gap(
                    id,
                    session,
                    v1::session_event::Phase::End,
                    open.since,
                    Some(now),
                ));
            }
            continue;
        }
        book.present_since.remove(id);
        let missing_since = *book.missing_since.entry(id.clone()).or_insert(now);
        let missing = now.duration_since(missing_since).as_secs().max(0) as u64;
        if missing >= grace.as_secs() && !book.open.contains_key(id) {
            // Opened again after a brief return: this gap starts now.
            let since = match book.last_end.get(id) {
                Some(end) => (*end).max(missing_since),
                None => missing_since,
            };
            book.open.insert(
                id.clone(),
                OpenGap {
                    since,
                    account: session.account.clone(),
                    uid: session.uid,
                },
            );
            events.push(gap(
                id,
                session,
                v1::session_event::Phase::Start,
                since,
                None,
            ));
        }
    }
    // Sessions that ended close their gap.
    book.missing_since.retain(|id, _| ledger.contains_key(id));
    book.present_since.retain(|id, _| ledger.contains_key(id));
    book.last_end.retain(|id, _| ledger.contains_key(id));
    let ended: Vec<String> = book
        .open
        .keys()
        .filter(|id| !ledger.contains_key(*id))
        .cloned()
        .collect();
    for id in ended {
        if let Some(open) = book.open.remove(&id) {
            events.push(v1::MonitoringGap {
                kind: v1::monitoring_gap::Kind::NoSessionHelper as i32,
                phase: v1::session_event::Phase::End as i32,
                session_id: id,
                account: open.account,
                uid: open.uid,
                started_at: Some(wire(open.since)),
                ended_at: Some(wire(now.max(open.since))),
            });
        }
    }
    events
}

fn gap(
    id: &str,
    session: &crate::sessions::LiveSession,
    phase: v1::session_event::Phase,
    since: Timestamp,
    ended: Option<Timestamp>,
) -> v1::MonitoringGap {
    v1::MonitoringGap {
        kind: v1::monitoring_gap::Kind::NoSessionHelper as i32,
        phase: phase as i32,
        session_id: id.to_owned(),
        account: session.account.clone(),
        uid: session.uid,
        started_at: Some(wire(since)),
        ended_at: ended.map(|e| wire(e.max(since))),
    }
}

fn wire(t: Timestamp) -> hallmonitor_proto::Timestamp {
    hallmonitor_proto::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    }
}

/// Reports graphical sessions that have no session helper (see `gaps`).
/// Reads the session ledger `track_sessions` keeps in the outbox.
pub async fn watch(ctx: TaskContext, presence: Arc<HelperPresence>) -> anyhow::Result<()> {
    let TaskContext {
        config,
        outbox,
        wake,
        shutdown,
    } = ctx;
    use crate::gaps;
    let grace = Duration::from_secs(u64::from(config.capture.helper_grace_secs));
    let state = State::new(&outbox);
    let mut book: gaps::GapBook = state.gap_book().await?.or_default();
    // As often as sessions are polled, and at least ten times a grace.
    let every = Duration::from_secs(u64::from(config.sessions.poll_secs.get()))
        .min(grace / 10)
        .max(Duration::from_secs(1));
    let mut poll = tokio::time::interval(every);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = poll.tick() => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        let ledger: sessions::Ledger = match state.session_ledger().await {
            Ok(ledger) => ledger.or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the session ledger; will retry");
                continue;
            }
        };
        let now = Timestamp::now();
        let events = gaps::check(
            &mut book,
            &ledger,
            |uid| presence.is_connected(uid),
            now,
            grace,
        );
        if events.is_empty() {
            continue;
        }
        for gap in &events {
            if gap.phase == v1::session_event::Phase::Start as i32 {
                tracing::warn!(session = %gap.session_id, uid = gap.uid, "a graphical session has no session helper: monitoring gap reported");
            } else {
                tracing::info!(session = %gap.session_id, "monitoring gap closed");
            }
        }
        let bodies = events
            .into_iter()
            .map(|gap| (now, v1::event::Body::MonitoringGap(gap)))
            .collect();
        // Events first: a crash before the book is saved reports a gap
        // twice (the collector folds them), never not at all.
        if let Err(e) = outbox.append_all(bodies).await {
            tracing::warn!(error = %e, "cannot queue a monitoring gap; will retry");
            // Forget what was decided so the next pass decides it again.
            book = state
                .gap_book()
                .await
                .map(Stored::or_default)
                .unwrap_or_default();
            continue;
        }
        wake.notify_one();
        if let Err(e) = state.set_gap_book(&book).await {
            tracing::warn!(error = %e, "cannot record monitoring gaps");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::{LiveSession, Tracked};
    use v1::session_event::Phase;

    fn ledger(sessions: &[(&str, u32, Kind)], at: Timestamp) -> Ledger {
        sessions
            .iter()
            .map(|(id, uid, kind)| {
                let session = LiveSession {
                    id: id.to_string(),
                    platform_id: id.to_string(),
                    account: format!("user{uid}"),
                    uid: *uid,
                    kind: *kind,
                    seat: String::new(),
                    started_at: at,
                    idle: false,
                };
                let tracked = Tracked {
                    session,
                    active_secs: 0,
                    last_poll: at,
                };
                (id.to_string(), tracked)
            })
            .collect()
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    const GRACE: Duration = Duration::from_secs(120);

    /// Polls `condition` (a process changing state) for up to 10 s.
    pub(super) fn wait_until(condition: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(std::time::Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_graphical_session_without_a_helper_opens_one_gap_after_the_grace() {
        let mut book = GapBook::default();
        let sessions = ledger(&[("s1", 1000, Kind::Graphical)], at(0));
        let none = |_| false;
        assert!(check(&mut book, &sessions, none, at(0), GRACE).is_empty());
        assert!(check(&mut book, &sessions, none, at(119), GRACE).is_empty());
        let opened = check(&mut book, &sessions, none, at(120), GRACE);
        assert_eq!(opened.len(), 1);
        assert_eq!(opened[0].phase, Phase::Start as i32);
        assert_eq!(opened[0].session_id, "s1");
        assert_eq!(opened[0].uid, 1000);
        assert_eq!(opened[0].started_at.unwrap().seconds, at(0).as_second());
        // Opened once.
        assert!(check(&mut book, &sessions, none, at(500), GRACE).is_empty());
        assert_eq!(book.open_gaps(), 1);
    }

    #[test]
    fn the_helper_coming_back_or_the_session_ending_closes_the_gap() {
        let mut book = GapBook::default();
        let sessions = ledger(
            &[("s1", 1000, Kind::Graphical), ("s2", 1001, Kind::Graphical)],
            at(0),
        );
        check(&mut book, &sessions, |_| false, at(0), GRACE);
        assert_eq!(
            check(&mut book, &sessions, |_| false, at(200), GRACE).len(),
            2
        );
        let back = check(&mut book, &sessions, |uid| uid == 1000, at(300), GRACE);
        assert_eq!(back.len(), 1);
        assert_eq!(
            (back[0].session_id.as_str(), back[0].phase),
            ("s1", Phase::End as i32)
        );
        assert_eq!(back[0].ended_at.unwrap().seconds, at(300).as_second());
        let only_s1 = ledger(&[("s1", 1000, Kind::Graphical)], at(0));
        let ended = check(&mut book, &only_s1, |uid| uid == 1000, at(400), GRACE);
        assert_eq!(ended.len(), 1);
        assert_eq!(
            (ended[0].session_id.as_str(), ended[0].phase),
            ("s2", Phase::End as i32)
        );
        assert_eq!(
            (ended[0].uid, ended[0].account.as_str()),
            (1001, "user1001"),
            "whose session it was, though it is gone"
        );
        assert_eq!(book.open_gaps(), 0);
    }

    #[test]
    fn a_helper_that_goes_away_starts_the_grace_again_and_other_kinds_are_ignored() {
        let mut book = GapBook::default();
        let sessions = ledger(
            &[("s1", 1000, Kind::Graphical), ("tty", 1000, Kind::Console)],
            at(0),
        );
        assert!(check(&mut book, &sessions, |_| true, at(0), GRACE).is_empty());
        // Killed at 1000 s: the grace counts from when it was first missed.
        assert!(check(&mut book, &sessions, |_| false, at(1000), GRACE).is_empty());
        let opened = check(&mut book, &sessions, |_| false, at(1120), GRACE);
        assert_eq!(opened.len(), 1, "one gap, for the graphical session only");
        assert_eq!(opened[0].started_at.unwrap().seconds, at(1000).as_second());
    }

    #[test]
    fn a_helper_run_now_and_then_to_look_present_does_not_hide_the_gap() {
        let mut book = GapBook::default();
        let sessions = ledger(&[("s1", 1000, Kind::Graphical)], at(0));
        let mut events = Vec::new();
        // Present for 15 s in every 110 s, sampled every 5 s.
        for t in (0..1100).step_by(5) {
            let present = t % 110 < 15;
            events.extend(check(&mut book, &sessions, |_| present, at(t), GRACE));
        }
        let starts: Vec<i64> = events
            .iter()
            .filter(|e| e.phase == Phase::Start as i32)
            .map(|e| e.started_at.unwrap().seconds - at(0).as_second())
            .collect();
        assert!(
            starts.len() >= 7,
            "a gap for each absence after the first grace: {starts:?}"
        );
        // Distinct starts: each is its own gap at the collector.
        let mut distinct = starts.clone();
        distinct.dedup();
        assert_eq!(distinct, starts);
        // Present for a whole grace: the absence is over.
        let mut quiet = Vec::new();
        for t in (1100..1500).step_by(5) {
            quiet.extend(check(&mut book, &sessions, |_| true, at(t), GRACE));
        }
        assert!(quiet.iter().all(|e| e.phase == Phase::End as i32));
        assert!(
            check(&mut book, &sessions, |_| false, at(1505), GRACE).is_empty(),
            "a new grace"
        );
    }

    #[test]
    fn only_the_helper_executable_counts_as_a_helper() {
        let me = std::env::current_exe().unwrap();
        let presence = HelperPresence::new(vec![me]);
        let pid = i32::try_from(std::process::id()).unwrap();
        assert!(presence.is_helper(Some(pid)));
        let other = HelperPresence::new(vec![PathBuf::from("/usr/bin/hallmonitor-session")]);
        assert!(!other.is_helper(Some(pid)));
        assert!(!presence.is_helper(None));
        let presence = Arc::new(presence);
        let guard = presence.enter(7, pid);
        let second = presence.enter(7, pid);
        assert!(presence.is_connected(7));
        drop(guard);
        assert!(presence.is_connected(7));
        drop(second);
        assert!(!presence.is_connected(7));
        // A stopped helper does not count; nor does one that is gone.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let child_pid = i32::try_from(child.id()).unwrap();
        let _child_guard = presence.enter(8, child_pid);
        assert!(presence.is_connected(8));
        // SAFETY: signals to our own child.
        unsafe { libc::kill(child_pid, libc::SIGSTOP) };
        crate::gaps::tests::wait_until(|| !presence.is_connected(8));
        unsafe { libc::kill(child_pid, libc::SIGCONT) };
        crate::gaps::tests::wait_until(|| presence.is_connected(8));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!presence.is_connected(8), "exited");
    }
}
