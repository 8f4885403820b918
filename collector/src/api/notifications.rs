//! What the collector sent to whom and whether it arrived, for the
//! token's sites. The subject of a capture's notification names the
//! incident's category, so only tokens that may read incidents (dsl) get
//! it; others see that there was one.

use axum::Json;
use axum::extract::{Query, State};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::token::Token;
use super::{ApiError, ErrorBody};
use crate::console::Console;
use crate::console::access::{DevicesP, Permission};
use crate::model::NotificationStatus;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this status: pending, sent, dead or digested.
    status: Option<String>,
    /// Only notifications after this id (for polling).
    after: Option<i64>,
}

/// `hallmonitor.notifications.v1`
#[derive(Serialize, ToSchema)]
pub struct NotificationList {
    schema: &'static str,
    /// Oldest first.
    notifications: Vec<NotificationOut>,
}

#[derive(Serialize, ToSchema)]
pub struct NotificationOut {
    id: i64,
    /// What it is about (device_inactive, mfa_stale, capture_severe,
    /// digest, test …).
    kind: String,
    /// email or webhook.
    channel: String,
    /// The email address or webhook URL.
    address: String,
    /// immediate or digest.
    timing: String,
    /// Withheld for a capture's notification unless the token is dsl.
    subject: String,
    /// pending, sent, dead or digested.
    status: String,
    attempts: i64,
    next_attempt_at: Timestamp,
    last_error: String,
    created_at: Timestamp,
    sent_at: Option<Timestamp>,
}

/// Notifications of the token's sites.
#[utoipa::path(
    get,
    operation_id = "list_notifications",
    path = "/api/v1/notifications",
    tag = "notifications",
    params(ListQuery),
    responses(
        (status = 200, body = NotificationList),
        (status = 400, body = ErrorBody, description = "Unknown status"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    )
)]
pub async fn list(
    State(console): State<Console>,
    Token(viewer, _): Token<DevicesP>,
    Query(q): Query<ListQuery>,
) -> Result<Json<NotificationList>, ApiError> {
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(text) => Some(NotificationStatus::parse(text).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "status: '{text}' is not {}",
                NotificationStatus::expected()
            ))
        })?),
    };
    let reads_incidents = viewer.can(Permission::Incidents);
    let after = q.after.unwrap_or(0);
    let notifications = console
        .store
        .list_notifications(status)
        .await?
        .into_iter()
        .filter(|n| n.id > after && viewer.sees(n.site))
        .map(|n| {
            let kind = kind_of(&n.payload);
            let subject = if kind == "capture_severe" && !reads_incidents {
                "(a capture's notification: shown to DSLs)".to_owned()
            } else {
                n.subject
            };
            NotificationOut {
                id: n.id,
                kind,
                channel: n.channel.to_string(),
                address: n.address,
                timing: n.timing.to_string(),
                subject,
                status: n.status.to_string(),
                attempts: n.attempts,
                next_attempt_at: n.next_attempt_at,
                last_error: n.last_error,
                created_at: n.created_at,
                sent_at: n.sent_at,
            }
        })
        .collect();
    Ok(Json(NotificationList {
        schema: "hallmonitor.notifications.v1",
        notifications,
    }))
}

/// The event kind a notification's payload records (`digest` for a
/// digest, which lists items instead).
fn kind_of(payload: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(payload).unwrap_or_default();
    match value.get("kind").and_then(|k| k.as_str()) {
        Some(kind) => kind.to_owned(),
        None if value.get("items").is_some() => "digest".to_owned(),
        None => String::new(),
    }
}
