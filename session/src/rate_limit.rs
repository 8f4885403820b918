//! The helper's rate limit per (rule, window): one capture with a
//! snapshot, then repeats counted into a summary.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hallmonitor_capture_protocol::{HelperCapture, REPEAT_WINDOW};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::capture;

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
