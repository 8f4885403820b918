//! Rendering only: the output of the collector's read commands (devices,
//! secrets, flags, 2FA, incidents, notifications, policies) as a human
//! table or as stable JSON for scripts. The JSON carries a
//! `schema` name; fields are only ever added under the same name.
//!
//! Much of what is shown came from devices, so it is hostile text: every
//! human rendering goes through [`terminal_text`], which shows control
//! characters as visible escapes (`\u{1b}`) and bounds the length (a
//! table column at [`MAX_COLUMN_CHARS`]); the JSON keeps values whole.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;
use serde_json::json;

use crate::flags::{FlagRecord, FlagTransition};
use crate::model::{
    Channel, Connectivity, DeviceId, DeviceRecord, EnrollmentSecretInfo, OutboxHealth,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[value(alias = "text")]
    Table,
    Json,
}

#[derive(Serialize)]
struct DeviceJson<'a> {
    id: &'a str,
    site: &'a str,
    hostname: &'a str,
    status: Connectivity,
    last_seen_at: Option<Timestamp>,
    enrolled_at: Timestamp,
    heartbeat_interval_secs: u32,
    last_acked_seq: u64,
    events_stored: u64,
    sequence_gap: u64,
    facts_updated_at: Timestamp,
    facts: &'a crate::model::DeviceFacts,
    enforcement: crate::model::Enforcement,
    reenabled_at: Option<Timestamp>,
    policy_version: u64,
    /// active, pending (a technician's approval) or revoked.
    standing: crate::model::DeviceStatus,
    standing_reason: &'a str,
    /// The enrolled device whose machine id or serial this one shares.
    duplicate_of: Option<&'a str>,
    /// Sessions the agent says it cannot watch now (no session helper).
    open_monitoring_gaps: u64,
}

fn device_json(d: &DeviceRecord, now: Timestamp) -> DeviceJson<'_> {
    DeviceJson {
        id: d.id.as_str(),
        site: &d.site,
        hostname: &d.hostname,
        status: d.connectivity(now),
        last_seen_at: d.last_seen_at,
        enrolled_at: d.enrolled_at,
        heartbeat_interval_secs: d.heartbeat_interval_secs,
        last_acked_seq: d.last_seq,
        events_stored: d.events_stored,
        sequence_gap: d.sequence_gap(),
        facts_updated_at: d.facts_updated_at,
        facts: &d.facts,
        enforcement: d.enforcement,
        reenabled_at: d.reenabled_at,
        policy_version: d.policy_version,
        standing: d.status,
        standing_reason: &d.status_reason,
        duplicate_of: d.duplicate_of.as_ref().map(DeviceId::as_str),
        open_monitoring_gaps: d.open_gaps,
    }
}

/// Online or offline for an active device, else its standing; and an
/// open monitoring gap (a tamper signal).
fn device_status_word(d: &DeviceRecord, now: Timestamp) -> String {
    let word: String = match d.status {
        crate::model::DeviceStatus::Active => status_word(d.connectivity(now)).into(),
        other => other.as_str().into(),
    };
    match d.open_gaps {
        0 => word,
        _ => format!("{word}, monitoring gap"),
    }
}

pub fn devices_list(devices: &[DeviceRecord], now: Timestamp, format: Format) -> String {
    match format {
        Format::Json => {
            let list: Vec<_> = devices.iter().map(|d| device_json(d, now)).collect();
            pretty(&json!({ "schema": "hallmonitor.devices.v1", "as_of": now, "devices": list }))
        }
        Format::Table => {
            let mut rows = vec![[
                "DEVICE".to_string(),
                "SITE".into(),
                "HOSTNAME".into(),
                "OS".into(),
                "AGENT".into(),
                "STATUS".into(),
                "LAST SEEN".into(),
            ]];
            for d in devices {
                rows.push([
                    d.id.to_string(),
                    d.site.clone(),
                    d.hostname.clone(),
                    format!("{} {}", d.facts.os_name, d.facts.os_version)
                        .trim()
                        .to_string(),
                    d.facts.agent_version.clone(),
                    device_status_word(d, now),
                    local(d.last_seen_at, &d.site_timezone),
                ]);
            }
            let mut out = table(&rows);
            out.push_str(&format!("{} device(s)\n", devices.len()));
            out
        }
    }
}

