//! Storage, as one trait per domain shaped by what its callers need:
//! `SiteStore`, `DeviceStore` (devices and enrolment), `IngestStore` (what
//! agents stream), `AuditStore`, `ActivityStore` (the device-activity rule,
//! flags, commands), `MfaStore`, `ApiTokenStore`, `NotificationStore`,
//! `IncidentStore`, `PolicyStore`, `ReportStore` (the annual review and
//! risk profile) and `ConsoleStore` (console accounts,
//! sessions, sign-in throttling, the audit log and device search). `Store` is all of them, for the code
//! that wires the collector together (`Arc<dyn Store>`); methods of every
//! domain can be called on it. SQLite is the only backend so far
//! (`sqlite/`, one file per domain implementing that domain's trait, no
//! forwarding layer); a second backend (PostgreSQL, issue 18) would add one
//! file per domain beside its own migrations, and no caller changes.
//!
//! Architecture invariant: only this module's backends run SQL; every
//! other module reaches the database through these traits.
//!
//! Guarantee: `record_batch` commits the whole batch in one transaction
//! before returning, so a caller that acks after it returns never acks an
//! event that is not durable.

use async_trait::async_trait;
use jiff::Timestamp;

use crate::directory::DirectoryAccount;
use crate::flags::{FlagAction, FlagError, FlagRecord, FlagState, FlagTransition};
use crate::model::{
    BatchOutcome, Channel, CommandRecord, ConsoleRole, DeviceFacts, DeviceId, DeviceRecord,
    DeviceStatus, Enforcement, EnrollmentSecretInfo, Event, NotificationStatus, OutboxHealth, Role,
    SecretRejection, SessionRecord, Site, SiteId, StoredSignal, Timing,
};
use crate::rules::activity::{ActivityEvaluation, ActivityStatus};
use crate::rules::mfa::{MfaStatus, PairVerdict};
use crate::site_settings::SiteOverride;
use std::collections::HashMap;

pub mod sqlite;

pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("site '{0}' already exists")]
    SiteExists(String),
    #[error("no site named '{0}'")]
    NoSuchSite(String),
    #[error("user '{0}' already exists")]
    UserExists(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What an enrolment writes.
#[derive(Clone, Debug)]
pub struct Enrollment {
    pub device_id: DeviceId,
    pub site: SiteId,
    pub facts: DeviceFacts,
    pub cert_sha256: String,
    pub at: Timestamp,
    /// For a new device: active, or pending a technician's decision.
    pub status: DeviceStatus,
    pub status_reason: String,
    pub duplicate_of: Option<DeviceId>,
}

impl Enrollment {
    /// An active device (a machine never seen, or one that proved its key).
    pub fn active(
        device_id: DeviceId,
        site: SiteId,
        facts: DeviceFacts,
        cert_sha256: String,
        at: Timestamp,
    ) -> Enrollment {
        Enrollment {
            device_id,
            site,
            facts,
            cert_sha256,
            at,
            status: DeviceStatus::Active,
            status_reason: String::new(),
            duplicate_of: None,
        }
    }
}

/// One version of a site's suspicious-activity policy.
#[derive(Clone, Debug)]
pub struct SitePolicy {
    pub site: SiteId,
    pub version: u64,
    /// Empty: the project's default policy.
    pub toml: String,
    pub sha256: String,
    pub comment: String,
    pub created_at: Timestamp,
    pub created_by: String,
}

/// A site policy version without its text (the console's history).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyVersion {
    pub version: u64,
    /// 0: the project's default.
    pub bytes: u64,
    pub lines: u64,
    pub comment: String,
    pub created_at: Timestamp,
    pub created_by: String,
}

/// A device as the telemetry stream needs it.
#[derive(Clone, Debug)]
pub struct StreamDevice {
    pub id: DeviceId,
    pub site: SiteId,
    pub last_seq: u64,
    pub status: DeviceStatus,
    pub status_reason: String,
}

/// A device whose certificate or status changed.
#[derive(Clone, Debug)]
pub struct IdentityChange {
    pub device: DeviceId,
    pub cert_sha256: String,
    pub status: DeviceStatus,
    pub status_reason: String,
    pub at: Timestamp,
}

#[derive(Clone, Debug)]
pub struct NewSecret {
    pub site: SiteId,
    pub secret_sha256: String,
    pub hint: String,
    pub label: String,
    pub expires_at: Option<Timestamp>,
    pub at: Timestamp,
}

#[derive(Clone, Debug)]
pub struct AuditEntry<'a> {
    pub at: Timestamp,
    /// The site whose device, flag, incident, setting or account this is
    /// about; `None` for what concerns the whole collector (an account of
    /// several sites or of all, a sign-in under an unknown name). Only
    /// accounts that see every site read `None` rows.
    pub site: Option<SiteId>,
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub detail: &'a str,
    /// Where it came from: the browser's or client's address, or "cli".
    pub address: &'a str,
}

/// Which devices a query covers.
#[derive(Clone, Debug, Default)]
pub struct DeviceFilter {
    pub site: Option<SiteId>,
    pub device: Option<DeviceId>,
    /// When set, only these devices.
    pub devices: Option<Vec<DeviceId>>,
}

