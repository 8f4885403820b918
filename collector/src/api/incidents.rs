//! Incidents and their captures' metadata, for dsl tokens only (the role
//! matrix's `Incidents` permission). Like the console, every listing and
//! every incident read is written to the audit log before the data is
//! returned. Images are not served here: the console shows them.

use axum::Json;
use axum::extract::{Path, Query, State};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::token::Token;
use super::{ApiError, ErrorBody, chosen_sites};
use crate::console::Console;
use crate::console::access::IncidentsP;
use crate::model::{CaptureRow, IncidentRecord};
use crate::store::DeviceFilter;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// open (default), closed or all.
    status: Option<String>,
}

/// `hallmonitor.incidents.v1`
#[derive(Serialize, ToSchema)]
pub struct IncidentList {
    schema: &'static str,
    /// Most severe first, then most recent.
    incidents: Vec<Incident>,
}

#[derive(Serialize, ToSchema)]
pub struct Incident {
    id: i64,
    site: String,
    device_id: String,
    hostname: String,
    account: String,
    category: String,
    /// 1 (lowest) to 5.
    severity: i64,
    /// open or closed.
    status: String,
    opened_at: Timestamp,
    last_at: Timestamp,
    capture_count: i64,
}

fn incident_out(i: IncidentRecord) -> Incident {
    Incident {
        id: i.id,
        site: i.site,
        device_id: i.device_id.to_string(),
        hostname: i.hostname,
        account: i.account,
        category: i.category,
        severity: i.severity,
        status: i.status,
        opened_at: i.opened_at,
        last_at: i.last_at,
        capture_count: i.capture_count,
    }
}

/// Incidents of the token's sites (dsl tokens).
#[utoipa::path(
    get,
    operation_id = "list_incidents",
    path = "/api/v1/incidents",
    tag = "incidents",
    params(ListQuery),
    responses(
        (status = 200, body = IncidentList),
        (status = 400, body = ErrorBody, description = "Unknown status"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "Not a dsl token"),
    )
)]
pub async fn list(
    State(console): State<Console>,
    Token(viewer, _): Token<IncidentsP>,
    Query(q): Query<ListQuery>,
) -> Result<Json<IncidentList>, ApiError> {
    let status = match q.status.as_deref() {
        None | Some("") | Some("open") => Some("open"),
        Some("closed") => Some("closed"),
        Some("all") => None,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "status: '{other}' is not open, closed or all"
            )));
        }
    };
    let sites = chosen_sites(&console, &viewer, None).await?;
    let mut list = console
        .store
        .list_incidents(&DeviceFilter::default(), status)
        .await?;
    list.retain(|i| sites.iter().any(|s| s.name == i.site));
    list.sort_by_key(|i| (std::cmp::Reverse(i.severity), std::cmp::Reverse(i.last_at)));
    // Safeguarding data leaves only once its reading is recorded.
    console
        .audit(
            &viewer,
            viewer.user.audit_site(),
            "api_incidents_listed",
            "incidents",
            status.unwrap_or("all"),
        )
        .await?;
    Ok(Json(IncidentList {
        schema: "hallmonitor.incidents.v1",
        incidents: list.into_iter().map(incident_out).collect(),
    }))
}

/// `hallmonitor.incident.v1`
#[derive(Serialize, ToSchema)]
pub struct IncidentDetail {
    schema: &'static str,
    incident: Incident,
    captures: Vec<Capture>,
}

/// One capture's metadata (the image itself is viewed in the console).
#[derive(Serialize, ToSchema)]
pub struct Capture {
    id: i64,
    occurred_at: Timestamp,
    rule_id: String,
    category: String,
    severity: i64,
    matched_text: String,
    window_title: String,
    process_name: String,
    account: String,
    /// snapshot or file.
    kind: String,
    /// SHA-256 of the decrypted image (empty without one).
    image_sha256: String,
    /// verified, missing, …
    image_status: String,
    no_image_reason: String,
    file_path: String,
    file_sha256: String,
    repeat_count: i64,
    policy_version: i64,
}

fn capture_out(c: CaptureRow) -> Capture {
    Capture {
        id: c.id,
        occurred_at: c.occurred_at,
        rule_id: c.rule_id,
        category: c.category,
        severity: c.severity,
        matched_text: c.matched_text,
        window_title: c.window_title,
        process_name: c.process_name,
        account: c.account,
        kind: c.kind,
        image_sha256: c.image_sha256,
        image_status: c.image_status,
        no_image_reason: c.no_image_reason,
        file_path: c.file_path,
        file_sha256: c.file_sha256,
        repeat_count: c.repeat_count,
        policy_version: c.policy_version,
    }
}

/// One incident with its captures' metadata (dsl tokens).
#[utoipa::path(
    get,
    operation_id = "get_incident",
    path = "/api/v1/incidents/{id}",
    tag = "incidents",
    params(("id" = i64, Path, description = "The incident id")),
    responses(
        (status = 200, body = IncidentDetail),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "Not a dsl token"),
        (status = 404, body = ErrorBody, description = "No such incident in the token's sites"),
    )
)]
pub async fn one(
    State(console): State<Console>,
    Token(viewer, _): Token<IncidentsP>,
    Path(id): Path<i64>,
) -> Result<Json<IncidentDetail>, ApiError> {
    let Some((incident, captures, site)) = console.store.incident(id).await? else {
        return Err(ApiError::NotFound);
    };
    if !viewer.sees(site) {
        return Err(ApiError::NotFound);
    }
    console
        .audit(
            &viewer,
            Some(site),
            "incident_viewed",
            &format!("incident {id}"),
            "api",
        )
        .await?;
    Ok(Json(IncidentDetail {
        schema: "hallmonitor.incident.v1",
        incident: incident_out(incident),
        captures: captures.into_iter().map(capture_out).collect(),
    }))
}
