use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use jiff::{SignedDuration, Timestamp};
use tower::ServiceExt;

use super::*;
use crate::console::access::{COOKIE, token_digest};
use crate::model::{CaptureRecord, ConsoleRole, Event, EventBody, Seq, SiteId};
use crate::store::sqlite::testing::store_with_device;
use crate::store::{
    ApiTokenStore, AuditQuery, AuditSites, ConsoleStore, IncidentStore, IngestStore, NewApiToken,
    NewConsoleUser, SqliteStore,
};

async fn session(store: &SqliteStore, name: &str, role: ConsoleRole, site: SiteId) {
    let user = store
        .create_console_user(
            NewConsoleUser {
                username: name,
                password_hash: "not used",
                role,
                sites: Some(vec![site]),
            },
            Timestamp::now(),
        )
        .await
        .unwrap();
    let token = format!("{name}-token");
    store
        .create_console_session(
            &token_digest(&token),
            user,
            &token,
            true,
            "192.0.2.9",
            Timestamp::now(),
        )
        .await
        .unwrap();
}

fn get(path: &str, who: &str) -> Request<Body> {
    Request::get(path)
        .header(header::COOKIE, format!("{COOKIE}={who}-token"))
        .body(Body::empty())
        .unwrap()
}

async fn body(response: axum::response::Response) -> Vec<u8> {
    axum::body::to_bytes(response.into_body(), 1 << 22)
        .await
        .unwrap()
        .to_vec()
}

fn capture(seq: u64, at: Timestamp, account: &str, category: &str) -> Event {
    Event {
        seq: Seq(seq),
        event_id: format!("e{seq}"),
        occurred_at: at,
        body: EventBody::Capture(CaptureRecord {
            rule_id: format!("{category}-1"),
            category: category.into(),
            severity: 4,
            matched_text: "secret words".into(),
            window_title: "secret words - Chromium".into(),
            process_name: "chromium".into(),
            account: account.into(),
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
        }),
    }
}

/// A site with a device, two pupils' captures, and a governor, a DSL and
/// a technician signed in; a governor API token `hmapi_gov`.
async fn school(dir: &std::path::Path) -> (Arc<SqliteStore>, SiteId, axum::Router) {
    let now = Timestamp::now();
    let (store, site, device) =
        store_with_device(dir, now - SignedDuration::from_hours(24 * 30)).await;
    let hour = SignedDuration::from_hours(1);
    store
        .record_batch(
            &device,
            &[
                capture(1, now - 50 * hour, "pupil-amy", "bullying"),
                capture(2, now - 49 * hour, "pupil-amy", "bullying"),
                capture(3, now - 5 * hour, "pupil-ben", "weapons"),
            ],
            now,
        )
        .await
        .unwrap();
    for (name, role) in [
        ("gov1", ConsoleRole::Governor),
        ("dsl1", ConsoleRole::Dsl),
        ("tech1", ConsoleRole::Technician),
    ] {
        session(&store, name, role, site.id).await;
    }
    store
        .create_api_token(
            NewApiToken {
                site: site.id,
                token_sha256: &crate::auth::secret_digest("hmapi_gov"),
                label: "governor",
                role: ConsoleRole::Governor,
                all_sites: false,
                created_by: None,
            },
            now,
        )
        .await
        .unwrap();
    let store = Arc::new(store);
    let app = crate::api::router(store.clone(), Arc::new(Default::default()), None);
    (store, site.id, app)
}

async fn audit_actions(store: &SqliteStore) -> Vec<(String, String, String)> {
    store
        .audit_entries(&AuditQuery {
            sites: AuditSites::All,
            actor: String::new(),
            action: String::new(),
            before: None,
            limit: 100,
        })
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.actor, r.action, r.target))
        .collect()
}

/// The routes a governor may reach: their own account, signing in and
/// out, and the aggregate pages. Nothing here shows a pupil.
const GOVERNOR_MAY: &[&str] = &[
    "/",
    "/report",
    "/report/pdf",
    "/login",
    "/login/second-factor",
    "/logout",
    "/logout/everywhere",
    "/account",
    "/account/password",
    "/account/second-factor",
];

#[tokio::test]
async fn a_governor_reaches_no_other_console_or_api_route() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, _, app) = school(dir.path()).await;
    let console_routes = crate::console::routes();
    assert!(console_routes.len() > 40, "the table has every route");
    let mut checked = 0;
    for (method, pattern) in &console_routes {
        if GOVERNOR_MAY.contains(&pattern.as_str()) || pattern.starts_with("/assets/") {
            continue;
        }
        // Every path parameter made concrete: a device id, else 1.
        let mut path = pattern.replace("/devices/{id}", "/devices/dev-1");
        while let (Some(open), Some(close)) = (path.find('{'), path.find('}')) {
            path.replace_range(open..=close, "1");
        }
        let request = Request::builder()
            .method(method.clone())
            .uri(&path)
            .header(header::COOKIE, format!("{COOKIE}=gov1-token"))
            .header("sec-fetch-site", "same-origin")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from("csrf=gov1-token"))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::FORBIDDEN,
            "{method} {path} for a governor"
        );
        checked += 1;
    }
    for (method, pattern) in crate::api::routes() {
        if pattern == "/api/v1/openapi.json" {
            continue;
        }
        let path = pattern
            .replace("{id}", "dev-1")
            .replace("{capture}", "1")
            .replace(['{', '}'], "");
        let request = Request::builder()
            .method(method.clone())
            .uri(&path)
            .header(header::AUTHORIZATION, "Bearer hmapi_gov")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{}"))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::FORBIDDEN,
            "{method} {path} for a governor token"
        );
        checked += 1;
    }
    assert!(checked > 40, "{checked} routes checked");
}

