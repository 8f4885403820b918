//! Collector configuration: `DATA/collector.toml`, documented by
//! `collector.example.toml` (a test loads it, so the example cannot drift).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};

use jiff::SignedDuration;
use serde::{Deserialize, Serialize};

use crate::model::{Role, SmtpSecurity, Timing};
use crate::rules::activity::{ActivityThresholds, SessionPolicy};

pub const FILE_NAME: &str = "collector.toml";
pub const EXAMPLE: &str = include_str!("../collector.example.toml");

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    pub listen: SocketAddr,
    pub enroll_listen: SocketAddr,
    pub api_listen: SocketAddr,
    pub heartbeat_interval_secs: NonZeroU32,
    pub max_message_bytes: usize,
    pub max_batch_events: NonZeroUsize,
    pub shutdown_grace_secs: u64,
    pub evaluate_every_secs: NonZeroU64,
    /// How often freed heap memory is returned to the system, in seconds
    /// (0: never; see `memory`).
    pub release_memory_every_secs: u64,
    pub activity: ActivitySettings,
    pub mfa: MfaSettings,
    pub notifications: NotificationSettings,
    pub captures: CaptureSettings,
    pub tamper: TamperSettings,
    /// `[alerts]`: instant categories and threshold alerts (`alerts.rs`).
    pub alerts: crate::alerts::AlertSettings,
    pub sites: BTreeMap<String, SiteSettings>,
}

/// `[tamper]`: the "agent silent since" rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TamperSettings {
    /// A device that has sent nothing for this many hours while the
    /// identity provider saw sign-ins from it gets a `tamper` flag.
    pub silent_after_hours: NonZeroU32,
}

impl Default for TamperSettings {
    fn default() -> Self {
        TamperSettings {
            silent_after_hours: NonZeroU32::new(24).expect("not zero"),
        }
    }
}

impl TamperSettings {
    pub fn silent_after(&self) -> SignedDuration {
        SignedDuration::from_hours(i64::from(self.silent_after_hours.get()))
    }
}

/// `[captures]`: incidents and evidence retention.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureSettings {
    /// Captures of one category on one device by one account within this
    /// many hours of the last one join the same incident.
    pub incident_window_hours: u32,
    /// Images and capture events older than this are purged unless their
    /// incident is still open.
    pub retention_days: u32,
    /// Snapshot images one device may add to the evidence store per day
    /// (UTC), in MiB; beyond it captures are kept without their image, so
    /// one device (or a pupil forging captures) cannot fill the disk. 0:
    /// no limit.
    pub evidence_mib_per_device_per_day: u64,
}

impl Default for CaptureSettings {
    fn default() -> Self {
        CaptureSettings {
            incident_window_hours: 24,
            retention_days: 90,
            evidence_mib_per_device_per_day: 256,
        }
    }
}

/// `[notifications]`: who is told what, when and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotificationSettings {
    /// Base address of the console, for links in messages ("" for none).
    pub console_url: String,
    /// Local time (site zone) of the daily digest, HH:MM.
    pub digest_time: String,
    /// Attempts before a message is dead-lettered.
    pub max_attempts: u32,
    pub retry_initial_secs: u64,
    pub retry_max_secs: u64,
    pub smtp: SmtpSettings,
    pub routes: Vec<Route>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpSettings {
    /// Empty: no email is sent (messages wait).
    pub host: String,
    pub port: u16,
    /// starttls, tls (implicit, e.g. port 465) or none (loopback relays only).
    pub security: SmtpSecurity,
    pub username: String,
    /// File holding the password (kept out of this file).
    pub password_file: String,
    pub from: String,
    pub timeout_secs: u64,
}

impl Default for SmtpSettings {
    fn default() -> Self {
        SmtpSettings {
            host: String::new(),
            port: 587,
            security: SmtpSecurity::Starttls,
            username: String::new(),
            password_file: String::new(),
            from: "Hall Monitor <hallmonitor@localhost>".into(),
            timeout_secs: 30,
        }
    }
}

/// Which event kinds go to which roles, at once or in the daily digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub kind: String,
    pub roles: Vec<Role>,
    pub timing: Timing,
}

