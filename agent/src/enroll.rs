//! Enrolment and the device identity it produces.
//!
//! The agent generates its own key (it never leaves the device), sends a CSR
//! with the site's enrolment secret to the collector's enrolment service
//! (trusting only the CA whose fingerprint is pinned in the config), and
//! stores the key, its certificate and the CA in `DATA/identity/` with mode
//! 0600. `device.toml` is written last, by rename, so a crash mid-enrolment
//! leaves no half identity: without it the agent is simply not enrolled.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hallmonitor_proto::v1;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use serde::{Deserialize, Serialize};

use crate::config::AgentConfig;
use crate::tls::{self, TlsError, sha256_hex};

/// What enrolment gave this device.
#[derive(Clone, Debug)]
pub struct Identity {
    pub device_id: String,
    pub site: String,
    pub heartbeat_interval_secs: u32,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceFile {
    device_id: String,
    site: String,
    #[serde(default)]
    heartbeat_interval_secs: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("not configured: {0}")]
    NotConfigured(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the collector refused enrolment: {0}")]
    Refused(String),
    /// The collector is busy or limiting this address: try again later.
    #[error("the collector asks to try again later: {0}")]
    Busy(String),
    #[error("the collector's answer is unusable: {0}")]
    BadAnswer(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key generation failed: {0}")]
    Key(#[from] rcgen::Error),
}

pub fn identity_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("identity")
}

impl Identity {
    /// The stored identity, or None when the device is not enrolled.
    pub fn load(data_dir: &Path) -> Result<Option<Identity>, EnrollError> {
        let dir = identity_dir(data_dir);
        let marker = dir.join("device.toml");
        let text = match std::fs::read_to_string(&marker) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(EnrollError::Io {
                    path: marker,
                    source,
                });
            }
        };
        let file: DeviceFile = toml::from_str(&text).map_err(|e| EnrollError::Io {
            path: marker.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
        })?;
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| EnrollError::Io { path, source })
        };
        Ok(Some(Identity {
            device_id: file.device_id,
            site: file.site,
            heartbeat_interval_secs: file.heartbeat_interval_secs,
            cert_pem: read("device.crt")?,
            key_pem: read("device.key")?,
            ca_pem: read("ca.crt")?,
        }))
    }
}

/// Enrols with the collector and stores the identity.
pub async fn enroll(config: &AgentConfig, facts: v1::DeviceFacts) -> Result<Identity, EnrollError> {
    let fingerprint = config.ca_fingerprint();
    if fingerprint.is_empty() {
        return Err(EnrollError::NotConfigured(
            "ca_fingerprint is not set (the CA fingerprint `hallmonitor-collector init` printed)"
                .into(),
        ));
    }
    let secret = config
        .enrollment_secret()
        .map_err(|e| EnrollError::NotConfigured(e.to_string()))?;
    if secret.is_empty() {
        return Err(EnrollError::NotConfigured(
            "no enrolment secret (enrollment_secret, enrollment_secret_file or HALLMONITOR_ENROLLMENT_SECRET)".into(),
        ));
    }
    if facts.machine_id.is_empty() && facts.serial_number.is_empty() {
        return Err(EnrollError::NotConfigured(
            "this machine has no machine id or serial number; set machine_id in the config".into(),
        ));
    }

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, facts.hostname.as_str());
    let csr = params.serialize_request(&key)?;
    // A device that still holds its identity proves it, so it stays the
    // same device; without the proof a known machine enrols as a new
    // device pending a technician's approval.
    let (previous_certificate_der, previous_key_signature) =
        match Identity::load(&config.data_dir).ok().flatten() {
            Some(current) => reenrollment_proof(&current, csr.der()).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot prove the current identity; enrolling without proof (a technician must approve the device)");
                (Vec::new(), Vec::new())
            }),
            None => (Vec::new(), Vec::new()),
        };

    let address = config.enroll_address();
    let channel = tls::connect(
        &address,
        tls::pinned_ca_config(&fingerprint),
        Duration::from_secs(15),
    )
    .await?;
    let mut client = v1::enrollment_client::EnrollmentClient::new(channel);
    let answer = client
        .enroll(v1::EnrollRequest {
            enrollment_secret: secret,
            site: config.site.clone(),
            csr_der: csr.der().to_vec(),
            facts: Some(facts),
            previous_certificate_der,
            previous_key_signature,
        })
        .await
        .map_err(|status| {
            let text = format!("{}: {}", code_words(status.code()), status.message());
            match status.code() {
                tonic::Code::ResourceExhausted | tonic::Code::Unavailable => {
                    EnrollError::Busy(text)
                }
                _ => EnrollError::Refused(text),
            }
        })?
        .into_inner();

    // The CA we are told to trust from now on must be the one we pinned.
    let ca_der =
        rustls::pki_types::CertificateDer::pem_slice_iter(answer.ca_certificate_pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| EnrollError::BadAnswer("no CA certificate".into()))?;
    if sha256_hex(ca_der.as_ref()) != fingerprint {
        return Err(EnrollError::BadAnswer(
            "CA certificate does not match ca_fingerprint".into(),
        ));
    }
    if answer.device_id.is_empty() || answer.certificate_pem.is_empty() {
        return Err(EnrollError::BadAnswer("no device id or certificate".into()));
    }
    if answer.pending_approval {
        tracing::warn!(device_id = %answer.device_id, reason = %answer.status_reason,
            "enrolled, pending a technician's approval (devices approve / devices link on the collector); events are queued until then");
    }
    let identity = Identity {
        device_id: answer.device_id,
        site: answer.site,
        heartbeat_interval_secs: answer.heartbeat_interval_secs,
        cert_pem: answer.certificate_pem,
        key_pem: key.serialize_pem(),
        ca_pem: answer.ca_certificate_pem,
    };
    // Prove the pieces fit before keeping them.
    tls::mutual_tls_config(&identity.ca_pem, &identity.cert_pem, &identity.key_pem)?;
    store(&config.data_dir, &identity)?;
    Ok(identity)
}

