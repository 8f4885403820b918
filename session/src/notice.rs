//! Telling the user that a capture was taken, when the site's policy asks
//! for it (`capture_notice = "…"`; absent, the helper stays silent).
//!
//! The notice is a desktop notification through `notify-send` (libnotify's
//! command, on most Linux desktops), run as a child process with no
//! input or output, killed if it has not finished within
//! `NOTIFY_TIMEOUT`; where there is no `notify-send` nothing is shown and
//! the capture goes out as ever. At most one notice per `NOTICE_GAP`,
//! however many captures a burst of titles makes.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `notify-send` is killed after this.
pub const NOTIFY_TIMEOUT: Duration = Duration::from_secs(5);
/// Notices closer together than this are dropped.
pub const NOTICE_GAP: Duration = Duration::from_secs(30);

/// When the last notice was shown.
#[derive(Debug, Default)]
pub struct NoticeGate {
    last: Option<Instant>,
}

impl NoticeGate {
    /// Whether a notice may be shown at `now` (and, if so, counts it).
    pub fn admit(&mut self, now: Instant) -> bool {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < NOTICE_GAP)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// `notify-send`'s arguments for `notice` (the site's words, checked by
/// the policy: one line, at most 200 characters). `--` keeps words that
/// start with a dash from being read as options.
pub fn notify_send_args(notice: &str) -> Vec<String> {
    vec![
        "--app-name=Hall Monitor".into(),
        "--urgency=normal".into(),
        format!("--expire-time={}", 10_000),
        "--".into(),
        "Hall Monitor".into(),
        notice.into(),
    ]
}

/// Shows `notice` without waiting for it: a thread waits for
/// `notify-send` and kills it after `NOTIFY_TIMEOUT`.
pub fn show(notice: &str) {
    let child = Command::new("notify-send")
        .args(notify_send_args(notice))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            tracing::debug!(error = %e, "no capture notice shown (notify-send)");
            return;
        }
    };
    std::thread::spawn(move || {
        let started = Instant::now();
        while started.elapsed() < NOTIFY_TIMEOUT {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        tracing::warn!("notify-send did not finish; killed");
        let _ = child.kill();
        let _ = child.wait();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_site_words_are_one_argument_after_the_options() {
        let args = notify_send_args("--help me; $(rm -rf ~)");
        assert_eq!(args.last().unwrap(), "--help me; $(rm -rf ~)");
        let dashes = args.iter().position(|a| a == "--").unwrap();
        assert_eq!(
            args.len() - dashes,
            3,
            "summary and body after --: {args:?}"
        );
    }

    #[test]
    fn at_most_one_notice_per_gap() {
        let mut gate = NoticeGate::default();
        let start = Instant::now();
        assert!(gate.admit(start));
        assert!(!gate.admit(start + Duration::from_secs(1)));
        assert!(!gate.admit(start + NOTICE_GAP - Duration::from_millis(1)));
        assert!(gate.admit(start + NOTICE_GAP));
    }
}
