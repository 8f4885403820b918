//! The annual review page and its PDF (every role: governors see this and
//! the dashboard, nothing else), and the DSL's risk profile of one pupil
//! account or one device (Incidents permission: pupil-level data). Every
//! view and download is audited.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Deserialize;

use super::access::{Allowed, IncidentsP, ReportsP, Viewer};
use super::pages::{PageResult, local, visible_sites};
use super::{Console, Frame, Problem, chart, page};
use crate::annual_review::{self, AnnualReview, Count, duration_words, period_of, period_words};
use crate::model::{DeviceId, Site};
use crate::risk::{self, Subject};

/// Which sites and period a report or profile covers, as the forms send
/// it: dates (`YYYY-MM-DD`, site time, both days included).
#[derive(Deserialize, Default, Clone)]
pub struct PeriodQuery {
    #[serde(default)]
    site: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    account: String,
    #[serde(default)]
    device: String,
}

impl PeriodQuery {
    fn query_string(&self) -> String {
        let pairs = [
            ("site", self.site.as_str()),
            ("from", &self.from),
            ("to", &self.to),
            ("account", &self.account),
            ("device", &self.device),
        ];
        serde_urlencoded::to_string(
            pairs
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .collect::<Vec<_>>(),
        )
        .unwrap_or_default()
    }
}

/// The sites a query names (one of the viewer's, by id) or every site the
/// viewer sees.
async fn chosen_sites(
    console: &Console,
    viewer: &Viewer,
    site: &str,
) -> Result<(Vec<Site>, Vec<Site>), Problem> {
    let sites = visible_sites(console, viewer).await?;
    let chosen = match site.trim() {
        "" => sites.clone(),
        text => {
            let id: i64 = text.parse().map_err(|_| Problem::NotFound)?;
            vec![
                sites
                    .iter()
                    .find(|s| s.id.0 == id)
                    .cloned()
                    .ok_or(Problem::NotFound)?,
            ]
        }
    };
    if chosen.is_empty() {
        return Err(Problem::NotFound);
    }
    Ok((sites, chosen))
}

fn zone_of(sites: &[Site]) -> TimeZone {
    sites
        .first()
        .and_then(|s| TimeZone::get(&s.timezone).ok())
        .unwrap_or(TimeZone::UTC)
}

async fn review_for(
    console: &Console,
    viewer: &Viewer,
    q: &PeriodQuery,
) -> Result<(AnnualReview, Vec<Site>, String), Problem> {
    let (sites, chosen) = chosen_sites(console, viewer, &q.site).await?;
    let zone = zone_of(&chosen);
    let now = Timestamp::now();
    let period = period_of(&q.from, &q.to, &zone, now, 365).map_err(Problem::BadRequest)?;
    let review = annual_review::gather(
        console.store.as_ref(),
        &chosen,
        period,
        now,
        annual_review::DEFAULT_REPORTING_DAYS,
    )
    .await?;
    Ok((review, sites, period_words(period, &zone)))
}

fn audit_site(chosen: &AnnualReview, sites: &[Site]) -> Option<crate::model::SiteId> {
    match chosen.sites.as_slice() {
        [one] => sites.iter().find(|s| &s.name == one).map(|s| s.id),
        _ => None,
    }
}

fn rows(counts: &[Count], prefix: &str) -> Vec<(String, u64)> {
    counts
        .iter()
        .map(|c| (format!("{prefix}{}", c.key.replace('_', " ")), c.count))
        .collect()
}

#[derive(Template)]
#[template(path = "report.html")]
struct ReportPage {
    frame: Frame,
    sites: Vec<(i64, String, bool)>,
    from: String,
    to: String,
    pdf_link: String,
    period: String,
    r: AnnualReview,
    signals: Vec<(String, u64)>,
    activity_now: Vec<(String, u64)>,
    mfa_now: Vec<(String, u64)>,
    captures_by_grade: Vec<(String, u64)>,
    captures_by_category: Vec<(String, u64)>,
    incidents_by_severity: Vec<(String, u64)>,
    incidents_by_category: Vec<(String, u64)>,
    outcomes: Vec<(String, u64)>,
    roles: Vec<(String, u64)>,
    alerts_by_severity: Vec<(String, u64)>,
    alerts_by_category: Vec<(String, u64)>,
    median: String,
    p90: String,
    chart: String,
}