use rustls::pki_types::pem::PemObject;

/// The current certificate (DER) and a signature with the current key over
/// the new CSR (see `EnrollRequest.previous_key_signature`).
fn reenrollment_proof(
    current: &Identity,
    csr_der: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), EnrollError> {
    use rcgen::SigningKey;
    let certificate =
        rustls::pki_types::CertificateDer::pem_slice_iter(current.cert_pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| {
                EnrollError::BadAnswer("the stored device certificate is unreadable".into())
            })?;
    let key = KeyPair::from_pem(&current.key_pem)?;
    let signature = key.sign(&hallmonitor_proto::reenrollment_proof_message(csr_der))?;
    Ok((certificate.to_vec(), signature))
}

fn code_words(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::InvalidArgument => "invalid request",
        tonic::Code::Unavailable => "collector unavailable",
        _ => "error",
    }
}

fn store(data_dir: &Path, identity: &Identity) -> Result<(), EnrollError> {
    let dir = identity_dir(data_dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|source| EnrollError::Io {
            path: dir.clone(),
            source,
        })?;
    // The marker goes first out of the way, so a crash between files never
    // pairs an old device id with a new key.
    let marker = dir.join("device.toml");
    match std::fs::remove_file(&marker) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(EnrollError::Io {
                path: marker,
                source: e,
            });
        }
        _ => {}
    }
    write_private(&dir.join("device.key"), identity.key_pem.as_bytes())?;
    write_private(&dir.join("device.crt"), identity.cert_pem.as_bytes())?;
    write_private(&dir.join("ca.crt"), identity.ca_pem.as_bytes())?;
    let device = toml::to_string(&DeviceFile {
        device_id: identity.device_id.clone(),
        site: identity.site.clone(),
        heartbeat_interval_secs: identity.heartbeat_interval_secs,
    })
    .expect("plain struct serialises");
    write_private(&marker, device.as_bytes())
}

/// Writes `path` with mode 0600 through a temporary file and a rename.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), EnrollError> {
    let io = |source| EnrollError::Io {
        path: path.into(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn stored_identity_loads_back_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Identity::load(dir.path()).unwrap().is_none());
        let identity = Identity {
            device_id: "dev-1".into(),
            site: "Cabot".into(),
            heartbeat_interval_secs: 60,
            cert_pem: "CERT".into(),
            key_pem: "KEY".into(),
            ca_pem: "CA".into(),
        };
        store(dir.path(), &identity).unwrap();
        let back = Identity::load(dir.path()).unwrap().unwrap();
        assert_eq!(back.device_id, "dev-1");
        assert_eq!(back.key_pem, "KEY");
        for name in ["device.key", "device.crt", "ca.crt", "device.toml"] {
            let mode = std::fs::metadata(identity_dir(dir.path()).join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }
}
