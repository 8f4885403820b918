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
use crate::task::TaskContext;

/// Outbox state key of the `GapBook`.
pub const STATE_KEY: &str = "monitoring_gaps";

/// Helpers connected now, per uid (only connections from the helper
/// executable).
#[derive(Debug, Default)]
pub struct HelperPresence {
    connected: Mutex<HashMap<u32, usize>>,
    executables: Vec<PathBuf>,
}

impl HelperPresence {
    /// Counts connections from processes running one of `executables`.
    pub fn new(executables: Vec<PathBuf>) -> HelperPresence {
        HelperPresence {
            connected: Mutex::default(),
            executables,
        }
    }

    /// The helper executables of this installation: this program (one
    /// binary, two roles) and `hallmonitor-session` beside it.
    pub fn installed() -> HelperPresence {
        let mut executables = Vec::new();
        if let Ok(me) = std::env::current_exe() {
            let me = without_deleted(&me);
            if let Some(dir) = me.parent() {
                executables.push(dir.join("hallmonitor-session"));
            }
            executables.push(me);
        }
        HelperPresence::new(executables)
    }

    /// Whether the process `pid` runs a helper executable.
    pub fn is_helper(&self, pid: Option<i32>) -> bool {
        let Some(pid) = pid.filter(|p| *p > 0) else {
            return false;
        };
        match std::fs::read_link(format!("/proc/{pid}/exe")) {
            // An upgrade replaces the file under a running helper.
            Ok(exe) => self.executables.contains(&without_deleted(&exe)),
            Err(_) => false,
        }
    }

    /// Records a helper of `uid` as connected until the guard drops.
    pub fn enter(self: &Arc<Self>, uid: u32) -> PresenceGuard {
        *self
            .connected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(uid)
            .or_insert(0) += 1;
        PresenceGuard {
            presence: self.clone(),
            uid,
        }
    }

    pub fn is_connected(&self, uid: u32) -> bool {
        self.connected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&uid)
            .is_some_and(|n| *n > 0)
    }
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
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        let mut connected = self
            .presence
            .connected
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = connected.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                connected.remove(&self.uid);
            }
        }
    }
}

/// What the daemon knows of gaps, kept across restarts so a gap is opened
/// and closed once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapBook {
    /// Graphical sessions without a helper now: since when.
    missing_since: BTreeMap<String, Timestamp>,
    /// Gaps reported open, by session id: when they opened.
    open: BTreeMap<String, Timestamp>,
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
            book.missing_since.remove(id);
            if let Some(since) = book.open.remove(id) {
                events.push(gap(
                    id,
                    session,
                    v1::session_event::Phase::End,
                    since,
                    Some(now),
                ));
            }
            continue;
        }
        let since = *book.missing_since.entry(id.clone()).or_insert(now);
        let missing = now.duration_since(since).as_secs().max(0) as u64;
        if missing >= grace.as_secs() && !book.open.contains_key(id) {
            book.open.insert(id.clone(), since);
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
    let ended: Vec<String> = book
        .open
        .keys()
        .filter(|id| !ledger.contains_key(*id))
        .cloned()
        .collect();
    for id in ended {
        if let Some(since) = book.open.remove(&id) {
            events.push(v1::MonitoringGap {
                kind: v1::monitoring_gap::Kind::NoSessionHelper as i32,
                phase: v1::session_event::Phase::End as i32,
                session_id: id,
                started_at: Some(wire(since)),
                ended_at: Some(wire(now.max(since))),
                ..Default::default()
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
    let mut book: gaps::GapBook = outbox
        .state(gaps::STATE_KEY)
        .await?
        .and_then(|json| serde_json::from_str(&json).ok())
        .unwrap_or_default();
    // As often as sessions are polled, and at least ten times a grace.
    let every = Duration::from_secs(u64::from(config.sessions.poll_secs.max(1)))
        .min(grace / 10)
        .max(Duration::from_secs(1));
    let mut poll = tokio::time::interval(every);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = poll.tick() => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        let ledger: sessions::Ledger = match outbox.state(sessions::LEDGER_KEY).await {
            Ok(json) => json
                .and_then(|json| serde_json::from_str(&json).ok())
                .unwrap_or_default(),
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
            book = outbox
                .state(gaps::STATE_KEY)
                .await
                .ok()
                .flatten()
                .and_then(|json| serde_json::from_str(&json).ok())
                .unwrap_or_default();
            continue;
        }
        wake.notify_one();
        if let Err(e) = outbox
            .set_state(gaps::STATE_KEY, &serde_json::to_string(&book)?)
            .await
        {
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
        assert_eq!(book, GapBook::default());
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
    fn only_the_helper_executable_counts_as_a_helper() {
        let me = std::env::current_exe().unwrap();
        let presence = HelperPresence::new(vec![me]);
        let pid = i32::try_from(std::process::id()).unwrap();
        assert!(presence.is_helper(Some(pid)));
        let other = HelperPresence::new(vec![PathBuf::from("/usr/bin/hallmonitor-session")]);
        assert!(!other.is_helper(Some(pid)));
        assert!(!presence.is_helper(None));
        let presence = Arc::new(presence);
        let guard = presence.enter(7);
        let second = presence.enter(7);
        assert!(presence.is_connected(7));
        drop(guard);
        assert!(presence.is_connected(7));
        drop(second);
        assert!(!presence.is_connected(7));
    }
}
