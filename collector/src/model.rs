//! Domain types of the collector. Wire (prost) types are converted into these
//! at the edge (`enroll`, `ingest`), so storage, rules and the CLI never see
//! protobuf structs.

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// A device's identity, issued at enrolment and carried as the CN of its
/// client certificate. Stable across re-enrolment of the same machine.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceId(String);

impl DeviceId {
    /// A fresh random id, `dev-` followed by a UUIDv7 (time-ordered).
    pub fn generate() -> Self {
        DeviceId(format!("dev-{}", uuid::Uuid::now_v7()))
    }
    /// Wraps an id read back from storage or typed by a user.
    pub fn from_string(s: impl Into<String>) -> Self {
        DeviceId(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Per-device event sequence number: strictly increasing on the agent, never
/// reused. (device, seq) identifies an event for idempotent ingest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seq(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SiteId(pub i64);

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Site {
    pub id: SiteId,
    pub name: String,
    /// IANA zone the site's reports are shown in.
    pub timezone: String,
}

/// Whether the OS says a disk is encrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Encryption {
    #[default]
    Unknown,
    Encrypted,
    NotEncrypted,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Disk {
    pub name: String,
    pub mount_point: String,
    pub file_system: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub removable: bool,
    pub encryption: Encryption,
}

/// What the agent reports about its machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DeviceFacts {
    pub hostname: String,
    pub os_name: String,
    pub os_version: String,
    pub kernel_version: String,
    pub machine_id: String,
    pub serial_number: String,
    pub uptime_secs: u64,
    pub cpu_model: String,
    pub cpu_cores: u32,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub disks: Vec<Disk>,
    pub agent_version: String,
    pub architecture: String,
    /// Facts the collector cut at ingest (too long, or too many disks),
    /// each with its original length in characters (or disks).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub truncated: std::collections::BTreeMap<String, u64>,
}

/// One event as the collector stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub seq: Seq,
    pub event_id: String,
    pub occurred_at: Timestamp,
    pub body: EventBody,
}

/// The event kinds the collector understands. Kinds whose rules are not built
/// yet are kept verbatim (`Other`) so nothing an agent sent is lost.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventBody {
    Heartbeat {
        uptime_secs: u64,
        interval_secs: u32,
    },
    HeartbeatInterval {
        first: Timestamp,
        last: Timestamp,
        interval_secs: u32,
        count: u64,
    },
    Facts(DeviceFacts),
    OutboxReport {
        evicted_telemetry: u64,
        evicted_sessions: u64,
        evicted_mfa: u64,
        evicted_captures: u64,
        evicted_enforcement: u64,
        evicted_other: u64,
        corrupt_file_moved_to: String,
        /// Events too large to send, kept in the agent's quarantine.
        #[serde(default)]
        quarantined: u64,
        /// Helper captures the agent refused (no matching rule, or over
        /// an account's rate): a forged or flooding helper.
        #[serde(default)]
        captures_refused: u64,
    },
    /// The agent could not watch a session (a tamper signal).
    MonitoringGap(GapRecord),
    /// Something about the agent itself (started, stopped, upgraded …),
    /// some kinds signs of interference (see `tamper`).
    AgentSignal(SignalRecord),
    Session(SessionRecord),
    /// A suspicious-activity snapshot (the image itself is kept apart, in
    /// the evidence store).
    Capture(CaptureRecord),
    /// New software appeared on the device (Downloads, removable media).
    FileAlert {
        path: String,
        rule_id: String,
        category: String,
        severity: u32,
        account: String,
        sha256: String,
    },
    /// A two-step sign-in the agent saw in the device's authentication log.
    Mfa {
        account: String,
        method: String,
        /// The log file and line that matched.
        source: String,
    },
    Enforcement {
        command_id: String,
        command: CommandKind,
        ok: bool,
        detail: String,
    },
    /// A user's answer to the site's acceptable-use policy.
    AupAnswer(AupAnswerRecord),
    /// A kind this version stores but does not interpret yet (stored as its
    /// own JSON, not through this enum's tagging).
    #[serde(skip)]
    Other {
        name: String,
        json: serde_json::Value,
    },
}

