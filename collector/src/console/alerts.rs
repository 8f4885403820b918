//! A site's capture alerts in the console (`alerts.rs`): the instant
//! categories and thresholds in force with where each comes from, a form
//! that sets both over `collector.toml`'s, and "clear" to fall back to
//! it. Administrators, technicians and DSLs (who own what alerts them),
//! as for the site's policy.
//!
//! Guarantee: a refused form changes nothing and says why; a change is
//! stored with its audit row (old → new) in one transaction and applies
//! from the next capture the collector records.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use jiff::Timestamp;
use serde::Deserialize;

use super::access::{AlertsP, Allowed, Submit, Viewer, encode};
use super::pages::visible_sites;
use super::settings::site_for;
use super::{Console, Frame, Problem, page, with_form_error};
use crate::alerts::{AlertSettings, EffectiveAlerts, FileAlerts};
use crate::model::Site;
use crate::store::AuditEntry;

type PageResult = Result<Response, Problem>;

const PATH: &str = "/settings/alerts";

#[derive(Template)]
#[template(path = "alerts.html")]
struct AlertsPage {
    frame: Frame,
    sites: Vec<String>,
    site: String,
    /// (category) in force.
    categories: Vec<String>,
    categories_source: &'static str,
    /// (category, count, days) in force.
    thresholds: Vec<(String, u32, u32)>,
    thresholds_source: &'static str,
    /// The form's texts.
    categories_text: String,
    thresholds_text: String,
    has_override: bool,
    notice: String,
    error: String,
}

#[derive(Deserialize, Default)]
pub struct SiteQuery {
    #[serde(default)]
    site: String,
    #[serde(default)]
    saved: String,
}

async fn effective(console: &Console, site: &Site) -> Result<(EffectiveAlerts, bool), Problem> {
    let current = console.store.alert_override(site.id).await?;
    let has = current.is_some();
    Ok((
        FileAlerts::from_config(&console.config).effective(&site.name, current),
        has,
    ))
}

async fn render(
    console: &Console,
    viewer: &Viewer,
    site: Site,
    notice: &str,
    refused: Option<(&AlertsForm, String)>,
) -> PageResult {
    let (in_force, has_override) = effective(console, &site).await?;
    let s = &in_force.settings;
    let (categories_text, thresholds_text, error) = match refused {
        Some((form, why)) => (
            form.instant_categories.clone(),
            form.thresholds.clone(),
            why,
        ),
        None => (s.categories_text(), s.thresholds_text(), String::new()),
    };
    let response = page(&AlertsPage {
        frame: Frame::new(viewer, "Capture alerts", PATH),
        sites: visible_sites(console, viewer)
            .await?
            .into_iter()
            .map(|s| s.name)
            .collect(),
        site: site.name,
        categories: s.instant_categories.clone(),
        categories_source: in_force.sources.0.label(),
        thresholds: s
            .thresholds
            .iter()
            .map(|t| (t.category.clone(), t.count, t.days))
            .collect(),
        thresholds_source: in_force.sources.1.label(),
        categories_text,
        thresholds_text,
        has_override,
        notice: notice.to_owned(),
        error: error.clone(),
    });
    Ok(if error.is_empty() {
        response
    } else {
        with_form_error(response, &error)
    })
}

pub async fn page_handler(
    State(console): State<Console>,
    Allowed(viewer, _): Allowed<AlertsP>,
    Query(query): Query<SiteQuery>,
) -> PageResult {
    let site = site_for(&console, &viewer, &query.site, PATH).await?;
    let notice = match query.saved.as_str() {
        "set" => "Saved. Captures recorded from now on alert by these settings.",
        "cleared" => "Cleared: the site uses collector.toml's alert settings again.",
        _ => "",
    };
    render(&console, &viewer, site, notice, None).await
}

#[derive(Deserialize)]
pub struct AlertsForm {
    #[serde(default)]
    site: String,
    #[serde(default)]
    instant_categories: String,
    #[serde(default)]
    thresholds: String,
}

fn describe(s: &AlertSettings) -> String {
    format!(
        "instant: [{}]; thresholds: [{}]",
        s.instant_categories.join(", "),
        s.thresholds_text().replace('\n', ", ")
    )
}

