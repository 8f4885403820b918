//! The console's pages. Each handler names the permission it needs in its
//! signature (`Allowed<P>` / `Submit<P, T>`, see `access`) and keeps to the
//! viewer's sites.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;

use super::access::{
    Allowed, AuditP, DevicesP, FlagsP, IncidentsP, ReportsP, Submit, UsersP, Viewer,
};
use super::login::Empty;
use super::{Console, Frame, Problem, chart, page, site_zone, with_form_error};
use crate::evidence_export::{self, ExportError, Exporter};
use crate::flags::{FlagAction, FlagRecord, FlagState, FlagTransition};
use crate::incidents::{CaptureRow, IncidentRecord};
use crate::model::{
    CommandRecord, Connectivity, ConsoleRole, DeviceId, DeviceRecord, OutboxHealth, Site, SiteId,
};
use crate::rules::activity::ActivityStatus;
use crate::store::{
    AuditQuery, AuditRecord, ConsoleUser, DeviceFilter, DeviceQuery, NewConsoleUser, StoredPair,
    UserChange,
};

type PageResult = Result<Response, Problem>;

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

fn status_label(status: ActivityStatus) -> &'static str {
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

// ---------------------------------------------------------------- devices

#[derive(Template)]
#[template(path = "devices.html")]
struct DevicesPage {
    frame: Frame,
    q: DevicesQuery,
    sites: Vec<(i64, String)>,
    rows: Vec<DeviceRow>,
    next: String,
    error: String,
}

struct DeviceRow {
    id: String,
    hostname: String,
    site: String,
    os: String,
    online: bool,
    last_seen: String,
    enforcement: String,
    status: String,
    gaps: u64,
}

#[derive(Deserialize, Default, Clone)]
pub struct DevicesQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    site: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    compliance: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    after: String,
}

impl DevicesQuery {
    /// This query's address with `after` set (the next page).
    fn link_after(&self, hostname: &str, id: &str) -> String {
        let pairs = [
            ("q", self.q.as_str()),
            ("site", &self.site),
            ("status", &self.status),
            ("compliance", &self.compliance),
            ("os", &self.os),
            ("after", &format!("{hostname}\u{1f}{id}")),
        ];
        let query = serde_urlencoded::to_string(
            pairs
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .collect::<Vec<_>>(),
        )
        .unwrap_or_default();
        format!("/devices?{query}")
    }
}

pub const DEVICES_PER_PAGE: usize = 50;

pub async fn devices(
    State(console): State<Console>,
    Allowed(viewer, _): Allowed<DevicesP>,
    Query(q): Query<DevicesQuery>,
) -> PageResult {
    let sites = visible_sites(&console, &viewer).await?;
    let now = Timestamp::now();
    let mut error = String::new();
    let site_ids: Vec<SiteId> = match q.site.parse::<i64>() {
        Ok(id) if sites.iter().any(|s| s.id.0 == id) => vec![SiteId(id)],
        Ok(_) => return Err(Problem::NotFound),
        Err(_) => sites.iter().map(|s| s.id).collect(),
    };
    let connectivity = match q.status.as_str() {
        "online" => Some(Connectivity::Online),
        "offline" => Some(Connectivity::Offline),
        "" => None,
        _ => {
            error = "Unknown status filter; showing all.".into();
            None
        }
    };
    let compliance = match q.compliance.as_str() {
        "" => None,
        text => match ActivityStatus::parse(text) {
            Some(s) => Some(s),
            None => {
                error = "Unknown compliance filter; showing all.".into();
                None
            }
        },
    };
    let after = q
        .after
        .split_once('\u{1f}')
        .map(|(h, i)| (h.to_owned(), i.to_owned()));
    let mut list = console
        .store
        .device_page(&DeviceQuery {
            sites: Some(site_ids),
            text: q.q.chars().take(200).collect(),
            connectivity,
            compliance,
            os: q.os.chars().take(100).collect(),
            now: Some(now),
            after,
            limit: DEVICES_PER_PAGE + 1,
        })
        .await?;
    let next = if list.len() > DEVICES_PER_PAGE {
        list.truncate(DEVICES_PER_PAGE);
        let last = list.last().expect("not empty");
        q.link_after(&last.hostname, last.id.as_str())
    } else {
        String::new()
    };
    let rows = list.iter().map(|d| device_row(d, now)).collect();
    Ok(page(&DevicesPage {
        frame: Frame::new(&viewer, "Devices", "/devices"),
        sites: sites.iter().map(|s| (s.id.0, s.name.clone())).collect(),
        q,
        rows,
        next,
        error,
    }))
}

