//! The two-step sign-in page: staff accounts × devices with status and
//! expiry, and imports of sign-in logs and the directory through the page
//! (the same parsing and validation as the CLI; errors name the line and
//! column; nothing is stored from a file with an error).

use askama::Template;
use axum::extract::{Multipart, Query, State};
use axum::response::Response;
use jiff::Timestamp;
use serde::Deserialize;

use super::access::{Allowed, DevicesP, check_csrf};
use super::pages::{local_opt, visible_sites};
use super::{Console, Frame, Problem, page, with_form_error};
use crate::model::Site;
use crate::signins::SigninFormat;
use crate::store::DeviceFilter;

/// Largest file accepted through the page.
pub const UPLOAD_LIMIT: usize = 20 * 1024 * 1024;

#[derive(Template)]
#[template(path = "mfa.html")]
struct MfaPage {
    frame: Frame,
    sites: Vec<String>,
    status: String,
    rows: Vec<(String, String, String, String, String, String)>,
    result: Vec<String>,
    unmapped: Vec<(u64, String, String)>,
    error: String,
}

#[derive(Deserialize)]
pub struct MfaQuery {
    #[serde(default)]
    status: String,
}

async fn render(
    console: &Console,
    viewer: &super::access::Viewer,
    status: &str,
    result: Vec<String>,
    unmapped: Vec<(u64, String, String)>,
    error: String,
) -> Result<Response, Problem> {
    let sites: Vec<Site> = visible_sites(console, viewer).await?;
    use crate::rules::mfa::MfaStatus;
    let wanted = [MfaStatus::Fresh, MfaStatus::DueSoon, MfaStatus::Stale]
        .into_iter()
        .find(|s| s.as_str() == status);
    let mut rows = Vec::new();
    for site in &sites {
        let filter = DeviceFilter {
            site: Some(site.id),
            ..DeviceFilter::default()
        };
        for p in console.store.mfa_pairs(&filter, wanted).await? {
            rows.push((
                p.account,
                p.hostname,
                site.name.clone(),
                p.status.as_str().replace('_', " "),
                local_opt(p.last_mfa, &site.timezone),
                local_opt(p.expires_at, &site.timezone),
            ));
        }
    }
    let response = page(&MfaPage {
        frame: Frame::new(viewer, "Two-step sign-in", "/mfa"),
        sites: sites.into_iter().map(|s| s.name).collect(),
        status: status.to_owned(),
        rows,
        result,
        unmapped,
        error: error.clone(),
    });
    Ok(with_form_error(response, &error))
}

pub async fn page_handler(
    State(console): State<Console>,
    Allowed(viewer, _): Allowed<DevicesP>,
    Query(q): Query<MfaQuery>,
) -> Result<Response, Problem> {
    render(
        &console,
        &viewer,
        &q.status,
        Vec::new(),
        Vec::new(),
        String::new(),
    )
    .await
}

/// One uploaded import: site, kind and file, read whole.
struct Upload {
    csrf: String,
    site: String,
    kind: String,
    name: String,
    bytes: Vec<u8>,
}

async fn read_upload(mut multipart: Multipart) -> Result<Upload, String> {
    let mut upload = Upload {
        csrf: String::new(),
        site: String::new(),
        kind: String::new(),
        name: String::new(),
        bytes: Vec::new(),
    };
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| format!("The upload could not be read: {e}"))?
    {
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" {
            upload.name = field
                .file_name()
                .unwrap_or("upload")
                .chars()
                .take(200)
                .collect();
            upload.bytes = field
                .bytes()
                .await
                .map_err(|e| format!("The file could not be read (at most 20 MiB): {e}"))?
                .to_vec();
        } else {
            let value = field
                .text()
                .await
                .map_err(|e| format!("The form could not be read: {e}"))?;
            match name.as_str() {
                "csrf" => upload.csrf = value,
                "site" => upload.site = value,
                "kind" => upload.kind = value,
                _ => {}
            }
        }
    }
    Ok(upload)
}

