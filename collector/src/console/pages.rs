//! What the console's pages share — the sites a viewer may see, times in
//! a site's zone, status labels — and the dashboard. Each page's handlers
//! live in the module of its concern (`devices`, `flags`, `incidents`,
//! `audit`, `users`, …); each names the permission it needs in its
//! signature (`Allowed<P>` / `Submit<P, T>`, see `access`) and keeps to
//! the viewer's sites.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use jiff::Timestamp;
use serde::Deserialize;

use super::access::{Allowed, ReportsP, Viewer};
use super::{Console, Frame, Problem, chart, page};
use crate::model::{Site, SiteId};
use crate::rules::activity::ActivityStatus;

pub(super) type PageResult = Result<Response, Problem>;

/// A time in a site's zone, as people read it.
pub fn local(at: Timestamp, zone: &str) -> String {
    let tz = jiff::tz::TimeZone::get(zone).unwrap_or(jiff::tz::TimeZone::UTC);
    at.to_zoned(tz).strftime("%a %-d %b %Y %H:%M").to_string()
}

pub fn local_opt(at: Option<Timestamp>, zone: &str) -> String {
    at.map_or_else(|| "never".to_owned(), |t| local(t, zone))
}

/// The sites a viewer may see, by id.
pub(crate) async fn visible_sites(
    console: &Console,
    viewer: &Viewer,
) -> Result<Vec<Site>, Problem> {
    Ok(console
        .store
        .sites()
        .await?
        .into_iter()
        .filter(|s| viewer.sees(s.id))
        .collect())
}

/// A site's IANA zone (UTC for an unknown site), for showing times.
pub async fn site_zone(console: &Console, site: SiteId) -> Result<String, Problem> {
    Ok(console
        .store
        .sites()
        .await?
        .into_iter()
        .find(|s| s.id == site)
        .map_or("UTC".to_owned(), |s| s.timezone))
}

pub(super) fn status_label(status: ActivityStatus) -> &'static str {
    match status {
        ActivityStatus::Grace => "In grace period",
        ActivityStatus::Compliant => "Compliant",
        ActivityStatus::AtRisk => "At risk",
        ActivityStatus::NonCompliant => "Non-compliant",
        ActivityStatus::Disabled => "Disabled",
    }
}

// ---------------------------------------------------------------- dashboard

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage {
    frame: Frame,
    sites: Vec<(i64, String, bool)>,
    scope: String,
    devices: u64,
    online: u64,
    offline: u64,
    compliance: Vec<(String, String, u64)>,
    flags: Vec<(String, u64)>,
    incidents: Vec<(i64, u64)>,
    chart: String,
    daily: Vec<(String, u64)>,
}

#[derive(Deserialize)]
pub struct SiteQuery {
    #[serde(default)]
    site: String,
}

pub async fn dashboard(
    State(console): State<Console>,
    Allowed(viewer, _): Allowed<ReportsP>,
    Query(q): Query<SiteQuery>,
) -> PageResult {
    let sites = visible_sites(&console, &viewer).await?;
    // "" is every site the viewer sees.
    let chosen_id: Option<i64> = match q.site.trim() {
        "" => None,
        text => Some(text.parse().map_err(|_| Problem::NotFound)?),
    };
    let chosen: Vec<Site> = match chosen_id {
        Some(id) => {
            let site = sites.iter().find(|s| s.id.0 == id).cloned();
            vec![site.ok_or(Problem::NotFound)?]
        }
        None => sites.clone(),
    };
    let zone = chosen
        .first()
        .map_or("UTC".to_owned(), |s| s.timezone.clone());
    let tz = jiff::tz::TimeZone::get(&zone).unwrap_or(jiff::tz::TimeZone::UTC);
    let now = Timestamp::now();
    let today = now.to_zoned(tz.clone()).date();
    let days: Vec<jiff::civil::Date> = (0..28)
        .rev()
        .map(|back| today - jiff::Span::new().days(back))
        .collect();
    let labels: Vec<String> = days
        .iter()
        .map(|d| d.strftime("%-d %b").to_string())
        .collect();
    let ids: Vec<SiteId> = chosen.iter().map(|s| s.id).collect();
    let figures = console.store.dashboard(Some(&ids), &days, now).await?;
    let values: Vec<f64> = figures.daily_active.iter().map(|v| *v as f64).collect();
    let chart = chart::bars(
        "Devices in use each day, last 28 days",
        &labels,
        &values,
        None,
    );
    Ok(page(&DashboardPage {
        frame: Frame::new(&viewer, "Dashboard", "/"),
        sites: sites
            .iter()
            .map(|s| (s.id.0, s.name.clone(), chosen_id == Some(s.id.0)))
            .collect(),
        scope: match chosen_id {
            Some(_) => chosen[0].name.clone(),
            None if sites.len() == 1 => sites[0].name.clone(),
            None => "All your sites".into(),
        },
        devices: figures.devices,
        online: figures.online,
        offline: figures.devices.saturating_sub(figures.online),
        compliance: figures
            .compliance
            .iter()
            .map(|(s, n)| (s.as_str().to_owned(), status_label(*s).to_owned(), *n))
            .collect(),
        flags: figures
            .flags
            .iter()
            .map(|(k, n)| (k.replace('_', " "), *n))
            .collect(),
        incidents: figures.incidents.clone(),
        chart,
        daily: labels.into_iter().zip(figures.daily_active).collect(),
    }))
}