impl EventBody {
    /// Whether storing this event can change a rule's verdict.
    pub fn affects_rules(&self) -> bool {
        matches!(
            self,
            EventBody::Session(_) | EventBody::Mfa { .. } | EventBody::Enforcement { .. }
        )
    }

    /// Whether storing this event can queue a notification (a severe
    /// capture, a tamper flag).
    pub fn may_notify(&self) -> bool {
        matches!(
            self,
            EventBody::Capture(_) | EventBody::AgentSignal(_) | EventBody::MonitoringGap(_)
        )
    }

    /// The short name stored in the `kind` column.
    pub fn kind(&self) -> &str {
        match self {
            EventBody::Heartbeat { .. } => "heartbeat",
            EventBody::HeartbeatInterval { .. } => "heartbeat_interval",
            EventBody::Facts(_) => "facts",
            EventBody::OutboxReport { .. } => "outbox_report",
            EventBody::MonitoringGap(_) => "monitoring_gap",
            EventBody::AgentSignal(_) => "agent_signal",
            EventBody::Session(_) => "session",
            EventBody::Capture(_) => "capture",
            EventBody::FileAlert { .. } => "file_alert",
            EventBody::Mfa { .. } => "mfa",
            EventBody::Enforcement { .. } => "enforcement",
            EventBody::AupAnswer(_) => "aup_answer",
            EventBody::Other { name, .. } => name,
        }
    }
}

/// Accept or decline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AupAnswerKind {
    Accept,
    Decline,
}

impl AupAnswerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AupAnswerKind::Accept => "accept",
            AupAnswerKind::Decline => "decline",
        }
    }

    pub fn parse(text: &str) -> Option<AupAnswerKind> {
        [AupAnswerKind::Accept, AupAnswerKind::Decline]
            .into_iter()
            .find(|k| k.as_str() == text)
    }
}

/// One answer to an acceptable-use policy as an agent reported it, every
/// string bounded at ingest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AupAnswerRecord {
    pub account: String,
    pub version: u64,
    pub answer: AupAnswerKind,
    pub answered_at: Timestamp,
    /// What the agent did about a decline ("" for an accept).
    pub outcome: String,
}

/// What `record_batch` did with a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub stored: u32,
    pub duplicates: u32,
}

/// A device as the CLI and console list it.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceRecord {
    pub id: DeviceId,
    pub site: String,
    /// The site's IANA zone, for showing local times.
    pub site_timezone: String,
    pub hostname: String,
    pub enrolled_at: Timestamp,
    pub last_seen_at: Option<Timestamp>,
    pub heartbeat_interval_secs: u32,
    /// Highest sequence number committed for this device.
    pub last_seq: u64,
    /// How many distinct events are stored for this device.
    pub events_stored: u64,
    pub facts: DeviceFacts,
    pub facts_updated_at: Timestamp,
    pub enforcement: Enforcement,
    /// The last re-enable: a new grace period starts there.
    pub reenabled_at: Option<Timestamp>,
    /// The site policy version the agent last said it holds (0 = none).
    pub policy_version: u64,
    pub status: DeviceStatus,
    /// Why it is pending or revoked (empty when active).
    pub status_reason: String,
    /// The known device whose machine id or serial number it shares.
    pub duplicate_of: Option<DeviceId>,
    /// Monitoring gaps the agent reported that are still open.
    pub open_gaps: u64,
}

/// A stretch of time an agent could not watch a session, as it reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapRecord {
    /// What kind of gap: `no_session_helper`.
    pub gap: String,
    pub session_id: String,
    pub account: String,
    pub uid: u32,
    pub started_at: Timestamp,
    /// None while open.
    pub ended_at: Option<Timestamp>,
}

/// What an agent said about itself (`AgentSignal` on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    Started,
    Stopped,
    StoppedUncleanly,
    ConfigChanged,
    Upgraded,
    ClockJumped,
    HelperGone,
}