impl DeviceFilter {
    pub fn one(device: DeviceId) -> DeviceFilter {
        DeviceFilter {
            device: Some(device),
            ..DeviceFilter::default()
        }
    }
}

/// Everything the device-activity rule needs about one device.
#[derive(Clone, Debug)]
pub struct ActivityInput {
    pub device: DeviceId,
    pub site: SiteId,
    pub site_name: String,
    pub site_timezone: String,
    pub hostname: String,
    pub enrolled_at: Timestamp,
    pub reenabled_at: Option<Timestamp>,
    pub last_seen_at: Option<Timestamp>,
    pub heartbeat_interval_secs: u32,
    pub enforcement: Enforcement,
    /// Sessions open at or ending after the `since` asked for.
    pub sessions: Vec<SessionRecord>,
}

/// A verdict to record, with what the site does about non-compliance.
#[derive(Clone, Debug)]
pub struct ActivityVerdict {
    pub device: DeviceId,
    pub site: SiteId,
    pub evaluation: ActivityEvaluation,
    /// When to evaluate again if nothing arrives (see `rules::evaluate`).
    pub next_check_at: Timestamp,
    pub required_minutes: u32,
    pub auto_disable: bool,
}

/// The stored verdict of a device.
#[derive(Clone, Debug)]
pub struct StoredActivity {
    pub device: DeviceId,
    pub status: ActivityStatus,
    pub used_secs: i64,
    pub window_start: Timestamp,
    pub breach_at: Option<Timestamp>,
    pub grace_until: Option<Timestamp>,
    pub as_of: Timestamp,
}

/// What a `record_activity` call changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActivityChanges {
    /// Flags opened (ids).
    pub opened: Vec<i64>,
    /// Open flags closed because the device is compliant again.
    pub resolved: Vec<i64>,
    /// Flags approved automatically (site setting).
    pub auto_approved: Vec<i64>,
}

/// What a directory import changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectoryImport {
    pub added: u64,
    pub updated: u64,
    pub removed: u64,
    pub unchanged: u64,
}

/// Evidence of a two-step sign-in to store.
#[derive(Clone, Debug)]
pub struct NewMfaCompletion {
    pub site: SiteId,
    pub device: Option<DeviceId>,
    pub account: String,
    pub completed_at: Timestamp,
    /// agent, entra, google, api
    pub source: String,
    pub method: String,
    pub external_id: String,
    pub device_hint: String,
}

/// A device's 2FA pairs to record.
#[derive(Clone, Debug)]
pub struct MfaVerdict {
    pub device: DeviceId,
    pub site: SiteId,
    pub pairs: Vec<PairVerdict>,
    pub as_of: Timestamp,
}

/// A stored pair, as `mfa list` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StoredPair {
    pub device_id: DeviceId,
    pub hostname: String,
    pub site: String,
    pub account: String,
    pub status: MfaStatus,
    pub last_mfa: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    pub last_session_at: Timestamp,
    pub as_of: Timestamp,
}

/// An API token as `api-token list` shows it (never the token itself).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ApiTokenInfo {
    pub id: i64,
    pub site: String,
    #[serde(skip)]
    pub site_id: SiteId,
    pub label: String,
    /// What the token may read and do (the console's role matrix).
    pub role: ConsoleRole,
    /// Every site, or only `site`.
    pub all_sites: bool,
    /// The console account that made it (None: the command line).
    pub created_by: Option<i64>,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
}

/// A token to store (`token_sha256` is the SHA-256 of the token shown once).
#[derive(Clone, Copy, Debug)]
pub struct NewApiToken<'a> {
    pub site: SiteId,
    pub token_sha256: &'a str,
    pub label: &'a str,
    pub role: ConsoleRole,
    pub all_sites: bool,
    /// The console account making it (None: the command line).
    pub created_by: Option<i64>,
}

/// A person or system told about a site's flags and incidents.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Recipient {
    pub id: i64,
    #[serde(skip)]
    pub site: SiteId,
    pub role: Role,
    pub channel: Channel,
    pub address: String,
    pub webhook_format: String,
    #[serde(skip)]
    pub webhook_secret: String,
}

/// Something that happened which may need telling.
#[derive(Clone, Debug)]
pub struct NotificationEvent {
    pub id: i64,
    pub site: SiteId,
    pub kind: String,
    pub flag_id: Option<i64>,
    pub device: Option<DeviceId>,
    pub account: String,
    pub severity: i64,
    pub summary: String,
    pub at: Timestamp,
}

/// A message to queue.
#[derive(Clone, Debug)]
pub struct NewNotification {
    pub site: SiteId,
    pub channel: Channel,
    pub address: String,
    pub webhook_format: String,
    pub webhook_secret: String,
    pub timing: Timing,
    pub subject: String,
    pub body: String,
    /// JSON for webhooks.
    pub payload: String,
}

/// A queued message.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Notification {
    pub id: i64,
    #[serde(skip)]
    pub site: SiteId,
    pub channel: Channel,
    pub address: String,
    #[serde(skip)]
    pub webhook_format: String,
    #[serde(skip)]
    pub webhook_secret: String,
    pub timing: Timing,
    pub subject: String,
    #[serde(skip)]
    pub body: String,
    #[serde(skip)]
    pub payload: String,
    pub status: NotificationStatus,
    pub attempts: i64,
    pub next_attempt_at: Timestamp,
    pub last_error: String,
    pub created_at: Timestamp,
    pub sent_at: Option<Timestamp>,
}

