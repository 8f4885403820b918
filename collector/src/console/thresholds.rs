//! A site's device-activity thresholds and evidence retention in the
//! console (`site_settings`): the values in force with where each comes
//! from, a form that sets all five over `collector.toml`'s, and "clear"
//! to fall back to `collector.toml`.
//!
//! Guarantee: a refused form changes nothing and names each bad field
//! beside it; a change is stored with its audit row (old → new) in one
//! transaction, and the site's devices are evaluated again at once, so
//! device pages, flags and the compliance report follow.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use jiff::Timestamp;
use serde::Deserialize;

use super::access::{Allowed, SettingsP, Submit, Viewer, encode};
use super::pages::visible_sites;
use super::settings::site_for;
use super::{Console, Frame, Problem, page, with_form_error};
use crate::model::Site;
use crate::site_settings::{self, Field, FieldError, RawValues, SiteOverride, SiteValues};
use crate::store::{AuditEntry, DeviceFilter};

type PageResult = Result<Response, Problem>;

const PATH: &str = "/settings/activity";

/// One field of the form, with its value in force and any error.
struct FieldView {
    name: &'static str,
    label: &'static str,
    hint: String,
    checkbox: bool,
    /// What the input holds (the submitted text after a refusal).
    value: String,
    checked: bool,
    in_force: String,
    source: &'static str,
    error: String,
}

#[derive(Template)]
#[template(path = "thresholds.html")]
struct ThresholdsPage {
    frame: Frame,
    sites: Vec<String>,
    site: String,
    fields: Vec<FieldView>,
    has_override: bool,
    notice: String,
    refused: bool,
}

#[derive(Deserialize, Default)]
pub struct SiteQuery {
    #[serde(default)]
    site: String,
    #[serde(default)]
    saved: String,
}

fn hint(field: Field, values: &SiteValues) -> String {
    match field {
        Field::WindowDays => format!("1 to {} days.", site_settings::MAX_WINDOW_DAYS),
        Field::RequiredMinutes => format!(
            "1 to {} (the window's length in minutes).",
            values.window_days.max(1) * 24 * 60
        ),
        Field::WarningDays => {
            "A device is at risk this long before it would breach; less than the window.".to_owned()
        }
        Field::AutoDisable => "Otherwise a technician approves each disabling.".to_owned(),
        Field::RetentionDays => format!(
            "1 to {} days; open incidents keep theirs.",
            site_settings::MAX_RETENTION_DAYS
        ),
    }
}

/// A refused form: what was typed, and each field's error.
struct Refused<'a> {
    raw: &'a RawValues,
    errors: &'a [FieldError],
}

async fn render(
    console: &Console,
    viewer: &Viewer,
    site: Site,
    notice: String,
    refused: Option<Refused<'_>>,
) -> PageResult {
    let current = console.store.site_override(site.id).await?;
    let effective = site_settings::effective(&console.config, &site.name, current.as_ref());
    let fields = Field::ALL
        .iter()
        .map(|&field| {
            let (value, checked, error) = match &refused {
                Some(r) => (
                    match field {
                        Field::WindowDays => r.raw.window_days.clone(),
                        Field::RequiredMinutes => r.raw.required_minutes.clone(),
                        Field::WarningDays => r.raw.warning_days.clone(),
                        Field::AutoDisable => String::new(),
                        Field::RetentionDays => r.raw.retention_days.clone(),
                    },
                    r.raw.auto_disable.is_some(),
                    r.errors
                        .iter()
                        .find(|e| e.field == field)
                        .map_or(String::new(), |e| {
                            format!("{}: {}.", field.label(), e.message)
                        }),
                ),
                None => (
                    field.value(&effective.values),
                    effective.values.auto_disable,
                    String::new(),
                ),
            };
            FieldView {
                name: field.name(),
                label: field.label(),
                hint: hint(field, &effective.values),
                checkbox: field == Field::AutoDisable,
                value,
                checked,
                in_force: field.value(&effective.values),
                source: effective.source(field).label(),
                error,
            }
        })
        .collect();
    let refused = refused.is_some();
    let response = page(&ThresholdsPage {
        frame: Frame::new(viewer, "Activity rule and retention", "/settings/activity"),
        sites: visible_sites(console, viewer)
            .await?
            .into_iter()
            .map(|s| s.name)
            .collect(),
        site: site.name,
        fields,
        has_override: current.is_some(),
        notice,
        refused,
    });
    Ok(if refused {
        with_form_error(response, "refused")
    } else {
        response
    })
}