impl SignalKind {
    pub const ALL: [SignalKind; 7] = [
        SignalKind::Started,
        SignalKind::Stopped,
        SignalKind::StoppedUncleanly,
        SignalKind::ConfigChanged,
        SignalKind::Upgraded,
        SignalKind::ClockJumped,
        SignalKind::HelperGone,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SignalKind::Started => "started",
            SignalKind::Stopped => "stopped",
            SignalKind::StoppedUncleanly => "stopped_uncleanly",
            SignalKind::ConfigChanged => "config_changed",
            SignalKind::Upgraded => "upgraded",
            SignalKind::ClockJumped => "clock_jumped",
            SignalKind::HelperGone => "helper_gone",
        }
    }

    pub fn parse(text: &str) -> Option<SignalKind> {
        SignalKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// One agent signal as stored: every string bounded at ingest. Fields a
/// kind does not use are empty (or zero).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalRecord {
    pub signal: SignalKind,
    pub agent_version: String,
    /// UPGRADED: the version of the previous run.
    #[serde(default)]
    pub previous_agent_version: String,
    /// STOPPED_UNCLEANLY: when the previous run was last known alive.
    #[serde(default)]
    pub last_alive_at: Option<Timestamp>,
    /// STOPPED_UNCLEANLY: the machine kept running meanwhile.
    #[serde(default)]
    pub same_boot: bool,
    /// CLOCK_JUMPED: seconds the wall clock moved beyond the time that
    /// passed (negative: backwards).
    #[serde(default)]
    pub clock_jump_secs: i64,
    /// CONFIG_CHANGED: SHA-256 (hex) as last read and as it is now.
    #[serde(default)]
    pub previous_config_sha256: String,
    #[serde(default)]
    pub config_sha256: String,
    /// HELPER_GONE: the session and its account.
    #[serde(default)]
    pub session_id: String,
    #[serde(default)]
    pub account: String,
    #[serde(default)]
    pub uid: u32,
    /// Free text for a technician (CONFIG_CHANGED: the file's path).
    #[serde(default)]
    pub detail: String,
}

impl SignalRecord {
    /// A signal of `signal` with every other field empty.
    pub fn new(signal: SignalKind) -> SignalRecord {
        SignalRecord {
            signal,
            agent_version: String::new(),
            previous_agent_version: String::new(),
            last_alive_at: None,
            same_boot: false,
            clock_jump_secs: 0,
            previous_config_sha256: String::new(),
            config_sha256: String::new(),
            session_id: String::new(),
            account: String::new(),
            uid: 0,
            detail: String::new(),
        }
    }
}

/// A stored signal with the event that carried it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoredSignal {
    pub seq: u64,
    pub occurred_at: Timestamp,
    #[serde(flatten)]
    pub record: SignalRecord,
}

/// Online means a message arrived within three heartbeat intervals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Connectivity {
    Online,
    Offline,
}

impl DeviceRecord {
    pub fn connectivity(&self, now: Timestamp) -> Connectivity {
        let Some(last_seen) = self.last_seen_at else {
            return Connectivity::Offline;
        };
        let limit =
            jiff::SignedDuration::from_secs(3 * i64::from(self.heartbeat_interval_secs.max(1)));
        if now.duration_since(last_seen) <= limit {
            Connectivity::Online
        } else {
            Connectivity::Offline
        }
    }

    /// Sequence numbers at or below `last_seq` that the collector does not
    /// hold: events the agent evicted or that are still in flight.
    pub fn sequence_gap(&self) -> u64 {
        self.last_seq.saturating_sub(self.events_stored)
    }
}

/// What a device's agent reported losing or repairing in its outbox.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OutboxHealth {
    /// Events evicted because the outbox was full, per class.
    pub evicted: std::collections::BTreeMap<String, u64>,
    /// How many times the agent found its outbox corrupt and replaced it.
    pub corrupt_replacements: u64,
    pub last_report_at: Option<Timestamp>,
    /// Events the agent could never send, kept in its quarantine.
    pub quarantined: u64,
    /// Session-helper captures the agent refused.
    pub captures_refused: u64,
    /// Monitoring gaps: the open ones, then the latest closed ones.
    pub monitoring_gaps: Vec<GapRecord>,
}

