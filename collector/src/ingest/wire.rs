//! Wire (prost) types to domain types and back: the only place besides
//! `enroll` where the collector touches generated protobuf structs.
//!
//! Everything a device sends is hostile text until it is through here:
//! every string is bounded ([`MAX_HOSTNAME_CHARS`], [`MAX_TEXT_CHARS`],
//! [`MAX_PATH_CHARS`]) and its control characters replaced, so what the
//! store holds is safe to show a person. A cut fact keeps its original
//! length in `DeviceFacts::truncated`; cut text ends with `…`.

use std::collections::BTreeMap;

use hallmonitor_proto::v1;
use jiff::Timestamp;
use serde_json::json;

use crate::model::{
    AupAnswerKind, AupAnswerRecord, CaptureRecord, CommandKind, ContextEntry, DeviceFacts, Disk,
    Encryption, Event, EventBody, GapRecord, Seq, SessionKind, SessionRecord, SignalKind,
    SignalRecord,
};
use crate::rules::mfa::check_completion_time;

/// The longest hostname kept (DNS names have at most 253 characters).
pub const MAX_HOSTNAME_CHARS: usize = 255;
/// The longest free text kept from a device (OS strings, accounts, window
/// titles, details …).
pub const MAX_TEXT_CHARS: usize = 1_024;
/// The longest file path kept (Linux's `PATH_MAX` is 4,096 bytes).
pub const MAX_PATH_CHARS: usize = 4_096;
/// The most disks kept from one device's facts.
pub const MAX_DISKS: usize = 64;
/// The most earlier window titles kept with one capture (the newest).
pub const MAX_CONTEXT_ENTRIES: usize = 200;
/// Bytes of earlier titles and process names kept with one capture.
pub const MAX_CONTEXT_BYTES: usize = 128 * 1024;

