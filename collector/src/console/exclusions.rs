//! "Not a concern — exclude this phrase / window title / site" on a
//! capture (`crate::exclusions`), and its undo.
//!
//! One click: the site's policy gets a new version with the exclusion
//! added to the capture's rule (`policies::save`, so the agents' parser
//! checks it and the version records who), the capture becomes a false
//! positive with an outcome saying so, and both are audited; the agents
//! receive the version through the usual policy push. Undo saves the
//! version before the exclusion again as a new version, while the
//! exclusion's version is still the newest (later changes are undone on
//! the policy page, where every version can be restored).

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use jiff::Timestamp;
use serde::Deserialize;

use super::access::{IncidentsP, Submit, Viewer};
use super::incidents::{Refused, Reviewed, incident_page, review_capture};
use super::login::Empty;
use super::{Console, Problem};
use crate::exclusions::{ExclusionKind, comment, with_exclusion};
use crate::model::Site;
use crate::policies::{self, Author, PolicySaveError, Saved};
use crate::review::{CaptureStatus, ReviewRequest};
use crate::store::PolicyExclusion;

type PageResult = Result<Response, Problem>;

/// How the incident page words an exclusion added from a capture.
pub(super) fn taught_words(e: &PolicyExclusion, current: u64) -> (i64, String, bool) {
    let what = ExclusionKind::parse(&e.what).map_or("an exclusion", |k| match k {
        ExclusionKind::Phrase => "this phrase",
        ExclusionKind::Title => "this window title",
        ExclusionKind::Website => "this site",
    });
    let mut words = format!(
        "{} excluded {what} from rule {} in policy version {} (was {}).",
        e.actor,
        e.rule_id,
        e.version_after,
        match e.version_before {
            0 => "the project's default".to_owned(),
            v => format!("version {v}"),
        }
    );
    if let Some(undone) = e.undone_version {
        words.push_str(&format!(" Undone by version {undone}."));
    }
    let undoable = e.undone_version.is_none() && current == e.version_after;
    (e.id, words, undoable)
}

async fn site_of(console: &Console, id: crate::model::SiteId) -> Result<Site, Problem> {
    console
        .store
        .sites()
        .await?
        .into_iter()
        .find(|s| s.id == id)
        .ok_or(Problem::NotFound)
}

fn author(viewer: &Viewer) -> String {
    format!("console:{}", viewer.name())
}

#[derive(Deserialize)]
pub struct ExcludeForm {
    #[serde(default)]
    what: String,
}

