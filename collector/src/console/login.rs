//! Signing in and out, and the account page.
//!
//! Sign-in is the password, then (when the account has one) a TOTP code;
//! the session is usable only once both are given. Failed attempts are
//! counted per account and per address in the store (so every collector
//! instance sees them): the fifth wrong password for an account within
//! `THROTTLE_WINDOW` is refused without being checked, as is the 21st from
//! one address. Every sign-in, failure, refusal and sign-out is audited.

use askama::Template;
use axum::Form;
use axum::extract::{Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;

use super::access::{
    self, Allowed, ReportsP, Submit, Viewer, clear_cookie, peer_address, safe_next, session_cookie,
    session_token, token_digest,
};
use super::{Console, Frame, Problem, page};
use crate::auth;
use crate::model::SiteId;
use crate::store::{AuditEntry, ConsoleSession, ConsoleUser, UserChange};

/// Failures counted for throttling are those within this window.
pub const THROTTLE_WINDOW: SignedDuration = SignedDuration::from_mins(15);
/// Failed attempts an account may have within the window; the next is
/// refused unchecked.
pub const MAX_ACCOUNT_FAILURES: u64 = 4;
/// The same, per address (a school's NAT hides many people behind one).
pub const MAX_ADDRESS_FAILURES: u64 = 20;
/// The shortest console password.
pub const MIN_PASSWORD_CHARS: usize = 12;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    frame: Frame,
    next: String,
    username: String,
    error: String,
}

#[derive(Template)]
#[template(path = "second_factor.html")]
struct SecondFactorPage {
    frame: Frame,
    next: String,
    error: String,
}

#[derive(Deserialize)]
pub struct NextQuery {
    #[serde(default)]
    next: String,
}

pub async fn form(Query(q): Query<NextQuery>) -> Response {
    page(&LoginPage {
        frame: Frame::anonymous("Sign in"),
        next: safe_next(&q.next).to_owned(),
        username: String::new(),
        error: String::new(),
    })
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: String,
}

/// A hash to check against when the account does not exist, so that a
/// wrong name takes as long as a wrong password.
static DUMMY_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| auth::hash_password("not a real password").expect("hashing works"));

/// Password checks run at most two at a time: each takes about 19 MiB and
/// a core for tens of milliseconds, and anyone may ask for one.
static PASSWORD_CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

async fn password_matches(hash: String, password: String) -> bool {
    let Ok(_permit) = PASSWORD_CHECKS.acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || auth::verify_password(&hash, &password))
        .await
        .unwrap_or(false)
}

/// Whether an attempt may be checked.
enum Attempt {
    /// Counted as a failure until it succeeds (`forget_login_failure`).
    Allowed(i64),
    Throttled,
}

/// Counts an attempt before it is checked, so guesses sent in parallel
/// all count: refused when the account or address already has its fill
/// of failures in the window, or reached it with this attempt.
async fn begin_attempt(
    console: &Console,
    username: &str,
    address: &str,
    now: Timestamp,
) -> crate::store::Result<Attempt> {
    let since = now - THROTTLE_WINDOW;
    let (user, addr) = console
        .store
        .login_failures(username, address, since)
        .await?;
    if user >= MAX_ACCOUNT_FAILURES || addr >= MAX_ADDRESS_FAILURES {
        return Ok(Attempt::Throttled);
    }
    let id = console
        .store
        .record_login_failure(username, address, now)
        .await?;
    let (user, addr) = console
        .store
        .login_failures(username, address, since)
        .await?;
    if user > MAX_ACCOUNT_FAILURES || addr > MAX_ADDRESS_FAILURES {
        return Ok(Attempt::Throttled);
    }
    Ok(Attempt::Allowed(id))
}

/// Audits a throttled attempt once per account, address and window, so
/// a flood of refused guesses does not flood the audit log.
async fn audit_throttled(console: &Console, username: &str, address: &str) {
    let now = Timestamp::now();
    let first = {
        let mut seen = console
            .throttle_audits
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if seen.len() > 10_000 {
            seen.clear();
        }
        let key = format!("{username}\u{1f}{address}");
        match seen.get(&key) {
            Some(at) if now.duration_since(*at) < THROTTLE_WINDOW => false,
            _ => {
                seen.insert(key, now);
                true
            }
        }
    };
    if first {
        // No account is read for a throttled attempt: collector-wide.
        audit_anonymous(console, None, username, "console_login_throttled", address).await;
    }
}

