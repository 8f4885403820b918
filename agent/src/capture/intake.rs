//! The daemon's side of the helper socket: who may connect, what a helper
//! may send, and what the daemon believes of it.
//!
//! A helper runs as the logged-in user, so anything on the socket may come
//! from a pupil with a shell. The daemon therefore trusts only what it can
//! check: the account comes from the kernel (peer credentials); the rule,
//! category, severity and matched phrase come from the daemon's own match
//! of the title against the policy in force (a title that matches nothing
//! is dropped and counted); captures per account are rate-limited; a line
//! longer than `MAX_LINE` is refused before it is buffered (the connection
//! is closed); a snapshot must be a PNG no wider than the helper makes them
//! and at most `MAX_IMAGE_BYTES`, or the capture goes out without it.
//! The earlier window titles a capture carries (`context`) are passed on
//! only when the policy in force allows context (`context_minutes` above
//! 0), and bounded again: the newest `MAX_CONTEXT_ENTRIES`, each title and
//! process cut and stripped of control characters, at most
//! `MAX_CONTEXT_BYTES` in all, times inside the Unix epoch and now.
//! Connections per uid are capped, and an accept error (descriptors
//! exhausted) is logged at once and retried with back-off, never ending the
//! listener.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hallmonitor_proto::v1;
use jiff::Timestamp;
use tokio_stream::StreamExt;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;

use super::{HelperCapture, HelperPolicy};
use crate::aup::{AupHub, AupInForce, Verdict};
use crate::config::AgentConfig;
use crate::outbox::Outbox;
use crate::policy::{InForce, Policy, PolicyHub, PolicyText, User, UserKind};
use crate::state::State;
use hallmonitor_capture_protocol::{AupAnswer, DaemonLine, HelperLine};
use hallmonitor_capture_protocol::{ContextWindow, MAX_CONTEXT_ENTRIES};

/// The longest line a helper may send: a `MAX_IMAGE_BYTES` image in base64
/// and the text around it.
const MAX_LINE: usize = MAX_IMAGE_BYTES / 3 * 4 + 64 * 1024 + 4 * MAX_CONTEXT_BYTES;
/// Bytes of context titles and process names passed on with one capture
/// (the helper keeps 64 KiB; escapes may grow it on the way).
const MAX_CONTEXT_BYTES: usize = 128 * 1024;
/// Characters kept of one context title.
const MAX_CONTEXT_TITLE: usize = 1024;
/// The largest snapshot accepted (the helper's are far smaller).
const MAX_IMAGE_BYTES: usize = 4 * 1024 * 1024;
/// Snapshots are scaled to this width by the helper.
const MAX_IMAGE_WIDTH: u32 = 1280;
const MAX_IMAGE_HEIGHT: u32 = 8 * 1280;
/// Characters kept of a window title, and of a process name or reason.
const MAX_TITLE: usize = 2048;
const MAX_SHORT_TEXT: usize = 256;
/// Captures (and repeat summaries) one account may queue per minute, in
/// each of two bands: severity 1–3 and severity 4–5. The helper sends at
/// most one per rule and window per repeat window, so only a forger
/// reaches this; with a band of their own, the serious captures cannot be
/// crowded out by a flood of minor ones.
const CAPTURES_PER_MINUTE: u32 = 60;
/// Helper connections one uid may hold open.
const MAX_CONNECTIONS_PER_UID: usize = 8;

/// Why a helper's capture was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The title matches no rule of the policy in force for this user.
    NoMatch,
    /// The account queued `CAPTURES_PER_MINUTE` already this minute.
    RateLimited,
}

/// What the helper socket serves from.
pub struct HelperSocket {
    pub socket: std::path::PathBuf,
    pub outbox: Outbox,
    pub hub: Arc<PolicyHub>,
    /// The acceptable-use policy: prompts down, answers up.
    pub aup: Arc<AupHub>,
    /// For ending a session after a decline (`[enforcement]`, `[sessions]`).
    pub config: Arc<AgentConfig>,
    pub presence: Arc<crate::gaps::HelperPresence>,
    pub wake: Arc<crate::stream::Wake>,
    pub shutdown: CancellationToken,
}

