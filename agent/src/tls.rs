//! Client TLS for the two collector services, and the tonic channel that
//! uses it. We drive rustls ourselves (tonic only sees a ready TLS stream)
//! because enrolment needs a verifier tonic does not offer: trust the
//! collector CA whose SHA-256 fingerprint is pinned in the configuration.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use crate::config::split_host_port;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: {detail}")]
    Pem { what: &'static str, detail: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("address {0}")]
    Address(String),
    #[error("connecting to {address}: {detail}")]
    Connect {
        address: String,
        /// The whole chain of causes (tonic's own text is only "transport
        /// error").
        detail: String,
    },
    /// Certificates are valid for a period: a device whose clock is far
    /// off cannot connect, and must say so rather than "transport error".
    #[error(
        "connecting to {address}: this device's clock says {now}, outside the validity of the collector's certificates ({detail}): check the device's date and time"
    )]
    Clock {
        address: String,
        now: String,
        detail: String,
    },
}

impl TlsError {
    /// A failed connection, with every cause named and a clock that is
    /// off recognised.
    fn connect(address: &str, error: &tonic::transport::Error) -> TlsError {
        let mut detail = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            detail.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        let clock = ["NotValidYet", "Expired", "not valid yet", "expired"]
            .iter()
            .any(|word| detail.contains(word));
        if clock {
            TlsError::Clock {
                address: address.to_owned(),
                now: jiff::Timestamp::now().to_string(),
                detail,
            }
        } else {
            TlsError::Connect {
                address: address.to_owned(),
                detail,
            }
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// For enrolment: the server must present (in its chain) a CA certificate
/// with the pinned fingerprint, and its leaf must verify against that CA for
/// the host name we dialled.
pub fn pinned_ca_config(fingerprint: &str) -> ClientConfig {
    let verifier = PinnedCaVerifier {
        fingerprint: fingerprint.to_ascii_lowercase(),
        provider: provider(),
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// For telemetry: trust only the collector CA, present the device
/// certificate.
pub fn mutual_tls_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| TlsError::Pem {
            what: "collector CA certificate",
            detail: e.to_string(),
        })?;
        roots.add(cert)?;
    }
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: "device certificate",
            detail: e.to_string(),
        })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
        what: "device key",
        detail: e.to_string(),
    })?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Connects a gRPC channel to `address` (host:port) over our TLS config.
pub async fn connect(
    address: &str,
    tls: ClientConfig,
    timeout: Duration,
) -> Result<Channel, TlsError> {
    let (host, _) = split_host_port(address).map_err(TlsError::Address)?;
    let server_name =
        ServerName::try_from(host).map_err(|e| TlsError::Address(format!("{address}: {e}")))?;
    // The scheme is http because TLS is ours, below tonic.
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| TlsError::Address(format!("{address}: {e}")))?
        .connect_timeout(timeout)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let connector = TlsConnector::from(Arc::new(tls));
    let dial = address.to_owned();
    let service = tower::service_fn(move |_uri| {
        let connector = connector.clone();
        let server_name = server_name.clone();
        let dial = dial.clone();
        async move {
            let tcp = TcpStream::connect(&dial).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    endpoint
        .connect_with_connector(service)
        .await
        .map_err(|error| TlsError::connect(address, &error))
}

#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| sha256_hex(c.as_ref()) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the collector's CA does not match ca_fingerprint: refusing to enrol".into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    /// A collector whose certificates only become valid in a year: what a
    /// device whose clock is a year behind sees.
    async fn collector_valid_from_next_year() -> (String, String) {
        let now = time::OffsetDateTime::now_utc();
        let from = now + time::Duration::days(365);
        let until = now + time::Duration::days(730);
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        (ca.not_before, ca.not_after) = (from, until);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        (leaf.not_before, leaf.not_after) = (from, until);
        let leaf_cert = leaf.signed_by(&key, &Issuer::new(ca, &ca_key)).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf_cert.der().clone(), ca_cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = acceptor.accept(tcp).await;
            }
        });
        (format!("localhost:{port}"), sha256_hex(ca_cert.der()))
    }

    #[tokio::test]
    async fn a_clock_outside_the_certificates_validity_is_named() {
        let (address, fingerprint) = collector_valid_from_next_year().await;
        let error = connect(
            &address,
            pinned_ca_config(&fingerprint),
            Duration::from_secs(5),
        )
        .await
        .expect_err("certificates not valid yet");
        assert!(matches!(error, TlsError::Clock { .. }), "{error}");
        assert!(
            error
                .to_string()
                .contains("check the device's date and time")
        );
    }
}
