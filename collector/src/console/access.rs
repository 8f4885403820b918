//! Who may do what, decided in one place. Every console page and action
//! takes an `Allowed<P>` (a signed-in, fully verified account whose role
//! grants permission `P`) or, for forms, a `Submit<P, T>` (the same plus a
//! checked CSRF token); a handler cannot be written without saying what
//! it needs. Site scoping is the account's `site_filter`, applied by the
//! queries (`DeviceQuery::sites`) and by `Viewer::sees`.
//!
//! Architecture invariant: no console handler reads the session cookie or
//! the role itself; they receive a `Viewer` from these extractors.

use std::marker::PhantomData;
use std::net::SocketAddr;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Redirect, Response};
use jiff::{SignedDuration, Timestamp};
use serde::de::DeserializeOwned;

use super::{Console, Problem};
use crate::model::{ConsoleRole, SiteId};
use crate::pki::sha256_hex;
use crate::store::{ConsoleSession, ConsoleUser};

/// The session cookie. `__Host-` makes browsers insist on Secure, Path=/
/// and no Domain.
pub const COOKIE: &str = "__Host-hm_session";
/// A session unused this long ends.
pub const IDLE_TIMEOUT: SignedDuration = SignedDuration::from_mins(30);
/// A session ends this long after sign-in, however busy.
pub const ABSOLUTE_TIMEOUT: SignedDuration = SignedDuration::from_hours(12);

/// What a role may see or do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// Aggregate figures per site (the dashboard).
    Reports,
    /// Devices, compliance, 2FA, agent health, the device pages.
    Devices,
    /// Approving, dismissing and re-enabling flags.
    Flags,
    /// Incidents, snapshots, matched text, evidence export.
    Incidents,
    /// Console accounts.
    Users,
    /// The audit log.
    Audit,
    /// Enrolment secrets, API tokens, notification recipients, activity
    /// thresholds and retention.
    Settings,
    /// Sites' suspicious-activity policies (issue 15: technicians manage
    /// them, and DSLs have what technicians have for their sites).
    Policies,
}

/// The role matrix (README "Console roles").
pub fn allows(role: ConsoleRole, permission: Permission) -> bool {
    use ConsoleRole::*;
    use Permission::*;
    match permission {
        Reports => true,
        Devices | Flags => matches!(role, Admin | Technician | Dsl),
        Incidents => role == Dsl,
        Users => role == Admin,
        Audit => matches!(role, Admin | Dsl),
        Settings => matches!(role, Admin | Technician),
        Policies => matches!(role, Admin | Technician | Dsl),
    }
}

const EVERY_PERMISSION: [Permission; 8] = [
    Permission::Reports,
    Permission::Devices,
    Permission::Flags,
    Permission::Incidents,
    Permission::Users,
    Permission::Audit,
    Permission::Settings,
    Permission::Policies,
];

/// Whether an account with role `granter` may give `role` to something
/// it makes (an API token): only when `role` allows nothing `granter`'s
/// role does not.
pub fn may_grant(granter: ConsoleRole, role: ConsoleRole) -> bool {
    EVERY_PERMISSION
        .iter()
        .all(|p| !allows(role, *p) || allows(granter, *p))
}

/// A permission as a type, for `Allowed<P>`.
pub trait Needs: Send + Sync + 'static {
    const PERMISSION: Permission;
    /// The largest form body a `Submit` of this permission reads.
    const FORM_LIMIT: usize = FORM_LIMIT;
}

macro_rules! needs {
    ($($name:ident => $permission:ident),+ $(,)?) => {
        $(
            pub struct $name;
            impl Needs for $name {
                const PERMISSION: Permission = Permission::$permission;
            }
        )+
    };
}

needs! {
    ReportsP => Reports,
    DevicesP => Devices,
    FlagsP => Flags,
    IncidentsP => Incidents,
    UsersP => Users,
    AuditP => Audit,
    SettingsP => Settings,
    // A site's capture alerts: whoever may change its policy.
    AlertsP => Policies,
    // A site's notification routes: administrators only, like accounts.
    RoutesP => Users,
}

/// `Policies`, whose form carries a whole policy text (percent-encoded,
/// so up to three bytes per byte).
pub struct PoliciesP;
impl Needs for PoliciesP {
    const PERMISSION: Permission = Permission::Policies;
    const FORM_LIMIT: usize = 3 * crate::policies::MAX_POLICY_BYTES + FORM_LIMIT;
}

/// `Settings`, whose form carries a whole acceptable-use text.
pub struct AupSettingsP;
impl Needs for AupSettingsP {
    const PERMISSION: Permission = Permission::Settings;
    const FORM_LIMIT: usize = 3 * crate::aup::MAX_AUP_BYTES + FORM_LIMIT;
}

