//! The HTTPS server: the web console (`console`, for people) and the JSON
//! API under `/api/v1` for scripts and other systems. It serves with the
//! collector's server certificate, so clients trust the collector's CA
//! (`DATA/pki/ca.crt`).
//!
//! The API is authenticated by bearer tokens that carry a console role
//! and a site or every site (`token`), so a token can read and do exactly
//! what a console account of that role can; its OpenAPI document is built
//! from the handlers themselves (`utoipa`) and served at
//! `/api/v1/openapi.json`, and a copy is kept in `docs/openapi.json`,
//! checked by a test so it cannot drift.
//!
//! - `devices`: the device list (search, filters, keyset pages), one
//!   device with its compliance, the compliance report.
//! - `flags`: the flags queue and its actions.
//! - `mfa`: 2FA pairs, and two-step sign-ins posted by identity providers.
//! - `incidents`: incidents, their captures' metadata and review, and a
//!   capture's review (dsl tokens).
//! - `notifications`: what was sent to whom, and whether it arrived.

mod devices;
mod flags;
mod incidents;
mod mfa;
mod notifications;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::CollectorConfig;
use crate::console::Console;
use crate::store::Store;

/// The JSON API and the web console (`console`), with the security
/// headers on every response. `evidence` is where snapshots are read
/// from (None: the console shows none).
pub fn router(
    store: Arc<dyn Store>,
    config: Arc<CollectorConfig>,
    evidence: Option<Arc<crate::evidence::EvidenceStore>>,
) -> Router {
    let state = Console {
        store,
        config,
        evidence,
        throttle_audits: Default::default(),
    };
    let (api, document) = api_routes().split_for_parts();
    let document = Arc::new(document);
    let api = api
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(move || {
                let document = document.clone();
                async move { axum::Json(document.as_ref().clone()) }
            }),
        )
        // Unknown API paths get a JSON 404, not the console's page.
        .route(
            "/api/{*rest}",
            axum::routing::any(|| async { ApiError::NotFound }),
        )
        .with_state(state.clone());
    Router::new()
        .merge(api)
        .merge(crate::console::router(state))
        .layer(axum::middleware::from_fn(crate::console::security_headers))
}

/// The API's OpenAPI document, as served at `/api/v1/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_routes().into_openapi()
}

/// Every API route (method, path pattern) the router serves from its
/// handlers' own descriptions (`routes!` registers exactly what the
/// document lists), plus the document itself.
pub fn routes() -> Vec<(axum::http::Method, String)> {
    use axum::http::Method;
    let mut out = vec![(Method::GET, "/api/v1/openapi.json".to_owned())];
    for (path, item) in openapi().paths.paths {
        let methods = [
            (Method::GET, &item.get),
            (Method::POST, &item.post),
            (Method::PUT, &item.put),
            (Method::PATCH, &item.patch),
            (Method::DELETE, &item.delete),
        ];
        for (method, operation) in methods {
            if operation.is_some() {
                out.push((method, path.clone()));
            }
        }
    }
    out
}

/// `openapi()` as the indented JSON kept in `docs/openapi.json`.
pub fn openapi_json() -> String {
    openapi()
        .to_pretty_json()
        .expect("an OpenAPI document serialises")
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Hall Monitor collector API",
        description = "Devices, compliance, flags, 2FA, incidents and notifications of the sites a token covers. \
            Send `Authorization: Bearer TOKEN`; a token carries a console role (admin, technician, dsl, governor) \
            and may do what a console account of that role may. Errors are `{\"error\": \"…\"}` with the HTTP status.",
        license(name = "AGPL-3.0-or-later"),
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
struct Document;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        openapi
            .components
            .get_or_insert_default()
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}

/// Every API route with its OpenAPI description.
fn api_routes() -> OpenApiRouter<Console> {
    OpenApiRouter::with_openapi(Document::openapi())
        .routes(routes!(devices::list))
        .routes(routes!(devices::one))
        .routes(routes!(devices::compliance))
        .routes(routes!(flags::list))
        .routes(routes!(flags::act))
        .routes(routes!(mfa::pairs))
        .routes(routes!(mfa::completions))
        .routes(routes!(incidents::list))
        .routes(routes!(incidents::one))
        .routes(routes!(incidents::review))
        .routes(routes!(notifications::list))
}