pub fn device_show(
    d: &DeviceRecord,
    outbox: &OutboxHealth,
    signals: &[crate::model::StoredSignal],
    now: Timestamp,
    format: Format,
) -> String {
    let zone = TimeZone::get(&d.site_timezone).unwrap_or(TimeZone::UTC);
    match format {
        Format::Json => {
            let mut device = serde_json::to_value(device_json(d, now)).expect("device serialises");
            device["outbox"] = serde_json::to_value(outbox).expect("outbox health serialises");
            device["signals"] = signals
                .iter()
                .map(|s| {
                    let mut value = serde_json::to_value(s).expect("signals serialise");
                    value["description"] = crate::tamper::describe(&s.record, &zone).into();
                    value
                })
                .collect();
            pretty(&json!({ "schema": "hallmonitor.device.v1", "as_of": now, "device": device }))
        }
        Format::Table => {
            let f = &d.facts;
            let tz = &d.site_timezone;
            let mut out = String::new();
            let mut line = |k: &str, v: String| {
                out.push_str(&format!("{k:<22} {}\n", terminal_text(&v, MAX_VALUE_CHARS)))
            };
            line("device", d.id.to_string());
            line("site", d.site.clone());
            line("hostname", d.hostname.clone());
            line("status", device_status_word(d, now));
            if !d.status_reason.is_empty() {
                line("status reason", d.status_reason.clone());
            }
            if let Some(of) = &d.duplicate_of {
                line("duplicate of", of.to_string());
            }
            line("last seen", local(d.last_seen_at, tz));
            line("enrolled", local(Some(d.enrolled_at), tz));
            line("enforcement", d.enforcement.as_str().into());
            line(
                "policy version",
                match d.policy_version {
                    0 => "project default (no site policy received)".into(),
                    v => v.to_string(),
                },
            );
            if d.reenabled_at.is_some() {
                line("re-enabled", local(d.reenabled_at, tz));
            }
            line(
                "heartbeat interval",
                format!("{} s", d.heartbeat_interval_secs),
            );
            line("last acked sequence", d.last_seq.to_string());
            line("events stored", d.events_stored.to_string());
            line(
                "sequence gap",
                match d.sequence_gap() {
                    0 => "none".into(),
                    n => format!("{n} event(s) not received (evicted on the device or in flight)"),
                },
            );
            let evicted: Vec<String> = outbox
                .evicted
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(c, n)| format!("{n} {c}"))
                .collect();
            line(
                "evicted on device",
                if evicted.is_empty() {
                    "none".into()
                } else {
                    evicted.join(", ")
                },
            );
            if outbox.corrupt_replacements > 0 {
                line(
                    "outbox replaced",
                    format!(
                        "{} time(s): the agent found its outbox corrupt",
                        outbox.corrupt_replacements
                    ),
                );
            }
            if outbox.quarantined > 0 {
                line(
                    "quarantined on device",
                    format!(
                        "{} event(s) too large to send, kept on the device",
                        outbox.quarantined
                    ),
                );
            }
            if outbox.captures_refused > 0 {
                line(
                    "captures refused",
                    format!(
                        "{} from session helpers (no matching rule, or over the rate): a forged or flooding helper",
                        outbox.captures_refused
                    ),
                );
            }
            for gap in &outbox.monitoring_gaps {
                let what = match gap.gap.as_str() {
                    "no_session_helper" => "no session helper",
                    other => other,
                };
                let when = match gap.ended_at {
                    None => format!("OPEN since {}", local(Some(gap.started_at), tz)),
                    Some(end) => format!(
                        "{} to {}",
                        local(Some(gap.started_at), tz),
                        local(Some(end), tz)
                    ),
                };
                line(
                    "monitoring gap",
                    format!(
                        "{what}: {when}, session {} (uid {})",
                        gap.session_id, gap.uid
                    ),
                );
            }
            // Newest first.
            for signal in signals {
                let mut what = crate::tamper::describe(&signal.record, &zone);
                if !signal.record.account.is_empty() {
                    what.push_str(&format!(", account {}", signal.record.account));
                }
                line(
                    "agent signal",
                    format!("{}: {what}", local(Some(signal.occurred_at), tz)),
                );
            }
            line("os", format!("{} {}", f.os_name, f.os_version));
            line("kernel", f.kernel_version.clone());
            line("architecture", f.architecture.clone());
            line("machine id", f.machine_id.clone());
            line("serial number", or_dash(&f.serial_number));
            line("cpu", format!("{} ({} cores)", f.cpu_model, f.cpu_cores));
            line(
                "memory",
                format!(
                    "{} total, {} available",
                    bytes(f.memory_total_bytes),
                    bytes(f.memory_available_bytes)
                ),
            );
            line("uptime", format!("{} s", f.uptime_secs));
            line("agent version", f.agent_version.clone());
            line("facts updated", local(Some(d.facts_updated_at), tz));
            if !f.truncated.is_empty() {
                let cut: Vec<String> = f
                    .truncated
                    .iter()
                    .map(|(field, n)| format!("{field} (was {n})"))
                    .collect();
                line("cut at ingest", cut.join(", "));
            }
            for disk in &f.disks {
                line(
                    "disk",
                    format!(
                        "{} on {} ({}, {} total, {} free, encryption: {:?}{})",
                        disk.name,
                        disk.mount_point,
                        disk.file_system,
                        bytes(disk.total_bytes),
                        bytes(disk.available_bytes),
                        disk.encryption,
                        if disk.removable { ", removable" } else { "" }
                    ),
                );
            }
            out
        }
    }
}