/// Accepts helpers on `socket`, queues what they send, tagged with the
/// connecting user's account, and keeps each helper's policy current.
pub async fn serve_helpers(settings: HelperSocket) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let HelperSocket {
        socket,
        outbox,
        hub,
        aup,
        config,
        presence,
        wake,
        shutdown,
    } = settings;
    crate::socket_dir::prepare_socket_dir(&socket)
        .map_err(|e| anyhow::anyhow!("preparing the folder of {}: {e}", socket.display()))?;
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .map_err(|e| anyhow::anyhow!("listening on {}: {e}", socket.display()))?;
    // Every local user's helper may connect; who they are comes from the
    // kernel, not from what they say.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))?;
    let shared = Arc::new(Shared::load(&outbox).await);
    let connections = Arc::new(Mutex::new(HashMap::<u32, usize>::new()));
    let mut pause = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => {
                let _ = std::fs::remove_file(&socket);
                return Ok(());
            }
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                pause = Duration::from_millis(10);
                stream
            }
            Err(e) => {
                // E.g. EMFILE: keep listening, at most one line per pause.
                tracing::error!(error = %e, retry_in_ms = pause.as_millis() as u64, "accepting a session helper failed");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.cancelled() => continue,
                }
                pause = (pause * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(credentials) = stream.peer_cred() else {
            continue;
        };
        let uid = credentials.uid();
        let Some(slot) = ConnectionSlot::take(&connections, uid) else {
            tracing::warn!(
                uid,
                limit = MAX_CONNECTIONS_PER_UID,
                "too many helper connections from this user; refused"
            );
            continue;
        };
        // Counted as this user's helper (no monitoring gap) only when the
        // kernel says it runs the helper executable.
        let present = credentials
            .pid()
            .filter(|pid| presence.is_helper(Some(*pid)))
            .map(|pid| presence.enter(uid, pid));
        let account = crate::accounts::account_of(uid);
        let (reader, writer) = stream.into_split();
        let writing = tokio::spawn(send_policies(
            writer,
            Subscriptions {
                policies: hub.subscribe(),
                aup: aup.subscribe(),
                outbox: outbox.clone(),
            },
            account.clone(),
            shutdown.clone(),
        ));
        let connection = Connection {
            uid,
            pid: credentials.pid(),
            account,
            aup: aup.clone(),
            config: config.clone(),
            outbox: outbox.clone(),
            wake: wake.clone(),
            policies: hub.subscribe(),
            shared: shared.clone(),
        };
        tokio::spawn(async move {
            connection.receive(reader).await;
            writing.abort();
            drop((slot, present));
        });
    }
}

/// One open connection of a uid, released on drop.
struct ConnectionSlot {
    connections: Arc<Mutex<HashMap<u32, usize>>>,
    uid: u32,
}

