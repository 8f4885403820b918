//! The HTTPS server: the web console (`console`, for people) and the JSON
//! API for other systems, authenticated by per-site tokens
//! (`hallmonitor-collector api-token create`; sent as `Authorization:
//! Bearer TOKEN`). It serves with the collector's server certificate, so
//! clients trust the collector's CA (`DATA/pki/ca.crt`).
//!
//! - `POST /api/v1/mfa-completions`: two-step sign-ins from identity
//!   providers or scripts, for the 2FA-freshness rule. A request is
//!   checked whole before anything is stored (a completion time ahead of
//!   the collector's clock beyond the rule's skew refuses it); a repeated
//!   id adds nothing.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::json;

use crate::config::CollectorConfig;
use crate::rules::mfa::check_completion_time;
use crate::signins::SignIn;
use crate::store::{AuditEntry, Store};

#[derive(Clone)]
struct Api {
    store: Arc<dyn Store>,
    config: Arc<CollectorConfig>,
}

/// The JSON API and the web console (`console`), with the security
/// headers on every response. `evidence` is where snapshots are read
/// from (None: the console shows none).
pub fn router(
    store: Arc<dyn Store>,
    config: Arc<CollectorConfig>,
    evidence: Option<Arc<crate::evidence::EvidenceStore>>,
) -> Router {
    let console = crate::console::router(crate::console::Console {
        store: store.clone(),
        config: config.clone(),
        evidence,
        throttle_audits: Default::default(),
    });
    Router::new()
        .route("/api/v1/mfa-completions", post(mfa_completions))
        .with_state(Api { store, config })
        .merge(console)
        .layer(axum::middleware::from_fn(crate::console::security_headers))
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

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompletionsRequest {
    completions: Vec<CompletionIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompletionIn {
    /// The sender's id for the sign-in; repeats are ignored.
    #[serde(default)]
    id: String,
    /// Username or email.
    account: String,
    /// RFC 3339 with an offset.
    completed_at: String,
    #[serde(default)]
    method: String,
    /// Hall Monitor's device id, machine id or serial number …
    #[serde(default)]
    device_id: String,
    /// … or the device's hostname.
    #[serde(default)]
    hostname: String,
}

async fn mfa_completions(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    let now = Timestamp::now();
    let Some(token) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing Authorization: Bearer TOKEN",
        );
    };
    let token = match api
        .store
        .use_api_token(&crate::auth::secret_digest(token), now)
        .await
    {
        Ok(Some(token)) => token,
        Ok(None) => return error(StatusCode::UNAUTHORIZED, "unknown or revoked token"),
        Err(e) => {
            tracing::error!(error = %e, "API: store unavailable");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage unavailable; retry later",
            );
        }
    };
    let request: CompletionsRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let mut rows = Vec::with_capacity(request.completions.len());
    for (n, c) in request.completions.into_iter().enumerate() {
        let Ok(at) = c.completed_at.parse::<Timestamp>() else {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "completions[{n}].completed_at: '{}' is not RFC 3339 with an offset",
                    c.completed_at
                ),
            );
        };
        if let Err(future) = check_completion_time(at, now) {
            return error(
                StatusCode::BAD_REQUEST,
                format!("completions[{n}].completed_at: {future}"),
            );
        }
        if c.account.trim().is_empty() {
            return error(
                StatusCode::BAD_REQUEST,
                format!("completions[{n}].account is empty"),
            );
        }
        let id = if c.id.is_empty() {
            format!("{}|{}|{}", c.account.to_lowercase(), at, c.method)
        } else {
            c.id
        };
        rows.push(SignIn {
            external_id: format!("site{}:{id}", token.site_id.0),
            at,
            account: c.account.trim().to_lowercase(),
            succeeded: true,
            multi_factor: true,
            method: c.method,
            device_id: c.device_id,
            device_name: c.hostname,
            line: n as u64,
        });
    }
    let received = rows.len();
    let site = match api.store.site_by_name(&token.site).await {
        Ok(Some(site)) => site,
        _ => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage unavailable; retry later",
            );
        }
    };
    let report =
        match crate::signins::import(&*api.store, &api.config, &site, rows, "api", now).await {
            Ok(report) => report,
            Err(e) => {
                tracing::error!(error = %e, "API: storing completions failed");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage unavailable; retry later",
                );
            }
        };
    let _ = api
        .store
        .append_audit(AuditEntry {
            at: now,
            actor: &format!("api-token:{}", token.id),
            action: "mfa_completions_posted",
            target: &format!("site {}", site.name),
            detail: &format!("{received} received, {} new", report.new),
            address: "",
        })
        .await;
    let unmapped: Vec<_> = report
        .unmapped
        .iter()
        .map(|(index, account, device)| json!({ "index": index, "account": account, "device": device }))
        .collect();
    axum::Json(json!({
        "schema": "hallmonitor.mfa_import.v1",
        "received": received,
        "new": report.new,
        "mapped": report.mapped,
        "unmapped": unmapped,
    }))
    .into_response()
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
