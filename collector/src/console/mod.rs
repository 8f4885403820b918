//! The web console: server-rendered HTML (askama templates, checked at
//! compile time, in `collector/templates/`) served by the collector's HTTPS
//! server beside the JSON API. No JavaScript; one stylesheet embedded in
//! the binary under a name carrying its hash. Every response carries
//! strict security headers (`security_headers`). Every error becomes a
//! page through `Problem`; `frame_problems` gives it the signed-in
//! viewer's navigation (the router's fallback included).
//!
//! - `access`: roles, permissions and the extractors every handler takes.
//! - `login`: sign-in (password, then TOTP when set), throttling, sign-out,
//!   the account page (password, second factor).
//! - `pages`: what pages share (visible sites, local times) and the
//!   dashboard.
//! - `devices`: the devices list and one device's page.
//! - `flags`: flags, one flag, their actions (`act_on_flag`, also used by
//!   the JSON API).
//! - `incidents`: incidents, one incident, each capture's review (also
//!   used by the JSON API), closing, snapshots, the evidence zip (DSL
//!   only).
//! - `audit`: the audit log page.
//! - `users`: console accounts.
//! - `settings`: enrolment secrets, API tokens, recipients, notification
//!   routes (read only).
//! - `policy`: a site's suspicious-activity policy (edit, versions, diff).
//! - `thresholds`: a site's activity thresholds and evidence retention
//!   (over `collector.toml`'s).
//! - `report`: the annual review page and its PDF (every role; all a
//!   governor sees besides the dashboard), and the DSL's risk profile of
//!   an account or a device.
//! - `chart`: server-side SVG charts.
//!
//! Architecture invariant: the console reaches data only through the store
//! traits and the evidence store, and every snapshot or incident view and
//! every change it makes writes an audit row (`Console::audit`) with who,
//! what and from where.

pub mod access;
pub mod alerts;
pub mod audit;
pub mod aup;
pub mod chart;
pub mod devices;
pub mod exclusions;
pub mod flags;
pub mod incidents;
pub mod login;
pub mod mfa;
pub mod pages;
pub mod policy;
pub mod report;
pub mod settings;
#[cfg(test)]
mod test_support;
pub mod thresholds;
pub mod users;

use std::sync::{Arc, LazyLock};

use askama::Template;
use axum::Router;
use axum::handler::Handler;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use jiff::Timestamp;

use crate::config::CollectorConfig;
use crate::evidence::EvidenceStore;
use crate::model::SiteId;
use crate::store::{AuditEntry, Store};
use access::{Permission, Viewer};

/// What every console handler shares.
#[derive(Clone)]
pub struct Console {
    pub store: Arc<dyn Store>,
    pub config: Arc<CollectorConfig>,
    pub evidence: Option<Arc<EvidenceStore>>,
    /// When a throttled sign-in was last audited, per account and address.
    pub throttle_audits: Arc<std::sync::Mutex<std::collections::HashMap<String, Timestamp>>>,
}

impl Console {
    /// Appends an audit row for something a viewer saw or did.
    /// `site` is the site of the thing acted on (see `AuditEntry::site`);
    /// for what concerns the viewer's own account, `viewer.user.audit_site()`.
    pub async fn audit(
        &self,
        viewer: &Viewer,
        site: Option<SiteId>,
        action: &str,
        target: &str,
        detail: &str,
    ) -> crate::store::Result<()> {
        self.store
            .append_audit(AuditEntry {
                at: Timestamp::now(),
                site,
                actor: &viewer.actor,
                action,
                target,
                detail,
                address: &viewer.address,
            })
            .await
    }
}

/// The console's routes as a table: the router is built from it, and
/// tests walk it (`routes`), so no route can be missed by a check that
/// every role reaches only what it may.
struct RouteTable {
    router: Router<Console>,
    routes: Vec<(Method, String)>,
}

impl RouteTable {
    fn new() -> RouteTable {
        RouteTable {
            router: Router::new(),
            routes: Vec::new(),
        }
    }

    fn add(mut self, method: Method, path: &str, route: MethodRouter<Console>) -> RouteTable {
        self.routes.push((method, path.to_owned()));
        // Routes of one path merge, one method each.
        self.router = self.router.route(path, route);
        self
    }

    fn get<H: Handler<T, Console>, T: 'static>(self, path: &str, handler: H) -> RouteTable {
        self.add(Method::GET, path, get(handler))
    }

    fn post<H: Handler<T, Console>, T: 'static>(self, path: &str, handler: H) -> RouteTable {
        self.add(Method::POST, path, post(handler))
    }
}