pub fn secrets_list(secrets: &[EnrollmentSecretInfo], now: Timestamp, format: Format) -> String {
    match format {
        Format::Json => pretty(
            &json!({ "schema": "hallmonitor.enrollment_secrets.v1", "as_of": now, "secrets": secrets }),
        ),
        Format::Table => {
            let mut rows = vec![[
                "ID".to_string(),
                "SITE".into(),
                "SECRET STARTS".into(),
                "LABEL".into(),
                "STATE".into(),
                "USES".into(),
                "CREATED".into(),
            ]];
            for s in secrets {
                let state = if s.revoked_at.is_some() {
                    "revoked"
                } else if s.expires_at.is_some_and(|e| e <= now) {
                    "expired"
                } else {
                    "active"
                };
                rows.push([
                    s.id.to_string(),
                    s.site.clone(),
                    format!("{}…", s.hint),
                    s.label.clone(),
                    state.into(),
                    s.uses.to_string(),
                    s.created_at.strftime("%Y-%m-%d %H:%M UTC").to_string(),
                ]);
            }
            table(&rows)
        }
    }
}

pub fn compliance(report: &crate::compliance::ComplianceReport, format: Format) -> String {
    match format {
        Format::Json => {
            let mut s = serde_json::to_string_pretty(report).expect("reports serialise");
            s.push('\n');
            s
        }
        Format::Table => {
            let mut rows = vec![[
                "DEVICE".to_string(),
                "HOSTNAME".into(),
                "SITE".into(),
                "STATUS".into(),
                "USED".into(),
                "BREACHES".into(),
                "ENFORCEMENT".into(),
                "FLAGS".into(),
            ]];
            for d in &report.devices {
                let a = &d.activity;
                rows.push([
                    d.device_id.clone(),
                    or_dash(&d.hostname),
                    d.site.clone(),
                    a.status.to_string(),
                    format!(
                        "{}/{} min in {} d",
                        a.used_minutes, a.required_minutes, a.window_days
                    ),
                    a.breach_local.clone().unwrap_or_else(|| "-".into()),
                    d.enforcement.to_string(),
                    d.flags
                        .iter()
                        .map(|f| format!("#{} {}", f.id, f.state))
                        .collect::<Vec<_>>()
                        .join(", "),
                ]);
            }
            let mut out = table(&rows);
            let counts: Vec<String> = crate::compliance::status_counts(report)
                .iter()
                .map(|(s, n)| format!("{n} {s}"))
                .collect();
            out.push_str(&format!(
                "{} device(s) as of {}: {}. {}\n",
                report.devices.len(),
                report.as_of,
                if counts.is_empty() {
                    "none".into()
                } else {
                    counts.join(", ")
                },
                if report.compliant {
                    "All compliant."
                } else {
                    "NOT all compliant."
                }
            ));
            out
        }
    }
}

pub fn flags_list(flags: &[FlagRecord], now: Timestamp, format: Format) -> String {
    match format {
        Format::Json => {
            pretty(&json!({ "schema": "hallmonitor.flags.v1", "as_of": now, "flags": flags }))
        }
        Format::Table => {
            let mut rows = vec![[
                "ID".to_string(),
                "KIND".into(),
                "STATE".into(),
                "SITE".into(),
                "DEVICE".into(),
                "HOSTNAME".into(),
                "OPENED".into(),
                "SUMMARY".into(),
            ]];
            for f in flags {
                rows.push([
                    f.id.to_string(),
                    f.kind.as_str().into(),
                    f.state.as_str().into(),
                    f.site.clone(),
                    f.device_id.to_string(),
                    or_dash(&f.hostname),
                    f.opened_at.strftime("%Y-%m-%d %H:%M UTC").to_string(),
                    f.summary.clone(),
                ]);
            }
            table(&rows)
        }
    }
}

