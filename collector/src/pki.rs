//! The collector's certificate authority: creates the CA and the server
//! certificate at `init`, and signs device certificates at enrolment.
//!
//! Files live in `DATA/pki/` with 0600 permissions for private keys. The CA
//! is the only trust anchor on both sides: agents pin it by SHA-256
//! fingerprint, and the telemetry listener accepts only client certificates
//! it signed (checked during the TLS handshake).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateSigningRequestDer, pem::PemObject};
use time::{Duration, OffsetDateTime};

use crate::model::DeviceId;

/// Device certificates are valid this long; re-enrolment issues a new one.
const DEVICE_CERT_DAYS: i64 = 5 * 365;
const CA_DAYS: i64 = 20 * 365;
const SERVER_CERT_DAYS: i64 = 5 * 365;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid PEM certificate or key: {detail}")]
    Pem { path: PathBuf, detail: String },
    #[error("certificate signing request rejected: {0}")]
    BadCsr(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Paths of the PKI files inside a data directory.
#[derive(Clone, Debug)]
pub struct PkiPaths {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl PkiPaths {
    pub fn in_data_dir(data: &Path) -> Self {
        let dir = data.join("pki");
        PkiPaths {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        }
    }
}

/// A loaded CA: its certificate and the key that signs device certificates.
pub struct CertificateAuthority {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl CertificateAuthority {
    pub fn load(paths: &PkiPaths) -> Result<Self, PkiError> {
        let cert_pem = read(&paths.ca_cert)?;
        let key_pem = read(&paths.ca_key)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Pem {
            path: paths.ca_key.clone(),
            detail: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| PkiError::Pem {
            path: paths.ca_cert.clone(),
            detail: e.to_string(),
        })?;
        let cert_der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| PkiError::Pem {
                path: paths.ca_cert.clone(),
                detail: e.to_string(),
            })?
            .to_vec();
        Ok(CertificateAuthority {
            cert_pem,
            cert_der,
            issuer,
        })
    }

    /// SHA-256 of the CA certificate (DER), hex: what agents pin.
    pub fn fingerprint(&self) -> String {
        sha256_hex(&self.cert_der)
    }

    /// Signs a device's CSR. Only the public key is taken from the request:
    /// subject, lifetime and usages are the collector's choice.
    pub fn sign_device_csr(
        &self,
        csr_der: &[u8],
        device: &DeviceId,
        site: &str,
    ) -> Result<rcgen::Certificate, PkiError> {
        let csr = CertificateSigningRequestDer::from(csr_der);
        let mut request = CertificateSigningRequestParams::from_der(&csr)
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, device.as_str());
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, site);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Hall Monitor device");
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(DEVICE_CERT_DAYS);
        params.serial_number = Some(random_serial());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        request.params = params;
        Ok(request.signed_by(&self.issuer)?)
    }
}

/// Creates the CA and a server certificate for `hostnames` (DNS names or IP
/// addresses), writing them under `DATA/pki/`. Refuses to overwrite.
pub fn create(paths: &PkiPaths, organisation: &str, hostnames: &[String]) -> Result<(), PkiError> {
    let dir = paths.ca_cert.parent().expect("pki paths have a parent");
    fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.into(),
        source,
    })?;
    let now = OffsetDateTime::now_utc();

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params.distinguished_name.push(
        DnType::CommonName,
        format!("Hall Monitor CA ({organisation})"),
    );
    ca_params
        .distinguished_name
        .push(DnType::OrganizationName, organisation);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = now - Duration::hours(1);
    ca_params.not_after = now + Duration::days(CA_DAYS);
    ca_params.serial_number = Some(random_serial());
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let server_key = KeyPair::generate()?;
    let mut server_params = CertificateParams::new(hostnames.to_vec())?;
    server_params.distinguished_name = DistinguishedName::new();
    server_params
        .distinguished_name
        .push(DnType::CommonName, hostnames[0].as_str());
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.not_before = now - Duration::hours(1);
    server_params.not_after = now + Duration::days(SERVER_CERT_DAYS);
    server_params.serial_number = Some(random_serial());
    server_params.use_authority_key_identifier_extension = true;
    let issuer = Issuer::new(ca_params, &ca_key);
    let server_cert = server_params.signed_by(&server_key, &issuer)?;

    write_new(&paths.ca_key, ca_key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&paths.ca_cert, ca_cert.pem().as_bytes(), 0o644)?;
    write_new(
        &paths.server_key,
        server_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    // The server presents its chain: leaf then CA, so agents can pin the CA.
    let chain = format!("{}{}", server_cert.pem(), ca_cert.pem());
    write_new(&paths.server_cert, chain.as_bytes(), 0o644)?;
    Ok(())
}

/// Checks an agent's proof that it holds the key of `certificate_der` (see
/// `EnrollRequest.previous_key_signature`): an ECDSA P-256 signature over
/// the re-enrolment context and the new CSR. Whether that certificate is
/// the device's current one is the caller's check (by its SHA-256).
pub fn verify_reenrollment_proof(
    certificate_der: &[u8],
    signature: &[u8],
    csr_der: &[u8],
) -> Result<(), String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(certificate_der)
        .map_err(|e| format!("previous_certificate_der: {e}"))?;
    let public_key = &certificate.public_key().subject_public_key.data;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, public_key)
        .verify(
            &hallmonitor_proto::reenrollment_proof_message(csr_der),
            signature,
        )
        .map_err(|_| "previous_key_signature does not verify with the certificate's key".to_owned())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the OS random source is available");
    bytes[0] &= 0x7f; // positive INTEGER
    SerialNumber::from_slice(&bytes)
}

pub(crate) fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.into(),
        source,
    })
}

/// Writes a file that must not exist yet, with the given mode, and syncs it.
pub(crate) fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.into(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_a_csr_with_the_device_id_as_subject() {
        let dir = tempfile::tempdir().unwrap();
        let paths = PkiPaths::in_data_dir(dir.path());
        create(
            &paths,
            "Test School",
            &["localhost".into(), "127.0.0.1".into()],
        )
        .unwrap();
        let ca = CertificateAuthority::load(&paths).unwrap();
        assert_eq!(ca.fingerprint().len(), 64);

        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "evil-admin");
        let csr = params.serialize_request(&key).unwrap();
        let device = DeviceId::from_string("dev-123");
        let cert = ca
            .sign_device_csr(csr.der(), &device, "Test School")
            .unwrap();
        let text = String::from_utf8_lossy(cert.der());
        assert!(text.contains("dev-123"), "CN is the device id");
        assert!(!text.contains("evil-admin"), "requested subject is ignored");
    }

    #[test]
    fn garbage_csr_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let paths = PkiPaths::in_data_dir(dir.path());
        create(&paths, "S", &["localhost".into()]).unwrap();
        let ca = CertificateAuthority::load(&paths).unwrap();
        let err = ca
            .sign_device_csr(b"not a csr", &DeviceId::from_string("d"), "S")
            .unwrap_err();
        assert!(matches!(err, PkiError::BadCsr(_)), "{err}");
    }

    #[test]
    fn private_keys_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let paths = PkiPaths::in_data_dir(dir.path());
        create(&paths, "S", &["localhost".into()]).unwrap();
        for key in [&paths.ca_key, &paths.server_key] {
            let mode = fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        assert!(
            create(&paths, "S", &["localhost".into()]).is_err(),
            "never overwrites"
        );
    }
}
