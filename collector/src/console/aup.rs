//! The acceptable-use answers page: who answered which version of their
//! site's AUP, on which device, when, and what the agent did about a
//! decline; filtered by site, version and answer. Accounts are pupil-level
//! data: administrators, technicians and DSLs of the site see them
//! (`Permission::Devices`), governors do not, and every view is audited.

use askama::Template;
use axum::extract::{Query, State};
use serde::Deserialize;

use axum::response::IntoResponse;

use super::access::{Allowed, AupSettingsP, DevicesP, SettingsP, Submit};
use super::pages::{PageResult, local, visible_sites};
use super::{Console, Frame, Problem, page};
use crate::model::{AupAnswerKind, SiteId};
use crate::store::AupAnswerFilter;

/// Most answers one page lists, newest first.
pub const ANSWERS_PER_PAGE: u32 = 500;

pub(super) struct AnswerRow {
    answered_at: String,
    site: String,
    device: String,
    hostname: String,
    account: String,
    version: u64,
    answer: &'static str,
    outcome: String,
}

#[derive(Template)]
#[template(path = "aup.html")]
struct AupPage {
    frame: Frame,
    /// (value, label, chosen) for the site filter.
    sites: Vec<(String, String, bool)>,
    version: String,
    /// (value, label, chosen) for the answer filter.
    answers: Vec<(&'static str, &'static str, bool)>,
    rows: Vec<AnswerRow>,
}

#[derive(Deserialize)]
pub struct AupParams {
    #[serde(default)]
    site: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    answer: String,
}

pub async fn answers(
    State(console): State<Console>,
    Allowed(viewer, _): Allowed<DevicesP>,
    Query(q): Query<AupParams>,
) -> PageResult {
    let sites = visible_sites(&console, &viewer).await?;
    let chosen_site = match q.site.trim() {
        "" => None,
        text => match text.parse::<i64>() {
            Ok(id) if sites.iter().any(|s| s.id.0 == id) => Some(SiteId(id)),
            _ => return Err(Problem::NotFound),
        },
    };
    let version = match q.version.trim() {
        "" => None,
        text => Some(text.parse::<u64>().map_err(|_| Problem::NotFound)?),
    };
    let answer = match q.answer.trim() {
        "" => None,
        text => Some(AupAnswerKind::parse(text).ok_or(Problem::NotFound)?),
    };
    let filter = AupAnswerFilter {
        sites: Some(match chosen_site {
            Some(site) => vec![site],
            None => sites.iter().map(|s| s.id).collect(),
        }),
        version,
        answer,
        limit: ANSWERS_PER_PAGE,
    };
    let found = console.store.aup_answers(&filter).await?;
    console
        .audit(
            &viewer,
            chosen_site,
            "aup.answers_viewed",
            "acceptable-use answers",
            &format!(
                "site {}; version {}; answer {}; {} row(s)",
                chosen_site.map_or("all".into(), |s| s.0.to_string()),
                version.map_or("all".into(), |v| v.to_string()),
                answer.map_or("all", |a| a.as_str()),
                found.len()
            ),
        )
        .await?;
    let zone_of = |name: &str| {
        sites
            .iter()
            .find(|s| s.name == name)
            .map_or("UTC".to_owned(), |s| s.timezone.clone())
    };
    let rows = found
        .iter()
        .map(|row| AnswerRow {
            answered_at: local(row.record.answered_at, &zone_of(&row.site)),
            site: row.site.clone(),
            device: row.device.to_string(),
            hostname: row.hostname.clone(),
            account: row.record.account.clone(),
            version: row.record.version,
            answer: row.record.answer.as_str(),
            outcome: row.record.outcome.clone(),
        })
        .collect();
    let site_value = q.site.trim();
    let mut options = vec![(
        String::new(),
        "All your sites".to_owned(),
        site_value.is_empty(),
    )];
    options.extend(sites.iter().map(|s| {
        let value = s.id.0.to_string();
        let here = value == site_value;
        (value, s.name.clone(), here)
    }));
    let answer_value = q.answer.trim();
    Ok(page(&AupPage {
        frame: Frame::new(&viewer, "Acceptable-use answers", "/aup"),
        sites: options,
        version: version.map(|v| v.to_string()).unwrap_or_default(),
        answers: vec![
            ("", "Any", answer_value.is_empty()),
            ("accept", "Accepted", answer_value == "accept"),
            ("decline", "Declined", answer_value == "decline"),
        ],
        rows,
    }))
}

/// The form the edit page shows, with the text as typed and why it was
/// refused.
#[derive(Template)]
#[template(path = "aup_edit.html")]
struct AupEditPage {
    frame: Frame,
    site: String,
    /// "Version N, saved … by …", or that there is none yet.
    current: String,
    text: String,
    errors: Vec<String>,
    notice: String,
}

#[derive(Deserialize)]
pub struct EditParams {
    #[serde(default)]
    site: String,
    saved: Option<u64>,
}