impl OutboxHealth {
    pub fn evicted_total(&self) -> u64 {
        self.evicted.values().sum()
    }
}

/// An enrolment secret as listed (the secret itself is never stored).
#[derive(Clone, Debug, Serialize)]
pub struct EnrollmentSecretInfo {
    pub id: i64,
    pub site: String,
    /// The first characters of the secret, to tell secrets apart.
    pub hint: String,
    pub label: String,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    pub uses: u64,
    pub last_used_at: Option<Timestamp>,
}

/// Why an enrolment secret was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretRejection {
    #[error("unknown enrolment secret")]
    Unknown,
    #[error("enrolment secret has been revoked")]
    Revoked,
    #[error("enrolment secret has expired")]
    Expired,
}

/// An incident as listed (see `incidents`).
#[derive(Clone, Debug, Serialize)]
pub struct IncidentRecord {
    pub id: i64,
    pub site: String,
    pub device_id: DeviceId,
    pub hostname: String,
    pub account: String,
    pub category: String,
    pub severity: i64,
    pub status: String,
    pub opened_at: Timestamp,
    pub last_at: Timestamp,
    pub capture_count: i64,
    /// Its captures' review (`review`).
    pub review: crate::review::IncidentReview,
    /// Every capture closed by the DSL (the incident's own open/closed
    /// status is set apart).
    pub reviewed: bool,
}

/// One capture of an incident, as shown (see `incidents`).
#[derive(Clone, Debug, Serialize)]
pub struct CaptureRow {
    pub id: i64,
    pub seq: i64,
    pub occurred_at: Timestamp,
    pub rule_id: String,
    pub category: String,
    pub severity: i64,
    pub matched_text: String,
    pub window_title: String,
    pub process_name: String,
    pub account: String,
    pub image_sha256: String,
    pub image_status: String,
    pub no_image_reason: String,
    pub repeat_count: i64,
    /// snapshot or file
    pub kind: String,
    pub file_path: String,
    pub file_sha256: String,
    pub policy_version: i64,
    pub review: CaptureReview,
    /// What was on screen before, oldest first (empty for file alerts,
    /// older agents and sites with `context_minutes = 0`).
    pub context: Vec<ContextEntry>,
}

/// One window title that was in front before a capture, as the device
/// reported it (bounded at ingest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContextEntry {
    pub title: String,
    pub process_name: String,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
}

/// Where the DSL's review of a capture stands (`review`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct CaptureReview {
    pub status: crate::review::CaptureStatus,
    /// The DSL's grade 1–5; `None` while the rule's severity (the
    /// pregrade) stands.
    pub grade: Option<i64>,
    /// The outcome of a closed capture.
    pub outcome: String,
    /// The school's own record (MyConcern, CPOMS).
    pub reference: String,
    pub first_reviewed_at: Option<Timestamp>,
    /// From capture to first review, in milliseconds.
    pub first_review_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn signal_kinds_are_named_the_same_everywhere() {
        for kind in SignalKind::ALL {
            assert_eq!(SignalKind::parse(kind.as_str()), Some(kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::json!(kind.as_str())
            );
        }
        assert_eq!(SignalKind::parse("unspecified"), None);
        let body = EventBody::AgentSignal(SignalRecord::new(SignalKind::ClockJumped));
        assert_eq!(body.kind(), "agent_signal");
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["kind"], "agent_signal");
        assert_eq!(json["signal"], "clock_jumped");
    }
    use super::*;

    fn record(last_seen: Option<i64>, interval: u32) -> DeviceRecord {
        DeviceRecord {
            id: DeviceId::from_string("dev-1"),
            site: "s".into(),
            site_timezone: "Europe/London".into(),
            hostname: "h".into(),
            enrolled_at: Timestamp::from_second(0).unwrap(),
            last_seen_at: last_seen.map(|s| Timestamp::from_second(s).unwrap()),
            heartbeat_interval_secs: interval,
            last_seq: 10,
            events_stored: 7,
            facts: DeviceFacts::default(),
            facts_updated_at: Timestamp::from_second(0).unwrap(),
            enforcement: Enforcement::Enabled,
            reenabled_at: None,
            policy_version: 0,
            status: DeviceStatus::Active,
            status_reason: String::new(),
            duplicate_of: None,
            open_gaps: 0,
        }
    }

    #[test]
    fn online_until_three_heartbeats_missed() {
        let now = Timestamp::from_second(1_000).unwrap();
        let cases = [
            ("never seen", None, Connectivity::Offline),
            ("just now", Some(1_000), Connectivity::Online),
            ("exactly three intervals", Some(820), Connectivity::Online),
            (
                "one second past three intervals",
                Some(819),
                Connectivity::Offline,
            ),
        ];
        for (name, seen, want) in cases {
            assert_eq!(record(seen, 60).connectivity(now), want, "{name}");
        }
    }

    #[test]
    fn gap_counts_missing_sequence_numbers() {
        assert_eq!(record(None, 60).sequence_gap(), 3);
    }
}