/// `text` made safe to store and show: tabs and line breaks become spaces,
/// other control characters U+FFFD, and text longer than `max` characters
/// is cut to `max`, the last being `…`. The original length in characters
/// comes back when it was cut.
fn bounded(text: String, max: usize) -> (String, Option<u64>) {
    // Fast path: short (in bytes, so in characters too) and clean.
    if text.len() <= max && !text.chars().any(char::is_control) {
        return (text, None);
    }
    let total = text.chars().count();
    let cut = total > max;
    let keep = if cut { max.saturating_sub(1) } else { total };
    let mut out: String = text
        .chars()
        .take(keep)
        .map(|c| match c {
            '\t' | '\n' | '\r' => ' ',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect();
    if cut {
        out.push('…');
    }
    (out, cut.then_some(total as u64))
}

/// [`bounded`] free text, its original length dropped.
fn text(s: String) -> String {
    bounded(s, MAX_TEXT_CHARS).0
}

fn path(s: String) -> String {
    bounded(s, MAX_PATH_CHARS).0
}

pub(super) fn timestamp(t: Option<&hallmonitor_proto::Timestamp>) -> Option<Timestamp> {
    let t = t?;
    Timestamp::new(t.seconds, t.nanos).ok()
}

/// Converts one wire event. The flag is false when the event could not be
/// interpreted; it is then kept verbatim as `unrecognised` so nothing an
/// agent sent is lost.
pub fn event_from_wire(e: v1::Event, received_at: Timestamp) -> (Event, bool) {
    use v1::event::Body;
    let occurred_at = timestamp(e.occurred_at.as_ref());
    let mut ok = occurred_at.is_some();
    let body = match e.body {
        Some(Body::Heartbeat(h)) => EventBody::Heartbeat {
            uptime_secs: h.uptime_secs,
            interval_secs: h.interval_secs,
        },
        Some(Body::HeartbeatInterval(h)) => {
            match (timestamp(h.first.as_ref()), timestamp(h.last.as_ref())) {
                (Some(first), Some(last)) => EventBody::HeartbeatInterval {
                    first,
                    last,
                    interval_secs: h.interval_secs,
                    count: h.count,
                },
                _ => {
                    ok = false;
                    unrecognised("heartbeat_interval", "missing first or last")
                }
            }
        }
        Some(Body::Facts(f)) => EventBody::Facts(facts_from_wire(f)),
        Some(Body::OutboxReport(r)) => EventBody::OutboxReport {
            evicted_telemetry: r.evicted_telemetry,
            evicted_sessions: r.evicted_sessions,
            evicted_mfa: r.evicted_mfa,
            evicted_captures: r.evicted_captures,
            evicted_enforcement: r.evicted_enforcement,
            evicted_other: r.evicted_other,
            corrupt_file_moved_to: path(r.corrupt_file_moved_to),
            quarantined: r.quarantined,
            captures_refused: r.captures_refused,
        },
        Some(Body::MonitoringGap(g)) => match gap_from_wire(g) {
            Some(record) => EventBody::MonitoringGap(record),
            None => {
                ok = false;
                unrecognised(
                    "monitoring_gap",
                    "unknown kind, or missing session id or start time",
                )
            }
        },
        Some(Body::AgentSignal(a)) => match signal_from_wire(a) {
            Some(record) => EventBody::AgentSignal(record),
            None => {
                ok = false;
                unrecognised("agent_signal", "unknown kind")
            }
        },
        // Kinds whose rules arrive with later work: kept, typed by name.
        Some(Body::Session(session)) => match session_from_wire(session) {
            Some(record) => EventBody::Session(record),
            None => {
                ok = false;
                unrecognised("session", "missing session id or start time")
            }
        },
        Some(Body::Enforcement(result)) => {
            match v1::CommandKind::try_from(result.kind)
                .ok()
                .and_then(command_from_wire)
            {
                Some(command) => EventBody::Enforcement {
                    command_id: text(result.command_id),
                    command,
                    ok: result.ok,
                    detail: text(result.detail),
                },
                None => {
                    ok = false;
                    unrecognised("enforcement", "unknown command kind")
                }
            }
        }
        Some(Body::Mfa(m)) => {
            let (body, counts) = mfa_from_wire(m, occurred_at, received_at);
            ok &= counts;
            body
        }
        Some(Body::Capture(c)) => EventBody::Capture(capture_from_wire(c)),
        Some(Body::FileAlert(f)) => EventBody::FileAlert {
            path: path(f.path),
            rule_id: text(f.rule_id),
            category: text(f.category),
            severity: f.severity.clamp(1, 5),
            account: text(f.account),
            sha256: text(f.sha256),
        },
        Some(Body::AupAnswer(a)) => match aup_answer_from_wire(a) {
            Some(record) => EventBody::AupAnswer(record),
            None => {
                ok = false;
                unrecognised(
                    "aup_answer",
                    "unknown answer, no account or version, or no time",
                )
            }
        },
        None => {
            ok = false;
            unrecognised("unknown", "no body this collector version understands")
        }
    };
    let event = Event {
        seq: Seq(e.seq),
        event_id: text(e.event_id),
        occurred_at: occurred_at.unwrap_or(received_at),
        body,
    };
    (event, ok)
}

/// An acceptable-use answer, when it names an account, a version, an
/// answer and a time.
fn aup_answer_from_wire(a: v1::AupAnswer) -> Option<AupAnswerRecord> {
    let answer = match v1::AupAnswerKind::try_from(a.answer).ok()? {
        v1::AupAnswerKind::Accept => AupAnswerKind::Accept,
        v1::AupAnswerKind::Decline => AupAnswerKind::Decline,
        v1::AupAnswerKind::Unspecified => return None,
    };
    let account = bounded(a.account, MAX_HOSTNAME_CHARS).0;
    if account.trim().is_empty() || a.version == 0 || a.version > i64::MAX as u64 {
        return None;
    }
    Some(AupAnswerRecord {
        account,
        version: a.version,
        answer,
        answered_at: timestamp(a.answered_at.as_ref())?,
        outcome: text(a.outcome),
    })
}

fn unrecognised(kind: &str, why: &str) -> EventBody {
    EventBody::Other {
        name: "unrecognised".into(),
        json: json!({ "kind": kind, "error": why }),
    }
}

/// A two-step sign-in the agent saw (true), or the event kept as
/// `unrecognised` (false), with what it said so nothing is lost, when it
/// cannot count: no account, no time, or a time further ahead of the
/// collector's clock than the rule allows (one such time would decide the
/// pair for years).
fn mfa_from_wire(
    m: v1::MfaCompletion,
    occurred_at: Option<Timestamp>,
    received_at: Timestamp,
) -> (EventBody, bool) {
    let problem = if m.account.is_empty() {
        Some("account: empty".to_owned())
    } else {
        match occurred_at.map(|at| check_completion_time(at, received_at)) {
            None => Some("occurred_at: missing".to_owned()),
            Some(Err(future)) => Some(format!("occurred_at: {future}")),
            Some(Ok(())) => None,
        }
    };
    let (account, method, source) = (text(m.account), text(m.method), path(m.source));
    let Some(why) = problem else {
        let body = EventBody::Mfa {
            account,
            method,
            source,
        };
        return (body, true);
    };
    let refused = EventBody::Other {
        name: "unrecognised".into(),
        json: json!({
            "kind": "mfa",
            "error": why,
            "occurred_at": occurred_at,
            "account": account,
            "method": method,
            "source": source,
        }),
    };
    (refused, false)
}

/// A device's facts, every string bounded (see the module docs); what was
/// cut is named in `truncated` with its original length.
pub fn facts_from_wire(f: v1::DeviceFacts) -> DeviceFacts {
    let mut truncated = BTreeMap::new();
    let mut keep = |field: &str, value: String, max: usize| {
        let (value, original) = bounded(value, max);
        if let Some(original) = original {
            truncated.insert(field.to_owned(), original);
        }
        value
    };
    let hostname = keep("hostname", f.hostname, MAX_HOSTNAME_CHARS);
    let os_name = keep("os_name", f.os_name, MAX_TEXT_CHARS);
    let os_version = keep("os_version", f.os_version, MAX_TEXT_CHARS);
    let kernel_version = keep("kernel_version", f.kernel_version, MAX_TEXT_CHARS);
    let machine_id = keep("machine_id", f.machine_id, MAX_TEXT_CHARS);
    let serial_number = keep("serial_number", f.serial_number, MAX_TEXT_CHARS);
    let cpu_model = keep("cpu_model", f.cpu_model, MAX_TEXT_CHARS);
    let agent_version = keep("agent_version", f.agent_version, MAX_TEXT_CHARS);
    let architecture = keep("architecture", f.architecture, MAX_TEXT_CHARS);
    let disk_count = f.disks.len();
    let disks = f
        .disks
        .into_iter()
        .take(MAX_DISKS)
        .map(|d| Disk {
            encryption: match v1::Encryption::try_from(d.encryption) {
                Ok(v1::Encryption::Encrypted) => Encryption::Encrypted,
                Ok(v1::Encryption::NotEncrypted) => Encryption::NotEncrypted,
                _ => Encryption::Unknown,
            },
            name: keep("disks.name", d.name, MAX_TEXT_CHARS),
            mount_point: keep("disks.mount_point", d.mount_point, MAX_PATH_CHARS),
            file_system: keep("disks.file_system", d.file_system, MAX_TEXT_CHARS),
            total_bytes: d.total_bytes,
            available_bytes: d.available_bytes,
            removable: d.removable,
        })
        .collect();
    if disk_count > MAX_DISKS {
        truncated.insert("disks".to_owned(), disk_count as u64);
    }
    DeviceFacts {
        hostname,
        os_name,
        os_version,
        kernel_version,
        machine_id,
        serial_number,
        uptime_secs: f.uptime_secs,
        cpu_model,
        cpu_cores: f.cpu_cores,
        memory_total_bytes: f.memory_total_bytes,
        memory_available_bytes: f.memory_available_bytes,
        disks,
        agent_version,
        architecture,
        truncated,
    }
}

fn session_from_wire(s: v1::SessionEvent) -> Option<SessionRecord> {
    use v1::session_event::Kind;
    let started_at = timestamp(s.started_at.as_ref())?;
    if s.session_id.is_empty() {
        return None;
    }
    let kind = match Kind::try_from(s.kind).unwrap_or(Kind::Unspecified) {
        Kind::Graphical => SessionKind::Graphical,
        Kind::Console => SessionKind::Console,
        Kind::Remote => SessionKind::Remote,
        Kind::Unspecified => SessionKind::Other,
    };
    Some(SessionRecord {
        session_id: text(s.session_id),
        account: text(s.account),
        uid: s.uid,
        kind,
        started_at,
        ended_at: timestamp(s.ended_at.as_ref()),
        active_secs: s.active_secs,
    })
}

fn gap_from_wire(g: v1::MonitoringGap) -> Option<GapRecord> {
    use v1::monitoring_gap::Kind;
    let gap = match Kind::try_from(g.kind).ok()? {
        Kind::NoSessionHelper => "no_session_helper",
        Kind::Unspecified => return None,
    };
    if g.session_id.is_empty() {
        return None;
    }
    Some(GapRecord {
        gap: gap.to_owned(),
        session_id: text(g.session_id),
        account: text(g.account),
        uid: g.uid,
        started_at: timestamp(g.started_at.as_ref())?,
        ended_at: timestamp(g.ended_at.as_ref()),
    })
}

/// None for an UNSPECIFIED or unknown kind.
fn signal_from_wire(a: v1::AgentSignal) -> Option<SignalRecord> {
    use v1::agent_signal::Kind;
    let signal = match Kind::try_from(a.kind).ok()? {
        Kind::Started => SignalKind::Started,
        Kind::Stopped => SignalKind::Stopped,
        Kind::StoppedUncleanly => SignalKind::StoppedUncleanly,
        Kind::ConfigChanged => SignalKind::ConfigChanged,
        Kind::Upgraded => SignalKind::Upgraded,
        Kind::ClockJumped => SignalKind::ClockJumped,
        Kind::HelperGone => SignalKind::HelperGone,
        Kind::Unspecified => return None,
    };
    Some(SignalRecord {
        signal,
        agent_version: text(a.agent_version),
        previous_agent_version: text(a.previous_agent_version),
        last_alive_at: timestamp(a.last_alive_at.as_ref()),
        same_boot: a.same_boot,
        clock_jump_secs: a.clock_jump_secs,
        previous_config_sha256: text(a.previous_config_sha256),
        config_sha256: text(a.config_sha256),
        session_id: text(a.session_id),
        account: text(a.account),
        uid: a.uid,
        detail: path(a.detail),
    })
}

pub fn command_from_wire(kind: v1::CommandKind) -> Option<CommandKind> {
    match kind {
        v1::CommandKind::Disable => Some(CommandKind::Disable),
        v1::CommandKind::Enable => Some(CommandKind::Enable),
        v1::CommandKind::Unspecified => None,
    }
}

pub fn command_to_wire(kind: CommandKind) -> v1::CommandKind {
    match kind {
        CommandKind::Disable => v1::CommandKind::Disable,
        CommandKind::Enable => v1::CommandKind::Enable,
    }
}

pub(super) fn wire_timestamp(t: Timestamp) -> hallmonitor_proto::Timestamp {
    hallmonitor_proto::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    }
}

/// A capture with its image checked against the hash the agent declared.
/// Only a verified hash is stored as the image's: it names an evidence
/// file, and a declared one that does not (not even hex, perhaps) would
/// stand where a file name is expected. A mismatch keeps what was declared
/// in the reason instead.
/// The largest snapshot accepted (agents refuse larger ones from helpers).
pub const MAX_IMAGE_BYTES: usize = 4 * 1024 * 1024;

/// Why an image is not kept as evidence, if it is not.
fn image_refused(image: &[u8]) -> Option<&'static str> {
    if image.is_empty() {
        return None;
    }
    if image.len() > MAX_IMAGE_BYTES {
        return Some("larger than 4 MiB");
    }
    (!image.starts_with(b"\x89PNG\r\n\x1a\n")).then_some("not a PNG")
}

