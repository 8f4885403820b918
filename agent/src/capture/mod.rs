//! Suspicious-activity captures: the session helper and the daemon's side
//! of the local socket between them.
//!
//! Only code inside a graphical session can see its windows, so the same
//! binary runs there as `hallmonitor-agent session` (started by the XDG
//! autostart entry in deploy/). It watches the active window (`window`),
//! matches titles against the policy (`policy`), and sends a capture for
//! each match to the daemon over a Unix socket, one JSON line each. The
//! same rule in the same window within 60 s adds to a counter instead of
//! making another; the count goes out as a repeat summary (no snapshot)
//! once the minute is over.
//!
//! The daemon (`serve_helpers`) accepts on the socket, takes the account
//! from the peer's credentials (never from the message), and queues the
//! capture in the outbox, hashing the image itself. The other way, it sends
//! each helper the policy in force and whether its user counts as staff,
//! again whenever either changes (`policy::PolicyHub`); a helper that has
//! not heard from the daemon uses the project's default policy. When no snapshot can be
//! taken (no display, a compositor refusing) the capture still goes out,
//! marked "no image" with the reason.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::policy::{Origin, Policy, PolicyText, UserKind};
use crate::window::ActiveWindowSource;

mod intake;
pub use intake::serve_helpers;

/// Repeats of one rule in one window within this are counted, not
/// captured, unless the daemon says otherwise (`[capture]
/// repeat_window_secs`).
const REPEAT_WINDOW: Duration = Duration::from_secs(60);

/// A capture on its way from the helper to the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelperCapture {
    pub rule_id: String,
    pub category: String,
    pub severity: u32,
    pub matched_text: String,
    pub window_title: String,
    pub process_name: String,
    pub pid: u32,
    pub repeat_count: u32,
    pub no_image_reason: String,
    /// The PNG snapshot, base64 (empty when there is none).
    #[serde(default)]
    pub image_png_base64: String,
    /// The version of the policy that matched.
    #[serde(default)]
    pub policy_version: u64,
}

/// What the daemon tells a helper: the policy to match with and whether
/// the helper's user counts as staff.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelperPolicy {
    pub version: u64,
    pub origin: Origin,
    /// Empty: the project's default.
    pub toml: String,
    pub staff: bool,
    #[serde(default = "default_repeat_window_secs")]
    pub repeat_window_secs: u64,
}

fn default_repeat_window_secs() -> u64 {
    REPEAT_WINDOW.as_secs()
}

/// The helper's rate limit per (rule, window): the first match takes a
/// snapshot; further matches within the repeat window of it are counted,
/// and when that window is over the count goes out as a repeat summary
/// (no new snapshot), so the DSL sees how long and how often it was on
/// screen.
///
/// A count is never dropped: a minute that ends because the same rule
/// fires again (before `due_summaries` ran) leaves its summary in `ready`,
/// a new repeat window applies only to minutes started after it, and
/// `finish_all` hands over every count when the helper stops.
pub struct RateLimit {
    window: Duration,
    counting: HashMap<(String, u64), Counting>,
    /// Summaries of minutes already over, not yet handed out.
    ready: Vec<HelperCapture>,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            window: REPEAT_WINDOW,
            counting: HashMap::new(),
            ready: Vec::new(),
        }
    }
}

struct Counting {
    since: Instant,
    /// The repeat window in force when this minute started.
    window: Duration,
    merged: u32,
    latest_title: String,
    /// The capture that opened the minute, without its image.
    first: Option<HelperCapture>,
}

