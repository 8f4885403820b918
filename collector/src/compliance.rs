//! The compliance report: one JSON schema (`hallmonitor.compliance.v1`) for
//! `hallmonitor-collector compliance check`, for the state the collector
//! sends each agent, and so for `hallmonitor-agent check`. Scripts rely on
//! it: fields are only ever added.
//!
//! Exit codes of both checks: 0 when everything selected is compliant
//! (`grace`, `compliant` and `at_risk` pass), 1 when something is not, 2
//! on error.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::flags::FlagRecord;
use crate::model::{DeviceId, Enforcement};
use crate::rules::activity::ActivityEvaluation;
use crate::rules::mfa::{MfaStatus, PairVerdict};

pub const SCHEMA: &str = "hallmonitor.compliance.v1";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ComplianceReport {
    pub schema: String,
    pub as_of: Timestamp,
    /// True when every device listed passes.
    pub compliant: bool,
    pub devices: Vec<DeviceCompliance>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DeviceCompliance {
    pub device_id: String,
    pub hostname: String,
    pub site: String,
    pub compliant: bool,
    pub enforcement: String,
    pub activity: ActivityReport,
    /// Two-step sign-in freshness of each staff account using the device.
    #[serde(default)]
    pub mfa: Vec<MfaReport>,
    /// Active flags (open, disable approved, disabled).
    pub flags: Vec<FlagSummary>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MfaReport {
    pub account: String,
    /// fresh, due_soon or stale; only stale fails the check.
    pub status: String,
    pub last_mfa: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ActivityReport {
    pub status: String,
    pub used_minutes: i64,
    pub required_minutes: i64,
    pub window_days: i64,
    pub window_start: Timestamp,
    /// Without further use, non-compliant from just after this instant.
    pub breach_at: Option<Timestamp>,
    /// `breach_at` in the site's zone, for people.
    pub breach_local: Option<String>,
    pub grace_until: Option<Timestamp>,
    /// When this verdict was computed.
    pub evaluated_at: Timestamp,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FlagSummary {
    pub id: i64,
    pub kind: String,
    pub state: String,
    pub opened_at: Timestamp,
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
        enforcement: facts.enforcement.as_str().to_owned(),
        activity: ActivityReport {
            status: evaluation.status.as_str().to_owned(),
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
                status: p.status.as_str().to_owned(),
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
                kind: f.kind.as_str().to_owned(),
                state: f.state.as_str().to_owned(),
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

impl ComplianceReport {
    /// 0 when everything passes, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.compliant)
    }

    pub fn status_counts(&self) -> Vec<(String, usize)> {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for device in &self.devices {
            match counts
                .iter_mut()
                .find(|(s, _)| *s == device.activity.status)
            {
                Some((_, n)) => *n += 1,
                None => counts.push((device.activity.status.clone(), 1)),
            }
        }
        counts
    }
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
