//! Storage behind one interface shaped by what callers need. SQLite is the
//! embedded default (`sqlite`); a PostgreSQL backend implements the same trait
//! with its own SQL and `migrations/postgres/`, and no caller changes.
//!
//! Guarantee: `record_batch` commits the whole batch in one transaction
//! before returning, so a caller that acks after it returns never acks an
//! event that is not durable.

use async_trait::async_trait;
use jiff::Timestamp;

use crate::model::{
    BatchOutcome, DeviceFacts, DeviceId, DeviceRecord, EnrollmentSecretInfo, Event, OutboxHealth,
    SecretRejection, Site, SiteId,
};

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
}

/// A device as the telemetry stream needs it.
#[derive(Clone, Debug)]
pub struct StreamDevice {
    pub id: DeviceId,
    pub site: SiteId,
    pub last_seq: u64,
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
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub detail: &'a str,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    // sites
    async fn create_site(&self, name: &str, timezone: &str, at: Timestamp) -> Result<Site>;
    async fn site_by_name(&self, name: &str) -> Result<Option<Site>>;

    // enrolment secrets
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

    // devices
    /// The device already enrolled for this machine id (or, failing that,
    /// serial number), so re-enrolment keeps its id.
    async fn device_for_machine(&self, machine_id: &str, serial: &str) -> Result<Option<DeviceId>>;
    /// Creates the device or, if it exists, replaces its certificate, site
    /// and facts. Returns true when it was a re-enrolment.
    async fn save_enrollment(&self, enrollment: Enrollment) -> Result<bool>;
    /// The device whose current client certificate has this SHA-256.
    async fn device_by_certificate(&self, cert_sha256: &str) -> Result<Option<StreamDevice>>;
    async fn record_hello(
        &self,
        device: &DeviceId,
        heartbeat_interval_secs: u32,
        at: Timestamp,
    ) -> Result<()>;
    /// Stores the events the collector does not hold yet, in one transaction.
    async fn record_batch(
        &self,
        device: &DeviceId,
        events: &[Event],
        received_at: Timestamp,
    ) -> Result<BatchOutcome>;
    async fn list_devices(&self, site: Option<SiteId>) -> Result<Vec<DeviceRecord>>;
    async fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>>;
    /// The sum of the outbox reports a device's agent sent.
    async fn outbox_health(&self, device: &DeviceId) -> Result<OutboxHealth>;
    /// Events of a device in sequence order, as (seq, kind) pairs.
    async fn event_kinds(&self, device: &DeviceId) -> Result<Vec<(u64, String)>>;

    // console accounts and audit
    async fn create_console_user(
        &self,
        username: &str,
        password_hash: &str,
        role: &str,
        site: Option<SiteId>,
        at: Timestamp,
    ) -> Result<()>;
    async fn append_audit(&self, entry: AuditEntry<'_>) -> Result<()>;
}