pub async fn import(
    State(console): State<Console>,
    Allowed(viewer, _): Allowed<DevicesP>,
    multipart: Multipart,
) -> Result<Response, Response> {
    use axum::response::IntoResponse;
    let upload = match read_upload(multipart).await {
        Ok(upload) => upload,
        Err(message) => return Err(Problem::BadRequest(message).into_response()),
    };
    check_csrf(&console, &viewer, &upload.csrf, "/mfa/import")
        .await
        .map_err(IntoResponse::into_response)?;
    let fail = |message: String| {
        let console = console.clone();
        let viewer = viewer.clone();
        async move {
            render(&console, &viewer, "", Vec::new(), Vec::new(), message)
                .await
                .unwrap_or_else(IntoResponse::into_response)
        }
    };
    let site = match console.store.site_by_name(&upload.site).await {
        Ok(Some(site)) if viewer.sees(site.id) => site,
        Ok(_) => {
            return Ok(fail(format!("Choose one of your sites (not '{}').", upload.site)).await);
        }
        Err(e) => return Err(Problem::from(e).into_response()),
    };
    if upload.bytes.is_empty() {
        return Ok(fail("Choose a file to import.".into()).await);
    }
    let now = Timestamp::now();
    let result = if upload.kind == "directory" {
        let accounts = match crate::directory::parse_directory(&upload.bytes, &upload.name) {
            Ok(accounts) => accounts,
            Err(e) => return Ok(fail(e.to_string()).await),
        };
        let summary = console
            .store
            .import_directory(site.id, &accounts, now)
            .await
            .map_err(|e| Problem::from(e).into_response())?;
        let _ = console
            .audit(
                &viewer,
                Some(site.id),
                "directory_imported",
                &format!("site {}", site.name),
                &format!("{} accounts from {}", accounts.len(), upload.name),
            )
            .await;
        (
            vec![format!(
                "Directory of {}: {} accounts; {} added, {} updated, {} removed, {} unchanged.",
                site.name,
                accounts.len(),
                summary.added,
                summary.updated,
                summary.removed,
                summary.unchanged
            )],
            Vec::new(),
        )
    } else {
        let format = match upload.kind.as_str() {
            "entra-csv" => SigninFormat::EntraCsv,
            "entra-json" => SigninFormat::EntraJson,
            "google-csv" => SigninFormat::GoogleCsv,
            _ => return Ok(fail("Choose what kind of file this is.".into()).await),
        };
        let rows = match crate::signins::parse(format, &upload.bytes, &upload.name, now) {
            Ok(rows) => rows,
            Err(e) => return Ok(fail(e.to_string()).await),
        };
        let report = crate::signins::import(
            &*console.store,
            &console.config,
            &site,
            rows,
            format.source(),
            now,
        )
        .await
        .map_err(|e| Problem::from(e).into_response())?;
        let _ = console
            .audit(
                &viewer,
                Some(site.id),
                "signins_imported",
                &format!("site {}", site.name),
                &format!(
                    "{} rows from {}, {} new",
                    report.rows, upload.name, report.new
                ),
            )
            .await;
        (
            vec![format!(
                "{}: {} rows; {} not successful, {} without a second factor, {} matched a device, {} new.",
                upload.name,
                report.rows,
                report.not_successful,
                report.not_multi_factor,
                report.mapped,
                report.new
            )],
            report.unmapped,
        )
    };
    render(&console, &viewer, "", result.0, result.1, String::new())
        .await
        .map_err(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use jiff::Timestamp;
    use tower::ServiceExt;

    use crate::console::access::COOKIE;
    use crate::console::test_support::{body, get, session};
    use crate::model::ConsoleRole;
    use crate::store::MfaStore;
    use crate::store::sqlite::testing::store_with_device;

    fn upload(who: &str, csrf: &str, csv: &str) -> Request<Body> {
        let boundary = "hm-test-boundary";
        let mut form = String::new();
        for (name, value) in [("csrf", csrf), ("site", "Cabot"), ("kind", "directory")] {
            form.push_str(&format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            ));
        }
        form.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"mis.csv\"\r\nContent-Type: text/csv\r\n\r\n{csv}\r\n--{boundary}--\r\n"
        ));
        Request::post("/mfa/import")
            .header(header::COOKIE, format!("{COOKIE}={who}-token"))
            .header(
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(Body::from(form))
            .unwrap()
    }

    #[tokio::test]
    async fn a_directory_with_groups_is_imported_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let (store, site, _) = store_with_device(dir.path(), Timestamp::now()).await;
        session(&store, "tech1", ConsoleRole::Technician, site.id).await;
        session(&store, "gov1", ConsoleRole::Governor, site.id).await;
        let store = Arc::new(store);
        let app = crate::api::router(store.clone(), Arc::new(Default::default()), None);
        let good = "username,role,groups\npupil1,pupil,Year 7; SEN\n";

        let forged = app
            .clone()
            .oneshot(upload("tech1", "x", good))
            .await
            .unwrap();
        assert_eq!(forged.status(), StatusCode::FORBIDDEN);
        let governor = app
            .clone()
            .oneshot(upload("gov1", "gov1-token", good))
            .await
            .unwrap();
        assert_eq!(governor.status(), StatusCode::FORBIDDEN);
        assert!(store.directory(site.id).await.unwrap().is_empty());

        let page = body(
            app.clone()
                .oneshot(upload("tech1", "tech1-token", good))
                .await
                .unwrap(),
        )
        .await;
        assert!(
            page.contains("Directory of Cabot: 1 accounts; 1 added"),
            "{page}"
        );
        let stored = store.directory(site.id).await.unwrap();
        assert_eq!(stored[0].groups, ["sen", "year-7"]);

        let bad = "username,role,groups\npupil1,pupil,Year 9\npupil2,pupil,Year<8>\n";
        let page = body(
            app.clone()
                .oneshot(upload("tech1", "tech1-token", bad))
                .await
                .unwrap(),
        )
        .await;
        assert!(
            page.contains("mis.csv: line 3, column 3 (groups): group"),
            "{page}"
        );
        assert_eq!(
            store.directory(site.id).await.unwrap()[0].groups,
            ["sen", "year-7"],
            "nothing half-imported"
        );
        let listed = body(app.oneshot(get("/mfa", "tech1")).await.unwrap()).await;
        assert!(
            listed.contains("groups"),
            "the import form names the column: {listed}"
        );
    }
}
