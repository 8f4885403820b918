//! `doctor`: checks what a technician would check by hand when a device
//! is silent (configuration, identity, collector and its CA pin, outbox,
//! socket folder, PAM hook, session helpers, clock) and says what to fix.
//!
//! Each check is its own function returning a `Finding`, so one failure
//! never hides another; checks that need the configuration are skipped
//! when it does not load. Nothing here changes the device, and no finding
//! carries a secret (the enrolment secret and the key are never read into
//! a detail). The JSON document is `hallmonitor.doctor.v1`.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Serialize;
use tokio::net::TcpStream;

use crate::config::{AgentConfig, Env, split_host_port};
use crate::enroll::{Identity, identity_dir};
use crate::outbox::Outbox;
use crate::state::State;
use crate::status::{self, Status};
use crate::tls::{self, sha256_hex};

/// How long each network step may take.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(5);
/// A certificate expiring sooner than this is a warning.
const EXPIRY_WARNING_DAYS: i64 = 14;
/// An unsent event older than this is a warning.
const OLDEST_UNSENT_WARNING_SECS: i64 = 24 * 3600;
/// The line a PAM file holds when the login hook is installed.
const PAM_HOOK: &str = "hallmonitor-agent login-allowed";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Warn,
    Fail,
}

impl Outcome {
    fn text(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Warn => "warn",
            Outcome::Fail => "FAIL",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub outcome: Outcome,
    pub detail: String,
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: &'static str, detail: impl Into<String>) -> Finding {
        Finding {
            check,
            outcome: Outcome::Ok,
            detail: detail.into(),
            fix: None,
        }
    }
    fn warn(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check,
            outcome: Outcome::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
    fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check,
            outcome: Outcome::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// The `hallmonitor.doctor.v1` document.
#[derive(Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub findings: Vec<Finding>,
    pub worst: Outcome,
}

impl Report {
    fn new(findings: Vec<Finding>) -> Report {
        let worst = findings
            .iter()
            .map(|f| f.outcome)
            .max()
            .unwrap_or(Outcome::Ok);
        Report {
            schema: "hallmonitor.doctor.v1",
            findings,
            worst,
        }
    }

    /// 0 all ok, 1 any warning, 2 any failure.
    pub fn exit_code(&self) -> u8 {
        match self.worst {
            Outcome::Ok => 0,
            Outcome::Warn => 1,
            Outcome::Fail => 2,
        }
    }
}

/// Runs every check. `config_path` and `env` as for `run`.
pub async fn run(config_path: Option<&Path>, env: &Env, now: Timestamp) -> Report {
    let mut findings = Vec::new();
    let config = match AgentConfig::load(config_path, env) {
        Ok(config) => {
            findings.push(Finding::ok("configuration", "loads and is valid"));
            Some(config)
        }
        Err(e) => {
            findings.push(Finding::fail(
                "configuration",
                e.to_string(),
                "correct the file (see /usr/share/doc/hallmonitor-agent/examples/agent.toml)",
            ));
            None
        }
    };
    if let Some(config) = &config {
        let identity = Identity::load(&config.data_dir);
        findings.push(identity_check(config, &identity, now));
        let identity = identity.ok().flatten();
        findings.push(collector_check(config, identity.as_ref()).await);
        let status = status::read(config, now).await;
        findings.extend(outbox_checks(&status));
        findings.push(socket_dir_check(&config.capture.socket));
        findings.push(helpers_check(config, status.as_ref().ok()).await);
        findings.push(clock_check(status.as_ref().ok()));
    }
    findings.push(pam_check(Path::new("/etc/pam.d")));
    Report::new(findings)
}

pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    for f in &report.findings {
        out.push_str(&format!(
            "{:<5} {:<15} {}\n",
            f.outcome.text(),
            f.check,
            f.detail
        ));
        if let Some(fix) = &f.fix {
            out.push_str(&format!("      {:<15} fix: {fix}\n", ""));
        }
    }
    out
}