/// How someone was logged in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionKind {
    Graphical,
    Console,
    Remote,
    Other,
}

impl SessionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Graphical => "graphical",
            SessionKind::Console => "console",
            SessionKind::Remote => "remote",
            SessionKind::Other => "other",
        }
    }

    pub fn parse(text: &str) -> SessionKind {
        match text {
            "graphical" => SessionKind::Graphical,
            "console" => SessionKind::Console,
            "remote" => SessionKind::Remote,
            _ => SessionKind::Other,
        }
    }
}

/// A login session as the agent last reported it (start, update or end).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SessionRecord {
    /// Stable on the device (the agent includes the boot in it).
    pub session_id: String,
    pub account: String,
    pub uid: u32,
    pub kind: SessionKind,
    pub started_at: Timestamp,
    /// None while the session is open.
    pub ended_at: Option<Timestamp>,
    /// Seconds that were not idle, as far as the agent could tell.
    pub active_secs: u64,
}

/// Commands the collector sends to an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    Disable,
    Enable,
}

impl CommandKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Disable => "disable",
            CommandKind::Enable => "enable",
        }
    }

    pub fn parse(text: &str) -> Option<CommandKind> {
        match text {
            "disable" => Some(CommandKind::Disable),
            "enable" => Some(CommandKind::Enable),
            _ => None,
        }
    }
}

/// A device's standing: whether its certificate is accepted and it counts
/// for the rules (see migrations/sqlite/0009_device_status.sql).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    Active,
    /// Enrolled with a known machine's id or serial but without proof of
    /// that device's key: waits for `devices approve` or `devices link`.
    Pending,
    /// Its certificate is refused (`devices revoke`, or replaced by a
    /// linked device).
    Revoked,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Active => "active",
            DeviceStatus::Pending => "pending",
            DeviceStatus::Revoked => "revoked",
        }
    }

    pub fn parse(text: &str) -> Option<DeviceStatus> {
        Some(match text {
            "active" => DeviceStatus::Active,
            "pending" => DeviceStatus::Pending,
            "revoked" => DeviceStatus::Revoked,
            _ => return None,
        })
    }
}

/// Whether a device is disabled, as far as the collector has asked and the
/// agent has confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    Enabled,
    /// A disable command is waiting for the agent's confirmation.
    DisablePending,
    Disabled,
    /// An enable command is waiting for the agent's confirmation.
    EnablePending,
}

impl Enforcement {
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Enabled => "enabled",
            Enforcement::DisablePending => "disable_pending",
            Enforcement::Disabled => "disabled",
            Enforcement::EnablePending => "enable_pending",
        }
    }

    pub fn parse(text: &str) -> Option<Enforcement> {
        Some(match text {
            "enabled" => Enforcement::Enabled,
            "disable_pending" => Enforcement::DisablePending,
            "disabled" => Enforcement::Disabled,
            "enable_pending" => Enforcement::EnablePending,
            _ => return None,
        })
    }

    /// Whether the device counts as disabled for the rules.
    pub fn is_disabled(self) -> bool {
        matches!(self, Enforcement::DisablePending | Enforcement::Disabled)
    }
}