impl Default for NotificationSettings {
    fn default() -> Self {
        let route = |kind: &str, roles: &[Role], timing: Timing| Route {
            kind: kind.into(),
            roles: roles.to_vec(),
            timing,
        };
        NotificationSettings {
            console_url: String::new(),
            digest_time: "07:30".into(),
            max_attempts: 8,
            retry_initial_secs: 30,
            retry_max_secs: 3600,
            smtp: SmtpSettings::default(),
            routes: vec![
                route(
                    "capture_severe",
                    &[Role::HeadTeacher, Role::Dsl],
                    Timing::Immediate,
                ),
                route(
                    crate::alerts::CAPTURE_INSTANT,
                    &[Role::HeadTeacher, Role::Dsl],
                    Timing::Immediate,
                ),
                route(
                    crate::alerts::CAPTURE_THRESHOLD,
                    &[Role::Dsl],
                    Timing::Immediate,
                ),
                route("device_inactive", &[Role::Technician], Timing::Immediate),
                route("device_inactive", &[Role::HeadTeacher], Timing::Digest),
                route("mfa_stale", &[Role::Technician], Timing::Immediate),
                route("mfa_stale", &[Role::HeadTeacher], Timing::Digest),
                route("mfa_due_soon", &[Role::StaffMember], Timing::Immediate),
                route("tamper", &[Role::Technician], Timing::Immediate),
            ],
        }
    }
}

/// `[mfa]`: the 2FA-freshness rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MfaSettings {
    pub validity_days: u32,
    pub reminder_days: u32,
    /// Glob patterns of staff accounts, for accounts not in the site's
    /// imported directory.
    pub staff_accounts: Vec<String>,
    /// Agents lock the session of a staff account whose two-step sign-in
    /// on the device is stale (they always tell the user).
    pub lock_stale_sessions: bool,
}

impl Default for MfaSettings {
    fn default() -> Self {
        MfaSettings {
            validity_days: 45,
            reminder_days: 7,
            staff_accounts: Vec::new(),
            lock_stale_sessions: false,
        }
    }
}

impl MfaSettings {
    pub fn thresholds(&self) -> crate::rules::mfa::MfaThresholds {
        let day = |d: u32| SignedDuration::from_hours(i64::from(d) * 24);
        crate::rules::mfa::MfaThresholds {
            validity: day(self.validity_days),
            reminder: day(self.reminder_days),
        }
    }

    /// Validated at load, so patterns parse.
    pub fn staff_patterns(&self) -> Vec<glob::Pattern> {
        self.staff_accounts
            .iter()
            .filter_map(|p| glob::Pattern::new(p).ok())
            .collect()
    }
}

/// `[activity]`: the device-activity rule's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActivitySettings {
    pub window_days: u32,
    pub required_minutes: u32,
    pub warning_days: u32,
    pub auto_disable: bool,
    pub min_uid: u32,
    pub count_remote: bool,
    pub exclude_accounts: Vec<String>,
    pub include_accounts: Vec<String>,
}

impl Default for ActivitySettings {
    fn default() -> Self {
        ActivitySettings {
            window_days: 28,
            required_minutes: 60,
            warning_days: 7,
            auto_disable: false,
            min_uid: 1000,
            count_remote: false,
            exclude_accounts: Vec::new(),
            include_accounts: Vec::new(),
        }
    }
}

/// `[sites."NAME"]`: overrides for one site.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SiteSettings {
    pub activity: ActivityOverrides,
    pub mfa: MfaOverrides,
    pub alerts: crate::alerts::AlertOverrides,
}

/// `[sites."NAME".mfa]`: what a site may set differently.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MfaOverrides {
    pub lock_stale_sessions: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActivityOverrides {
    pub window_days: Option<u32>,
    pub required_minutes: Option<u32>,
    pub warning_days: Option<u32>,
    pub auto_disable: Option<bool>,
    pub min_uid: Option<u32>,
    pub count_remote: Option<bool>,
    pub exclude_accounts: Option<Vec<String>>,
    pub include_accounts: Option<Vec<String>>,
}

/// The device-activity rule as it applies to one site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteActivityRule {
    pub thresholds: ActivityThresholds,
    pub sessions: SessionPolicy,
    pub auto_disable: bool,
}

impl ActivitySettings {
    fn with(&self, o: &ActivityOverrides) -> ActivitySettings {
        ActivitySettings {
            window_days: o.window_days.unwrap_or(self.window_days),
            required_minutes: o.required_minutes.unwrap_or(self.required_minutes),
            warning_days: o.warning_days.unwrap_or(self.warning_days),
            auto_disable: o.auto_disable.unwrap_or(self.auto_disable),
            min_uid: o.min_uid.unwrap_or(self.min_uid),
            count_remote: o.count_remote.unwrap_or(self.count_remote),
            exclude_accounts: o
                .exclude_accounts
                .clone()
                .unwrap_or_else(|| self.exclude_accounts.clone()),
            include_accounts: o
                .include_accounts
                .clone()
                .unwrap_or_else(|| self.include_accounts.clone()),
        }
    }

