//! Settings a technician or administrator changes: enrolment secrets (a new
//! one shown once), API tokens (shown once), notification recipients; each
//! site's notification routes (its own, else `collector.toml`'s), which
//! only administrators change; links to each site's policy (`policy`),
//! thresholds (`thresholds`) and capture alerts (`alerts`) pages.
//! Every change is audited.

use askama::Template;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;

use super::access::{Allowed, Permission, RoutesP, SettingsP, Submit, Viewer, may_grant};
use super::pages::{local_opt, visible_sites};
use super::{Console, Frame, Problem, page, with_form_error};
use crate::auth;
use crate::model::{Channel, ConsoleRole, Role, Site, Timing};
use crate::store::{AuditEntry, NewApiToken, NewSecret, Recipient, SiteRoute};

type PageResult = Result<Response, Problem>;

/// A route as the settings page lists it: (id, 0 for collector.toml's;
/// kind; roles; timing).
type RouteRow = (i64, String, String, String);

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    frame: Frame,
    sites: Vec<String>,
    /// (site, its name for a query string).
    site_links: Vec<(String, String)>,
    secrets: Vec<(i64, String, String, String, String, String, bool)>,
    tokens: Vec<(i64, String, String, String, String, String, bool)>,
    /// The roles this viewer may give a token (none beyond their own).
    token_roles: Vec<&'static str>,
    recipients: Vec<(i64, String, String, String, String)>,
    roles: Vec<&'static str>,
    /// Each site's routes in force: (site, where they come from, routes
    /// as (id (0: collector.toml's), kind, roles, timing)).
    site_routes: Vec<(String, &'static str, Vec<RouteRow>)>,
    /// Whether the viewer may edit routes (administrators).
    edits_routes: bool,
    kinds: Vec<&'static str>,
    timings: Vec<&'static str>,
    all_roles: Vec<&'static str>,
    shown_once: String,
    shown_once_what: String,
    error: String,
}