pub async fn report(
    State(console): State<Console>,
    Allowed(viewer, _): Allowed<ReportsP>,
    Query(q): Query<PeriodQuery>,
) -> PageResult {
    let (r, sites, period) = review_for(&console, &viewer, &q).await?;
    console
        .audit(
            &viewer,
            audit_site(&r, &sites),
            "report_viewed",
            &format!("report {}", r.sites.join(", ")),
            &period,
        )
        .await?;
    let labels: Vec<String> = r
        .compliance
        .months
        .iter()
        .map(|m| m.month.clone())
        .collect();
    let values: Vec<f64> = r
        .compliance
        .months
        .iter()
        .map(|m| m.inactive_at_end as f64)
        .collect();
    let chart = chart::bars(
        "Devices flagged inactive at the end of each month",
        &labels,
        &values,
        None,
    );
    let time = |ms: Option<i64>| ms.map_or("no review yet".to_owned(), duration_words);
    Ok(page(&ReportPage {
        frame: Frame::new(&viewer, "Monitoring review", "/report"),
        sites: sites
            .iter()
            .map(|s| (s.id.0, s.name.clone(), q.site == s.id.0.to_string()))
            .collect(),
        from: q.from.clone(),
        to: q.to.clone(),
        pdf_link: format!("/report/pdf?{}", q.query_string()),
        period,
        signals: rows(&r.coverage.agent_signals, ""),
        activity_now: rows(&r.compliance.activity_now, ""),
        mfa_now: rows(&r.compliance.mfa_now, ""),
        captures_by_grade: rows(&r.captures.by_grade, "Grade "),
        captures_by_category: rows(&r.captures.by_category, ""),
        incidents_by_severity: rows(&r.incidents.by_severity, "Severity "),
        incidents_by_category: rows(&r.incidents.by_category, ""),
        outcomes: rows(&r.review.outcomes, ""),
        roles: rows(&r.access.by_role, ""),
        alerts_by_severity: rows(&r.freedom_of_information.alerts_by_severity, "Severity "),
        alerts_by_category: rows(&r.freedom_of_information.alerts_by_category, ""),
        median: time(r.review.median_ms),
        p90: time(r.review.p90_ms),
        chart,
        r,
    }))
}

pub async fn report_pdf(
    State(console): State<Console>,
    Allowed(viewer, _): Allowed<ReportsP>,
    Query(q): Query<PeriodQuery>,
) -> PageResult {
    let (r, sites, period) = review_for(&console, &viewer, &q).await?;
    console
        .audit(
            &viewer,
            audit_site(&r, &sites),
            "report_downloaded",
            &format!("report {}", r.sites.join(", ")),
            &format!("{period}; pdf"),
        )
        .await?;
    let bytes = annual_review::pdf::render(&r, &period);
    let name = format!(
        "monitoring-review-{}.pdf",
        r.to.to_zoned(TimeZone::get(&r.timezone).unwrap_or(TimeZone::UTC))
            .date()
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/pdf".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        bytes,
    )
        .into_response())
}

// ------------------------------------------------------------ risk profile

struct GradeRow {
    category: String,
    grades: [u64; 5],
    total: u64,
}

struct HeatRow {
    rule: String,
    category: String,
    /// (count, shade 0–4) per hour.
    cells: Vec<(u64, u8)>,
}

struct IncidentRow {
    id: i64,
    hostname: String,
    category: String,
    severity: i64,
    opened: String,
    captures: i64,
}

#[derive(Template)]
#[template(path = "risk.html")]
struct RiskPage {
    frame: Frame,
    sites: Vec<(i64, String, bool)>,
    q: PeriodQuery,
    subject: String,
    period: String,
    total: u64,
    grades: Vec<GradeRow>,
    chart: String,
    weeks: Vec<(String, u64)>,
    hours: Vec<u8>,
    heat: Vec<HeatRow>,
    incidents: Vec<IncidentRow>,
}