async fn apply(
    console: &Console,
    viewer: &Viewer,
    site: &Site,
    value: Option<&AlertSettings>,
    before: &AlertSettings,
) -> Result<(), Problem> {
    let after = FileAlerts::from_config(&console.config)
        .effective(&site.name, value.cloned())
        .settings;
    let (action, detail) = match value {
        Some(_) => (
            "alert_settings_set",
            format!("{} → {}", describe(before), describe(&after)),
        ),
        None => (
            "alert_settings_cleared",
            format!(
                "back to collector.toml; {} → {}",
                describe(before),
                describe(&after)
            ),
        ),
    };
    console
        .store
        .set_alert_override(
            site.id,
            value,
            AuditEntry {
                at: Timestamp::now(),
                site: Some(site.id),
                actor: &viewer.actor,
                action,
                target: &format!("site {}", site.name),
                detail: &detail,
                address: &viewer.address,
            },
        )
        .await?;
    Ok(())
}

fn done(site: &Site, what: &str) -> Response {
    Redirect::to(&format!("{PATH}?site={}&saved={what}", encode(&site.name))).into_response()
}

pub async fn save(
    State(console): State<Console>,
    Submit(viewer, form, ..): Submit<AlertsP, AlertsForm>,
) -> PageResult {
    let site = site_for(&console, &viewer, &form.site, PATH).await?;
    let value = match AlertSettings::parse(&form.instant_categories, &form.thresholds) {
        Ok(value) => value,
        Err(why) => {
            let why = format!("Nothing was changed: {why}.");
            return render(&console, &viewer, site, "", Some((&form, why))).await;
        }
    };
    let (before, has_override) = effective(&console, &site).await?;
    if has_override && before.settings == value {
        return render(
            &console,
            &viewer,
            site,
            "Unchanged: the site already has these settings.",
            None,
        )
        .await;
    }
    apply(&console, &viewer, &site, Some(&value), &before.settings).await?;
    Ok(done(&site, "set"))
}

#[derive(Deserialize)]
pub struct SiteForm {
    #[serde(default)]
    site: String,
}