async fn render(
    console: &Console,
    viewer: &Viewer,
    shown_once: Option<(&str, String)>,
    error: &str,
) -> PageResult {
    let sites = visible_sites(console, viewer).await?;
    let zone_of = |name: &str| {
        sites
            .iter()
            .find(|s| s.name == name)
            .map_or("UTC".to_owned(), |s| s.timezone.clone())
    };
    let sees = |name: &str| sites.iter().any(|s| s.name == name);
    let secrets = console
        .store
        .list_enrollment_secrets(None)
        .await?
        .into_iter()
        .filter(|s| sees(&s.site))
        .map(|s| {
            let zone = zone_of(&s.site);
            let active =
                s.revoked_at.is_none() && s.expires_at.is_none_or(|e| e > Timestamp::now());
            (
                s.id,
                s.site.clone(),
                format!("{}…", s.hint),
                s.label,
                local_opt(s.expires_at, &zone).replace("never", "no expiry"),
                format!(
                    "{} use(s), last {}",
                    s.uses,
                    local_opt(s.last_used_at, &zone)
                ),
                active,
            )
        })
        .collect();
    let tokens = console
        .store
        .list_api_tokens(None)
        .await?
        .into_iter()
        // A token covering every site is shown (and revocable) only to
        // accounts that cover every site themselves.
        .filter(|t| sees(&t.site) && (!t.all_sites || viewer.user.all_sites))
        .map(|t| {
            let zone = zone_of(&t.site);
            (
                t.id,
                t.site.clone(),
                if t.all_sites {
                    format!("{}, every site", t.role)
                } else {
                    t.role.to_string()
                },
                t.label,
                super::pages::local(t.created_at, &zone),
                local_opt(t.last_used_at, &zone),
                t.revoked_at.is_none(),
            )
        })
        .collect();
    let mut recipients = Vec::new();
    for site in &sites {
        for r in console.store.recipients(Some(site.id)).await? {
            recipients.push((
                r.id,
                site.name.clone(),
                r.role.to_string(),
                r.channel.to_string(),
                r.address,
            ));
        }
    }
    let mut site_routes = Vec::new();
    for site in &sites {
        let own = console.store.site_routes(site.id).await?;
        let (source, routes) = if own.is_empty() {
            (
                "collector.toml",
                console
                    .config
                    .notifications
                    .routes
                    .iter()
                    .map(|r| {
                        (
                            0,
                            r.kind.clone(),
                            r.roles
                                .iter()
                                .map(|role| role.as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                            r.timing.to_string(),
                        )
                    })
                    .collect(),
            )
        } else {
            (
                "set for this site",
                own.into_iter()
                    .map(|r| (r.id, r.kind, r.role.to_string(), r.timing.to_string()))
                    .collect(),
            )
        };
        site_routes.push((site.name.clone(), source, routes));
    }
    let (shown_once_what, shown_once) =
        shown_once.map_or((String::new(), String::new()), |(w, s)| (w.to_owned(), s));
    Ok(with_form_error(
        page(&SettingsPage {
            frame: Frame::new(viewer, "Settings", "/settings"),
            site_links: sites
                .iter()
                .map(|s| (s.name.clone(), super::access::encode(&s.name)))
                .collect(),
            sites: sites.into_iter().map(|s| s.name).collect(),
            secrets,
            tokens,
            token_roles: ConsoleRole::ALL
                .iter()
                .filter(|r| may_grant(viewer.user.role, **r))
                .map(|r| r.as_str())
                .collect(),
            recipients,
            roles: Role::ALL
                .iter()
                .filter(|r| **r != Role::StaffMember)
                .map(|r| r.as_str())
                .collect(),
            site_routes,
            edits_routes: viewer.can(Permission::Users),
            kinds: crate::alerts::EVENT_KINDS.to_vec(),
            timings: Timing::ALL.iter().map(|t| t.as_str()).collect(),
            all_roles: Role::ALL.iter().map(|r| r.as_str()).collect(),
            shown_once,
            shown_once_what,
            error: error.to_owned(),
        }),
        error,
    ))
}

pub async fn page_handler(
    State(console): State<Console>,
    Allowed(viewer, _): Allowed<SettingsP>,
) -> PageResult {
    render(&console, &viewer, None, "").await
}

async fn site_named(
    console: &Console,
    viewer: &Viewer,
    name: &str,
) -> Result<Option<Site>, Problem> {
    Ok(visible_sites(console, viewer)
        .await?
        .into_iter()
        .find(|s| s.name == name))
}

/// The site a per-site settings page names (the viewer's first when
/// none), among the viewer's: 404 when no site has
/// that name, 403 when it is another site's (audited like any refusal).
pub(super) async fn site_for(
    console: &Console,
    viewer: &Viewer,
    name: &str,
    path: &str,
) -> Result<Site, Problem> {
    if name.is_empty() {
        return visible_sites(console, viewer)
            .await?
            .into_iter()
            .next()
            .ok_or(Problem::NotFound);
    }
    let Some(site) = console.store.site_by_name(name).await? else {
        return Err(Problem::NotFound);
    };
    if !viewer.sees(site.id) {
        let _ = console
            .audit(
                viewer,
                viewer.user.audit_site(),
                "console_forbidden",
                path,
                &format!("site={} not among the account's sites", site.name),
            )
            .await;
        return Err(Problem::Forbidden);
    }
    Ok(site)
}

#[derive(Deserialize)]
pub struct SecretForm {
    #[serde(default)]
    site: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    expires_in_days: String,
}

pub async fn create_secret(
    State(console): State<Console>,
    Submit(viewer, form, ..): Submit<SettingsP, SecretForm>,
) -> PageResult {
    let Some(site) = site_named(&console, &viewer, &form.site).await? else {
        return render(&console, &viewer, None, "Choose one of your sites.").await;
    };
    let now = Timestamp::now();
    let expires_at = match form.expires_in_days.trim() {
        "" => None,
        days => {
            match days.parse::<u16>() {
                Ok(days) if days > 0 => {
                    Some(now + SignedDuration::from_hours(24 * i64::from(days)))
                }
                _ => {
                    return render(&console, &viewer, None, "Expires in: a whole number of days from 1 to 65535, or empty for no expiry.").await;
                }
            }
        }
    };
    let secret = auth::generate_enrollment_secret();
    let info = console
        .store
        .create_enrollment_secret(NewSecret {
            site: site.id,
            secret_sha256: auth::secret_digest(&secret),
            hint: auth::secret_hint(&secret),
            label: form.label.trim().chars().take(100).collect(),
            expires_at,
            at: now,
        })
        .await?;
    let _ = console
        .audit(
            &viewer,
            Some(site.id),
            "enrollment_secret_created",
            &format!("secret {}", info.id),
            &format!("site={}", site.name),
        )
        .await;
    render(&console, &viewer, Some(("enrolment secret", secret)), "").await
}

pub async fn revoke_secret(
    State(console): State<Console>,
    Path(id): Path<i64>,
    Submit(viewer, form, ..): Submit<SettingsP, SiteForm>,
) -> PageResult {
    revoke(&console, &viewer, &form.site, id, Revocable::Secret).await
}

/// What the settings page revokes.
#[derive(Clone, Copy)]
enum Revocable {
    Secret,
    Token,
}

/// Revokes an enrolment secret or API token of one of the viewer's sites,
/// audited; an already revoked one is said so beside the list.
async fn revoke(
    console: &Console,
    viewer: &Viewer,
    site: &str,
    id: i64,
    what: Revocable,
) -> PageResult {
    let Some(site) = site_named(console, viewer, site).await? else {
        return Err(Problem::NotFound);
    };
    let now = Timestamp::now();
    let (revoked, action, target, already) = match what {
        Revocable::Secret => (
            console
                .store
                .revoke_enrollment_secret(site.id, id, now)
                .await?,
            "enrollment_secret_revoked",
            format!("secret {id}"),
            "That secret is already revoked.",
        ),
        Revocable::Token => (
            {
                let covers_all = console
                    .store
                    .list_api_tokens(Some(site.id))
                    .await?
                    .iter()
                    .any(|t| t.id == id && t.all_sites);
                if covers_all && !viewer.user.all_sites {
                    return Err(Problem::Forbidden);
                }
                console.store.revoke_api_token(site.id, id, now).await?
            },
            "api_token_revoked",
            format!("api-token {id}"),
            "That token is already revoked.",
        ),
    };
    if !revoked {
        return render(console, viewer, None, already).await;
    }
    let _ = console
        .audit(
            viewer,
            Some(site.id),
            action,
            &target,
            &format!("site={}", site.name),
        )
        .await;
    Ok(Redirect::to("/settings").into_response())
}

#[derive(Deserialize)]
pub struct SiteForm {
    #[serde(default)]
    site: String,
}

#[derive(Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    site: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    role: String,
}

