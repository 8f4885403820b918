//! The session helper's loop, inside a graphical session: follows the active window, matches titles against the policy
//! the daemon sent (the project's default until then), rate-limits per
//! rule and window, takes a snapshot, and sends captures to the daemon,
//! holding them while it is unreachable.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use hallmonitor_capture_protocol::{
    AupAnswer, DaemonLine, HelperCapture, HelperLine, HelperPolicy, REPEAT_WINDOW,
};
use hallmonitor_policy::{Policy, User, UserKind};

use crate::context::ContextBuffer;
use crate::notice::NoticeGate;
use crate::rate_limit::{Admission, RateLimit};
use crate::window::{ActiveWindow, ActiveWindowSource};

/// A policy the daemon sent, parsed.
struct Received {
    policy: Policy,
    /// The site's version number (the file's own for a local override).
    version: u64,
    user: UserKind,
    /// The user's directory groups, as the daemon knows them.
    groups: Vec<String>,
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
    /// To the acceptable-use window's thread (`crate::aup::serve`), and
    /// its answers back.
    prompts: crate::aup::Prompts,
    answers: std::sync::mpsc::Receiver<AupAnswer>,
}

impl Link {
    fn new(socket: &Path) -> Link {
        let (sender, incoming) = std::sync::mpsc::channel();
        let (prompts, answers) = crate::aup::serve();
        Link {
            socket: socket.to_path_buf(),
            stream: None,
            tried_at: None,
            incoming,
            sender,
            prompts,
            answers,
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
        let prompts = self.prompts.clone();
        std::thread::spawn(move || read_policies(reader, sender, prompts));
        tracing::info!(socket = %self.socket.display(), "connected to the agent daemon");
        self.stream = Some(stream);
    }

    fn lost(&mut self) {
        if self.stream.take().is_some() {
            tracing::warn!(socket = %self.socket.display(), "the agent daemon is unreachable; captures are held until it is back");
        }
    }

    /// Sends what it can; what it cannot stays in `pending`.
    /// Sends the answers given so far; held while the daemon is away.
    fn send_answers(&mut self, held: &mut Vec<AupAnswer>) {
        held.extend(self.answers.try_iter());
        let Some(connection) = self.stream.as_mut() else {
            return;
        };
        while let Some(answer) = held.first() {
            let line = HelperLine::AupAnswer {
                aup_answer: *answer,
            };
            let mut bytes = serde_json::to_vec(&line).expect("plain data serialises");
            bytes.push(b'\n');
            if connection.write_all(&bytes).is_err() {
                self.lost();
                return;
            }
            held.remove(0);
        }
    }

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
    prompts: crate::aup::Prompts,
) {
    use std::io::BufRead;
    for line in std::io::BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        let message: HelperPolicy = match serde_json::from_str(&line) {
            Ok(DaemonLine::Policy(message)) => message,
            Ok(DaemonLine::Aup { aup }) => {
                tracing::info!(version = aup.version, "acceptable-use policy to answer");
                let _ = prompts.send(aup);
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "unreadable policy message from the daemon");
                continue;
            }
        };
        let parsed = hallmonitor_capture_protocol::parse_policy(
            message.version,
            message.origin,
            &message.toml,
        );
        match parsed {
            Ok(policy) => {
                tracing::info!(version = message.version, origin = ?message.origin, rules = policy.rules().len(), staff = message.staff, groups = message.groups.len(), repeat_window_secs = message.repeat_window_secs, "policy received");
                let user = if message.staff {
                    UserKind::Staff
                } else {
                    UserKind::Pupil
                };
                let received = Received {
                    policy,
                    version: message.version,
                    user,
                    groups: message.groups,
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
        groups: Vec::new(),
        repeat_window: REPEAT_WINDOW,
    };
    let mut limit = RateLimit::default();
    let mut last: Option<(u64, String)> = None;
    let mut pending: Vec<HelperCapture> = Vec::new();
    let mut buffer = String::new();
    let mut context = ContextBuffer::default();
    let mut notices = NoticeGate::default();
    let mut link = Link::new(socket);
    let mut answers: Vec<AupAnswer> = Vec::new();
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
        link.send_answers(&mut answers);
        if let Some(window) = window {
            let key = (window.id, window.title.clone());
            if last.as_ref() != Some(&key) {
                last = Some(key);
                let now_ms = unix_millis(std::time::SystemTime::now());
                let minutes = current.policy.context_minutes;
                context.observe(&window.title, &window.process_name, now_ms, minutes);
                let earlier = Earlier {
                    buffer: &mut context,
                    now_ms,
                    minutes,
                };
                let taken = check_window(
                    &window,
                    &current,
                    &mut limit,
                    &mut buffer,
                    &mut pending,
                    earlier,
                );
                // The site's words, when it asked to tell the user.
                if taken
                    && let Some(notice) = &current.policy.capture_notice
                    && notices.admit(Instant::now())
                {
                    crate::notice::show(notice);
                }
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

/// Milliseconds since the Unix epoch (0 for a clock set before it).
fn unix_millis(at: std::time::SystemTime) -> i64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The session's earlier titles, read only when a capture is taken.
struct Earlier<'a> {
    buffer: &'a mut ContextBuffer,
    now_ms: i64,
    minutes: u32,
}

/// Matches one window's title; a capture (with one snapshot however many
/// rules fired, and the titles in front before it) for each rule the rate
/// limit admits. True when it took one.
fn check_window(
    window: &ActiveWindow,
    current: &Received,
    limit: &mut RateLimit,
    buffer: &mut String,
    pending: &mut Vec<HelperCapture>,
    earlier: Earlier<'_>,
) -> bool {
    let mut snapshot: Option<Result<crate::snapshot::Snapshot, String>> = None;
    let mut context = None;
    let user = User {
        kind: current.user,
        groups: &current.groups,
    };
    for hit in current.policy.matches(&window.title, user, buffer) {
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
            context: context
                .get_or_insert_with(|| earlier.buffer.before_front(earlier.now_ms, earlier.minutes))
                .clone(),
        };
        limit.remember(window.id, &capture);
        pending.push(capture);
    }
    snapshot.is_some()
}
