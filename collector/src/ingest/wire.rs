//! Wire (prost) types to domain types and back: the only place besides
//! `enroll` where the collector touches generated protobuf structs.

use hallmonitor_proto::v1;
use jiff::Timestamp;
use serde_json::json;

use crate::model::{
    CaptureRecord, CommandKind, DeviceFacts, Disk, Encryption, Event, EventBody, Seq, SessionKind,
    SessionRecord,
};
use crate::rules::mfa::check_completion_time;

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
            corrupt_file_moved_to: r.corrupt_file_moved_to,
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
                    command_id: result.command_id,
                    command,
                    ok: result.ok,
                    detail: result.detail,
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
            path: f.path,
            rule_id: f.rule_id,
            category: f.category,
            severity: f.severity.clamp(1, 5),
            account: f.account,
            sha256: f.sha256,
        },
        None => {
            ok = false;
            unrecognised("unknown", "no body this collector version understands")
        }
    };
    let event = Event {
        seq: Seq(e.seq),
        event_id: e.event_id,
        occurred_at: occurred_at.unwrap_or(received_at),
        body,
    };
    (event, ok)
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
    let (account, method, source) = (m.account, m.method, m.source);
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

pub fn facts_from_wire(f: v1::DeviceFacts) -> DeviceFacts {
    DeviceFacts {
        hostname: f.hostname,
        os_name: f.os_name,
        os_version: f.os_version,
        kernel_version: f.kernel_version,
        machine_id: f.machine_id,
        serial_number: f.serial_number,
        uptime_secs: f.uptime_secs,
        cpu_model: f.cpu_model,
        cpu_cores: f.cpu_cores,
        memory_total_bytes: f.memory_total_bytes,
        memory_available_bytes: f.memory_available_bytes,
        disks: f
            .disks
            .into_iter()
            .map(|d| Disk {
                encryption: match v1::Encryption::try_from(d.encryption) {
                    Ok(v1::Encryption::Encrypted) => Encryption::Encrypted,
                    Ok(v1::Encryption::NotEncrypted) => Encryption::NotEncrypted,
                    _ => Encryption::Unknown,
                },
                name: d.name,
                mount_point: d.mount_point,
                file_system: d.file_system,
                total_bytes: d.total_bytes,
                available_bytes: d.available_bytes,
                removable: d.removable,
            })
            .collect(),
        agent_version: f.agent_version,
        architecture: f.architecture,
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
        session_id: s.session_id,
        account: s.account,
        uid: s.uid,
        kind,
        started_at,
        ended_at: timestamp(s.ended_at.as_ref()),
        active_secs: s.active_secs,
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
fn capture_from_wire(c: v1::Capture) -> CaptureRecord {
    let declared = c.image_sha256.to_ascii_lowercase();
    let (status, image) = if c.image_png.is_empty() {
        ("no_image", Vec::new())
    } else if crate::evidence::sha256_hex(&c.image_png) == declared {
        ("verified", c.image_png)
    } else {
        // Kept as a capture (nothing is lost), without the image.
        ("hash_mismatch", Vec::new())
    };
    CaptureRecord {
        rule_id: c.rule_id,
        category: c.category,
        severity: c.severity.clamp(1, 5) as u8,
        matched_text: c.matched_text,
        window_title: c.window_title,
        process_name: c.process_name,
        account: c.account,
        image_sha256: declared,
        image_status: status.into(),
        no_image_reason: c.no_image_reason,
        repeat_count: c.repeat_count,
        kind: "snapshot".into(),
        file_path: String::new(),
        file_sha256: String::new(),
        policy_version: c.policy_version,
        image,
    }
}

#[cfg(test)]
mod tests {
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
}