fn capture_from_wire(c: v1::Capture) -> CaptureRecord {
    let declared = c.image_sha256.to_ascii_lowercase();
    let mut no_image_reason = text(c.no_image_reason);
    let refused = image_refused(&c.image_png);
    let (status, image, image_sha256) = if c.image_png.is_empty() {
        ("no_image", Vec::new(), String::new())
    } else if let Some(why) = refused {
        // Agents send PNG snapshots of at most 4 MiB: anything else would
        // only fill the evidence disk.
        no_image_reason = text(format!("image refused by the collector: {why}"));
        ("no_image", Vec::new(), String::new())
    } else if crate::evidence::sha256_hex(&c.image_png) == declared {
        ("verified", c.image_png, declared)
    } else {
        // Kept as a capture (nothing is lost), without the image.
        if no_image_reason.is_empty() {
            no_image_reason = text(format!(
                "the image did not match the SHA-256 the agent declared ({declared})"
            ));
        }
        ("hash_mismatch", Vec::new(), String::new())
    };
    CaptureRecord {
        rule_id: text(c.rule_id),
        category: text(c.category),
        severity: c.severity.clamp(1, 5) as u8,
        matched_text: text(c.matched_text),
        window_title: text(c.window_title),
        process_name: text(c.process_name),
        account: text(c.account),
        image_sha256,
        image_status: status.into(),
        no_image_reason,
        repeat_count: c.repeat_count,
        kind: "snapshot".into(),
        file_path: String::new(),
        file_sha256: String::new(),
        policy_version: c.policy_version,
        image,
        context: context_from_wire(c.context),
    }
}

