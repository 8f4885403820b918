//! Webhooks: a JSON POST signed with HMAC-SHA256
//! (`X-Hallmonitor-Signature: sha256=HEX` over the exact body, keyed by the
//! recipient's secret). Formats: `json` (our payload), `teams` and `slack`
//! (`{"text": …}`, which both incoming-webhook kinds accept).

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Request, Uri};
use http_body_util::Full;
use hyper::body::Bytes;
use tokio::net::TcpStream;

use crate::store::Notification;

pub fn body(message: &Notification) -> String {
    match message.webhook_format.as_str() {
        "teams" | "slack" => {
            serde_json::json!({ "text": format!("{}\n\n{}", message.subject, message.body) })
                .to_string()
        }
        _ => message.payload.clone(),
    }
}

pub fn signature(secret: &str, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body.as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

pub async fn post(message: &Notification) -> Result<(), String> {
    tokio::time::timeout(Duration::from_secs(30), send(message))
        .await
        .map_err(|_| "webhook: no answer within 30 s".to_string())?
}

async fn send(message: &Notification) -> Result<(), String> {
    let uri: Uri = message
        .address
        .parse()
        .map_err(|e| format!("webhook URL '{}': {e}", message.address))?;
    let host = uri.host().ok_or("webhook URL has no host")?.to_owned();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let body = body(message);
    let request = Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(
            "host",
            uri.authority().map_or(host.as_str(), |a| a.as_str()),
        )
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("hallmonitor-collector/", env!("CARGO_PKG_VERSION")),
        )
        .header(
            "x-hallmonitor-signature",
            signature(&message.webhook_secret, &body),
        )
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("webhook {host}:{port}: {e}"))?;
    let status = if https {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name =
            rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("webhook TLS: {e}"))?;
        exchange(hyper_util::rt::TokioIo::new(tls), request).await?
    } else {
        exchange(hyper_util::rt::TokioIo::new(tcp), request).await?
    };
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("webhook answered {status}"))
    }
}

async fn exchange<T>(io: T, request: Request<Full<Bytes>>) -> Result<axum::http::StatusCode, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("webhook: {e}"))?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("webhook: {e}"))?;
    Ok(response.status())
}