/// A command for an agent, until the agent reports its result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CommandRecord {
    pub id: String,
    pub device_id: DeviceId,
    pub kind: CommandKind,
    pub reason: String,
    pub issued_at: Timestamp,
}

/// What a capture says, and what became of its image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CaptureRecord {
    pub rule_id: String,
    pub category: String,
    pub severity: u8,
    pub matched_text: String,
    pub window_title: String,
    pub process_name: String,
    pub account: String,
    pub image_sha256: String,
    /// verified, no_image or hash_mismatch
    pub image_status: String,
    pub no_image_reason: String,
    pub repeat_count: u32,
    /// "snapshot" (a window title matched the policy) or "file" (new
    /// software appeared: `file_path`, `file_sha256`).
    pub kind: String,
    pub file_path: String,
    pub file_sha256: String,
    /// The site policy version that matched (0: the project's default).
    pub policy_version: u64,
    /// The image bytes, on their way to the evidence store; never stored
    /// with the event.
    #[serde(skip)]
    pub image: Vec<u8>,
    /// The titles in front before the capture; stored beside the capture
    /// (`capture_context`, purged with it), not with the event.
    #[serde(skip)]
    pub context: Vec<ContextEntry>,
}

/// Declares a closed set of names as an enum understood by serde (the
/// configuration and JSON documents) and sqlx (TEXT columns), with the
/// same snake_case spelling everywhere.
macro_rules! named_set {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type)]
        #[serde(rename_all = "snake_case")]
        #[sqlx(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            pub const ALL: &[$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            pub fn parse(text: &str) -> Option<$name> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// "a, b or c", for error messages.
            pub fn expected() -> String {
                let names: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                match names.split_last() {
                    Some((last, [])) => last.to_string(),
                    Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
                    None => String::new(),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_set! {
    /// Who a notification route or recipient is for; `staff_member` means
    /// the account the event concerns.
    Role {
        HeadTeacher = "head_teacher",
        Dsl = "dsl",
        OnlineSafetyLead = "online_safety_lead",
        Technician = "technician",
        StaffMember = "staff_member",
    }
}

named_set! {
    /// What a console account may do (see `console::access`).
    ConsoleRole {
        /// Accounts and settings, and what a technician sees.
        Admin = "admin",
        /// Devices, compliance, flags, enrolment secrets, policies, agent
        /// health; never snapshots, matched text or incident details.
        Technician = "technician",
        /// Head teacher or designated safeguarding lead: a technician's view
        /// of their sites plus incidents, snapshots and evidence.
        Dsl = "dsl",
        /// Aggregate reports only.
        Governor = "governor",
    }
}

named_set! {
    /// How a message travels.
    Channel {
        Email = "email",
        Webhook = "webhook",
    }
}

named_set! {
    /// When a message is sent: at once, or in the site's daily digest.
    Timing {
        Immediate = "immediate",
        Digest = "digest",
    }
}

named_set! {
    /// Where a queued message is in its life.
    NotificationStatus {
        Pending = "pending",
        Sent = "sent",
        /// Gave up after `max_attempts`.
        Dead = "dead",
        /// Folded into a digest message.
        Digested = "digested",
    }
}

named_set! {
    /// How the collector talks to its SMTP relay.
    SmtpSecurity {
        /// Plain connection upgraded with STARTTLS (port 587).
        Starttls = "starttls",
        /// TLS from the first byte (port 465).
        Tls = "tls",
        /// No encryption: loopback relays only.
        None = "none",
    }
}

#[cfg(test)]
mod named_set_tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_serde_and_the_expected_list() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(*role));
            let json = serde_json::to_string(role).unwrap();
            assert_eq!(json, format!("\"{}\"", role.as_str()));
        }
        assert_eq!(Role::parse("Dsl"), None);
        assert_eq!(Timing::expected(), "immediate or digest");
        assert_eq!(SmtpSecurity::expected(), "starttls, tls or none");
        let t: Timing =
            toml::from_str::<std::collections::HashMap<String, Timing>>("t = \"digest\"").unwrap()
                ["t"];
        assert_eq!(t, Timing::Digest);
    }
}