impl ConnectionSlot {
    fn take(connections: &Arc<Mutex<HashMap<u32, usize>>>, uid: u32) -> Option<ConnectionSlot> {
        let mut open = connections.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(uid).or_insert(0);
        if *count >= MAX_CONNECTIONS_PER_UID {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot {
            connections: connections.clone(),
            uid,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.uid) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

/// What all connections share: the per-account rate limit and the count
/// of refused captures.
struct Shared {
    minutes: Mutex<HashMap<String, (Instant, u32)>>,
    refused: AtomicU64,
    /// Held while an acceptable-use answer is judged and recorded: two
    /// connections of one user answering at once record one answer.
    aup_answers: tokio::sync::Mutex<()>,
}

impl Shared {
    async fn load(outbox: &Outbox) -> Shared {
        let refused = State::new(outbox).captures_refused().await.unwrap_or(0);
        Shared {
            minutes: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(refused),
            aup_answers: tokio::sync::Mutex::new(()),
        }
    }

    /// Counts one capture of `account` at `severity`; false when over its
    /// band's limit this minute.
    fn admit(&self, account: &str, severity: u32, now: Instant) -> bool {
        let mut minutes = self.minutes.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded by the accounts that log in, but forget old minutes.
        if minutes.len() > 1_000 {
            minutes.retain(|_, (since, _)| {
                now.saturating_duration_since(*since) < Duration::from_secs(60)
            });
        }
        let band = if severity >= 4 { "serious" } else { "minor" };
        let (since, count) = minutes
            .entry(format!("{band}:{account}"))
            .or_insert((now, 0));
        if now.saturating_duration_since(*since) >= Duration::from_secs(60) {
            (*since, *count) = (now, 0);
        }
        *count += 1;
        *count <= CAPTURES_PER_MINUTE
    }
}

struct Connection {
    uid: u32,
    pid: Option<i32>,
    account: String,
    aup: Arc<AupHub>,
    config: Arc<AgentConfig>,
    outbox: Outbox,
    wake: Arc<crate::stream::Wake>,
    policies: tokio::sync::watch::Receiver<InForce>,
    shared: Arc<Shared>,
}

impl Connection {
    /// Queues each acceptable capture the helper sends until it
    /// disconnects or sends a line over `MAX_LINE`.
    async fn receive(mut self, reader: tokio::net::unix::OwnedReadHalf) {
        let uid = self.uid;
        let mut lines = FramedRead::new(reader, LinesCodec::new_with_max_length(MAX_LINE));
        let mut parsed: Option<(PolicyText, Arc<Policy>)> = None;
        let mut buffer = String::new();
        while let Some(line) = lines.next().await {
            let line = match line {
                Ok(line) => line,
                Err(LinesCodecError::MaxLineLengthExceeded) => {
                    tracing::warn!(
                        uid,
                        limit = MAX_LINE,
                        "session helper sent an oversized line; connection closed"
                    );
                    return;
                }
                Err(LinesCodecError::Io(e)) => {
                    tracing::debug!(uid, error = %e, "session helper connection failed");
                    return;
                }
            };
            let capture = match serde_json::from_str::<HelperLine>(&line) {
                Ok(HelperLine::Capture(capture)) => *capture,
                Ok(HelperLine::AupAnswer { aup_answer }) => {
                    self.answer(aup_answer).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(uid, error = %e, "unreadable line from a session helper");
                    continue;
                }
            };
            let in_force = self.policies.borrow_and_update().clone();
            let policy = policy_for(&mut parsed, &in_force.policy);
            let user = User {
                kind: in_force.user_kind(&self.account),
                groups: in_force.user_groups(&self.account),
            };
            let checked = check(
                &capture,
                &policy,
                in_force.policy.version,
                user,
                &mut buffer,
            )
            .and_then(|checked| {
                if self
                    .shared
                    .admit(&self.account, checked.severity, Instant::now())
                {
                    Ok(checked)
                } else {
                    Err(Refusal::RateLimited)
                }
            });
            match checked {
                Ok(checked) => self.queue(capture, checked).await,
                Err(refusal) => self.refused(refusal).await,
            }
        }
    }

    async fn queue(&self, capture: HelperCapture, checked: Checked) {
        let (image, no_image_reason) = image_of(&capture);
        let now = Timestamp::now();
        let context = context_of(capture.context, checked.context_minutes, now);
        let body = v1::event::Body::Capture(v1::Capture {
            rule_id: checked.rule_id,
            category: checked.category,
            severity: checked.severity,
            matched_text: checked.matched_text,
            window_title: checked.window_title,
            process_name: bounded(&capture.process_name, MAX_SHORT_TEXT),
            pid: capture.pid,
            account: self.account.clone(),
            repeat_count: capture.repeat_count,
            no_image_reason,
            image_sha256: if image.is_empty() {
                String::new()
            } else {
                crate::tls::sha256_hex(&image)
            },
            image_png: image,
            policy_version: checked.policy_version,
            context,
        });
        match self.outbox.append(now, body).await {
            // A capture may be an alert someone is waiting for.
            Ok(_) => self.wake.urgent(),
            Err(e) => tracing::error!(error = %e, "cannot queue a capture"),
        }
    }

    /// Records an answer to the acceptable-use policy when it is one the
    /// daemon asked of this account (`aup::judge`), then ends the session
    /// when a decline says so.
    async fn answer(&mut self, answer: AupAnswer) {
        let shared = self.shared.clone();
        let _one_at_a_time = shared.aup_answers.lock().await;
        let groups = self.policies.borrow().aup_groups(&self.account);
        let state = State::new(&self.outbox);
        let answered = match state.aup_answered(&self.account).await {
            Ok(answered) => answered,
            Err(e) => {
                tracing::error!(error = %e, "cannot read acceptable-use answers");
                return;
            }
        };
        let in_force = self.aup.current();
        let (accepted, log_out) = match crate::aup::judge(
            in_force.as_ref(),
            &groups,
            answered,
            answer.version,
            answer.accepted,
        ) {
            Verdict::Record { accepted, log_out } => (accepted, log_out),
            Verdict::AlreadyAnswered => return,
            Verdict::Refused(why) => {
                tracing::warn!(
                    uid = self.uid,
                    version = answer.version,
                    why,
                    "acceptable-use answer refused"
                );
                return;
            }
        };
        let now = Timestamp::now();
        // Recorded first: a helper that sends the answer again, or a
        // daemon restarted after queuing, asks no second time.
        if let Err(e) = state.set_aup_answered(&self.account, answer.version).await {
            tracing::error!(error = %e, "cannot record an acceptable-use answer");
            return;
        }
        let outcome = if log_out {
            crate::aup::end_sessions(&self.config, &self.account, self.uid, self.pid).await
        } else {
            String::new()
        };
        tracing::info!(uid = self.uid, version = answer.version, accepted, outcome = %outcome, "acceptable-use policy answered");
        let body = crate::aup::answer_event(&self.account, answer.version, accepted, now, outcome);
        match self.outbox.append(now, body).await {
            Ok(_) => self.wake.notify_one(),
            Err(e) => {
                tracing::error!(error = %e, "cannot queue an acceptable-use answer");
                // Not recorded after all: the user is asked again rather
                // than their answer being lost.
                if let Err(e) = state.set_aup_answered(&self.account, answered).await {
                    tracing::error!(error = %e, "cannot undo an unqueued acceptable-use answer");
                }
            }
        }
    }

    async fn refused(&self, refusal: Refusal) {
        let total = self.shared.refused.fetch_add(1, Ordering::Relaxed) + 1;
        // No title in the log: it may name a pupil's search.
        tracing::warn!(uid = self.uid, reason = ?refusal, total, "capture from a session helper refused");
        if let Err(e) = State::new(&self.outbox).set_captures_refused(total).await {
            tracing::warn!(error = %e, "cannot record a refused capture");
        }
    }
}

/// The policy in force, parsed once per version.
fn policy_for(parsed: &mut Option<(PolicyText, Arc<Policy>)>, text: &PolicyText) -> Arc<Policy> {
    // The hub hands out the same `Arc` until the policy changes: no need
    // to compare the text itself on every capture.
    if let Some((held, policy)) = parsed
        && held.version == text.version
        && held.origin == text.origin
        && Arc::ptr_eq(&held.toml, &text.toml)
    {
        return policy.clone();
    }
    let policy = Arc::new(crate::policy::parse_text(text).unwrap_or_else(|e| {
        // The hub only publishes policies that parsed; keep matching.
        tracing::error!(error = %e, "policy in force does not parse; matching with the default");
        Policy::default_policy()
    }));
    *parsed = Some((text.clone(), policy.clone()));
    policy
}

/// What the daemon itself vouches for in a capture.
#[derive(Debug, PartialEq, Eq)]
struct Checked {
    rule_id: String,
    category: String,
    severity: u32,
    matched_text: String,
    window_title: String,
    policy_version: u64,
    /// The policy's `context_minutes`: 0 passes no context on.
    context_minutes: u32,
}

/// Matches the helper's title against the policy in force: the helper's
/// rule when it fired, else the first rule that did (the helper may hold
/// an older version); nothing fired, nothing queued.
fn check(
    capture: &HelperCapture,
    policy: &Policy,
    policy_version: u64,
    user: User<'_>,
    buffer: &mut String,
) -> Result<Checked, Refusal> {
    let title = bounded(&capture.window_title, MAX_TITLE);
    let hits = policy.matches(&title, user, buffer);
    let hit = hits
        .iter()
        .find(|hit| hit.rule.id == capture.rule_id)
        .or(hits.first())
        .ok_or(Refusal::NoMatch)?;
    Ok(Checked {
        rule_id: hit.rule.id.clone(),
        category: hit.rule.category.clone(),
        severity: u32::from(hit.rule.severity),
        matched_text: hit.phrase.to_owned(),
        window_title: title,
        policy_version,
        context_minutes: policy.context_minutes,
    })
}

/// The helper's earlier titles as the daemon passes them on: none when
/// the policy in force allows no context; otherwise the newest
/// `MAX_CONTEXT_ENTRIES` within `MAX_CONTEXT_BYTES`, text bounded, empty
/// titles dropped, times between the epoch and `now`, first not after last.
fn context_of(
    context: Vec<ContextWindow>,
    context_minutes: u32,
    now: Timestamp,
) -> Vec<v1::ContextWindow> {
    if context_minutes == 0 {
        return Vec::new();
    }
    let now_ms = now.as_millisecond();
    let time = |ms: i64| {
        let ms = ms.clamp(0, now_ms);
        hallmonitor_proto::Timestamp {
            seconds: ms.div_euclid(1000),
            nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
        }
    };
    let mut kept = Vec::new();
    let mut bytes = 0;
    for entry in context.into_iter().rev() {
        if kept.len() == MAX_CONTEXT_ENTRIES {
            break;
        }
        let title = bounded(&entry.title, MAX_CONTEXT_TITLE);
        if title.trim().is_empty() {
            continue;
        }
        let process_name = bounded(&entry.process_name, MAX_SHORT_TEXT);
        bytes += title.len() + process_name.len();
        if bytes > MAX_CONTEXT_BYTES {
            break;
        }
        let last = entry.last_seen_ms;
        kept.push(v1::ContextWindow {
            title,
            process_name,
            first_seen: Some(time(entry.first_seen_ms.min(last))),
            last_seen: Some(time(last)),
        });
    }
    kept.reverse();
    kept
}

/// The snapshot, when it is a PNG of the size helpers make; otherwise
/// none, with the reason.
fn image_of(capture: &HelperCapture) -> (Vec<u8>, String) {
    let reason = bounded(&capture.no_image_reason, MAX_SHORT_TEXT);
    if capture.image_png_base64.is_empty() {
        let reason = if reason.is_empty() {
            "the session helper sent no image".to_owned()
        } else {
            reason
        };
        return (Vec::new(), reason);
    }
    let refused = |why: &str| (Vec::new(), format!("snapshot refused by the agent: {why}"));
    let Ok(image) = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        &capture.image_png_base64,
    ) else {
        return refused("not base64");
    };
    if image.len() > MAX_IMAGE_BYTES {
        return refused("larger than 4 MiB");
    }
    match png_dimensions(&image) {
        None => refused("not a PNG"),
        Some((width, height))
            if width == 0
                || height == 0
                || width > MAX_IMAGE_WIDTH
                || height > MAX_IMAGE_HEIGHT =>
        {
            refused(&format!("{width}×{height} pixels"))
        }
        Some(_) => (image, reason),
    }
}

/// Width and height from a PNG's header (signature, then the IHDR chunk).
fn png_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.get(..8)? != SIGNATURE || bytes.get(12..16)? != b"IHDR" {
        return None;
    }
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    Some((word(16)?, word(20)?))
}

/// At most `max` characters, control characters replaced.
fn bounded(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// What a helper's writer follows.
struct Subscriptions {
    policies: tokio::sync::watch::Receiver<InForce>,
    aup: tokio::sync::watch::Receiver<Option<AupInForce>>,
    outbox: Outbox,
}

/// Sends the helper the policy in force now and after every change that
/// concerns it, and the acceptable-use policy when its account has not
/// answered the version in force (once per version and connection).
async fn send_policies(
    mut writer: tokio::net::unix::OwnedWriteHalf,
    subscriptions: Subscriptions,
    account: String,
    shutdown: CancellationToken,
) {
    use tokio::io::AsyncWriteExt;
    let Subscriptions {
        mut policies,
        mut aup,
        outbox,
    } = subscriptions;
    let mut sent: Option<HelperPolicy> = None;
    let mut prompted = 0;
    loop {
        let message = {
            let in_force = policies.borrow_and_update();
            HelperPolicy {
                version: in_force.policy.version,
                origin: in_force.policy.origin,
                toml: in_force.policy.toml.to_string(),
                staff: in_force.user_kind(&account) == UserKind::Staff,
                groups: in_force.user_groups(&account).to_vec(),
                repeat_window_secs: u64::from(in_force.repeat_window_secs),
            }
        };
        if sent.as_ref() != Some(&message) {
            let mut line = serde_json::to_vec(&message).expect("plain data serialises");
            line.push(b'\n');
            if writer.write_all(&line).await.is_err() {
                return;
            }
            sent = Some(message);
        }
        let in_force = aup.borrow_and_update().clone();
        if let Some(in_force) = in_force.filter(|a| a.version > prompted) {
            let groups = policies.borrow().aup_groups(&account);
            let answered = State::new(&outbox)
                .aup_answered(&account)
                .await
                .unwrap_or(0);
            if let Some(prompt) = crate::aup::prompt_for(&in_force, &groups, answered) {
                let line = DaemonLine::Aup { aup: prompt };
                let mut line = serde_json::to_vec(&line).expect("plain data serialises");
                line.push(b'\n');
                if writer.write_all(&line).await.is_err() {
                    return;
                }
                prompted = in_force.version;
            }
            // Not asked (no audience for this user yet, or answered):
            // looked at again when the user's groups or kind arrive.
        }
        tokio::select! {
            changed = policies.changed() => if changed.is_err() { return },
            changed = aup.changed() => if changed.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The helper's test capture, with no image and a policy version the
    /// daemon does not hold.
    fn capture(rule: &str, title: &str) -> HelperCapture {
        HelperCapture {
            image_png_base64: String::new(),
            policy_version: 99,
            ..crate::capture::tests::capture(rule, title)
        }
    }

    fn png(width: u32, height: u32) -> String {
        let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        bytes.extend(width.to_be_bytes());
        bytes.extend(height.to_be_bytes());
        bytes.extend([8, 6, 0, 0, 0]);
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
    }

    #[test]
    fn the_daemon_takes_rule_category_and_severity_from_its_own_match() {
        let policy = Policy::default_policy();
        let mut buffer = String::new();
        let cases: [(&str, HelperCapture, Result<&str, Refusal>); 3] = [
            (
                "a harmless title claiming severity 5 is refused",
                capture("self-harm", "Year 8 maths homework"),
                Err(Refusal::NoMatch),
            ),
            (
                "a drugs title claiming self-harm is queued as drugs",
                capture("self-harm", "buy weed near me"),
                Ok("drugs"),
            ),
            (
                "a true claim stands",
                capture("self-harm", "how to kill myself"),
                Ok("self-harm"),
            ),
        ];
        for (name, claim, expected) in cases {
            let checked = check(
                &claim,
                &policy,
                3,
                User::without_groups(UserKind::Pupil),
                &mut buffer,
            );
            match (checked, expected) {
                (Ok(checked), Ok(category)) => {
                    assert_eq!(checked.category, category, "{name}");
                    assert_eq!(checked.policy_version, 3, "{name}: the daemon's version");
                    let rule = policy
                        .rules()
                        .iter()
                        .find(|r| r.id == checked.rule_id)
                        .unwrap();
                    assert_eq!(checked.severity, u32::from(rule.severity), "{name}");
                }
                (Err(refusal), Err(expected)) => assert_eq!(refusal, expected, "{name}"),
                (got, _) => panic!("{name}: {got:?}"),
            }
        }
    }

    #[test]
    fn context_is_bounded_and_follows_the_policy() {
        let now: Timestamp = "2026-03-02T10:00:00Z".parse().unwrap();
        let entry = |title: &str, first: i64, last: i64| ContextWindow {
            title: title.into(),
            process_name: "firefox\u{7}".into(),
            first_seen_ms: first,
            last_seen_ms: last,
        };
        let sent = vec![
            entry("Maths\nhomework", 1_000, 2_000),
            entry("   ", 2_000, 3_000),
            entry("from the future", 5_000, i64::MAX),
            entry("backwards", 9_000, 4_000),
        ];
        assert!(
            context_of(sent.clone(), 0, now).is_empty(),
            "0 minutes: none"
        );
        let kept = context_of(sent, 60, now);
        let titles: Vec<&str> = kept.iter().map(|c| c.title.as_str()).collect();
        assert_eq!(titles, ["Maths homework", "from the future", "backwards"]);
        assert_eq!(kept[0].process_name, "firefox ");
        assert_eq!(kept[0].first_seen.unwrap().seconds, 1);
        assert_eq!(kept[1].last_seen.unwrap().seconds, now.as_second());
        assert_eq!(kept[2].first_seen, kept[2].last_seen);

        let many: Vec<ContextWindow> = (0..500)
            .map(|n| entry(&format!("{n} {}", "x".repeat(5_000)), n, n))
            .collect();
        let kept = context_of(many, 60, now);
        assert!(kept.len() <= MAX_CONTEXT_ENTRIES);
        assert!(
            kept.iter()
                .all(|c| c.title.chars().count() <= MAX_CONTEXT_TITLE)
        );
        assert!(kept.iter().map(|c| c.title.len()).sum::<usize>() <= MAX_CONTEXT_BYTES);
        assert!(
            kept.last().unwrap().title.starts_with("499 "),
            "the newest are kept"
        );
        let few: Vec<ContextWindow> = (0..500).map(|n| entry(&n.to_string(), n, n)).collect();
        let kept = context_of(few, 60, now);
        assert_eq!(kept.len(), MAX_CONTEXT_ENTRIES);
        assert_eq!(kept[0].title, "300");
    }

    #[test]
    fn snapshots_must_be_pngs_of_the_size_helpers_make() {
        let with = |image: String| HelperCapture {
            image_png_base64: image,
            ..capture("r", "t")
        };
        let (image, reason) = image_of(&with(png(1280, 800)));
        assert!(!image.is_empty() && reason.is_empty(), "{reason}");
        for (name, bad) in [
            ("too wide", png(1281, 800)),
            ("too tall", png(1280, MAX_IMAGE_HEIGHT + 1)),
            ("empty", png(0, 0)),
            ("not a PNG", "aGVsbG8=".to_owned()),
            ("not base64", "***".to_owned()),
        ] {
            let (image, reason) = image_of(&with(bad));
            assert!(image.is_empty(), "{name}");
            assert!(reason.starts_with("snapshot refused"), "{name}: {reason}");
        }
    }

    #[test]
    fn captures_per_account_are_limited_per_minute() {
        let shared = Shared {
            minutes: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
            aup_answers: tokio::sync::Mutex::new(()),
        };
        let start = Instant::now();
        for n in 0..CAPTURES_PER_MINUTE {
            assert!(shared.admit("pupil", 2, start), "capture {n}");
        }
        assert!(!shared.admit("pupil", 1, start), "over the limit");
        assert!(shared.admit("other", 2, start), "another account");
        // A flood of minor captures does not crowd out a serious one.
        for n in 0..CAPTURES_PER_MINUTE {
            assert!(shared.admit("pupil", 5, start), "serious capture {n}");
        }
        assert!(!shared.admit("pupil", 4, start), "serious band full too");
        assert!(
            shared.admit("pupil", 2, start + Duration::from_secs(60)),
            "a new minute"
        );
    }

    #[test]
    fn titles_are_bounded_and_lose_control_characters() {
        let long = format!("\u{1b}[31m{}", "x".repeat(10_000));
        let bounded = bounded(&long, MAX_TITLE);
        assert_eq!(bounded.chars().count(), MAX_TITLE);
        assert!(!bounded.contains('\u{1b}'));
    }

    #[test]
    fn connections_per_uid_are_capped_and_released() {
        let connections = Arc::new(Mutex::new(HashMap::new()));
        let slots: Vec<_> = (0..MAX_CONNECTIONS_PER_UID)
            .map(|_| ConnectionSlot::take(&connections, 1000).expect("under the cap"))
            .collect();
        assert!(ConnectionSlot::take(&connections, 1000).is_none());
        assert!(
            ConnectionSlot::take(&connections, 1001).is_some(),
            "another uid"
        );
        drop(slots);
        assert!(
            ConnectionSlot::take(&connections, 1000).is_some(),
            "released"
        );
    }
}