pub async fn exclude(
    State(console): State<Console>,
    Path((id, capture)): Path<(i64, i64)>,
    Submit(viewer, form, ..): Submit<IncidentsP, ExcludeForm>,
) -> PageResult {
    let Some((incident, rows, site)) = console.store.incident(id).await? else {
        return Err(Problem::NotFound);
    };
    let Some(row) = rows.iter().find(|c| c.id == capture) else {
        return Err(Problem::NotFound);
    };
    if !viewer.sees(site) {
        return Err(Problem::NotFound);
    }
    let refuse = async |why: &str| {
        incident_page(
            &console,
            &viewer,
            incident.id,
            Refused::Review(capture, why),
        )
        .await
    };
    if row.review.status.is_closed() {
        return refuse("This capture is closed: reopen it first.").await;
    }
    let Some(kind) = ExclusionKind::parse(&form.what) else {
        return refuse("Choose what to exclude.").await;
    };
    let Some(text) = kind.text_of(row) else {
        return refuse("This capture has nothing of that kind to exclude.").await;
    };
    let site = site_of(&console, site).await?;
    let current = console.store.site_policy(site.id, None).await?;
    let (before_text, before_version) = current
        .as_ref()
        .map_or(("", 0), |p| (p.toml.as_str(), p.version));
    let why = comment(kind, &row.rule_id, capture, id);
    let new_text = match with_exclusion(
        before_text,
        hallmonitor_policy::DEFAULT_POLICY,
        &row.rule_id,
        &text,
        &why,
    ) {
        Ok(text) => text,
        Err(e) => return refuse(&format!("The policy was not changed: {e}.")).await,
    };
    let name = author(&viewer);
    let saved = policies::save(
        &*console.store,
        &site,
        &new_text,
        std::path::Path::new("(exclusion)"),
        &why,
        Author {
            name: &name,
            address: &viewer.address,
        },
        Timestamp::now(),
    )
    .await;
    let version = match saved {
        Ok(Saved::New(version)) => version,
        Ok(Saved::Unchanged(_)) => {
            return refuse("The policy already has this exclusion.").await;
        }
        Err(PolicySaveError::Store(e)) => return Err(e.into()),
        Err(e) => return refuse(&format!("The policy was not changed: {e}.")).await,
    };
    let exclusion = console
        .store
        .record_policy_exclusion(&PolicyExclusion {
            id: 0,
            capture,
            site: site.id,
            rule_id: row.rule_id.clone(),
            what: kind.as_str().to_owned(),
            version_before: before_version,
            version_after: version,
            undone_version: None,
            at: Timestamp::now(),
            actor: name.clone(),
        })
        .await?;
    let _ = console
        .audit(
            &viewer,
            Some(site.id),
            "policy_exclusion_added",
            &format!("incident {id}"),
            &format!(
                "capture {capture}: {} from rule {}; policy version {before_version} → {version} (exclusion {exclusion})",
                kind.as_str(),
                row.rule_id
            ),
        )
        .await;
    let request = ReviewRequest {
        status: Some(CaptureStatus::FalsePositive),
        outcome: format!(
            "Not a concern: \"{text}\" ({}) excluded from rule {} in policy version {version}.",
            kind.as_str(),
            row.rule_id
        ),
        ..ReviewRequest::default()
    };
    match review_capture(&console, &viewer, capture, &request).await? {
        Reviewed::Done(_) => {
            Ok(Redirect::to(&format!("/incidents/{id}#cap-{capture}")).into_response())
        }
        Reviewed::Refused(e) => {
            // The version is saved (and undoable); the review raced another.
            let why =
                format!("Policy version {version} was saved, but the capture was not marked: {e}");
            refuse(&why).await
        }
    }
}

pub async fn undo(
    State(console): State<Console>,
    Path((id, exclusion)): Path<(i64, i64)>,
    Submit(viewer, Empty {}, ..): Submit<IncidentsP, Empty>,
) -> PageResult {
    let Some(e) = console.store.policy_exclusion(exclusion).await? else {
        return Err(Problem::NotFound);
    };
    match console.store.capture_place(e.capture).await? {
        Some((incident, site)) if incident == id && site == e.site && viewer.sees(site) => {}
        _ => return Err(Problem::NotFound),
    }
    let refuse = async |why: &str| {
        incident_page(&console, &viewer, id, Refused::Review(e.capture, why)).await
    };
    if e.undone_version.is_some() {
        return refuse("This exclusion is already undone.").await;
    }
    let site = site_of(&console, e.site).await?;
    let current = console
        .store
        .site_policy(site.id, None)
        .await?
        .map_or(0, |p| p.version);
    if current != e.version_after {
        return refuse(&format!(
            "The policy has changed since (version {current}): restore the version you want on the policy page."
        ))
        .await;
    }
    let before = match e.version_before {
        0 => String::new(),
        v => match console.store.site_policy(site.id, Some(v)).await? {
            Some(p) => p.toml,
            None => return Err(Problem::NotFound),
        },
    };
    let name = author(&viewer);
    let why = format!(
        "undo of version {} (the exclusion from capture #{}): restores {}",
        e.version_after,
        e.capture,
        match e.version_before {
            0 => "the project's default".to_owned(),
            v => format!("version {v}"),
        }
    );
    let version = match policies::save(
        &*console.store,
        &site,
        &before,
        std::path::Path::new("(undo)"),
        &why,
        Author {
            name: &name,
            address: &viewer.address,
        },
        Timestamp::now(),
    )
    .await
    {
        Ok(Saved::New(v) | Saved::Unchanged(v)) => v,
        Err(PolicySaveError::Store(e)) => return Err(e.into()),
        Err(err) => return refuse(&format!("Not undone: {err}.")).await,
    };
    console.store.exclusion_undone(e.id, version).await?;
    let _ = console
        .audit(
            &viewer,
            Some(site.id),
            "policy_exclusion_undone",
            &format!("incident {id}"),
            &format!(
                "capture {}: exclusion {} undone; policy version {} → {version}",
                e.capture, e.id, e.version_after
            ),
        )
        .await;
    // Said in the capture's history too; its status is the DSL's to change.
    let note = ReviewRequest {
        note: format!(
            "Exclusion undone: policy version {version} restores the text before version {}.",
            e.version_after
        ),
        ..ReviewRequest::default()
    };
    let _ = review_capture(&console, &viewer, e.capture, &note).await?;
    Ok(Redirect::to(&format!("/incidents/{id}#cap-{}", e.capture)).into_response())
}