/// The titles in front before a capture, as the collector keeps them: the
/// newest `MAX_CONTEXT_ENTRIES` within `MAX_CONTEXT_BYTES`, text bounded,
/// entries without a title or a valid time dropped, first seen not after
/// last seen; oldest first.
fn context_from_wire(context: Vec<v1::ContextWindow>) -> Vec<ContextEntry> {
    let mut kept = Vec::new();
    let mut bytes = 0;
    for entry in context.into_iter().rev() {
        if kept.len() == MAX_CONTEXT_ENTRIES {
            break;
        }
        let (Some(first), Some(last)) = (
            timestamp(entry.first_seen.as_ref()),
            timestamp(entry.last_seen.as_ref()),
        ) else {
            continue;
        };
        let title = text(entry.title);
        if title.trim().is_empty() {
            continue;
        }
        let process_name = text(entry.process_name);
        bytes += title.len() + process_name.len();
        if bytes > MAX_CONTEXT_BYTES {
            break;
        }
        kept.push(ContextEntry {
            title,
            process_name,
            first_seen: first.min(last),
            last_seen: last,
        });
    }
    kept.reverse();
    kept
}

#[cfg(test)]
mod tests {
    #[test]
    fn capture_context_is_bounded() {
        let at = |seconds: i64| Some(hallmonitor_proto::Timestamp { seconds, nanos: 0 });
        let entry = |title: &str, first, last| v1::ContextWindow {
            title: title.into(),
            process_name: "firefox\u{1b}[31m".into(),
            first_seen: first,
            last_seen: last,
        };
        let record = capture_from_wire(v1::Capture {
            context: vec![
                entry("Maths\r\nhomework", at(10), at(20)),
                entry("no time", None, at(20)),
                entry("bad time", at(i64::MAX), at(20)),
                entry("   ", at(10), at(20)),
                entry(&"x".repeat(5_000), at(40), at(30)),
            ],
            ..Default::default()
        });
        let context = &record.context;
        assert_eq!(context.len(), 2, "{context:?}");
        assert_eq!(context[0].title, "Maths  homework");
        assert_eq!(context[0].process_name, "firefox\u{fffd}[31m");
        assert_eq!(context[1].title.chars().count(), MAX_TEXT_CHARS);
        assert_eq!(
            context[1].first_seen, context[1].last_seen,
            "first not after last"
        );

        let many = (0..500)
            .map(|n| entry(&format!("{n} {}", "y".repeat(900)), at(n), at(n)))
            .collect();
        let context = capture_from_wire(v1::Capture {
            context: many,
            ..Default::default()
        })
        .context;
        assert!(context.len() <= MAX_CONTEXT_ENTRIES);
        let bytes: usize = context
            .iter()
            .map(|c| c.title.len() + c.process_name.len())
            .sum();
        assert!(bytes <= MAX_CONTEXT_BYTES, "{bytes}");
        assert!(
            context.last().unwrap().title.starts_with("499 "),
            "the newest are kept"
        );
        let few = (0..500)
            .map(|n| entry(&n.to_string(), at(n), at(n)))
            .collect();
        let context = capture_from_wire(v1::Capture {
            context: few,
            ..Default::default()
        })
        .context;
        assert_eq!(context.len(), MAX_CONTEXT_ENTRIES);
        assert_eq!(context[0].title, "300");
    }