fn device_row(d: &DeviceRecord, now: Timestamp) -> DeviceRow {
    DeviceRow {
        id: d.id.to_string(),
        hostname: d.hostname.clone(),
        site: d.site.clone(),
        os: format!("{} {}", d.facts.os_name, d.facts.os_version)
            .trim()
            .to_owned(),
        online: d.connectivity(now) == Connectivity::Online,
        last_seen: local_opt(d.last_seen_at, &d.site_timezone),
        enforcement: d.enforcement.as_str().replace('_', " "),
        status: d.status.as_str().to_owned(),
        gaps: d.open_gaps,
    }
}

// ---------------------------------------------------------------- device

#[derive(Template)]
#[template(path = "device.html")]
struct DevicePage {
    frame: Frame,
    d: DeviceRow,
    facts: Vec<(&'static str, String)>,
    compliance: String,
    compliance_detail: String,
    chart: String,
    sessions: Vec<(String, String, String, String, String)>,
    mfa: Vec<(String, String, String, String)>,
    flags: Vec<FlagRow>,
    commands: Vec<(String, String, String)>,
    outbox: Vec<(String, String)>,
    gaps: Vec<(String, String, String)>,
    audit: Vec<AuditRow>,
    policy_version: u64,
}

pub async fn device(
    State(console): State<Console>,
    Allowed(viewer, _): Allowed<DevicesP>,
    Path(id): Path<String>,
) -> PageResult {
    let id = DeviceId::from_string(id);
    let Some(d) = console.store.device(&id).await? else {
        return Err(Problem::NotFound);
    };
    let sites = visible_sites(&console, &viewer).await?;
    let Some(site) = sites.iter().find(|s| s.name == d.site).cloned() else {
        // Another site's device: as if it did not exist.
        return Err(Problem::NotFound);
    };
    let now = Timestamp::now();
    let zone = d.site_timezone.clone();
    let filter = DeviceFilter::one(id.clone());
    let rule = crate::site_settings::activity_rule(
        &console.config,
        &site.name,
        console.store.site_override(site.id).await?.as_ref(),
    );
    let window = rule.thresholds.window;
    let required = rule.thresholds.required;
    let inputs = console
        .store
        .activity_inputs(&filter, now - window, None, 1)
        .await?;
    let verdict = console
        .store
        .stored_activity(&filter)
        .await?
        .into_iter()
        .next();
    // Cumulative logged-in minutes over the window, day by day.
    let tz = jiff::tz::TimeZone::get(&zone).unwrap_or(jiff::tz::TimeZone::UTC);
    let mut labels = Vec::new();
    let mut cumulative = Vec::new();
    let mut sessions = Vec::new();
    if let Some(input) = inputs.first() {
        let heartbeat = SignedDuration::from_secs(i64::from(input.heartbeat_interval_secs.max(1)));
        let intervals: Vec<_> = input
            .sessions
            .iter()
            .filter_map(|s| s.interval(&rule.sessions, now, input.last_seen_at, heartbeat))
            .collect();
        let start = now - window;
        let days = (window.as_secs() / 86_400).max(1);
        let mut total = 0.0;
        for day in 0..days {
            let from = start + SignedDuration::from_hours(24 * day);
            let to = (from + SignedDuration::from_hours(24)).min(now);
            let mut secs = 0.0;
            for i in &intervals {
                let a = i.start.max(from);
                let b = i.end.min(to);
                if b > a {
                    secs += b.duration_since(a).as_secs_f64();
                }
            }
            total += secs / 60.0;
            cumulative.push(total);
            labels.push(to.to_zoned(tz.clone()).strftime("%-d %b").to_string());
        }
        let mut list: Vec<_> = input.sessions.iter().collect();
        list.sort_by_key(|s| std::cmp::Reverse(s.started_at));
        for s in list.into_iter().take(20) {
            sessions.push((
                s.account.clone(),
                format!("{:?}", s.kind).to_lowercase(),
                local(s.started_at, &zone),
                s.ended_at.map_or("open".into(), |e| local(e, &zone)),
                format!("{} min", s.active_secs / 60),
            ));
        }
    }
    let chart = chart::bars(
        "Logged-in minutes accumulated over the rule's window",
        &labels,
        &cumulative,
        Some((required.as_secs_f64() / 60.0, "required")),
    );
    let (compliance, compliance_detail) = match &verdict {
        Some(v) => (
            status_label(v.status).to_owned(),
            format!(
                "{} min used in the window since {}; {}{}",
                v.used_secs / 60,
                local(v.window_start, &zone),
                match v.breach_at {
                    Some(b) =>
                        format!("non-compliant from {} without further use", local(b, &zone)),
                    None => "no breach date".into(),
                },
                match v.grace_until {
                    Some(g) => format!("; grace until {}", local(g, &zone)),
                    None => String::new(),
                }
            ),
        ),
        None => ("Not evaluated yet".into(), String::new()),
    };
    let mfa = console
        .store
        .mfa_pairs(&filter, None)
        .await?
        .into_iter()
        .map(|p: StoredPair| {
            (
                p.account,
                p.status.as_str().replace('_', " "),
                local_opt(p.last_mfa, &zone),
                local_opt(p.expires_at, &zone),
            )
        })
        .collect();
    let flags = console
        .store
        .list_flags(&filter, None)
        .await?
        .iter()
        .map(|f| flag_row(f, &zone))
        .collect();
    let commands = console
        .store
        .pending_commands(&id)
        .await?
        .into_iter()
        .map(|c: CommandRecord| {
            (
                format!("{:?}", c.kind).to_lowercase(),
                c.reason,
                local(c.issued_at, &zone),
            )
        })
        .collect();
    let health: OutboxHealth = console.store.outbox_health(&id).await?;
    let mut outbox: Vec<(String, String)> = health
        .evicted
        .iter()
        .map(|(class, n)| (format!("Evicted ({class})"), n.to_string()))
        .collect();
    outbox.push((
        "Corrupt outbox replaced".into(),
        health.corrupt_replacements.to_string(),
    ));
    outbox.push(("Quarantined events".into(), health.quarantined.to_string()));
    outbox.push((
        "Captures refused".into(),
        health.captures_refused.to_string(),
    ));
    outbox.push(("Sequence gap".into(), d.sequence_gap().to_string()));
    outbox.push((
        "Last report".into(),
        local_opt(health.last_report_at, &zone),
    ));
    let gaps = health
        .monitoring_gaps
        .iter()
        .map(|g| {
            (
                format!("uid {} ({})", g.uid, g.gap.replace('_', " ")),
                local(g.started_at, &zone),
                g.ended_at.map_or("open".into(), |e| local(e, &zone)),
            )
        })
        .collect();
    let audit = console
        .store
        .audit_for_target(id.as_str(), 20)
        .await?
        .iter()
        .map(|a| audit_row(a, &zone))
        .collect();
    let f = &d.facts;
    let facts = vec![
        ("Device id", d.id.to_string()),
        ("Site", d.site.clone()),
        (
            "Operating system",
            format!("{} {}", f.os_name, f.os_version),
        ),
        ("Kernel", f.kernel_version.clone()),
        ("Serial number", f.serial_number.clone()),
        (
            "Processor",
            format!("{} ({} cores)", f.cpu_model, f.cpu_cores),
        ),
        (
            "Memory",
            format!("{:.1} GiB", f.memory_total_bytes as f64 / 1073741824.0),
        ),
        ("Agent version", f.agent_version.clone()),
        ("Enrolled", local(d.enrolled_at, &zone)),
        ("Status", d.status.as_str().to_owned()),
    ];
    let _ = console
        .audit(&viewer, "console_device_viewed", id.as_str(), "")
        .await;
    Ok(page(&DevicePage {
        frame: Frame::new(&viewer, format!("Device {}", d.hostname), "/devices"),
        d: device_row(&d, now),
        facts,
        compliance,
        compliance_detail,
        chart,
        sessions,
        mfa,
        flags,
        commands,
        outbox,
        gaps,
        audit,
        policy_version: d.policy_version,
    }))
}

// ---------------------------------------------------------------- flags

struct FlagRow {
    id: i64,
    site: String,
    device: String,
    hostname: String,
    kind: String,
    account: String,
    state: String,
    opened: String,
    summary: String,
    can_approve: bool,
    can_dismiss: bool,
    can_reenable: bool,
}

fn flag_row(f: &FlagRecord, zone: &str) -> FlagRow {
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
    rows: Vec<FlagRow>,
    notice: String,
}

#[derive(Deserialize)]
pub struct FlagsQuery {
    #[serde(default)]
    state: String,
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
    let mut list = visible_flags(&console, &viewer, state).await?;
    if q.state.is_empty() || q.state == "active" {
        list.retain(|f| f.state.is_active());
    }
    Ok(page(&FlagsPage {
        frame: Frame::new(&viewer, "Flags", "/flags"),
        state: q.state,
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
    history: Vec<(String, String, String, String)>,
    error: String,
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
    match console.store.flag(id).await? {
        Some(flag) if viewer.sees(flag.site_id) => {}
        _ => return Ok(Err(format!("There is no flag {id}."))),
    }
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

// ---------------------------------------------------------------- incidents

struct IncidentRow {
    id: i64,
    site: String,
    device: String,
    hostname: String,
    account: String,
    category: String,
    severity: i64,
    status: String,
    opened: String,
    last: String,
    captures: i64,
}

fn incident_row(i: &IncidentRecord, zone: &str) -> IncidentRow {
    IncidentRow {
        id: i.id,
        site: i.site.clone(),
        device: i.device_id.to_string(),
        hostname: i.hostname.clone(),
        account: i.account.clone(),
        category: i.category.clone(),
        severity: i.severity,
        status: i.status.clone(),
        opened: local(i.opened_at, zone),
        last: local(i.last_at, zone),
        captures: i.capture_count,
    }
}

#[derive(Template)]
#[template(path = "incidents.html")]
struct IncidentsPage {
    frame: Frame,
    status: String,
    rows: Vec<IncidentRow>,
}

#[derive(Deserialize)]
pub struct IncidentsQuery {
    #[serde(default)]
    status: String,
}

pub async fn incidents(
    State(console): State<Console>,
    Allowed(viewer, _): Allowed<IncidentsP>,
    Query(q): Query<IncidentsQuery>,
) -> PageResult {
    let sites = visible_sites(&console, &viewer).await?;
    let zones: HashMap<String, String> = sites
        .iter()
        .map(|s| (s.name.clone(), s.timezone.clone()))
        .collect();
    let status = match q.status.as_str() {
        "" | "open" => Some("open"),
        "closed" => Some("closed"),
        "all" => None,
        _ => return Err(Problem::BadRequest("unknown incident status".into())),
    };
    let mut list = console
        .store
        .list_incidents(&DeviceFilter::default(), status)
        .await?;
    list.retain(|i| zones.contains_key(&i.site));
    list.sort_by_key(|i| (std::cmp::Reverse(i.severity), std::cmp::Reverse(i.last_at)));
    let rows = list
        .iter()
        .map(|i| incident_row(i, zones.get(&i.site).map_or("UTC", |z| z.as_str())))
        .collect();
    // Safeguarding data is shown only once its viewing is recorded.
    console
        .audit(&viewer, "console_incidents_listed", "incidents", &q.status)
        .await?;
    Ok(page(&IncidentsPage {
        frame: Frame::new(&viewer, "Incidents", "/incidents"),
        status: if q.status.is_empty() {
            "open".into()
        } else {
            q.status
        },
        rows,
    }))
}

struct CaptureView {
    id: i64,
    when: String,
    rule: String,
    category: String,
    severity: i64,
    matched: String,
    window: String,
    process: String,
    kind: String,
    file_path: String,
    file_sha256: String,
    image_sha256: String,
    has_image: bool,
    no_image_reason: String,
    repeats: i64,
}

#[derive(Template)]
#[template(path = "incident.html")]
struct IncidentPage {
    frame: Frame,
    i: IncidentRow,
    captures: Vec<CaptureView>,
    open: bool,
    close_error: String,
    export_error: String,
}

/// A form on the incident page that was refused, with why (shown beside
/// it).
#[derive(Clone, Copy)]
enum Refused<'a> {
    Nothing,
    Close(&'a str),
    Export(&'a str),
}

impl<'a> Refused<'a> {
    fn message(self) -> &'a str {
        match self {
            Refused::Nothing => "",
            Refused::Close(why) | Refused::Export(why) => why,
        }
    }
}

async fn incident_page(
    console: &Console,
    viewer: &Viewer,
    id: i64,
    refused: Refused<'_>,
) -> PageResult {
    let Some((incident, captures, site)) = console.store.incident(id).await? else {
        return Err(Problem::NotFound);
    };
    if !viewer.sees(site) {
        return Err(Problem::NotFound);
    }
    let zone = site_zone(console, site).await?;
    console
        .audit(
            viewer,
            "incident_viewed",
            &format!("incident {id}"),
            "console",
        )
        .await?;
    let captures = captures
        .iter()
        .map(|c: &CaptureRow| CaptureView {
            id: c.id,
            when: local(c.occurred_at, &zone),
            rule: c.rule_id.clone(),
            category: c.category.clone(),
            severity: c.severity,
            matched: c.matched_text.clone(),
            window: c.window_title.clone(),
            process: c.process_name.clone(),
            kind: c.kind.clone(),
            file_path: c.file_path.clone(),
            file_sha256: c.file_sha256.clone(),
            image_sha256: c.image_sha256.clone(),
            has_image: !c.image_sha256.is_empty() && c.image_status == "verified",
            no_image_reason: c.no_image_reason.clone(),
            repeats: c.repeat_count,
        })
        .collect();
    let (close_error, export_error) = match refused {
        Refused::Nothing => ("", ""),
        Refused::Close(error) => (error, ""),
        Refused::Export(error) => ("", error),
    };
    Ok(with_form_error(
        page(&IncidentPage {
            frame: Frame::new(viewer, format!("Incident {id}"), "/incidents"),
            open: incident.status == "open",
            i: incident_row(&incident, &zone),
            captures,
            close_error: close_error.to_owned(),
            export_error: export_error.to_owned(),
        }),
        refused.message(),
    ))
}

pub async fn incident(
    State(console): State<Console>,
    Allowed(viewer, _): Allowed<IncidentsP>,
    Path(id): Path<i64>,
) -> PageResult {
    incident_page(&console, &viewer, id, Refused::Nothing).await
}

#[derive(Deserialize)]
pub struct CloseForm {
    #[serde(default)]
    reason: String,
}

pub async fn incident_close(
    State(console): State<Console>,
    Path(id): Path<i64>,
    Submit(viewer, form, ..): Submit<IncidentsP, CloseForm>,
) -> PageResult {
    let reason = form.reason.trim();
    if reason.is_empty() {
        return incident_page(
            &console,
            &viewer,
            id,
            Refused::Close("Give a reason for closing the incident."),
        )
        .await;
    }
    match console.store.incident(id).await? {
        Some((_, _, site)) if viewer.sees(site) => {}
        _ => return Err(Problem::NotFound),
    }
    if !console
        .store
        .close_incident(id, reason, Timestamp::now())
        .await?
    {
        return incident_page(
            &console,
            &viewer,
            id,
            Refused::Close("The incident is already closed."),
        )
        .await;
    }
    let _ = console
        .audit(
            &viewer,
            "incident_closed",
            &format!("incident {id}"),
            // The outcome stays with the incident: it may name a pupil,
            // and the audit log is read by administrators too.
            "",
        )
        .await;
    Ok(Redirect::to(&format!("/incidents/{id}")).into_response())
}

/// The largest evidence archive the console builds in memory (32 snapshots
/// at the largest size ingest accepts); a larger incident is exported with
/// `hallmonitor-collector incidents export` on the collector.
pub const EXPORT_LIMIT: u64 = 128 * 1024 * 1024;

/// An incident's evidence as a zip download (`evidence_export::zip`):
/// built in memory, never written to disk, never cached, and audited
/// before it is sent. A POST with the CSRF token, so another site cannot
/// make a DSL's browser fetch it.
pub async fn incident_export(
    State(console): State<Console>,
    Path(id): Path<i64>,
    Submit(viewer, ..): Submit<IncidentsP, Empty>,
) -> PageResult {
    let Some((incident, captures, site)) = console.store.incident(id).await? else {
        return Err(Problem::NotFound);
    };
    if !viewer.sees(site) {
        return Err(Problem::NotFound);
    }
    let Some(evidence) = console.evidence.clone() else {
        return Err(Problem::NotFound);
    };
    let actor = viewer.actor.clone();
    let address = viewer.address.clone();
    let built = tokio::task::spawn_blocking(move || {
        let exporter = Exporter {
            by: &actor,
            from: (!address.is_empty()).then_some(address.as_str()),
            at: Timestamp::now(),
        };
        evidence_export::zip(&evidence, &incident, &captures, &exporter, EXPORT_LIMIT)
    })
    .await
    .map_err(|e| {
        tracing::error!(incident = id, error = %e, "console: building an evidence export failed");
        Problem::Internal
    })?;
    let archive = match built {
        Ok(archive) => archive,
        Err(e) => return export_refused(&console, &viewer, id, e).await,
    };
    let file = format!("{}-evidence.zip", evidence_export::folder_name(id));
    console
        .audit(
            &viewer,
            "incident_exported",
            &format!("incident {id}"),
            &format!(
                "console download {file}, {} bytes, SHA-256 {}",
                archive.len(),
                crate::evidence::sha256_hex(&archive)
            ),
        )
        .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/zip".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        archive,
    )
        .into_response())
}

/// The incident page again, saying why its evidence was not exported.
async fn export_refused(
    console: &Console,
    viewer: &Viewer,
    id: i64,
    error: ExportError,
) -> PageResult {
    let (status, message) = match &error {
        ExportError::TooLarge { limit } => (
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "This incident's evidence is larger than the console builds ({} MiB). \
                 Ask your technician to export it on the collector with \
                 `hallmonitor-collector incidents export {id} --out FOLDER`.",
                limit / (1024 * 1024)
            ),
        ),
        ExportError::Image { capture, .. } => {
            tracing::warn!(incident = id, capture, error = %error, "console: evidence export refused");
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "The snapshot of capture {capture} failed its check (altered, or sealed \
                     with a key the collector no longer has), so nothing was exported. \
                     Tell your technician."
                ),
            )
        }
        ExportError::Write { .. } | ExportError::Metadata(_) => {
            tracing::error!(incident = id, error = %error, "console: building an evidence export failed");
            return Err(Problem::Internal);
        }
    };
    let mut response = incident_page(console, viewer, id, Refused::Export(&message)).await?;
    *response.status_mut() = status;
    Ok(response)
}

