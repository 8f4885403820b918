//! `hallmonitor-agent check`: the device's compliance for MDM scripts, from
//! the last state the collector sent (schema `hallmonitor.compliance.v1`,
//! the same as `hallmonitor-collector compliance check`), with what the
//! device itself knows added under `local`.
//!
//! The JSON output is the collector's document as it was sent, fields this
//! agent does not know included, plus `local`; decisions and the text
//! output read it through the shared types of `hallmonitor-report`.
//!
//! Exit codes: 0 compliant, 1 not compliant, 2 unknown (never heard from
//! the collector) or error.

use hallmonitor_report::{ComplianceReport, SCHEMA};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::AgentConfig;
use crate::outbox::{self, Outbox};
use crate::state::State;

/// A state older than this is marked stale.
const STALE_AFTER: SignedDuration = SignedDuration::from_hours(24);

const NO_STATE: &str =
    "no compliance state from the collector yet (not enrolled, or never connected)";

pub struct CheckReport {
    /// What `--format json` prints.
    pub json: Value,
    /// The collector's report; None before it sent one.
    pub report: Option<ComplianceReport>,
    pub local: Local,
    pub exit_code: u8,
}

/// What the device itself knows (`local` in the JSON).
#[derive(Clone, Debug, Serialize)]
pub struct Local {
    /// Pupils may not log in (the enforcement marker is present).
    pub disabled: bool,
    pub state_received_at: Option<Timestamp>,
    /// No state, or one older than a day.
    pub stale: bool,
}

pub async fn read(config: &AgentConfig) -> anyhow::Result<CheckReport> {
    let now = Timestamp::now();
    let disabled = crate::enforce::is_disabled(config);
    let (state, received_at) = if config.data_dir.join(outbox::FILE_NAME).exists() {
        let outbox = Outbox::open_read_only(&config.data_dir).await?;
        let state = State::new(&outbox);
        let json = state.compliance_json().await?;
        let received = state.compliance_received_at().await?;
        outbox.close().await;
        (json, received)
    } else {
        (None, None)
    };
    let local = Local {
        disabled,
        state_received_at: received_at,
        stale: received_at.is_none_or(|r| now.duration_since(r) > STALE_AFTER),
    };
    let Some(state) = state else {
        let json = json!({
            "schema": SCHEMA,
            "as_of": null,
            "compliant": null,
            "devices": [],
            "local": local,
            "error": NO_STATE,
        });
        return Ok(CheckReport {
            json,
            report: None,
            local,
            exit_code: 2,
        });
    };
    let mut json: Value = serde_json::from_str(&state)?;
    let report = ComplianceReport::deserialize(&json)?;
    json["local"] = serde_json::to_value(&local)?;
    let exit_code = u8::from(!report.compliant || disabled);
    Ok(CheckReport {
        json,
        report: Some(report),
        local,
        exit_code,
    })
}

pub fn render_text(check: &CheckReport) -> String {
    let Some(report) = &check.report else {
        return format!("unknown: {NO_STATE}\n");
    };
    let mut out = String::new();
    for device in &report.devices {
        let a = &device.activity;
        out.push_str(&format!(
            "device {} ({}): {}\n  logged in {} of {} min in the last {} days",
            device.device_id,
            device.hostname,
            a.status,
            a.used_minutes,
            a.required_minutes,
            a.window_days,
        ));
        if let Some(breach) = &a.breach_local {
            out.push_str(&format!("; needs use before {breach}"));
        }
        out.push('\n');
        out.push_str(&format!("  enforcement: {}\n", device.enforcement));
    }
    let local = &check.local;
    out.push_str(&format!(
        "as of {} (received {}{})\n",
        report.as_of,
        local
            .state_received_at
            .map_or_else(|| "never".to_owned(), |at| at.to_string()),
        if local.stale { ", stale" } else { "" }
    ));
    if local.disabled {
        out.push_str("this device is DISABLED: only administrator accounts may log in\n");
    }
    out
}
