//! Devices: the list (search, filters, keyset pages, as the console's
//! device page), one device with its facts and compliance, and the
//! compliance report (`hallmonitor.compliance.v1`, the document
//! `compliance check --format json` prints).

use axum::Json;
use axum::extract::{Path, Query, State};
use hallmonitor_report::{ComplianceReport, DeviceCompliance};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::token::Token;
use super::{ApiError, ErrorBody, chosen_sites};
use crate::console::Console;
use crate::console::access::DevicesP;
use crate::model::{Connectivity, DeviceId, DeviceRecord};
use crate::rules::activity::ActivityStatus;
use crate::store::{DeviceFilter, DeviceQuery};

/// Most devices in one page.
const MAX_LIMIT: usize = 500;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Part of the hostname, device id or serial number, or an account
    /// that signed in on the device.
    q: Option<String>,
    /// Only this site (one the token covers).
    site: Option<String>,
    /// online or offline.
    status: Option<String>,
    /// grace, compliant, at_risk, non_compliant or disabled.
    compliance: Option<String>,
    /// Part of the operating system's name.
    os: Option<String>,
    /// The `next` value of the previous page.
    after: Option<String>,
    /// Devices per page, 1 to 500 (default 100).
    limit: Option<usize>,
}

/// `hallmonitor.devices.v1`: one page of devices, by hostname.
#[derive(Serialize, ToSchema)]
pub struct DeviceList {
    schema: &'static str,
    devices: Vec<DeviceSummary>,
    /// Pass as `after` for the next page; absent on the last page.
    next: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DeviceSummary {
    id: String,
    hostname: String,
    site: String,
    os_name: String,
    os_version: String,
    serial_number: String,
    agent_version: String,
    /// Whether it has been heard from within three heartbeats.
    online: bool,
    last_seen_at: Option<Timestamp>,
    enrolled_at: Timestamp,
    /// enabled, disable_pending, disabled or enable_pending.
    enforcement: String,
    /// active, pending (awaiting approval) or revoked.
    status: String,
    /// The site policy version the agent last said it holds (0: none).
    policy_version: u64,
    /// Monitoring gaps the agent reported that are still open.
    open_gaps: u64,
}

fn summary(d: &DeviceRecord, now: Timestamp) -> DeviceSummary {
    DeviceSummary {
        id: d.id.to_string(),
        hostname: d.hostname.clone(),
        site: d.site.clone(),
        os_name: d.facts.os_name.clone(),
        os_version: d.facts.os_version.clone(),
        serial_number: d.facts.serial_number.clone(),
        agent_version: d.facts.agent_version.clone(),
        online: d.connectivity(now) == Connectivity::Online,
        last_seen_at: d.last_seen_at,
        enrolled_at: d.enrolled_at,
        enforcement: d.enforcement.as_str().to_owned(),
        status: d.status.as_str().to_owned(),
        policy_version: d.policy_version,
        open_gaps: d.open_gaps,
    }
}

/// Devices of the token's sites.
#[utoipa::path(
    get,
    operation_id = "list_devices",
    path = "/api/v1/devices",
    tag = "devices",
    params(ListQuery),
    responses(
        (status = 200, body = DeviceList),
        (status = 400, body = ErrorBody, description = "A filter's value is unknown"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "Not one of the token's sites"),
    )
)]
pub async fn list(
    State(console): State<Console>,
    Token(viewer, _): Token<DevicesP>,
    Query(q): Query<ListQuery>,
) -> Result<Json<DeviceList>, ApiError> {
    let now = Timestamp::now();
    let sites = chosen_sites(&console, &viewer, q.site.as_deref()).await?;
    let connectivity = match q.status.as_deref() {
        None | Some("") => None,
        Some("online") => Some(Connectivity::Online),
        Some("offline") => Some(Connectivity::Offline),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "status: '{other}' is not online or offline"
            )));
        }
    };
    let compliance = match q.compliance.as_deref() {
        None | Some("") => None,
        Some(text) => Some(ActivityStatus::parse(text).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "compliance: '{text}' is not grace, compliant, at_risk, non_compliant or disabled"
            ))
        })?),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit: {limit} is not between 1 and {MAX_LIMIT}"
        )));
    }
    let after = match q.after.as_deref() {
        None | Some("") => None,
        Some(cursor) => Some(
            cursor
                .split_once('\u{1f}')
                .map(|(h, i)| (h.to_owned(), i.to_owned()))
                .ok_or_else(|| {
                    ApiError::BadRequest("after: not a `next` value of this API".into())
                })?,
        ),
    };
    let mut devices = console
        .store
        .device_page(&DeviceQuery {
            sites: Some(sites.iter().map(|s| s.id).collect()),
            text: q.q.unwrap_or_default().chars().take(200).collect(),
            connectivity,
            compliance,
            os: q.os.unwrap_or_default().chars().take(100).collect(),
            now: Some(now),
            after,
            limit: limit + 1,
        })
        .await?;
    let next = if devices.len() > limit {
        devices.truncate(limit);
        devices
            .last()
            .map(|d| format!("{}\u{1f}{}", d.hostname, d.id))
    } else {
        None
    };
    Ok(Json(DeviceList {
        schema: "hallmonitor.devices.v1",
        devices: devices.iter().map(|d| summary(d, now)).collect(),
        next,
    }))
}