pub async fn risk_profile(
    State(console): State<Console>,
    Allowed(viewer, _): Allowed<IncidentsP>,
    Query(q): Query<PeriodQuery>,
) -> PageResult {
    let subject = match (q.account.trim(), q.device.trim()) {
        ("", "") => {
            return Err(Problem::BadRequest(
                "Name a pupil account or a device: open the risk profile from an incident or a device page."
                    .into(),
            ));
        }
        (account, "") => Subject::Account(account.to_owned()),
        ("", device) => Subject::Device(DeviceId::from_string(device)),
        _ => {
            return Err(Problem::BadRequest(
                "Name an account or a device, not both.".into(),
            ));
        }
    };
    let (sites, chosen) = chosen_sites(&console, &viewer, &q.site).await?;
    let zone = zone_of(&chosen);
    let now = Timestamp::now();
    let period = period_of(&q.from, &q.to, &zone, now, 90).map_err(Problem::BadRequest)?;
    let mut captures = Vec::new();
    let mut open = Vec::new();
    for site in &chosen {
        captures.extend(
            console
                .store
                .subject_captures(site.id, &subject, period)
                .await?,
        );
        open.extend(
            console
                .store
                .subject_open_incidents(site.id, &subject)
                .await?,
        );
    }
    let (subject_words, target) = match &subject {
        Subject::Account(a) => (format!("account {a}"), format!("account {a}")),
        Subject::Device(d) => (format!("device {d}"), format!("device {d}")),
    };
    let words = period_words(period, &zone);
    console
        .audit(
            &viewer,
            match chosen.as_slice() {
                [one] => Some(one.id),
                _ => None,
            },
            "risk_profile_viewed",
            &target,
            &words,
        )
        .await?;
    let f = risk::figures(&captures, period, &zone);
    let highest = f.heatmap.iter().flat_map(|r| r.hours).max().unwrap_or(0);
    let labels: Vec<String> = f.weeks.iter().map(|(w, _)| w.clone()).collect();
    let values: Vec<f64> = f.weeks.iter().map(|(_, n)| *n as f64).collect();
    let zone_name = chosen.first().map_or("UTC", |s| s.timezone.as_str());
    Ok(page(&RiskPage {
        frame: Frame::new(&viewer, format!("Risk profile: {subject_words}"), ""),
        sites: sites
            .iter()
            .map(|s| (s.id.0, s.name.clone(), q.site == s.id.0.to_string()))
            .collect(),
        subject: subject_words,
        period: words,
        total: f.total,
        grades: f
            .by_category
            .into_iter()
            .map(|c| GradeRow {
                category: c.category,
                grades: c.grades,
                total: c.total,
            })
            .collect(),
        chart: chart::bars("Captures per week (week starting)", &labels, &values, None),
        weeks: f.weeks,
        hours: (0..24).collect(),
        heat: f
            .heatmap
            .into_iter()
            .map(|r| HeatRow {
                rule: r.rule_id,
                category: r.category,
                cells: r
                    .hours
                    .iter()
                    .map(|n| (*n, risk::shade(*n, highest)))
                    .collect(),
            })
            .collect(),
        incidents: open
            .into_iter()
            .map(|i| IncidentRow {
                id: i.id,
                hostname: i.hostname,
                category: i.category,
                severity: i.severity,
                opened: local(i.opened_at, zone_name),
                captures: i.capture_count,
            })
            .collect(),
        q,
    }))
}

/// The risk profile's address for an account or a device of a site.
pub fn risk_link(
    site: crate::model::SiteId,
    account: Option<&str>,
    device: Option<&str>,
) -> String {
    let site = site.0.to_string();
    let mut pairs = vec![("site", site.as_str())];
    if let Some(a) = account {
        pairs.push(("account", a));
    }
    if let Some(d) = device {
        pairs.push(("device", d));
    }
    format!(
        "/risk?{}",
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests;