fn route_table() -> RouteTable {
    RouteTable::new()
        .get("/", pages::dashboard)
        .get("/login", login::form)
        .post("/login", login::submit)
        .get("/login/second-factor", login::totp_form)
        .post("/login/second-factor", login::totp_submit)
        .post("/logout", login::logout)
        .post("/logout/everywhere", login::logout_everywhere)
        .get("/account", login::account)
        .post("/account/password", login::change_password)
        .post("/account/second-factor", login::set_up_totp)
        .get("/report", report::report)
        .get("/report/pdf", report::report_pdf)
        .get("/risk", report::risk_profile)
        .get("/devices", devices::devices)
        .get("/devices/{id}", devices::device)
        .get("/flags", flags::flags)
        .post("/flags", flags::flags_bulk)
        .get("/flags/{id}", flags::flag)
        .post("/flags/{id}", flags::flag_action)
        .get("/incidents", incidents::incidents)
        .get("/incidents/{id}", incidents::incident)
        .post("/incidents/{id}/close", incidents::incident_close)
        .post("/incidents/{id}/export", incidents::incident_export)
        .get(
            "/incidents/{id}/captures/{capture}/image",
            incidents::capture_image,
        )
        .post(
            "/incidents/{id}/captures/{capture}/review",
            incidents::capture_review,
        )
        .get("/audit", audit::audit)
        .get("/aup", aup::answers)
        .get("/settings/aup", aup::edit)
        .post("/settings/aup", aup::save)
        .get("/mfa", mfa::page_handler)
        .add(
            Method::POST,
            "/mfa/import",
            post(mfa::import).layer(axum::extract::DefaultBodyLimit::max(mfa::UPLOAD_LIMIT)),
        )
        .get("/settings", settings::page_handler)
        .post("/settings/secrets", settings::create_secret)
        .post("/settings/secrets/{id}/revoke", settings::revoke_secret)
        .get("/settings/policy", policy::page_handler)
        .post("/settings/policy", policy::save)
        .post("/settings/policy/reset", policy::reset)
        .post("/settings/policy/restore", policy::restore)
        .post(
            "/incidents/{id}/captures/{capture}/exclude",
            exclusions::exclude,
        )
        .post(
            "/incidents/{id}/exclusions/{exclusion}/undo",
            exclusions::undo,
        )
        .get("/settings/activity", thresholds::page_handler)
        .post("/settings/activity", thresholds::save)
        .post("/settings/activity/clear", thresholds::clear)
        .get("/settings/alerts", alerts::page_handler)
        .post("/settings/alerts", alerts::save)
        .post("/settings/alerts/clear", alerts::clear)
        .post("/settings/routes", settings::add_route)
        .post("/settings/routes/clear", settings::clear_routes)
        .post("/settings/routes/{id}/remove", settings::remove_route)
        .post("/settings/tokens", settings::create_token)
        .post("/settings/tokens/{id}/revoke", settings::revoke_token)
        .post("/settings/recipients", settings::add_recipient)
        .post(
            "/settings/recipients/{id}/remove",
            settings::remove_recipient,
        )
        .get("/users", users::users)
        .post("/users", users::user_add)
        .post("/users/{id}", users::user_change)
        .get(&STYLESHEET.path, stylesheet)
}

/// Every console route (method, path pattern), as the router has them.
pub fn routes() -> Vec<(Method, String)> {
    route_table().routes
}

/// The console's routes, merged into the API's router.
pub fn router(console: Console) -> Router {
    route_table()
        .router
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            console.clone(),
            frame_problems,
        ))
        .with_state(console)
}

/// Headers on every response of the API server: no framing, no inline
/// script or style, no referrer, HTTPS only.
pub async fn security_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // A state-changing request from another origin is refused before any
    // handler (the sign-in form included): defence in depth beside the
    // SameSite cookie and the CSRF token. Browsers send `Origin` with
    // every POST; scripts that send none are judged by their token.
    if request.method() != axum::http::Method::GET
        && request.method() != axum::http::Method::HEAD
        && !same_origin(request.headers())
    {
        let mut response = Problem::Forbidden.into_response();
        response.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; style-src 'self'"),
        );
        return response;
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let mut set = |name: header::HeaderName, value: &'static str| {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    };
    set(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'",
    );
    set(header::X_FRAME_OPTIONS, "DENY");
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::REFERRER_POLICY, "no-referrer");
    set(
        header::STRICT_TRANSPORT_SECURITY,
        "max-age=31536000; includeSubDomains",
    );
    set(header::CACHE_CONTROL, "no-store");
    response
}

/// Whether a request came from the console's own pages. Browsers say so
/// in `Sec-Fetch-Site`; with `Referrer-Policy: no-referrer` their `Origin`
/// on a form post is `null`, so `Origin` decides only when it names a
/// site and `Sec-Fetch-Site` is absent (older browsers).
fn same_origin(headers: &axum::http::HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    if origin.as_bytes() == b"null" {
        return true;
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    origin
        .to_str()
        .ok()
        .and_then(|o| o.strip_prefix("https://"))
        .is_some_and(|o| o.eq_ignore_ascii_case(host))
}

/// The stylesheet, embedded, under a name that changes with its content.
pub struct Asset {
    pub path: String,
    pub body: &'static str,
}

pub static STYLESHEET: LazyLock<Asset> = LazyLock::new(|| {
    let body = include_str!("../../assets/console.css");
    let hash = crate::pki::sha256_hex(body.as_bytes());
    Asset {
        path: format!("/assets/console-{}.css", &hash[..12]),
        body,
    }
});

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        STYLESHEET.body,
    )
        .into_response()
}