    #[test]
    fn only_png_snapshots_of_at_most_4_mib_are_kept_as_evidence() {
        let png = |len: usize| {
            let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
            bytes.resize(len, 0);
            bytes
        };
        let cases: [(&str, Vec<u8>, &str); 3] = [
            ("a PNG", png(1024), "verified"),
            ("random bytes", vec![7; 1024], "no_image"),
            ("a PNG over 4 MiB", png(MAX_IMAGE_BYTES + 1), "no_image"),
        ];
        for (name, image, status) in cases {
            let record = capture_from_wire(v1::Capture {
                image_sha256: crate::evidence::sha256_hex(&image),
                image_png: image,
                ..Default::default()
            });
            assert_eq!(record.image_status, status, "{name}");
            assert_eq!(record.image.is_empty(), status != "verified", "{name}");
        }
    }

    use super::*;

    fn ts(s: i64) -> Option<hallmonitor_proto::Timestamp> {
        Some(hallmonitor_proto::Timestamp {
            seconds: s,
            nanos: 0,
        })
    }

    #[test]
    fn wire_events_convert_or_are_kept_as_unrecognised() {
        let now = Timestamp::from_second(5_000).unwrap();
        let heartbeat = v1::Event {
            seq: 1,
            event_id: "a".into(),
            occurred_at: ts(1_000),
            body: Some(v1::event::Body::Heartbeat(v1::Heartbeat {
                uptime_secs: 9,
                interval_secs: 60,
            })),
        };
        let (event, ok) = event_from_wire(heartbeat, now);
        assert!(ok);
        assert_eq!(event.occurred_at, Timestamp::from_second(1_000).unwrap());
        assert_eq!(event.body.kind(), "heartbeat");

        let empty = v1::Event {
            seq: 2,
            event_id: "b".into(),
            occurred_at: None,
            body: None,
        };
        let (event, ok) = event_from_wire(empty, now);
        assert!(!ok);
        assert_eq!(event.body.kind(), "unrecognised");
        assert_eq!(event.occurred_at, now, "missing time falls back to receipt");
    }