const ENROLL_FIX: &str =
    "hallmonitor-agent enroll --force (with the site's enrolment secret in the configuration)";

fn identity_check(
    config: &AgentConfig,
    identity: &Result<Option<Identity>, crate::enroll::EnrollError>,
    now: Timestamp,
) -> Finding {
    const CHECK: &str = "identity";
    let identity = match identity {
        Ok(Some(identity)) => identity,
        Ok(None) => {
            return Finding::fail(
                CHECK,
                "not enrolled",
                "hallmonitor-agent enroll (or start the daemon, which enrols)",
            );
        }
        Err(e) => return Finding::fail(CHECK, e.to_string(), ENROLL_FIX),
    };
    let dir = identity_dir(&config.data_dir);
    for name in ["device.key", "device.crt", "ca.crt"] {
        let path = dir.join(name);
        match std::fs::metadata(&path) {
            Ok(meta) if !private_mode(meta.mode()) => {
                return Finding::fail(
                    CHECK,
                    format!(
                        "{} has mode {:o}: others may read it",
                        path.display(),
                        meta.mode() & 0o7777
                    ),
                    format!("chmod 600 {}", path.display()),
                );
            }
            Ok(_) => {}
            Err(e) => return Finding::fail(CHECK, format!("{}: {e}", path.display()), ENROLL_FIX),
        }
    }
    let certificate = match DeviceCertificate::parse(&identity.cert_pem) {
        Ok(c) => c,
        Err(why) => {
            return Finding::fail(CHECK, format!("device.crt: {why}"), ENROLL_FIX);
        }
    };
    if certificate.common_name != identity.device_id {
        return Finding::fail(
            CHECK,
            format!(
                "device.crt is issued for {}, not this device ({})",
                certificate.common_name, identity.device_id
            ),
            ENROLL_FIX,
        );
    }
    let (outcome, detail) = validity(certificate.not_before, certificate.not_after, now);
    let detail = format!(
        "device {} (site {}): {detail}",
        identity.device_id, identity.site
    );
    match outcome {
        Outcome::Ok => Finding::ok(CHECK, detail),
        Outcome::Warn => Finding::warn(CHECK, detail, ENROLL_FIX),
        Outcome::Fail => Finding::fail(
            CHECK,
            detail,
            format!("check the device's date and time; if it is right, {ENROLL_FIX}"),
        ),
    }
}

/// Private to its owner: no bits for group or others.
fn private_mode(mode: u32) -> bool {
    mode & 0o077 == 0
}

struct DeviceCertificate {
    common_name: String,
    not_before: Timestamp,
    not_after: Timestamp,
}

impl DeviceCertificate {
    fn parse(pem: &str) -> Result<DeviceCertificate, String> {
        let der = CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .ok_or("no certificate")?
            .map_err(|e| e.to_string())?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| format!("unreadable certificate: {e}"))?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or("")
            .to_owned();
        let at = |t: x509_parser::time::ASN1Time| {
            Timestamp::from_second(t.timestamp()).map_err(|e| e.to_string())
        };
        Ok(DeviceCertificate {
            common_name,
            not_before: at(cert.validity().not_before)?,
            not_after: at(cert.validity().not_after)?,
        })
    }
}

/// Whether a certificate valid from `not_before` to `not_after` is good
/// `now`: a failure outside that period, a warning within
/// `EXPIRY_WARNING_DAYS` of its end.
fn validity(not_before: Timestamp, not_after: Timestamp, now: Timestamp) -> (Outcome, String) {
    if now < not_before {
        return (
            Outcome::Fail,
            format!("certificate not valid until {not_before} (this device's clock says {now})"),
        );
    }
    if now >= not_after {
        return (Outcome::Fail, format!("certificate expired at {not_after}"));
    }
    let days_left = now.duration_until(not_after).as_secs() / 86_400;
    if days_left < EXPIRY_WARNING_DAYS {
        return (
            Outcome::Warn,
            format!("certificate expires at {not_after} (in {days_left} day(s))"),
        );
    }
    (Outcome::Ok, format!("certificate valid until {not_after}"))
}

