//! The audit log page (administrators and DSLs), newest first, filtered
//! by site, actor and action, in keyset pages. An account reads the rows
//! of its own sites; only an account of every site also reads the
//! collector-wide rows (`AuditEntry::site` is `None`), which may name
//! other schools' staff.

use askama::Template;
use axum::extract::{Query, State};
use serde::Deserialize;

use super::access::{Allowed, AuditP};
use std::collections::HashMap;

use super::pages::{PageResult, local, visible_sites};
use super::{Console, Frame, Problem, page};
use crate::model::SiteId;
use crate::store::{AuditQuery, AuditRecord, AuditSites};

pub(super) struct AuditRow {
    pub(super) at: String,
    pub(super) actor: String,
    pub(super) action: String,
    pub(super) target: String,
    pub(super) detail: String,
    pub(super) address: String,
    /// The site's name, or "collector-wide" (the audit page only).
    pub(super) site: String,
}

pub(super) fn audit_row(a: &AuditRecord, zone: &str) -> AuditRow {
    AuditRow {
        at: local(a.at, zone),
        actor: a.actor.clone(),
        action: a.action.replace('_', " "),
        target: a.target.clone(),
        detail: a.detail.clone(),
        address: a.address.clone(),
        site: String::new(),
    }
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    frame: Frame,
    /// (value, label, chosen) for the site filter.
    sites: Vec<(String, String, bool)>,
    actor: String,
    action: String,
    rows: Vec<AuditRow>,
    next: String,
}

#[derive(Deserialize)]
pub struct AuditParams {
    /// "" every site the viewer sees; a site id; or "collector" for the
    /// collector-wide rows (accounts of every site only).
    #[serde(default)]
    site: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    before: Option<i64>,
}

pub const AUDIT_PER_PAGE: usize = 100;

/// The filter value for collector-wide rows.
const COLLECTOR_WIDE: &str = "collector";

pub async fn audit(
    State(console): State<Console>,
    Allowed(viewer, _): Allowed<AuditP>,
    Query(q): Query<AuditParams>,
) -> PageResult {
    let sites = visible_sites(&console, &viewer).await?;
    let all_sites = viewer.user.all_sites;
    let scope = match q.site.trim() {
        "" if all_sites => AuditSites::All,
        "" => AuditSites::Only(sites.iter().map(|s| s.id).collect()),
        COLLECTOR_WIDE if all_sites => AuditSites::CollectorWide,
        text => match text.parse::<i64>() {
            Ok(id) if sites.iter().any(|s| s.id.0 == id) => AuditSites::Only(vec![SiteId(id)]),
            // Another site's rows, or collector-wide ones for an account
            // of some sites: as if they did not exist.
            _ => return Err(Problem::NotFound),
        },
    };
    let rows = console
        .store
        .audit_entries(&AuditQuery {
            sites: scope,
            actor: q.actor.chars().take(100).collect(),
            action: q.action.chars().take(100).collect(),
            before: q.before,
            limit: AUDIT_PER_PAGE,
        })
        .await?;
    let next = match rows.last() {
        Some(last) if rows.len() == AUDIT_PER_PAGE => {
            let query = serde_urlencoded::to_string([
                ("site", q.site.clone()),
                ("actor", q.actor.clone()),
                ("action", q.action.clone()),
                ("before", last.id.to_string()),
            ])
            .unwrap_or_default();
            format!("/audit?{query}")
        }
        _ => String::new(),
    };
    // Each row in its site's zone; collector-wide rows in the first site's.
    let default_zone = sites.first().map_or("UTC", |s| s.timezone.as_str());
    let by_id: HashMap<SiteId, (&str, &str)> = sites
        .iter()
        .map(|s| (s.id, (s.name.as_str(), s.timezone.as_str())))
        .collect();
    let rows = rows
        .iter()
        .map(|a| {
            let (name, zone) = a
                .site
                .and_then(|id| by_id.get(&id).copied())
                .unwrap_or(("collector-wide", default_zone));
            AuditRow {
                site: name.to_owned(),
                ..audit_row(a, zone)
            }
        })
        .collect();
    let chosen = q.site.trim();
    let mut options = vec![(
        String::new(),
        if all_sites {
            "Everything".to_owned()
        } else {
            "All your sites".to_owned()
        },
        chosen.is_empty(),
    )];
    options.extend(sites.iter().map(|s| {
        let value = s.id.0.to_string();
        let here = value == chosen;
        (value, s.name.clone(), here)
    }));
    if all_sites {
        options.push((
            COLLECTOR_WIDE.to_owned(),
            "Collector-wide (no site)".to_owned(),
            chosen == COLLECTOR_WIDE,
        ));
    }
    Ok(page(&AuditPage {
        frame: Frame::new(&viewer, "Audit log", "/audit"),
        sites: options,
        actor: q.actor,
        action: q.action,
        rows,
        next,
    }))
}