pub fn flag_show(flag: &FlagRecord, history: &[FlagTransition], format: Format) -> String {
    match format {
        Format::Json => {
            pretty(&json!({ "schema": "hallmonitor.flag.v1", "flag": flag, "history": history }))
        }
        Format::Table => {
            let mut out = format!(
                "flag #{} {} on {} ({}), site {}: {}\n{}\n\n",
                flag.id,
                flag.kind.as_str(),
                flag.device_id,
                terminal_text(&or_dash(&flag.hostname), MAX_COLUMN_CHARS),
                terminal_text(&flag.site, MAX_COLUMN_CHARS),
                flag.state.as_str(),
                terminal_text(&flag.summary, MAX_VALUE_CHARS)
            );
            let mut rows = vec![[
                "WHEN".to_string(),
                "WHO".into(),
                "FROM".into(),
                "TO".into(),
                "WHY".into(),
            ]];
            for t in history {
                rows.push([
                    t.at.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
                    t.actor.clone(),
                    t.from.map_or("-", |s| s.as_str()).into(),
                    t.to.as_str().into(),
                    t.reason.clone(),
                ]);
            }
            out.push_str(&table(&rows));
            out
        }
    }
}

pub fn directory_list(accounts: &[crate::directory::DirectoryAccount], format: Format) -> String {
    match format {
        Format::Json => {
            pretty(&json!({ "schema": "hallmonitor.directory.v1", "accounts": accounts }))
        }
        Format::Table => {
            let mut rows = vec![[
                "USERNAME".to_string(),
                "ROLE".into(),
                "EMAIL".into(),
                "NAME".into(),
                "GROUPS".into(),
            ]];
            for a in accounts {
                rows.push([
                    a.username.clone(),
                    a.role.as_str().into(),
                    or_dash(&a.email),
                    or_dash(&a.display_name),
                    or_dash(&a.groups.join(";")),
                ]);
            }
            table(&rows)
        }
    }
}

pub fn signins_report(r: &crate::signins::ImportReport) -> String {
    let mut out = format!(
        "{} rows: {} two-step sign-ins matched a device, {} matched none, {} not successful, {} without a second factor; {} new, {} already held.\n",
        r.rows,
        r.mapped,
        r.unmapped.len(),
        r.not_successful,
        r.not_multi_factor,
        r.new,
        (r.mapped + r.unmapped.len() as u64).saturating_sub(r.new)
    );
    if !r.unmapped.is_empty() {
        out.push_str(
            "Not matched to a device (stored without one; enrol the device or check its name):\n",
        );
        for (line, account, device) in &r.unmapped {
            out.push_str(&format!(
                "  line {line}: {} on '{}'\n",
                terminal_text(account, MAX_COLUMN_CHARS),
                terminal_text(device, MAX_COLUMN_CHARS)
            ));
        }
    }
    out
}

pub fn mfa_list(pairs: &[crate::store::StoredPair], now: Timestamp, format: Format) -> String {
    match format {
        Format::Json => {
            pretty(&json!({ "schema": "hallmonitor.mfa_pairs.v1", "as_of": now, "pairs": pairs }))
        }
        Format::Table => {
            let mut rows = vec![[
                "ACCOUNT".to_string(),
                "DEVICE".into(),
                "HOSTNAME".into(),
                "SITE".into(),
                "STATUS".into(),
                "LAST 2FA".into(),
                "EXPIRES".into(),
            ]];
            for p in pairs {
                rows.push([
                    p.account.clone(),
                    p.device_id.to_string(),
                    or_dash(&p.hostname),
                    p.site.clone(),
                    p.status.as_str().into(),
                    p.last_mfa.map_or("never".into(), |t| {
                        t.strftime("%Y-%m-%d %H:%M UTC").to_string()
                    }),
                    p.expires_at
                        .map_or("-".into(), |t| t.strftime("%Y-%m-%d %H:%M UTC").to_string()),
                ]);
            }
            table(&rows)
        }
    }
}

pub fn api_tokens(tokens: &[crate::store::ApiTokenInfo], format: Format) -> String {
    match format {
        Format::Json => pretty(&json!({ "schema": "hallmonitor.api_tokens.v1", "tokens": tokens })),
        Format::Table => {
            let mut rows = vec![[
                "ID".to_string(),
                "SITE".into(),
                "ROLE".into(),
                "LABEL".into(),
                "CREATED".into(),
                "LAST USED".into(),
                "STATE".into(),
            ]];
            let when = |t: Option<Timestamp>| {
                t.map_or("never".into(), |t| {
                    t.strftime("%Y-%m-%d %H:%M UTC").to_string()
                })
            };
            for t in tokens {
                rows.push([
                    t.id.to_string(),
                    if t.all_sites {
                        "all sites".into()
                    } else {
                        t.site.clone()
                    },
                    t.role.to_string(),
                    or_dash(&t.label),
                    when(Some(t.created_at)),
                    when(t.last_used_at),
                    if t.revoked_at.is_some() {
                        "revoked".into()
                    } else {
                        "active".into()
                    },
                ]);
            }
            table(&rows)
        }
    }
}