impl Counting {
    fn is_over(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.since) >= self.window
    }

    /// The repeat summary of this minute, if it counted any repeats.
    fn into_summary(self) -> Option<HelperCapture> {
        let first = self.first?;
        (self.merged > 0).then(|| HelperCapture {
            window_title: self.latest_title,
            repeat_count: self.merged,
            no_image_reason: format!(
                "repeat summary: {} more match(es) of this rule in this window within {} s of the capture before; no new snapshot",
                self.merged,
                self.window.as_secs()
            ),
            ..first
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Take a snapshot and send a capture.
    Capture,
    /// Counted towards the current minute's summary.
    Counted,
}

impl RateLimit {
    /// A new length for minutes started from now on.
    pub fn set_window(&mut self, window: Duration) {
        self.window = window.max(Duration::from_secs(1));
    }

    pub fn admit(&mut self, rule: &str, window: u64, title: &str, now: Instant) -> Admission {
        let key = (rule.to_owned(), window);
        if let Some(counting) = self.counting.get_mut(&key)
            && !counting.is_over(now)
        {
            counting.merged += 1;
            if counting.merged == 1 {
                tracing::debug!(
                    rule,
                    window,
                    "the rule matched again in the same window; counting repeats"
                );
            }
            title.clone_into(&mut counting.latest_title);
            return Admission::Counted;
        }
        let started = Counting {
            since: now,
            window: self.window,
            merged: 0,
            latest_title: title.to_owned(),
            first: None,
        };
        // The minute this one replaces is over: its count goes out too.
        if let Some(over) = self.counting.insert(key, started)
            && let Some(summary) = over.into_summary()
        {
            self.ready.push(summary);
        }
        Admission::Capture
    }

    /// Keeps (without its image) the capture just admitted, for the summary.
    pub fn remember(&mut self, window: u64, capture: &HelperCapture) {
        if let Some(counting) = self.counting.get_mut(&(capture.rule_id.clone(), window)) {
            counting.first = Some(HelperCapture {
                image_png_base64: String::new(),
                ..capture.clone()
            });
        }
    }

    /// Ends every minute that is over: a summary for each that counted
    /// repeats.
    pub fn due_summaries(&mut self, now: Instant) -> Vec<HelperCapture> {
        let mut due = std::mem::take(&mut self.ready);
        let over: Vec<_> = self
            .counting
            .iter()
            .filter(|(_, counting)| counting.is_over(now))
            .map(|(key, _)| key.clone())
            .collect();
        for key in over {
            if let Some(summary) = self.counting.remove(&key).and_then(Counting::into_summary) {
                due.push(summary);
            }
        }
        due
    }

    /// Ends every minute now (the helper is stopping): the summaries of
    /// all counted repeats, however short their minute was.
    pub fn finish_all(&mut self) -> Vec<HelperCapture> {
        let mut due = std::mem::take(&mut self.ready);
        due.extend(
            self.counting
                .drain()
                .filter_map(|(_, counting)| counting.into_summary()),
        );
        due
    }
}

/// A policy the daemon sent, parsed.
struct Received {
    policy: Policy,
    /// The site's version number (the file's own for a local override).
    version: u64,
    user: UserKind,
    repeat_window: Duration,
}

/// The helper's link to the daemon: captures go out on it, policies come
/// back (read by a thread, handed over through a channel).
struct Link {
    socket: std::path::PathBuf,
    stream: Option<std::os::unix::net::UnixStream>,
    tried_at: Option<Instant>,
    incoming: std::sync::mpsc::Receiver<Option<Received>>,
    sender: std::sync::mpsc::Sender<Option<Received>>,
}

impl Link {
    fn new(socket: &Path) -> Link {
        let (sender, incoming) = std::sync::mpsc::channel();
        Link {
            socket: socket.to_path_buf(),
            stream: None,
            tried_at: None,
            incoming,
            sender,
        }
    }

    /// Connects if not connected (at most once a second).
    fn connect(&mut self) {
        if self.stream.is_some()
            || self
                .tried_at
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.tried_at = Some(Instant::now());
        let Ok(stream) = std::os::unix::net::UnixStream::connect(&self.socket) else {
            return;
        };
        let Ok(reader) = stream.try_clone() else {
            return;
        };
        let sender = self.sender.clone();
        std::thread::spawn(move || read_policies(reader, sender));
        tracing::info!(socket = %self.socket.display(), "connected to the agent daemon");
        self.stream = Some(stream);
    }

    fn lost(&mut self) {
        if self.stream.take().is_some() {
            tracing::warn!(socket = %self.socket.display(), "the agent daemon is unreachable; captures are held until it is back");
        }
    }

    /// Sends what it can; what it cannot stays in `pending`.
    fn send(&mut self, pending: &mut Vec<HelperCapture>) -> anyhow::Result<()> {
        let Some(connection) = self.stream.as_mut() else {
            return Ok(());
        };
        let mut sent = 0;
        for capture in pending.iter() {
            let mut line = serde_json::to_vec(capture)?;
            line.push(b'\n');
            if connection.write_all(&line).is_err() {
                self.lost();
                break;
            }
            sent += 1;
        }
        pending.drain(..sent);
        Ok(())
    }
}

/// The reader thread: one policy per line until the daemon goes away
/// (then `None`).
fn read_policies(
    stream: std::os::unix::net::UnixStream,
    sender: std::sync::mpsc::Sender<Option<Received>>,
) {
    use std::io::BufRead;
    for line in std::io::BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        let message: HelperPolicy = match serde_json::from_str(&line) {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable policy message from the daemon");
                continue;
            }
        };
        let text = PolicyText {
            version: message.version,
            origin: message.origin,
            toml: message.toml.into(),
        };
        match crate::policy::parse_text(&text) {
            Ok(policy) => {
                tracing::info!(version = message.version, origin = ?text.origin, rules = policy.rules().len(), staff = message.staff, repeat_window_secs = message.repeat_window_secs, "policy received");
                let user = if message.staff {
                    UserKind::Staff
                } else {
                    UserKind::Pupil
                };
                let received = Received {
                    policy,
                    version: message.version,
                    user,
                    repeat_window: Duration::from_secs(message.repeat_window_secs),
                };
                if sender.send(Some(received)).is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "policy not applied; the last good one stays in force")
            }
        }
    }
    let _ = sender.send(None);
}