    /// The rule these settings describe; errors name the key.
    fn rule(&self, key: &str) -> Result<SiteActivityRule, String> {
        if self.window_days == 0 || self.required_minutes == 0 {
            return Err(format!(
                "{key}: window_days and required_minutes must be at least 1"
            ));
        }
        if self.warning_days >= self.window_days {
            return Err(format!("{key}: warning_days must be less than window_days"));
        }
        if u64::from(self.required_minutes) > u64::from(self.window_days) * 24 * 60 {
            return Err(format!("{key}: required_minutes is longer than the window"));
        }
        let patterns = |list: &[String], name: &str| {
            list.iter()
                .map(|p| {
                    glob::Pattern::new(p).map_err(|e| format!("{key}.{name}: pattern \"{p}\": {e}"))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let day = |d: u32| SignedDuration::from_hours(i64::from(d) * 24);
        Ok(SiteActivityRule {
            thresholds: ActivityThresholds {
                window: day(self.window_days),
                required: SignedDuration::from_mins(i64::from(self.required_minutes)),
                warning: day(self.warning_days),
            },
            sessions: SessionPolicy {
                min_uid: self.min_uid,
                count_remote: self.count_remote,
                exclude_accounts: patterns(&self.exclude_accounts, "exclude_accounts")?,
                include_accounts: patterns(&self.include_accounts, "include_accounts")?,
            },
            auto_disable: self.auto_disable,
        })
    }
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            listen: "0.0.0.0:50051".parse().expect("valid literal"),
            enroll_listen: "0.0.0.0:50052".parse().expect("valid literal"),
            api_listen: "0.0.0.0:8443".parse().expect("valid literal"),
            heartbeat_interval_secs: NonZeroU32::new(60).expect("not zero"),
            max_message_bytes: 16 * 1024 * 1024,
            max_batch_events: NonZeroUsize::new(5000).expect("not zero"),
            shutdown_grace_secs: 15,
            evaluate_every_secs: NonZeroU64::new(60).expect("not zero"),
            release_memory_every_secs: 10,
            activity: ActivitySettings::default(),
            mfa: MfaSettings::default(),
            notifications: NotificationSettings::default(),
            captures: CaptureSettings::default(),
            tamper: TamperSettings::default(),
            alerts: crate::alerts::AlertSettings::default(),
            sites: BTreeMap::new(),
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
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl CollectorConfig {
    pub fn load(data: &Path) -> Result<Self, ConfigError> {
        let path = data.join(FILE_NAME);
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text, &path)
    }

    /// Parses TOML; errors name the file, line and column.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: CollectorConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |message: &str| ConfigError::Invalid {
            path: path.into(),
            message: message.into(),
        };
        if config.max_message_bytes < 64 * 1024 {
            return Err(invalid("max_message_bytes must be at least 65536"));
        }
        config.activity.rule("activity").map_err(|m| invalid(&m))?;
        if config.mfa.validity_days == 0 || config.mfa.reminder_days >= config.mfa.validity_days {
            return Err(invalid(
                "mfa: validity_days must be at least 1 and more than reminder_days",
            ));
        }
        if config.captures.incident_window_hours == 0 || config.captures.retention_days == 0 {
            return Err(invalid(
                "captures: incident_window_hours and retention_days must be at least 1",
            ));
        }
        let n = &config.notifications;
        if jiff::civil::Time::strptime("%H:%M", &n.digest_time).is_err() {
            return Err(invalid(
                "notifications.digest_time: expected HH:MM, e.g. \"07:30\"",
            ));
        }
        if n.max_attempts == 0 {
            return Err(invalid("notifications.max_attempts must be at least 1"));
        }
        for p in &config.mfa.staff_accounts {
            glob::Pattern::new(p)
                .map_err(|e| invalid(&format!("mfa.staff_accounts: pattern \"{p}\": {e}")))?;
        }
        config
            .alerts
            .check()
            .map_err(|m| invalid(&format!("alerts: {m}")))?;
        for (name, site) in &config.sites {
            crate::alerts::FileAlerts::from_config(&config)
                .for_site(name)
                .settings
                .check()
                .map_err(|m| invalid(&format!("sites.\"{name}\".alerts: {m}")))?;
            config
                .activity
                .with(&site.activity)
                .rule(&format!("sites.\"{name}\".activity"))
                .map_err(|m| invalid(&m))?;
        }
        Ok(config)
    }

    /// The device-activity rule for a site (its overrides over
    /// `[activity]`). Validated at load, so it cannot fail here.
    pub fn activity_rule(&self, site: &str) -> SiteActivityRule {
        let settings = match self.sites.get(site) {
            Some(overrides) => self.activity.with(&overrides.activity),
            None => self.activity.clone(),
        };
        settings.rule(site).unwrap_or_else(|e| {
            // Not silently: load refuses such a configuration, so this is
            // a bug if it is ever seen.
            tracing::error!(site, error = %e, "invalid activity rule; using the project's defaults");
            ActivitySettings::default()
                .rule("defaults")
                .expect("defaults are valid")
        })
    }

    /// Whether agents of this site lock sessions with stale 2FA.
    pub fn lock_stale_sessions(&self, site: &str) -> bool {
        self.sites
            .get(site)
            .and_then(|s| s.mfa.lock_stale_sessions)
            .unwrap_or(self.mfa.lock_stale_sessions)
    }

    /// The TOML `init` writes: the documented example with the addresses
    /// chosen at init substituted.
    pub fn to_file_text(&self) -> String {
        EXAMPLE
            .replace(
                "listen = \"0.0.0.0:50051\"",
                &format!("listen = \"{}\"", self.listen),
            )
            .replace(
                "enroll_listen = \"0.0.0.0:50052\"",
                &format!("enroll_listen = \"{}\"", self.enroll_listen),
            )
            .replace(
                "api_listen = \"0.0.0.0:8443\"",
                &format!("api_listen = \"{}\"", self.api_listen),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_is_the_defaults() {
        let parsed = CollectorConfig::parse(EXAMPLE, Path::new("collector.example.toml")).unwrap();
        assert_eq!(parsed, CollectorConfig::default());
    }

    #[test]
    fn written_file_round_trips() {
        let config = CollectorConfig {
            listen: "127.0.0.1:7000".parse().unwrap(),
            enroll_listen: "127.0.0.1:7001".parse().unwrap(),
            ..CollectorConfig::default()
        };
        let back = CollectorConfig::parse(&config.to_file_text(), Path::new("c.toml")).unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn errors_name_file_and_line() {
        let cases = [
            (
                "unknown key",
                "listen = \"0.0.0.0:1\"\nbogus = 1\n",
                "line 2",
            ),
            ("bad address", "\n\nlisten = \"nowhere\"\n", "line 3"),
            ("bad syntax", "listen = \n", "line 1"),
            (
                "unknown smtp security",
                "[notifications.smtp]\nsecurity = \"ssl\"\n",
                "line 2",
            ),
            (
                "unknown route role",
                "[[notifications.routes]]\nkind = \"mfa_stale\"\nroles = [\"caretaker\"]\ntiming = \"digest\"\n",
                "line 3",
            ),
            (
                "unknown route timing",
                "[[notifications.routes]]\nkind = \"mfa_stale\"\nroles = [\"dsl\"]\ntiming = \"hourly\"\n",
                "line 4, column 10",
            ),
            (
                "zero evaluation interval",
                "evaluate_every_secs = 0\n",
                "line 1",
            ),
        ];
        for (name, text, want) in cases {
            let err = CollectorConfig::parse(text, Path::new("/data/collector.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("/data/collector.toml: "), "{name}: {err}");
            assert!(err.contains(want), "{name}: {err}");
        }
    }

    #[test]
    fn site_overrides_apply_over_the_defaults() {
        let text = "[activity]\nrequired_minutes = 90\n[sites.\"Cabot\".activity]\nauto_disable = true\nexclude_accounts = [\"svc-*\"]\n";
        let config = CollectorConfig::parse(text, Path::new("c.toml")).unwrap();
        let cabot = config.activity_rule("Cabot");
        assert!(cabot.auto_disable);
        assert_eq!(cabot.thresholds.required.as_mins(), 90);
        assert_eq!(cabot.sessions.exclude_accounts.len(), 1);
        let other = config.activity_rule("Other");
        assert!(!other.auto_disable);
        assert_eq!(other.thresholds.required.as_mins(), 90);
    }

    #[test]
    fn bad_rule_settings_name_the_key() {
        let cases = [
            ("[activity]\nwarning_days = 28\n", "activity: warning_days"),
            (
                "[sites.\"Cabot\".activity]\nexclude_accounts = [\"[\"]\n",
                "sites.\"Cabot\".activity.exclude_accounts",
            ),
        ];
        for (text, want) in cases {
            let err = CollectorConfig::parse(text, Path::new("c.toml")).unwrap_err();
            assert!(err.to_string().contains(want), "{err}");
        }
    }

    #[test]
    fn zero_heartbeat_is_refused() {
        let err =
            CollectorConfig::parse("heartbeat_interval_secs = 0", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("heartbeat_interval_secs"), "{err}");
    }
}
