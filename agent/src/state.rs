//! The daemon's persistent state: the `state` table of the outbox file, one
//! text value per key, kept across restarts. This module owns every key
//! and the format of its value (`key` names them all, with who writes and
//! who reads each); everyone else goes through `State`'s typed accessors,
//! built on the outbox's raw key/value methods. The outbox itself updates
//! its counters (evictions, quarantine, sequence check) inside its own
//! transactions, with the keys named here.
//!
//! Keys and formats are on disk: they never change, so an outbox an older
//! agent wrote reads the same (the tests below pin them). Instants are
//! RFC 3339 text (`Timestamp`'s `Display`), numbers decimal text, and an
//! unreadable value reads as absent, as it always has.
//!
//! Architecture invariant: `agent status` reads the daemon's state in one
//! statement (`State::status_snapshot`), so it never pairs one write's
//! `connection` with another's `last_error`.

use std::collections::HashMap;
use std::path::Path;

use jiff::Timestamp;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::authlog::follow::Source;
use crate::gaps::GapBook;
use crate::outbox::{Outbox, REPORT_CLASSES, Result};
use crate::sessions::Ledger;

/// Every key of the state table. Formats in each key's note.
pub mod key {
    /// The running daemon's pid, decimal; empty once it stopped. Written by
    /// `daemon` at start and stop, read by `status`.
    pub const DAEMON_PID: &str = "daemon_pid";
    /// When the daemon started. Written by `daemon`, read by `status` (the
    /// last write, when the producer never managed one).
    pub const DAEMON_STARTED_AT: &str = "daemon_started_at";
    /// The producer's last successful write (each heartbeat tick). Written
    /// by `heartbeat`, read by `status` (a stalled outbox: a full disk).
    pub const ALIVE_AT: &str = "daemon_alive_at";
    /// What the last daemon to start ran as: its version, the kernel's boot
    /// id (`/proc/sys/kernel/random/boot_id`) and the SHA-256 (hex) of the
    /// configuration file it read (empty: none). Written by `daemon` at
    /// start (the configuration's also by `signals` when it changes), read
    /// by `signals` at the next start.
    pub const AGENT_VERSION: &str = "agent_version";
    pub const BOOT_ID: &str = "daemon_boot_id";
    pub const CONFIG_SHA256: &str = "config_sha256";
    /// SHA-256 (hex) of the daemon's executable file as the last daemon
    /// to start read it. Written by `daemon` at start, read by `signals`.
    pub const EXECUTABLE_SHA256: &str = "executable_sha256";
    /// The stream's connection (`Connection`), since when, and the last
    /// error. Written together by `stream`, read together by `status`.
    pub const CONNECTION: &str = "connection";
    pub const CONNECTION_SINCE: &str = "connection_since";
    pub const LAST_ERROR: &str = "last_error";
    /// The last acknowledgement: when, and the last sequence number it
    /// covered (decimal). Written by `stream`, read by `status`.
    pub const LAST_ACK_AT: &str = "last_ack_at";
    pub const LAST_ACKED_SEQ: &str = "last_acked_seq";
    /// The collector's last device state: the `hallmonitor.compliance.v1`
    /// document as it was sent, when it arrived, and whether the site
    /// locks staff sessions with a stale two-step sign-in (`true` or
    /// `false`). Written by `stream`; read by `check` (document, arrival)
    /// and `sessions` (document, lock).
    pub const COMPLIANCE_JSON: &str = "compliance_json";
    pub const COMPLIANCE_RECEIVED_AT: &str = "compliance_received_at";
    pub const LOCK_STALE_MFA_SESSIONS: &str = "lock_stale_mfa_sessions";
    /// The site policy held: its version (decimal) and TOML. Written and
    /// read by `policy`; the version also by `status`.
    pub const SITE_POLICY_VERSION: &str = "site_policy_version";
    pub const SITE_POLICY_TOML: &str = "site_policy_toml";
    /// The site's acceptable-use policy held: its version (decimal) and
    /// TOML. Written and read by `aup`.
    pub const AUP_VERSION: &str = "aup_version";
    pub const AUP_TOML: &str = "aup_toml";
    /// The directory groups of the accounts used on this device, as the
    /// collector's last device state named them: a JSON object of account
    /// to group names. Written and read by `policy`.
    pub const ACCOUNT_GROUPS: &str = "account_groups";
    /// Whether pupils may log in as of the last command applied: `enabled`
    /// or `disabled`. Written by `enforce`; read by no code (the marker
    /// file is what counts), kept for a technician reading the file.
    pub const ENFORCEMENT: &str = "enforcement";
    /// Open sessions as last reported: JSON of `sessions::Ledger`. Written
    /// by `sessions`, read by `sessions` (at start) and `gaps`.
    pub const SESSIONS_LEDGER: &str = "sessions_ledger";
    /// Monitoring gaps: JSON of `gaps::GapBook`. Written and read by `gaps`.
    pub const MONITORING_GAPS: &str = "monitoring_gaps";
    /// The two-step sign-in source last read: `journal` or `files`; empty
    /// or absent from an agent before the journal. Written and read by
    /// `authlog::follow`.
    pub const AUTHLOG_SOURCE: &str = "authlog_source";
    /// Captures the daemon refused from session helpers, a decimal total.
    /// Written by `capture::intake`; read by it (at start), `status` and
    /// the outbox (reports).
    pub const CAPTURES_REFUSED: &str = "helper_captures_refused";
    /// Events moved to the quarantine table, a decimal total. Written by
    /// the outbox, read by it (reports) and `status`.
    pub const QUARANTINED: &str = "quarantined";
    /// Where a corrupt outbox file was moved. Written by the outbox when it
    /// replaces one, read by `status`.
    pub const CORRUPT_MOVED_TO: &str = "corrupt_moved_to";
    /// `1` once this outbox met the collector and its numbers were checked
    /// (`Outbox::raise_sequence_floor`). Written and read by the outbox.
    pub const SEQUENCE_VERIFIED: &str = "sequence_verified";

