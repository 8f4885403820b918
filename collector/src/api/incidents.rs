//! Incidents and their captures' metadata and review, for dsl tokens only
//! (the role matrix's `Incidents` permission), and a capture's review
//! (`console::incidents::review_capture`, as the console's form). Like the
//! console, every listing and every incident read is written to the audit
//! log before the data is returned, every review after it is applied.
//! Images are not served here: the console shows them.

use axum::Json;
use axum::extract::{Path, Query, State};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::token::Token;
use super::{ApiError, ErrorBody, chosen_sites};
use crate::console::Console;
use crate::console::access::IncidentsP;
use crate::console::incidents::{Reviewed, review_capture};
use crate::model::{CaptureRow, IncidentRecord};
use crate::review::{CaptureStatus, Change, Grade, HistoryEntry, ReviewError, ReviewRequest};
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
    /// Captures nobody has reviewed yet (status new).
    unreviewed_captures: i64,
    /// Captures not closed (new or triaged).
    open_captures: i64,
    /// When the oldest unreviewed capture was taken.
    oldest_unreviewed_at: Option<Timestamp>,
    /// Every capture held is closed by the DSL (apart from the incident's
    /// own open or closed status).
    reviewed: bool,
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
        unreviewed_captures: i.review.unreviewed,
        open_captures: i.review.open,
        oldest_unreviewed_at: i.review.oldest_unreviewed_at,
        reviewed: i.reviewed,
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
    /// Every review step on its captures, oldest first.
    history: Vec<ReviewStep>,
}

/// One step of a capture's review: a status change, a regrade or a note.
#[derive(Serialize, ToSchema)]
pub struct ReviewStep {
    capture_id: i64,
    at: Timestamp,
    /// `console:NAME`, `api-token:ID` or `cli:…`.
    actor: String,
    /// status, grade or note.
    kind: String,
    /// The status or grade before (empty for a note).
    from: String,
    /// The status or grade after (empty for a note).
    to: String,
    /// The outcome of a closing, or the note.
    text: String,
    /// The school's record reference given with a closing.
    reference: String,
}

fn step_out(h: HistoryEntry) -> ReviewStep {
    let (kind, from, to, text, reference) = match h.change {
        Change::Status {
            from,
            to,
            outcome,
            reference,
        } => (
            "status",
            from.as_str().to_owned(),
            to.as_str().to_owned(),
            outcome,
            reference,
        ),
        Change::Grade { from, to } => (
            "grade",
            from.to_string(),
            to.to_string(),
            "".into(),
            "".into(),
        ),
        Change::Note { text } => ("note", String::new(), String::new(), text, String::new()),
    };
    ReviewStep {
        capture_id: h.capture_id,
        at: h.at,
        actor: h.actor,
        kind: kind.to_owned(),
        from,
        to,
        text,
        reference,
    }
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
    /// Where the DSL's review stands.
    review_status: CaptureStatus,
    /// The DSL's grade 1–5; null while the rule's severity (`severity`,
    /// the pregrade) stands.
    grade: Option<i64>,
    /// The outcome recorded when it was closed.
    outcome: String,
    /// The school's own record (MyConcern, CPOMS).
    outcome_reference: String,
    /// Its first move out of new.
    first_reviewed_at: Option<Timestamp>,
    /// From capture to first review, in milliseconds.
    first_review_ms: Option<i64>,
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
        review_status: c.review.status,
        grade: c.review.grade,
        outcome: c.review.outcome,
        outcome_reference: c.review.reference,
        first_reviewed_at: c.review.first_reviewed_at,
        first_review_ms: c.review.first_review_ms,
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
    let history = console.store.incident_history(id).await?;
    Ok(Json(IncidentDetail {
        schema: "hallmonitor.incident.v1",
        incident: incident_out(incident),
        captures: captures.into_iter().map(capture_out).collect(),
        history: history.into_iter().map(step_out).collect(),
    }))
}

/// A DSL's review of one capture: every part optional, at least one
/// change needed.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ReviewBody {
    /// The new status: triaged, or one of the four closing ones
    /// (false_positive, no_concern, concern, escalated: an outcome is then
    /// required); a closed capture can be reopened to triaged.
    #[serde(default)]
    status: Option<CaptureStatus>,
    /// A new grade, 1 to 5 (the rule's severity stays recorded).
    #[serde(default)]
    grade: Option<i64>,
    /// What was decided and done (closing only).
    #[serde(default)]
    outcome: String,
    /// The school's own record (closing only).
    #[serde(default)]
    reference: String,
    #[serde(default)]
    note: String,
}

