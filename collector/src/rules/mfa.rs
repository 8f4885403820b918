//! The 2FA-freshness rule (PRODUCT.md): staff must complete a two-step
//! sign-in every `validity` (45 days) on every device they use. Pure
//! functions of sessions, completions and `as_of`.
//!
//! A pair (staff account, device) is checked when the account had a
//! qualifying session on the device overlapping `[as_of − validity,
//! as_of)`. `fresh` while `as_of − last ≤ validity − reminder`, `due_soon`
//! in the last `reminder` (7 days) of validity, `stale` after or if never.
//!
//! Only completions at or before `as_of` count, and no completion may lie
//! in the collector's future by more than [`MAX_CLOCK_SKEW`]: every entry
//! point (telemetry, sign-in imports, the API) refuses one with
//! [`check_completion_time`], because a single time stamped years ahead
//! would otherwise decide a pair for years.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::model::SessionRecord;
use crate::rules::activity::SessionPolicy;

/// How far ahead of the collector's clock a completion may be stamped:
/// device clocks drift a little; more than this is a wrong clock or a wrong
/// record, not a sign-in.
pub const MAX_CLOCK_SKEW: SignedDuration = SignedDuration::from_mins(5);

/// A completion stamped later than the collector's clock allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{at} is in the future: the collector's clock says {now} and allows at most {} minutes ahead",
    MAX_CLOCK_SKEW.as_mins()
)]
pub struct FutureCompletion {
    pub at: Timestamp,
    pub now: Timestamp,
}