/// Sites (schools): each device, secret, policy and recipient belongs to
/// one; and the thresholds and retention the console set for a site.
#[async_trait]
pub trait SiteStore: Send + Sync + 'static {
    async fn create_site(&self, name: &str, timezone: &str, at: Timestamp) -> Result<Site>;
    async fn site_by_name(&self, name: &str) -> Result<Option<Site>>;
    async fn sites(&self) -> Result<Vec<Site>>;
    /// Every site's console override (few rows: one per site at most).
    async fn site_overrides(&self) -> Result<HashMap<SiteId, SiteOverride>>;
    async fn site_override(&self, site: SiteId) -> Result<Option<SiteOverride>>;
    /// Sets (`Some`) or clears (`None`) a site's override and appends
    /// `audit`, in one transaction.
    async fn set_site_override(
        &self,
        site: SiteId,
        value: Option<&SiteOverride>,
        audit: AuditEntry<'_>,
    ) -> Result<()>;
}

/// Devices and their enrolment: secrets, certificates, standing.
#[async_trait]
pub trait DeviceStore: Send + Sync + 'static {
    async fn create_enrollment_secret(&self, secret: NewSecret) -> Result<EnrollmentSecretInfo>;
    async fn list_enrollment_secrets(
        &self,
        site: Option<SiteId>,
    ) -> Result<Vec<EnrollmentSecretInfo>>;
    /// Marks a secret revoked; false when no such (unrevoked) secret exists.
    async fn revoke_enrollment_secret(&self, site: SiteId, id: i64, at: Timestamp) -> Result<bool>;
    /// Checks a secret and counts its use. Returns the site it enrols into.
    async fn redeem_enrollment_secret(
        &self,
        secret_sha256: &str,
        at: Timestamp,
    ) -> Result<Result<Site, SecretRejection>>;
    /// A device already enrolled with this machine id (or, failing that,
    /// serial number), active ones first: a second enrolment of the same
    /// machine without proof of its key becomes a pending duplicate of it.
    async fn device_for_machine(&self, machine_id: &str, serial: &str) -> Result<Option<DeviceId>>;
    /// Creates the device or, if it exists, replaces its certificate and
    /// facts (never its site or status). Returns true when it was a
    /// re-enrolment.
    async fn save_enrollment(&self, enrollment: Enrollment) -> Result<bool>;
    /// The device whose current client certificate has this SHA-256.
    async fn device_by_certificate(&self, cert_sha256: &str) -> Result<Option<StreamDevice>>;
    /// Sets a device's status (with the reason shown to technicians and to
    /// its agent); false when there is no such device.
    async fn set_device_status(
        &self,
        device: &DeviceId,
        status: DeviceStatus,
        reason: &str,
        at: Timestamp,
    ) -> Result<bool>;
    /// Devices whose certificate or status changed after `after` (for
    /// closing streams that are no longer valid), oldest change first.
    async fn identity_changes_since(&self, after: Timestamp) -> Result<Vec<IdentityChange>>;
    async fn list_devices(&self, site: Option<SiteId>) -> Result<Vec<DeviceRecord>>;
    async fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>>;
}

/// What agents stream: hellos and batches of events, and what they say of their outboxes.
#[async_trait]
pub trait IngestStore: Send + Sync + 'static {
    async fn record_hello(
        &self,
        device: &DeviceId,
        heartbeat_interval_secs: u32,
        policy_version: u64,
        at: Timestamp,
    ) -> Result<()>;
    /// Stores the events the collector does not hold yet, in one transaction.
    async fn record_batch(
        &self,
        device: &DeviceId,
        events: &[Event],
        received_at: Timestamp,
    ) -> Result<BatchOutcome>;
    /// The sum of the outbox reports a device's agent sent.
    async fn outbox_health(&self, device: &DeviceId) -> Result<OutboxHealth>;
    /// Events of a device in sequence order, as (seq, kind) pairs.
    async fn event_kinds(&self, device: &DeviceId) -> Result<Vec<(u64, String)>>;
}

/// The audit log, and console accounts.
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    async fn append_audit(&self, entry: AuditEntry<'_>) -> Result<()>;
}

