//! Agent configuration: a TOML file (default `/etc/hallmonitor/agent.toml`,
//! documented by `agent.example.toml`, which a test loads) overlaid by
//! `HALLMONITOR_*` environment variables. MDM tools deliver files; scripts
//! and tests find variables easier.

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/hallmonitor/agent.toml";
pub const EXAMPLE: &str = include_str!("../agent.example.toml");
pub const DEFAULT_ENROLL_PORT: u16 = 50052;

#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    pub collector: HostPort,
    pub enroll_address: HostPort,
    pub ca_fingerprint: CaFingerprint,
    pub site: String,
    pub enrollment_secret: String,
    pub enrollment_secret_file: String,
    pub data_dir: PathBuf,
    pub heartbeat_interval_secs: NonZeroU32,
    pub facts_interval_secs: NonZeroU32,
    pub machine_id: String,
    pub delivery: Delivery,
    pub enforcement: EnforcementConfig,
    pub sessions: SessionsConfig,
    pub mfa: MfaConfig,
    pub capture: CaptureConfig,
    pub files: FilesConfig,
    pub tamper: TamperConfig,
    /// The file this was read from (None: defaults and environment only),
    /// so the daemon can tell when it changes.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[tamper]`: signs that someone interferes with the agent.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TamperConfig {
    /// The wall clock moving this many seconds more (or less) than the
    /// time that passed is reported as a clock jump (0: never).
    pub clock_jump_secs: u32,
}

impl Default for TamperConfig {
    fn default() -> Self {
        TamperConfig {
            clock_jump_secs: 300,
        }
    }
}

/// Everything but the enrolment secret, which is never logged.
impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("collector", &self.collector)
            .field("enroll_address", &self.enroll_address)
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field("site", &self.site)
            .field(
                "enrollment_secret",
                &if self.enrollment_secret.is_empty() {
                    ""
                } else {
                    "[redacted]"
                },
            )
            .field("enrollment_secret_file", &self.enrollment_secret_file)
            .field("data_dir", &self.data_dir)
            .field("heartbeat_interval_secs", &self.heartbeat_interval_secs)
            .field("facts_interval_secs", &self.facts_interval_secs)
            .field("machine_id", &self.machine_id)
            .field("delivery", &self.delivery)
            .field("enforcement", &self.enforcement)
            .field("sessions", &self.sessions)
            .field("mfa", &self.mfa)
            .field("capture", &self.capture)
            .field("files", &self.files)
            .field("tamper", &self.tamper)
            .field("source", &self.source)
            .finish()
    }
}

/// `[files]`: the unapproved-software watcher.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// Folders watched (globs, expanded every minute).
    pub watch: Vec<String>,
    /// File name endings that count as software (besides the execute bit).
    pub extensions: Vec<String>,
    pub severity: u32,
    /// Files larger than this are alerted without a hash (not read).
    pub max_hash_bytes: u64,
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            watch: [
                "/home/*/Downloads",
                "/media/*/*",
                "/run/media/*/*",
                "/mnt/*",
            ]
            .map(String::from)
            .to_vec(),
            extensions: [
                "sh", "bash", "py", "pl", "exe", "msi", "bat", "cmd", "ps1", "vbs", "jar", "deb",
                "rpm", "appimage", "run", "bin", "apk", "dmg", "pkg",
            ]
            .map(String::from)
            .to_vec(),
            severity: 2,
            max_hash_bytes: 512 * 1024 * 1024,
        }
    }
}

/// `[capture]`: the local socket session helpers send captures to, and
/// the policy they match with.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    pub socket: PathBuf,
    /// A policy file that, while it exists and parses, replaces the site's
    /// policy on this device; followed for changes.
    pub policy_override: PathBuf,
    /// Accounts (glob patterns) whose activity counts as staff for rule
    /// scope, besides the staff accounts the collector names.
    pub staff_accounts: Vec<String>,
    /// Repeats of one rule in one window within this many seconds of a
    /// capture are counted, not captured again.
    pub repeat_window_secs: NonZeroU32,
    /// A graphical session with no session helper for this many seconds is
    /// reported to the collector as a monitoring gap (0: never).
    pub helper_grace_secs: u32,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            socket: PathBuf::from(DEFAULT_SOCKET),
            policy_override: PathBuf::from("/etc/hallmonitor/policy.local.toml"),
            repeat_window_secs: NonZeroU32::new(60).expect("not zero"),
            helper_grace_secs: 120,
            staff_accounts: Vec::new(),
        }
    }
}