#[cfg(test)]
mod tests {
    use std::path::Path as FsPath;
    use std::sync::Arc;

    use axum::http::StatusCode;
    use hallmonitor_policy::{Policy, User, UserKind};
    use jiff::Timestamp;
    use tower::ServiceExt;

    use crate::console::test_support::{body, get, post, session};
    use crate::model::{CaptureRecord, ConsoleRole};
    use crate::review::CaptureStatus;
    use crate::store::sqlite::testing::{record_first_capture, snapshot, store_with_device};
    use crate::store::{AlertStore, ConsoleStore, IncidentStore, PolicyStore};

    #[tokio::test]
    async fn not_a_concern_excludes_the_title_in_a_new_policy_version_and_undo_restores_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let now = Timestamp::now();
        let (store, site, device) = store_with_device(dir.path(), now).await;
        let title = "nobody likes you - Drama Club Script - Mozilla Firefox";
        let capture = CaptureRecord {
            rule_id: "bullying".into(),
            matched_text: "nobody likes you".into(),
            window_title: title.into(),
            ..snapshot("bullying", 3)
        };
        let (incident, capture) = record_first_capture(&store, &device, capture, now).await;
        session(&store, "dsl1", ConsoleRole::Dsl, site.id).await;
        session(&store, "tech1", ConsoleRole::Technician, site.id).await;
        let store = Arc::new(store);
        let app = crate::api::router(store.clone(), Arc::new(Default::default()), None);
        let page = format!("/incidents/{incident}");
        let exclude = format!("/incidents/{incident}/captures/{capture}/exclude");

        // Offered: the phrase, the title and the site.
        let html = body(app.clone().oneshot(get(&page, "dsl1")).await.unwrap()).await;
        for offered in ["phrase", "title", "website"] {
            assert!(
                html.contains(&format!("id=\"exclude-{capture}-{offered}\"")),
                "{offered}: {html}"
            );
        }
        assert!(
            html.contains("exclude this site: “Drama Club Script”"),
            "{html}"
        );

        // A technician and a forged form are refused; nothing changes.
        for (who, csrf) in [("tech1", "tech1-token"), ("dsl1", "wrong")] {
            let refused = app
                .clone()
                .oneshot(post(&exclude, who, &format!("csrf={csrf}&what=website")))
                .await
                .unwrap();
            assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{who}");
        }
        assert!(store.site_policy(site.id, None).await.unwrap().is_none());