/// Audits a sign-in step before there is a `Viewer`; `site` is the
/// account's (`ConsoleUser::audit_site`) when the account is known.
async fn audit_anonymous(
    console: &Console,
    site: Option<SiteId>,
    actor: &str,
    action: &str,
    address: &str,
) {
    let _ = console
        .store
        .append_audit(AuditEntry {
            at: Timestamp::now(),
            site,
            actor: &format!("console:{actor}"),
            action,
            target: "console",
            detail: "",
            address,
        })
        .await;
}

pub async fn submit(
    State(console): State<Console>,
    parts: Parts,
    Form(f): Form<LoginForm>,
) -> Response {
    let address = peer_address(&parts);
    let now = Timestamp::now();
    // Names are short and printable; anything else is a failure as is.
    let username: String = f
        .username
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect::<String>()
        .to_lowercase();
    let next = safe_next(&f.next).to_owned();
    let refuse = |status: StatusCode, error: &str, username: &str| {
        let mut response = page(&LoginPage {
            frame: Frame::anonymous("Sign in"),
            next: next.clone(),
            username: username.to_owned(),
            error: error.to_owned(),
        });
        *response.status_mut() = status;
        response
    };
    let attempt = match begin_attempt(&console, &username, &address, now).await {
        Ok(Attempt::Allowed(id)) => id,
        Ok(Attempt::Throttled) => {
            audit_throttled(&console, &username, &address).await;
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many failed sign-ins. Wait 15 minutes and try again, or ask an administrator to reset your password.",
                &username,
            );
        }
        Err(e) => return Problem::from(e).into_response(),
    };
    let user = match console.store.console_user_by_name(&username).await {
        Ok(user) => user,
        Err(e) => return Problem::from(e).into_response(),
    };
    let hash = user
        .as_ref()
        .map_or(DUMMY_HASH.clone(), |u| u.password_hash.clone());
    let matches = password_matches(hash, f.password).await;
    let user = match user {
        Some(user) if matches && !user.disabled => user,
        _ => {
            // The attempt stays counted.
            let site = user.as_ref().and_then(ConsoleUser::audit_site);
            audit_anonymous(&console, site, &username, "console_login_failed", &address).await;
            return refuse(
                StatusCode::UNAUTHORIZED,
                "The username or password is not right, or the account is disabled.",
                &username,
            );
        }
    };
    // A right password alone does not clear earlier failures while a
    // second factor is still to come (they limit guessing the code too).
    let cleared = if user.totp_secret.is_empty() {
        console.store.clear_login_failures(&username).await
    } else {
        console.store.forget_login_failure(attempt).await
    };
    if let Err(e) = cleared {
        return Problem::from(e).into_response();
    }
    let token = auth::session_token();
    let verified = user.totp_secret.is_empty();
    if let Err(e) = console
        .store
        .create_console_session(
            &token_digest(&token),
            user.id,
            &auth::session_token(),
            verified,
            &address,
            now,
        )
        .await
    {
        return Problem::from(e).into_response();
    }
    let (action, to) = if verified {
        ("console_login", next)
    } else {
        (
            "console_password_accepted",
            format!("/login/second-factor?next={}", access::encode(&next)),
        )
    };
    audit_anonymous(
        &console,
        user.audit_site(),
        &user.username,
        action,
        &address,
    )
    .await;
    let mut response = Redirect::to(&to).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(&token).parse().expect("valid header"),
    );
    response
}

/// The session half-way through sign-in (password given, code not yet).
async fn pending_session(
    console: &Console,
    headers: &HeaderMap,
) -> Option<(String, ConsoleSession)> {
    let digest = token_digest(&session_token(headers)?);
    let session = console.store.console_session(&digest).await.ok()??;
    let fresh = Timestamp::now().duration_since(session.created_at) <= SignedDuration::from_mins(5);
    (!session.verified && fresh && !session.user.disabled).then_some((digest, session))
}

pub async fn totp_form(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    if pending_session(&console, &headers).await.is_none() {
        return Redirect::to("/login").into_response();
    }
    page(&SecondFactorPage {
        frame: Frame::anonymous("Two-step sign-in"),
        next: safe_next(&q.next).to_owned(),
        error: String::new(),
    })
}

#[derive(Deserialize)]
pub struct CodeForm {
    #[serde(default)]
    code: String,
    #[serde(default)]
    next: String,
}