#[tokio::test]
async fn the_review_page_and_pdf_for_a_governor_are_counts_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let (store, site, app) = school(dir.path()).await;

    let response = app.clone().oneshot(get("/report", "gov1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let html = String::from_utf8(body(response).await).unwrap();
    assert!(html.contains("Monitoring review"), "{html}");
    assert!(
        html.contains(r#"<strong id="pupils-affected">2</strong>"#),
        "{html}"
    );
    assert!(html.contains("<caption>Captures by category</caption>"));
    assert!(html.contains("href=\"/report\" aria-current=\"page\""));
    for secret in ["pupil-amy", "pupil-ben", "secret words"] {
        assert!(!html.contains(secret), "{secret} on the governor's page");
    }
    // The governor's navigation offers only what they may open.
    assert!(!html.contains("href=\"/incidents\""));
    assert!(!html.contains("href=\"/devices\""));

    let response = app
        .clone()
        .oneshot(get(&format!("/report/pdf?site={}", site.0), "gov1"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/pdf");
    assert!(
        response.headers()[header::CONTENT_DISPOSITION]
            .to_str()
            .unwrap()
            .starts_with("attachment; filename=\"monitoring-review-")
    );
    let pdf = body(response).await;
    assert!(pdf.starts_with(b"%PDF-"));
    let text = String::from_utf8_lossy(&pdf);
    assert!(!text.contains("pupil-amy"));

    let audit = audit_actions(&store).await;
    for action in ["report_viewed", "report_downloaded"] {
        assert!(
            audit
                .iter()
                .any(|(actor, a, target)| actor == "console:gov1"
                    && a == action
                    && target == "report Cabot"),
            "{action}: {audit:?}"
        );
    }

    // A period the wrong way round, or another site, is refused.
    let response = app
        .clone()
        .oneshot(get("/report?from=2026-02-01&to=2026-01-01", "gov1"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = app
        .clone()
        .oneshot(get(&format!("/report?site={}", site.0 + 1), "gov1"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_risk_profile_is_the_dsls_alone_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let (store, site, app) = school(dir.path()).await;
    let link = risk_link(site, Some("pupil-amy"), None);

    for who in ["gov1", "tech1"] {
        let response = app.clone().oneshot(get(&link, who)).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{who}");
    }
    let response = app.clone().oneshot(get(&link, "dsl1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let html = String::from_utf8(body(response).await).unwrap();
    assert!(
        html.contains(r#"<p id="risk-total">Captures in the period: 2</p>"#),
        "{html}"
    );
    assert!(html.contains("<caption>Captures by rule and hour of day</caption>"));
    assert!(
        html.contains("<th scope=\"row\">bullying-1 (bullying)</th>"),
        "{html}"
    );
    assert!(
        !html.contains("weapons-1"),
        "another pupil's captures: {html}"
    );
    assert!(
        html.contains("href=\"/incidents/"),
        "the open incident is linked"
    );

    let by_device = risk_link(site, None, Some("dev-1"));
    let response = app.clone().oneshot(get(&by_device, "dsl1")).await.unwrap();
    let html = String::from_utf8(body(response).await).unwrap();
    assert!(
        html.contains(r#"<p id="risk-total">Captures in the period: 3</p>"#),
        "{html}"
    );

    let audit = audit_actions(&store).await;
    for target in ["account pupil-amy", "device dev-1"] {
        assert!(
            audit.iter().any(|(actor, a, t)| actor == "console:dsl1"
                && a == "risk_profile_viewed"
                && t == target),
            "{target}: {audit:?}"
        );
    }
    let response = app.clone().oneshot(get("/risk", "dsl1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // The incident and device pages link to it.
    let incident = store
        .list_incidents(&Default::default(), None)
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.account == "pupil-amy")
        .unwrap();
    let response = app
        .clone()
        .oneshot(get(&format!("/incidents/{}", incident.id), "dsl1"))
        .await
        .unwrap();
    let html = String::from_utf8(body(response).await).unwrap();
    assert!(
        html.contains(&format!("href=\"{}\"", link.replace('&', "&#38;"))),
        "{html}"
    );
    let response = app
        .clone()
        .oneshot(get("/devices/dev-1", "dsl1"))
        .await
        .unwrap();
    let html = String::from_utf8(body(response).await).unwrap();
    assert!(html.contains("id=\"risk-profile\""), "{html}");
    let response = app
        .clone()
        .oneshot(get("/devices/dev-1", "tech1"))
        .await
        .unwrap();
    let html = String::from_utf8(body(response).await).unwrap();
    assert!(
        !html.contains("id=\"risk-profile\""),
        "not offered to a technician"
    );
}

#[test]
fn periods_from_the_form() {
    let london = TimeZone::get("Europe/London").unwrap();
    let now: Timestamp = "2026-07-01T12:00:00Z".parse().unwrap();
    // (name, from, to, want from, want to)
    let table = [
        (
            "default: the 365 days before now",
            "",
            "",
            Some(("2025-07-01T12:00:00Z", "2026-07-01T12:00:00Z")),
        ),
        (
            "both days included, in site time (BST)",
            "2026-06-01",
            "2026-06-30",
            Some(("2026-05-31T23:00:00Z", "2026-06-30T23:00:00Z")),
        ),
        ("backwards", "2026-06-30", "2026-06-01", None),
        ("not a date", "June", "", None),
    ];
    for (name, from, to, want) in table {
        let got = period_of(from, to, &london, now, 365);
        match want {
            Some((f, t)) => {
                let got = got.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(got.from, f.parse::<Timestamp>().unwrap(), "{name}");
                assert_eq!(got.to, t.parse::<Timestamp>().unwrap(), "{name}");
            }
            None => assert!(got.is_err(), "{name}: {got:?}"),
        }
    }
}
