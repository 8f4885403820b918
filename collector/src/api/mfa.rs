//! 2FA: the (staff account, device) pairs with their status and expiry,
//! and two-step sign-ins posted by identity providers or scripts for the
//! 2FA-freshness rule. A posted request is checked whole before anything
//! is stored (a completion time ahead of the collector's clock beyond the
//! rule's skew refuses it); a repeated id adds nothing.

use axum::Json;
use axum::extract::{Query, State};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::token::Token;
use super::{ApiError, ErrorBody, chosen_sites};
use crate::console::Console;
use crate::console::access::DevicesP;
use crate::rules::mfa::{MfaStatus, check_completion_time};
use crate::signins::SignIn;
use crate::store::{AuditEntry, DeviceFilter};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PairsQuery {
    /// Only this site (one the token covers).
    site: Option<String>,
    /// Only pairs with this status: fresh, due_soon or stale.
    status: Option<String>,
}

/// `hallmonitor.mfa_pairs.v1`
#[derive(Serialize, ToSchema)]
pub struct Pairs {
    schema: &'static str,
    pairs: Vec<Pair>,
}

/// A staff account's two-step sign-in freshness on one device.
#[derive(Serialize, ToSchema)]
pub struct Pair {
    site: String,
    device_id: String,
    hostname: String,
    /// The staff account, lowercase.
    account: String,
    /// fresh, due_soon or stale (only stale fails the rule).
    status: String,
    last_mfa: Option<Timestamp>,
    /// When the last two-step sign-in stops counting.
    expires_at: Option<Timestamp>,
    last_session_at: Timestamp,
    /// When this verdict was computed.
    as_of: Timestamp,
}

/// 2FA pairs of the token's sites.
#[utoipa::path(
    get,
    operation_id = "list_mfa_pairs",
    path = "/api/v1/mfa",
    tag = "2fa",
    params(PairsQuery),
    responses(
        (status = 200, body = Pairs),
        (status = 400, body = ErrorBody, description = "Unknown status"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "Not one of the token's sites"),
    )
)]
pub async fn pairs(
    State(console): State<Console>,
    Token(viewer, _): Token<DevicesP>,
    Query(q): Query<PairsQuery>,
) -> Result<Json<Pairs>, ApiError> {
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            [MfaStatus::Fresh, MfaStatus::DueSoon, MfaStatus::Stale]
                .into_iter()
                .find(|s| s.as_str() == text)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "status: '{text}' is not fresh, due_soon or stale"
                    ))
                })?,
        ),
    };
    let mut pairs = Vec::new();
    for site in chosen_sites(&console, &viewer, q.site.as_deref()).await? {
        let filter = DeviceFilter {
            site: Some(site.id),
            ..DeviceFilter::default()
        };
        for p in console.store.mfa_pairs(&filter, status).await? {
            pairs.push(Pair {
                site: p.site,
                device_id: p.device_id.to_string(),
                hostname: p.hostname,
                account: p.account,
                status: p.status.as_str().to_owned(),
                last_mfa: p.last_mfa,
                expires_at: p.expires_at,
                last_session_at: p.last_session_at,
                as_of: p.as_of,
            });
        }
    }
    Ok(Json(Pairs {
        schema: "hallmonitor.mfa_pairs.v1",
        pairs,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompletionsRequest {
    completions: Vec<CompletionIn>,
}

/// One two-step sign-in.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompletionIn {
    /// The sender's id for the sign-in; repeats are ignored.
    #[serde(default)]
    id: String,
    /// Username or email.
    account: String,
    /// RFC 3339 with an offset.
    completed_at: String,
    #[serde(default)]
    method: String,
    /// Hall Monitor's device id, machine id or serial number …
    #[serde(default)]
    device_id: String,
    /// … or the device's hostname.
    #[serde(default)]
    hostname: String,
}

/// `hallmonitor.mfa_import.v1`
#[derive(Serialize, ToSchema)]
pub struct ImportReport {
    schema: &'static str,
    received: usize,
    new: u64,
    mapped: u64,
    /// Sign-ins whose device could not be found, by their index in the
    /// request.
    unmapped: Vec<Unmapped>,
}

#[derive(Serialize, ToSchema)]
pub struct Unmapped {
    index: u64,
    account: String,
    device: String,
}

/// Post two-step sign-ins (into the token's own site).
#[utoipa::path(
    post,
    operation_id = "post_mfa_completions",
    path = "/api/v1/mfa-completions",
    tag = "2fa",
    request_body = CompletionsRequest,
    responses(
        (status = 200, body = ImportReport),
        (status = 400, body = ErrorBody, description = "The body names the field at fault; nothing was stored"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    )
)]
pub async fn completions(
    State(console): State<Console>,
    Token(viewer, _): Token<DevicesP>,
    body: axum::body::Bytes,
) -> Result<Json<ImportReport>, ApiError> {
    let now = Timestamp::now();
    let site_id = *viewer
        .user
        .sites
        .first()
        .expect("a token always has its own site");
    let request: CompletionsRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("body: {e}")))?;
    let mut rows = Vec::with_capacity(request.completions.len());
    for (n, c) in request.completions.into_iter().enumerate() {
        let Ok(at) = c.completed_at.parse::<Timestamp>() else {
            return Err(ApiError::BadRequest(format!(
                "completions[{n}].completed_at: '{}' is not RFC 3339 with an offset",
                c.completed_at
            )));
        };
        if let Err(future) = check_completion_time(at, now) {
            return Err(ApiError::BadRequest(format!(
                "completions[{n}].completed_at: {future}"
            )));
        }
        if c.account.trim().is_empty() {
            return Err(ApiError::BadRequest(format!(
                "completions[{n}].account is empty"
            )));
        }
        let id = if c.id.is_empty() {
            format!("{}|{}|{}", c.account.to_lowercase(), at, c.method)
        } else {
            c.id
        };
        rows.push(SignIn {
            external_id: format!("site{}:{id}", site_id.0),
            at,
            account: c.account.trim().to_lowercase(),
            succeeded: true,
            multi_factor: true,
            method: c.method,
            device_id: c.device_id,
            device_name: c.hostname,
            line: n as u64,
        });
    }
    let received = rows.len();
    let site = console
        .store
        .sites()
        .await?
        .into_iter()
        .find(|s| s.id == site_id)
        .ok_or(ApiError::Unavailable)?;
    let report =
        crate::signins::import(&*console.store, &console.config, &site, rows, "api", now).await?;
    let _ = console
        .store
        .append_audit(AuditEntry {
            at: now,
            site: Some(site.id),
            actor: &viewer.actor,
            action: "mfa_completions_posted",
            target: &format!("site {}", site.name),
            detail: &format!("{received} received, {} new", report.new),
            address: &viewer.address,
        })
        .await;
    Ok(Json(ImportReport {
        schema: "hallmonitor.mfa_import.v1",
        received,
        new: report.new,
        mapped: report.mapped,
        unmapped: report
            .unmapped
            .into_iter()
            .map(|(index, account, device)| Unmapped {
                index,
                account,
                device,
            })
            .collect(),
    }))
}