#[derive(Deserialize)]
pub struct AupForm {
    #[serde(default)]
    site: String,
    #[serde(default)]
    text: String,
}

const EDIT_PATH: &str = "/settings/aup";

/// A site's acceptable-use policy to edit (administrators and
/// technicians).
pub async fn edit(
    State(console): State<Console>,
    Allowed(viewer, _): Allowed<SettingsP>,
    Query(q): Query<EditParams>,
) -> PageResult {
    let site = super::settings::site_for(&console, &viewer, &q.site, EDIT_PATH).await?;
    let notice = q
        .saved
        .map(|v| format!("Saved version {v}; connected agents receive it within seconds."))
        .unwrap_or_default();
    render_edit(&console, &viewer, &site, None, Vec::new(), notice).await
}

async fn render_edit(
    console: &Console,
    viewer: &super::access::Viewer,
    site: &crate::model::Site,
    text: Option<String>,
    errors: Vec<String>,
    notice: String,
) -> PageResult {
    let held = console.store.site_aup(site.id, None).await?;
    let current = match &held {
        Some(aup) => format!(
            "Version {}, saved {} by {}.",
            aup.version,
            local(aup.created_at, &site.timezone),
            aup.created_by
        ),
        None => "No acceptable-use policy yet: users are asked nothing.".to_owned(),
    };
    let text = text.unwrap_or_else(|| held.map(|a| a.toml).unwrap_or_default());
    Ok(page(&AupEditPage {
        frame: Frame::new(viewer, "Acceptable-use policy", EDIT_PATH),
        site: site.name.clone(),
        current,
        text,
        errors,
        notice,
    }))
}