    #[test]
    fn disk_encryption_maps_unknown_values_to_unknown() {
        let facts = v1::DeviceFacts {
            disks: vec![
                v1::Disk {
                    encryption: 1,
                    ..Default::default()
                },
                v1::Disk {
                    encryption: 2,
                    ..Default::default()
                },
                v1::Disk {
                    encryption: 99,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let got: Vec<_> = facts_from_wire(facts)
            .disks
            .iter()
            .map(|d| d.encryption)
            .collect();
        assert_eq!(
            got,
            [
                Encryption::Encrypted,
                Encryption::NotEncrypted,
                Encryption::Unknown
            ]
        );
    }

    fn mfa_at(seconds: Option<i64>) -> v1::Event {
        v1::Event {
            seq: 3,
            event_id: "m".into(),
            occurred_at: seconds.and_then(ts),
            body: Some(v1::event::Body::Mfa(v1::MfaCompletion {
                account: "j.smith".into(),
                method: "pam_u2f".into(),
                source: "/var/log/auth.log:12".into(),
            })),
        }
    }

    #[test]
    fn mfa_events_from_the_future_are_refused_naming_the_field_and_kept() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let skew = crate::rules::mfa::MAX_CLOCK_SKEW.as_secs();
        let cases = [
            ("an hour ago", Some(-3_600), true),
            ("now", Some(0), true),
            ("at the edge of the skew", Some(skew), true),
            ("a second beyond the skew", Some(skew + 1), false),
            ("ten years ahead", Some(10 * 365 * 86_400), false),
            ("no time", None, false),
        ];
        for (name, offset, accepted) in cases {
            let event = mfa_at(offset.map(|o| now.as_second() + o));
            let (event, ok) = event_from_wire(event, now);
            assert_eq!(ok, accepted, "{name}");
            if accepted {
                assert_eq!(event.body.kind(), "mfa", "{name}");
                continue;
            }
            let EventBody::Other { name: kind, json } = &event.body else {
                panic!("{name}: {:?}", event.body);
            };
            assert_eq!(kind, "unrecognised", "{name}");
            assert_eq!(json["kind"], "mfa", "{name}");
            assert!(
                json["error"].as_str().unwrap().starts_with("occurred_at: "),
                "{name}: {json}"
            );
            // Nothing the agent said is lost.
            assert_eq!(json["account"], "j.smith", "{name}");
            assert_eq!(json["source"], "/var/log/auth.log:12", "{name}");
        }
        let (event, _) = event_from_wire(mfa_at(Some(now.as_second() + 3_600)), now);
        let EventBody::Other { json, .. } = event.body else {
            unreachable!("refused above")
        };
        assert!(
            json["error"].as_str().unwrap().contains("is in the future"),
            "{json}"
        );
    }

    #[test]
    fn device_text_is_bounded_and_control_characters_replaced() {
        let cases = [
            ("short and clean", "LAPTOP-07", 255, "LAPTOP-07", None),
            ("exactly the bound", "abc", 3, "abc", None),
            ("one over the bound", "abcd", 3, "ab…", Some(4)),
            ("escape", "a\u{1b}[31mb", 255, "a\u{fffd}[31mb", None),
            ("line breaks and tabs", "a\nb\tc\r", 255, "a b c ", None),
            (
                "C1 and DEL",
                "a\u{9b}b\u{7f}",
                255,
                "a\u{fffd}b\u{fffd}",
                None,
            ),
            ("multi-byte counted in characters", "ééé", 3, "ééé", None),
            ("multi-byte cut on a character", "éééé", 3, "éé…", Some(4)),
        ];
        for (name, input, max, want, original) in cases {
            assert_eq!(
                bounded(input.to_owned(), max),
                (want.to_owned(), original),
                "{name}"
            );
        }
    }

    #[test]
    fn hostile_facts_are_bounded_and_what_was_cut_is_named() {
        let hostname = format!("\u{1b}]0;pwned\u{7}{}", "x".repeat(100_000));
        let facts = v1::DeviceFacts {
            hostname: hostname.clone(),
            os_name: "Ubuntu\u{1b}[2J".into(),
            cpu_model: "y".repeat(5_000),
            disks: vec![v1::Disk::default(); MAX_DISKS + 1],
            ..Default::default()
        };
        let facts = facts_from_wire(facts);
        assert_eq!(facts.hostname.chars().count(), MAX_HOSTNAME_CHARS);
        assert!(!facts.hostname.chars().any(char::is_control));
        assert!(facts.hostname.ends_with('…'));
        assert_eq!(facts.os_name, "Ubuntu\u{fffd}[2J");
        assert_eq!(facts.cpu_model.chars().count(), MAX_TEXT_CHARS);
        assert_eq!(facts.disks.len(), MAX_DISKS);
        assert_eq!(
            facts.truncated,
            BTreeMap::from([
                ("cpu_model".to_owned(), 5_000),
                ("disks".to_owned(), MAX_DISKS as u64 + 1),
                ("hostname".to_owned(), hostname.chars().count() as u64),
            ])
        );
    }

    #[test]
    fn event_text_from_devices_is_bounded() {
        let now = Timestamp::from_second(5_000).unwrap();
        let capture = v1::Event {
            seq: 4,
            event_id: "c".into(),
            occurred_at: ts(1_000),
            body: Some(v1::event::Body::Capture(v1::Capture {
                window_title: format!("\u{1b}[2J{}", "t".repeat(50_000)),
                account: "pupil\u{1b}1".into(),
                ..Default::default()
            })),
        };
        let (event, ok) = event_from_wire(capture, now);
        assert!(ok);
        let EventBody::Capture(c) = event.body else {
            panic!("{:?}", event.body)
        };
        assert_eq!(c.window_title.chars().count(), MAX_TEXT_CHARS);
        assert!(c.window_title.starts_with("\u{fffd}[2J"));
        assert_eq!(c.account, "pupil\u{fffd}1");
    }

    #[test]
    fn only_a_verified_image_hash_is_kept() {
        let now = Timestamp::from_second(5_000).unwrap();
        let image = b"\x89PNG\r\n\x1a\n png bytes".to_vec();
        let good = crate::evidence::sha256_hex(&image);
        let cases = [
            (
                "verified",
                image.clone(),
                good.to_uppercase(),
                "verified",
                good.as_str(),
            ),
            (
                "not hex",
                image.clone(),
                "../../x\u{1b}".to_owned(),
                "hash_mismatch",
                "",
            ),
            (
                "another image's hash",
                image.clone(),
                "ab".repeat(32),
                "hash_mismatch",
                "",
            ),
            ("no image", Vec::new(), good.clone(), "no_image", ""),
        ];
        for (name, png, declared, want_status, want_sha) in cases {
            let event = v1::Event {
                seq: 5,
                event_id: "c".into(),
                occurred_at: ts(1_000),
                body: Some(v1::event::Body::Capture(v1::Capture {
                    image_png: png,
                    image_sha256: declared,
                    ..Default::default()
                })),
            };
            let EventBody::Capture(c) = event_from_wire(event, now).0.body else {
                panic!("{name}")
            };
            assert_eq!(c.image_status, want_status, "{name}");
            assert_eq!(c.image_sha256, want_sha, "{name}");
            if want_status == "hash_mismatch" {
                assert!(c.no_image_reason.contains("did not match"), "{name}");
                assert!(!c.no_image_reason.contains('\u{1b}'), "{name}");
            }
        }
    }

    #[test]
    fn agent_signals_convert_bounded_or_are_kept_as_unrecognised() {
        let now = Timestamp::from_second(2_000).unwrap();
        let signal = |kind: i32, detail: String, account: String| v1::Event {
            seq: 9,
            event_id: "s".into(),
            occurred_at: ts(1_000),
            body: Some(v1::event::Body::AgentSignal(v1::AgentSignal {
                kind,
                agent_version: "0.2.0\u{1b}[31m".into(),
                previous_agent_version: "0.1.0".into(),
                last_alive_at: ts(900),
                same_boot: true,
                clock_jump_secs: -86_400,
                session_id: "3".into(),
                account,
                uid: 1001,
                detail,
                ..Default::default()
            })),
        };
        use v1::agent_signal::Kind;
        let (event, ok) = event_from_wire(
            signal(
                Kind::StoppedUncleanly as i32,
                "/etc/".to_owned() + &"a".repeat(MAX_PATH_CHARS),
                "b".repeat(MAX_TEXT_CHARS + 5),
            ),
            now,
        );
        assert!(ok);
        assert_eq!(event.body.kind(), "agent_signal");
        let EventBody::AgentSignal(s) = event.body else {
            panic!("not a signal")
        };
        assert_eq!(s.signal, SignalKind::StoppedUncleanly);
        assert_eq!(s.agent_version, "0.2.0\u{fffd}[31m");
        assert_eq!(s.last_alive_at, Timestamp::from_second(900).ok());
        assert!(s.same_boot);
        assert_eq!(s.clock_jump_secs, -86_400);
        assert_eq!(s.detail.chars().count(), MAX_PATH_CHARS);
        assert_eq!(s.account.chars().count(), MAX_TEXT_CHARS);
        assert!(s.account.ends_with('…'));
        for kind in [Kind::Unspecified as i32, 99] {
            let (event, ok) = event_from_wire(signal(kind, String::new(), String::new()), now);
            assert!(!ok, "kind {kind}");
            assert_eq!(event.body.kind(), "unrecognised", "kind {kind}");
        }
    }
}