/// Why a request failed; the body is `{"error": "…"}`.
#[derive(Debug)]
pub enum ApiError {
    Unauthorized(&'static str),
    Forbidden,
    NotFound,
    BadRequest(String),
    /// The request was understood but the thing's state does not allow it
    /// (a flag action its state forbids).
    Conflict(String),
    Unavailable,
}

/// The body of every error response.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m.to_owned()),
            ApiError::Forbidden => (
                StatusCode::FORBIDDEN,
                "this token's role does not allow this".to_owned(),
            ),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "no such thing".to_owned()),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "storage unavailable; retry later".to_owned(),
            ),
        };
        let mut response = (status, axum::Json(ErrorBody { error: message })).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, "5".parse().expect("valid"));
        }
        response
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        tracing::error!(error = %e, "API: store unavailable");
        ApiError::Unavailable
    }
}

/// The sites a caller asked for with `?site=NAME` (one of theirs), or
/// every site they cover.
async fn chosen_sites(
    console: &Console,
    viewer: &crate::console::access::Viewer,
    site: Option<&str>,
) -> Result<Vec<crate::model::Site>, ApiError> {
    let sites = crate::console::pages::visible_sites(console, viewer)
        .await
        .map_err(|_| ApiError::Unavailable)?;
    match site {
        None | Some("") => Ok(sites),
        Some(name) => match sites.into_iter().find(|s| s.name == name) {
            Some(site) => Ok(vec![site]),
            None => Err(ApiError::NotFound),
        },
    }
}

/// Serves the API on the connections `incoming` yields (already through
/// TLS, see `listener`) until it ends. A client has `HEADER_TIMEOUT` to
/// send a request's headers.
pub async fn serve(
    mut incoming: tokio_stream::wrappers::ReceiverStream<std::io::Result<crate::listener::Limited>>,
    router: Router,
) {
    use tokio_stream::StreamExt;
    const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    while let Some(connection) = incoming.next().await {
        let Ok(tls) = connection else { continue };
        let peer = tls.peer_addr();
        let router = router.clone();
        tokio::spawn(async move {
            // Handlers learn the client's address (sign-in throttling, the
            // audit log) from this extension.
            let router = tower::ServiceExt::map_request(
                router,
                move |mut request: axum::http::Request<hyper::body::Incoming>| {
                    request
                        .extensions_mut()
                        .insert(crate::console::access::Peer(peer));
                    request
                },
            );
            let service = hyper_util::service::TowerToHyperService::new(router);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(?peer, error = %e, "API: connection ended with an error");
            }
        });
    }
}

/// The server TLS configuration from the collector's certificate and key.
pub fn tls_config(cert_pem: &str, key_pem: &str) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/openapi.json` is what scripts' authors read: it must be the
    /// document the code builds.
    #[test]
    fn the_committed_openapi_document_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
        let committed = std::fs::read_to_string(path).expect("docs/openapi.json exists");
        assert!(
            committed.trim_end() == openapi_json(),
            "docs/openapi.json is out of date; regenerate it with \
             `cargo run -p hallmonitor-collector -- openapi > docs/openapi.json` and review the diff"
        );
    }

    #[test]
    fn every_operation_is_under_v1_and_needs_a_token() {
        let document = openapi();
        assert!(document.paths.paths.len() >= 9);
        for (path, item) in &document.paths.paths {
            assert!(path.starts_with("/api/v1/"), "{path}");
            let operations = [&item.get, &item.post];
            for operation in operations.into_iter().flatten() {
                for status in ["401", "403"] {
                    assert!(
                        operation.responses.responses.contains_key(status),
                        "{path} does not document {status}"
                    );
                }
            }
        }
        let mut ids: Vec<_> = document
            .paths
            .paths
            .values()
            .flat_map(|item| [&item.get, &item.post])
            .flatten()
            .map(|operation| operation.operation_id.clone().expect("named"))
            .collect();
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count, "operation ids are unique");
        let schemes = &document
            .components
            .as_ref()
            .expect("components")
            .security_schemes;
        assert!(schemes.contains_key("bearer"));
    }
}
