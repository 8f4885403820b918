//! A site's suspicious-activity policy in the console: the text agents
//! match with, edited in a form that runs the agent's own parser
//! (`policies::save`, as `policy set` does), its versions, any version's
//! text and the line diff between two versions.
//!
//! Guarantee: a refused text stores nothing and comes back in the form
//! with the error at its line; a saved one is a new version whose audit
//! row (written in the same transaction) names the account and address.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use jiff::Timestamp;
use serde::Deserialize;

use super::access::{Allowed, PoliciesP, Submit, Viewer, encode};
use super::pages::{local, visible_sites};
use super::settings::site_for;
use super::{Console, Frame, Problem, page, with_form_error};
use crate::model::Site;
use crate::policies::{self, Author, DiffLine, PolicySaveError, Saved};
use crate::store::{PolicyVersion, SitePolicy};

type PageResult = Result<Response, Problem>;

const PATH: &str = "/settings/policy";

/// The file name policy errors carry (the parser names a file).
const FORM_FILE: &str = "the policy";

/// One version in the history table.
struct VersionRow {
    version: u64,
    when: String,
    who: String,
    size: String,
    comment: String,
}

/// One line of the diff table. `change` is the word a screen reader
/// announces; `marker` is the sign shown beside it.
struct DiffRow {
    change: &'static str,
    marker: &'static str,
    class: &'static str,
    old_line: String,
    new_line: String,
    text: String,
}

/// A version's text shown on its own.
struct Shown {
    version: u64,
    when: String,
    who: String,
    text: String,
}

/// A diff between two versions.
struct Comparison {
    from: u64,
    to: u64,
    rows: Vec<DiffRow>,
}

#[derive(Template)]
#[template(path = "policy.html")]
struct PolicyPage {
    frame: Frame,
    sites: Vec<String>,
    site: String,
    /// What the textarea holds: the newest text, or the refused one.
    text: String,
    comment: String,
    /// Each "Line N: reason" (or the reason when it has no line).
    errors: Vec<String>,
    notice: String,
    current: u64,
    uses_default: bool,
    history: Vec<VersionRow>,
    shown: Option<Shown>,
    comparison: Option<Comparison>,
}

impl PolicyPage {
    fn path(&self) -> String {
        format!("/settings/policy?site={}", encode(&self.site))
    }
}

#[derive(Deserialize, Default)]
pub struct PolicyQuery {
    #[serde(default)]
    site: String,
    /// A version to show.
    #[serde(default)]
    version: String,
    /// The two versions to compare.
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    /// The version just saved, for the notice.
    #[serde(default)]
    saved: String,
}

fn version_number(text: &str, what: &str) -> Result<Option<u64>, Problem> {
    match text.trim() {
        "" => Ok(None),
        v => v
            .parse()
            .map(Some)
            .map_err(|_| Problem::BadRequest(format!("{what}: a version number, e.g. 3"))),
    }
}

fn version_row(p: &PolicyVersion, zone: &str) -> VersionRow {
    VersionRow {
        version: p.version,
        when: local(p.created_at, zone),
        who: p.created_by.clone(),
        size: if p.bytes == 0 {
            "project default".to_owned()
        } else {
            format!("{} bytes, {} lines", p.bytes, p.lines)
        },
        comment: p.comment.clone(),
    }
}

fn diff_rows(old: &str, new: &str) -> Vec<DiffRow> {
    policies::diff(old, new)
        .into_iter()
        .map(|line| match line {
            DiffLine::Same(o, n, text) => DiffRow {
                change: "unchanged",
                marker: "",
                class: "same",
                old_line: o.to_string(),
                new_line: n.to_string(),
                text,
            },
            DiffLine::Removed(o, text) => DiffRow {
                change: "removed",
                marker: "−",
                class: "removed",
                old_line: o.to_string(),
                new_line: String::new(),
                text,
            },
            DiffLine::Added(n, text) => DiffRow {
                change: "added",
                marker: "+",
                class: "added",
                old_line: String::new(),
                new_line: n.to_string(),
                text,
            },
            DiffLine::Skipped => DiffRow {
                change: "unchanged lines not shown",
                marker: "…",
                class: "skipped",
                old_line: String::new(),
                new_line: String::new(),
                text: String::new(),
            },
        })
        .collect()
}

/// What the form shows besides the history: the submitted text and its
/// errors after a refusal, or a notice after a save.
#[derive(Default)]
struct FormState {
    text: Option<String>,
    comment: String,
    errors: Vec<String>,
    notice: String,
}

