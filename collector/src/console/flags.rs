//! Flags: the list (with bulk actions), one flag's page and history, and
//! `act_on_flag`, the one way a person changes a flag (the JSON API uses
//! it too).

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect};
use jiff::Timestamp;
use serde::Deserialize;

use super::access::{Allowed, FlagsP, Submit, Viewer};
use super::pages::{PageResult, local, site_zone, visible_sites};
use super::{Console, Frame, Problem, page, with_form_error};
use crate::flags::{FlagAction, FlagKind, FlagRecord, FlagState, FlagTransition};
use crate::model::SiteId;
use crate::store::DeviceFilter;

pub(super) struct FlagRow {
    pub(super) id: i64,
    pub(super) site: String,
    pub(super) device: String,
    pub(super) hostname: String,
    pub(super) kind: String,
    pub(super) account: String,
    pub(super) state: String,
    pub(super) opened: String,
    pub(super) summary: String,
    pub(super) can_approve: bool,
    pub(super) can_dismiss: bool,
    pub(super) can_reenable: bool,
}

pub(super) fn flag_row(f: &FlagRecord, zone: &str) -> FlagRow {
    use crate::flags::next_state;
    let can = |a| next_state(f.id, f.kind, f.state, a).is_ok();
    FlagRow {
        id: f.id,
        site: f.site.clone(),
        device: f.device_id.to_string(),
        hostname: f.hostname.clone(),
        kind: f.kind.as_str().replace('_', " "),
        account: f.account.clone(),
        state: f.state.as_str().replace('_', " "),
        opened: local(f.opened_at, zone),
        summary: f.summary.clone(),
        can_approve: can(FlagAction::Approve),
        can_dismiss: can(FlagAction::Dismiss),
        can_reenable: can(FlagAction::Reenable),
    }
}

#[derive(Template)]
#[template(path = "flags.html")]
struct FlagsPage {
    frame: Frame,
    state: String,
    /// The kind shown ("" for every kind), and (value, label, chosen).
    kind: String,
    kinds: Vec<(&'static str, String, bool)>,
    rows: Vec<FlagRow>,
    notice: String,
}

#[derive(Deserialize)]
pub struct FlagsQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    kind: String,
    /// After a bulk action: what it was and how many flags it changed
    /// and could not change (numbers only, so a link cannot put words
    /// on this page).
    #[serde(default)]
    action: String,
    done: Option<u32>,
    refused: Option<u32>,
}

async fn visible_flags(
    console: &Console,
    viewer: &Viewer,
    state: Option<FlagState>,
) -> Result<Vec<FlagRecord>, Problem> {
    Ok(console
        .store
        .list_flags(&DeviceFilter::default(), state)
        .await?
        .into_iter()
        .filter(|f| viewer.sees(f.site_id))
        .collect())
}

pub async fn flags(
    State(console): State<Console>,
    Allowed(viewer, _): Allowed<FlagsP>,
    Query(q): Query<FlagsQuery>,
) -> PageResult {
    let state = match q.state.as_str() {
        "" | "active" => None,
        "all" => None,
        text => Some(
            FlagState::parse(text)
                .ok_or(Problem::BadRequest(format!("unknown flag state '{text}'")))?,
        ),
    };
    let zones: HashMap<SiteId, String> = visible_sites(&console, &viewer)
        .await?
        .into_iter()
        .map(|s| (s.id, s.timezone))
        .collect();
    let kind = match q.kind.as_str() {
        "" | "all" => None,
        text => Some(
            FlagKind::parse(text)
                .ok_or(Problem::BadRequest(format!("unknown flag kind '{text}'")))?,
        ),
    };
    let mut list = visible_flags(&console, &viewer, state).await?;
    if q.state.is_empty() || q.state == "active" {
        list.retain(|f| f.state.is_active());
    }
    if let Some(kind) = kind {
        list.retain(|f| f.kind == kind);
    }
    Ok(page(&FlagsPage {
        frame: Frame::new(&viewer, "Flags", "/flags"),
        state: q.state,
        kind: kind.map_or("", FlagKind::as_str).to_owned(),
        kinds: FlagKind::ALL
            .iter()
            .map(|k| (k.as_str(), k.as_str().replace('_', " "), Some(*k) == kind))
            .collect(),
        rows: list
            .iter()
            .map(|f| flag_row(f, zones.get(&f.site_id).map_or("UTC", |z| z.as_str())))
            .collect(),
        notice: match (parse_action(&q.action), q.done, q.refused) {
            (Some(action), Some(done), refused) => {
                let mut notice = format!("{done} flag(s) {}.", action.verb());
                if let Some(refused @ 1..) = refused {
                    notice.push_str(&format!(
                        " {refused} could not be: their state does not allow it, or a reason is needed."
                    ));
                }
                notice
            }
            _ => String::new(),
        },
    }))
}

#[derive(Template)]
#[template(path = "flag.html")]
struct FlagPage {
    frame: Frame,
    f: FlagRow,
    explanation: &'static str,
    history: Vec<(String, String, String, String)>,
    error: String,
}