/// The session helper's loop: until the display goes away. Matches with
/// the default policy until the daemon sends one; buffers captures (at
/// most 1,000) while the daemon is down and reconnects.
pub fn run_helper(source: &mut dyn ActiveWindowSource, socket: &Path) -> anyhow::Result<()> {
    // Until the daemon says otherwise: the default, and the stricter
    // pupil scope.
    let mut current = Received {
        policy: Policy::default_policy(),
        version: 0,
        user: UserKind::Pupil,
        repeat_window: REPEAT_WINDOW,
    };
    let mut limit = RateLimit::default();
    let mut last: Option<(u64, String)> = None;
    let mut pending: Vec<HelperCapture> = Vec::new();
    let mut buffer = String::new();
    let mut link = Link::new(socket);
    loop {
        link.connect();
        let window = match source.next(Duration::from_secs(1)) {
            Ok(window) => window,
            Err(e) => {
                // The display is gone: the counts of unfinished minutes
                // still go out, in one last try.
                pending.extend(limit.finish_all());
                link.send(&mut pending)?;
                return Err(e.into());
            }
        };
        while let Ok(message) = link.incoming.try_recv() {
            match message {
                Some(received) => {
                    limit.set_window(received.repeat_window);
                    current = received;
                    // The window in front is checked again under the new policy.
                    last = None;
                }
                None => link.lost(),
            }
        }
        if let Some(window) = window {
            let key = (window.id, window.title.clone());
            if last.as_ref() != Some(&key) {
                last = Some(key);
                check_window(&window, &current, &mut limit, &mut buffer, &mut pending);
            }
        }
        pending.extend(limit.due_summaries(Instant::now()));
        if pending.is_empty() {
            continue;
        }
        link.send(&mut pending)?;
        if pending.len() > 1_000 {
            pending.drain(..pending.len() - 1_000);
        }
    }
}