pub async fn create_token(
    State(console): State<Console>,
    Submit(viewer, form, ..): Submit<SettingsP, TokenForm>,
) -> PageResult {
    let Some(site) = site_named(&console, &viewer, &form.site).await? else {
        return render(&console, &viewer, None, "Choose one of your sites.").await;
    };
    // A token never carries rights its maker lacks (a technician cannot
    // mint a token that reads incidents).
    let Some(role) = ConsoleRole::parse(&form.role).filter(|r| may_grant(viewer.user.role, *r))
    else {
        return render(&console, &viewer, None, "Choose one of the roles offered.").await;
    };
    let token = auth::generate_api_token();
    let label: String = form.label.trim().chars().take(100).collect();
    let id = console
        .store
        .create_api_token(
            NewApiToken {
                site: site.id,
                token_sha256: &auth::secret_digest(&token),
                label: &label,
                role,
                all_sites: false,
                created_by: Some(viewer.user.id),
            },
            Timestamp::now(),
        )
        .await?;
    let _ = console
        .audit(
            &viewer,
            Some(site.id),
            "api_token_created",
            &format!("api-token {id}"),
            &format!("site={} role={role}", site.name),
        )
        .await;
    render(&console, &viewer, Some(("API token", token)), "").await
}

pub async fn revoke_token(
    State(console): State<Console>,
    Path(id): Path<i64>,
    Submit(viewer, form, ..): Submit<SettingsP, SiteForm>,
) -> PageResult {
    revoke(&console, &viewer, &form.site, id, Revocable::Token).await
}

#[derive(Deserialize)]
pub struct RecipientForm {
    #[serde(default)]
    site: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    email: String,
}

pub async fn add_recipient(
    State(console): State<Console>,
    Submit(viewer, form, ..): Submit<SettingsP, RecipientForm>,
) -> PageResult {
    let Some(site) = site_named(&console, &viewer, &form.site).await? else {
        return render(&console, &viewer, None, "Choose one of your sites.").await;
    };
    let role = match Role::parse(&form.role) {
        Some(role) if role != Role::StaffMember => role,
        _ => return render(&console, &viewer, None, "Choose a role.").await,
    };
    let email = form.email.trim();
    if email.parse::<lettre::Address>().is_err() {
        return render(
            &console,
            &viewer,
            None,
            &format!("'{email}' is not an email address."),
        )
        .await;
    }
    let id = console
        .store
        .add_recipient(
            &Recipient {
                id: 0,
                site: site.id,
                role,
                channel: Channel::Email,
                address: email.to_owned(),
                webhook_format: "json".into(),
                webhook_secret: String::new(),
            },
            Timestamp::now(),
        )
        .await?;
    let _ = console
        .audit(
            &viewer,
            Some(site.id),
            "recipient_added",
            &format!("recipient {id}"),
            &format!("site={} role={role}", site.name),
        )
        .await;
    Ok(Redirect::to("/settings").into_response())
}