/// The device-activity rule: its inputs and verdicts, flags and their lifecycle, and the commands flags issue.
#[async_trait]
pub trait ActivityStore: Send + Sync + 'static {
    /// Devices (by id, after `after`, at most `limit`) with the sessions
    /// that may reach past `since`.
    async fn activity_inputs(
        &self,
        filter: &DeviceFilter,
        since: Timestamp,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<Vec<ActivityInput>>;
    /// Stores verdicts; opens one `device_inactive` flag per non-compliant
    /// device that has none (approving it at once where the site disables
    /// automatically) and resolves open flags of compliant devices, all in
    /// one transaction.
    async fn record_activity(
        &self,
        verdicts: &[ActivityVerdict],
        at: Timestamp,
    ) -> Result<ActivityChanges>;
    async fn stored_activity(&self, filter: &DeviceFilter) -> Result<Vec<StoredActivity>>;
    /// Devices whose verdict may have changed by `at` through time passing
    /// alone, or that have no verdict yet (at most `limit`, by id).
    async fn devices_due(&self, at: Timestamp, limit: usize) -> Result<Vec<DeviceId>>;
    async fn list_flags(
        &self,
        filter: &DeviceFilter,
        state: Option<FlagState>,
    ) -> Result<Vec<FlagRecord>>;
    async fn flag(&self, id: i64) -> Result<Option<FlagRecord>>;
    async fn flag_history(&self, id: i64) -> Result<Vec<FlagTransition>>;
    /// Applies a transition with its side effects (commands, enforcement
    /// state, new grace period) and its audit row, in one transaction.
    async fn transition_flag(
        &self,
        id: i64,
        action: FlagAction,
        actor: &str,
        reason: &str,
        at: Timestamp,
    ) -> Result<Result<FlagRecord, FlagError>>;
    /// Commands of a device the agent has not reported on yet.
    async fn pending_commands(&self, device: &DeviceId) -> Result<Vec<CommandRecord>>;
    /// Commands never sent to any stream yet, oldest first.
    async fn unsent_commands(&self) -> Result<Vec<CommandRecord>>;
    async fn mark_command_sent(&self, id: &str, at: Timestamp) -> Result<()>;
}

/// The 2FA-freshness rule: the site directory, completions and pairs.
#[async_trait]
pub trait MfaStore: Send + Sync + 'static {
    /// Replaces the site's directory with `accounts`, in one transaction.
    async fn import_directory(
        &self,
        site: SiteId,
        accounts: &[DirectoryAccount],
        at: Timestamp,
    ) -> Result<DirectoryImport>;
    async fn directory(&self, site: SiteId) -> Result<Vec<DirectoryAccount>>;
    /// The directory groups of the accounts that have had a session on
    /// `device` (and are in its site's directory with a group), by account.
    async fn account_groups_on_device(
        &self,
        device: &DeviceId,
    ) -> Result<Vec<(String, Vec<String>)>>;
    /// Stores completions not held yet (by source and external id), in one
    /// transaction; returns how many were new.
    async fn record_mfa_completions(
        &self,
        completions: &[NewMfaCompletion],
        at: Timestamp,
    ) -> Result<u64>;
    /// (device, account, newest completion at or before `as_of`) for each
    /// account with one on these devices.
    async fn mfa_completions_for(
        &self,
        devices: &[DeviceId],
        as_of: Timestamp,
    ) -> Result<Vec<(DeviceId, String, Timestamp)>>;
    /// Stores each device's pairs (replacing its earlier ones); opens one
    /// `mfa_stale` flag per stale pair, resolves open ones that are no
    /// longer stale and queues a reminder per due-soon expiry.
    async fn record_mfa(&self, verdicts: &[MfaVerdict], at: Timestamp) -> Result<ActivityChanges>;
    async fn mfa_pairs(
        &self,
        filter: &DeviceFilter,
        status: Option<MfaStatus>,
    ) -> Result<Vec<StoredPair>>;
}

/// Tokens for the JSON API (stored as SHA-256).
#[async_trait]
pub trait ApiTokenStore: Send + Sync + 'static {
    async fn create_api_token(&self, token: NewApiToken<'_>, at: Timestamp) -> Result<i64>;
    async fn list_api_tokens(&self, site: Option<SiteId>) -> Result<Vec<ApiTokenInfo>>;
    /// False when no such unrevoked token exists.
    async fn revoke_api_token(&self, site: SiteId, id: i64, at: Timestamp) -> Result<bool>;
    /// The unrevoked token with this SHA-256, marking it used.
    async fn use_api_token(
        &self,
        token_sha256: &str,
        at: Timestamp,
    ) -> Result<Option<ApiTokenInfo>>;
}

/// Recipients, and the outbox of notifications: events expanded into messages, leases, retries, digests.
#[async_trait]
pub trait NotificationStore: Send + Sync + 'static {
    async fn add_recipient(&self, recipient: &Recipient, at: Timestamp) -> Result<i64>;
    async fn recipients(&self, site: Option<SiteId>) -> Result<Vec<Recipient>>;
    async fn remove_recipient(&self, site: SiteId, id: i64) -> Result<bool>;
    /// Events not yet turned into messages, oldest first.
    async fn new_notification_events(&self, limit: usize) -> Result<Vec<NotificationEvent>>;
    /// Queues an event's messages and marks it expanded, in one transaction
    /// (a message already queued for the same address is not queued again).
    async fn queue_notifications(
        &self,
        event: Option<i64>,
        messages: &[NewNotification],
        at: Timestamp,
    ) -> Result<u64>;
    /// Claims due immediate messages for `owner` until `lease_until`; a
    /// message leased by another live owner is skipped.
    /// Only messages on `channels` are claimed (email waits while no SMTP
    /// server is configured).
    async fn claim_notifications(
        &self,
        owner: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
        channels: &[Channel],
    ) -> Result<Vec<Notification>>;
    async fn notification_sent(&self, id: i64, at: Timestamp) -> Result<()>;
    /// Records a failed attempt: retried at `retry_at`, or dead when None.
    async fn notification_failed(
        &self,
        id: i64,
        error: &str,
        retry_at: Option<Timestamp>,
    ) -> Result<()>;
    /// Pending digest messages of a site.
    async fn pending_digest(&self, site: SiteId) -> Result<Vec<Notification>>;
    /// Queues one digest message per address from `members` and marks them
    /// digested, in one transaction; records the site's digest date.
    async fn queue_digest(
        &self,
        site: SiteId,
        digests: &[(NewNotification, Vec<i64>)],
        local_date: &str,
        at: Timestamp,
    ) -> Result<()>;
    async fn digest_last_date(&self, site: SiteId) -> Result<Option<String>>;
    async fn list_notifications(
        &self,
        status: Option<NotificationStatus>,
    ) -> Result<Vec<Notification>>;
}