        // One click.
        let done = app
            .clone()
            .oneshot(post(&exclude, "dsl1", "csrf=dsl1-token&what=website"))
            .await
            .unwrap();
        assert_eq!(done.status(), StatusCode::SEE_OTHER, "{}", body(done).await);
        let v1 = store.site_policy(site.id, None).await.unwrap().unwrap();
        assert_eq!(v1.version, 1);
        assert_eq!(v1.created_by, "console:dsl1");
        assert!(
            v1.comment
                .contains("exclude this site from rule 'bullying'"),
            "{}",
            v1.comment
        );
        let policy = Policy::parse(&v1.toml, FsPath::new("v1")).unwrap();
        let mut buffer = String::new();
        assert!(
            policy
                .matches(title, User::without_groups(UserKind::Pupil), &mut buffer)
                .is_empty()
        );
        assert!(
            !policy
                .matches(
                    "nobody likes you - Chat - Mozilla Firefox",
                    User::without_groups(UserKind::Pupil),
                    &mut buffer
                )
                .is_empty(),
            "only that site is excluded"
        );
        let row = &store.incident(incident).await.unwrap().unwrap().1[0];
        assert_eq!(row.review.status, CaptureStatus::FalsePositive);
        assert!(
            row.review.outcome.contains("in policy version 1"),
            "{:?}",
            row.review
        );
        let audit: Vec<String> = store
            .audit_for_target(&format!("incident {incident}"), 20)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.action)
            .collect();
        assert!(
            audit.iter().any(|a| a == "policy_exclusion_added"),
            "{audit:?}"
        );
        assert!(audit.iter().any(|a| a == "capture_reviewed"), "{audit:?}");

        // The page says so, offers undo and no more exclusions.
        let html = body(app.clone().oneshot(get(&page, "dsl1")).await.unwrap()).await;
        assert!(
            html.contains("in policy version 1 (was the project&#39;s default)"),
            "{html}"
        );
        assert!(
            !html.contains(&format!("id=\"exclude-{capture}-title\"")),
            "{html}"
        );
        let exclusion = store.policy_exclusions(&[capture]).await.unwrap()[0].id;
        assert!(html.contains(&format!("id=\"undo-{exclusion}\"")), "{html}");

        // Undo: the default again, as version 2.
        let undo = format!("/incidents/{incident}/exclusions/{exclusion}/undo");
        let undone = app
            .clone()
            .oneshot(post(&undo, "dsl1", "csrf=dsl1-token"))
            .await
            .unwrap();
        assert_eq!(
            undone.status(),
            StatusCode::SEE_OTHER,
            "{}",
            body(undone).await
        );
        let v2 = store.site_policy(site.id, None).await.unwrap().unwrap();
        assert_eq!((v2.version, v2.toml.as_str()), (2, ""));
        assert!(v2.comment.contains("undo of version 1"), "{}", v2.comment);
        let e = store.policy_exclusion(exclusion).await.unwrap().unwrap();
        assert_eq!(e.undone_version, Some(2));
        let html = body(app.clone().oneshot(get(&page, "dsl1")).await.unwrap()).await;
        assert!(html.contains("Undone by version 2."), "{html}");
        assert!(
            !html.contains(&format!("id=\"undo-{exclusion}\"")),
            "{html}"
        );
        // Twice: refused beside the capture.
        let again = app
            .clone()
            .oneshot(post(&undo, "dsl1", "csrf=dsl1-token"))
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::UNPROCESSABLE_ENTITY);

        // The policy page restores any version as a new one.
        let restored = app
            .clone()
            .oneshot(post(
                "/settings/policy/restore",
                "dsl1",
                "csrf=dsl1-token&site=Cabot&version=1",
            ))
            .await
            .unwrap();
        assert_eq!(restored.status(), StatusCode::SEE_OTHER);
        let v3 = store.site_policy(site.id, None).await.unwrap().unwrap();
        assert_eq!((v3.version, &v3.toml), (3, &v1.toml));
        assert_eq!(v3.comment, "restored version 1");
    }
}