pub async fn remove_recipient(
    State(console): State<Console>,
    Path(id): Path<i64>,
    Submit(viewer, form, ..): Submit<SettingsP, SiteForm>,
) -> PageResult {
    let Some(site) = site_named(&console, &viewer, &form.site).await? else {
        return Err(Problem::NotFound);
    };
    if !console.store.remove_recipient(site.id, id).await? {
        return Err(Problem::NotFound);
    }
    let _ = console
        .audit(
            &viewer,
            Some(site.id),
            "recipient_removed",
            &format!("recipient {id}"),
            &format!("site={}", site.name),
        )
        .await;
    Ok(Redirect::to("/settings").into_response())
}

#[derive(Deserialize)]
pub struct RouteForm {
    #[serde(default)]
    site: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    timing: String,
}

fn route_audit<'a>(
    viewer: &'a Viewer,
    site: &Site,
    action: &'a str,
    target: &'a str,
    detail: &'a str,
) -> AuditEntry<'a> {
    AuditEntry {
        at: Timestamp::now(),
        site: Some(site.id),
        actor: &viewer.actor,
        action,
        target,
        detail,
        address: &viewer.address,
    }
}

/// Adds a route to a site (administrators). A site that used
/// collector.toml's routes starts from a copy of them, so adding one
/// route silences none of the others.
pub async fn add_route(
    State(console): State<Console>,
    Submit(viewer, form, ..): Submit<RoutesP, RouteForm>,
) -> PageResult {
    let Some(site) = site_named(&console, &viewer, &form.site).await? else {
        return render(&console, &viewer, None, "Choose one of your sites.").await;
    };
    let (Some(kind), Some(role), Some(timing)) = (
        crate::alerts::EVENT_KINDS.iter().find(|k| **k == form.kind),
        Role::parse(&form.role),
        Timing::parse(&form.timing),
    ) else {
        return render(&console, &viewer, None, "Choose an event, a role and when.").await;
    };
    let route = SiteRoute {
        id: 0,
        kind: (*kind).to_owned(),
        role,
        timing,
    };
    let target = format!("site {}", site.name);
    let detail = format!("{kind} → {role} ({timing})");
    let added = console
        .store
        .add_site_route(
            site.id,
            &route,
            &console.config.notifications.routes,
            route_audit(&viewer, &site, "route_added", &target, &detail),
        )
        .await?;
    if !added {
        return render(&console, &viewer, None, "The site already has that route.").await;
    }
    Ok(Redirect::to("/settings#routes-heading").into_response())
}

pub async fn remove_route(
    State(console): State<Console>,
    Path(id): Path<i64>,
    Submit(viewer, form, ..): Submit<RoutesP, SiteForm>,
) -> PageResult {
    let Some(site) = site_named(&console, &viewer, &form.site).await? else {
        return Err(Problem::NotFound);
    };
    let target = format!("site {}", site.name);
    let detail = format!("route {id}");
    if !console
        .store
        .remove_site_route(
            site.id,
            id,
            route_audit(&viewer, &site, "route_removed", &target, &detail),
        )
        .await?
    {
        return Err(Problem::NotFound);
    }
    Ok(Redirect::to("/settings#routes-heading").into_response())
}

/// Removes every route of a site: it uses collector.toml's again.
pub async fn clear_routes(
    State(console): State<Console>,
    Submit(viewer, form, ..): Submit<RoutesP, SiteForm>,
) -> PageResult {
    let Some(site) = site_named(&console, &viewer, &form.site).await? else {
        return Err(Problem::NotFound);
    };
    let target = format!("site {}", site.name);
    console
        .store
        .clear_site_routes(
            site.id,
            route_audit(
                &viewer,
                &site,
                "routes_cleared",
                &target,
                "back to collector.toml's routes",
            ),
        )
        .await?;
    Ok(Redirect::to("/settings#routes-heading").into_response())
}
