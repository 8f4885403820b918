//! Incidents (DSL only): the list (unreviewed captures first, with their
//! age), one incident with its captures, each capture's review (status,
//! grade, notes, history: `review_capture`, which the JSON API also
//! calls), closing with an outcome, a capture's snapshot (decrypted in
//! memory, never cached) and the evidence zip. Every view is audited
//! before anything is shown, every change after it is made.

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
use crate::exclusions::ExclusionKind;
use crate::incidents::{CaptureRow, IncidentRecord};
use crate::review::{
    CaptureStatus, Change, Grade, HistoryEntry, ReviewError, ReviewRequest, age_words, next_status,
};
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
    /// Captures nobody has reviewed.
    unreviewed: i64,
    /// How long the oldest of them has waited ("" without one).
    waiting: String,
    /// Where the captures' review stands, in words.
    review: String,
}

/// An incident's review in words: never a colour alone.
fn review_words(i: &IncidentRecord) -> String {
    let r = &i.review;
    if i.reviewed {
        "all captures reviewed".into()
    } else if r.open > 0 {
        let triaged = r.open - r.unreviewed;
        match (r.unreviewed, triaged) {
            (new, 0) => format!("{new} new"),
            (0, triaged) => format!("{triaged} triaged"),
            (new, triaged) => format!("{new} new, {triaged} triaged"),
        }
    } else {
        "no captures held".into()
    }
}

fn incident_row(i: &IncidentRecord, zone: &str, now: Timestamp) -> IncidentRow {
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
        unreviewed: i.review.unreviewed,
        waiting: i
            .review
            .oldest_unreviewed_at
            .map(|at| age_words(now.duration_since(at)))
            .unwrap_or_default(),
        review: review_words(i),
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
    list.sort_by(|a, b| {
        crate::review::review_order(
            (&a.review, a.severity, a.last_at),
            (&b.review, b.severity, b.last_at),
        )
    });
    let now = Timestamp::now();
    let rows = list
        .iter()
        .map(|i| incident_row(i, zones.get(&i.site).map_or("UTC", |z| z.as_str()), now))
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
    /// new, triaged, … (for the form's values)
    status: String,
    status_label: String,
    closed: bool,
    /// The grade in force: the DSL's, or the rule's severity.
    grade: i64,
    regraded: bool,
    outcome: String,
    reference: String,
    /// How long it waited for its first review ("" while new).
    first_review: String,
    /// The statuses it may move to: (value, label).
    choices: Vec<(&'static str, &'static str)>,
    history: Vec<HistoryView>,
    /// Why this capture's review form was refused.
    error: String,
    /// "Not a concern — exclude …" offers while the capture is open:
    /// (what, button words, the text excluded).
    exclusions: Vec<(&'static str, &'static str, String)>,
    /// Exclusions added from this capture: (id, words, undoable).
    taught: Vec<(i64, String, bool)>,
    /// What was on screen before, oldest first.
    context: Vec<ContextView>,
}

/// One earlier window title, its times in the site's zone.
struct ContextView {
    first_seen: String,
    last_seen: String,
    title: String,
    process: String,
}

struct HistoryView {
    when: String,
    who: String,
    what: String,
    /// Outcome, reference or note.
    text: String,
}

fn history_view(h: &HistoryEntry, zone: &str) -> HistoryView {
    let (what, text) = match &h.change {
        Change::Status {
            from,
            to,
            outcome,
            reference,
        } => {
            let mut text = outcome.clone();
            if !reference.is_empty() {
                text.push_str(&format!(" (record: {reference})"));
            }
            (format!("Status: {} → {}", from.label(), to.label()), text)
        }
        Change::Grade { from, to } => (format!("Grade: {from} → {to}"), String::new()),
        Change::Note { text } => ("Note".to_owned(), text.clone()),
    };
    HistoryView {
        when: local(h.at, zone),
        who: h.actor.clone(),
        what,
        text,
    }
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
    /// The risk profiles of the incident's account and device.
    risk_account: String,
    risk_device: String,
}