/// Incidents and the capture rows that are their evidence (images live in the evidence store).
#[async_trait]
pub trait IncidentStore: Send + Sync + 'static {
    async fn list_incidents(
        &self,
        filter: &DeviceFilter,
        status: Option<&str>,
    ) -> Result<Vec<crate::model::IncidentRecord>>;
    /// An incident with its captures (and its site, for access checks).
    async fn incident(
        &self,
        id: i64,
    ) -> Result<
        Option<(
            crate::model::IncidentRecord,
            Vec<crate::model::CaptureRow>,
            SiteId,
        )>,
    >;
    async fn close_incident(&self, id: i64, reason: &str, at: Timestamp) -> Result<bool>;
    /// The incident and site of a capture (for access checks).
    async fn capture_place(&self, capture: i64) -> Result<Option<(i64, SiteId)>>;
    /// Applies a DSL's review of a capture (`review::decide`): its new
    /// status, grade and outcome, its first-review time and one history
    /// row per change, in one transaction. Nothing is written when the
    /// review is refused.
    async fn review_capture(
        &self,
        capture: i64,
        request: &crate::review::ReviewRequest,
        actor: &str,
        at: Timestamp,
    ) -> Result<std::result::Result<crate::review::Decision, crate::review::ReviewError>>;
    /// Every review step on an incident's captures, oldest first.
    async fn incident_history(&self, incident: i64) -> Result<Vec<crate::review::HistoryEntry>>;
    /// (capture id, image hash) of the site's captures older than
    /// `before` whose incident is closed.
    async fn expired_captures(&self, site: SiteId, before: Timestamp)
    -> Result<Vec<(i64, String)>>;
    /// Deletes those captures and empties their capture events, in one
    /// transaction.
    async fn purge_captures(&self, ids: &[i64], before: Timestamp) -> Result<u64>;
    async fn image_in_use(&self, sha256: &str) -> Result<bool>;
}

/// Sites' suspicious-activity policies, versioned.
#[async_trait]
pub trait PolicyStore: Send + Sync + 'static {
    /// Stores the site's next policy version (with its audit row: who and
    /// from where), in one transaction.
    async fn save_site_policy(
        &self,
        site: SiteId,
        text: &str,
        sha256: &str,
        comment: &str,
        author: crate::policies::Author<'_>,
        at: Timestamp,
    ) -> Result<u64>;
    /// One version, or the newest when `version` is None.
    async fn site_policy(&self, site: SiteId, version: Option<u64>) -> Result<Option<SitePolicy>>;
    async fn site_policy_history(&self, site: SiteId) -> Result<Vec<SitePolicy>>;
    /// Every version, newest first, without the texts (which may be 4 MiB
    /// each).
    async fn site_policy_versions(&self, site: SiteId) -> Result<Vec<PolicyVersion>>;
    /// The newest version of every site that has a policy.
    async fn current_policy_versions(&self) -> Result<Vec<(SiteId, u64)>>;
    /// (version, devices holding it) for the site's devices.
    async fn device_policy_versions(&self, site: SiteId) -> Result<Vec<(u64, u64)>>;
}

/// One version of a site's acceptable-use policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteAup {
    pub site: SiteId,
    pub version: u64,
    pub toml: String,
    pub sha256: String,
    pub created_at: Timestamp,
    pub created_by: String,
}

/// Which acceptable-use answers to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AupAnswerFilter {
    /// None: every site.
    pub sites: Option<Vec<SiteId>>,
    pub version: Option<u64>,
    pub answer: Option<crate::model::AupAnswerKind>,
    /// At most this many, newest first.
    pub limit: u32,
}

/// One stored answer, with its device and site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AupAnswerRow {
    pub device: DeviceId,
    pub hostname: String,
    pub site: String,
    pub record: crate::model::AupAnswerRecord,
    pub received_at: Timestamp,
}

/// Sites' acceptable-use policies and the answers to them.
#[async_trait]
pub trait AupStore: Send + Sync + 'static {
    /// Stores the site's next AUP version with its audit row, in one
    /// transaction.
    async fn save_site_aup(
        &self,
        site: SiteId,
        text: &str,
        sha256: &str,
        author: crate::policies::Author<'_>,
        at: Timestamp,
    ) -> Result<u64>;
    /// One version, or the newest when `version` is None.
    async fn site_aup(&self, site: SiteId, version: Option<u64>) -> Result<Option<SiteAup>>;
    /// Every version of a site, newest first.
    async fn site_aup_versions(&self, site: SiteId) -> Result<Vec<SiteAup>>;
    /// The newest version of every site that has an AUP.
    async fn current_aup_versions(&self) -> Result<Vec<(SiteId, u64)>>;
    async fn aup_answers(&self, filter: &AupAnswerFilter) -> Result<Vec<AupAnswerRow>>;
}

