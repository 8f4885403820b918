//! Tamper signals: which agent signals (and monitoring gaps) are signs
//! that someone interfered with the agent, what a `tamper` flag says about
//! them, the plain words a person reads for each signal, and the "agent
//! silent since" rule. All pure: the store applies the decisions in the
//! batch's transaction (`store/sqlite/tamper.rs`) and the rules loop runs
//! the silence rule with `as_of`.
//!
//! Privacy: a summary goes into notifications and logs, so it never names
//! the account (a pupil's name); the device page, which is
//! access-controlled, may show it.

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use crate::model::{GapRecord, SignalKind, SignalRecord};

/// Sessions in this stretch before a device went silent name the accounts
/// the silence rule follows (the activity rule's window).
pub const SILENCE_LOOKBACK: SignedDuration = SignedDuration::from_hours(28 * 24);

/// How many of a device's newest signals the device page and `devices
/// show` list.
pub const SIGNALS_SHOWN: usize = 20;

/// A session id in a summary: device text (bounded at ingest to 1,024
/// characters) cut shorter, since summaries go into messages.
fn session(id: &str) -> String {
    const MAX: usize = 64;
    if id.chars().count() <= MAX {
        return id.to_owned();
    }
    let mut cut: String = id.chars().take(MAX - 1).collect();
    cut.push('…');
    cut
}

/// `t` to the second, for summaries.
fn second(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// The flag summary for a signal that is a sign of interference, None for
/// the agent's ordinary life (started, stopped, upgraded, reconfigured, or
/// stopped uncleanly across a restart: a power cut). Never names the
/// account.
pub fn interference(signal: &SignalRecord, occurred_at: Timestamp) -> Option<String> {
    let at = second(occurred_at);
    match signal.signal {
        SignalKind::StoppedUncleanly if signal.same_boot => Some(match signal.last_alive_at {
            Some(last) => format!(
                "agent was stopped without shutting down while the machine kept running (last alive {}, back at {at})",
                second(last)
            ),
            None => format!(
                "agent was stopped without shutting down while the machine kept running (back at {at})"
            ),
        }),
        SignalKind::ClockJumped => Some(format!(
            "clock moved {} at {at}",
            clock_words(signal.clock_jump_secs)
        )),
        SignalKind::HelperGone => Some(format!(
            "session helper went away while session {} stayed open, at {at}",
            session(&signal.session_id)
        )),
        SignalKind::Started
        | SignalKind::Stopped
        | SignalKind::StoppedUncleanly
        | SignalKind::ConfigChanged
        | SignalKind::Upgraded => None,
    }
}

/// The flag summary for a monitoring gap that opened (a graphical session
/// without its helper); None for a closed one.
pub fn gap_interference(gap: &GapRecord) -> Option<String> {
    if gap.ended_at.is_some() {
        return None;
    }
    Some(format!(
        "graphical session {} has no session helper since {}",
        session(&gap.session_id),
        second(gap.started_at)
    ))
}

/// What a signal means, in the words a technician reads on the device
/// page and in `devices show` (times in `zone`). The text came bounded and
/// cleaned from ingest; askama and `render` escape it again.
pub fn describe(signal: &SignalRecord, zone: &TimeZone) -> String {
    let version = |v: &str| {
        if v.is_empty() {
            "an unknown version".to_owned()
        } else {
            v.to_owned()
        }
    };
    match signal.signal {
        SignalKind::Started => format!("Agent started ({})", version(&signal.agent_version)),
        SignalKind::Stopped => "Agent stopped (asked to: service stop, shutdown or upgrade)".into(),
        SignalKind::StoppedUncleanly => {
            let how = if signal.same_boot {
                "same boot"
            } else {
                "the machine restarted"
            };
            match signal.last_alive_at {
                Some(last) => format!(
                    "Agent stopped without shutting down ({how}; last alive {})",
                    last.to_zoned(zone.clone()).strftime("%-d %b %Y %H:%M %Z")
                ),
                None => format!("Agent stopped without shutting down ({how})"),
            }
        }
        SignalKind::ConfigChanged if signal.detail.is_empty() => "Configuration changed".into(),
        SignalKind::ConfigChanged => format!("Configuration changed ({})", signal.detail),
        SignalKind::Upgraded => format!(
            "Upgraded from {} to {}",
            version(&signal.previous_agent_version),
            version(&signal.agent_version)
        ),
        SignalKind::ClockJumped => format!("Clock moved {}", clock_words(signal.clock_jump_secs)),
        SignalKind::HelperGone => format!(
            "Session helper went away while session {} stayed open",
            signal.session_id
        ),
    }
}

/// "forward 1 day", "backward 2 hours 5 minutes".
fn clock_words(secs: i64) -> String {
    let direction = if secs < 0 { "backward" } else { "forward" };
    format!("{direction} {}", duration_words(secs.unsigned_abs()))
}

/// The two largest non-zero units: "1 day", "2 hours 5 minutes", "40
/// seconds".
pub fn duration_words(secs: u64) -> String {
    let units = [
        (secs / 86_400, "day"),
        (secs % 86_400 / 3_600, "hour"),
        (secs % 3_600 / 60, "minute"),
        (secs % 60, "second"),
    ];
    let words: Vec<String> = units
        .iter()
        .skip_while(|(n, _)| *n == 0)
        .take(2)
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n} {unit}{}", if *n == 1 { "" } else { "s" }))
        .collect();
    if words.is_empty() {
        "0 seconds".into()
    } else {
        words.join(" ")
    }
}