pub fn sites(sites: &[crate::model::Site], format: Format) -> String {
    match format {
        Format::Json => pretty(&json!({
            "schema": "hallmonitor.sites.v1",
            "sites": sites.iter().map(|s| json!({ "id": s.id.0, "name": s.name, "timezone": s.timezone })).collect::<Vec<_>>(),
        })),
        Format::Table => {
            let mut rows = vec![["ID".to_string(), "SITE".into(), "TIME ZONE".into()]];
            for s in sites {
                rows.push([s.id.0.to_string(), s.name.clone(), s.timezone.clone()]);
            }
            table(&rows)
        }
    }
}

pub fn console_users(
    users: &[crate::store::ConsoleUser],
    sites: &[crate::model::Site],
    format: Format,
) -> String {
    let site_names = |u: &crate::store::ConsoleUser| -> Vec<String> {
        sites
            .iter()
            .filter(|s| u.all_sites || u.sites.contains(&s.id))
            .map(|s| s.name.clone())
            .collect()
    };
    match format {
        Format::Json => {
            let list: Vec<_> = users
                .iter()
                .map(|u| {
                    json!({
                        "username": u.username,
                        "role": u.role,
                        "all_sites": u.all_sites,
                        "sites": site_names(u),
                        "disabled": u.disabled,
                        "second_factor": !u.totp_secret.is_empty(),
                        "created_at": u.created_at,
                    })
                })
                .collect();
            pretty(&json!({ "schema": "hallmonitor.console_users.v1", "users": list }))
        }
        Format::Table => {
            let mut rows = vec![[
                "USERNAME".to_string(),
                "ROLE".into(),
                "SITES".into(),
                "TWO-STEP".into(),
                "STATE".into(),
            ]];
            for u in users {
                rows.push([
                    u.username.clone(),
                    u.role.to_string(),
                    if u.all_sites {
                        "all".into()
                    } else {
                        site_names(u).join(", ")
                    },
                    if u.totp_secret.is_empty() {
                        "off"
                    } else {
                        "on"
                    }
                    .into(),
                    if u.disabled { "disabled" } else { "active" }.into(),
                ]);
            }
            table(&rows)
        }
    }
}

pub fn recipients(list: &[crate::store::Recipient], format: Format) -> String {
    match format {
        Format::Json => {
            pretty(&json!({ "schema": "hallmonitor.recipients.v1", "recipients": list }))
        }
        Format::Table => {
            let mut rows = vec![[
                "ID".to_string(),
                "ROLE".into(),
                "CHANNEL".into(),
                "ADDRESS".into(),
                "FORMAT".into(),
            ]];
            for r in list {
                rows.push([
                    r.id.to_string(),
                    r.role.to_string(),
                    r.channel.to_string(),
                    r.address.clone(),
                    if r.channel == Channel::Webhook {
                        r.webhook_format.clone()
                    } else {
                        "-".into()
                    },
                ]);
            }
            table(&rows)
        }
    }
}

pub fn notifications(list: &[crate::store::Notification], format: Format) -> String {
    match format {
        Format::Json => {
            pretty(&json!({ "schema": "hallmonitor.notifications.v1", "notifications": list }))
        }
        Format::Table => {
            let mut rows = vec![[
                "ID".to_string(),
                "STATUS".into(),
                "CHANNEL".into(),
                "TO".into(),
                "TIMING".into(),
                "ATTEMPTS".into(),
                "SUBJECT".into(),
                "LAST ERROR".into(),
            ]];
            for n in list {
                rows.push([
                    n.id.to_string(),
                    n.status.to_string(),
                    n.channel.to_string(),
                    n.address.clone(),
                    n.timing.to_string(),
                    n.attempts.to_string(),
                    n.subject.clone(),
                    n.last_error.clone(),
                ]);
            }
            table(&rows)
        }
    }
}

