//! `hallmonitor-agent check`: the device's compliance for MDM scripts, from
//! the last state the collector sent (schema `hallmonitor.compliance.v1`,
//! the same as `hallmonitor-collector compliance check`), with what the
//! device itself knows added under `local`.
//!
//! Exit codes: 0 compliant, 1 not compliant, 2 unknown (never heard from
//! the collector) or error.

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use crate::config::AgentConfig;
use crate::outbox::{self, Outbox};

/// A state older than this is marked stale.
const STALE_AFTER: SignedDuration = SignedDuration::from_hours(24);

pub struct CheckReport {
    pub json: Value,
    pub exit_code: u8,
}

pub async fn read(config: &AgentConfig) -> anyhow::Result<CheckReport> {
    let now = Timestamp::now();
    let disabled = crate::enforce::is_disabled(config);
    let (state, received_at) = if config.data_dir.join(outbox::FILE_NAME).exists() {
        let outbox = Outbox::open_read_only(&config.data_dir).await?;
        let state = outbox.state("compliance_json").await?;
        let received = outbox.state("compliance_received_at").await?;
        outbox.close().await;
        (state, received.and_then(|r| r.parse::<Timestamp>().ok()))
    } else {
        (None, None)
    };
    let local = json!({
        "disabled": disabled,
        "state_received_at": received_at,
        "stale": received_at.is_none_or(|r| now.duration_since(r) > STALE_AFTER),
    });
    let Some(state) = state else {
        let json = json!({
            "schema": "hallmonitor.compliance.v1",
            "as_of": null,
            "compliant": null,
            "devices": [],
            "local": local,
            "error": "no compliance state from the collector yet (not enrolled, or never connected)",
        });
        return Ok(CheckReport { json, exit_code: 2 });
    };
    let mut json: Value = serde_json::from_str(&state)?;
    let compliant = json["compliant"].as_bool();
    json["local"] = local;
    let exit_code = match compliant {
        Some(true) if !disabled => 0,
        Some(_) => 1,
        None => 2,
    };
    Ok(CheckReport { json, exit_code })
}

pub fn render_text(report: &CheckReport) -> String {
    let j = &report.json;
    if let Some(error) = j["error"].as_str() {
        return format!("unknown: {error}\n");
    }
    let mut out = String::new();
    for device in j["devices"].as_array().into_iter().flatten() {
        let a = &device["activity"];
        out.push_str(&format!(
            "device {} ({}): {}\n  logged in {} of {} min in the last {} days",
            device["device_id"].as_str().unwrap_or("?"),
            device["hostname"].as_str().unwrap_or("?"),
            a["status"].as_str().unwrap_or("?"),
            a["used_minutes"],
            a["required_minutes"],
            a["window_days"],
        ));
        if let Some(breach) = a["breach_local"].as_str() {
            out.push_str(&format!("; needs use before {breach}"));
        }
        out.push('\n');
        out.push_str(&format!(
            "  enforcement: {}\n",
            device["enforcement"].as_str().unwrap_or("?")
        ));
    }
    out.push_str(&format!(
        "as of {} (received {}{})\n",
        j["as_of"].as_str().unwrap_or("?"),
        j["local"]["state_received_at"].as_str().unwrap_or("never"),
        if j["local"]["stale"] == true {
            ", stale"
        } else {
            ""
        }
    ));
    if j["local"]["disabled"] == true {
        out.push_str("this device is DISABLED: only administrator accounts may log in\n");
    }
    out
}