/// `hallmonitor.device.v1`
#[derive(Serialize, ToSchema)]
pub struct DeviceDetail {
    schema: &'static str,
    device: DeviceSummary,
    kernel_version: String,
    architecture: String,
    cpu_model: String,
    cpu_cores: u32,
    memory_total_bytes: u64,
    /// Why it is pending or revoked (empty when active).
    status_reason: String,
    /// The device-activity and 2FA rules' verdicts now, with active flags.
    compliance: Option<DeviceCompliance>,
    /// The agent's newest signals about itself (at most 20), newest first.
    agent_signals: Vec<AgentSignal>,
}

/// Something the agent said about itself. Fields a kind does not use are
/// empty, zero or null.
#[derive(Serialize, ToSchema)]
pub struct AgentSignal {
    seq: u64,
    occurred_at: Timestamp,
    /// One of: started, stopped, stopped_uncleanly, config_changed,
    /// upgraded, clock_jumped, helper_gone; later versions may add values.
    kind: String,
    /// What it means in plain words (times in the site's zone).
    description: String,
    agent_version: String,
    /// upgraded: the previous run's version.
    previous_agent_version: String,
    /// stopped_uncleanly: when the previous run was last known alive.
    last_alive_at: Option<Timestamp>,
    /// stopped_uncleanly: the machine kept running meanwhile.
    same_boot: bool,
    /// clock_jumped: seconds the clock moved beyond the time that passed
    /// (negative: backwards).
    clock_jump_secs: i64,
    /// config_changed: SHA-256 of the file as last read and as it is now.
    previous_config_sha256: String,
    config_sha256: String,
    /// helper_gone: the session and its account.
    session_id: String,
    account: String,
    uid: u32,
    /// config_changed: the file's path.
    detail: String,
}

fn agent_signal(s: crate::model::StoredSignal, zone: &jiff::tz::TimeZone) -> AgentSignal {
    let description = crate::tamper::describe(&s.record, zone);
    let r = s.record;
    AgentSignal {
        seq: s.seq,
        occurred_at: s.occurred_at,
        kind: r.signal.as_str().to_owned(),
        description,
        agent_version: r.agent_version,
        previous_agent_version: r.previous_agent_version,
        last_alive_at: r.last_alive_at,
        same_boot: r.same_boot,
        clock_jump_secs: r.clock_jump_secs,
        previous_config_sha256: r.previous_config_sha256,
        config_sha256: r.config_sha256,
        session_id: r.session_id,
        account: r.account,
        uid: r.uid,
        detail: r.detail,
    }
}

/// One device with its compliance now.
#[utoipa::path(
    get,
    operation_id = "get_device",
    path = "/api/v1/devices/{id}",
    tag = "devices",
    params(("id" = String, Path, description = "The device id")),
    responses(
        (status = 200, body = DeviceDetail),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "No such device in the token's sites"),
    )
)]
pub async fn one(
    State(console): State<Console>,
    Token(viewer, _): Token<DevicesP>,
    Path(id): Path<String>,
) -> Result<Json<DeviceDetail>, ApiError> {
    let now = Timestamp::now();
    let id = DeviceId::from_string(&id);
    let Some(d) = console.store.device(&id).await? else {
        return Err(ApiError::NotFound);
    };
    let sites = chosen_sites(&console, &viewer, None).await?;
    if !sites.iter().any(|s| s.name == d.site) {
        return Err(ApiError::NotFound);
    }
    let zone = jiff::tz::TimeZone::get(&d.site_timezone).unwrap_or(jiff::tz::TimeZone::UTC);
    let agent_signals = console
        .store
        .agent_signals(&id, crate::tamper::SIGNALS_SHOWN)
        .await?
        .into_iter()
        .map(|s| agent_signal(s, &zone))
        .collect();
    let report = crate::compliance::check(
        &*console.store,
        &console.config,
        &DeviceFilter::one(id),
        now,
    )
    .await?;
    Ok(Json(DeviceDetail {
        schema: "hallmonitor.device.v1",
        device: summary(&d, now),
        kernel_version: d.facts.kernel_version.clone(),
        architecture: d.facts.architecture.clone(),
        cpu_model: d.facts.cpu_model.clone(),
        cpu_cores: d.facts.cpu_cores,
        memory_total_bytes: d.facts.memory_total_bytes,
        status_reason: d.status_reason.clone(),
        compliance: report.devices.into_iter().next(),
        agent_signals,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ComplianceQuery {
    /// Only this site (one the token covers).
    site: Option<String>,
}

/// The compliance report of the token's sites now
/// (`hallmonitor.compliance.v1`).
#[utoipa::path(
    get,
    operation_id = "get_compliance",
    path = "/api/v1/compliance",
    tag = "devices",
    params(ComplianceQuery),
    responses(
        (status = 200, body = ComplianceReport),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "Not one of the token's sites"),
    )
)]
pub async fn compliance(
    State(console): State<Console>,
    Token(viewer, _): Token<DevicesP>,
    Query(q): Query<ComplianceQuery>,
) -> Result<Json<ComplianceReport>, ApiError> {
    let now = Timestamp::now();
    let mut devices = Vec::new();
    for site in chosen_sites(&console, &viewer, q.site.as_deref()).await? {
        let filter = DeviceFilter {
            site: Some(site.id),
            ..DeviceFilter::default()
        };
        let report =
            crate::compliance::check(&*console.store, &console.config, &filter, now).await?;
        devices.extend(report.devices);
    }
    Ok(Json(crate::compliance::report(now, devices)))
}
