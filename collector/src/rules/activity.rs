//! The device-activity rule (PRODUCT.md, "Rule semantics"): a device must
//! have been logged in to for `required` (60 min) within every `window`
//! (28 days). Pure functions of their inputs and `as_of`; durations are
//! exact, so clock changes do not move them.
//!
//! Callers turn stored sessions into intervals with [`SessionRecord::interval`]
//! (which applies the qualification and the open-session cut-off) and pass
//! them with the device's evaluation start to [`evaluate`].

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::model::{SessionKind, SessionRecord};

/// Thresholds of the rule; per site (see `config.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActivityThresholds {
    pub window: SignedDuration,
    pub required: SignedDuration,
    /// How far ahead `at_risk` looks.
    pub warning: SignedDuration,
}

impl Default for ActivityThresholds {
    fn default() -> Self {
        ActivityThresholds {
            window: SignedDuration::from_hours(28 * 24),
            required: SignedDuration::from_mins(60),
            warning: SignedDuration::from_hours(7 * 24),
        }
    }
}

/// Which sessions count (PRODUCT.md "Qualifying session").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionPolicy {
    pub min_uid: u32,
    pub count_remote: bool,
    /// Glob patterns of accounts that never count.
    pub exclude_accounts: Vec<glob::Pattern>,
    /// When not empty, only accounts matching one of these count.
    pub include_accounts: Vec<glob::Pattern>,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        SessionPolicy {
            min_uid: 1000,
            count_remote: false,
            exclude_accounts: Vec::new(),
            include_accounts: Vec::new(),
        }
    }
}

impl SessionPolicy {
    pub fn qualifies(&self, session: &SessionRecord) -> bool {
        let kind_counts = match session.kind {
            SessionKind::Graphical | SessionKind::Console => true,
            SessionKind::Remote => self.count_remote,
            SessionKind::Other => false,
        };
        kind_counts
            && session.uid >= self.min_uid
            && !self
                .exclude_accounts
                .iter()
                .any(|p| p.matches(&session.account))
            && (self.include_accounts.is_empty()
                || self
                    .include_accounts
                    .iter()
                    .any(|p| p.matches(&session.account)))
    }
}

/// A half-open interval `[start, end)` of logged-in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    pub start: Timestamp,
    pub end: Timestamp,
}

impl SessionRecord {
    /// The time this session counts for at `as_of`, or None when it does
    /// not qualify or has no length. An open session counts until
    /// `min(as_of, last_seen + 2 × heartbeat interval)`, so a dead agent
    /// never accrues time.
    pub fn interval(
        &self,
        policy: &SessionPolicy,
        as_of: Timestamp,
        last_seen: Option<Timestamp>,
        heartbeat: SignedDuration,
    ) -> Option<Interval> {
        if !policy.qualifies(self) {
            return None;
        }
        let end = match self.ended_at {
            Some(end) => end,
            None => {
                let alive_until = last_seen?.checked_add(heartbeat * 2).ok()?;
                alive_until.min(as_of)
            }
        };
        let end = end.min(as_of);
        (end > self.started_at).then_some(Interval {
            start: self.started_at,
            end,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivityStatus {
    Grace,
    Compliant,
    AtRisk,
    NonCompliant,
    Disabled,
}

impl ActivityStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ActivityStatus::Grace => "grace",
            ActivityStatus::Compliant => "compliant",
            ActivityStatus::AtRisk => "at_risk",
            ActivityStatus::NonCompliant => "non_compliant",
            ActivityStatus::Disabled => "disabled",
        }
    }

    pub fn parse(text: &str) -> Option<ActivityStatus> {
        Some(match text {
            "grace" => ActivityStatus::Grace,
            "compliant" => ActivityStatus::Compliant,
            "at_risk" => ActivityStatus::AtRisk,
            "non_compliant" => ActivityStatus::NonCompliant,
            "disabled" => ActivityStatus::Disabled,
            _ => return None,
        })
    }

    /// Whether a compliance check passes: only `non_compliant` and
    /// `disabled` fail it (`at_risk` is a warning).
    pub fn passes(self) -> bool {
        !matches!(
            self,
            ActivityStatus::NonCompliant | ActivityStatus::Disabled
        )
    }
}

/// The rule's verdict for one device at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActivityEvaluation {
    pub status: ActivityStatus,
    pub as_of: Timestamp,
    pub window_start: Timestamp,
    /// Logged-in time in `[as_of − window, as_of)`, overlaps counted once.
    pub used: SignedDuration,
    /// Without further use the device is non-compliant from just after this
    /// instant. None when it already is (or is disabled).
    pub breach_at: Option<Timestamp>,
    /// End of the grace period, when in grace.
    pub grace_until: Option<Timestamp>,
}