/// What the silence rule knows of one device that stopped reporting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Silence {
    pub last_seen_at: Timestamp,
    /// A tamper flag of this device was opened after `last_seen_at` (open
    /// or dismissed: a person's dismissal of this silence stands), or one
    /// is active.
    pub flagged_since: bool,
    /// Sign-ins the identity provider saw from this very device (imported
    /// and mapped to it) after `last_seen_at + silent_after`: the device
    /// is in use, its agent is not reporting. Sign-ins of its users on
    /// other devices do not count: a laptop switched off for a weekend
    /// while its pupil uses a phone is no tampering.
    pub signins_from_device: u64,
}

/// The instant after which the silence rule counts sign-ins for a device
/// last seen at `last_seen_at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SilenceWindow {
    pub signins_after: Timestamp,
}

pub fn silence_window(last_seen_at: Timestamp, silent_after: SignedDuration) -> SilenceWindow {
    SilenceWindow {
        signins_after: last_seen_at
            .saturating_add(silent_after)
            .unwrap_or(last_seen_at),
    }
}

/// The summary of a tamper flag to open for a silent device, or None:
/// not silent for `silent_after` yet at `as_of`, already flagged for this
/// silence, or nobody signed in from it since.
pub fn on_silence(
    silence: &Silence,
    silent_after: SignedDuration,
    as_of: Timestamp,
) -> Option<String> {
    let window = silence_window(silence.last_seen_at, silent_after);
    if as_of < window.signins_after || silence.flagged_since || silence.signins_from_device == 0 {
        return None;
    }
    let times = match silence.signins_from_device {
        1 => "1 sign-in".to_owned(),
        n => format!("{n} sign-ins"),
    };
    Some(format!(
        "agent silent since {}; the identity provider saw {times} from this device since",
        second(silence.last_seen_at)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn signal(kind: SignalKind) -> SignalRecord {
        SignalRecord {
            agent_version: "0.2.0".into(),
            previous_agent_version: "0.1.0".into(),
            session_id: "3".into(),
            account: "pupil.name".into(),
            uid: 1001,
            detail: "/etc/hallmonitor/agent.toml".into(),
            ..SignalRecord::new(kind)
        }
    }

    #[test]
    fn which_signals_are_interference() {
        let unclean = |same_boot| SignalRecord {
            same_boot,
            last_alive_at: Some(t(-60)),
            ..signal(SignalKind::StoppedUncleanly)
        };
        let jump = SignalRecord {
            clock_jump_secs: 86_400,
            ..signal(SignalKind::ClockJumped)
        };
        let cases = [
            ("started", signal(SignalKind::Started), None),
            ("stopped", signal(SignalKind::Stopped), None),
            ("config changed", signal(SignalKind::ConfigChanged), None),
            ("upgraded", signal(SignalKind::Upgraded), None),
            ("power cut", unclean(false), None),
            (
                "killed",
                unclean(true),
                Some(
                    "agent was stopped without shutting down while the machine kept running (last alive 2027-01-15T07:59:00Z, back at 2027-01-15T08:00:00Z)",
                ),
            ),
            (
                "clock",
                jump,
                Some("clock moved forward 1 day at 2027-01-15T08:00:00Z"),
            ),
            (
                "helper",
                signal(SignalKind::HelperGone),
                Some(
                    "session helper went away while session 3 stayed open, at 2027-01-15T08:00:00Z",
                ),
            ),
        ];
        for (name, signal, want) in cases {
            let got = interference(&signal, t(0));
            assert_eq!(got.as_deref(), want, "{name}");
            // Summaries reach notifications and logs: never the account.
            assert!(!got.unwrap_or_default().contains("pupil"), "{name}");
        }
    }

    #[test]
    fn an_open_gap_is_interference_a_closed_one_is_not() {
        let gap = GapRecord {
            gap: "no_session_helper".into(),
            session_id: "4".into(),
            account: "pupil.name".into(),
            uid: 1001,
            started_at: t(0),
            ended_at: None,
        };
        let summary = gap_interference(&gap).unwrap();
        assert_eq!(
            summary,
            "graphical session 4 has no session helper since 2027-01-15T08:00:00Z"
        );
        let long = GapRecord {
            session_id: "9".repeat(1000),
            ..gap.clone()
        };
        assert!(
            gap_interference(&long)
                .unwrap()
                .contains(&format!("{}… has", "9".repeat(63)))
        );
        let closed = GapRecord {
            ended_at: Some(t(60)),
            ..gap
        };
        assert_eq!(gap_interference(&closed), None);
    }

    #[test]
    fn signals_in_plain_words() {
        let london = TimeZone::get("Europe/London").unwrap();
        let cases = [
            (signal(SignalKind::Started), "Agent started (0.2.0)"),
            (
                SignalRecord {
                    same_boot: true,
                    ..signal(SignalKind::StoppedUncleanly)
                },
                "Agent stopped without shutting down (same boot)",
            ),
            (
                SignalRecord {
                    last_alive_at: Some(t(0)),
                    ..signal(SignalKind::StoppedUncleanly)
                },
                "Agent stopped without shutting down (the machine restarted; last alive 15 Jan 2027 08:00 GMT)",
            ),
            (
                SignalRecord {
                    clock_jump_secs: 86_400,
                    ..signal(SignalKind::ClockJumped)
                },
                "Clock moved forward 1 day",
            ),
            (
                SignalRecord {
                    clock_jump_secs: -(2 * 3600 + 5 * 60 + 7),
                    ..signal(SignalKind::ClockJumped)
                },
                "Clock moved backward 2 hours 5 minutes",
            ),
            (
                signal(SignalKind::HelperGone),
                "Session helper went away while session 3 stayed open",
            ),
            (
                signal(SignalKind::ConfigChanged),
                "Configuration changed (/etc/hallmonitor/agent.toml)",
            ),
            (signal(SignalKind::Upgraded), "Upgraded from 0.1.0 to 0.2.0"),
        ];
        for (signal, want) in cases {
            assert_eq!(describe(&signal, &london), want);
        }
    }

    #[test]
    fn durations_in_words() {
        let cases = [
            (0, "0 seconds"),
            (1, "1 second"),
            (90, "1 minute 30 seconds"),
            (3_600, "1 hour"),
            (86_400 + 7, "1 day"),
            (2 * 86_400 + 3_600 + 60, "2 days 1 hour"),
        ];
        for (secs, want) in cases {
            assert_eq!(duration_words(secs), want, "{secs}");
        }
    }

    #[test]
    fn silence_table() {
        let day = SignedDuration::from_hours(24);
        let silent = |flagged_since, signins_from_device| Silence {
            last_seen_at: t(0),
            flagged_since,
            signins_from_device,
        };
        let cases = [
            (
                "signed in from the device",
                silent(false, 3),
                t(0) + day * 2,
                true,
            ),
            (
                "exactly at the threshold",
                silent(false, 1),
                t(0) + day,
                true,
            ),
            (
                "not silent long enough",
                silent(false, 3),
                t(0) + day - SignedDuration::from_secs(1),
                false,
            ),
            (
                "nobody signed in from it",
                silent(false, 0),
                t(0) + day * 2,
                false,
            ),
            (
                "already flagged (or dismissed) for this silence",
                silent(true, 3),
                t(0) + day * 2,
                false,
            ),
        ];
        for (name, silence, as_of, want) in cases {
            assert_eq!(on_silence(&silence, day, as_of).is_some(), want, "{name}");
        }
        assert_eq!(
            on_silence(&silent(false, 3), day, t(0) + day * 2).unwrap(),
            "agent silent since 2027-01-15T08:00:00Z; the identity provider saw 3 sign-ins from this device since"
        );
        assert_eq!(
            silence_window(t(0), day),
            SilenceWindow {
                signins_after: t(0) + day,
            }
        );
    }
}
