//! The devices list (search, filters, keyset pages) and one device's page
//! (facts, activity chart against the site's rule, sessions, 2FA, flags,
//! commands, agent health, monitoring gaps, agent signals, audit trail).

use askama::Template;
use axum::extract::{Path, Query, State};
use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;

use super::access::{Allowed, DevicesP};
use super::audit::{AuditRow, audit_row};
use super::flags::{FlagRow, flag_row};
use super::pages::{PageResult, local, local_opt, status_label, visible_sites};
use super::{Console, Frame, Problem, chart, page};
use crate::model::{CommandRecord, Connectivity, DeviceId, DeviceRecord, OutboxHealth, SiteId};
use crate::rules::activity::ActivityStatus;
use crate::store::{DeviceFilter, DeviceQuery, StoredPair};

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
    /// The device's risk profile, for a viewer who may see it (a DSL).
    risk: Option<String>,
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
    /// (when, what in plain words, account where the signal names one).
    signals: Vec<(String, String, String)>,
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
    let signals = console
        .store
        .agent_signals(&id, crate::tamper::SIGNALS_SHOWN)
        .await?
        .iter()
        .map(|s| {
            (
                local(s.occurred_at, &zone),
                crate::tamper::describe(&s.record, &tz),
                s.record.account.clone(),
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
        .audit(
            &viewer,
            Some(site.id),
            "console_device_viewed",
            id.as_str(),
            "",
        )
        .await;
    Ok(page(&DevicePage {
        frame: Frame::new(&viewer, format!("Device {}", d.hostname), "/devices"),
        d: device_row(&d, now),
        risk: viewer
            .can(super::access::Permission::Incidents)
            .then(|| super::report::risk_link(site.id, None, Some(id.as_str()))),
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
        signals,
        audit,
        policy_version: d.policy_version,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use jiff::Timestamp;
    use tower::ServiceExt;

    use crate::config::CollectorConfig;
    use crate::console::access::{COOKIE, token_digest};
    use crate::console::{Console, router};
    use crate::model::{ConsoleRole, Event, EventBody, Seq, SignalKind, SignalRecord};
    use crate::store::sqlite::testing::store_with_device;
    use crate::store::{ConsoleStore, IngestStore, NewConsoleUser};

    async fn get(app: &axum::Router, path: &str) -> (StatusCode, String) {
        let request = Request::get(path)
            .header(header::COOKIE, format!("{COOKIE}=tok"))
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 22)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn the_device_page_lists_signals_and_the_flags_queue_shows_tamper_flags() {
        let dir = tempfile::tempdir().unwrap();
        let now = Timestamp::now();
        let (store, _site, device) = store_with_device(dir.path(), now).await;
        let user = store
            .create_console_user(
                NewConsoleUser {
                    username: "tech",
                    password_hash: "unused",
                    role: ConsoleRole::Admin,
                    sites: None,
                },
                now,
            )
            .await
            .unwrap();
        store
            .create_console_session(&token_digest("tok"), user, "csrf", true, "127.0.0.1", now)
            .await
            .unwrap();
        let killed = SignalRecord {
            same_boot: true,
            ..SignalRecord::new(SignalKind::StoppedUncleanly)
        };
        let jump = SignalRecord {
            clock_jump_secs: 86_400,
            ..SignalRecord::new(SignalKind::ClockJumped)
        };
        let config = SignalRecord {
            detail: "<script>x</script>".into(),
            ..SignalRecord::new(SignalKind::ConfigChanged)
        };
        let events = [
            Event {
                seq: Seq(1),
                event_id: "a".into(),
                occurred_at: now,
                body: EventBody::AgentSignal(killed),
            },
            Event {
                seq: Seq(2),
                event_id: "b".into(),
                occurred_at: now,
                body: EventBody::AgentSignal(jump),
            },
            Event {
                seq: Seq(3),
                event_id: "c".into(),
                occurred_at: now,
                body: EventBody::AgentSignal(config),
            },
        ];
        store.record_batch(&device, &events, now).await.unwrap();
        let app = router(Console {
            store: Arc::new(store),
            config: Arc::new(CollectorConfig::default()),
            evidence: None,
            throttle_audits: Default::default(),
        });

        let (status, page) = get(&app, "/devices/dev-1").await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(page.contains("Agent signals"), "{page}");
        assert!(page.contains("Agent stopped without shutting down (same boot)"));
        assert!(page.contains("Clock moved forward 1 day"));
        // Device text is escaped.
        assert!(
            page.contains("Configuration changed (&#60;script&#62;x"),
            "{page}"
        );
        assert!(!page.contains("<script>x"));

        let (status, queue) = get(&app, "/flags?kind=tamper").await;
        assert_eq!(status, StatusCode::OK, "{queue}");
        assert!(queue.contains("<td>tamper</td>"), "{queue}");
        assert!(queue.contains("agent was stopped without shutting down"));
        assert!(
            queue.contains(r#"<option value="tamper" selected>"#),
            "{queue}"
        );
        let (_, others) = get(&app, "/flags?kind=mfa_stale").await;
        assert!(!others.contains("<td>tamper</td>"));
        let (status, _) = get(&app, "/flags?kind=nonsense").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let (status, flag) = get(&app, "/flags/1").await;
        assert_eq!(status, StatusCode::OK, "{flag}");
        assert!(flag.contains("Possible tampering with the agent"), "{flag}");
        assert!(!flag.contains(r#"value="approve""#));
        assert!(flag.contains(r#"value="dismiss""#));
    }
}