pub fn incidents_list(list: &[crate::incidents::IncidentRecord], format: Format) -> String {
    match format {
        Format::Json => pretty(&json!({ "schema": "hallmonitor.incidents.v1", "incidents": list })),
        Format::Table => {
            let mut rows = vec![[
                "ID".to_string(),
                "SEVERITY".into(),
                "CATEGORY".into(),
                "STATUS".into(),
                "SITE".into(),
                "DEVICE".into(),
                "CAPTURES".into(),
                "NEW".into(),
                "OLDEST NEW".into(),
                "LAST".into(),
            ]];
            for i in list {
                rows.push([
                    i.id.to_string(),
                    i.severity.to_string(),
                    i.category.clone(),
                    if i.reviewed {
                        format!("{} (reviewed)", i.status)
                    } else {
                        i.status.clone()
                    },
                    i.site.clone(),
                    or_dash(&i.hostname),
                    i.capture_count.to_string(),
                    i.review.unreviewed.to_string(),
                    i.review.oldest_unreviewed_at.map_or("-".to_owned(), |at| {
                        at.strftime("%Y-%m-%d %H:%M UTC").to_string()
                    }),
                    i.last_at.strftime("%Y-%m-%d %H:%M UTC").to_string(),
                ]);
            }
            table(&rows)
        }
    }
}

pub fn incident_show(
    incident: &crate::incidents::IncidentRecord,
    captures: &[crate::incidents::CaptureRow],
    history: &[crate::review::HistoryEntry],
    format: Format,
) -> String {
    match format {
        Format::Json => pretty(
            &json!({ "schema": "hallmonitor.incident.v1", "incident": incident, "captures": captures, "history": history }),
        ),
        Format::Table => {
            let show = |text: &str| terminal_text(text, MAX_COLUMN_CHARS);
            let mut out = format!(
                "incident #{} {} severity {} ({}) on {} ({}), site {}, account {}\n\n",
                incident.id,
                show(&incident.category),
                incident.severity,
                show(&incident.status),
                incident.device_id,
                show(&or_dash(&incident.hostname)),
                show(&incident.site),
                show(&incident.account)
            );
            let mut rows = vec![[
                "CAPTURE".to_string(),
                "WHEN".into(),
                "SEV".into(),
                "GRADE".into(),
                "STATUS".into(),
                "RULE".into(),
                "MATCHED".into(),
                "WINDOW OR FILE".into(),
                "EVIDENCE".into(),
            ]];
            for c in captures {
                let (place, evidence) = if c.kind == "file" {
                    (
                        c.file_path.clone(),
                        format!("file {}", short(&c.file_sha256)),
                    )
                } else if c.image_status == "verified" {
                    (
                        c.window_title.clone(),
                        format!("image {}", short(&c.image_sha256)),
                    )
                } else if c.repeat_count > 0 {
                    // A repeat summary: the minute after a capture.
                    (
                        c.window_title.clone(),
                        format!("{} more in a minute", c.repeat_count),
                    )
                } else {
                    (c.window_title.clone(), c.image_status.clone())
                };
                rows.push([
                    c.id.to_string(),
                    c.occurred_at.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
                    c.severity.to_string(),
                    // The rule's severity stays in SEV; a DSL's regrade here.
                    c.review.grade.map_or("-".to_owned(), |g| g.to_string()),
                    c.review.status.as_str().to_owned(),
                    c.rule_id.clone(),
                    c.matched_text.clone(),
                    place,
                    evidence,
                ]);
            }
            out.push_str(&table(&rows));
            let closed: Vec<_> = captures
                .iter()
                .filter(|c| c.review.status.is_closed())
                .collect();
            if !closed.is_empty() {
                let mut rows = vec![["CAPTURE".to_string(), "OUTCOME".into(), "REFERENCE".into()]];
                for c in closed {
                    rows.push([
                        c.id.to_string(),
                        c.review.outcome.clone(),
                        or_dash(&c.review.reference),
                    ]);
                }
                out.push_str("\noutcomes\n");
                out.push_str(&table(&rows));
            }
            if !history.is_empty() {
                use crate::review::Change;
                let mut rows = vec![[
                    "WHEN".to_string(),
                    "CAPTURE".into(),
                    "WHO".into(),
                    "WHAT".into(),
                    "OUTCOME OR NOTE".into(),
                ]];
                for h in history {
                    let (what, text) = match &h.change {
                        Change::Status {
                            from,
                            to,
                            outcome,
                            reference,
                        } => (
                            format!("status {} -> {}", from.as_str(), to.as_str()),
                            if reference.is_empty() {
                                outcome.clone()
                            } else {
                                format!("{outcome} (record {reference})")
                            },
                        ),
                        Change::Grade { from, to } => {
                            (format!("grade {from} -> {to}"), String::new())
                        }
                        Change::Note { text } => ("note".to_owned(), text.clone()),
                    };
                    rows.push([
                        h.at.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
                        h.capture_id.to_string(),
                        h.actor.clone(),
                        what,
                        text,
                    ]);
                }
                out.push_str("\nhistory\n");
                out.push_str(&table(&rows));
            }
            out
        }
    }
}