async fn render(
    console: &Console,
    viewer: &Viewer,
    site: Site,
    query: &PolicyQuery,
    form: FormState,
) -> PageResult {
    // The list carries no texts (up to 4 MiB each): only the versions
    // shown or compared are read whole.
    let history = console.store.site_policy_versions(site.id).await?;
    let text_of = async |version: u64| -> Result<Option<SitePolicy>, Problem> {
        Ok(console.store.site_policy(site.id, Some(version)).await?)
    };
    let shown = match version_number(&query.version, "version")? {
        None => None,
        Some(v) => {
            let Some(p) = text_of(v).await? else {
                return Err(Problem::NotFound);
            };
            Some(Shown {
                version: v,
                when: local(p.created_at, &site.timezone),
                who: p.created_by.clone(),
                text: policies::effective_text(Some(&p)).to_owned(),
            })
        }
    };
    // Newest against the one before it, unless two versions are named.
    let default_pair = match history.as_slice() {
        [newest, previous, ..] => Some((previous.version, newest.version)),
        _ => None,
    };
    let pair = match (
        version_number(&query.from, "from")?,
        version_number(&query.to, "to")?,
    ) {
        (Some(from), Some(to)) => Some((from, to)),
        (None, None) => default_pair,
        _ => {
            return Err(Problem::BadRequest(
                "Name both versions to compare (from and to).".into(),
            ));
        }
    };
    let comparison = match pair {
        None => None,
        Some((from, to)) => {
            let (Some(old), Some(new)) = (text_of(from).await?, text_of(to).await?) else {
                return Err(Problem::NotFound);
            };
            let (old, new) = (
                policies::effective_text(Some(&old)).to_owned(),
                policies::effective_text(Some(&new)).to_owned(),
            );
            // Up to a second of CPU for two large texts: off the async
            // workers.
            let rows = tokio::task::spawn_blocking(move || diff_rows(&old, &new))
                .await
                .map_err(|_| Problem::Internal)?;
            Some(Comparison { from, to, rows })
        }
    };
    let newest = console.store.site_policy(site.id, None).await?;
    let newest = newest.as_ref();
    let notice = match version_number(&query.saved, "saved")? {
        Some(v) if form.notice.is_empty() => format!(
            "Saved version {v}; connected agents of {} receive it within seconds.",
            site.name
        ),
        _ => form.notice,
    };
    let has_errors = !form.errors.is_empty();
    let response = page(&PolicyPage {
        frame: Frame::new(viewer, "Site policy", "/settings/policy"),
        sites: visible_sites(console, viewer)
            .await?
            .into_iter()
            .map(|s| s.name)
            .collect(),
        text: form
            .text
            .unwrap_or_else(|| policies::effective_text(newest).to_owned()),
        comment: form.comment,
        errors: form.errors,
        notice,
        current: newest.map_or(0, |p| p.version),
        uses_default: newest.is_none_or(|p| p.toml.is_empty()),
        history: history
            .iter()
            .map(|p| version_row(p, &site.timezone))
            .collect(),
        site: site.name,
        shown,
        comparison,
    });
    Ok(if has_errors {
        with_form_error(response, "refused")
    } else {
        response
    })
}

pub async fn page_handler(
    State(console): State<Console>,
    Allowed(viewer, _): Allowed<PoliciesP>,
    Query(query): Query<PolicyQuery>,
) -> PageResult {
    let site = site_for(&console, &viewer, &query.site, PATH).await?;
    render(&console, &viewer, site, &query, FormState::default()).await
}

#[derive(Deserialize)]
pub struct PolicyForm {
    #[serde(default)]
    site: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    comment: String,
}

fn author(viewer: &Viewer) -> (String, &str) {
    (format!("console:{}", viewer.name()), &viewer.address)
}

pub async fn save(
    State(console): State<Console>,
    Submit(viewer, form, ..): Submit<PoliciesP, PolicyForm>,
) -> PageResult {
    let site = site_for(&console, &viewer, &form.site, PATH).await?;
    // Browsers send a textarea's lines with CRLF; versions and diffs keep
    // the LF the CLI's files have.
    let text = form.text.replace("\r\n", "\n");
    let comment: String = form.comment.trim().chars().take(200).collect();
    let refuse = |errors: Vec<String>, text: String, comment: String| FormState {
        text: Some(text),
        comment,
        errors,
        notice: String::new(),
    };
    let query = PolicyQuery::default();
    if text.trim().is_empty() {
        let errors = vec![
            "The policy is empty. To use the project's default, choose \"Reset to the default\"."
                .to_owned(),
        ];
        return render(
            &console,
            &viewer,
            site,
            &query,
            refuse(errors, text, comment),
        )
        .await;
    }
    match save_as(&console, &viewer, &site, &text, FORM_FILE, &comment).await {
        Ok(Saved::New(version)) => Ok(saved_page(&site, version)),
        Ok(Saved::Unchanged(version)) => {
            let state = FormState {
                notice: format!("Unchanged: version {version} already has this text."),
                ..FormState::default()
            };
            render(&console, &viewer, site, &query, state).await
        }
        Err(e) => match refusal(e) {
            Ok(error) => {
                render(
                    &console,
                    &viewer,
                    site,
                    &query,
                    refuse(vec![error], text, comment),
                )
                .await
            }
            Err(store) => Err(store.into()),
        },
    }
}