/// TCP, then the TLS handshake the stream makes (the device's identity,
/// trusting the CA it enrolled with), then the pin: the collector's chain
/// must hold the CA whose fingerprint the configuration names.
async fn collector_check(config: &AgentConfig, identity: Option<&Identity>) -> Finding {
    const CHECK: &str = "collector";
    let address = config.collector.as_str().to_owned();
    let fingerprint = config.ca_fingerprint().to_ascii_lowercase();
    let tcp = match tokio::time::timeout(NETWORK_TIMEOUT, TcpStream::connect(&address)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return connect_failure(&address, &e),
        Err(_) => {
            return Finding::fail(
                CHECK,
                format!(
                    "{address} unreachable: no answer within {} s",
                    NETWORK_TIMEOUT.as_secs()
                ),
                "check the network and any firewall between this device and the collector",
            );
        }
    };
    let tls_config = match identity {
        Some(identity) => {
            match tls::mutual_tls_config(&identity.ca_pem, &identity.cert_pem, &identity.key_pem) {
                Ok(c) => c,
                Err(e) => return Finding::fail(CHECK, e.to_string(), ENROLL_FIX),
            }
        }
        // Not enrolled: the pinned verifier enrolment uses.
        None => tls::pinned_ca_config(&fingerprint),
    };
    let host = split_host_port(&address).map(|(host, _)| host);
    let server_name = match host.map(|h| ServerName::try_from(h).map_err(|e| e.to_string())) {
        Ok(Ok(name)) => name,
        Ok(Err(e)) | Err(e) => {
            return Finding::fail(CHECK, format!("collector {address}: {e}"), "set collector");
        }
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config));
    let stream =
        match tokio::time::timeout(NETWORK_TIMEOUT, connector.connect(server_name, tcp)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return handshake_failure(&address, &e.to_string()),
            Err(_) => {
                return Finding::fail(
                    CHECK,
                    format!(
                        "{address}: no TLS handshake within {} s",
                        NETWORK_TIMEOUT.as_secs()
                    ),
                    "check that collector names the collector's telemetry port",
                );
            }
        };
    let chain: Vec<String> = stream
        .get_ref()
        .1
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|c| sha256_hex(c.as_ref()))
        .collect();
    let enrolled_ca = identity.and_then(|i| {
        CertificateDer::pem_slice_iter(i.ca_pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .map(|c| sha256_hex(c.as_ref()))
    });
    if !chain.contains(&fingerprint) && enrolled_ca.as_ref() != Some(&fingerprint) {
        return Finding::fail(
            CHECK,
            format!(
                "{address}: TLS pin mismatch: the collector's CA is not ca_fingerprint {fingerprint}"
            ),
            "set ca_fingerprint to the fingerprint `hallmonitor-collector init` printed (and check that collector names your school's collector)",
        );
    }
    if enrolled_ca.as_ref().is_some_and(|ca| *ca != fingerprint) {
        return Finding::fail(
            CHECK,
            format!(
                "{address}: TLS pin mismatch: this device enrolled with CA {}, not ca_fingerprint {fingerprint}",
                enrolled_ca.unwrap_or_default()
            ),
            format!(
                "set ca_fingerprint to the fingerprint `hallmonitor-collector init` printed; if it is right, {ENROLL_FIX}"
            ),
        );
    }
    Finding::ok(
        CHECK,
        format!("{address} reachable, TLS handshake with this device's identity, CA pinned"),
    )
}

