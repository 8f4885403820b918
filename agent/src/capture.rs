//! Suspicious-activity captures: the session helper and the daemon's side
//! of the local socket between them.
//!
//! Only code inside a graphical session can see its windows, so the same
//! binary runs there as `hallmonitor-agent session` (started by the XDG
//! autostart entry in deploy/). It watches the active window (`window`),
//! matches titles against the policy (`policy`), and sends a capture for
//! each match to the daemon over a Unix socket, one JSON line each. The
//! same rule in the same window within 60 s adds to a counter carried by
//! the next capture instead of making another.
//!
//! The daemon (`serve_helpers`) accepts on the socket, takes the account
//! from the peer's credentials (never from the message), and queues the
//! capture in the outbox, hashing the image itself. When no snapshot can be
//! taken (no display, a compositor refusing) the capture still goes out,
//! marked "no image" with the reason.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use hallmonitor_proto::v1;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::outbox::Outbox;
use crate::policy::{PolicySource, UserKind};
use crate::window::ActiveWindowSource;

/// Repeats of one rule in one window within this are counted, not captured.
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
}

/// The helper's rate limit: (rule, window) → when last captured and how
/// many matches were merged since.
#[derive(Default)]
pub struct RateLimit {
    last: HashMap<(String, u64), (Instant, u32)>,
}