/// A capture's snapshot, decrypted in memory and never cached.
pub async fn capture_image(
    State(console): State<Console>,
    Allowed(viewer, _): Allowed<IncidentsP>,
    Path((id, capture)): Path<(i64, i64)>,
) -> PageResult {
    let Some((_, captures, site)) = console.store.incident(id).await? else {
        return Err(Problem::NotFound);
    };
    if !viewer.sees(site) {
        return Err(Problem::NotFound);
    }
    let Some(c) = captures.iter().find(|c| c.id == capture) else {
        return Err(Problem::NotFound);
    };
    let Some(evidence) = &console.evidence else {
        return Err(Problem::NotFound);
    };
    if c.image_sha256.is_empty() {
        return Err(Problem::NotFound);
    }
    let image = evidence.get(&c.image_sha256).map_err(|e| {
        tracing::warn!(incident = id, capture, error = %e, "console: snapshot unreadable");
        Problem::NotFound
    })?;
    console
        .audit(
            &viewer,
            "snapshot_viewed",
            &format!("incident {id}"),
            &format!("capture {capture}, image {}", c.image_sha256),
        )
        .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        image,
    )
        .into_response())
}

// ---------------------------------------------------------------- audit log

struct AuditRow {
    at: String,
    actor: String,
    action: String,
    target: String,
    detail: String,
    address: String,
}

fn audit_row(a: &AuditRecord, zone: &str) -> AuditRow {
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

// ---------------------------------------------------------------- users

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
    let detail = if form.action == "role" {
        format!("role={} sites={}", form.role, form.sites.trim())
    } else {
        String::new()
    };
    let _ = console
        .audit(
            &viewer,
            &format!("console_user_{}", form.action),
            &format!("user {}", user.username),
            &detail,
        )
        .await;
    Ok(Redirect::to("/users").into_response())
}
