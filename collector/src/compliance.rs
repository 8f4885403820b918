//! The compliance report: one JSON schema (`hallmonitor.compliance.v1`) for
//! `hallmonitor-collector compliance check`, for the state the collector
//! sends each agent, and so for `hallmonitor-agent check`. Scripts rely on
//! it: fields are only ever added.
//!
//! Exit codes of both checks: 0 when everything selected is compliant
//! (`grace`, `compliant` and `at_risk` pass), 1 when something is not, 2
//! on error.
//!
//! The collector writes the document from the types here, built from its
//! own domain types; readers (the agent) parse it with the shared crate
//! `hallmonitor-report`. The tests below parse a full report with those
//! types and require it back byte for byte, and map every status value
//! both ways, so the two definitions cannot drift apart.

use hallmonitor_report as report;
use jiff::Timestamp;

use crate::flags::{FlagKind, FlagRecord, FlagState};
use crate::model::{DeviceId, Enforcement};
use crate::rules::activity::{ActivityEvaluation, ActivityStatus};
use crate::rules::mfa::{MfaStatus, PairVerdict};

pub use hallmonitor_report::SCHEMA;

// The document's types are the shared crate's, so the agent reads what
// the collector writes with the same definitions.
pub use hallmonitor_report::{
    ActivityReport, ComplianceReport, DeviceCompliance, FlagSummary, MfaReport,
};

/// Each status as the shared crate names it. No wildcard: a value added
/// on the collector's side fails to compile until `hallmonitor-report`
/// has it too.
pub(crate) fn shared_activity(status: ActivityStatus) -> report::ActivityStatus {
    match status {
        ActivityStatus::Grace => report::ActivityStatus::Grace,
        ActivityStatus::Compliant => report::ActivityStatus::Compliant,
        ActivityStatus::AtRisk => report::ActivityStatus::AtRisk,
        ActivityStatus::NonCompliant => report::ActivityStatus::NonCompliant,
        ActivityStatus::Disabled => report::ActivityStatus::Disabled,
    }
}

pub(crate) fn shared_mfa(status: MfaStatus) -> report::MfaStatus {
    match status {
        MfaStatus::Fresh => report::MfaStatus::Fresh,
        MfaStatus::DueSoon => report::MfaStatus::DueSoon,
        MfaStatus::Stale => report::MfaStatus::Stale,
    }
}

pub(crate) fn shared_enforcement(enforcement: Enforcement) -> report::Enforcement {
    match enforcement {
        Enforcement::Enabled => report::Enforcement::Enabled,
        Enforcement::DisablePending => report::Enforcement::DisablePending,
        Enforcement::Disabled => report::Enforcement::Disabled,
        Enforcement::EnablePending => report::Enforcement::EnablePending,
    }
}

pub(crate) fn shared_kind(kind: FlagKind) -> report::FlagKind {
    match kind {
        FlagKind::DeviceInactive => report::FlagKind::DeviceInactive,
        FlagKind::MfaStale => report::FlagKind::MfaStale,
        FlagKind::Tamper => report::FlagKind::Tamper,
    }
}

pub(crate) fn shared_state(state: FlagState) -> report::FlagState {
    match state {
        FlagState::Open => report::FlagState::Open,
        FlagState::DisableApproved => report::FlagState::DisableApproved,
        FlagState::Disabled => report::FlagState::Disabled,
        FlagState::Reenabled => report::FlagState::Reenabled,
        FlagState::Dismissed => report::FlagState::Dismissed,
    }
}

/// What a device's line in the report is made of.
pub struct DeviceFacts<'a> {
    pub device: &'a DeviceId,
    pub hostname: &'a str,
    pub site: &'a str,
    pub timezone: &'a str,
    pub enforcement: Enforcement,
    pub required_minutes: i64,
    pub window_days: i64,
    pub flags: Vec<&'a FlagRecord>,
    pub mfa: &'a [PairVerdict],
}