/// Refuses a completion time more than [`MAX_CLOCK_SKEW`] after `now`.
pub fn check_completion_time(at: Timestamp, now: Timestamp) -> Result<(), FutureCompletion> {
    // Saturating: no `now` may make the check itself panic.
    if at > now.saturating_add(MAX_CLOCK_SKEW).unwrap_or(Timestamp::MAX) {
        return Err(FutureCompletion { at, now });
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MfaThresholds {
    pub validity: SignedDuration,
    pub reminder: SignedDuration,
}

impl Default for MfaThresholds {
    fn default() -> Self {
        MfaThresholds {
            validity: SignedDuration::from_hours(45 * 24),
            reminder: SignedDuration::from_hours(7 * 24),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum MfaStatus {
    Fresh,
    DueSoon,
    Stale,
}

impl MfaStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MfaStatus::Fresh => "fresh",
            MfaStatus::DueSoon => "due_soon",
            MfaStatus::Stale => "stale",
        }
    }
}

/// The verdict for one (account, device) pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PairVerdict {
    pub account: String,
    pub status: MfaStatus,
    pub last_mfa: Option<Timestamp>,
    /// When the last completion stops counting (None: never completed).
    pub expires_at: Option<Timestamp>,
    /// The latest session start on the device in the window.
    pub last_session_at: Timestamp,
}

/// The status of one pair from its newest completion.
pub fn status(last_mfa: Option<Timestamp>, as_of: Timestamp, t: &MfaThresholds) -> MfaStatus {
    let Some(last) = last_mfa.filter(|l| *l <= as_of) else {
        return MfaStatus::Stale;
    };
    let age = as_of.duration_since(last);
    if age <= t.validity - t.reminder {
        MfaStatus::Fresh
    } else if age <= t.validity {
        MfaStatus::DueSoon
    } else {
        MfaStatus::Stale
    }
}

/// The pairs of one device: every staff account (`is_staff`) with a
/// qualifying session overlapping the window, and its newest completion on
/// this device from `completions` (account → completion instants).
pub fn device_pairs(
    sessions: &[SessionRecord],
    policy: &SessionPolicy,
    is_staff: impl Fn(&str) -> bool,
    completions: &BTreeMap<String, Vec<Timestamp>>,
    as_of: Timestamp,
    t: &MfaThresholds,
) -> Vec<PairVerdict> {
    let window_start = as_of - t.validity;
    let mut accounts: BTreeMap<&str, Timestamp> = BTreeMap::new();
    for s in sessions {
        let overlaps = s.started_at < as_of && s.ended_at.is_none_or(|end| end > window_start);
        if overlaps && policy.qualifies(s) && is_staff(&s.account) {
            let latest = accounts.entry(&s.account).or_insert(s.started_at);
            *latest = (*latest).max(s.started_at);
        }
    }
    accounts
        .into_iter()
        .map(|(account, last_session_at)| {
            let last_mfa = completions
                .get(account)
                .and_then(|times| times.iter().filter(|c| **c <= as_of).max().copied());
            PairVerdict {
                account: account.to_owned(),
                status: status(last_mfa, as_of, t),
                last_mfa,
                expires_at: last_mfa.map(|l| l + t.validity),
                last_session_at,
            }
        })
        .collect()
}

/// When time alone next changes this pair's status.
pub fn next_change(pair: &PairVerdict, t: &MfaThresholds) -> Option<Timestamp> {
    let last = pair.last_mfa?;
    match pair.status {
        MfaStatus::Fresh => Some(last + (t.validity - t.reminder)),
        MfaStatus::DueSoon => Some(last + t.validity),
        MfaStatus::Stale => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SessionKind;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn boundary_days() {
        let th = MfaThresholds::default();
        let last = t("2026-10-01T09:00:00Z");
        let day = SignedDuration::from_hours(24);
        let second = SignedDuration::from_secs(1);
        let cases = [
            ("same instant", last, MfaStatus::Fresh),
            ("exactly 38 days", last + day * 38, MfaStatus::Fresh),
            (
                "38 days + 1 s",
                last + day * 38 + second,
                MfaStatus::DueSoon,
            ),
            ("exactly 45 days", last + day * 45, MfaStatus::DueSoon),
            ("45 days + 1 s", last + day * 45 + second, MfaStatus::Stale),
            (
                "before the completion happened",
                last - second,
                MfaStatus::Stale,
            ),
        ];
        for (name, as_of, want) in cases {
            assert_eq!(status(Some(last), as_of, &th), want, "{name}");
        }
        assert_eq!(status(None, last, &th), MfaStatus::Stale, "never");
    }

    fn session(account: &str, uid: u32, start: &str) -> SessionRecord {
        SessionRecord {
            session_id: format!("{account}-{start}"),
            account: account.into(),
            uid,
            kind: SessionKind::Graphical,
            started_at: t(start),
            ended_at: Some(t(start) + SignedDuration::from_hours(1)),
            active_secs: 3600,
        }
    }

    #[test]
    fn pairs_are_staff_with_recent_sessions_only() {
        let as_of = t("2026-11-24T12:00:00Z");
        let sessions = [
            session("j.smith", 1001, "2026-11-20T09:00:00Z"),
            session("j.smith", 1001, "2026-11-10T09:00:00Z"),
            session("pupil1", 1002, "2026-11-20T09:00:00Z"),
            session("old.teacher", 1003, "2026-09-01T09:00:00Z"), // before the window
            session("gdm", 120, "2026-11-20T09:00:00Z"),
        ];
        let staff = |a: &str| a != "pupil1";
        let mut completions = BTreeMap::new();
        completions.insert(
            "j.smith".to_string(),
            vec![t("2026-11-01T08:00:00Z"), t("2026-10-01T08:00:00Z")],
        );
        let pairs = device_pairs(
            &sessions,
            &SessionPolicy::default(),
            staff,
            &completions,
            as_of,
            &MfaThresholds::default(),
        );
        assert_eq!(pairs.len(), 1, "{pairs:?}");
        assert_eq!(pairs[0].account, "j.smith");
        assert_eq!(pairs[0].status, MfaStatus::Fresh);
        assert_eq!(pairs[0].last_mfa, Some(t("2026-11-01T08:00:00Z")));
        assert_eq!(pairs[0].expires_at, Some(t("2026-12-16T08:00:00Z")));
        assert_eq!(pairs[0].last_session_at, t("2026-11-20T09:00:00Z"));
    }

    #[test]
    fn history_decides_by_the_newest_completion_at_or_before_as_of() {
        let th = MfaThresholds::default();
        let as_of = t("2026-11-24T12:00:00Z");
        let day = SignedDuration::from_hours(24);
        let second = SignedDuration::from_secs(1);
        let sessions = [session("j.smith", 1001, "2026-11-20T09:00:00Z")];
        let cases: Vec<(&str, Vec<Timestamp>, Option<Timestamp>, MfaStatus)> = vec![
            ("never", vec![], None, MfaStatus::Stale),
            (
                "a newer one after as_of hides none before it",
                vec![as_of - day * 10, as_of + day],
                Some(as_of - day * 10),
                MfaStatus::Fresh,
            ),
            (
                "years ahead beside an old one",
                vec![as_of - day * 40, as_of + day * 3650],
                Some(as_of - day * 40),
                MfaStatus::DueSoon,
            ),
            (
                "only one, a second after as_of",
                vec![as_of + second],
                None,
                MfaStatus::Stale,
            ),
            (
                "exactly at as_of",
                vec![as_of],
                Some(as_of),
                MfaStatus::Fresh,
            ),
            (
                "newest of several, in any order",
                vec![as_of - day * 50, as_of - day * 20, as_of - day * 44],
                Some(as_of - day * 20),
                MfaStatus::Fresh,
            ),
            (
                "every one older than the validity",
                vec![as_of - day * 46, as_of - day * 100],
                Some(as_of - day * 46),
                MfaStatus::Stale,
            ),
        ];
        for (name, history, want_last, want_status) in cases {
            let completions = BTreeMap::from([("j.smith".to_string(), history)]);
            let pairs = device_pairs(
                &sessions,
                &SessionPolicy::default(),
                |_| true,
                &completions,
                as_of,
                &th,
            );
            assert_eq!(pairs.len(), 1, "{name}");
            assert_eq!(pairs[0].last_mfa, want_last, "{name}");
            assert_eq!(pairs[0].status, want_status, "{name}");
            assert_eq!(
                pairs[0].expires_at,
                want_last.map(|l| l + th.validity),
                "{name}"
            );
        }
    }

    #[test]
    fn completion_times_ahead_of_the_clock_beyond_the_skew_are_refused() {
        let now = t("2026-11-24T12:00:00Z");
        let second = SignedDuration::from_secs(1);
        let cases = [
            ("long ago", now - SignedDuration::from_hours(24 * 400), true),
            ("now", now, true),
            ("a minute ahead", now + SignedDuration::from_mins(1), true),
            ("exactly the skew ahead", now + MAX_CLOCK_SKEW, true),
            (
                "a second beyond the skew",
                now + MAX_CLOCK_SKEW + second,
                false,
            ),
            (
                "a year ahead",
                now + SignedDuration::from_hours(24 * 365),
                false,
            ),
        ];
        for (name, at, accepted) in cases {
            assert_eq!(check_completion_time(at, now).is_ok(), accepted, "{name}");
        }
        let err = check_completion_time(now + SignedDuration::from_hours(1), now).unwrap_err();
        assert_eq!(
            err.to_string(),
            "2026-11-24T13:00:00Z is in the future: the collector's clock says \
             2026-11-24T12:00:00Z and allows at most 5 minutes ahead"
        );
    }
}