/// Who is making this request: a signed-in person, or a program holding
/// an API token (`api::token`), which gets a `Viewer` with the token's role
/// and sites so both go through the same checks.
#[derive(Clone, Debug)]
pub struct Viewer {
    pub user: ConsoleUser,
    /// How the audit log names them: `console:NAME` or `api-token:ID`.
    pub actor: String,
    pub csrf_token: String,
    /// SHA-256 of this browser's session token.
    pub session: String,
    pub address: String,
}

impl Viewer {
    pub fn can(&self, permission: Permission) -> bool {
        allows(self.user.role, permission)
    }
    pub fn sees(&self, site: SiteId) -> bool {
        self.user.sees_site(site)
    }
    pub fn name(&self) -> &str {
        &self.user.username
    }

    /// The signed-in viewer a request's cookie names, only to give an
    /// error page its navigation: read only (the session is neither
    /// touched nor ended, nothing is audited), and `None` for a missing,
    /// unknown, ended or half-verified session or a store error.
    pub async fn peek(console: &Console, headers: &HeaderMap, address: String) -> Option<Viewer> {
        let digest = token_digest(&session_token(headers)?);
        let session = console.store.console_session(&digest).await.ok()??;
        if !session.verified || !session_live(&session, Timestamp::now()) {
            return None;
        }
        Some(Viewer {
            csrf_token: session.csrf_token.clone(),
            actor: format!("console:{}", session.user.username),
            user: session.user,
            session: digest,
            address,
        })
    }
}

/// The client's address, put on each request by `api::serve`.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub Option<SocketAddr>);

pub fn peer_address(parts: &Parts) -> String {
    address_of(&parts.extensions)
}

/// The client's address from a request's extensions ("" when unknown).
pub fn address_of(extensions: &axum::http::Extensions) -> String {
    extensions
        .get::<Peer>()
        .and_then(|p| p.0)
        .map(|a| a.ip().to_string())
        .unwrap_or_default()
}

pub fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

pub fn token_digest(token: &str) -> String {
    sha256_hex(token.as_bytes())
}

/// The `Set-Cookie` value for a new session.
pub fn session_cookie(token: &str) -> String {
    format!(
        "{COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        ABSOLUTE_TIMEOUT.as_secs()
    )
}

pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Whether a session may still be used at `now`.
pub fn session_live(session: &ConsoleSession, now: Timestamp) -> bool {
    !session.user.disabled
        && now.duration_since(session.last_seen_at) <= IDLE_TIMEOUT
        && now.duration_since(session.created_at) <= ABSOLUTE_TIMEOUT
}

/// Why a request was refused before its handler ran.
pub enum Refusal {
    /// Not signed in (or the session ended): to the sign-in page, back here
    /// afterwards.
    SignIn(String),
    /// Password given, second factor not yet: to the code page, keeping
    /// the half-made session.
    SecondFactor(String),
    Forbidden,
    BadRequest(String),
    Internal,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::SignIn(next) => {
                let mut response =
                    Redirect::to(&format!("/login?next={}", encode(&next))).into_response();
                response.headers_mut().insert(
                    header::SET_COOKIE,
                    clear_cookie().parse().expect("valid header"),
                );
                response
            }
            Refusal::SecondFactor(next) => {
                Redirect::to(&format!("/login/second-factor?next={}", encode(&next)))
                    .into_response()
            }
            Refusal::Forbidden => Problem::Forbidden.into_response(),
            Refusal::BadRequest(message) => Problem::BadRequest(message).into_response(),
            Refusal::Internal => Problem::Internal.into_response(),
        }
    }
}

/// Percent-encodes a path for a query value.
pub fn encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A path inside the console to go back to after sign-in; anything else
/// (another host, `//evil`, a scheme) becomes the dashboard.
pub fn safe_next(next: &str) -> &str {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && !next.contains("://")
        && !next.chars().any(|c| c.is_control());
    if ok { next } else { "/" }
}

impl FromRequestParts<Console> for Viewer {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, console: &Console) -> Result<Self, Refusal> {
        let here = parts
            .uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.to_string());
        let back = if parts.method == Method::GET {
            here
        } else {
            "/".to_owned()
        };
        let Some(token) = session_token(&parts.headers) else {
            return Err(Refusal::SignIn(back));
        };
        let digest = token_digest(&token);
        let now = Timestamp::now();
        let session = match console.store.console_session(&digest).await {
            Ok(Some(session)) => session,
            Ok(None) => return Err(Refusal::SignIn(back)),
            Err(e) => {
                tracing::warn!(error = %e, "console: reading a session failed");
                return Err(Refusal::Internal);
            }
        };
        if !session_live(&session, now) {
            let _ = console.store.end_console_session(&digest).await;
            return Err(Refusal::SignIn(back));
        }
        if !session.verified {
            // Half-way through sign-in: only the second-factor page.
            return Err(Refusal::SecondFactor(back));
        }
        // Idle time is counted from the last use, written at most once a
        // minute per session.
        if now.duration_since(session.last_seen_at) > SignedDuration::from_secs(60) {
            let _ = console
                .store
                .touch_console_session(&digest, true, now)
                .await;
        }
        Ok(Viewer {
            csrf_token: session.csrf_token.clone(),
            actor: format!("console:{}", session.user.username),
            user: session.user,
            session: digest,
            address: peer_address(parts),
        })
    }
}

