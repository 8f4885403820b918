//! The flags queue: list the token's sites' flags, and approve a disable,
//! dismiss (with a reason) or re-enable, with the same checks and audit
//! rows as the console (`console::flags::act_on_flag`).

use axum::Json;
use axum::extract::{Path, Query, State};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::token::Token;
use super::{ApiError, ErrorBody};
use crate::console::Console;
use crate::console::access::FlagsP;
use crate::flags::{FlagAction, FlagRecord, FlagState};
use crate::store::DeviceFilter;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// active (default: open, disable_approved, disabled), all, or one
    /// state: open, disable_approved, disabled, reenabled, dismissed.
    state: Option<String>,
}

/// `hallmonitor.flags.v1`
#[derive(Serialize, ToSchema)]
pub struct FlagList {
    schema: &'static str,
    flags: Vec<Flag>,
}

#[derive(Serialize, ToSchema)]
pub struct Flag {
    id: i64,
    site: String,
    device_id: String,
    hostname: String,
    /// device_inactive or mfa_stale.
    kind: String,
    /// The staff account of an mfa_stale flag; empty otherwise.
    account: String,
    /// open, disable_approved, disabled, reenabled or dismissed.
    state: String,
    opened_at: Timestamp,
    updated_at: Timestamp,
    summary: String,
}

fn flag_out(f: FlagRecord) -> Flag {
    Flag {
        id: f.id,
        site: f.site,
        device_id: f.device_id.to_string(),
        hostname: f.hostname,
        kind: f.kind.as_str().to_owned(),
        account: f.account,
        state: f.state.as_str().to_owned(),
        opened_at: f.opened_at,
        updated_at: f.updated_at,
        summary: f.summary,
    }
}

/// Flags of the token's sites, oldest first.
#[utoipa::path(
    get,
    operation_id = "list_flags",
    path = "/api/v1/flags",
    tag = "flags",
    params(ListQuery),
    responses(
        (status = 200, body = FlagList),
        (status = 400, body = ErrorBody, description = "Unknown state"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    )
)]
pub async fn list(
    State(console): State<Console>,
    Token(viewer, _): Token<FlagsP>,
    Query(q): Query<ListQuery>,
) -> Result<Json<FlagList>, ApiError> {
    let (state, only_active) = match q.state.as_deref() {
        None | Some("") | Some("active") => (None, true),
        Some("all") => (None, false),
        Some(text) => (
            Some(FlagState::parse(text).ok_or_else(|| {
                ApiError::BadRequest(format!("state: '{text}' is not a flag state"))
            })?),
            false,
        ),
    };
    let flags = console
        .store
        .list_flags(&DeviceFilter::default(), state)
        .await?
        .into_iter()
        .filter(|f| viewer.sees(f.site_id) && (!only_active || f.state.is_active()))
        .map(flag_out)
        .collect();
    Ok(Json(FlagList {
        schema: "hallmonitor.flags.v1",
        flags,
    }))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// Why (required to dismiss).
    #[serde(default)]
    reason: String,
}

/// Approve a disable, dismiss, or re-enable a flag.
#[utoipa::path(
    post,
    operation_id = "act_on_flag",
    path = "/api/v1/flags/{id}/{action}",
    tag = "flags",
    params(
        ("id" = i64, Path, description = "The flag id"),
        ("action" = String, Path, description = "approve, dismiss or reenable"),
    ),
    request_body(content = ActionRequest, description = "Optional; a reason is required to dismiss"),
    responses(
        (status = 200, body = Flag, description = "The flag after the action"),
        (status = 400, body = ErrorBody, description = "Unknown action or unreadable body"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "No such flag in the token's sites"),
        (status = 409, body = ErrorBody, description = "The flag's state does not allow the action"),
    )
)]
pub async fn act(
    State(console): State<Console>,
    Token(viewer, _): Token<FlagsP>,
    Path((id, action)): Path<(i64, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Flag>, ApiError> {
    let action = match action.as_str() {
        "approve" => FlagAction::Approve,
        "dismiss" => FlagAction::Dismiss,
        "reenable" => FlagAction::Reenable,
        other => {
            return Err(ApiError::BadRequest(format!(
                "action: '{other}' is not approve, dismiss or reenable"
            )));
        }
    };
    let request: ActionRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ActionRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("body: {e}")))?
    };
    match console.store.flag(id).await? {
        Some(flag) if viewer.sees(flag.site_id) => {}
        _ => return Err(ApiError::NotFound),
    }
    match crate::console::flags::act_on_flag(&console, &viewer, id, action, &request.reason)
        .await
        .map_err(|_| ApiError::Unavailable)?
    {
        Ok(flag) => Ok(Json(flag_out(flag))),
        Err(message) => Err(ApiError::Conflict(message)),
    }
}
