//! What the collector requires of an event beyond its shape, checked on the
//! wire form before conversion (the rules written in the `.proto`):
//! - `occurred_at` is set and not ahead of the collector's clock by more
//!   than `MAX_CLOCK_SKEW` (a device a year ahead must not make a 2FA
//!   completion "fresh" for a year, nor a session count in the future);
//! - a session event has a known phase; an END carries `ended_at`, which is
//!   not before `started_at`; neither is ahead of the clock;
//! - a heartbeat interval's `last` is not before its `first`, nor ahead.
//! - a monitoring gap is a START or an END of a known kind, with its
//!   start (and on END its end, not before the start), neither ahead;
//! - an agent signal is of a known kind, its `last_alive_at` not ahead.
//!
//! An event that fails is kept verbatim as `unrecognised` with the reason
//! (nothing a device sent is lost) and counted in `Ack.rejected`; it never
//! reaches a rule.

use hallmonitor_proto::v1;
use jiff::Timestamp;

use super::wire::timestamp;

/// How far ahead of the collector's clock a device's time may be (one
/// figure for every entry point: stream, imports, API).
pub use crate::rules::mfa::MAX_CLOCK_SKEW;

/// A count an outbox report may carry at most (2^40: far more events than
/// any device's outbox holds in its life).
pub const MAX_REPORTED_COUNT: u64 = 1 << 40;