/// What the rule needs to know about a device besides its sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceActivityContext {
    /// Enrolment, or the last re-enable if later.
    pub evaluation_start: Timestamp,
    pub disabled: bool,
}

/// Evaluates the rule. `intervals` may overlap and come in any order; only
/// their parts before `as_of` count.
pub fn evaluate(
    context: DeviceActivityContext,
    intervals: &[Interval],
    as_of: Timestamp,
    thresholds: &ActivityThresholds,
) -> ActivityEvaluation {
    let merged = union(intervals, as_of);
    let window_start = as_of - thresholds.window;
    let used = measure_since(&merged, window_start);
    let grace_until = context.evaluation_start + thresholds.window;
    // Latest p with |U ∩ [p, as_of)| ≥ required: the window can slide
    // until it starts at p before the device falls short.
    let last_required_start = latest_start_covering(&merged, thresholds.required);
    let breach_at = last_required_start
        .map(|p| (p + thresholds.window).max(grace_until))
        .or((grace_until > window_start).then_some(grace_until));

    let in_grace = context.evaluation_start > window_start;
    let status = if context.disabled {
        ActivityStatus::Disabled
    } else if in_grace {
        ActivityStatus::Grace
    } else if used < thresholds.required {
        ActivityStatus::NonCompliant
    } else if measure_since(&merged, window_start + thresholds.warning) < thresholds.required {
        ActivityStatus::AtRisk
    } else {
        ActivityStatus::Compliant
    };
    ActivityEvaluation {
        status,
        as_of,
        window_start,
        used,
        breach_at: match status {
            ActivityStatus::NonCompliant | ActivityStatus::Disabled => None,
            _ => breach_at,
        },
        grace_until: in_grace.then_some(grace_until),
    }
}

/// Sorted, disjoint intervals covering the same time before `as_of`.
fn union(intervals: &[Interval], as_of: Timestamp) -> Vec<Interval> {
    let mut sorted: Vec<Interval> = intervals
        .iter()
        .map(|i| Interval {
            start: i.start,
            end: i.end.min(as_of),
        })
        .filter(|i| i.end > i.start)
        .collect();
    sorted.sort_unstable_by_key(|i| i.start);
    let mut merged: Vec<Interval> = Vec::with_capacity(sorted.len());
    for interval in sorted {
        match merged.last_mut() {
            Some(last) if interval.start <= last.end => last.end = last.end.max(interval.end),
            _ => merged.push(interval),
        }
    }
    merged
}

/// |U ∩ [from, ∞)| for sorted disjoint `merged`.
fn measure_since(merged: &[Interval], from: Timestamp) -> SignedDuration {
    merged
        .iter()
        .rev()
        .take_while(|i| i.end > from)
        .map(|i| i.end.duration_since(i.start.max(from)))
        .sum()
}