    /// The newest AUP version `account` answered (decimal). Written and
    /// read by `aup`: a version is asked once per account.
    pub fn aup_answered(account: &str) -> String {
        format!("aup_answered.{account}")
    }

    /// When the enforcer applied command `id` (an instant). Written and
    /// read by `enforce`: each command id is applied once.
    pub fn command(id: &str) -> String {
        format!("command.{id}")
    }

    /// Events of a report class (`outbox::REPORT_CLASSES`) evicted since
    /// the outbox was made, a decimal total. Written by the outbox, read by
    /// it (reports) and `status`.
    pub fn evicted(class: &str) -> String {
        format!("evicted.{class}")
    }

    /// The part of `evicted(class)` already put in an `OutboxReport`.
    /// Written and read by the outbox.
    pub fn evicted_reported(class: &str) -> String {
        format!("evicted_reported.{class}")
    }

    /// The part of another total (`QUARANTINED`, `CAPTURES_REFUSED`)
    /// already put in an `OutboxReport`. Written and read by the outbox.
    pub fn reported(total: &str) -> String {
        format!("reported.{total}")
    }

    /// The journal's cursor (`authlog:journal`, empty: from the start).
    /// Written and read by `authlog::follow`.
    pub const AUTHLOG_JOURNAL: &str = "authlog:journal";

    /// Where a text log was read up to: JSON of `authlog::Position`
    /// (empty: from the start). Written and read by `authlog::follow`.
    pub fn authlog_file(path: &std::path::Path) -> String {
        format!("authlog:{}", path.display())
    }
}

/// The stream's connection as `status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connection {
    Connecting,
    Connected,
    Disconnected,
    /// Revoked, or pending a technician's approval.
    Refused,
    /// The device's date is outside the collector's certificates.
    ClockWrong,
    Stopped,
}

impl Connection {
    pub fn as_str(self) -> &'static str {
        match self {
            Connection::Connecting => "connecting",
            Connection::Connected => "connected",
            Connection::Disconnected => "disconnected",
            Connection::Refused => "refused",
            Connection::ClockWrong => "clock_wrong",
            Connection::Stopped => "stopped",
        }
    }
}

/// A JSON value as the state table holds it.
#[derive(Debug)]
pub enum Stored<T> {
    Absent,
    Present(T),
    /// There, but not JSON of `T` (a hand edit, a damaged value).
    Unreadable(serde_json::Error),
}