pub async fn totp_submit(
    State(console): State<Console>,
    parts: Parts,
    Form(f): Form<CodeForm>,
) -> Response {
    let address = peer_address(&parts);
    let Some((digest, session)) = pending_session(&console, &parts.headers).await else {
        return Redirect::to("/login").into_response();
    };
    let now = Timestamp::now();
    let username = session.user.username.clone();
    let next = safe_next(&f.next).to_owned();
    let again = |status: StatusCode, error: &str| {
        let mut response = page(&SecondFactorPage {
            frame: Frame::anonymous("Two-step sign-in"),
            next: next.clone(),
            error: error.to_owned(),
        });
        *response.status_mut() = status;
        response
    };
    match begin_attempt(&console, &username, &address, now).await {
        Ok(Attempt::Allowed(_)) => {}
        Ok(Attempt::Throttled) => {
            let _ = console.store.end_console_session(&digest).await;
            audit_throttled(&console, &username, &address).await;
            return again(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many failed attempts. Wait 15 minutes and sign in again.",
            );
        }
        Err(e) => return Problem::from(e).into_response(),
    }
    let unix = now.as_second().max(0) as u64;
    let fresh = match auth::totp_step(&session.user.totp_secret, &f.code, unix) {
        // A code is accepted once: one seen over a shoulder is spent.
        Some(step) => match console.store.use_totp_step(session.user.id, step).await {
            Ok(fresh) => fresh,
            Err(e) => return Problem::from(e).into_response(),
        },
        None => false,
    };
    if !fresh {
        audit_anonymous(
            &console,
            session.user.audit_site(),
            &username,
            "console_second_factor_failed",
            &address,
        )
        .await;
        return again(
            StatusCode::UNAUTHORIZED,
            "That code is not right. Enter the 6-digit code your authenticator app shows now.",
        );
    }
    if let Err(e) = console.store.clear_login_failures(&username).await {
        return Problem::from(e).into_response();
    }
    if let Err(e) = console
        .store
        .touch_console_session(&digest, true, now)
        .await
    {
        return Problem::from(e).into_response();
    }
    audit_anonymous(
        &console,
        session.user.audit_site(),
        &username,
        "console_login",
        &address,
    )
    .await;
    Redirect::to(&next).into_response()
}

#[derive(Deserialize)]
pub struct Empty {}

fn signed_out() -> Response {
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        clear_cookie().parse().expect("valid header"),
    );
    response
}

pub async fn logout(
    State(console): State<Console>,
    Submit(viewer, ..): Submit<ReportsP, Empty>,
) -> Response {
    let _ = console.store.end_console_session(&viewer.session).await;
    let _ = console
        .audit(
            &viewer,
            viewer.user.audit_site(),
            "console_logout",
            "console",
            "",
        )
        .await;
    signed_out()
}

pub async fn logout_everywhere(
    State(console): State<Console>,
    Submit(viewer, ..): Submit<ReportsP, Empty>,
) -> Response {
    let ended = console
        .store
        .end_console_sessions(viewer.user.id, None)
        .await
        .unwrap_or(0);
    let _ = console
        .audit(
            &viewer,
            viewer.user.audit_site(),
            "console_logout_everywhere",
            "console",
            &format!("{ended} session(s) ended"),
        )
        .await;
    signed_out()
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    frame: Frame,
    has_totp: bool,
    new_secret: String,
    password_error: String,
    totp_error: String,
    notice: String,
}

fn account_page(
    viewer: &Viewer,
    notice: &str,
    password_error: &str,
    totp_error: &str,
    secret: Option<String>,
) -> Response {
    let has_totp = !viewer.user.totp_secret.is_empty();
    page(&AccountPage {
        frame: Frame::new(viewer, "Your account", "/account"),
        has_totp,
        new_secret: secret.unwrap_or_else(|| {
            if has_totp {
                String::new()
            } else {
                auth::generate_totp_secret()
            }
        }),
        password_error: password_error.into(),
        totp_error: totp_error.into(),
        notice: notice.into(),
    })
}

pub async fn account(Allowed(viewer, _): Allowed<ReportsP>) -> Response {
    account_page(&viewer, "", "", "", None)
}

#[derive(Deserialize)]
pub struct PasswordForm {
    #[serde(default)]
    current: String,
    #[serde(default)]
    new: String,
    #[serde(default)]
    confirm: String,
}

/// Why a new password is refused, if it is.
pub fn password_problem(new: &str, confirm: &str, username: &str) -> Option<String> {
    if new != confirm {
        return Some("The new password and its confirmation differ.".into());
    }
    if new.chars().count() < MIN_PASSWORD_CHARS {
        return Some(format!(
            "The new password must have at least {MIN_PASSWORD_CHARS} characters."
        ));
    }
    if new.to_lowercase().contains(&username.to_lowercase()) {
        return Some("The new password must not contain your username.".into());
    }
    None
}