/// The latest instant p with |U ∩ [p, ∞)| = `required`, or None when U is
/// shorter than that in total.
fn latest_start_covering(merged: &[Interval], required: SignedDuration) -> Option<Timestamp> {
    let mut remaining = required;
    for interval in merged.iter().rev() {
        let length = interval.end.duration_since(interval.start);
        if length >= remaining {
            return Some(interval.end - remaining);
        }
        remaining -= length;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn london(text: &str) -> Timestamp {
        // "2026-03-29T00:30" in Europe/London
        format!("{text}[Europe/London]")
            .parse::<jiff::Zoned>()
            .unwrap()
            .timestamp()
    }

    fn iv(start: &str, end: &str) -> Interval {
        Interval {
            start: t(start),
            end: t(end),
        }
    }

    fn enrolled(at: &str) -> DeviceActivityContext {
        DeviceActivityContext {
            evaluation_start: t(at),
            disabled: false,
        }
    }

    const AS_OF: &str = "2026-11-24T12:00:00Z";
    // as_of − 28 d = 2026-10-27T12:00Z; as_of − 21 d = 2026-11-03T12:00Z.

    #[test]
    fn rule_table() {
        struct Case {
            name: &'static str,
            context: DeviceActivityContext,
            intervals: Vec<Interval>,
            status: ActivityStatus,
            used_mins: i64,
            breach_at: Option<&'static str>,
        }
        let old = enrolled("2026-01-01T00:00:00Z");
        let cases = vec![
            Case {
                name: "no sessions at all",
                context: old,
                intervals: vec![],
                status: ActivityStatus::NonCompliant,
                used_mins: 0,
                breach_at: None,
            },
            Case {
                name: "exactly 60 min, recent: compliant",
                context: old,
                intervals: vec![iv("2026-11-20T09:00:00Z", "2026-11-20T10:00:00Z")],
                status: ActivityStatus::Compliant,
                used_mins: 60,
                breach_at: Some("2026-12-18T09:00:00Z"),
            },
            Case {
                name: "59 min: non-compliant",
                context: old,
                intervals: vec![iv("2026-11-20T09:00:00Z", "2026-11-20T09:59:00Z")],
                status: ActivityStatus::NonCompliant,
                used_mins: 59,
                breach_at: None,
            },
            Case {
                name: "session straddling the window start counts only inside",
                context: old,
                intervals: vec![iv("2026-10-27T11:00:00Z", "2026-10-27T12:59:00Z")],
                status: ActivityStatus::NonCompliant,
                used_mins: 59,
                breach_at: None,
            },
            Case {
                name: "straddling, 61 min inside: compliant but at risk",
                context: old,
                intervals: vec![iv("2026-10-27T11:00:00Z", "2026-10-27T13:01:00Z")],
                status: ActivityStatus::AtRisk,
                used_mins: 61,
                breach_at: Some("2026-11-24T12:01:00Z"),
            },
            Case {
                name: "overlapping sessions of two accounts count once",
                context: old,
                intervals: vec![
                    iv("2026-11-20T09:00:00Z", "2026-11-20T09:40:00Z"),
                    iv("2026-11-20T09:10:00Z", "2026-11-20T09:50:00Z"),
                ],
                status: ActivityStatus::NonCompliant,
                used_mins: 50,
                breach_at: None,
            },
            Case {
                name: "enough only in the first week: at risk",
                context: old,
                intervals: vec![iv("2026-10-30T09:00:00Z", "2026-10-30T11:00:00Z")],
                status: ActivityStatus::AtRisk,
                used_mins: 120,
                breach_at: Some("2026-11-27T10:00:00Z"),
            },
            Case {
                name: "enrolled 10 days ago: grace, breach at grace end",
                context: enrolled("2026-11-14T12:00:00Z"),
                intervals: vec![],
                status: ActivityStatus::Grace,
                used_mins: 0,
                breach_at: Some("2026-12-12T12:00:00Z"),
            },
            Case {
                name: "grace with use: breach is the later of grace end and use",
                context: enrolled("2026-11-14T12:00:00Z"),
                intervals: vec![iv("2026-11-20T09:00:00Z", "2026-11-20T10:00:00Z")],
                status: ActivityStatus::Grace,
                used_mins: 60,
                breach_at: Some("2026-12-18T09:00:00Z"),
            },
            Case {
                name: "evaluation start exactly 28 d ago: no longer grace",
                context: enrolled("2026-10-27T12:00:00Z"),
                intervals: vec![],
                status: ActivityStatus::NonCompliant,
                used_mins: 0,
                breach_at: None,
            },
            Case {
                name: "re-enabled 3 days ago after old use: grace again",
                context: enrolled("2026-11-21T12:00:00Z"),
                intervals: vec![iv("2026-10-01T09:00:00Z", "2026-10-01T12:00:00Z")],
                status: ActivityStatus::Grace,
                used_mins: 0,
                breach_at: Some("2026-12-19T12:00:00Z"),
            },
            Case {
                name: "disabled wins",
                context: DeviceActivityContext {
                    evaluation_start: t("2026-01-01T00:00:00Z"),
                    disabled: true,
                },
                intervals: vec![iv("2026-11-20T09:00:00Z", "2026-11-20T12:00:00Z")],
                status: ActivityStatus::Disabled,
                used_mins: 180,
                breach_at: None,
            },
            Case {
                name: "a session after as_of does not count",
                context: old,
                intervals: vec![iv("2026-11-24T12:00:00Z", "2026-11-24T14:00:00Z")],
                status: ActivityStatus::NonCompliant,
                used_mins: 0,
                breach_at: None,
            },
        ];
        for case in cases {
            let got = evaluate(
                case.context,
                &case.intervals,
                t(AS_OF),
                &ActivityThresholds::default(),
            );
            assert_eq!(got.status, case.status, "{}", case.name);
            assert_eq!(got.used.as_mins(), case.used_mins, "{}", case.name);
            assert_eq!(got.breach_at, case.breach_at.map(t), "{}", case.name);
        }
    }

    #[test]
    fn breach_instant_is_exact() {
        // Compliant just before breach_at + 1 ms, non-compliant after.
        let intervals = [
            iv("2026-11-02T09:00:00Z", "2026-11-02T09:30:00Z"),
            iv("2026-11-10T09:00:00Z", "2026-11-10T09:30:00Z"),
        ];
        let context = enrolled("2026-01-01T00:00:00Z");
        let now = evaluate(
            context,
            &intervals,
            t(AS_OF),
            &ActivityThresholds::default(),
        );
        let breach = now.breach_at.unwrap();
        assert_eq!(breach, t("2026-11-30T09:00:00Z"));
        let at = evaluate(context, &intervals, breach, &ActivityThresholds::default());
        assert_eq!(at.status, ActivityStatus::AtRisk);
        let after = evaluate(
            context,
            &intervals,
            breach + SignedDuration::from_millis(1),
            &ActivityThresholds::default(),
        );
        assert_eq!(after.status, ActivityStatus::NonCompliant);
    }

    #[test]
    fn clock_change_weekend_in_london_counts_real_time() {
        // Spring forward 2026-03-29 01:00 GMT → 02:00 BST: 00:30 to 02:30
        // on the wall clock is one real hour.
        let spring = Interval {
            start: london("2026-03-29T00:30"),
            end: london("2026-03-29T02:30"),
        };
        assert_eq!(spring.end.duration_since(spring.start).as_mins(), 60);
        // The window is exactly 28 × 24 h. At 01:30 BST on 04-26 (00:30
        // UTC) it starts at 00:30 UTC on 03-29, the session's start.
        let context = enrolled("2026-01-01T00:00:00Z");
        let thresholds = ActivityThresholds::default();
        let inside = evaluate(context, &[spring], london("2026-04-26T01:30"), &thresholds);
        assert_eq!(inside.used.as_mins(), 60);
        assert_eq!(inside.status, ActivityStatus::AtRisk);
        // One minute later 59 real minutes remain. (Counting 28 calendar
        // days on the wall clock would put the start at 01:31 local on
        // 03-29, a time that does not exist, and count nothing.)
        let leaving = evaluate(context, &[spring], london("2026-04-26T01:31"), &thresholds);
        assert_eq!(leaving.used.as_mins(), 59);
        assert_eq!(leaving.status, ActivityStatus::NonCompliant);
        // Autumn back 2026-10-25 02:00 BST → 01:00 GMT: 00:30 to 02:30 wall
        // clock is three real hours.
        let autumn = Interval {
            start: london("2026-10-25T00:30"),
            end: london("2026-10-25T02:30"),
        };
        let after = evaluate(context, &[autumn], london("2026-10-26T12:00"), &thresholds);
        assert_eq!(after.used.as_mins(), 180);
    }

    #[test]
    fn open_session_stops_at_last_seen_plus_two_heartbeats() {
        let session = SessionRecord {
            session_id: "1".into(),
            account: "pupil1".into(),
            uid: 1001,
            kind: SessionKind::Graphical,
            started_at: t("2026-11-20T09:00:00Z"),
            ended_at: None,
            active_secs: 0,
        };
        let policy = SessionPolicy::default();
        let minute = SignedDuration::from_mins(1);
        let got = session
            .interval(&policy, t(AS_OF), Some(t("2026-11-20T09:30:00Z")), minute)
            .unwrap();
        assert_eq!(got.end, t("2026-11-20T09:32:00Z"), "dead agent");
        let live = session
            .interval(&policy, t(AS_OF), Some(t(AS_OF)), minute)
            .unwrap();
        assert_eq!(live.end, t(AS_OF), "capped at as_of");
        assert_eq!(
            session.interval(&policy, t(AS_OF), None, minute),
            None,
            "never seen"
        );
    }

    #[test]
    fn qualification() {
        let base = SessionRecord {
            session_id: "1".into(),
            account: "j.smith".into(),
            uid: 1001,
            kind: SessionKind::Graphical,
            started_at: t("2026-11-20T09:00:00Z"),
            ended_at: Some(t("2026-11-20T10:00:00Z")),
            active_secs: 0,
        };
        let policy = SessionPolicy {
            exclude_accounts: vec![glob::Pattern::new("svc-*").unwrap()],
            ..SessionPolicy::default()
        };
        let cases = [
            ("pupil, graphical", base.clone(), true),
            (
                "console",
                SessionRecord {
                    kind: SessionKind::Console,
                    ..base.clone()
                },
                true,
            ),
            (
                "remote not counted by default",
                SessionRecord {
                    kind: SessionKind::Remote,
                    ..base.clone()
                },
                false,
            ),
            (
                "system account (uid < 1000)",
                SessionRecord {
                    account: "gdm".into(),
                    uid: 120,
                    ..base.clone()
                },
                false,
            ),
            (
                "root",
                SessionRecord {
                    account: "root".into(),
                    uid: 0,
                    ..base.clone()
                },
                false,
            ),
            (
                "excluded pattern",
                SessionRecord {
                    account: "svc-backup".into(),
                    ..base.clone()
                },
                false,
            ),
        ];
        for (name, session, expected) in cases {
            assert_eq!(policy.qualifies(&session), expected, "{name}");
        }
        let include_only = SessionPolicy {
            include_accounts: vec![glob::Pattern::new("*.staff").unwrap()],
            ..SessionPolicy::default()
        };
        assert!(!include_only.qualifies(&base));
    }
}