/// What every page's frame (header, navigation) needs.
pub struct Frame {
    pub title: String,
    pub stylesheet: &'static str,
    pub user: String,
    pub role: String,
    pub csrf: String,
    pub nav: Vec<NavLink>,
}

pub struct NavLink {
    pub href: &'static str,
    pub label: &'static str,
    pub current: bool,
}

impl Frame {
    pub fn new(viewer: &Viewer, title: impl Into<String>, here: &str) -> Frame {
        let links: [(&str, &str, Permission); 13] = [
            ("/", "Dashboard", Permission::Reports),
            ("/report", "Annual review", Permission::Reports),
            ("/devices", "Devices", Permission::Devices),
            ("/flags", "Flags", Permission::Flags),
            ("/mfa", "Two-step sign-in", Permission::Devices),
            ("/incidents", "Incidents", Permission::Incidents),
            ("/settings", "Settings", Permission::Settings),
            ("/settings/policy", "Site policy", Permission::Policies),
            ("/settings/alerts", "Capture alerts", Permission::Policies),
            (
                "/settings/aup",
                "Acceptable-use policy",
                Permission::Settings,
            ),
            ("/aup", "Acceptable-use answers", Permission::Devices),
            ("/audit", "Audit log", Permission::Audit),
            ("/users", "Users", Permission::Users),
        ];
        Frame {
            title: title.into(),
            stylesheet: &STYLESHEET.path,
            user: viewer.name().to_owned(),
            role: viewer.user.role.to_string(),
            csrf: viewer.csrf_token.clone(),
            nav: links
                .into_iter()
                .filter(|(_, _, p)| viewer.can(*p))
                .map(|(href, label, _)| NavLink {
                    href,
                    label,
                    current: href == here,
                })
                .collect(),
        }
    }

    /// For pages shown before sign-in.
    pub fn anonymous(title: impl Into<String>) -> Frame {
        Frame {
            title: title.into(),
            stylesheet: &STYLESHEET.path,
            user: String::new(),
            role: String::new(),
            csrf: String::new(),
            nav: Vec::new(),
        }
    }
}

/// Renders a template, or the error page when it cannot be.
pub fn page(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "console: rendering a page failed");
            Problem::Internal.into_response()
        }
    }
}

/// A page re-shown with a form's error beside the field: 422 then.
pub fn with_form_error(mut response: Response, error: &str) -> Response {
    if !error.is_empty() {
        *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    response
}

/// An error page: no stack traces, no internals. Every console error
/// becomes a page here; the anonymous frame is filled in with the
/// viewer's navigation by `frame_problems` when the request's session is
/// valid.
pub enum Problem {
    NotFound,
    Forbidden,
    BadRequest(String),
    Internal,
}

#[derive(Template)]
#[template(path = "problem.html")]
struct ProblemPage {
    frame: Frame,
    message: String,
}

/// What an error page says, kept on its response so `frame_problems` can
/// render it again with the viewer's navigation.
#[derive(Clone)]
struct ShownProblem {
    heading: &'static str,
    message: String,
}

impl ShownProblem {
    fn render(&self, frame: Frame) -> String {
        ProblemPage {
            frame,
            message: self.message.clone(),
        }
        .render()
        .unwrap_or_else(|_| self.heading.to_owned())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let (status, heading, message) = match self {
            Problem::NotFound => (
                StatusCode::NOT_FOUND,
                "Page not found",
                "There is no page at this address.".to_owned(),
            ),
            Problem::Forbidden => (
                StatusCode::FORBIDDEN,
                "Not allowed",
                "Your account's role does not allow this page or action. Ask an administrator if you need it.".to_owned(),
            ),
            Problem::BadRequest(message) => (StatusCode::BAD_REQUEST, "Request refused", message),
            Problem::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "The collector could not complete this request. It has been logged; try again, or tell your technician.".to_owned(),
            ),
        };
        let shown = ShownProblem { heading, message };
        let body = shown.render(Frame::anonymous(heading));
        let mut response = (status, Html(body)).into_response();
        response.extensions_mut().insert(shown);
        response
    }
}

/// Gives an error page (any `Problem`, the router's fallback included)
/// the signed-in viewer's navigation and sign-out form. Only error pages
/// pay for the session lookup, which is read only (`Viewer::peek`); a
/// missing, invalid or half-verified session keeps the anonymous page.
async fn frame_problems(
    axum::extract::State(console): axum::extract::State<Console>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = request.headers().clone();
    let address = access::address_of(request.extensions());
    let response = next.run(request).await;
    let Some(shown) = response.extensions().get::<ShownProblem>().cloned() else {
        return response;
    };
    let Some(viewer) = Viewer::peek(&console, &headers, address).await else {
        return response;
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = shown.render(Frame::new(&viewer, shown.heading, ""));
    Response::from_parts(parts, axum::body::Body::from(body))
}

impl From<crate::store::StoreError> for Problem {
    fn from(e: crate::store::StoreError) -> Problem {
        tracing::warn!(error = %e, "console: store error");
        Problem::Internal
    }
}

async fn not_found() -> Problem {
    Problem::NotFound
}