pub async fn change_password(
    State(console): State<Console>,
    Submit(viewer, f, ..): Submit<ReportsP, PasswordForm>,
) -> Response {
    let attempt =
        match begin_attempt(&console, viewer.name(), &viewer.address, Timestamp::now()).await {
            Ok(Attempt::Allowed(id)) => Some(id),
            Ok(Attempt::Throttled) => None,
            Err(e) => return Problem::from(e).into_response(),
        };
    let ok = match attempt {
        Some(_) => password_matches(viewer.user.password_hash.clone(), f.current.clone()).await,
        None => false,
    };
    if let (true, Some(id)) = (ok, attempt) {
        let _ = console.store.forget_login_failure(id).await;
    }
    let error = if attempt.is_none() {
        Some("Too many failed attempts. Wait 15 minutes and try again.".to_owned())
    } else if !ok {
        Some("Your current password is not right.".to_owned())
    } else {
        password_problem(&f.new, &f.confirm, viewer.name())
    };
    if let Some(error) = error {
        let mut response = account_page(&viewer, "", &error, "", None);
        *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
        return response;
    }
    let Ok(hash) = auth::hash_password(&f.new) else {
        return Problem::Internal.into_response();
    };
    let now = Timestamp::now();
    if let Err(e) = console
        .store
        .update_console_user(viewer.user.id, UserChange::Password(hash), now)
        .await
    {
        return Problem::from(e).into_response();
    }
    // Other browsers signed in with the old password are signed out.
    let ended = console
        .store
        .end_console_sessions(viewer.user.id, Some(&viewer.session))
        .await
        .unwrap_or(0);
    let _ = console
        .audit(
            &viewer,
            viewer.user.audit_site(),
            "console_password_changed",
            &format!("user {}", viewer.name()),
            &format!("{ended} other session(s) ended"),
        )
        .await;
    account_page(
        &viewer,
        "Your password has been changed; other sessions were signed out.",
        "",
        "",
        None,
    )
}

#[derive(Deserialize)]
pub struct TotpForm {
    #[serde(default)]
    secret: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    remove: String,
    #[serde(default)]
    password: String,
}

pub async fn set_up_totp(
    State(console): State<Console>,
    Submit(mut viewer, f, ..): Submit<ReportsP, TotpForm>,
) -> Response {
    let now = Timestamp::now();
    let unix = now.as_second().max(0) as u64;
    let refuse = |viewer: &Viewer, message: &str, secret: String| {
        let mut response = account_page(viewer, "", "", message, Some(secret));
        *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
        response
    };
    let attempt = match begin_attempt(&console, viewer.name(), &viewer.address, now).await {
        Ok(Attempt::Allowed(id)) => id,
        Ok(Attempt::Throttled) => {
            return refuse(
                &viewer,
                "Too many failed attempts. Wait 15 minutes and try again.",
                f.secret,
            );
        }
        Err(e) => return Problem::from(e).into_response(),
    };
    if !password_matches(viewer.user.password_hash.clone(), f.password.clone()).await {
        return refuse(&viewer, "Your password is not right.", f.secret);
    }
    let _ = console.store.forget_login_failure(attempt).await;
    let (secret, action) = if f.remove == "yes" {
        // Turning the second factor off takes a current code as well.
        let fresh = match auth::totp_step(&viewer.user.totp_secret, &f.code, unix) {
            Some(step) => console
                .store
                .use_totp_step(viewer.user.id, step)
                .await
                .unwrap_or(false),
            None => false,
        };
        if !fresh {
            return refuse(
                &viewer,
                "Enter the code your authenticator app shows now.",
                String::new(),
            );
        }
        (String::new(), "console_second_factor_removed")
    } else {
        if !auth::totp_matches(&f.secret, &f.code, unix) {
            let mut response = account_page(
                &viewer,
                "",
                "",
                "That code does not match the key. Check the key was typed into your authenticator app correctly and enter the code it shows now.",
                Some(f.secret),
            );
            *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            return response;
        }
        (f.secret.clone(), "console_second_factor_added")
    };
    if let Err(e) = console
        .store
        .update_console_user(viewer.user.id, UserChange::Totp(secret.clone()), now)
        .await
    {
        return Problem::from(e).into_response();
    }
    let _ = console
        .audit(
            &viewer,
            viewer.user.audit_site(),
            action,
            &format!("user {}", viewer.name()),
            "",
        )
        .await;
    viewer.user.totp_secret = secret;
    let notice = if viewer.user.totp_secret.is_empty() {
        "Two-step sign-in is off for your account."
    } else {
        "Two-step sign-in is on: you will be asked for a code each time you sign in."
    };
    account_page(&viewer, notice, "", "", None)
}