/// Matches one window's title; a capture (with one snapshot however many
/// rules fired) for each rule the rate limit admits.
fn check_window(
    window: &crate::window::ActiveWindow,
    current: &Received,
    limit: &mut RateLimit,
    buffer: &mut String,
    pending: &mut Vec<HelperCapture>,
) {
    let mut snapshot: Option<Result<crate::snapshot::Snapshot, String>> = None;
    for hit in current.policy.matches(&window.title, current.user, buffer) {
        if limit.admit(&hit.rule.id, window.id, &window.title, Instant::now()) == Admission::Counted
        {
            continue;
        }
        let shot = snapshot.get_or_insert_with(|| crate::snapshot::take(window.centre));
        let (image_png_base64, no_image_reason) = match shot {
            Ok(s) => (
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &s.png),
                String::new(),
            ),
            Err(reason) => (String::new(), reason.clone()),
        };
        let capture = HelperCapture {
            rule_id: hit.rule.id.clone(),
            category: hit.rule.category.clone(),
            severity: u32::from(hit.rule.severity),
            matched_text: hit.phrase.to_owned(),
            window_title: window.title.clone(),
            process_name: window.process_name.clone(),
            pid: window.pid,
            repeat_count: 0,
            no_image_reason,
            image_png_base64,
            policy_version: current.version,
        };
        limit.remember(window.id, &capture);
        pending.push(capture);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn capture(rule: &str, title: &str) -> HelperCapture {
        HelperCapture {
            rule_id: rule.into(),
            category: "self-harm".into(),
            severity: 5,
            matched_text: "kill myself".into(),
            window_title: title.into(),
            process_name: "chromium".into(),
            pid: 7,
            repeat_count: 0,
            no_image_reason: String::new(),
            image_png_base64: "aW1hZ2U=".into(),
            policy_version: 3,
        }
    }

    #[test]
    fn one_capture_per_rule_and_window_per_minute_then_a_summary_of_the_repeats() {
        use Admission::{Capture, Counted};
        let mut limit = RateLimit::default();
        let start = Instant::now();
        assert_eq!(limit.admit("r", 1, "kill myself (0)", start), Capture);
        limit.remember(1, &capture("r", "kill myself (0)"));
        for n in 1..=999u64 {
            let title = format!("kill myself ({n})");
            assert_eq!(
                limit.admit("r", 1, &title, start + Duration::from_millis(n)),
                Counted
            );
        }
        assert_eq!(limit.admit("r", 2, "x", start), Capture, "another window");
        assert_eq!(limit.admit("s", 1, "x", start), Capture, "another rule");
        assert!(
            limit
                .due_summaries(start + Duration::from_secs(59))
                .is_empty(),
            "the minute is not over"
        );
        let due = limit.due_summaries(start + Duration::from_secs(60));
        assert_eq!(due.len(), 1, "only the minute with repeats: {due:?}");
        let summary = &due[0];
        assert_eq!(summary.repeat_count, 999);
        assert_eq!(
            summary.window_title, "kill myself (999)",
            "the latest title"
        );
        assert_eq!(summary.rule_id, "r");
        assert_eq!(summary.policy_version, 3);
        assert!(summary.image_png_base64.is_empty(), "no new snapshot");
        assert!(
            summary
                .no_image_reason
                .starts_with("repeat summary: 999 more")
        );
        assert!(
            limit
                .due_summaries(start + Duration::from_secs(120))
                .is_empty(),
            "once"
        );
        assert_eq!(
            limit.admit("r", 1, "kill myself again", start + Duration::from_secs(61)),
            Capture,
            "a new minute, a new snapshot"
        );
    }

    /// Admits one match at `at` seconds after `start`, remembering it when
    /// it opens a minute (as `check_window` does).
    fn admit_at(limit: &mut RateLimit, start: Instant, at: u64, title: &str) -> Admission {
        let admission = limit.admit("r", 1, title, start + Duration::from_secs(at));
        if admission == Admission::Capture {
            limit.remember(1, &capture("r", title));
        }
        admission
    }

    #[test]
    fn a_minute_ended_by_the_same_rule_firing_again_keeps_its_count() {
        use Admission::{Capture, Counted};
        let mut limit = RateLimit::default();
        let start = Instant::now();
        assert_eq!(admit_at(&mut limit, start, 0, "kill myself (0)"), Capture);
        assert_eq!(admit_at(&mut limit, start, 10, "kill myself (1)"), Counted);
        assert_eq!(admit_at(&mut limit, start, 20, "kill myself (2)"), Counted);
        // The minute is over, but the helper matched again before it asked
        // for due summaries: a new snapshot, and the old count survives.
        assert_eq!(admit_at(&mut limit, start, 61, "kill myself (3)"), Capture);
        let due = limit.due_summaries(start + Duration::from_secs(61));
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].repeat_count, 2);
        assert_eq!(due[0].window_title, "kill myself (2)");
        assert!(
            limit
                .due_summaries(start + Duration::from_secs(62))
                .is_empty(),
            "handed out once"
        );
    }

    #[test]
    fn a_new_repeat_window_applies_to_minutes_started_after_it() {
        use Admission::{Capture, Counted};
        let mut limit = RateLimit::default();
        let start = Instant::now();
        assert_eq!(admit_at(&mut limit, start, 0, "a"), Capture);
        assert_eq!(admit_at(&mut limit, start, 5, "b"), Counted);
        limit.set_window(Duration::from_secs(20));
        // The running minute keeps its 60 s: still counting at 30 s.
        assert_eq!(admit_at(&mut limit, start, 30, "c"), Counted);
        assert!(
            limit
                .due_summaries(start + Duration::from_secs(30))
                .is_empty()
        );
        let due = limit.due_summaries(start + Duration::from_secs(60));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].repeat_count, 2);
        assert!(due[0].no_image_reason.contains("within 60 s"), "{due:?}");
        // The next minute is 20 s long.
        assert_eq!(admit_at(&mut limit, start, 70, "d"), Capture);
        assert_eq!(admit_at(&mut limit, start, 71, "e"), Counted);
        assert_eq!(
            limit.due_summaries(start + Duration::from_secs(90)).len(),
            1
        );
    }

    #[test]
    fn a_stopping_helper_hands_over_every_count() {
        use Admission::{Capture, Counted};
        let mut limit = RateLimit::default();
        let start = Instant::now();
        assert_eq!(admit_at(&mut limit, start, 0, "a"), Capture);
        assert_eq!(admit_at(&mut limit, start, 1, "b"), Counted);
        assert_eq!(
            limit.admit("s", 2, "x", start + Duration::from_secs(1)),
            Capture,
            "a minute without repeats makes no summary"
        );
        let due = limit.finish_all();
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(
            (due[0].repeat_count, due[0].window_title.as_str()),
            (1, "b")
        );
        assert!(
            limit
                .due_summaries(start + Duration::from_secs(120))
                .is_empty()
        );
    }
}