/// A site's own notification route: one role told of one event kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteRoute {
    pub id: i64,
    pub kind: String,
    pub role: crate::model::Role,
    pub timing: crate::model::Timing,
}

/// An exclusion a DSL added to a site's policy from a capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyExclusion {
    pub id: i64,
    pub capture: i64,
    pub site: SiteId,
    pub rule_id: String,
    /// phrase | title | website
    pub what: String,
    /// 0: the project's default.
    pub version_before: u64,
    pub version_after: u64,
    /// The version that restored `version_before`'s text, once undone.
    pub undone_version: Option<u64>,
    pub at: Timestamp,
    pub actor: String,
}

/// Capture alerts and routes a site sets in the console (`alerts.rs`), and
/// the policy exclusions DSLs add from captures.
#[async_trait]
pub trait AlertStore: Send + Sync + 'static {
    async fn alert_override(&self, site: SiteId) -> Result<Option<crate::alerts::AlertSettings>>;
    /// Sets (`Some`) or clears (`None`) a site's alert settings and
    /// appends `audit`, in one transaction.
    async fn set_alert_override(
        &self,
        site: SiteId,
        value: Option<&crate::alerts::AlertSettings>,
        audit: AuditEntry<'_>,
    ) -> Result<()>;
    /// The site's own routes (empty: it uses `collector.toml`'s).
    async fn site_routes(&self, site: SiteId) -> Result<Vec<SiteRoute>>;
    /// Adds a route to the site; a site that had none first gets `seed`
    /// (collector.toml's routes, so adding one does not silence the rest).
    /// False when the site already has it. With `audit`, in one
    /// transaction.
    async fn add_site_route(
        &self,
        site: SiteId,
        route: &SiteRoute,
        seed: &[crate::config::Route],
        audit: AuditEntry<'_>,
    ) -> Result<bool>;
    /// Removes one route (false: no such route of the site).
    async fn remove_site_route(&self, site: SiteId, id: i64, audit: AuditEntry<'_>)
    -> Result<bool>;
    /// Removes every route of the site: back to collector.toml's.
    async fn clear_site_routes(&self, site: SiteId, audit: AuditEntry<'_>) -> Result<u64>;
    async fn record_policy_exclusion(&self, exclusion: &PolicyExclusion) -> Result<i64>;
    /// The exclusions added from these captures.
    async fn policy_exclusions(&self, captures: &[i64]) -> Result<Vec<PolicyExclusion>>;
    async fn policy_exclusion(&self, id: i64) -> Result<Option<PolicyExclusion>>;
    /// Marks an exclusion undone by `version`; false when it already was.
    async fn exclusion_undone(&self, id: i64, version: u64) -> Result<bool>;
    /// Deletes the site's threshold alert rows (which name accounts)
    /// crossed before `before`.
    async fn purge_threshold_alerts(&self, site: SiteId, before: Timestamp) -> Result<u64>;
}

/// Every domain store of one backend. Callers that need one domain take
/// that trait (`&dyn IncidentStore`); those that wire the collector
/// together hold an `Arc<dyn Store>`, which hands out any of them. Each
/// backend implements the domain traits directly, one file per domain:
/// there is no forwarding layer.
pub trait Store:
    ConsoleStore
    + SiteStore
    + DeviceStore
    + IngestStore
    + AuditStore
    + ActivityStore
    + MfaStore
    + ApiTokenStore
    + NotificationStore
    + IncidentStore
    + PolicyStore
    + TamperStore
    + ReportStore
    + AlertStore
    + AupStore
{
}

impl<T> Store for T where
    T: ConsoleStore
        + SiteStore
        + DeviceStore
        + IngestStore
        + AuditStore
        + ActivityStore
        + MfaStore
        + ApiTokenStore
        + NotificationStore
        + IncidentStore
        + PolicyStore
        + TamperStore
        + ReportStore
        + AlertStore
        + AupStore
{
}

/// What the annual review (`annual_review`) and the DSL's risk profile
/// (`risk`) read: one site at a time, over a period, each query through an
/// index (migration 0020).
#[async_trait]
pub trait ReportStore: Send + Sync + 'static {
    /// A site's active devices, those heard from since `reporting_since`,
    /// and those with an open monitoring gap.
    async fn coverage(
        &self,
        site: SiteId,
        reporting_since: Timestamp,
    ) -> Result<crate::annual_review::CoverageFacts>;
    /// A site's devices by activity verdict and its staff pairs by 2FA
    /// verdict, as they stand.
    async fn verdicts_now(&self, site: SiteId) -> Result<(Vec<(String, u64)>, Vec<(String, u64)>)>;
    /// A site's agent signals in the period, by kind.
    async fn signals_in_period(
        &self,
        site: SiteId,
        period: crate::annual_review::Period,
    ) -> Result<Vec<(String, u64)>>;
    /// A site's flags active at some time in the period.
    async fn flags_in_period(
        &self,
        site: SiteId,
        period: crate::annual_review::Period,
    ) -> Result<Vec<crate::annual_review::FlagSpan>>;
    /// A site's captures in the period.
    async fn captures_in_period(
        &self,
        site: SiteId,
        period: crate::annual_review::Period,
    ) -> Result<Vec<crate::annual_review::CaptureFact>>;
    /// A site's incidents opened before the period's end and open at some
    /// time in it.
    async fn incidents_in_period(
        &self,
        site: SiteId,
        period: crate::annual_review::Period,
    ) -> Result<Vec<crate::annual_review::IncidentFact>>;
    /// One account's or one device's captures at a site in the period.
    async fn subject_captures(
        &self,
        site: SiteId,
        subject: &crate::risk::Subject,
        period: crate::annual_review::Period,
    ) -> Result<Vec<crate::annual_review::CaptureFact>>;
    /// One account's or one device's open incidents at a site.
    async fn subject_open_incidents(
        &self,
        site: SiteId,
        subject: &crate::risk::Subject,
    ) -> Result<Vec<OpenIncident>>;
}

