//! Suspicious-activity captures: the daemon's side of the local socket
//! to the session helpers.
//!
//! Only code inside a graphical session can see its windows, so a separate
//! program, `hallmonitor-session` (the `session/` crate, started by the
//! XDG autostart entry or systemd user unit in deploy/), watches the
//! active window, matches titles against the policy and sends a capture
//! for each match to the daemon over a Unix socket, one JSON line each.
//!
//! The daemon (`serve_helpers`) accepts on the socket, takes the account
//! from the peer's credentials (never from the message), and queues the
//! capture in the outbox, hashing the image itself. The other way, it sends
//! each helper the policy in force and whether its user counts as staff,
//! again whenever either changes (`policy::PolicyHub`).
//!
//! Architecture invariant: the two sides share only the socket's messages,
//! `hallmonitor-capture-protocol`; the daemon links no X11 or image code
//! (an end-to-end test reads the daemon's linked libraries).

mod intake;

pub use hallmonitor_capture_protocol::{HelperCapture, HelperPolicy};
pub use intake::{HelperSocket, serve_helpers};

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
            context: Vec::new(),
        }
    }
}