/// What a flag of `kind` means and what a person does about it.
fn explain(kind: FlagKind) -> &'static str {
    match kind {
        FlagKind::DeviceInactive => {
            "The device was not logged in to for the time the site requires in the period. Approve disabling it, or dismiss the flag with a reason."
        }
        FlagKind::MfaStale => {
            "This staff account has not completed two-step sign-in on this device within the period the school's policy requires. Dismiss the flag with a reason once it is dealt with."
        }
        FlagKind::Tamper => {
            "Possible tampering with the agent: it was stopped while the machine kept running, the clock was moved, a session helper was killed or missing, or the device went silent while the identity provider saw sign-ins from it. Check the device (the agent running and up to date, who used it then, whether it was reinstalled or its clock changed; its page lists the agent's signals). Only a person closes this flag: dismiss it with a reason once you know what happened. Further signs while it is open are listed on the device page."
        }
    }
}

async fn flag_page(console: &Console, viewer: &Viewer, id: i64, error: &str) -> PageResult {
    let Some(flag) = console.store.flag(id).await? else {
        return Err(Problem::NotFound);
    };
    if !viewer.sees(flag.site_id) {
        return Err(Problem::NotFound);
    }
    let zone = site_zone(console, flag.site_id).await?;
    let history = console
        .store
        .flag_history(id)
        .await?
        .into_iter()
        .map(|t: FlagTransition| {
            (
                local(t.at, &zone),
                t.actor,
                t.to.as_str().replace('_', " "),
                t.reason,
            )
        })
        .collect();
    Ok(with_form_error(
        page(&FlagPage {
            frame: Frame::new(viewer, format!("Flag {id}"), "/flags"),
            f: flag_row(&flag, &zone),
            explanation: explain(flag.kind),
            history,
            error: error.to_owned(),
        }),
        error,
    ))
}

pub async fn flag(
    State(console): State<Console>,
    Allowed(viewer, _): Allowed<FlagsP>,
    Path(id): Path<i64>,
) -> PageResult {
    flag_page(&console, &viewer, id, "").await
}

#[derive(Deserialize)]
pub struct FlagActionForm {
    #[serde(default)]
    action: String,
    #[serde(default)]
    reason: String,
}

fn parse_action(text: &str) -> Option<FlagAction> {
    match text {
        "approve" => Some(FlagAction::Approve),
        "dismiss" => Some(FlagAction::Dismiss),
        "reenable" => Some(FlagAction::Reenable),
        _ => None,
    }
}

/// Applies one action to one flag the viewer may see; Err is the message
/// for the person.
pub(crate) async fn act_on_flag(
    console: &Console,
    viewer: &Viewer,
    id: i64,
    action: FlagAction,
    reason: &str,
) -> Result<Result<FlagRecord, String>, Problem> {
    let site = match console.store.flag(id).await? {
        Some(flag) if viewer.sees(flag.site_id) => flag.site_id,
        _ => return Ok(Err(format!("There is no flag {id}."))),
    };
    // The reason goes into the flag's history and the audit log: bounded.
    let reason: String = reason.trim().chars().take(1000).collect();
    let reason = reason.as_str();
    let outcome = console
        .store
        .transition_flag(id, action, &viewer.actor, reason, Timestamp::now())
        .await?;
    Ok(match outcome {
        Ok(flag) => {
            let _ = console
                .audit(
                    viewer,
                    Some(site),
                    &format!("flag_{}", action.verb().replace([' ', '-'], "_")),
                    &format!("flag {id}"),
                    reason,
                )
                .await;
            Ok(flag)
        }
        Err(e) => Err(e.to_string()),
    })
}

pub async fn flag_action(
    State(console): State<Console>,
    Path(id): Path<i64>,
    Submit(viewer, form, ..): Submit<FlagsP, FlagActionForm>,
) -> PageResult {
    let Some(action) = parse_action(&form.action) else {
        return flag_page(
            &console,
            &viewer,
            id,
            "Choose approve, dismiss or re-enable.",
        )
        .await;
    };
    match act_on_flag(&console, &viewer, id, action, &form.reason).await? {
        Ok(_) => Ok(Redirect::to(&format!("/flags/{id}")).into_response()),
        Err(message) => flag_page(&console, &viewer, id, &message).await,
    }
}

/// Several flags at once: the form's `flag` fields are the ids.
pub async fn flags_bulk(
    State(console): State<Console>,
    Submit(viewer, form, ..): Submit<FlagsP, Vec<(String, String)>>,
) -> PageResult {
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    };
    let Some(action) = parse_action(field("action")) else {
        return Err(Problem::BadRequest(
            "choose approve, dismiss or re-enable".into(),
        ));
    };
    let reason = field("reason").to_owned();
    let ids: Vec<i64> = form
        .iter()
        .filter(|(k, _)| k == "flag")
        .filter_map(|(_, v)| v.parse().ok())
        .take(500)
        .collect();
    let (mut done, mut refused) = (0, 0);
    for id in &ids {
        match act_on_flag(&console, &viewer, *id, action, &reason).await? {
            Ok(_) => done += 1,
            Err(_) => refused += 1,
        }
    }
    let action = field("action");
    Ok(Redirect::to(&format!(
        "/flags?action={action}&done={done}&refused={refused}"
    ))
    .into_response())
}