/// Where the daemon listens for session helpers (the helper's default too).
pub use hallmonitor_capture_protocol::DEFAULT_SOCKET;

/// `[mfa]`: where two-step sign-ins on this device are seen.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MfaConfig {
    /// Where system two-step sign-ins are read from: the journal's
    /// root-written entries or the text logs in `auth_logs`, never both.
    pub source: MfaSourceKind,
    /// Program and leading arguments run to read the journal.
    pub journalctl: Vec<String>,
    /// Authentication logs followed when the source is the text logs
    /// (missing files are skipped). The PAM hook's own log
    /// (DATA_DIR/mfa-hook.log) is always followed, whatever the source.
    pub auth_logs: Vec<PathBuf>,
    /// Seconds between checks when file notifications are unavailable.
    pub poll_secs: NonZeroU32,
    pub patterns: Vec<MfaPattern>,
    /// Run when a staff account whose two-step sign-in on this device is
    /// stale logs in; `{account}` and `{uid}` are replaced.
    pub notify_command: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MfaSourceKind {
    /// The journal when journald runs on this device, otherwise the text
    /// logs; decided when the daemon starts.
    Auto,
    /// Only entries journald attributes to root (`_UID=0`).
    Journal,
    /// The text logs in `auth_logs` (any account can forge a line there
    /// with `logger -t`).
    Files,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MfaPattern {
    pub method: String,
    /// Syslog program names (the tag before `[pid]:`, e.g.
    /// `sshd(pam_google_authenticator)`) whose lines the pattern reads.
    pub programs: Vec<String>,
    /// A regular expression with a `user` group (and optionally `method`),
    /// matched against the whole message after `PROGRAM[PID]: `.
    pub regex: String,
}

impl Default for MfaConfig {
    fn default() -> Self {
        MfaConfig {
            source: MfaSourceKind::Auto,
            journalctl: vec!["journalctl".into()],
            auth_logs: vec!["/var/log/auth.log".into(), "/var/log/secure".into()],
            poll_secs: NonZeroU32::new(5).expect("not zero"),
            patterns: crate::authlog::default_patterns()
                .into_iter()
                .map(|p| MfaPattern {
                    method: p.method.into(),
                    programs: p.programs,
                    regex: p.regex.into(),
                })
                .collect(),
            notify_command: [
                "runuser",
                "-u",
                "{account}",
                "--",
                "env",
                "DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/{uid}/bus",
                "notify-send",
                "--app-name=Hall Monitor",
                "--urgency=critical",
                "Two-step sign-in needed",
                "School policy: staff complete two-step sign-in on every device every 45 days. Please sign in to your school account with your second factor on this device.",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

impl MfaConfig {
    /// The patterns compiled; errors name the pattern.
    pub fn compiled(&self) -> Result<Vec<crate::authlog::Pattern>, String> {
        self.patterns
            .iter()
            .enumerate()
            .map(|(n, p)| {
                let pattern = crate::authlog::Pattern::new(&p.method, &p.programs, &p.regex)
                    .map_err(|e| format!("mfa.patterns[{n}] ({}): {e}", p.method))?;
                if !pattern.regex.capture_names().any(|c| c == Some("user")) {
                    return Err(format!(
                        "mfa.patterns[{n}] ({}): the expression needs a (?P<user>...) group",
                        p.method
                    ));
                }
                if p.programs.is_empty() {
                    return Err(format!(
                        "mfa.patterns[{n}] ({}): programs is empty (name the programs whose lines count)",
                        p.method
                    ));
                }
                Ok(pattern)
            })
            .collect()
    }

    /// The hook's log is found by its name: a system log of that name
    /// would be read as if the hook had written it.
    fn check_auth_logs(&self) -> Result<(), String> {
        match self.auth_logs.iter().find(|l| {
            l.file_name()
                .is_some_and(|n| n == crate::authlog::HOOK_LOG_NAME)
        }) {
            Some(log) => Err(format!(
                "mfa.auth_logs: {} has the PAM hook's log name ({}), which is always followed from the data directory",
                log.display(),
                crate::authlog::HOOK_LOG_NAME
            )),
            None => Ok(()),
        }
    }
}

/// `[enforcement]`: how disable and enable commands are carried out.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnforcementConfig {
    pub action: EnforcementAction,
    /// Accounts never locked out (technicians' break-glass accounts).
    pub admin_accounts: Vec<String>,
    /// For `action = "command"`: program and arguments run to disable and
    /// to enable the device.
    pub disable_command: Vec<String>,
    pub enable_command: Vec<String>,
    /// For `action = "builtin"`: program and arguments run with a session
    /// id appended, for each session of a non-administrator account.
    pub lock_session_command: Vec<String>,
    /// Program and arguments run with a logind session id appended to end
    /// the session of a user who declined the acceptable-use policy when
    /// the site's policy says `decline = "log_out"`.
    pub end_session_command: Vec<String>,
    /// File that marks the device disabled for the login hook
    /// (`hallmonitor-agent login-allowed`); empty means DATA_DIR/disabled.
    pub disabled_marker: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnforcementAction {
    Builtin,
    Command,
}

impl Default for EnforcementConfig {
    fn default() -> Self {
        EnforcementConfig {
            action: EnforcementAction::Builtin,
            admin_accounts: vec!["root".into()],
            disable_command: Vec::new(),
            enable_command: Vec::new(),
            lock_session_command: vec!["loginctl".into(), "lock-session".into()],
            end_session_command: vec!["loginctl".into(), "terminate-session".into()],
            disabled_marker: String::new(),
        }
    }
}

impl EnforcementConfig {
    pub fn marker_path(&self, data_dir: &Path) -> PathBuf {
        if self.disabled_marker.is_empty() {
            data_dir.join("disabled")
        } else {
            PathBuf::from(&self.disabled_marker)
        }
    }
}

/// `[sessions]`: where login sessions are read from.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    pub source: SessionSourceKind,
    pub utmp_path: PathBuf,
    pub poll_secs: NonZeroU32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionSourceKind {
    /// systemd-logind when it is running, otherwise utmp.
    Auto,
    Logind,
    Utmp,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            source: SessionSourceKind::Auto,
            utmp_path: PathBuf::from("/run/utmp"),
            poll_secs: NonZeroU32::new(10).expect("not zero"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Delivery {
    pub batch_max_events: NonZeroUsize,
    pub batch_linger_ms: u64,
    pub reconnect_initial_ms: u64,
    pub reconnect_max_secs: u64,
    pub outbox_max_bytes: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            collector: HostPort::default(),
            enroll_address: HostPort::default(),
            ca_fingerprint: CaFingerprint::default(),
            site: String::new(),
            enrollment_secret: String::new(),
            enrollment_secret_file: String::new(),
            data_dir: PathBuf::from("/var/lib/hallmonitor-agent"),
            heartbeat_interval_secs: NonZeroU32::new(60).expect("not zero"),
            facts_interval_secs: NonZeroU32::new(300).expect("not zero"),
            machine_id: String::new(),
            delivery: Delivery::default(),
            enforcement: EnforcementConfig::default(),
            sessions: SessionsConfig::default(),
            mfa: MfaConfig::default(),
            capture: CaptureConfig::default(),
            files: FilesConfig::default(),
            tamper: TamperConfig::default(),
            source: None,
        }
    }
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            batch_max_events: NonZeroUsize::new(500).expect("not zero"),
            batch_linger_ms: 200,
            reconnect_initial_ms: 1000,
            reconnect_max_secs: 300,
            outbox_max_bytes: crate::outbox::DEFAULT_MAX_BYTES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// Environment variables, as (name, value) pairs, so tests pass their own.
pub type Env = Vec<(String, String)>;

pub fn process_env() -> Env {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("HALLMONITOR_"))
        .collect()
}

impl AgentConfig {
    /// Loads the file (`explicit` must exist; the default path may be
    /// absent when the environment carries the settings), then applies the
    /// environment and checks the result.
    pub fn load(explicit: Option<&Path>, env: &Env) -> Result<Self, ConfigError> {
        let path = explicit
            .map(Path::to_path_buf)
            .unwrap_or_else(|| DEFAULT_PATH.into());
        let mut config = match std::fs::read_to_string(&path) {
            Ok(text) => AgentConfig {
                source: Some(path.clone()),
                ..Self::parse(&text, &path)?
            },
            Err(e) if explicit.is_none() && e.kind() == std::io::ErrorKind::NotFound => {
                AgentConfig::default()
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        config.apply_env(env)?;
        config.validate(&path)?;
        Ok(config)
    }

    /// The file alone, for the login hook: parsed, but neither overlaid by
    /// the environment (PAM hooks run in an environment other accounts may
    /// set) nor checked for what only the daemon needs, so the data
    /// directory, marker and administrators are known even when, say, the
    /// collector is not set. The default path may be absent (defaults).
    pub fn load_for_login(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let path = explicit
            .map(Path::to_path_buf)
            .unwrap_or_else(|| DEFAULT_PATH.into());
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path),
            Err(e) if explicit.is_none() && e.kind() == std::io::ErrorKind::NotFound => {
                Ok(AgentConfig::default())
            }
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// Parses TOML; errors name the file, line and column.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        for (key, value) in env {
            let number = |v: &str| {
                v.parse::<NonZeroU32>().map_err(|_| ConfigError::Invalid {
                    origin: format!("environment variable {key}"),
                    message: format!("'{v}' is not a whole number of at least 1"),
                })
            };
            fn checked<T>(key: &str, parsed: Result<T, String>) -> Result<T, ConfigError> {
                parsed.map_err(|message| ConfigError::Invalid {
                    origin: format!("environment variable {key}"),
                    message,
                })
            }
            match key.as_str() {
                "HALLMONITOR_COLLECTOR" => self.collector = checked(key, value.parse())?,
                "HALLMONITOR_ENROLL_ADDRESS" => self.enroll_address = checked(key, value.parse())?,
                "HALLMONITOR_CA_FINGERPRINT" => self.ca_fingerprint = checked(key, value.parse())?,
                "HALLMONITOR_SITE" => self.site = value.clone(),
                "HALLMONITOR_ENROLLMENT_SECRET" => self.enrollment_secret = value.clone(),
                "HALLMONITOR_ENROLLMENT_SECRET_FILE" => self.enrollment_secret_file = value.clone(),
                "HALLMONITOR_DATA_DIR" => self.data_dir = value.into(),
                "HALLMONITOR_HEARTBEAT_SECS" => self.heartbeat_interval_secs = number(value)?,
                "HALLMONITOR_MACHINE_ID" => self.machine_id = value.clone(),
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks what the daemon needs; errors name `path` and the key.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            origin: path.display().to_string(),
            message,
        };
        if self.collector.is_empty() {
            return Err(invalid(
                "collector is not set (host:port of the collector, or HALLMONITOR_COLLECTOR)"
                    .into(),
            ));
        }
        if self.delivery.outbox_max_bytes < 64 * 1024 {
            return Err(invalid(
                "delivery.outbox_max_bytes must be at least 65536".into(),
            ));
        }
        if self.enforcement.action == EnforcementAction::Command
            && (self.enforcement.disable_command.is_empty()
                || self.enforcement.enable_command.is_empty())
        {
            return Err(invalid(
                "enforcement: action = \"command\" needs disable_command and enable_command".into(),
            ));
        }
        self.mfa.compiled().map_err(invalid)?;
        self.mfa.check_auth_logs().map_err(invalid)?;
        if self.mfa.source != MfaSourceKind::Files && self.mfa.journalctl.is_empty() {
            return Err(invalid(
                "mfa.journalctl is empty (the program that reads the journal, e.g. [\"journalctl\"])"
                    .into(),
            ));
        }
        if !(1..=5).contains(&self.files.severity) {
            return Err(invalid("files.severity must be 1 to 5".into()));
        }
        Ok(())
    }

    /// The enrolment address: configured, or the collector host on 50052.
    pub fn enroll_address(&self) -> String {
        if !self.enroll_address.is_empty() {
            return self.enroll_address.to_string();
        }
        match split_host_port(self.collector.as_str()) {
            Ok((host, _)) if host.contains(':') => format!("[{host}]:{DEFAULT_ENROLL_PORT}"),
            Ok((host, _)) => format!("{host}:{DEFAULT_ENROLL_PORT}"),
            Err(_) => self.collector.to_string(),
        }
    }

    /// The enrolment secret from the config, the environment or its file.
    pub fn enrollment_secret(&self) -> Result<String, ConfigError> {
        if !self.enrollment_secret.trim().is_empty() {
            return Ok(self.enrollment_secret.trim().to_owned());
        }
        if self.enrollment_secret_file.is_empty() {
            return Ok(String::new());
        }
        let path = PathBuf::from(&self.enrollment_secret_file);
        let text =
            std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path, source })?;
        Ok(text.lines().next().unwrap_or("").trim().to_owned())
    }

    pub fn ca_fingerprint(&self) -> String {
        self.ca_fingerprint.as_str().to_owned()
    }
}

/// `host:port` (an IPv6 address as `[addr]:port`), checked when the file
/// or variable is read, so a bad one is refused with its line; empty when
/// not set (the daemon then refuses to start, the login hook does not
/// need it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HostPort(String);

impl HostPort {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HostPort {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        if !text.is_empty() {
            split_host_port(&text)?;
        }
        Ok(HostPort(text))
    }
}

impl std::str::FromStr for HostPort {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        HostPort::try_from(text.to_owned())
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The SHA-256 fingerprint of the collector's CA certificate, as 64
/// lower-case hexadecimal digits (written as other tools print it too:
/// `AB:CD:…`); empty when not set (enrolment then refuses to trust).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct CaFingerprint(String);

impl CaFingerprint {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CaFingerprint {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let hex = normalise_fingerprint(&text);
        if !hex.is_empty() && (hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit())) {
            return Err("ca_fingerprint: expected 64 hexadecimal digits (SHA-256)".into());
        }
        Ok(CaFingerprint(hex))
    }
}

impl std::str::FromStr for CaFingerprint {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        CaFingerprint::try_from(text.to_owned())
    }
}

/// Accepts `AB:CD:…` and upper case as printed by other tools.
fn normalise_fingerprint(s: &str) -> String {
    s.chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Splits `host:port` (IPv6 as `[addr]:port`).
pub fn split_host_port(address: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, port) = rest
            .split_once("]:")
            .ok_or("IPv6 addresses are written [addr]:port")?;
        (host, port)
    } else {
        address
            .rsplit_once(':')
            .ok_or(format!("'{address}' is not host:port"))?
    };
    if host.is_empty() {
        return Err(format!("'{address}' has no host"));
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("'{port}' is not a port number"))?;
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_output_never_shows_the_enrolment_secret() {
        let config = AgentConfig {
            enrollment_secret: "hm-sekrit-value".into(),
            ..AgentConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("sekrit"), "{shown}");
        assert!(shown.contains("[redacted]"));
    }

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn example_parses_to_the_defaults_apart_from_the_collector() {
        let parsed = AgentConfig::parse(EXAMPLE, Path::new("agent.example.toml")).unwrap();
        let expected = AgentConfig {
            collector: "hallmonitor.example.sch.uk:50051".parse().unwrap(),
            ..AgentConfig::default()
        };
        assert_eq!(parsed, expected);
        parsed.validate(Path::new("agent.example.toml")).unwrap();
    }

    #[test]
    fn environment_wins_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "collector = \"a:1\"\nheartbeat_interval_secs = 30\n").unwrap();
        let config = AgentConfig::load(
            Some(&path),
            &env(&[
                ("HALLMONITOR_COLLECTOR", "b:2"),
                ("HALLMONITOR_HEARTBEAT_SECS", "5"),
            ]),
        )
        .unwrap();
        assert_eq!(config.collector.as_str(), "b:2");
        assert_eq!(config.heartbeat_interval_secs.get(), 5);
    }

    #[test]
    fn corrupt_file_error_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "collector = \"a:1\"\n\nheartbeat_interval_secs = \"often\"\n",
        )
        .unwrap();
        let err = AgentConfig::load(Some(&path), &Env::new())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn invalid_values_are_named() {
        let cases = [
            ("no collector", "", "collector is not set"),
            ("no port", "collector = \"host\"", "'host' is not host:port"),
            (
                "short pin",
                "collector = \"h:1\"\nca_fingerprint = \"abc\"",
                "ca_fingerprint",
            ),
            (
                "unknown key",
                "collector = \"h:1\"\ncolector = 2",
                "unknown field",
            ),
            (
                "a pattern for any program",
                "collector = \"h:1\"\n[[mfa.patterns]]\nmethod = \"x\"\nregex = '(?P<user>\\S+)'",
                "missing field `programs`",
            ),
            (
                "an unknown two-step source",
                "collector = \"h:1\"\n[mfa]\nsource = \"syslog\"",
                "unknown variant `syslog`",
            ),
            (
                "no program to read the journal",
                "collector = \"h:1\"\n[mfa]\njournalctl = []",
                "mfa.journalctl",
            ),
            (
                "a system log named like the hook's",
                "collector = \"h:1\"\n[mfa]\nauth_logs = [\"/var/log/mfa-hook.log\"]",
                "mfa.auth_logs",
            ),
        ];
        for (name, text, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("agent.toml");
            std::fs::write(&path, text).unwrap();
            let err = AgentConfig::load(Some(&path), &Env::new())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{name}: {err}");
        }
        let err = AgentConfig::load(
            None,
            &env(&[
                ("HALLMONITOR_COLLECTOR", "h:1"),
                ("HALLMONITOR_HEARTBEAT_SECS", "x"),
            ]),
        );
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("HALLMONITOR_HEARTBEAT_SECS")
        );
    }

    #[test]
    fn enroll_address_defaults_to_collector_host() {
        let mut config = AgentConfig {
            collector: "hm.school:50051".parse().unwrap(),
            ..AgentConfig::default()
        };
        assert_eq!(config.enroll_address(), "hm.school:50052");
        config.collector = "[::1]:7000".parse().unwrap();
        assert_eq!(config.enroll_address(), "[::1]:50052");
        config.enroll_address = "other:9".parse().unwrap();
        assert_eq!(config.enroll_address(), "other:9");
    }

    #[test]
    fn fingerprint_accepts_colons_and_case() {
        let printed = "AB:CD:".repeat(16);
        let config = AgentConfig {
            ca_fingerprint: printed.trim_end_matches(':').parse().unwrap(),
            ..AgentConfig::default()
        };
        assert_eq!(config.ca_fingerprint(), "abcd".repeat(16));
        assert!("abc".parse::<CaFingerprint>().is_err());
        assert!("host".parse::<HostPort>().is_err());
        assert!("".parse::<HostPort>().unwrap().is_empty());
    }

    /// `key = value` lines from the keys the file has, with values that are
    /// sometimes right, so generated files get past the TOML parser.
    fn config_lines() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::string::string_regex(
            "(collector = \"[a-z0-9.:\\[\\]]{0,12}\"\n|enroll_address = \"[a-z0-9:\\[\\]]{0,8}\"\n|ca_fingerprint = \"[0-9a-fA-F: ]{0,70}\"\n|(heartbeat_interval_secs|facts_interval_secs) = -?[0-9]{1,11}\n|\\[(delivery|enforcement|sessions|mfa|capture|files)\\]\n|(batch_max_events|outbox_max_bytes|poll_secs|severity|repeat_window_secs) = -?[0-9]{1,21}\n|action = \"(builtin|command|x)\"\n|source = \"(auto|journal|files|x)\"\n|journalctl = \\[(\"journalctl\")?\\]\n|auth_logs = \\[\"[a-z/.-]{0,16}\"\\]\n|\\[\\[mfa.patterns\\]\\]\nmethod = \"m\"\nprograms = \\[(\"sshd\")?\\]\nregex = '[^'\\n]{0,12}'\n|\\PC{0,8}\n){0,10}",
        )
        .expect("a valid expression")
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(256))]

        /// Any text is a configuration or an error naming the file; a
        /// parsed one is valid or refused naming the file, and then gives
        /// its addresses without panicking.
        #[test]
        fn any_text_loads_or_is_refused_with_the_file(
            text in proptest::prop_oneof![proptest::arbitrary::any::<String>(), config_lines()],
        ) {
            let path = Path::new("/etc/hallmonitor/agent.toml");
            match AgentConfig::parse(&text, path).and_then(|c| c.validate(path).map(|()| c)) {
                Ok(config) => {
                    let _ = config.enroll_address();
                    proptest::prop_assert!(config.ca_fingerprint().len() == 64 || config.ca_fingerprint().is_empty());
                }
                Err(e) => proptest::prop_assert!(e.to_string().starts_with("/etc/hallmonitor/agent.toml: "), "{}", e),
            }
        }

        /// Any address splits or is refused; a host and port written out
        /// split back into themselves.
        #[test]
        fn host_and_port_split_back(
            address in proptest::arbitrary::any::<String>(),
            host in "[a-z0-9.-]{1,20}|[0-9a-f:]{2,20}",
            port in proptest::arbitrary::any::<u16>(),
        ) {
            let _ = split_host_port(&address);
            let written = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
            proptest::prop_assert_eq!(split_host_port(&written), Ok((host, port)));
        }
    }
}