/// A viewer whose role grants `P`.
pub struct Allowed<P: Needs>(pub Viewer, pub PhantomData<P>);

impl<P: Needs> FromRequestParts<Console> for Allowed<P> {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, console: &Console) -> Result<Self, Refusal> {
        let viewer = Viewer::from_request_parts(parts, console).await?;
        if !viewer.can(P::PERMISSION) {
            let _ = console
                .audit(
                    &viewer,
                    viewer.user.audit_site(),
                    "console_forbidden",
                    parts.uri.path(),
                    &format!("{:?} needed", P::PERMISSION),
                )
                .await;
            return Err(Refusal::Forbidden);
        }
        Ok(Allowed(viewer, PhantomData))
    }
}

/// A form posted by a viewer whose role grants `P`, with its CSRF token
/// checked before the handler sees it.
pub struct Submit<P: Needs, T>(pub Viewer, pub T, pub PhantomData<P>);

/// Largest form body (imports have their own limit).
const FORM_LIMIT: usize = 64 * 1024;

#[derive(serde::Deserialize)]
struct CsrfField {
    #[serde(default)]
    csrf: String,
}

impl<P: Needs, T: DeserializeOwned + Send> FromRequest<Console> for Submit<P, T> {
    type Rejection = Refusal;

    async fn from_request(request: Request, console: &Console) -> Result<Self, Refusal> {
        let (mut parts, body) = request.into_parts();
        let Allowed(viewer, _) = Allowed::<P>::from_request_parts(&mut parts, console).await?;
        let bytes = axum::body::to_bytes(body, P::FORM_LIMIT)
            .await
            .map_err(|_| Refusal::BadRequest("the form is too large".into()))?;
        let csrf: CsrfField = serde_urlencoded::from_bytes(&bytes)
            .map_err(|_| Refusal::BadRequest("the form could not be read".into()))?;
        check_csrf(console, &viewer, &csrf.csrf, parts.uri.path()).await?;
        let form: T = serde_urlencoded::from_bytes(&bytes)
            .map_err(|e| Refusal::BadRequest(format!("the form could not be read: {e}")))?;
        Ok(Submit(viewer, form, PhantomData))
    }
}

/// Refuses a state-changing request whose CSRF token is not the
/// session's (used by `Submit` and by the upload forms).
pub async fn check_csrf(
    console: &Console,
    viewer: &Viewer,
    token: &str,
    path: &str,
) -> Result<(), Refusal> {
    if constant_time_eq(token.as_bytes(), viewer.csrf_token.as_bytes()) {
        return Ok(());
    }
    let _ = console
        .audit(
            viewer,
            viewer.user.audit_site(),
            "console_csrf_refused",
            path,
            "",
        )
        .await;
    Err(Refusal::Forbidden)
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_matrix() {
        use ConsoleRole::*;
        let table = [
            (Admin, [true, true, true, false, true, true, true, true]),
            (
                Technician,
                [true, true, true, false, false, false, true, true],
            ),
            (Dsl, [true, true, true, true, false, true, false, true]),
            (
                Governor,
                [true, false, false, false, false, false, false, false],
            ),
        ];
        for (role, row) in table {
            for (permission, want) in EVERY_PERMISSION.into_iter().zip(row) {
                assert_eq!(allows(role, permission), want, "{role} {permission:?}");
            }
        }
    }

    #[test]
    fn a_token_never_carries_more_than_its_maker() {
        use ConsoleRole::*;
        // (maker, roles it may give)
        let table = [
            (Admin, vec![Admin, Technician, Governor]),
            (Technician, vec![Technician, Governor]),
            (Dsl, vec![Dsl, Governor]),
            (Governor, vec![Governor]),
        ];
        for (maker, want) in table {
            let got: Vec<_> = ConsoleRole::ALL
                .iter()
                .copied()
                .filter(|r| may_grant(maker, *r))
                .collect();
            assert_eq!(got, want, "{maker}");
        }
    }

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(safe_next("/flags/3"), "/flags/3");
        assert_eq!(safe_next("/devices?q=a"), "/devices?q=a");
        for bad in [
            "//evil.example",
            "https://evil.example",
            "/\\evil",
            "evil",
            "/a\nb",
        ] {
            assert_eq!(safe_next(bad), "/", "{bad:?}");
        }
    }

    #[test]
    fn the_session_cookie_is_read_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            format!("a=b; {COOKIE}=tok123; c=d").parse().unwrap(),
        );
        assert_eq!(session_token(&headers).as_deref(), Some("tok123"));
        assert!(session_cookie("x").contains("HttpOnly; SameSite=Strict"));
    }
}