pub async fn page_handler(
    State(console): State<Console>,
    Allowed(viewer, _): Allowed<SettingsP>,
    Query(query): Query<SiteQuery>,
) -> PageResult {
    let site = site_for(&console, &viewer, &query.site, PATH).await?;
    let notice = match query.saved.as_str() {
        "set" => "Saved. The site's devices have been evaluated with these values.",
        "cleared" => "Cleared: the site uses collector.toml's values again.",
        _ => "",
    };
    render(&console, &viewer, site, notice.to_owned(), None).await
}

#[derive(Deserialize)]
pub struct ThresholdsForm {
    #[serde(default)]
    site: String,
    #[serde(flatten)]
    values: RawValues,
}

/// Stores the change with its audit row, then evaluates the site's
/// devices under the values now in force.
async fn apply(
    console: &Console,
    viewer: &Viewer,
    site: &Site,
    value: Option<&SiteOverride>,
    before: SiteValues,
) -> Result<(), Problem> {
    let after = site_settings::effective(&console.config, &site.name, value).values;
    let (action, detail) = match value {
        Some(_) => ("site_settings_set", site_settings::changes(&before, &after)),
        None => (
            "site_settings_cleared",
            format!(
                "back to collector.toml; {}",
                site_settings::changes(&before, &after)
            ),
        ),
    };
    let now = Timestamp::now();
    console
        .store
        .set_site_override(
            site.id,
            value,
            AuditEntry {
                at: now,
                site: Some(site.id),
                actor: &format!("console:{}", viewer.name()),
                action,
                target: &format!("site {}", site.name),
                detail: &detail,
                address: &viewer.address,
            },
        )
        .await?;
    let filter = DeviceFilter {
        site: Some(site.id),
        ..DeviceFilter::default()
    };
    // The periodic pass would reach these devices only at their next
    // check; the values changed now.
    if let Err(e) =
        crate::rules::evaluate::refresh(&*console.store, &console.config, &filter, now).await
    {
        tracing::error!(error = %e, site = %site.name, "evaluating a site after a settings change failed");
    }
    Ok(())
}

fn done(site: &Site, what: &str) -> Response {
    Redirect::to(&format!(
        "/settings/activity?site={}&saved={what}",
        encode(&site.name)
    ))
    .into_response()
}

pub async fn save(
    State(console): State<Console>,
    Submit(viewer, form, ..): Submit<SettingsP, ThresholdsForm>,
) -> PageResult {
    let site = site_for(&console, &viewer, &form.site, PATH).await?;
    let value = match site_settings::parse(&form.values) {
        Ok(value) => value,
        Err(errors) => {
            let refused = Refused {
                raw: &form.values,
                errors: &errors,
            };
            return render(&console, &viewer, site, String::new(), Some(refused)).await;
        }
    };
    let current = console.store.site_override(site.id).await?;
    if current == Some(value) {
        return render(
            &console,
            &viewer,
            site,
            "Unchanged: the site already has these values.".to_owned(),
            None,
        )
        .await;
    }
    let before = site_settings::effective(&console.config, &site.name, current.as_ref()).values;
    apply(&console, &viewer, &site, Some(&value), before).await?;
    Ok(done(&site, "set"))
}

#[derive(Deserialize)]
pub struct SiteForm {
    #[serde(default)]
    site: String,
}

pub async fn clear(
    State(console): State<Console>,
    Submit(viewer, form, ..): Submit<SettingsP, SiteForm>,
) -> PageResult {
    let site = site_for(&console, &viewer, &form.site, PATH).await?;
    let Some(current) = console.store.site_override(site.id).await? else {
        return render(
            &console,
            &viewer,
            site,
            "Unchanged: the site already uses collector.toml's values.".to_owned(),
            None,
        )
        .await;
    };
    apply(&console, &viewer, &site, None, current.values()).await?;
    Ok(done(&site, "cleared"))
}