/// Why an event is refused, for the `unrecognised` record.
pub fn check(event: &v1::Event, now: Timestamp) -> Result<(), String> {
    use v1::event::Body;
    let latest = now.saturating_add(MAX_CLOCK_SKEW).unwrap_or(Timestamp::MAX);
    let not_ahead = |field: &str, t: Timestamp| {
        if t > latest {
            Err(format!(
                "{field} {t} is ahead of the collector's clock ({now}) by more than {} minutes",
                MAX_CLOCK_SKEW.as_mins()
            ))
        } else {
            Ok(())
        }
    };
    let occurred_at =
        timestamp(event.occurred_at.as_ref()).ok_or_else(|| "occurred_at: missing".to_owned())?;
    not_ahead("occurred_at", occurred_at)?;
    match &event.body {
        Some(Body::Session(session)) => check_session(session, &not_ahead),
        Some(Body::MonitoringGap(gap)) => check_gap(gap, &not_ahead),
        Some(Body::AgentSignal(signal)) => check_signal(signal, &not_ahead),
        Some(Body::OutboxReport(r)) => {
            let counts = [
                ("evicted_telemetry", r.evicted_telemetry),
                ("evicted_sessions", r.evicted_sessions),
                ("evicted_mfa", r.evicted_mfa),
                ("evicted_captures", r.evicted_captures),
                ("evicted_enforcement", r.evicted_enforcement),
                ("evicted_other", r.evicted_other),
                ("quarantined", r.quarantined),
                ("captures_refused", r.captures_refused),
            ];
            match counts.iter().find(|(_, n)| *n > MAX_REPORTED_COUNT) {
                // Sums of such figures would overflow the store's integers
                // and break `devices show` for the device.
                Some((field, n)) => Err(format!(
                    "outbox_report.{field}: {n} is more than any outbox can have held ({MAX_REPORTED_COUNT})"
                )),
                None => Ok(()),
            }
        }
        Some(Body::HeartbeatInterval(h)) => {
            if let (Some(first), Some(last)) =
                (timestamp(h.first.as_ref()), timestamp(h.last.as_ref()))
            {
                if last < first {
                    return Err(format!(
                        "heartbeat_interval: last {last} is before first {first}"
                    ));
                }
                not_ahead("heartbeat_interval.last", last)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn check_session(
    session: &v1::SessionEvent,
    not_ahead: &dyn Fn(&str, Timestamp) -> Result<(), String>,
) -> Result<(), String> {
    use v1::session_event::Phase;
    let phase = Phase::try_from(session.phase).unwrap_or(Phase::Unspecified);
    if phase == Phase::Unspecified {
        return Err(format!(
            "session.phase: {} is not START, END or UPDATE",
            session.phase
        ));
    }
    if let Some(started_at) = timestamp(session.started_at.as_ref()) {
        not_ahead("session.started_at", started_at)?;
        match timestamp(session.ended_at.as_ref()) {
            Some(ended_at) if ended_at < started_at => {
                return Err(format!(
                    "session.ended_at {ended_at} is before session.started_at {started_at}"
                ));
            }
            Some(ended_at) => not_ahead("session.ended_at", ended_at)?,
            None if phase == Phase::End => {
                return Err("session.ended_at: missing on an END event".to_owned());
            }
            None => {}
        }
    }
    Ok(())
}

/// A gap opens (START) or closes (END, with `ended_at` not before
/// `started_at`); neither time is ahead of the clock.
fn check_gap(
    gap: &v1::MonitoringGap,
    not_ahead: &dyn Fn(&str, Timestamp) -> Result<(), String>,
) -> Result<(), String> {
    use v1::session_event::Phase;
    let phase = Phase::try_from(gap.phase).unwrap_or(Phase::Unspecified);
    if !matches!(phase, Phase::Start | Phase::End) {
        return Err(format!(
            "monitoring_gap.phase: {} is not START or END",
            gap.phase
        ));
    }
    let started_at = timestamp(gap.started_at.as_ref())
        .ok_or_else(|| "monitoring_gap.started_at: missing".to_owned())?;
    not_ahead("monitoring_gap.started_at", started_at)?;
    match (phase, timestamp(gap.ended_at.as_ref())) {
        (Phase::End, None) => Err("monitoring_gap.ended_at: missing on an END event".to_owned()),
        (_, Some(ended_at)) if ended_at < started_at => Err(format!(
            "monitoring_gap.ended_at {ended_at} is before monitoring_gap.started_at {started_at}"
        )),
        (_, Some(ended_at)) => not_ahead("monitoring_gap.ended_at", ended_at),
        (_, None) => Ok(()),
    }
}

/// A known kind (UNSPECIFIED and kinds newer than this collector are
/// refused: a rule cannot tell what they mean); `last_alive_at` not ahead.
fn check_signal(
    signal: &v1::AgentSignal,
    not_ahead: &dyn Fn(&str, Timestamp) -> Result<(), String>,
) -> Result<(), String> {
    use v1::agent_signal::Kind;
    match Kind::try_from(signal.kind) {
        Ok(Kind::Unspecified) | Err(_) => {
            return Err(format!(
                "agent_signal.kind: {} is not a known kind",
                signal.kind
            ));
        }
        Ok(_) => {}
    }
    match timestamp(signal.last_alive_at.as_ref()) {
        Some(at) => not_ahead("agent_signal.last_alive_at", at),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;
    use v1::session_event::Phase;

    fn at(t: Timestamp) -> Option<hallmonitor_proto::Timestamp> {
        Some(hallmonitor_proto::Timestamp {
            seconds: t.as_second(),
            nanos: t.subsec_nanosecond(),
        })
    }

    fn session(phase: Phase, start: Timestamp, end: Option<Timestamp>) -> v1::Event {
        v1::Event {
            seq: 1,
            event_id: "e".into(),
            occurred_at: at(end.unwrap_or(start)),
            body: Some(v1::event::Body::Session(v1::SessionEvent {
                phase: phase as i32,
                session_id: "s".into(),
                started_at: at(start),
                ended_at: end.and_then(at),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn events_are_checked_against_the_protocol_and_the_clock() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let hour = SignedDuration::from_hours(1);
        let mfa_at = |t: Timestamp| v1::Event {
            seq: 1,
            event_id: "e".into(),
            occurred_at: at(t),
            body: Some(v1::event::Body::Mfa(v1::MfaCompletion {
                account: "j.smith".into(),
                ..Default::default()
            })),
        };
        let cases: [(&str, v1::Event, bool); 10] = [
            (
                "a closed session",
                session(Phase::End, now - hour, Some(now)),
                true,
            ),
            (
                "an open session",
                session(Phase::Start, now - hour, None),
                true,
            ),
            (
                "weeks offline",
                session(Phase::End, now - hour * 24 * 30, Some(now - hour * 24 * 29)),
                true,
            ),
            (
                "ends before it starts",
                session(Phase::End, now, Some(now - hour)),
                false,
            ),
            (
                "an END without its end",
                session(Phase::End, now - hour, None),
                false,
            ),
            (
                "no phase",
                session(Phase::Unspecified, now - hour, None),
                false,
            ),
            (
                "a year ahead",
                session(Phase::Start, now + hour * 24 * 365, None),
                false,
            ),
            (
                "within the skew",
                mfa_at(now + SignedDuration::from_mins(4)),
                true,
            ),
            ("a completion a day ahead", mfa_at(now + hour * 24), false),
            (
                "no time at all",
                v1::Event {
                    occurred_at: None,
                    ..mfa_at(now)
                },
                false,
            ),
        ];
        for (name, event, valid) in cases {
            let checked = check(&event, now);
            assert_eq!(checked.is_ok(), valid, "{name}: {checked:?}");
        }
    }

    #[test]
    fn outbox_report_counts_are_bounded() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let report = |quarantined: u64| v1::Event {
            seq: 1,
            event_id: "e".into(),
            occurred_at: at(now),
            body: Some(v1::event::Body::OutboxReport(v1::OutboxReport {
                evicted_captures: 3,
                quarantined,
                ..Default::default()
            })),
        };
        assert!(check(&report(2), now).is_ok());
        assert!(check(&report(MAX_REPORTED_COUNT + 1), now).is_err());
        assert!(check(&report(u64::MAX), now).is_err());
    }

    #[test]
    fn monitoring_gaps_open_and_close_in_order() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let hour = SignedDuration::from_hours(1);
        let gap = |phase: Phase, start: Option<Timestamp>, end: Option<Timestamp>| v1::Event {
            seq: 1,
            event_id: "e".into(),
            occurred_at: at(now),
            body: Some(v1::event::Body::MonitoringGap(v1::MonitoringGap {
                kind: v1::monitoring_gap::Kind::NoSessionHelper as i32,
                phase: phase as i32,
                session_id: "s".into(),
                started_at: start.and_then(at),
                ended_at: end.and_then(at),
                ..Default::default()
            })),
        };
        let cases = [
            ("opened", gap(Phase::Start, Some(now - hour), None), true),
            ("closed", gap(Phase::End, Some(now - hour), Some(now)), true),
            (
                "closed without an end",
                gap(Phase::End, Some(now - hour), None),
                false,
            ),
            ("no start", gap(Phase::Start, None, None), false),
            (
                "ends before it starts",
                gap(Phase::End, Some(now), Some(now - hour)),
                false,
            ),
            (
                "an update",
                gap(Phase::Update, Some(now - hour), None),
                false,
            ),
            (
                "a day ahead",
                gap(Phase::Start, Some(now + hour * 24), None),
                false,
            ),
        ];
        for (name, event, valid) in cases {
            let checked = check(&event, now);
            assert_eq!(checked.is_ok(), valid, "{name}: {checked:?}");
        }
    }

    #[test]
    fn agent_signals_have_a_known_kind_and_no_future_last_alive() {
        use v1::agent_signal::Kind;
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let hour = SignedDuration::from_hours(1);
        let signal = |kind: i32, last_alive: Option<Timestamp>| v1::Event {
            seq: 1,
            event_id: "s".into(),
            occurred_at: at(now - hour),
            body: Some(v1::event::Body::AgentSignal(v1::AgentSignal {
                kind,
                last_alive_at: last_alive.and_then(at),
                ..Default::default()
            })),
        };
        let cases = [
            ("started", signal(Kind::Started as i32, None), true),
            (
                "stopped uncleanly",
                signal(Kind::StoppedUncleanly as i32, Some(now - hour * 2)),
                true,
            ),
            (
                "last alive within the skew",
                signal(Kind::StoppedUncleanly as i32, Some(now + MAX_CLOCK_SKEW)),
                true,
            ),
            (
                "last alive ahead",
                signal(Kind::StoppedUncleanly as i32, Some(now + hour)),
                false,
            ),
            ("unspecified", signal(Kind::Unspecified as i32, None), false),
            ("unknown kind", signal(42, None), false),
        ];
        for (name, event, want_ok) in cases {
            assert_eq!(check(&event, now).is_ok(), want_ok, "{name}");
        }
    }
}