/// The first 12 characters of a hash, enough to tell evidence apart.
fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

fn status_word(c: Connectivity) -> &'static str {
    match c {
        Connectivity::Online => "online",
        Connectivity::Offline => "offline",
    }
}

/// An instant in the site's zone, e.g. `2026-11-24 09:15:02 GMT`.
fn local(t: Option<Timestamp>, zone: &str) -> String {
    let Some(t) = t else { return "never".into() };
    let tz = TimeZone::get(zone).unwrap_or(TimeZone::UTC);
    t.to_zoned(tz).strftime("%Y-%m-%d %H:%M:%S %Z").to_string()
}

fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn pretty(value: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(value).expect("JSON values serialise");
    s.push('\n');
    s
}

/// The widest a table column grows; a longer cell is cut, ending in `…`.
pub const MAX_COLUMN_CHARS: usize = 80;
/// The longest single value a detail view (`devices show`) prints.
pub const MAX_VALUE_CHARS: usize = 1_024;

/// Whether a character must not reach a terminal as itself: control
/// characters (C0 such as ESC, DEL, C1) and the invisible marks that
/// reorder the text around them.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `text` safe to print on a terminal, at most `max` characters: each
/// character that [`needs_escape`] shown as an escape such as `\u{1b}`,
/// and text that does not fit cut, its last character `…`.
pub fn terminal_text(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    let mut shown = 0;
    let mut rest = text.chars();
    while let Some(c) = rest.next() {
        let escaped = needs_escape(c).then(|| c.escape_unicode().to_string());
        // An escape is ASCII: its length in bytes is its width.
        let width = escaped.as_ref().map_or(1, String::len);
        // Room for this character, and for the `…` if more follows.
        let reserve = usize::from(!rest.as_str().is_empty());
        if shown + width + reserve > max {
            if shown < max {
                out.push('…');
            }
            return out;
        }
        match &escaped {
            Some(escape) => out.push_str(escape),
            None => out.push(c),
        }
        shown += width;
    }
    out
}

