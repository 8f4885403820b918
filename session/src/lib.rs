//! Hall Monitor session helper (`hallmonitor-session`), one per graphical
//! session, running as the logged-in user: it follows the active window
//! (`window`), matches titles against the policy the daemon sent
//! (`hallmonitor-policy`), counts repeats of one rule in one window within
//! the repeat window instead of capturing them again (`rate_limit`), takes
//! a snapshot of the monitor holding the window (`snapshot`), and hands
//! each capture to the agent daemon over its Unix socket (`helper`). When
//! no snapshot can be taken (no display, a compositor refusing) the
//! capture still goes out, marked "no image" with the reason.
//!
//! It is its own program so that the daemon links none of its X11,
//! Wayland and image code. The two share only the socket's messages,
//! `hallmonitor-capture-protocol`; the daemon trusts nothing a helper says
//! beyond what it can check (it re-matches every title itself).
//! `main.rs` only parses the command line.

pub mod aup;
pub mod context;
pub mod helper;
pub mod notice;
pub mod rate_limit;
pub mod snapshot;
pub mod window;

pub use helper::run_helper;
pub use rate_limit::{Admission, RateLimit};

#[cfg(test)]
pub(crate) mod tests {
    use hallmonitor_capture_protocol::HelperCapture;

    pub(crate) fn capture(rule: &str, title: &str) -> HelperCapture {
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