/// A form on the incident page that was refused, with why (shown beside
/// it).
#[derive(Clone, Copy)]
pub(super) enum Refused<'a> {
    Nothing,
    Close(&'a str),
    Export(&'a str),
    /// A capture's review form: (capture id, why).
    Review(i64, &'a str),
}

impl<'a> Refused<'a> {
    fn message(self) -> &'a str {
        match self {
            Refused::Nothing => "",
            Refused::Close(why) | Refused::Export(why) | Refused::Review(_, why) => why,
        }
    }
}

fn capture_view(
    c: &CaptureRow,
    zone: &str,
    history: &[HistoryEntry],
    refused: Refused<'_>,
) -> CaptureView {
    let r = &c.review;
    CaptureView {
        id: c.id,
        when: local(c.occurred_at, zone),
        rule: c.rule_id.clone(),
        category: c.category.clone(),
        severity: c.severity,
        matched: c.matched_text.clone(),
        window: c.window_title.clone(),
        process: c.process_name.clone(),
        context: c
            .context
            .iter()
            .map(|e| ContextView {
                first_seen: local(e.first_seen, zone),
                last_seen: local(e.last_seen, zone),
                title: e.title.clone(),
                process: e.process_name.clone(),
            })
            .collect(),
        kind: c.kind.clone(),
        file_path: c.file_path.clone(),
        file_sha256: c.file_sha256.clone(),
        image_sha256: c.image_sha256.clone(),
        has_image: !c.image_sha256.is_empty() && c.image_status == "verified",
        no_image_reason: c.no_image_reason.clone(),
        repeats: c.repeat_count,
        status: r.status.as_str().to_owned(),
        status_label: r.status.label().to_owned(),
        closed: r.status.is_closed(),
        grade: r.grade.unwrap_or(c.severity),
        regraded: r.grade.is_some(),
        outcome: r.outcome.clone(),
        reference: r.reference.clone(),
        first_review: r
            .first_review_ms
            .map(|ms| age_words(jiff::SignedDuration::from_millis(ms)))
            .unwrap_or_default(),
        choices: CaptureStatus::ALL
            .into_iter()
            .filter(|to| next_status(c.id, r.status, *to).is_ok())
            .map(|to| match to {
                // From a closed status the one way is back to triage.
                CaptureStatus::Triaged if r.status.is_closed() => {
                    (to.as_str(), "Reopen (back to Triaged)")
                }
                _ => (to.as_str(), to.label()),
            })
            .collect(),
        history: history
            .iter()
            .filter(|h| h.capture_id == c.id)
            .map(|h| history_view(h, zone))
            .collect(),
        error: match refused {
            Refused::Review(id, why) if id == c.id => why.to_owned(),
            _ => String::new(),
        },
        exclusions: if r.status.is_closed() {
            Vec::new()
        } else {
            ExclusionKind::ALL
                .into_iter()
                .filter_map(|k| Some((k.as_str(), k.label(), k.text_of(c)?)))
                .collect()
        },
        taught: Vec::new(),
    }
}

pub(super) async fn incident_page(
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
    let history = console.store.incident_history(id).await?;
    let ids: Vec<i64> = captures.iter().map(|c| c.id).collect();
    let taught = console.store.policy_exclusions(&ids).await?;
    let current = match taught.is_empty() {
        true => 0,
        false => console
            .store
            .site_policy(site, None)
            .await?
            .map_or(0, |p| p.version),
    };
    let captures = captures
        .iter()
        .map(|c| {
            let mut view = capture_view(c, &zone, &history, refused);
            view.taught = taught
                .iter()
                .filter(|e| e.capture == c.id)
                .map(|e| super::exclusions::taught_words(e, current))
                .collect();
            view
        })
        .collect();
    let (close_error, export_error) = match refused {
        Refused::Nothing | Refused::Review(..) => ("", ""),
        Refused::Close(error) => (error, ""),
        Refused::Export(error) => ("", error),
    };
    Ok(with_form_error(
        page(&IncidentPage {
            frame: Frame::new(viewer, format!("Incident {id}"), "/incidents"),
            open: incident.status == "open",
            risk_account: super::report::risk_link(site, Some(&incident.account), None),
            risk_device: super::report::risk_link(site, None, Some(incident.device_id.as_str())),
            i: incident_row(&incident, &zone, Timestamp::now()),
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
    // A change the audit log cannot record is reported as a failure, not
    // passed over in silence.
    console
        .audit(
            &viewer,
            Some(site),
            "incident_closed",
            &format!("incident {id}"),
            // The outcome stays with the incident: it may name a pupil,
            // and the audit log is read by administrators too.
            "",
        )
        .await?;
    Ok(Redirect::to(&format!("/incidents/{id}")).into_response())
}

/// What became of a review asked for through the console or the API.
pub(crate) enum Reviewed {
    /// Applied; the capture's incident.
    Done(i64),
    /// Not applied (an unknown capture, or one in a site the viewer does
    /// not see, is `ReviewError::NotFound`).
    Refused(ReviewError),
}

/// Applies a review to one capture the viewer may see, then writes the
/// audit row (with the capture's site). The outcome, reference and note
/// stay with the capture: they may name a pupil, and the audit log is
/// read by administrators too.
pub(crate) async fn review_capture(
    console: &Console,
    viewer: &Viewer,
    capture: i64,
    request: &ReviewRequest,
) -> Result<Reviewed, Problem> {
    let (incident, site) = match console.store.capture_place(capture).await? {
        Some((incident, site)) if viewer.sees(site) => (incident, site),
        _ => return Ok(Reviewed::Refused(ReviewError::NotFound(capture))),
    };
    let decision = match console
        .store
        .review_capture(capture, request, &viewer.actor, Timestamp::now())
        .await?
    {
        Ok(decision) => decision,
        Err(refused) => return Ok(Reviewed::Refused(refused)),
    };
    // After the review's commit: a failure here is reported (the API
    // then returns no capture data), never passed over.
    console
        .audit(
            viewer,
            Some(site),
            "capture_reviewed",
            &format!("incident {incident}"),
            &decision.audit_words(capture),
        )
        .await?;
    Ok(Reviewed::Done(incident))
}

#[derive(Deserialize)]
pub struct ReviewForm {
    /// A status value, or "" to keep it.
    #[serde(default)]
    status: String,
    /// 1–5, or "" to keep the grade in force.
    #[serde(default)]
    grade: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    reference: String,
    #[serde(default)]
    note: String,
}

impl ReviewForm {
    fn request(self) -> Result<ReviewRequest, &'static str> {
        let status = match self.status.as_str() {
            "" | "keep" => None,
            text => Some(CaptureStatus::parse(text).ok_or("Choose one of the statuses listed.")?),
        };
        let grade = match self.grade.as_str() {
            "" | "keep" => None,
            text => Some(
                text.parse()
                    .ok()
                    .and_then(|n| Grade::new(n).ok())
                    .ok_or("A grade is 1 to 5.")?,
            ),
        };
        Ok(ReviewRequest {
            status,
            grade,
            outcome: self.outcome,
            reference: self.reference,
            note: self.note,
        })
    }
}

/// The words the incident page shows for a refused review.
fn refusal_words(error: &ReviewError) -> String {
    match error {
        ReviewError::OutcomeRequired(_) => {
            "Record the outcome to close this capture (what was decided and done).".into()
        }
        ReviewError::OutcomeWithoutClosing => {
            "An outcome and a record reference go with one of the four closing statuses.".into()
        }
        ReviewError::NothingToDo => {
            "Nothing to record: choose a new status, a different grade or write a note.".into()
        }
        other => format!("{}.", capitalised(&other.to_string())),
    }
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

pub async fn capture_review(
    State(console): State<Console>,
    Path((id, capture)): Path<(i64, i64)>,
    Submit(viewer, form, ..): Submit<IncidentsP, ReviewForm>,
) -> PageResult {
    // The capture must belong to the incident in the address.
    match console.store.capture_place(capture).await? {
        Some((incident, site)) if incident == id && viewer.sees(site) => {}
        _ => return Err(Problem::NotFound),
    }
    let request = match form.request() {
        Ok(request) => request,
        Err(why) => {
            return incident_page(&console, &viewer, id, Refused::Review(capture, why)).await;
        }
    };
    match review_capture(&console, &viewer, capture, &request).await? {
        Reviewed::Done(_) => {
            Ok(Redirect::to(&format!("/incidents/{id}#cap-{capture}")).into_response())
        }
        Reviewed::Refused(ReviewError::NotFound(_)) => Err(Problem::NotFound),
        Reviewed::Refused(error) => {
            let words = refusal_words(&error);
            incident_page(&console, &viewer, id, Refused::Review(capture, &words)).await
        }
    }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::http::StatusCode;
    use jiff::Timestamp;
    use tower::ServiceExt;

    use crate::console::test_support::{body, get, post, session};
    use crate::model::{CaptureRecord, ConsoleRole};
    use crate::review::CaptureStatus;
    use crate::store::sqlite::testing::{record_first_capture, snapshot, store_with_device};
    use crate::store::{ConsoleStore, IncidentStore, SqliteStore};

    async fn status_of(store: &SqliteStore, incident: i64) -> (CaptureStatus, Option<i64>) {
        let (_, captures, _) = store.incident(incident).await.unwrap().unwrap();
        (captures[0].review.status, captures[0].review.grade)
    }

    #[tokio::test]
    async fn a_dsl_reviews_a_capture_through_the_form_and_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let now = Timestamp::now();
        let (store, site, device) = store_with_device(dir.path(), now).await;
        let capture = CaptureRecord {
            rule_id: "weapons-1".into(),
            matched_text: "buy a knife".into(),
            window_title: "buy a knife - Chromium".into(),
            process_name: "chromium".into(),
            context: vec![crate::model::ContextEntry {
                title: "<script>alert(1)</script> maths homework".into(),
                process_name: "firefox".into(),
                first_seen: now - jiff::SignedDuration::from_mins(20),
                last_seen: now - jiff::SignedDuration::from_mins(5),
            }],
            ..snapshot("weapons", 3)
        };
        let (incident, capture) = record_first_capture(&store, &device, capture, now).await;
        session(&store, "dsl1", ConsoleRole::Dsl, site.id).await;
        session(&store, "tech1", ConsoleRole::Technician, site.id).await;
        let store = Arc::new(store);
        let app = crate::api::router(store.clone(), Arc::new(Default::default()), None);
        let review = format!("/incidents/{incident}/captures/{capture}/review");

        // The page offers the form, with the rule's severity as the grade.
        let page = app
            .clone()
            .oneshot(get(&format!("/incidents/{incident}"), "dsl1"))
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let html = body(page).await;
        assert!(html.contains(&format!("action=\"{review}\"")), "{html}");
        assert!(html.contains("<legend>Status of capture"), "{html}");
        // What was on screen before, escaped, in the site's zone.
        assert!(html.contains("What was on screen before"), "{html}");
        assert!(
            html.contains("&#60;script&#62;alert(1)&#60;/script&#62; maths homework"),
            "{html}"
        );
        assert!(!html.contains("<script>alert(1)"), "{html}");
        let zone = crate::store::SiteStore::sites(&*store).await.unwrap()[0]
            .timezone
            .clone();
        let shown = crate::console::pages::local(now - jiff::SignedDuration::from_mins(20), &zone);
        assert!(html.contains(&shown), "{shown}: {html}");
        assert!(
            html.contains("3 (the rule&#x27;s severity)")
                || html.contains("3 (the rule's severity)"),
            "{html}"
        );

        // A forged form (wrong CSRF token) and a technician are refused.
        let forged = app
            .clone()
            .oneshot(post(&review, "dsl1", "csrf=wrong&status=triaged"))
            .await
            .unwrap();
        assert_eq!(forged.status(), StatusCode::FORBIDDEN);
        let technician = app
            .clone()
            .oneshot(post(&review, "tech1", "csrf=tech1-token&status=triaged"))
            .await
            .unwrap();
        assert_eq!(technician.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            status_of(&store, incident).await,
            (CaptureStatus::New, None)
        );

        // Closing without an outcome is refused beside the form.
        let refused = app
            .clone()
            .oneshot(post(
                &review,
                "dsl1",
                "csrf=dsl1-token&status=escalated&grade=keep",
            ))
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let html = body(refused).await;
        assert!(
            html.contains(&format!("id=\"review-error-{capture}\""))
                && html.contains("Record the outcome"),
            "{html}"
        );
        assert_eq!(
            status_of(&store, incident).await,
            (CaptureStatus::New, None)
        );

        // Escalated with an outcome, a reference, a regrade and a note.
        let done = app
            .clone()
            .oneshot(post(
                &review,
                "dsl1",
                "csrf=dsl1-token&status=escalated&grade=5&outcome=referred+to+CEOP&reference=CPOMS-9&note=parents+told",
            ))
            .await
            .unwrap();
        assert_eq!(done.status(), StatusCode::SEE_OTHER, "{}", body(done).await);
        assert_eq!(
            status_of(&store, incident).await,
            (CaptureStatus::Escalated, Some(5))
        );
        let html = body(
            app.clone()
                .oneshot(get(&format!("/incidents/{incident}"), "dsl1"))
                .await
                .unwrap(),
        )
        .await;
        for shown in [
            "Escalated (CEOP, police or LADO)",
            "regraded by the DSL; rule's severity 3",
            "Status: New → Escalated (CEOP, police or LADO)",
            "Grade: 3 → 5",
            "parents told",
            "referred to CEOP (record: CPOMS-9)",
            "console:dsl1",
            "all captures reviewed",
        ] {
            assert!(html.contains(shown), "'{shown}' missing: {html}");
        }
        // Audited with the site, without what the DSL wrote.
        let audit = store
            .audit_for_target(&format!("incident {incident}"), 20)
            .await
            .unwrap();
        let reviewed: Vec<_> = audit
            .iter()
            .filter(|a| a.action == "capture_reviewed")
            .collect();
        assert_eq!(reviewed.len(), 1, "{audit:?}");
        assert_eq!(reviewed[0].site, Some(site.id));
        assert_eq!(reviewed[0].actor, "console:dsl1");
        assert!(!reviewed[0].detail.contains("CEOP"), "{:?}", reviewed[0]);

        // A capture of another incident cannot be reviewed through this one's address.
        let elsewhere = app
            .oneshot(post(
                &format!("/incidents/{}/captures/{capture}/review", incident + 1),
                "dsl1",
                "csrf=dsl1-token&status=triaged",
            ))
            .await
            .unwrap();
        assert_eq!(elsewhere.status(), StatusCode::NOT_FOUND);
    }
}
