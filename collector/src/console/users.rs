//! Console accounts: the list, adding one (first password shown once),
//! disabling, enabling, resetting the second factor, role and sites. An
//! administrator of some sites manages only accounts within them.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect};
use jiff::Timestamp;
use serde::Deserialize;

use super::access::{Allowed, Submit, UsersP, Viewer};
use super::pages::PageResult;
use super::{Console, Frame, Problem, page, with_form_error};
use crate::model::{ConsoleRole, Site, SiteId};
use crate::store::{ConsoleUser, NewConsoleUser, UserChange};

struct UserRow {
    id: i64,
    username: String,
    role: String,
    sites: String,
    disabled: bool,
    second_factor: bool,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    frame: Frame,
    rows: Vec<UserRow>,
    roles: Vec<&'static str>,
    site_names: Vec<String>,
    error: String,
    created: String,
    created_password: String,
    form_username: String,
}

async fn users_page(
    console: &Console,
    viewer: &Viewer,
    error: &str,
    created: Option<(String, String)>,
    form_username: &str,
) -> PageResult {
    let sites = console.store.sites().await?;
    let names: HashMap<SiteId, String> = sites.iter().map(|s| (s.id, s.name.clone())).collect();
    let rows = console
        .store
        .console_users()
        .await?
        .into_iter()
        .filter(|u| {
            viewer.user.all_sites || (!u.all_sites && u.sites.iter().all(|s| viewer.sees(*s)))
        })
        .map(|u: ConsoleUser| UserRow {
            id: u.id,
            sites: if u.all_sites {
                "all sites".into()
            } else {
                u.sites
                    .iter()
                    .filter_map(|s| names.get(s).cloned())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            username: u.username,
            role: u.role.to_string(),
            disabled: u.disabled,
            second_factor: !u.totp_secret.is_empty(),
        })
        .collect();
    let (created, created_password) = created.unwrap_or_default();
    Ok(with_form_error(
        page(&UsersPage {
            frame: Frame::new(viewer, "Users", "/users"),
            rows,
            roles: ConsoleRole::ALL.iter().map(|r| r.as_str()).collect(),
            site_names: sites.into_iter().map(|s| s.name).collect(),
            error: error.to_owned(),
            created,
            created_password,
            form_username: form_username.to_owned(),
        }),
        error,
    ))
}

pub async fn users(
    State(console): State<Console>,
    Allowed(viewer, _): Allowed<UsersP>,
) -> PageResult {
    users_page(&console, &viewer, "", None, "").await
}

/// Parses "all" or a comma-separated list of site names.
pub fn parse_sites(text: &str, sites: &[Site]) -> Result<Option<Vec<SiteId>>, String> {
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("all") {
        return Ok(None);
    }
    text.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|name| {
            sites
                .iter()
                .find(|s| s.name.eq_ignore_ascii_case(name))
                .map(|s| s.id)
                .ok_or_else(|| format!("There is no site named '{name}'."))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Refuses sites beyond the viewer's own (an administrator of some sites
/// cannot grant all, or others).
fn within_scope(
    viewer: &Viewer,
    sites: Option<Vec<SiteId>>,
) -> Result<Option<Vec<SiteId>>, String> {
    if viewer.user.all_sites {
        return Ok(sites);
    }
    match sites {
        Some(list) if list.iter().all(|s| viewer.sees(*s)) => Ok(Some(list)),
        _ => {
            Err("You can only grant the sites you administer; name them instead of \"all\".".into())
        }
    }
}

/// Why a username is refused, if it is.
pub fn username_problem(name: &str) -> Option<&'static str> {
    let ok = (2..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-@".contains(c));
    (!ok).then_some(
        "A username has 2 to 64 characters: lower-case letters, digits, '.', '_', '-' or '@'.",
    )
}

#[derive(Deserialize)]
pub struct UserForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    sites: String,
}

pub async fn user_add(
    State(console): State<Console>,
    Submit(viewer, form, ..): Submit<UsersP, UserForm>,
) -> PageResult {
    let username = form.username.trim().to_lowercase();
    if let Some(problem) = username_problem(&username) {
        return users_page(&console, &viewer, problem, None, &username).await;
    }
    let Some(role) = ConsoleRole::parse(&form.role) else {
        return users_page(&console, &viewer, "Choose a role.", None, &username).await;
    };
    let sites = match parse_sites(&form.sites, &console.store.sites().await?)
        .and_then(|sites| within_scope(&viewer, sites))
    {
        Ok(sites) => sites,
        Err(e) => return users_page(&console, &viewer, &e, None, &username).await,
    };
    let audit_site = ConsoleUser::audit_site_for(sites.as_deref());
    let password = crate::auth::generate_password();
    let hash = crate::auth::hash_password(&password).map_err(|_| Problem::Internal)?;
    match console
        .store
        .create_console_user(
            NewConsoleUser {
                username: &username,
                password_hash: &hash,
                role,
                sites,
            },
            Timestamp::now(),
        )
        .await
    {
        Ok(_) => {}
        Err(crate::store::StoreError::UserExists(_)) => {
            return users_page(
                &console,
                &viewer,
                "That username is taken.",
                None,
                &username,
            )
            .await;
        }
        Err(e) => return Err(e.into()),
    }
    let _ = console
        .audit(
            &viewer,
            audit_site,
            "console_user_added",
            &format!("user {username}"),
            &format!("role={role} sites={}", form.sites.trim()),
        )
        .await;
    users_page(&console, &viewer, "", Some((username, password)), "").await
}

#[derive(Deserialize)]
pub struct UserChangeForm {
    #[serde(default)]
    action: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    sites: String,
}

pub async fn user_change(
    State(console): State<Console>,
    Path(id): Path<i64>,
    Submit(viewer, form, ..): Submit<UsersP, UserChangeForm>,
) -> PageResult {
    let Some(user) = console.store.console_user(id).await? else {
        return Err(Problem::NotFound);
    };
    // An administrator of some sites manages only accounts within them.
    if !viewer.user.all_sites && (user.all_sites || user.sites.iter().any(|s| !viewer.sees(*s))) {
        return users_page(
            &console,
            &viewer,
            "That account reaches sites you do not administer.",
            None,
            "",
        )
        .await;
    }
    if user.id == viewer.user.id && form.action != "role" {
        return users_page(
            &console,
            &viewer,
            "You cannot disable your own account here.",
            None,
            "",
        )
        .await;
    }
    let change = match form.action.as_str() {
        "disable" => UserChange::Disabled(true),
        "enable" => UserChange::Disabled(false),
        "reset_second_factor" => UserChange::Totp(String::new()),
        "role" => {
            let Some(role) = ConsoleRole::parse(&form.role) else {
                return users_page(&console, &viewer, "Choose a role.", None, "").await;
            };
            if user.id == viewer.user.id && role != ConsoleRole::Admin {
                return users_page(
                    &console,
                    &viewer,
                    "You cannot remove your own administrator role.",
                    None,
                    "",
                )
                .await;
            }
            match parse_sites(&form.sites, &console.store.sites().await?)
                .and_then(|sites| within_scope(&viewer, sites))
            {
                Ok(sites) => UserChange::Role { role, sites },
                Err(e) => return users_page(&console, &viewer, &e, None, "").await,
            }
        }
        _ => return Err(Problem::BadRequest("unknown action".into())),
    };
    if !console
        .store
        .update_console_user(id, change, Timestamp::now())
        .await?
    {
        return Err(Problem::NotFound);
    }
    // The account as it is now: a role change audits under its new sites.
    let audit_site = console
        .store
        .console_user(id)
        .await?
        .unwrap_or(user.clone())
        .audit_site();
    let detail = if form.action == "role" {
        format!("role={} sites={}", form.role, form.sites.trim())
    } else {
        String::new()
    };
    let _ = console
        .audit(
            &viewer,
            audit_site,
            &format!("console_user_{}", form.action),
            &format!("user {}", user.username),
            &detail,
        )
        .await;
    Ok(Redirect::to("/users").into_response())
}