impl RateLimit {
    /// Some(repeats merged since the last capture) when a capture should be
    /// taken now; None when this match only adds to the counter.
    pub fn admit(&mut self, rule: &str, window: u64, now: Instant) -> Option<u32> {
        let key = (rule.to_owned(), window);
        match self.last.get_mut(&key) {
            Some((at, merged)) if now.duration_since(*at) < REPEAT_WINDOW => {
                *merged += 1;
                None
            }
            Some((at, merged)) => {
                let repeats = *merged;
                *at = now;
                *merged = 0;
                Some(repeats)
            }
            None => {
                self.last.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

/// The session helper's loop: until the socket is gone for good or the
/// display goes away. Buffers captures briefly while the daemon is down.
pub fn run_helper(
    source: &mut dyn ActiveWindowSource,
    policies: &mut PolicySource,
    socket: &Path,
) -> anyhow::Result<()> {
    let mut limit = RateLimit::default();
    let mut last: Option<(u64, String)> = None;
    let mut pending: Vec<HelperCapture> = Vec::new();
    let mut buffer = String::new();
    let mut stream: Option<std::os::unix::net::UnixStream> = None;
    loop {
        let window = source.next(Duration::from_secs(1))?;
        // Picks up an edited policy file within a second.
        let policy = policies.current();
        if let Some(window) = window {
            let key = (window.id, window.title.clone());
            if last.as_ref() != Some(&key) {
                last = Some(key);
                // One snapshot for however many rules this title fires.
                let mut snapshot: Option<Result<crate::snapshot::Snapshot, String>> = None;
                for hit in policy.matches(&window.title, UserKind::Pupil, &mut buffer) {
                    let Some(repeats) = limit.admit(&hit.rule.id, window.id, Instant::now()) else {
                        continue;
                    };
                    let shot = snapshot.get_or_insert_with(|| crate::snapshot::take(window.centre));
                    let (image_png_base64, no_image_reason) = match shot {
                        Ok(s) => (
                            base64::Engine::encode(
                                &base64::engine::general_purpose::STANDARD,
                                &s.png,
                            ),
                            String::new(),
                        ),
                        Err(reason) => (String::new(), reason.clone()),
                    };
                    pending.push(HelperCapture {
                        rule_id: hit.rule.id.clone(),
                        category: hit.rule.category.clone(),
                        severity: u32::from(hit.rule.severity),
                        matched_text: hit.phrase.to_owned(),
                        window_title: window.title.clone(),
                        process_name: window.process_name.clone(),
                        pid: window.pid,
                        repeat_count: repeats,
                        no_image_reason,
                        image_png_base64,
                    });
                }
            }
        }
        if pending.is_empty() {
            continue;
        }
        if stream.is_none() {
            stream = std::os::unix::net::UnixStream::connect(socket).ok();
        }
        let Some(connection) = stream.as_mut() else {
            // The daemon is down: keep a bounded buffer and retry.
            if pending.len() > 1_000 {
                pending.drain(..pending.len() - 1_000);
            }
            continue;
        };
        let mut sent = 0;
        for capture in &pending {
            let mut line = serde_json::to_vec(capture)?;
            line.push(b'\n');
            if connection.write_all(&line).is_err() {
                stream = None;
                break;
            }
            sent += 1;
        }
        pending.drain(..sent);
    }
}

/// The daemon's side: accepts helpers on `socket` and queues what they
/// send, tagged with the connecting user's account.
pub async fn serve_helpers(
    socket: std::path::PathBuf,
    outbox: Outbox,
    wake: std::sync::Arc<Notify>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .map_err(|e| anyhow::anyhow!("listening on {}: {e}", socket.display()))?;
    // Every local user's helper may connect; who they are comes from the
    // kernel, not from what they say.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = shutdown.cancelled() => {
                let _ = std::fs::remove_file(&socket);
                return Ok(());
            }
        };
        let Ok(credentials) = stream.peer_cred() else {
            continue;
        };
        let account = crate::accounts::account_of(credentials.uid());
        let (outbox, wake) = (outbox.clone(), wake.clone());
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.len() > 32 * 1024 * 1024 {
                    tracing::warn!(
                        uid = credentials.uid(),
                        "session helper sent an oversized line; dropped"
                    );
                    continue;
                }
                let capture: HelperCapture = match serde_json::from_str(&line) {
                    Ok(capture) => capture,
                    Err(e) => {
                        tracing::warn!(uid = credentials.uid(), error = %e, "unreadable line from a session helper");
                        continue;
                    }
                };
                let image = match base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    &capture.image_png_base64,
                ) {
                    Ok(image) => image,
                    Err(e) => {
                        tracing::warn!(uid = credentials.uid(), error = %e, "unreadable snapshot from a session helper");
                        Vec::new()
                    }
                };
                let no_image_reason = if image.is_empty() && capture.no_image_reason.is_empty() {
                    "the session helper sent no image".to_owned()
                } else {
                    capture.no_image_reason
                };
                let body = v1::event::Body::Capture(v1::Capture {
                    rule_id: capture.rule_id,
                    category: capture.category,
                    severity: capture.severity.clamp(1, 5),
                    matched_text: capture.matched_text,
                    window_title: capture.window_title,
                    process_name: capture.process_name,
                    pid: capture.pid,
                    account: account.clone(),
                    repeat_count: capture.repeat_count,
                    no_image_reason,
                    image_sha256: if image.is_empty() {
                        String::new()
                    } else {
                        crate::snapshot::sha256_hex(&image)
                    },
                    image_png: image,
                    ..Default::default()
                });
                match outbox.append(Timestamp::now(), body).await {
                    Ok(_) => wake.notify_one(),
                    Err(e) => tracing::error!(error = %e, "cannot queue a capture"),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_capture_per_rule_and_window_per_minute_with_a_counter() {
        let mut limit = RateLimit::default();
        let start = Instant::now();
        assert_eq!(limit.admit("r", 1, start), Some(0));
        for n in 1..=999 {
            assert_eq!(limit.admit("r", 1, start + Duration::from_millis(n)), None);
        }
        assert_eq!(limit.admit("r", 2, start), Some(0), "another window");
        assert_eq!(limit.admit("s", 1, start), Some(0), "another rule");
        assert_eq!(
            limit.admit("r", 1, start + Duration::from_secs(61)),
            Some(999),
            "the next capture carries the merged repeats"
        );
    }
}