fn connect_failure(address: &str, error: &std::io::Error) -> Finding {
    const CHECK: &str = "collector";
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => Finding::fail(
            CHECK,
            format!("{address} refused the connection: nothing listens there"),
            "check that the collector is running and that collector names its telemetry port",
        ),
        _ => Finding::fail(
            CHECK,
            format!("{address} unreachable: {error}"),
            "check the collector's name, this device's network and any firewall",
        ),
    }
}

fn handshake_failure(address: &str, error: &str) -> Finding {
    const CHECK: &str = "collector";
    let clock = ["NotValidYet", "Expired", "not valid yet", "expired"]
        .iter()
        .any(|w| error.contains(w));
    if clock {
        return Finding::fail(
            CHECK,
            format!("{address}: certificates outside their validity: {error}"),
            "check the device's date and time",
        );
    }
    if error.contains("ca_fingerprint") || error.contains("UnknownIssuer") {
        return Finding::fail(
            CHECK,
            format!(
                "{address}: TLS pin mismatch: the collector's certificate is not from the pinned CA ({error})"
            ),
            format!(
                "check ca_fingerprint and collector; if the collector was set up again, {ENROLL_FIX}"
            ),
        );
    }
    Finding::fail(
        CHECK,
        format!("{address}: TLS handshake failed: {error}"),
        "check that collector names the collector's telemetry port",
    )
}

fn outbox_checks(status: &anyhow::Result<Status>) -> Vec<Finding> {
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            return vec![Finding::fail(
                "outbox",
                format!("{e:#}"),
                "see the daemon's log (journalctl -u hallmonitor-agent)",
            )];
        }
    };
    vec![daemon_finding(status), outbox_finding(status)]
}

fn daemon_finding(status: &Status) -> Finding {
    const CHECK: &str = "daemon";
    match (status.daemon_running, status.daemon_pid) {
        (true, Some(pid)) => Finding::ok(
            CHECK,
            format!("running (pid {pid}), connection {}", status.connection),
        ),
        _ => Finding::warn(
            CHECK,
            "not running: nothing is recorded or sent",
            "systemctl enable --now hallmonitor-agent",
        ),
    }
}

fn outbox_finding(status: &Status) -> Finding {
    const CHECK: &str = "outbox";
    if let Some(why) = &status.outbox_unavailable {
        return Finding::fail(
            CHECK,
            format!("unavailable: {}", why.trim()),
            "free disk space in the data directory; see the daemon's log",
        );
    }
    if let Some(secs) = status.outbox_writes_failing_secs {
        return Finding::fail(
            CHECK,
            format!("writes failing for {secs} s: nothing new is queued"),
            "free disk space in the data directory",
        );
    }
    let evicted: u64 = status.evicted.values().sum();
    let mut detail = format!(
        "{} event(s) queued, {} byte(s)",
        status.queue_depth, status.outbox_bytes
    );
    if let Some(age) = status.oldest_unsent_age_secs {
        detail.push_str(&format!(", oldest unsent {age} s ago"));
    }
    if evicted > 0 {
        detail.push_str(&format!(", {evicted} evicted when full"));
    }
    if status
        .oldest_unsent_age_secs
        .is_some_and(|age| age > OLDEST_UNSENT_WARNING_SECS)
    {
        return Finding::warn(
            CHECK,
            detail,
            "events have waited over a day: see the collector check above",
        );
    }
    if evicted > 0 {
        return Finding::warn(
            CHECK,
            detail,
            "the outbox filled while offline: keep the device connected (or raise outbox_max_bytes)",
        );
    }
    Finding::ok(CHECK, detail)
}