pub async fn clear(
    State(console): State<Console>,
    Submit(viewer, form, ..): Submit<AlertsP, SiteForm>,
) -> PageResult {
    let site = site_for(&console, &viewer, &form.site, PATH).await?;
    let (before, has_override) = effective(&console, &site).await?;
    if !has_override {
        return render(
            &console,
            &viewer,
            site,
            "Unchanged: the site already uses collector.toml's alert settings.",
            None,
        )
        .await;
    }
    apply(&console, &viewer, &site, None, &before.settings).await?;
    Ok(done(&site, "cleared"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::http::StatusCode;
    use jiff::Timestamp;
    use tower::ServiceExt;

    use crate::console::test_support::{body, get, post, session};
    use crate::model::{ConsoleRole, Role};
    use crate::store::sqlite::testing::store_with_device;
    use crate::store::{AlertStore, ConsoleStore};

    #[tokio::test]
    async fn a_dsl_sets_and_clears_a_sites_alerts_and_an_admin_edits_its_routes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, site, _) = store_with_device(dir.path(), Timestamp::now()).await;
        session(&store, "dsl1", ConsoleRole::Dsl, site.id).await;
        session(&store, "tech1", ConsoleRole::Technician, site.id).await;
        session(&store, "admin1", ConsoleRole::Admin, site.id).await;
        session(&store, "gov1", ConsoleRole::Governor, site.id).await;
        let store = Arc::new(store);
        let app = crate::api::router(store.clone(), Arc::new(Default::default()), None);

        let html = body(
            app.clone()
                .oneshot(get("/settings/alerts", "dsl1"))
                .await
                .unwrap(),
        )
        .await;
        assert!(html.contains("<td>self-harm</td>"), "{html}");
        assert!(html.contains("Thresholds (built-in default)"), "{html}");
        let governor = app
            .clone()
            .oneshot(get("/settings/alerts", "gov1"))
            .await
            .unwrap();
        assert_eq!(governor.status(), StatusCode::FORBIDDEN);

        // Forged, refused, then saved.
        let form =
            "site=Cabot&instant_categories=self-harm%2C+radicalisation&thresholds=bullying+3+7";
        let forged = app
            .clone()
            .oneshot(post("/settings/alerts", "dsl1", &format!("csrf=x&{form}")))
            .await
            .unwrap();
        assert_eq!(forged.status(), StatusCode::FORBIDDEN);
        let refused = app
            .clone()
            .oneshot(post(
                "/settings/alerts",
                "dsl1",
                "csrf=dsl1-token&site=Cabot&instant_categories=&thresholds=bullying+1+7",
            ))
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(body(refused).await.contains("count from 2"));
        assert_eq!(store.alert_override(site.id).await.unwrap(), None);
        let saved = app
            .clone()
            .oneshot(post(
                "/settings/alerts",
                "dsl1",
                &format!("csrf=dsl1-token&{form}"),
            ))
            .await
            .unwrap();
        assert_eq!(saved.status(), StatusCode::SEE_OTHER);
        let set = store.alert_override(site.id).await.unwrap().unwrap();
        assert_eq!(set.instant_categories, ["self-harm", "radicalisation"]);
        assert_eq!(set.thresholds[0].count, 3);
        let html = body(
            app.clone()
                .oneshot(get("/settings/alerts", "dsl1"))
                .await
                .unwrap(),
        )
        .await;
        assert!(html.contains("Thresholds (set in the console)"), "{html}");
        let cleared = app
            .clone()
            .oneshot(post(
                "/settings/alerts/clear",
                "dsl1",
                "csrf=dsl1-token&site=Cabot",
            ))
            .await
            .unwrap();
        assert_eq!(cleared.status(), StatusCode::SEE_OTHER);
        assert_eq!(store.alert_override(site.id).await.unwrap(), None);

        // Routes: a technician sees them but may not change them.
        let route = "site=Cabot&kind=capture_threshold&role=head_teacher&timing=digest";
        let html = body(
            app.clone()
                .oneshot(get("/settings", "tech1"))
                .await
                .unwrap(),
        )
        .await;
        assert!(
            html.contains("Notification routes of Cabot (collector.toml)"),
            "{html}"
        );
        assert!(!html.contains("action=\"/settings/routes\""), "{html}");
        let technician = app
            .clone()
            .oneshot(post(
                "/settings/routes",
                "tech1",
                &format!("csrf=tech1-token&{route}"),
            ))
            .await
            .unwrap();
        assert_eq!(technician.status(), StatusCode::FORBIDDEN);
        assert!(store.site_routes(site.id).await.unwrap().is_empty());
        let added = app
            .clone()
            .oneshot(post(
                "/settings/routes",
                "admin1",
                &format!("csrf=admin1-token&{route}"),
            ))
            .await
            .unwrap();
        assert_eq!(added.status(), StatusCode::SEE_OTHER);
        let routes = store.site_routes(site.id).await.unwrap();
        assert!(
            routes.len() > 1,
            "started from collector.toml's: {routes:?}"
        );
        let html = body(
            app.clone()
                .oneshot(get("/settings", "admin1"))
                .await
                .unwrap(),
        )
        .await;
        assert!(
            html.contains("Notification routes of Cabot (set for this site)"),
            "{html}"
        );
        let id = routes
            .iter()
            .find(|r| r.role == Role::HeadTeacher && r.kind == "capture_threshold")
            .unwrap()
            .id;
        let removed = app
            .clone()
            .oneshot(post(
                &format!("/settings/routes/{id}/remove"),
                "admin1",
                "csrf=admin1-token&site=Cabot",
            ))
            .await
            .unwrap();
        assert_eq!(removed.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            store.site_routes(site.id).await.unwrap().len(),
            routes.len() - 1
        );
        let cleared = app
            .clone()
            .oneshot(post(
                "/settings/routes/clear",
                "admin1",
                "csrf=admin1-token&site=Cabot",
            ))
            .await
            .unwrap();
        assert_eq!(cleared.status(), StatusCode::SEE_OTHER);
        assert!(store.site_routes(site.id).await.unwrap().is_empty());
        let audit = store
            .audit_for_target("site Cabot", 20)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.action)
            .collect::<Vec<_>>();
        for action in [
            "alert_settings_set",
            "alert_settings_cleared",
            "route_added",
            "route_removed",
            "routes_cleared",
        ] {
            assert!(audit.iter().any(|a| a == action), "{action}: {audit:?}");
        }
    }
}
