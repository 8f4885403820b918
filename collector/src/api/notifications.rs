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
use crate::model::{Channel, NotificationStatus};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this status: pending, sent, dead or digested.
    status: Option<String>,
    /// Only notifications after this id (for polling).
    after: Option<i64>,
    /// At most this many, 1 to 1,000 (default 500).
    limit: Option<usize>,
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
    /// capture_instant, capture_threshold, digest, test …).
    kind: String,
    /// email or webhook.
    channel: String,
    /// The email address, or the webhook's host (its URL often carries a
    /// credential, so it is not shown).
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
    let limit = q.limit.unwrap_or(500);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit: {limit} is not between 1 and 1000"
        )));
    }
    let notifications = console
        .store
        .list_notifications(status)
        .await?
        .into_iter()
        .filter(|n| n.id > after && viewer.sees(n.site))
        .take(limit)
        .map(|n| {
            let kind = kind_of(&n.payload);
            // capture_severe, capture_instant, capture_threshold.
            let subject = if kind.starts_with("capture_") && !reads_incidents {
                "(a capture's notification: shown to DSLs)".to_owned()
            } else {
                n.subject
            };
            NotificationOut {
                id: n.id,
                kind,
                channel: n.channel.to_string(),
                address: match n.channel {
                    Channel::Webhook => without_urls(&n.address),
                    _ => n.address,
                },
                timing: n.timing.to_string(),
                subject,
                status: n.status.to_string(),
                attempts: n.attempts,
                next_attempt_at: n.next_attempt_at,
                last_error: without_urls(&n.last_error),
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

/// `text` with every URL cut to its scheme and host (a webhook's path and
/// query often carry its secret).
fn without_urls(text: &str) -> String {
    text.split(' ')
        .map(|word| match word.split_once("://") {
            Some((scheme, rest)) => {
                let host = rest.split(['/', '?', '#']).next().unwrap_or("");
                let host = host.rsplit('@').next().unwrap_or(host);
                format!("{scheme}://{host}/…")
            }
            None => word.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn webhook_urls_lose_their_path_and_credentials() {
        for (text, want) in [
            (
                "https://hooks.example/services/T0/B0/secret",
                "https://hooks.example/…",
            ),
            (
                "POST https://user:pw@hooks.example/x?token=1 failed: 500",
                "POST https://hooks.example/… failed: 500",
            ),
            ("connection refused", "connection refused"),
        ] {
            assert_eq!(super::without_urls(text), want, "{text}");
        }
    }

    /// Every capture alert's subject (severe, instant, threshold) is for
    /// DSLs: a technician's token sees that one exists, not what it says.
    #[tokio::test]
    async fn capture_alert_subjects_are_withheld_from_technicians() {
        use std::sync::Arc;

        use axum::body::Body;
        use axum::http::{Request, header};
        use tower::ServiceExt;

        use crate::model::{Channel, ConsoleRole, Timing};
        use crate::store::{ApiTokenStore, NewApiToken, NewNotification, NotificationStore};

        let dir = tempfile::tempdir().unwrap();
        let now = jiff::Timestamp::now();
        let (store, site, _) =
            crate::store::sqlite::testing::store_with_device(dir.path(), now).await;
        let kinds = [
            "capture_severe",
            "capture_instant",
            "capture_threshold",
            "tamper",
        ];
        let messages: Vec<NewNotification> = kinds
            .iter()
            .map(|kind| NewNotification {
                site: site.id,
                channel: Channel::Email,
                address: format!("{kind}@cabot.sch.uk"),
                webhook_format: "json".into(),
                webhook_secret: String::new(),
                timing: Timing::Immediate,
                subject: format!("subject of {kind}"),
                body: String::new(),
                payload: serde_json::json!({ "kind": kind }).to_string(),
            })
            .collect();
        store
            .queue_notifications(None, &messages, now)
            .await
            .unwrap();
        for (token, role) in [
            ("hmapi_dsl", ConsoleRole::Dsl),
            ("hmapi_tech", ConsoleRole::Technician),
        ] {
            store
                .create_api_token(
                    NewApiToken {
                        site: site.id,
                        token_sha256: &crate::auth::secret_digest(token),
                        label: token,
                        role,
                        all_sites: false,
                        created_by: None,
                    },
                    now,
                )
                .await
                .unwrap();
        }
        let app = crate::api::router(Arc::new(store), Arc::new(Default::default()), None);
        for (token, shown) in [("hmapi_dsl", 4), ("hmapi_tech", 1)] {
            let response = app
                .clone()
                .oneshot(
                    Request::get("/api/v1/notifications")
                        .header(header::AUTHORIZATION, format!("Bearer {token}"))
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            let text = String::from_utf8(bytes.to_vec()).unwrap();
            assert_eq!(text.matches("subject of").count(), shown, "{token}: {text}");
        }
    }
}