pub fn device_line(facts: DeviceFacts<'_>, evaluation: &ActivityEvaluation) -> DeviceCompliance {
    let zone = jiff::tz::TimeZone::get(facts.timezone).unwrap_or(jiff::tz::TimeZone::UTC);
    DeviceCompliance {
        device_id: facts.device.to_string(),
        hostname: facts.hostname.to_owned(),
        site: facts.site.to_owned(),
        compliant: evaluation.status.passes()
            && facts.mfa.iter().all(|p| p.status != MfaStatus::Stale),
        enforcement: shared_enforcement(facts.enforcement),
        activity: ActivityReport {
            status: shared_activity(evaluation.status),
            used_minutes: evaluation.used.as_mins(),
            required_minutes: facts.required_minutes,
            window_days: facts.window_days,
            window_start: evaluation.window_start,
            breach_at: evaluation.breach_at,
            breach_local: evaluation.breach_at.map(|t| {
                t.to_zoned(zone.clone())
                    .strftime("%a %-d %b %Y %H:%M %Z")
                    .to_string()
            }),
            grace_until: evaluation.grace_until,
            evaluated_at: evaluation.as_of,
        },
        mfa: facts
            .mfa
            .iter()
            .map(|p| MfaReport {
                account: p.account.clone(),
                status: shared_mfa(p.status),
                last_mfa: p.last_mfa,
                expires_at: p.expires_at,
            })
            .collect(),
        flags: facts
            .flags
            .into_iter()
            .filter(|f| f.state.is_active())
            .map(|f| FlagSummary {
                id: f.id,
                kind: shared_kind(f.kind),
                state: shared_state(f.state),
                opened_at: f.opened_at,
            })
            .collect(),
    }
}

pub fn report(as_of: Timestamp, devices: Vec<DeviceCompliance>) -> ComplianceReport {
    ComplianceReport {
        schema: SCHEMA.into(),
        as_of,
        compliant: devices.iter().all(|d| d.compliant),
        devices,
    }
}

/// 0 when everything passes, 1 otherwise.
pub fn exit_code(report: &ComplianceReport) -> u8 {
    u8::from(!report.compliant)
}

/// How many devices have each activity status, in order of first sight.
pub fn status_counts(report: &ComplianceReport) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for device in &report.devices {
        let status = device.activity.status.as_str();
        match counts.iter_mut().find(|(s, _)| s == status) {
            Some((_, n)) => *n += 1,
            None => counts.push((status.to_owned(), 1)),
        }
    }
    counts
}