/// Review a capture: move its status, regrade it, add a note (dsl tokens).
#[utoipa::path(
    post,
    operation_id = "review_capture",
    path = "/api/v1/captures/{id}/review",
    tag = "incidents",
    params(("id" = i64, Path, description = "The capture id")),
    request_body(content = ReviewBody),
    responses(
        (status = 200, body = Capture, description = "The capture after the review"),
        (status = 400, body = ErrorBody, description = "Unreadable body, a grade out of range, a missing outcome, or nothing to record"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "Not a dsl token"),
        (status = 404, body = ErrorBody, description = "No such capture in the token's sites"),
        (status = 409, body = ErrorBody, description = "The capture's status does not allow the change"),
    )
)]
pub async fn review(
    State(console): State<Console>,
    Token(viewer, _): Token<IncidentsP>,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> Result<Json<Capture>, ApiError> {
    let body: ReviewBody =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("body: {e}")))?;
    let grade = body
        .grade
        .map(Grade::new)
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("grade: {e}")))?;
    let request = ReviewRequest {
        status: body.status,
        grade,
        outcome: body.outcome,
        reference: body.reference,
        note: body.note,
    };
    let incident = match review_capture(&console, &viewer, id, &request)
        .await
        .map_err(|_| ApiError::Unavailable)?
    {
        Reviewed::Done(incident) => incident,
        Reviewed::Refused(ReviewError::NotFound(_)) => return Err(ApiError::NotFound),
        Reviewed::Refused(e @ ReviewError::NotAllowed { .. }) => {
            return Err(ApiError::Conflict(e.to_string()));
        }
        Reviewed::Refused(e) => return Err(ApiError::BadRequest(e.to_string())),
    };
    let Some((_, captures, _)) = console.store.incident(incident).await? else {
        return Err(ApiError::NotFound);
    };
    captures
        .into_iter()
        .find(|c| c.id == id)
        .map(|c| Json(capture_out(c)))
        .ok_or(ApiError::NotFound)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use jiff::Timestamp;
    use serde_json::{Value, json};
    use tower::ServiceExt;

    use crate::model::{CaptureRecord, ConsoleRole, Event, EventBody, Seq};
    use crate::store::sqlite::testing::store_with_device;
    use crate::store::{ApiTokenStore, DeviceFilter, IncidentStore, IngestStore, NewApiToken};

    fn capture() -> CaptureRecord {
        CaptureRecord {
            rule_id: "drugs-1".into(),
            category: "drugs".into(),
            severity: 2,
            matched_text: "buy weed".into(),
            window_title: "buy weed".into(),
            process_name: "firefox".into(),
            account: "pupil1".into(),
            image_sha256: String::new(),
            image_status: "no_image".into(),
            no_image_reason: "test".into(),
            repeat_count: 0,
            kind: "snapshot".into(),
            file_path: String::new(),
            file_sha256: String::new(),
            policy_version: 0,
            image: Vec::new(),
            context: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_dsl_token_reviews_a_capture_and_others_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let now = Timestamp::now();
        let (store, site, device) = store_with_device(dir.path(), now).await;
        let event = Event {
            seq: Seq(1),
            event_id: "e1".into(),
            occurred_at: now,
            body: EventBody::Capture(capture()),
        };
        store.record_batch(&device, &[event], now).await.unwrap();
        let incident = store
            .list_incidents(&DeviceFilter::default(), None)
            .await
            .unwrap()[0]
            .id;
        let capture_id = store.incident(incident).await.unwrap().unwrap().1[0].id;
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
        let call = |token: &'static str, path: String, body: Value| {
            let app = app.clone();
            async move {
                let response = app
                    .oneshot(
                        Request::post(path)
                            .header(header::AUTHORIZATION, format!("Bearer {token}"))
                            .header(header::CONTENT_TYPE, "application/json")
                            .body(Body::from(body.to_string()))
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                let status = response.status();
                let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                    .await
                    .unwrap();
                (
                    status,
                    serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
                )
            }
        };
        let path = format!("/api/v1/captures/{capture_id}/review");

        let (status, _) = call("hmapi_tech", path.clone(), json!({"status": "triaged"})).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, body) = call("hmapi_dsl", path.clone(), json!({"status": "concern"})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (status, _) = call("hmapi_dsl", path.clone(), json!({"grade": 6})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = call("hmapi_dsl", path.clone(), json!({"colour": "red"})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "unknown fields refused");
        let (status, _) = call(
            "hmapi_dsl",
            format!("/api/v1/captures/{}/review", capture_id + 1),
            json!({"status": "triaged"}),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        let (status, body) = call(
            "hmapi_dsl",
            path.clone(),
            json!({"status": "concern", "grade": 4, "outcome": "form tutor told", "reference": "MC-12"}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["review_status"], "concern");
        assert_eq!(body["grade"], 4);
        assert_eq!(body["severity"], 2, "the pregrade");
        assert_eq!(body["outcome_reference"], "MC-12");
        let (status, body) = call(
            "hmapi_dsl",
            path,
            json!({"status": "escalated", "outcome": "x"}),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::CONFLICT,
            "closed: only reopening: {body}"
        );
    }
}
