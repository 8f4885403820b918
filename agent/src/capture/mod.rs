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
//! not heard from the daemon uses the project's default policy. When no
//! snapshot can be taken (no display, a compositor refusing) the capture
//! still goes out, marked "no image" with the reason.
//!
//! Files: `protocol` (the socket's messages), `helper` (the helper's
//! loop), `rate_limit` (its per-rule-and-window counting) and `intake`
//! (the daemon's socket server).
//!
//! Architecture invariant: `helper` and `rate_limit` run in the session
//! helper, `intake` in the daemon; the two sides share only `protocol`
//! (and this module's defaults).

use std::time::Duration;

mod helper;
mod intake;
mod protocol;
mod rate_limit;

pub use helper::run_helper;
pub use intake::serve_helpers;
pub use protocol::{HelperCapture, HelperPolicy};
pub use rate_limit::{Admission, RateLimit};

/// Repeats of one rule in one window within this are counted, not
/// captured, unless the daemon says otherwise (`[capture]
/// repeat_window_secs`).
const REPEAT_WINDOW: Duration = Duration::from_secs(60);

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
}