/// The report for the selected devices at `as_of`, evaluated now from the
/// stored sessions (exact for any instant, past or present).
pub async fn check(
    store: &dyn crate::store::Store,
    config: &crate::config::CollectorConfig,
    filter: &crate::store::DeviceFilter,
    as_of: Timestamp,
) -> crate::store::Result<ComplianceReport> {
    let verdicts = crate::rules::evaluate::evaluate(store, config, filter, as_of).await?;
    let flags = store.list_flags(filter, None).await?;
    let devices = verdicts
        .iter()
        .map(|v| {
            let facts = DeviceFacts {
                device: &v.input.device,
                hostname: &v.input.hostname,
                site: &v.input.site_name,
                timezone: &v.input.site_timezone,
                enforcement: v.input.enforcement,
                required_minutes: v.rule.thresholds.required.as_mins(),
                window_days: v.rule.thresholds.window.as_hours() / 24,
                flags: flags
                    .iter()
                    .filter(|f| f.device_id == v.input.device)
                    .collect(),
                mfa: &v.mfa,
            };
            device_line(facts, &v.evaluation)
        })
        .collect();
    Ok(report(as_of, devices))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hallmonitor_report as shared;

    // Every value of each status the report carries (checked against the
    // shared crate's lists below).
    const ACTIVITY: [ActivityStatus; 5] = [
        ActivityStatus::Grace,
        ActivityStatus::Compliant,
        ActivityStatus::AtRisk,
        ActivityStatus::NonCompliant,
        ActivityStatus::Disabled,
    ];
    const MFA: [MfaStatus; 3] = [MfaStatus::Fresh, MfaStatus::DueSoon, MfaStatus::Stale];
    const ENFORCEMENT: [Enforcement; 4] = [
        Enforcement::Enabled,
        Enforcement::DisablePending,
        Enforcement::Disabled,
        Enforcement::EnablePending,
    ];
    const KINDS: [FlagKind; 3] = [
        FlagKind::DeviceInactive,
        FlagKind::MfaStale,
        FlagKind::Tamper,
    ];
    const STATES: [FlagState; 5] = [
        FlagState::Open,
        FlagState::DisableApproved,
        FlagState::Disabled,
        FlagState::Reenabled,
        FlagState::Dismissed,
    ];

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    /// A report with every field filled, and one with every optional
    /// field empty.
    fn full_report() -> ComplianceReport {
        let device =
            |id: &str, status: ActivityStatus, enforcement: Enforcement| DeviceCompliance {
                device_id: id.into(),
                hostname: format!("host-{id}"),
                site: "Cabot".into(),
                compliant: status.passes(),
                enforcement: shared_enforcement(enforcement),
                activity: ActivityReport {
                    status: shared_activity(status),
                    used_minutes: 70,
                    required_minutes: 60,
                    window_days: 28,
                    window_start: at("2026-02-02T10:00:00Z"),
                    breach_at: Some(at("2026-03-05T09:00:00.25Z")),
                    breach_local: Some("Thu 5 Mar 2026 09:00 GMT".into()),
                    grace_until: Some(at("2026-02-09T10:00:00Z")),
                    evaluated_at: at("2026-03-02T10:00:00.123456789Z"),
                },
                mfa: MFA
                    .iter()
                    .map(|status| MfaReport {
                        account: format!("staff.{}", status.as_str()),
                        status: shared_mfa(*status),
                        last_mfa: Some(at("2026-01-01T08:00:00Z")),
                        expires_at: Some(at("2026-01-31T08:00:00Z")),
                    })
                    .collect(),
                flags: KINDS
                    .iter()
                    .flat_map(|kind| STATES.iter().map(move |state| (kind, state)))
                    .enumerate()
                    .map(|(id, (kind, state))| FlagSummary {
                        id: id as i64 + 1,
                        kind: shared_kind(*kind),
                        state: shared_state(*state),
                        opened_at: at("2026-02-01T08:00:00Z"),
                    })
                    .collect(),
            };
        let mut devices: Vec<DeviceCompliance> = ACTIVITY
            .iter()
            .zip(ENFORCEMENT.iter().cycle())
            .enumerate()
            .map(|(n, (status, enforcement))| device(&format!("d-{n}"), *status, *enforcement))
            .collect();
        devices.extend(
            ENFORCEMENT
                .iter()
                .map(|e| device("e", ActivityStatus::Grace, *e)),
        );
        let mut empty = device("empty", ActivityStatus::Compliant, Enforcement::Enabled);
        empty.hostname.clear();
        empty.activity.breach_at = None;
        empty.activity.breach_local = None;
        empty.activity.grace_until = None;
        empty.mfa[0].last_mfa = None;
        empty.mfa[0].expires_at = None;
        empty.flags.clear();
        devices.push(empty);
        report(at("2026-03-02T10:00:00.5Z"), devices)
    }

    #[test]
    fn the_shared_types_read_a_full_report_and_write_it_back_byte_for_byte() {
        let report = full_report();
        // As `compliance check --format json` prints it and as the device
        // state carries it.
        for json in [
            serde_json::to_string_pretty(&report).unwrap(),
            serde_json::to_string(&report).unwrap(),
        ] {
            let read: shared::ComplianceReport = serde_json::from_str(&json).unwrap();
            let again = if json.contains('\n') {
                serde_json::to_string_pretty(&read).unwrap()
            } else {
                serde_json::to_string(&read).unwrap()
            };
            assert_eq!(
                again, json,
                "a field the shared types lack, or in another order"
            );
            let pairs: Vec<_> = read.mfa_pairs().collect();
            assert!(!pairs.is_empty());
            for device in &read.devices {
                assert!(!matches!(device.enforcement, shared::Enforcement::Other(_)));
                assert!(!matches!(
                    device.activity.status,
                    shared::ActivityStatus::Other(_)
                ));
                for flag in &device.flags {
                    assert!(!matches!(flag.kind, shared::FlagKind::Other(_)));
                    assert!(!matches!(flag.state, shared::FlagState::Other(_)));
                }
            }
            for pair in pairs {
                assert!(!matches!(pair.status, shared::MfaStatus::Other(_)));
            }
        }
    }

    #[test]
    fn every_status_is_spelled_the_same_on_both_sides() {
        fn same<C: Copy, S>(ours: &[C], text: fn(C) -> &'static str, map: fn(C) -> S, known: &[S])
        where
            S: serde::de::DeserializeOwned + std::fmt::Debug + PartialEq,
        {
            assert_eq!(ours.len(), known.len(), "values on each side: {known:?}");
            for value in ours {
                let read: S = serde_json::from_value(text(*value).into()).unwrap();
                assert_eq!(read, map(*value), "{}", text(*value));
            }
        }
        same(
            &ACTIVITY,
            ActivityStatus::as_str,
            shared_activity,
            shared::ActivityStatus::KNOWN,
        );
        same(
            &MFA,
            MfaStatus::as_str,
            shared_mfa,
            shared::MfaStatus::KNOWN,
        );
        same(
            &ENFORCEMENT,
            Enforcement::as_str,
            shared_enforcement,
            shared::Enforcement::KNOWN,
        );
        same(
            &KINDS,
            FlagKind::as_str,
            shared_kind,
            shared::FlagKind::KNOWN,
        );
        same(
            &STATES,
            FlagState::as_str,
            shared_state,
            shared::FlagState::KNOWN,
        );
    }
}