/// An open incident, as the risk profile lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenIncident {
    pub id: i64,
    pub hostname: String,
    pub category: String,
    pub severity: i64,
    pub opened_at: Timestamp,
    pub capture_count: i64,
}

/// A device that stopped reporting, as the silence rule reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SilentDevice {
    pub device: DeviceId,
    pub site: SiteId,
    pub last_seen_at: Timestamp,
    /// A tamper flag of the device was opened after `last_seen_at`, or
    /// one is active (a person has not looked at the earlier sign yet).
    pub flagged_since: bool,
    /// Two-step sign-ins mapped to the device (imported from the identity
    /// provider) more than `silent_after` after `last_seen_at`.
    pub signins_from_device: u64,
}

/// Tamper signals: what agents said about themselves (stored by
/// `record_batch`, which also opens their flags), and the "agent silent
/// since" rule's inputs and flags.
#[async_trait]
pub trait TamperStore: Send + Sync + 'static {
    /// A device's newest signals (at most `limit`), newest first.
    async fn agent_signals(&self, device: &DeviceId, limit: usize) -> Result<Vec<StoredSignal>>;
    /// Active devices last seen at or after `seen_from` and before
    /// `seen_before`, each with the sign-ins seen from it more than
    /// `silent_after` after it went silent: one statement.
    async fn silent_devices(
        &self,
        seen_from: Timestamp,
        seen_before: Timestamp,
        silent_after: jiff::SignedDuration,
    ) -> Result<Vec<SilentDevice>>;
    /// Opens a `tamper` flag for the device (its audit row and
    /// notification in the same transaction); None when one is active
    /// (its `updated_at` is then moved to `at`).
    async fn raise_tamper(
        &self,
        site: SiteId,
        device: &DeviceId,
        summary: &str,
        at: Timestamp,
    ) -> Result<Option<i64>>;
}

/// A person who signs in to the console.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConsoleUser {
    pub id: i64,
    pub username: String,
    #[serde(skip)]
    pub password_hash: String,
    pub role: ConsoleRole,
    /// Every site, or only `sites`.
    pub all_sites: bool,
    pub sites: Vec<SiteId>,
    pub disabled: bool,
    /// Base32 TOTP secret; empty without a second factor.
    #[serde(skip)]
    pub totp_secret: String,
    pub created_at: Timestamp,
}

impl ConsoleUser {
    pub fn sees_site(&self, site: SiteId) -> bool {
        self.all_sites || self.sites.contains(&site)
    }
    /// The sites to filter by: `None` for every site.
    pub fn site_filter(&self) -> Option<&[SiteId]> {
        (!self.all_sites).then_some(self.sites.as_slice())
    }
    /// The site an audit row about this account belongs to: its one site,
    /// or `None` (collector-wide) for an account of several sites or all,
    /// so no school's administrator reads about another school's staff.
    pub fn audit_site(&self) -> Option<SiteId> {
        ConsoleUser::audit_site_for(self.site_filter())
    }
    /// `audit_site` of an account with these sites (`None`: every site).
    pub fn audit_site_for(sites: Option<&[SiteId]>) -> Option<SiteId> {
        match sites {
            Some([site]) => Some(*site),
            _ => None,
        }
    }
}

/// A new console account.
#[derive(Clone, Debug)]
pub struct NewConsoleUser<'a> {
    pub username: &'a str,
    pub password_hash: &'a str,
    pub role: ConsoleRole,
    /// `None`: every site.
    pub sites: Option<Vec<SiteId>>,
}

/// A change to an account.
#[derive(Clone, Debug)]
pub enum UserChange {
    Password(String),
    Disabled(bool),
    Role {
        role: ConsoleRole,
        sites: Option<Vec<SiteId>>,
    },
    /// Base32 secret, or empty to remove the second factor.
    Totp(String),
}

/// A signed-in browser.
#[derive(Clone, Debug)]
pub struct ConsoleSession {
    pub user: ConsoleUser,
    pub csrf_token: String,
    /// False between the password and the second factor.
    pub verified: bool,
    pub address: String,
    pub created_at: Timestamp,
    pub last_seen_at: Timestamp,
}

