//! The audit log page (administrators and DSLs), newest first, filtered
//! by actor and action, in keyset pages.

use askama::Template;
use axum::extract::{Query, State};
use serde::Deserialize;

use super::access::{Allowed, AuditP};
use super::pages::{PageResult, local, visible_sites};
use super::{Console, Frame, Problem, page};
use crate::store::{AuditQuery, AuditRecord};

pub(super) struct AuditRow {
    pub(super) at: String,
    pub(super) actor: String,
    pub(super) action: String,
    pub(super) target: String,
    pub(super) detail: String,
    pub(super) address: String,
}

pub(super) fn audit_row(a: &AuditRecord, zone: &str) -> AuditRow {
    AuditRow {
        at: local(a.at, zone),
        actor: a.actor.clone(),
        action: a.action.replace('_', " "),
        target: a.target.clone(),
        detail: a.detail.clone(),
        address: a.address.clone(),
    }
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    frame: Frame,
    actor: String,
    action: String,
    rows: Vec<AuditRow>,
    next: String,
}

#[derive(Deserialize)]
pub struct AuditParams {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    before: Option<i64>,
}

pub const AUDIT_PER_PAGE: usize = 100;

pub async fn audit(
    State(console): State<Console>,
    Allowed(viewer, _): Allowed<AuditP>,
    Query(q): Query<AuditParams>,
) -> PageResult {
    // Audit rows are not tied to a site yet: only accounts that see every
    // site may read them.
    if !viewer.user.all_sites {
        return Err(Problem::Forbidden);
    }
    let zone = visible_sites(&console, &viewer)
        .await?
        .first()
        .map_or("UTC".to_owned(), |s| s.timezone.clone());
    let rows = console
        .store
        .audit_entries(&AuditQuery {
            actor: q.actor.chars().take(100).collect(),
            action: q.action.chars().take(100).collect(),
            before: q.before,
            limit: AUDIT_PER_PAGE,
        })
        .await?;
    let next = match rows.last() {
        Some(last) if rows.len() == AUDIT_PER_PAGE => {
            let query = serde_urlencoded::to_string([
                ("actor", q.actor.clone()),
                ("action", q.action.clone()),
                ("before", last.id.to_string()),
            ])
            .unwrap_or_default();
            format!("/audit?{query}")
        }
        _ => String::new(),
    };
    Ok(page(&AuditPage {
        frame: Frame::new(&viewer, "Audit log", "/audit"),
        actor: q.actor,
        action: q.action,
        rows: rows.iter().map(|a| audit_row(a, &zone)).collect(),
        next,
    }))
}