/// Rows as aligned columns, every cell through [`terminal_text`] (so no
/// column is wider than [`MAX_COLUMN_CHARS`]), padded by hand: a width is
/// never handed to `format!`, whose limit is 65,535.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let rows: Vec<[(String, usize); N]> = rows
        .iter()
        .map(|row| {
            row.each_ref().map(|cell| {
                let shown = terminal_text(cell, MAX_COLUMN_CHARS);
                let width = shown.chars().count();
                (shown, width)
            })
        })
        .collect();
    let mut widths = [0usize; N];
    for row in &rows {
        for (w, (_, width)) in widths.iter_mut().zip(row) {
            *w = (*w).max(*width);
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, ((cell, width), w)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', w - width));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_show_lists_the_newest_signals_in_words_and_in_json() {
        use crate::model::{
            DeviceFacts, DeviceId, DeviceStatus, Enforcement, SignalKind, SignalRecord,
            StoredSignal,
        };
        let at = Timestamp::from_second(1_800_000_000).unwrap();
        let d = DeviceRecord {
            id: DeviceId::from_string("dev-1"),
            site: "Cabot".into(),
            site_timezone: "Europe/London".into(),
            hostname: "lab-01".into(),
            enrolled_at: at,
            last_seen_at: Some(at),
            heartbeat_interval_secs: 60,
            last_seq: 2,
            events_stored: 2,
            facts: DeviceFacts::default(),
            facts_updated_at: at,
            enforcement: Enforcement::Enabled,
            reenabled_at: None,
            policy_version: 0,
            status: DeviceStatus::Active,
            status_reason: String::new(),
            duplicate_of: None,
            open_gaps: 0,
        };
        let signals = [
            StoredSignal {
                seq: 2,
                occurred_at: at,
                record: SignalRecord {
                    session_id: "3".into(),
                    account: "a\u{1b}b".into(),
                    ..SignalRecord::new(SignalKind::HelperGone)
                },
            },
            StoredSignal {
                seq: 1,
                occurred_at: at,
                record: SignalRecord {
                    agent_version: "0.2.0".into(),
                    previous_agent_version: "0.1.0".into(),
                    ..SignalRecord::new(SignalKind::Upgraded)
                },
            },
        ];
        let outbox = OutboxHealth::default();
        let text = device_show(&d, &outbox, &signals, at, Format::Table);
        assert!(
            text.contains("agent signal           2027-01-15 08:00:00 GMT: Session helper went away while session 3 stayed open, account a\\u{1b}b\n"),
            "{text}"
        );
        assert!(text.contains(": Upgraded from 0.1.0 to 0.2.0\n"), "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&device_show(&d, &outbox, &signals, at, Format::Json)).unwrap();
        let listed = &json["device"]["signals"];
        assert_eq!(listed[0]["signal"], "helper_gone");
        assert_eq!(listed[0]["seq"], 2);
        assert_eq!(listed[1]["description"], "Upgraded from 0.1.0 to 0.2.0");
    }

    #[test]
    fn byte_sizes_read_naturally() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(8 * 1024 * 1024 * 1024), "8.0 GiB");
    }

    #[test]
    fn local_time_uses_the_site_zone_across_the_clock_change() {
        // 2026-07-01 12:00 UTC is 13:00 BST; 2026-12-01 12:00 UTC is 12:00 GMT.
        let summer: Timestamp = "2026-07-01T12:00:00Z".parse().unwrap();
        let winter: Timestamp = "2026-12-01T12:00:00Z".parse().unwrap();
        assert_eq!(
            local(Some(summer), "Europe/London"),
            "2026-07-01 13:00:00 BST"
        );
        assert_eq!(
            local(Some(winter), "Europe/London"),
            "2026-12-01 12:00:00 GMT"
        );
        assert_eq!(local(None, "Europe/London"), "never");
    }

    #[test]
    fn terminal_text_escapes_and_bounds() {
        let cases = [
            ("plain", "LAPTOP-07", 80, "LAPTOP-07"),
            ("escape sequence", "a\u{1b}[2Jb", 80, "a\\u{1b}[2Jb"),
            ("bell and newline", "x\u{7}\n", 80, "x\\u{7}\\u{a}"),
            ("C1 and DEL", "\u{9b}\u{7f}", 80, "\\u{9b}\\u{7f}"),
            (
                "right-to-left override",
                "abc\u{202e}fdp.exe",
                80,
                "abc\\u{202e}fdp.exe",
            ),
            ("fits exactly", "abc", 3, "abc"),
            ("one too many", "abcd", 3, "ab…"),
            ("an escape that does not fit", "ab\u{1b}", 3, "ab…"),
            ("counted in characters", "ééé", 3, "ééé"),
            ("nothing fits", "abc", 0, ""),
            ("only the mark fits", "abc", 1, "…"),
        ];
        for (name, input, max, want) in cases {
            assert_eq!(terminal_text(input, max), want, "{name}");
        }
    }

    #[test]
    fn a_huge_hostile_cell_is_cut_and_escaped_not_a_panic() {
        let hostname = format!("\u{1b}]0;owned\u{7}{}", "x".repeat(100_000));
        let rows = [
            ["DEVICE".to_string(), "HOSTNAME".into()],
            ["d-1".into(), hostname],
        ];
        let out = table(&rows);
        assert!(!out.contains('\u{1b}'), "{out}");
        assert!(
            out.lines()
                .all(|l| l.chars().count() <= 2 * MAX_COLUMN_CHARS + 2),
            "{out}"
        );
        assert!(out.contains("\\u{1b}]0;owned\\u{7}xxx"), "{out}");
    }

    proptest::proptest! {
        #[test]
        fn any_cells_render_bounded_and_free_of_control_characters(
            cells in proptest::collection::vec(proptest::prelude::any::<String>(), 0..12),
            long in 0usize..70_000,
        ) {
            let mut rows: Vec<[String; 3]> = cells
                .chunks(3)
                .map(|c| std::array::from_fn(|i| c.get(i).cloned().unwrap_or_default()))
                .collect();
            // A cell past format!'s width limit.
            rows.push(["x".repeat(long), "\u{1b}".repeat(long % 300), String::new()]);
            let out = table(&rows);
            proptest::prop_assert_eq!(out.lines().count(), rows.len());
            for line in out.lines() {
                proptest::prop_assert!(!line.chars().any(needs_escape), "{:?}", line);
                proptest::prop_assert!(line.chars().count() <= 3 * MAX_COLUMN_CHARS + 4);
            }
        }

        #[test]
        fn terminal_text_is_bounded_escaped_and_keeps_what_fits(
            text in proptest::prelude::any::<String>(),
            max in 0usize..200,
        ) {
            let shown = terminal_text(&text, max);
            proptest::prop_assert!(shown.chars().count() <= max);
            proptest::prop_assert!(!shown.chars().any(needs_escape));
            if !text.chars().any(needs_escape) && text.chars().count() <= max {
                proptest::prop_assert_eq!(shown, text);
            }
        }
    }
}
