//! Incidents (DSL only): the list, one incident with its captures,
//! closing with an outcome, a capture's snapshot (decrypted in memory,
//! never cached) and the evidence zip. Every view is audited before
//! anything is shown.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect};
use jiff::Timestamp;
use serde::Deserialize;

use super::access::{Allowed, IncidentsP, Submit, Viewer};
use super::login::Empty;
use super::pages::{PageResult, local, site_zone, visible_sites};
use super::{Console, Frame, Problem, page, with_form_error};
use crate::evidence_export::{self, ExportError, Exporter};
use crate::incidents::{CaptureRow, IncidentRecord};
use crate::store::DeviceFilter;

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
        .audit(
            &viewer,
            // The list spans the viewer's sites: their one site, or
            // collector-wide for an account of several.
            viewer.user.audit_site(),
            "console_incidents_listed",
            "incidents",
            &q.status,
        )
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
            Some(site),
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
    let site = match console.store.incident(id).await? {
        Some((_, _, site)) if viewer.sees(site) => site,
        _ => return Err(Problem::NotFound),
    };
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
            Some(site),
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
    // One export at a time: each holds up to about twice EXPORT_LIMIT in
    // memory while it is built.
    static EXPORTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
    let Ok(_turn) = EXPORTS.try_acquire() else {
        return export_refused(&console, &viewer, id, ExportRefusal::Busy).await;
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
        Err(e) => return export_refused(&console, &viewer, id, ExportRefusal::Failed(e)).await,
    };
    let file = format!("{}-evidence.zip", evidence_export::folder_name(id));
    console
        .audit(
            &viewer,
            Some(site),
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

/// Why the console did not hand out an incident's evidence.
enum ExportRefusal {
    /// Another export is being built.
    Busy,
    Failed(ExportError),
}

/// The incident page again, saying why its evidence was not exported.
async fn export_refused(
    console: &Console,
    viewer: &Viewer,
    id: i64,
    refusal: ExportRefusal,
) -> PageResult {
    let error = match refusal {
        ExportRefusal::Busy => {
            let message = "Another evidence export is being prepared. Try again in a minute.";
            let mut page = incident_page(console, viewer, id, Refused::Export(message)).await?;
            *page.status_mut() = axum::http::StatusCode::TOO_MANY_REQUESTS;
            return Ok(page);
        }
        ExportRefusal::Failed(error) => error,
    };
    let (status, message) = match &error {
        ExportError::TooLarge { limit } => (
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "This incident's evidence is larger than the console builds ({} MiB). \
                 Ask whoever administers the collector server (not a technician: \
                 they may not see evidence) to export it there with \
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
                     Tell whoever administers the collector server; the audit log has the details."
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
            Some(site),
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