impl<T: Default> Stored<T> {
    /// The value; the default when absent or unreadable.
    pub fn or_default(self) -> T {
        match self {
            Stored::Present(value) => value,
            Stored::Absent | Stored::Unreadable(_) => T::default(),
        }
    }
}

/// The site policy the agent holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SitePolicy {
    /// 0 when the stored version is unreadable.
    pub version: u64,
    pub toml: String,
}

/// What `status` reads of the daemon's state, in one statement.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusSnapshot {
    pub last_ack_at: Option<String>,
    pub last_acked_seq: Option<u64>,
    pub corrupt_moved_to: Option<String>,
    pub daemon_pid: Option<u32>,
    pub connection: Option<String>,
    pub connection_since: Option<String>,
    pub last_error: Option<String>,
    pub alive_at: Option<Timestamp>,
    pub daemon_started_at: Option<Timestamp>,
    pub quarantined: u64,
    pub captures_refused: u64,
    /// 0: none held.
    pub site_policy_version: u64,
}

/// Typed access to the state table of `outbox`.
#[derive(Clone, Copy)]
pub struct State<'a> {
    outbox: &'a Outbox,
}

impl<'a> State<'a> {
    pub fn new(outbox: &'a Outbox) -> State<'a> {
        State { outbox }
    }

    async fn text(&self, key: &str) -> Result<Option<String>> {
        self.outbox.state(key).await
    }

    async fn time(&self, key: &str) -> Result<Option<Timestamp>> {
        Ok(self.text(key).await?.and_then(|t| t.parse().ok()))
    }

    async fn number(&self, key: &str) -> Result<u64> {
        Ok(self
            .text(key)
            .await?
            .and_then(|n| n.parse().ok())
            .unwrap_or(0))
    }

    async fn json<T: DeserializeOwned>(&self, key: &str) -> Result<Stored<T>> {
        Ok(match self.text(key).await? {
            None => Stored::Absent,
            Some(json) => match serde_json::from_str(&json) {
                Ok(value) => Stored::Present(value),
                Err(e) => Stored::Unreadable(e),
            },
        })
    }

    async fn set_json(&self, key: &str, value: &impl Serialize) -> Result<()> {
        // Cannot fail: the types stored have string map keys and plain
        // fields only.
        let json = serde_json::to_string(value).expect("state values serialise");
        self.outbox.set_state(key, &json).await
    }

    // ------------------------------------------------------------ daemon

    /// The daemon started as `pid` at `at`.
    pub async fn record_daemon_start(&self, pid: u32, at: Timestamp) -> Result<()> {
        self.outbox
            .set_states(&[
                (key::DAEMON_PID, &pid.to_string()),
                (key::DAEMON_STARTED_AT, &at.to_string()),
            ])
            .await
    }

    /// How the previous daemon ran and ended, as it left the table.
    pub async fn previous_run(&self) -> Result<crate::signals::PreviousRun> {
        let keys = [
            key::DAEMON_PID,
            key::ALIVE_AT,
            key::AGENT_VERSION,
            key::BOOT_ID,
            key::CONFIG_SHA256,
            key::EXECUTABLE_SHA256,
        ];
        let mut values = self.outbox.states(&keys).await?;
        let mut take = |key: &str| values.remove(key);
        Ok(crate::signals::PreviousRun {
            left_running: take(key::DAEMON_PID).is_some_and(|pid| !pid.is_empty()),
            alive_at: take(key::ALIVE_AT).and_then(|t| t.parse().ok()),
            agent_version: take(key::AGENT_VERSION),
            boot_id: take(key::BOOT_ID),
            config_sha256: take(key::CONFIG_SHA256),
            executable_sha256: take(key::EXECUTABLE_SHA256),
        })
    }

    /// What this daemon runs as, for the next start to compare with.
    pub async fn record_run(&self, run: &crate::signals::ThisRun) -> Result<()> {
        self.outbox
            .set_states(&[
                (key::AGENT_VERSION, run.agent_version.as_str()),
                (key::BOOT_ID, run.boot_id.as_str()),
                (key::CONFIG_SHA256, run.config_sha256.as_str()),
                (key::EXECUTABLE_SHA256, run.executable_sha256.as_str()),
            ])
            .await
    }

    /// The configuration file changed under the running daemon (reported).
    pub async fn set_config_sha256(&self, sha256: &str) -> Result<()> {
        self.outbox.set_state(key::CONFIG_SHA256, sha256).await
    }

    /// The daemon is stopping.
    pub async fn record_daemon_stop(&self) -> Result<()> {
        self.outbox.set_state(key::DAEMON_PID, "").await
    }

    /// The producer wrote to the outbox at `at`.
    pub async fn set_alive_at(&self, at: Timestamp) -> Result<()> {
        self.outbox.set_state(key::ALIVE_AT, &at.to_string()).await
    }

    // ------------------------------------------------------------ stream

    /// The connection changed at `since`; `error` replaces the last error
    /// when there is one (the last error stays otherwise).
    pub async fn set_connection(
        &self,
        connection: Connection,
        since: Timestamp,
        error: Option<&str>,
    ) -> Result<()> {
        let since = since.to_string();
        let mut pairs = vec![
            (key::CONNECTION, connection.as_str()),
            (key::CONNECTION_SINCE, since.as_str()),
        ];
        if let Some(error) = error {
            pairs.push((key::LAST_ERROR, error));
        }
        self.outbox.set_states(&pairs).await
    }

    /// The collector acknowledged up to `seq` at `at`.
    pub async fn set_last_ack(&self, at: Timestamp, seq: u64) -> Result<()> {
        self.outbox
            .set_states(&[
                (key::LAST_ACK_AT, &at.to_string()),
                (key::LAST_ACKED_SEQ, &seq.to_string()),
            ])
            .await
    }

    /// The collector's device state, received at `at`.
    pub async fn set_device_state(
        &self,
        compliance_json: &str,
        at: Timestamp,
        lock_stale_mfa_sessions: bool,
    ) -> Result<()> {
        self.outbox
            .set_states(&[
                (key::COMPLIANCE_JSON, compliance_json),
                (key::COMPLIANCE_RECEIVED_AT, &at.to_string()),
                (
                    key::LOCK_STALE_MFA_SESSIONS,
                    if lock_stale_mfa_sessions {
                        "true"
                    } else {
                        "false"
                    },
                ),
            ])
            .await
    }

    /// The collector's last compliance report, as it sent it.
    pub async fn compliance_json(&self) -> Result<Option<String>> {
        self.text(key::COMPLIANCE_JSON).await
    }

    /// When the last compliance report arrived.
    pub async fn compliance_received_at(&self) -> Result<Option<Timestamp>> {
        self.time(key::COMPLIANCE_RECEIVED_AT).await
    }

    /// Whether the site locks staff sessions whose two-step sign-in is
    /// stale (false until the collector said so).
    pub async fn lock_stale_mfa_sessions(&self) -> Result<bool> {
        Ok(self.text(key::LOCK_STALE_MFA_SESSIONS).await?.as_deref() == Some("true"))
    }

    // ------------------------------------------------------------ policy

    /// The site policy held, when both its version and text are stored.
    pub async fn site_policy(&self) -> Result<Option<SitePolicy>> {
        let version = self.text(key::SITE_POLICY_VERSION).await?;
        let toml = self.text(key::SITE_POLICY_TOML).await?;
        Ok(match (version, toml) {
            (Some(version), Some(toml)) => Some(SitePolicy {
                version: version.parse().unwrap_or(0),
                toml,
            }),
            _ => None,
        })
    }

    pub async fn set_site_policy(&self, version: u64, toml: &str) -> Result<()> {
        self.outbox
            .set_states(&[
                (key::SITE_POLICY_VERSION, &version.to_string()),
                (key::SITE_POLICY_TOML, toml),
            ])
            .await
    }

    // --------------------------------------------------------------- aup

    /// The AUP held, when both its version and text are stored.
    pub async fn aup(&self) -> Result<Option<SitePolicy>> {
        let version = self.text(key::AUP_VERSION).await?;
        let toml = self.text(key::AUP_TOML).await?;
        Ok(match (version, toml) {
            (Some(version), Some(toml)) => Some(SitePolicy {
                version: version.parse().unwrap_or(0),
                toml,
            }),
            _ => None,
        })
    }

    pub async fn set_aup(&self, version: u64, toml: &str) -> Result<()> {
        self.outbox
            .set_states(&[
                (key::AUP_VERSION, &version.to_string()),
                (key::AUP_TOML, toml),
            ])
            .await
    }

    /// The newest AUP version `account` answered (0: none).
    pub async fn aup_answered(&self, account: &str) -> Result<u64> {
        self.number(&key::aup_answered(account)).await
    }

    pub async fn set_aup_answered(&self, account: &str, version: u64) -> Result<()> {
        self.outbox
            .set_state(&key::aup_answered(account), &version.to_string())
            .await
    }

    /// The account groups held, as JSON (see `key::ACCOUNT_GROUPS`).
    pub async fn account_groups_json(&self) -> Result<Option<String>> {
        self.text(key::ACCOUNT_GROUPS).await
    }

    pub async fn set_account_groups_json(&self, json: &str) -> Result<()> {
        self.outbox.set_state(key::ACCOUNT_GROUPS, json).await
    }

    // ----------------------------------------------------------- enforce

    /// Whether command `id` was applied already.
    pub async fn command_applied(&self, id: &str) -> Result<bool> {
        Ok(self.text(&key::command(id)).await?.is_some())
    }

    pub async fn record_command_applied(&self, id: &str, at: Timestamp) -> Result<()> {
        self.outbox
            .set_state(&key::command(id), &at.to_string())
            .await
    }

    pub async fn set_enforcement(&self, disabled: bool) -> Result<()> {
        let value = if disabled { "disabled" } else { "enabled" };
        self.outbox.set_state(key::ENFORCEMENT, value).await
    }

    /// `enabled` or `disabled` as the enforcer last recorded it.
    pub async fn enforcement(&self) -> Result<Option<String>> {
        self.text(key::ENFORCEMENT).await
    }

    // ------------------------------------------------- sessions and gaps

    pub async fn session_ledger(&self) -> Result<Stored<Ledger>> {
        self.json(key::SESSIONS_LEDGER).await
    }

    pub async fn set_session_ledger(&self, ledger: &Ledger) -> Result<()> {
        self.set_json(key::SESSIONS_LEDGER, ledger).await
    }

    pub async fn gap_book(&self) -> Result<Stored<GapBook>> {
        self.json(key::MONITORING_GAPS).await
    }

    pub async fn set_gap_book(&self, book: &GapBook) -> Result<()> {
        self.set_json(key::MONITORING_GAPS, book).await
    }

    // ----------------------------------------------------------- authlog

    /// The source last read; None when none was recorded, or by an agent
    /// from before the journal.
    pub async fn authlog_source(&self) -> Result<Option<Source>> {
        Ok(match self.text(key::AUTHLOG_SOURCE).await?.as_deref() {
            Some("journal") => Some(Source::Journal),
            Some("files") => Some(Source::Files),
            _ => None,
        })
    }

    pub async fn set_authlog_source(&self, source: Source) -> Result<()> {
        self.outbox
            .set_state(key::AUTHLOG_SOURCE, source.name())
            .await
    }

    /// Where a place was read up to (`key::AUTHLOG_JOURNAL` or
    /// `key::authlog_file`); empty: from its start.
    pub async fn authlog_mark(&self, mark_key: &str) -> Result<Option<String>> {
        self.text(mark_key).await
    }

    pub async fn set_authlog_mark(&self, mark_key: &str, mark: &str) -> Result<()> {
        self.outbox.set_state(mark_key, mark).await
    }

    /// Whether any of these places has a mark stored (one statement).
    pub async fn any_authlog_mark(&self, mark_keys: &[String]) -> Result<bool> {
        let keys: Vec<&str> = mark_keys.iter().map(String::as_str).collect();
        Ok(!self.outbox.states(&keys).await?.is_empty())
    }

    // ----------------------------------------------------------- capture

    /// Captures refused from session helpers since the outbox was made.
    pub async fn captures_refused(&self) -> Result<u64> {
        self.number(key::CAPTURES_REFUSED).await
    }

    pub async fn set_captures_refused(&self, total: u64) -> Result<()> {
        self.outbox
            .set_state(key::CAPTURES_REFUSED, &total.to_string())
            .await
    }

    // ------------------------------------------------------------ outbox

    /// A corrupt outbox file was moved to `path`.
    pub async fn set_corrupt_moved_to(&self, path: &Path) -> Result<()> {
        self.outbox
            .set_state(key::CORRUPT_MOVED_TO, &path.display().to_string())
            .await
    }

    /// Events quarantined since the outbox was made.
    pub async fn quarantined(&self) -> Result<u64> {
        self.number(key::QUARANTINED).await
    }

    /// Lifetime eviction counts per report class.
    pub async fn eviction_totals(&self) -> Result<Vec<(&'static str, u64)>> {
        let mut out = Vec::new();
        for class in REPORT_CLASSES {
            out.push((class, self.number(&key::evicted(class)).await?));
        }
        Ok(out)
    }

    // ------------------------------------------------------------ status

    /// What `status` shows of the daemon, read in one statement.
    pub async fn status_snapshot(&self) -> Result<StatusSnapshot> {
        let state: HashMap<String, String> = self
            .outbox
            .states(&[
                key::LAST_ACK_AT,
                key::LAST_ACKED_SEQ,
                key::CORRUPT_MOVED_TO,
                key::DAEMON_PID,
                key::CONNECTION,
                key::CONNECTION_SINCE,
                key::LAST_ERROR,
                key::ALIVE_AT,
                key::DAEMON_STARTED_AT,
                key::QUARANTINED,
                key::CAPTURES_REFUSED,
                key::SITE_POLICY_VERSION,
            ])
            .await?;
        let text = |key: &str| state.get(key).cloned();
        let number = |key: &str| state.get(key).and_then(|s| s.parse::<u64>().ok());
        let time = |key: &str| state.get(key).and_then(|t| t.parse::<Timestamp>().ok());
        Ok(StatusSnapshot {
            last_ack_at: text(key::LAST_ACK_AT),
            last_acked_seq: number(key::LAST_ACKED_SEQ),
            corrupt_moved_to: text(key::CORRUPT_MOVED_TO),
            daemon_pid: state.get(key::DAEMON_PID).and_then(|s| s.parse().ok()),
            connection: text(key::CONNECTION),
            connection_since: text(key::CONNECTION_SINCE),
            last_error: text(key::LAST_ERROR),
            alive_at: time(key::ALIVE_AT),
            daemon_started_at: time(key::DAEMON_STARTED_AT),
            quarantined: number(key::QUARANTINED).unwrap_or(0),
            captures_refused: number(key::CAPTURES_REFUSED).unwrap_or(0),
            site_policy_version: number(key::SITE_POLICY_VERSION).unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::DEFAULT_MAX_BYTES;

    /// The table as agents before this module wrote it. These keys and
    /// formats are on disk: they never change.
    const OLDER_AGENT: &[(&str, &str)] = &[
        ("daemon_pid", "4242"),
        ("daemon_started_at", "2026-03-02T08:00:00Z"),
        ("daemon_alive_at", "2026-03-02T09:59:00.25Z"),
        ("agent_version", "0.1.0"),
        ("daemon_boot_id", "9f1c3d8e-2b4a-4c1e-8f00-0123456789ab"),
        ("config_sha256", "5d41402abc4b2a76b9719d911017c592"),
        ("executable_sha256", "7d793037a0760186574b0282f2f435e7"),
        ("connection", "clock_wrong"),
        ("connection_since", "2026-03-02T08:00:01Z"),
        ("last_error", "certificate not valid yet"),
        ("last_ack_at", "2026-03-02T09:59:30Z"),
        ("last_acked_seq", "812"),
        (
            "compliance_json",
            r#"{"schema":"hallmonitor.compliance.v1"}"#,
        ),
        ("compliance_received_at", "2026-03-02T09:00:00Z"),
        ("lock_stale_mfa_sessions", "true"),
        ("site_policy_version", "3"),
        ("site_policy_toml", "extends = \"default\"\n"),
        ("command.c-9", "2026-03-01T12:00:00Z"),
        ("enforcement", "disabled"),
        ("sessions_ledger", "{}"),
        ("monitoring_gaps", r#"{"missing_since":{},"open":{}}"#),
        ("authlog_source", "files"),
        ("authlog:journal", "s=ab;i=1"),
        ("authlog:/var/log/auth.log", r#"{"offset":10}"#),
        ("helper_captures_refused", "5"),
        ("quarantined", "2"),
        (
            "corrupt_moved_to",
            "/data/outbox.db.corrupt-20260301T000000Z",
        ),
        ("evicted.telemetry", "40"),
        ("evicted.captures", "1"),
    ];

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    async fn outbox(dir: &Path) -> Outbox {
        Outbox::open(dir, DEFAULT_MAX_BYTES).await.unwrap().0
    }

    #[tokio::test]
    async fn what_an_older_agent_stored_reads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = outbox(dir.path()).await;
        outbox.set_states(OLDER_AGENT).await.unwrap();
        let state = State::new(&outbox);
        assert_eq!(
            state.status_snapshot().await.unwrap(),
            StatusSnapshot {
                last_ack_at: Some("2026-03-02T09:59:30Z".into()),
                last_acked_seq: Some(812),
                corrupt_moved_to: Some("/data/outbox.db.corrupt-20260301T000000Z".into()),
                daemon_pid: Some(4242),
                connection: Some("clock_wrong".into()),
                connection_since: Some("2026-03-02T08:00:01Z".into()),
                last_error: Some("certificate not valid yet".into()),
                alive_at: Some(at("2026-03-02T09:59:00.25Z")),
                daemon_started_at: Some(at("2026-03-02T08:00:00Z")),
                quarantined: 2,
                captures_refused: 5,
                site_policy_version: 3,
            }
        );
        assert_eq!(
            state.compliance_json().await.unwrap().as_deref(),
            Some(r#"{"schema":"hallmonitor.compliance.v1"}"#)
        );
        assert_eq!(
            state.compliance_received_at().await.unwrap(),
            Some(at("2026-03-02T09:00:00Z"))
        );
        assert!(state.lock_stale_mfa_sessions().await.unwrap());
        assert_eq!(
            state.site_policy().await.unwrap(),
            Some(SitePolicy {
                version: 3,
                toml: "extends = \"default\"\n".into()
            })
        );
        assert!(state.command_applied("c-9").await.unwrap());
        assert!(!state.command_applied("c-10").await.unwrap());
        assert_eq!(
            state.enforcement().await.unwrap().as_deref(),
            Some("disabled")
        );
        assert!(matches!(
            state.session_ledger().await.unwrap(),
            Stored::Present(ledger) if ledger.is_empty()
        ));
        assert!(matches!(
            state.gap_book().await.unwrap(),
            Stored::Present(book) if book == GapBook::default()
        ));
        assert_eq!(state.authlog_source().await.unwrap(), Some(Source::Files));
        assert_eq!(
            state
                .authlog_mark(key::AUTHLOG_JOURNAL)
                .await
                .unwrap()
                .as_deref(),
            Some("s=ab;i=1")
        );
        let text_log = key::authlog_file(Path::new("/var/log/auth.log"));
        assert_eq!(
            state.authlog_mark(&text_log).await.unwrap().as_deref(),
            Some(r#"{"offset":10}"#)
        );
        assert!(state.any_authlog_mark(&[text_log]).await.unwrap());
        assert_eq!(state.captures_refused().await.unwrap(), 5);
        assert_eq!(state.quarantined().await.unwrap(), 2);
        let evicted = state.eviction_totals().await.unwrap();
        assert_eq!(
            evicted.iter().filter(|(_, n)| *n > 0).collect::<Vec<_>>(),
            [&("telemetry", 40), &("captures", 1)]
        );
        assert_eq!(
            state.previous_run().await.unwrap(),
            crate::signals::PreviousRun {
                left_running: true,
                alive_at: Some(at("2026-03-02T09:59:00.25Z")),
                agent_version: Some("0.1.0".into()),
                boot_id: Some("9f1c3d8e-2b4a-4c1e-8f00-0123456789ab".into()),
                config_sha256: Some("5d41402abc4b2a76b9719d911017c592".into()),
                executable_sha256: Some("7d793037a0760186574b0282f2f435e7".into()),
            }
        );
    }

    #[tokio::test]
    async fn the_accessors_write_what_an_older_agent_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = outbox(dir.path()).await;
        let state = State::new(&outbox);
        state
            .record_daemon_start(4242, at("2026-03-02T08:00:00Z"))
            .await
            .unwrap();
        state
            .set_alive_at(at("2026-03-02T09:59:00.25Z"))
            .await
            .unwrap();
        state
            .set_connection(
                Connection::ClockWrong,
                at("2026-03-02T08:00:01Z"),
                Some("certificate not valid yet"),
            )
            .await
            .unwrap();
        state
            .set_last_ack(at("2026-03-02T09:59:30Z"), 812)
            .await
            .unwrap();
        state
            .set_device_state(
                r#"{"schema":"hallmonitor.compliance.v1"}"#,
                at("2026-03-02T09:00:00Z"),
                true,
            )
            .await
            .unwrap();
        state
            .set_site_policy(3, "extends = \"default\"\n")
            .await
            .unwrap();
        state
            .record_command_applied("c-9", at("2026-03-01T12:00:00Z"))
            .await
            .unwrap();
        state.set_enforcement(true).await.unwrap();
        state.set_session_ledger(&Ledger::new()).await.unwrap();
        state.set_authlog_source(Source::Files).await.unwrap();
        state
            .set_authlog_mark(key::AUTHLOG_JOURNAL, "s=ab;i=1")
            .await
            .unwrap();
        state
            .set_authlog_mark(
                &key::authlog_file(Path::new("/var/log/auth.log")),
                r#"{"offset":10}"#,
            )
            .await
            .unwrap();
        state.set_captures_refused(5).await.unwrap();
        state
            .record_run(&crate::signals::ThisRun {
                agent_version: "0.1.0".into(),
                boot_id: "9f1c3d8e-2b4a-4c1e-8f00-0123456789ab".into(),
                config_sha256: "5d41402abc4b2a76b9719d911017c592".into(),
                config_path: None,
                executable_sha256: "7d793037a0760186574b0282f2f435e7".into(),
            })
            .await
            .unwrap();
        state
            .set_corrupt_moved_to(Path::new("/data/outbox.db.corrupt-20260301T000000Z"))
            .await
            .unwrap();
        // Written by the outbox's own transactions, or JSON compared below.
        let elsewhere = [
            "quarantined",
            "evicted.telemetry",
            "evicted.captures",
            "monitoring_gaps",
        ];
        let keys: Vec<&str> = OLDER_AGENT.iter().map(|(k, _)| *k).collect();
        let stored = outbox.states(&keys).await.unwrap();
        for (key, value) in OLDER_AGENT {
            if elsewhere.contains(key) {
                continue;
            }
            assert_eq!(stored.get(*key).map(String::as_str), Some(*value), "{key}");
        }
        state.record_daemon_stop().await.unwrap();
        assert_eq!(
            outbox.state("daemon_pid").await.unwrap().as_deref(),
            Some("")
        );
        assert!(!state.previous_run().await.unwrap().left_running);
        state.set_enforcement(false).await.unwrap();
        assert_eq!(
            outbox.state("enforcement").await.unwrap().as_deref(),
            Some("enabled")
        );
        state
            .set_device_state("{}", Timestamp::now(), false)
            .await
            .unwrap();
        assert!(!state.lock_stale_mfa_sessions().await.unwrap());
    }

    #[tokio::test]
    async fn unreadable_json_is_told_apart_from_none() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = outbox(dir.path()).await;
        let state = State::new(&outbox);
        assert!(matches!(state.gap_book().await.unwrap(), Stored::Absent));
        outbox
            .set_state("sessions_ledger", "{not json")
            .await
            .unwrap();
        assert!(matches!(
            state.session_ledger().await.unwrap(),
            Stored::Unreadable(_)
        ));
        assert!(
            state
                .session_ledger()
                .await
                .unwrap()
                .or_default()
                .is_empty()
        );
        let book = GapBook::default();
        state.set_gap_book(&book).await.unwrap();
        assert!(matches!(
            state.gap_book().await.unwrap(),
            Stored::Present(read) if read == book
        ));
        // Only the two names a source has count.
        outbox.set_state("authlog_source", "").await.unwrap();
        assert_eq!(state.authlog_source().await.unwrap(), None);
        assert!(
            !state
                .any_authlog_mark(&[key::authlog_file(Path::new("/x"))])
                .await
                .unwrap()
        );
    }
}