fn socket_dir_check(socket: &Path) -> Finding {
    const CHECK: &str = "socket folder";
    let folder = socket
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    match crate::socket_dir::check_socket_dir(socket) {
        Ok(()) => Finding::ok(
            CHECK,
            format!("{folder}: owned by root or the daemon, not writable by others"),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Finding::warn(
            CHECK,
            format!("{folder} does not exist: session helpers cannot reach the daemon"),
            "start the daemon (it creates the folder)",
        ),
        Err(e) => Finding::fail(
            CHECK,
            e.to_string(),
            format!("chown root:root {folder} && chmod 755 {folder}"),
        ),
    }
}

/// The daemon keeps no list of connected helpers on disk, but it keeps the
/// monitoring gaps it opened: a graphical session without its helper past
/// the grace.
async fn helpers_check(config: &AgentConfig, status: Option<&Status>) -> Finding {
    const CHECK: &str = "session helpers";
    if !status.is_some_and(|s| s.daemon_running) {
        return Finding::ok(CHECK, "unknown: the daemon is not running");
    }
    let Ok(outbox) = Outbox::open_read_only(&config.data_dir).await else {
        return Finding::ok(CHECK, "unknown: the outbox cannot be read");
    };
    let book = State::new(&outbox).gap_book().await;
    outbox.close().await;
    let open = match book {
        Ok(book) => book.or_default().open_gaps(),
        Err(_) => return Finding::ok(CHECK, "unknown: the gap book cannot be read"),
    };
    if open == 0 {
        return Finding::ok(CHECK, "every graphical session has its helper");
    }
    Finding::warn(
        CHECK,
        format!("{open} graphical session(s) without a session helper (monitoring gap open)"),
        "check that hallmonitor-session starts at log-on (/etc/xdg/autostart/hallmonitor-session.desktop)",
    )
}

fn clock_check(status: Option<&Status>) -> Finding {
    const CHECK: &str = "clock";
    match status {
        Some(s) if s.daemon_running && s.connection == "clock_wrong" => Finding::fail(
            CHECK,
            s.last_error
                .clone()
                .unwrap_or_else(|| "outside the validity of the collector's certificates".into()),
            "set the date and time (timedatectl set-ntp true)",
        ),
        _ => Finding::ok(
            CHECK,
            "skew unknown: the collector's clock is not recorded (the daemon has not reported a clock outside the certificates' validity)",
        ),
    }
}

/// Whether a file in `pam_dir` calls the login hook.
fn pam_check(pam_dir: &Path) -> Finding {
    const CHECK: &str = "PAM hook";
    let installed = std::fs::read_dir(pam_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .any(|text| calls_login_hook(&text));
    if installed {
        Finding::ok(CHECK, format!("{} calls {PAM_HOOK}", pam_dir.display()))
    } else {
        Finding::warn(
            CHECK,
            format!(
                "no file in {} calls {PAM_HOOK}: disabling this device will not block logins",
                pam_dir.display()
            ),
            "pam-auth-update --enable hallmonitor",
        )
    }
}

fn calls_login_hook(text: &str) -> bool {
    text.lines()
        .map(str::trim_start)
        .filter(|line| !line.starts_with('#'))
        .any(|line| line.contains(PAM_HOOK))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn certificate_validity_boundaries() {
        let (from, until) = (at("2026-01-01T00:00:00Z"), at("2027-01-01T00:00:00Z"));
        let cases = [
            ("before validity", "2025-12-31T23:59:59Z", Outcome::Fail),
            ("first second", "2026-01-01T00:00:00Z", Outcome::Ok),
            ("15 days left", "2026-12-17T00:00:00Z", Outcome::Ok),
            ("exactly 14 days left", "2026-12-18T00:00:00Z", Outcome::Ok),
            (
                "a second under 14 days",
                "2026-12-18T00:00:01Z",
                Outcome::Warn,
            ),
            ("last second", "2026-12-31T23:59:59Z", Outcome::Warn),
            ("expired", "2027-01-01T00:00:00Z", Outcome::Fail),
        ];
        for (name, now, want) in cases {
            assert_eq!(validity(from, until, at(now)).0, want, "{name}");
        }
    }

    #[test]
    fn private_modes() {
        let cases = [
            (0o600, true),
            (0o400, true),
            (0o700, true),
            (0o640, false),
            (0o604, false),
            (0o644, false),
            (0o100600, true),
        ];
        for (mode, want) in cases {
            assert_eq!(private_mode(mode), want, "{mode:o}");
        }
    }

    #[test]
    fn pam_hook_lines() {
        let cases = [
            (
                "account required pam_exec.so quiet /usr/bin/hallmonitor-agent login-allowed",
                true,
            ),
            (
                "# account required pam_exec.so /usr/bin/hallmonitor-agent login-allowed",
                false,
            ),
            (
                "auth optional pam_exec.so /usr/bin/hallmonitor-agent mfa-hook --method pam_u2f",
                false,
            ),
            ("", false),
        ];
        for (text, want) in cases {
            assert_eq!(calls_login_hook(text), want, "{text}");
        }
    }

    #[test]
    fn pam_check_reads_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("common-auth"),
            "auth required pam_unix.so\n",
        )
        .unwrap();
        assert_eq!(pam_check(dir.path()).outcome, Outcome::Warn);
        assert_eq!(
            pam_check(dir.path()).fix.as_deref(),
            Some("pam-auth-update --enable hallmonitor")
        );
        std::fs::write(
            dir.path().join("common-account"),
            "account [success=ok default=bad] pam_exec.so quiet /usr/bin/hallmonitor-agent login-allowed\n",
        )
        .unwrap();
        assert_eq!(pam_check(dir.path()).outcome, Outcome::Ok);
    }

    #[test]
    fn connection_errors_are_named() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(connect_failure("c:1", &refused).detail.contains("refused"));
        let other = std::io::Error::other("no route to host");
        assert!(
            connect_failure("c:1", &other)
                .detail
                .contains("unreachable")
        );
        let cases = [
            ("invalid peer certificate: UnknownIssuer", "pin mismatch"),
            (
                "the collector's CA does not match ca_fingerprint: refusing to enrol",
                "pin mismatch",
            ),
            ("invalid peer certificate: Expired", "validity"),
            ("received fatal alert: HandshakeFailure", "handshake failed"),
        ];
        for (error, named) in cases {
            let finding = handshake_failure("c:1", error);
            assert!(
                finding.detail.contains(named),
                "{error}: {}",
                finding.detail
            );
        }
    }

    #[test]
    fn socket_folder_modes() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("run");
        let socket = folder.join("agent.sock");
        assert_eq!(socket_dir_check(&socket).outcome, Outcome::Warn, "missing");
        std::fs::create_dir(&folder).unwrap();
        use std::os::unix::fs::PermissionsExt;
        for (mode, want) in [
            (0o755, Outcome::Ok),
            (0o775, Outcome::Fail),
            (0o777, Outcome::Fail),
        ] {
            std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(socket_dir_check(&socket).outcome, want, "{mode:o}");
        }
    }

    /// An identity folder as enrolment leaves it, with a certificate for
    /// `common_name` valid for `days` from now.
    fn identity_files(data_dir: &Path, common_name: &str, days: i64) {
        use rcgen::{CertificateParams, DnType, KeyPair};
        use std::os::unix::fs::PermissionsExt;
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let now = time::OffsetDateTime::now_utc();
        (params.not_before, params.not_after) = (
            now - time::Duration::days(1),
            now + time::Duration::days(days),
        );
        let cert = params.self_signed(&key).unwrap();
        let dir = identity_dir(data_dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in [
            ("device.key", key.serialize_pem()),
            ("device.crt", cert.pem()),
            ("ca.crt", cert.pem()),
            (
                "device.toml",
                "device_id = \"dev-1\"\nsite = \"Cabot\"\n".into(),
            ),
        ] {
            std::fs::write(dir.join(name), text).unwrap();
            std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o600))
                .unwrap();
        }
    }

    #[test]
    fn identity_findings() {
        let cases = [
            ("valid", "dev-1", 365, None, Outcome::Ok, "valid until"),
            ("expiring", "dev-1", 3, None, Outcome::Warn, "expires"),
            (
                "another device's",
                "dev-2",
                365,
                None,
                Outcome::Fail,
                "issued for dev-2",
            ),
            (
                "key readable by others",
                "dev-1",
                365,
                Some(0o644),
                Outcome::Fail,
                "mode 644",
            ),
        ];
        for (name, common_name, days, key_mode, want, says) in cases {
            let dir = tempfile::tempdir().unwrap();
            identity_files(dir.path(), common_name, days);
            if let Some(mode) = key_mode {
                use std::os::unix::fs::PermissionsExt;
                let key = identity_dir(dir.path()).join("device.key");
                std::fs::set_permissions(key, std::fs::Permissions::from_mode(mode)).unwrap();
            }
            let config = AgentConfig {
                data_dir: dir.path().to_path_buf(),
                ..AgentConfig::default()
            };
            let finding = identity_check(&config, &Identity::load(dir.path()), Timestamp::now());
            assert_eq!(finding.outcome, want, "{name}: {}", finding.detail);
            assert!(finding.detail.contains(says), "{name}: {}", finding.detail);
            assert!(!finding.detail.contains("PRIVATE KEY"), "{name}");
        }
        let empty = tempfile::tempdir().unwrap();
        let config = AgentConfig {
            data_dir: empty.path().to_path_buf(),
            ..AgentConfig::default()
        };
        let finding = identity_check(&config, &Identity::load(empty.path()), Timestamp::now());
        assert_eq!(
            (finding.outcome, finding.detail.as_str()),
            (Outcome::Fail, "not enrolled")
        );
    }

    async fn empty_status() -> Status {
        let dir = tempfile::tempdir().unwrap();
        let config = AgentConfig {
            data_dir: dir.path().to_path_buf(),
            ..AgentConfig::default()
        };
        status::read(&config, Timestamp::now()).await.unwrap()
    }

    #[tokio::test]
    async fn outbox_findings() {
        let base = empty_status().await;
        assert_eq!(outbox_finding(&base).outcome, Outcome::Ok);
        let mut old = empty_status().await;
        old.oldest_unsent_age_secs = Some(OLDEST_UNSENT_WARNING_SECS + 1);
        assert_eq!(outbox_finding(&old).outcome, Outcome::Warn);
        let mut day = empty_status().await;
        day.oldest_unsent_age_secs = Some(OLDEST_UNSENT_WARNING_SECS);
        assert_eq!(outbox_finding(&day).outcome, Outcome::Ok);
        let mut evicted = empty_status().await;
        evicted.evicted.insert("telemetry".into(), 3);
        assert_eq!(outbox_finding(&evicted).outcome, Outcome::Warn);
        let mut failing = empty_status().await;
        failing.outbox_writes_failing_secs = Some(60);
        assert_eq!(outbox_finding(&failing).outcome, Outcome::Fail);
        let mut unavailable = empty_status().await;
        unavailable.outbox_unavailable = Some("disk full".into());
        assert_eq!(outbox_finding(&unavailable).outcome, Outcome::Fail);
        assert_eq!(daemon_finding(&base).outcome, Outcome::Warn);
    }

    #[test]
    fn worst_and_exit_code() {
        let report = Report::new(vec![Finding::ok("a", "x")]);
        assert_eq!((report.worst, report.exit_code()), (Outcome::Ok, 0));
        let report = Report::new(vec![Finding::ok("a", "x"), Finding::warn("b", "y", "z")]);
        assert_eq!((report.worst, report.exit_code()), (Outcome::Warn, 1));
        let report = Report::new(vec![
            Finding::fail("a", "x", "z"),
            Finding::warn("b", "y", "z"),
        ]);
        assert_eq!((report.worst, report.exit_code()), (Outcome::Fail, 2));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["schema"], "hallmonitor.doctor.v1");
        assert_eq!(json["worst"], "fail");
        assert_eq!(json["findings"][1]["outcome"], "warn");
    }
}