/// What to show beside the field for a refused text; a store failure is
/// not the person's to fix and goes back as it is.
fn refusal(e: PolicySaveError) -> Result<String, crate::store::StoreError> {
    match e {
        PolicySaveError::Invalid(e) => Ok(match e.line {
            Some(line) => format!("Line {line}: {}", e.message),
            None => e.message,
        }),
        PolicySaveError::TooLarge { size, .. } => Ok(format!(
            "The policy is {size} bytes; it may be at most {} bytes.",
            policies::MAX_POLICY_BYTES
        )),
        PolicySaveError::Store(e) => Err(e),
    }
}

/// Stores `text` as the site's next version, by the viewer (checked by
/// the agents' parser in `policies::save`; `file` names it in errors).
async fn save_as(
    console: &Console,
    viewer: &Viewer,
    site: &Site,
    text: &str,
    file: &str,
    comment: &str,
) -> Result<Saved, PolicySaveError> {
    let (name, address) = author(viewer);
    policies::save(
        &*console.store,
        site,
        text,
        std::path::Path::new(file),
        comment,
        Author {
            name: &name,
            address,
        },
        Timestamp::now(),
    )
    .await
}

/// Back to the policy page, saying which version was saved.
fn saved_page(site: &Site, version: u64) -> Response {
    Redirect::to(&format!(
        "/settings/policy?site={}&saved={version}",
        encode(&site.name)
    ))
    .into_response()
}

#[derive(Deserialize)]
pub struct SiteForm {
    #[serde(default)]
    site: String,
}

/// "Reset to the default": a new version with the empty text, as
/// `policy reset` does.
pub async fn reset(
    State(console): State<Console>,
    Submit(viewer, form, ..): Submit<PoliciesP, SiteForm>,
) -> PageResult {
    let site = site_for(&console, &viewer, &form.site, PATH).await?;
    let comment = "reset to the project's default";
    match save_as(&console, &viewer, &site, "", "(default)", comment).await {
        Ok(Saved::New(version)) => Ok(saved_page(&site, version)),
        Ok(Saved::Unchanged(version)) => {
            let state = FormState {
                notice: format!("Unchanged: version {version} is already the project's default."),
                ..FormState::default()
            };
            render(&console, &viewer, site, &PolicyQuery::default(), state).await
        }
        Err(PolicySaveError::Store(e)) => Err(e.into()),
        Err(e) => {
            // The empty text is never parsed or too large.
            tracing::error!(error = %e, "console: resetting a policy failed");
            Err(Problem::Internal)
        }
    }
}

#[derive(Deserialize)]
pub struct RestoreForm {
    #[serde(default)]
    site: String,
    #[serde(default)]
    version: String,
}

/// "Restore": an earlier version's text saved as a new version (how an
/// exclusion added from a capture, or any change, is undone; history is
/// never rewritten).
pub async fn restore(
    State(console): State<Console>,
    Submit(viewer, form, ..): Submit<PoliciesP, RestoreForm>,
) -> PageResult {
    let site = site_for(&console, &viewer, &form.site, PATH).await?;
    let Some(version) = version_number(&form.version, "version")? else {
        return Err(Problem::NotFound);
    };
    let Some(old) = console.store.site_policy(site.id, Some(version)).await? else {
        return Err(Problem::NotFound);
    };
    let comment = format!("restored version {version}");
    match save_as(&console, &viewer, &site, &old.toml, "(restored)", &comment).await {
        Ok(Saved::New(new)) => Ok(saved_page(&site, new)),
        Ok(Saved::Unchanged(current)) => {
            let state = FormState {
                notice: format!(
                    "Unchanged: version {current} already has the text of version {version}."
                ),
                ..FormState::default()
            };
            render(&console, &viewer, site, &PolicyQuery::default(), state).await
        }
        Err(PolicySaveError::Store(e)) => Err(e.into()),
        Err(e) => {
            // A stored version was checked when it was saved; the parser
            // may since have grown stricter.
            let state = FormState {
                errors: vec![format!("Version {version} is no longer accepted: {e}")],
                ..FormState::default()
            };
            render(&console, &viewer, site, &PolicyQuery::default(), state).await
        }
    }
}