/// One row of the audit log.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuditRecord {
    pub id: i64,
    pub at: Timestamp,
    /// `None`: collector-wide.
    pub site: Option<SiteId>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
    pub address: String,
}

/// Which sites' audit rows a query reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditSites {
    /// Every row, collector-wide ones included (accounts of every site).
    All,
    /// Only collector-wide rows.
    CollectorWide,
    /// Only rows of these sites (none: no rows).
    Only(Vec<SiteId>),
}

/// Which audit rows to list, newest first.
#[derive(Clone, Debug)]
pub struct AuditQuery {
    pub sites: AuditSites,
    /// Substring of the actor.
    pub actor: String,
    /// Prefix of the action.
    pub action: String,
    /// Only rows with a smaller id (the next page).
    pub before: Option<i64>,
    pub limit: usize,
}

/// A page of the device list.
#[derive(Clone, Debug, Default)]
pub struct DeviceQuery {
    /// `None`: every site.
    pub sites: Option<Vec<SiteId>>,
    /// Part of the hostname, device id or serial number, or an account
    /// that has signed in on the device.
    pub text: String,
    pub connectivity: Option<crate::model::Connectivity>,
    pub compliance: Option<ActivityStatus>,
    /// Part of the operating system's name.
    pub os: String,
    pub now: Option<Timestamp>,
    /// Keyset: devices after this (hostname, id).
    pub after: Option<(String, String)>,
    pub limit: usize,
}

/// Console accounts and sessions, sign-in throttling, the audit log and
/// the console's device search.
#[async_trait]
pub trait ConsoleStore: Send + Sync + 'static {
    async fn create_console_user(&self, user: NewConsoleUser<'_>, at: Timestamp) -> Result<i64>;
    async fn console_user_by_name(&self, username: &str) -> Result<Option<ConsoleUser>>;
    async fn console_user(&self, id: i64) -> Result<Option<ConsoleUser>>;
    async fn console_users(&self) -> Result<Vec<ConsoleUser>>;
    /// Returns false when there is no such account.
    async fn update_console_user(&self, id: i64, change: UserChange, at: Timestamp)
    -> Result<bool>;
    async fn create_console_session(
        &self,
        token_sha256: &str,
        user: i64,
        csrf_token: &str,
        verified: bool,
        address: &str,
        at: Timestamp,
    ) -> Result<()>;
    async fn console_session(&self, token_sha256: &str) -> Result<Option<ConsoleSession>>;
    /// Marks a session used at `at` (and verified, once the second factor
    /// is given).
    async fn touch_console_session(
        &self,
        token_sha256: &str,
        verified: bool,
        at: Timestamp,
    ) -> Result<()>;
    async fn end_console_session(&self, token_sha256: &str) -> Result<()>;
    /// Ends every session of an account but `except`; returns how many.
    async fn end_console_sessions(&self, user: i64, except: Option<&str>) -> Result<u64>;
    /// Records an attempt as failed (before it is checked, so parallel
    /// guesses all count); returns its id for `forget_login_failure`.
    async fn record_login_failure(
        &self,
        username: &str,
        address: &str,
        at: Timestamp,
    ) -> Result<i64>;
    /// Removes one recorded attempt (it succeeded).
    async fn forget_login_failure(&self, id: i64) -> Result<()>;
    /// Accepts TOTP time step `step` for an account once: false when that
    /// step or a later one was already used.
    async fn use_totp_step(&self, user: i64, step: u64) -> Result<bool>;
    /// Failed sign-ins since `since`: (for this account, from this address).
    async fn login_failures(
        &self,
        username: &str,
        address: &str,
        since: Timestamp,
    ) -> Result<(u64, u64)>;
    async fn clear_login_failures(&self, username: &str) -> Result<()>;
    /// Audit rows newest first, at most `query.limit`; for `Only`, each
    /// site's rows come from its own index range (`audit_log(site_id,
    /// id)`), merged, so a page costs the same whatever the log's size.
    async fn audit_entries(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>>;
    /// Audit rows about one target (a device id, "flag 3", …), newest first.
    async fn audit_for_target(&self, target: &str, limit: usize) -> Result<Vec<AuditRecord>>;
    async fn device_page(&self, query: &DeviceQuery) -> Result<Vec<DeviceRecord>>;
    /// Aggregate figures for the dashboard; `days` are the local dates to
    /// count devices in use on, oldest first.
    async fn dashboard(
        &self,
        sites: Option<&[SiteId]>,
        days: &[jiff::civil::Date],
        now: Timestamp,
    ) -> Result<DashboardFigures>;
}

/// What the dashboard shows for a set of sites.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DashboardFigures {
    pub devices: u64,
    pub online: u64,
    /// Devices by their activity verdict (devices never evaluated are not
    /// counted).
    pub compliance: Vec<(ActivityStatus, u64)>,
    /// Active flags (open, disable approved, disabled) by kind.
    pub flags: Vec<(String, u64)>,
    /// Open incidents by severity.
    pub incidents: Vec<(i64, u64)>,
    /// Devices with any logged-in time on each of the days asked for.
    pub daily_active: Vec<u64>,
}