/// Saves the form's text as the site's next version through
/// `aup::save`, so the agents' parser decides; a refusal shows its line.
pub async fn save(
    State(console): State<Console>,
    Submit(viewer, form, ..): Submit<AupSettingsP, AupForm>,
) -> PageResult {
    let site = super::settings::site_for(&console, &viewer, &form.site, EDIT_PATH).await?;
    let text = form.text.replace("\r\n", "\n");
    let name = format!("console:{}", viewer.name());
    let saved = crate::aup::save(
        &*console.store,
        &site,
        &text,
        std::path::Path::new("the form"),
        crate::policies::Author {
            name: &name,
            address: &viewer.address,
        },
        jiff::Timestamp::now(),
    )
    .await;
    match saved {
        Ok(crate::policies::Saved::New(version)) => Ok(axum::response::Redirect::to(&format!(
            "{EDIT_PATH}?site={}&saved={version}",
            serde_urlencoded::to_string([("", site.name.as_str())])
                .unwrap_or_default()
                .trim_start_matches('=')
        ))
        .into_response()),
        Ok(crate::policies::Saved::Unchanged(version)) => {
            let notice = format!("Unchanged: version {version} already has this text.");
            render_edit(&console, &viewer, &site, None, Vec::new(), notice).await
        }
        Err(crate::aup::AupSaveError::Store(e)) => Err(e.into()),
        Err(refused) => {
            let errors = vec![refused.to_string()];
            render_edit(&console, &viewer, &site, Some(text), errors, String::new()).await
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::http::StatusCode;
    use jiff::Timestamp;
    use tower::ServiceExt;

    use crate::console::test_support::{body, get, session};
    use crate::model::{AupAnswerKind, AupAnswerRecord, ConsoleRole, Event, EventBody, Seq};
    use crate::store::sqlite::testing::store_with_device;
    use crate::store::{ConsoleStore, IngestStore};

    #[tokio::test]
    async fn technicians_edit_the_aup_and_a_broken_text_is_refused_with_its_line() {
        use crate::console::test_support::post;
        use crate::store::AupStore;
        let dir = tempfile::tempdir().unwrap();
        let (store, site, _) = store_with_device(dir.path(), Timestamp::now()).await;
        for (name, role) in [
            ("tech1", ConsoleRole::Technician),
            ("dsl1", ConsoleRole::Dsl),
            ("gov1", ConsoleRole::Governor),
        ] {
            session(&store, name, role, site.id).await;
        }
        let store = Arc::new(store);
        let app = crate::api::router(store.clone(), Arc::new(Default::default()), None);
        let html = body(
            app.clone()
                .oneshot(get("/settings/aup", "tech1"))
                .await
                .unwrap(),
        )
        .await;
        assert!(html.contains("No acceptable-use policy yet"), "{html}");
        for who in ["dsl1", "gov1"] {
            let refused = app
                .clone()
                .oneshot(get("/settings/aup", who))
                .await
                .unwrap();
            assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{who}");
        }
        let good = "csrf=tech1-token&site=Cabot&text=title+%3D+%22Rules%22%0D%0Atext+%3D+%22Be+kind.%22%0D%0A";
        let forged = app
            .clone()
            .oneshot(post(
                "/settings/aup",
                "tech1",
                &good.replace("tech1-token", "x"),
            ))
            .await
            .unwrap();
        assert_eq!(forged.status(), StatusCode::FORBIDDEN);
        let saved = app
            .clone()
            .oneshot(post("/settings/aup", "tech1", good))
            .await
            .unwrap();
        assert_eq!(saved.status(), StatusCode::SEE_OTHER);
        let held = store.site_aup(site.id, None).await.unwrap().unwrap();
        assert_eq!(
            (held.version, held.toml.as_str()),
            (1, "title = \"Rules\"\ntext = \"Be kind.\"\n")
        );
        assert_eq!(held.created_by, "console:tech1");
        // A long policy (60 KB, about 180 KB percent-encoded) is not
        // refused by the form's size limit.
        let long = format!(
            "csrf=tech1-token&site=Cabot&text=text+%3D+%22{}%22%0D%0A",
            "Be%20kind.%20".repeat(5_000)
        );
        let saved = app
            .clone()
            .oneshot(post("/settings/aup", "tech1", &long))
            .await
            .unwrap();
        assert_eq!(saved.status(), StatusCode::SEE_OTHER, "a long AUP");
        assert_eq!(
            store
                .site_aup(site.id, None)
                .await
                .unwrap()
                .unwrap()
                .version,
            2
        );
        let broken =
            "csrf=tech1-token&site=Cabot&text=text+%3D+%22a%22%0D%0Adecline+%3D+%22shout%22%0D%0A";
        let html = body(
            app.clone()
                .oneshot(post("/settings/aup", "tech1", broken))
                .await
                .unwrap(),
        )
        .await;
        assert!(html.contains("the form: line 2:"), "{html}");
        assert_eq!(
            store
                .site_aup(site.id, None)
                .await
                .unwrap()
                .unwrap()
                .version,
            2
        );
    }

    #[tokio::test]
    async fn staff_who_see_devices_list_answers_audited_and_governors_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let now = Timestamp::now();
        let (store, site, device) = store_with_device(dir.path(), now).await;
        let answer = |seq: u64, account: &str, version: u64, answer| Event {
            seq: Seq(seq),
            event_id: format!("e{seq}"),
            occurred_at: now,
            body: EventBody::AupAnswer(AupAnswerRecord {
                account: account.into(),
                version,
                answer,
                answered_at: now,
                outcome: if answer == AupAnswerKind::Decline {
                    "session 4 ended".into()
                } else {
                    String::new()
                },
            }),
        };
        let author = crate::policies::Author {
            name: "tech",
            address: "cli",
        };
        for text in ["text = \"a\"\n", "text = \"b\"\n"] {
            crate::store::AupStore::save_site_aup(&store, site.id, text, "h", author, now)
                .await
                .unwrap();
        }
        store
            .record_batch(
                &device,
                &[
                    answer(1, "pupil7", 1, AupAnswerKind::Accept),
                    answer(2, "pupil8", 2, AupAnswerKind::Decline),
                ],
                now,
            )
            .await
            .unwrap();
        for (name, role) in [
            ("dsl1", ConsoleRole::Dsl),
            ("tech1", ConsoleRole::Technician),
            ("admin1", ConsoleRole::Admin),
            ("gov1", ConsoleRole::Governor),
        ] {
            session(&store, name, role, site.id).await;
        }
        let store = Arc::new(store);
        let app = crate::api::router(store.clone(), Arc::new(Default::default()), None);
        for who in ["dsl1", "tech1", "admin1"] {
            let html = body(app.clone().oneshot(get("/aup", who)).await.unwrap()).await;
            assert!(html.contains("<td>pupil7</td>"), "{who}: {html}");
            assert!(html.contains("<td>session 4 ended</td>"), "{who}");
        }
        let declines = body(
            app.clone()
                .oneshot(get(
                    &format!("/aup?site={}&answer=decline", site.id.0),
                    "dsl1",
                ))
                .await
                .unwrap(),
        )
        .await;
        assert!(declines.contains("<td>pupil8</td>"), "{declines}");
        assert!(!declines.contains("<td>pupil7</td>"), "{declines}");
        let version_1 = body(
            app.clone()
                .oneshot(get("/aup?version=1", "dsl1"))
                .await
                .unwrap(),
        )
        .await;
        assert!(version_1.contains("<td>pupil7</td>") && !version_1.contains("<td>pupil8</td>"));
        for (path, status) in [
            ("/aup?site=999", StatusCode::NOT_FOUND),
            ("/aup?answer=maybe", StatusCode::NOT_FOUND),
        ] {
            let response = app.clone().oneshot(get(path, "dsl1")).await.unwrap();
            assert_eq!(response.status(), status, "{path}");
        }
        let governor = app.clone().oneshot(get("/aup", "gov1")).await.unwrap();
        assert_eq!(governor.status(), StatusCode::FORBIDDEN);
        let audited = store
            .audit_entries(&crate::store::AuditQuery {
                sites: crate::store::AuditSites::All,
                actor: String::new(),
                action: "aup.answers_viewed".into(),
                before: None,
                limit: 100,
            })
            .await
            .unwrap();
        assert_eq!(audited.len(), 5, "every view audited");
    }
}
