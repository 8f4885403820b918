//! Which suspicious-activity policy is in force on this device, and getting
//! it to the session helpers. Parsing and matching live in the shared
//! `hallmonitor-policy` crate; this module owns where a policy comes from.
//!
//! Precedence: the local override file (`[capture] policy_override`, for a
//! technician testing a change on one device) when it exists and parses;
//! otherwise the site's policy as the collector last sent it (versioned,
//! kept in the outbox's state table so it survives restarts); otherwise the
//! project's default. A policy that fails to parse — a broken edit of the
//! override, a corrupt update — is logged with file, line and reason and
//! the last good one stays in force.
//!
//! Helpers learn the policy, whether their user counts as staff (rule
//! scope) and their directory groups (rule and category groups) through
//! `PolicyHub::subscribe`; staff are the accounts matching `[capture]
//! staff_accounts` and the staff accounts the collector's last device state
//! named. Groups come from the same device state, which names only the
//! accounts that have used this device; they are kept in the state table,
//! so the last ones received hold after a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use hallmonitor_capture_protocol::Origin;
pub use hallmonitor_policy::{DEFAULT_POLICY, Policy, PolicyError, User, UserKind};
use hallmonitor_proto::v1;
use hallmonitor_report::ComplianceReport;
use tokio::sync::watch;

use crate::outbox::Outbox;
use crate::state::{SitePolicy, State};

/// A policy document and its version, as helpers receive it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyText {
    pub version: u64,
    pub origin: Origin,
    /// The TOML; empty for the built-in default.
    pub toml: Arc<str>,
}

/// What helpers follow: the policy in force, who counts as staff, and how
/// long repeats are counted rather than captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InForce {
    pub policy: PolicyText,
    staff: Arc<BTreeSet<String>>,
    staff_patterns: Arc<Vec<glob::Pattern>>,
    groups: Arc<AccountGroups>,
    pub repeat_window_secs: u32,
}

/// Each account's directory groups (normalised names).
pub type AccountGroups = BTreeMap<String, Vec<String>>;

/// Most accounts a device state may name groups for, and the longest
/// account name kept: more is not a school laptop's use.
const MAX_GROUP_ACCOUNTS: usize = 1000;
const MAX_ACCOUNT_CHARS: usize = 256;

impl InForce {
    /// The directory groups `account` is in (none when unknown).
    pub fn user_groups(&self, account: &str) -> &[String] {
        self.groups.get(account).map_or(&[], Vec::as_slice)
    }

    pub fn user_kind(&self, account: &str) -> UserKind {
        if self.staff.contains(account) || self.staff_patterns.iter().any(|p| p.matches(account)) {
            UserKind::Staff
        } else {
            UserKind::Pupil
        }
    }

    /// The groups an acceptable-use audience may name for `account`: the
    /// built-in `staff` or `pupils`, and its directory groups.
    pub fn aup_groups(&self, account: &str) -> BTreeSet<String> {
        let staff = self.user_kind(account) == UserKind::Staff;
        let mut groups = hallmonitor_policy::aup::builtin_groups(staff);
        groups.extend(self.user_groups(account).iter().cloned());
        groups
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("policy version {version}: SHA-256 does not match its text")]
    Hash { version: u64 },
    #[error(transparent)]
    Invalid(#[from] PolicyError),
    #[error(transparent)]
    Outbox(#[from] crate::outbox::OutboxError),
}

#[derive(Default)]
struct Sources {
    site: Option<PolicyText>,
    local: Option<PolicyText>,
    staff: BTreeSet<String>,
    groups: AccountGroups,
}

/// The daemon's policy state, shared by the stream (site updates, staff
/// from device state), the override watcher and the helper connections.
pub struct PolicyHub {
    sources: Mutex<Sources>,
    staff_patterns: Arc<Vec<glob::Pattern>>,
    repeat_window_secs: u32,
    tx: watch::Sender<InForce>,
}

impl PolicyHub {
    /// The hub with the site policy kept from an earlier run, if any.
    pub async fn load(
        outbox: &Outbox,
        capture: &crate::config::CaptureConfig,
    ) -> anyhow::Result<PolicyHub> {
        let patterns = capture
            .staff_accounts
            .iter()
            .map(|p| {
                glob::Pattern::new(p)
                    .map_err(|e| anyhow::anyhow!("[capture] staff_accounts: '{p}': {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut sources = Sources::default();
        if let Some(SitePolicy {
            version,
            toml: text,
        }) = State::new(outbox).site_policy().await?
        {
            // Checked when it arrived; checked again in case the state
            // table was edited by hand.
            match parse_site(version, &text) {
                Ok(()) => {
                    sources.site = Some(PolicyText {
                        version,
                        origin: Origin::Site,
                        toml: text.into(),
                    })
                }
                Err(e) => {
                    tracing::error!(error = %e, "stored site policy unusable; using the default")
                }
            }
        }
        if let Some(json) = State::new(outbox).account_groups_json().await? {
            match serde_json::from_str::<AccountGroups>(&json) {
                Ok(groups) => sources.groups = bounded_groups(groups),
                Err(e) => {
                    tracing::error!(error = %e, "stored account groups unreadable; none until the collector sends them")
                }
            }
        }
        let staff_patterns = Arc::new(patterns);
        let repeat_window_secs = capture.repeat_window_secs.get();
        let first = in_force(&sources, &staff_patterns, repeat_window_secs);
        Ok(PolicyHub {
            sources: Mutex::new(sources),
            staff_patterns,
            repeat_window_secs,
            tx: watch::Sender::new(first),
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<InForce> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> InForce {
        self.tx.borrow().clone()
    }

    /// The site policy version this agent holds (0 = none), for the hello.
    pub fn site_version(&self) -> u64 {
        self.lock().site.as_ref().map_or(0, |p| p.version)
    }

    /// Applies a policy the collector sent: checked, kept, then in force
    /// (unless a local override is). On error nothing changes.
    pub async fn apply_site(
        &self,
        update: &v1::PolicyUpdate,
        outbox: &Outbox,
    ) -> Result<(), UpdateError> {
        if crate::tls::sha256_hex(update.policy_toml.as_bytes()) != update.sha256 {
            return Err(UpdateError::Hash {
                version: update.version,
            });
        }
        parse_site(update.version, &update.policy_toml)?;
        State::new(outbox)
            .set_site_policy(update.version, &update.policy_toml)
            .await?;
        self.change(|s| {
            s.site = Some(PolicyText {
                version: update.version,
                origin: Origin::Site,
                toml: update.policy_toml.as_str().into(),
            })
        });
        tracing::info!(version = update.version, "site policy applied");
        Ok(())
    }

    /// Staff accounts from the collector's device state (its 2FA pairs are
    /// exactly the staff accounts using this device).
    pub fn set_staff_from_compliance(&self, report: &ComplianceReport) {
        let staff: BTreeSet<String> = report.mfa_pairs().map(|p| p.account.clone()).collect();
        if self.lock().staff != staff {
            self.change(|s| s.staff = staff);
        }
    }

    /// The account groups from the collector's device state: checked
    /// (names normalised, bad ones dropped, sizes bounded), kept, then in
    /// force. Replaces what was held: an account it does not name has no
    /// groups.
    pub async fn apply_account_groups(
        &self,
        wire: &[v1::AccountGroups],
        outbox: &Outbox,
    ) -> Result<(), crate::outbox::OutboxError> {
        let groups = bounded_groups(
            wire.iter()
                .map(|a| (a.account.clone(), a.groups.clone()))
                .collect(),
        );
        if self.lock().groups == groups {
            return Ok(());
        }
        let json = serde_json::to_string(&groups).expect("plain data serialises");
        State::new(outbox).set_account_groups_json(&json).await?;
        tracing::info!(accounts = groups.len(), "account groups applied");
        self.change(|s| s.groups = groups);
        Ok(())
    }

    /// Reads the override file again: present and valid → in force;
    /// missing → the site's policy; invalid → logged, nothing changes.
    pub fn reload_override(&self, path: &Path) -> Result<(), PolicyError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.lock().local.is_some() {
                    tracing::info!(file = %path.display(), "local policy override removed");
                    self.change(|s| s.local = None);
                }
                return Ok(());
            }
            Err(e) => {
                return Err(PolicyError {
                    file: path.display().to_string(),
                    line: None,
                    message: e.to_string(),
                });
            }
        };
        if text.trim().is_empty() {
            // Most likely caught between an editor's truncate and write.
            return Err(PolicyError {
                file: path.display().to_string(),
                line: None,
                message: "the file is empty (delete it to use the site's policy)".into(),
            });
        }
        let policy = Policy::parse(&text, path)?;
        tracing::info!(file = %path.display(), version = policy.version, rules = policy.rules().len(), "local policy override in force");
        self.change(|s| {
            s.local = Some(PolicyText {
                version: policy.version,
                origin: Origin::LocalOverride,
                toml: text.into(),
            })
        });
        Ok(())
    }

    fn change(&self, f: impl FnOnce(&mut Sources)) {
        let mut sources = self.lock();
        f(&mut sources);
        let next = in_force(&sources, &self.staff_patterns, self.repeat_window_secs);
        self.tx.send_if_modified(|current| {
            let changed = *current != next;
            *current = next;
            changed
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sources> {
        // Plain data: a panic elsewhere cannot leave it half-changed.
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn parse_site(version: u64, text: &str) -> Result<(), PolicyError> {
    if text.is_empty() {
        // The site chose the project's default.
        return Ok(());
    }
    Policy::parse(text, Path::new(&format!("site policy version {version}"))).map(|_| ())
}

fn in_force(
    sources: &Sources,
    staff_patterns: &Arc<Vec<glob::Pattern>>,
    repeat_window_secs: u32,
) -> InForce {
    let policy = sources
        .local
        .clone()
        .or_else(|| sources.site.clone())
        .unwrap_or(PolicyText {
            version: 0,
            origin: Origin::BuiltIn,
            toml: "".into(),
        });
    InForce {
        policy,
        staff: Arc::new(sources.staff.clone()),
        staff_patterns: staff_patterns.clone(),
        groups: Arc::new(sources.groups.clone()),
        repeat_window_secs,
    }
}

/// Account groups as the daemon holds them, whatever arrived: group names
/// normalised as the policy compares them (invalid ones dropped, each once,
/// at most a rule's worth), accounts with a sane name and no more than
/// `MAX_GROUP_ACCOUNTS`.
fn bounded_groups(raw: AccountGroups) -> AccountGroups {
    raw.into_iter()
        .filter(|(account, _)| !account.is_empty() && account.chars().count() <= MAX_ACCOUNT_CHARS)
        .filter_map(|(account, names)| {
            let mut groups: Vec<String> = names
                .iter()
                .filter_map(|g| hallmonitor_policy::group_name(g).ok())
                .collect();
            groups.sort();
            groups.dedup();
            groups.truncate(hallmonitor_policy::MAX_GROUPS_PER_LIST);
            (!groups.is_empty()).then_some((account, groups))
        })
        .take(MAX_GROUP_ACCOUNTS)
        .collect()
}

/// Parses a policy text as the helpers do: empty is the project's default.
pub fn parse_text(text: &PolicyText) -> Result<Policy, PolicyError> {
    hallmonitor_capture_protocol::parse_policy(text.version, text.origin, &text.toml)
}

/// How long the override file must be left alone before it is read.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(200);

/// Follows the override file until `shutdown`: every change is reloaded
/// (editors that replace the file are seen: the folder is watched).
pub async fn watch_override(
    hub: Arc<PolicyHub>,
    path: PathBuf,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use notify::Watcher;
    let report = |result: Result<(), PolicyError>| {
        if let Err(e) = result {
            tracing::error!(error = %e, "policy not reloaded; the last good one stays in force");
        }
    };
    report(hub.reload_override(&path));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let name = path.file_name().map(|n| n.to_owned());
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        use notify::event::{AccessKind, AccessMode};
        let relevant = event.is_ok_and(|e| {
            // Writes, creations, renames and removals; never reads.
            let write = match e.kind {
                notify::EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                notify::EventKind::Access(_) => false,
                _ => true,
            };
            write && e.paths.iter().any(|p| p.file_name() == name.as_deref())
        });
        if relevant {
            let _ = tx.send(());
        }
    })
    .ok()
    .and_then(|mut w| {
        w.watch(path.parent()?, notify::RecursiveMode::NonRecursive)
            .ok()?;
        Some(w)
    });
    // Without a watch (the folder does not exist yet), look once a minute.
    let mut fallback = tokio::time::interval(std::time::Duration::from_secs(60));
    fallback.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    fallback.tick().await;
    loop {
        tokio::select! {
            Some(()) = rx.recv(), if watcher.is_some() => {
                // An edit is often several writes: read once they settle.
                loop {
                    tokio::select! {
                        more = rx.recv() => if more.is_none() { break },
                        _ = tokio::time::sleep(SETTLE) => break,
                    }
                }
            }
            _ = fallback.tick(), if watcher.is_none() => {}
            _ = shutdown.cancelled() => return,
        }
        report(hub.reload_override(&path));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hallmonitor_report::{MfaReport, MfaStatus};

    async fn hub(dir: &Path) -> (PolicyHub, Outbox) {
        let (outbox, _) = Outbox::open(dir, 1 << 20).await.unwrap();
        let capture = crate::config::CaptureConfig {
            staff_accounts: vec!["t.*".to_owned()],
            ..Default::default()
        };
        let hub = PolicyHub::load(&outbox, &capture).await.unwrap();
        (hub, outbox)
    }

    fn update(version: u64, text: &str) -> v1::PolicyUpdate {
        v1::PolicyUpdate {
            version,
            policy_toml: text.to_owned(),
            sha256: crate::tls::sha256_hex(text.as_bytes()),
        }
    }

    /// A device state naming one staff account's two-step sign-in pair.
    fn report_with_pair(account: &str, status: MfaStatus) -> ComplianceReport {
        use hallmonitor_report::{ActivityReport, ActivityStatus, DeviceCompliance, Enforcement};
        let now = jiff::Timestamp::now();
        ComplianceReport {
            schema: hallmonitor_report::SCHEMA.into(),
            as_of: now,
            compliant: true,
            devices: vec![DeviceCompliance {
                device_id: "d".into(),
                hostname: "lab-1".into(),
                site: "Cabot".into(),
                compliant: true,
                enforcement: Enforcement::Enabled,
                activity: ActivityReport {
                    status: ActivityStatus::Compliant,
                    used_minutes: 60,
                    required_minutes: 60,
                    window_days: 28,
                    window_start: now,
                    breach_at: None,
                    breach_local: None,
                    grace_until: None,
                    evaluated_at: now,
                },
                mfa: vec![MfaReport {
                    account: account.into(),
                    status,
                    last_mfa: None,
                    expires_at: None,
                }],
                flags: Vec::new(),
            }],
        }
    }

    const SITE: &str =
        "[[rules]]\nid = \"r\"\ncategory = \"c\"\nseverity = 2\nphrases = [\"alpha bravo\"]\n";

    #[tokio::test]
    async fn site_policy_is_checked_kept_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (hub, outbox) = hub(dir.path()).await;
        assert_eq!(hub.current().policy.origin, Origin::BuiltIn);
        let mut bad_hash = update(3, SITE);
        bad_hash.sha256 = "00".into();
        assert!(matches!(
            hub.apply_site(&bad_hash, &outbox).await,
            Err(UpdateError::Hash { .. })
        ));
        let err = hub
            .apply_site(&update(3, "[[rules]]\nid = 1\n"), &outbox)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("site policy version 3: line 2"), "{err}");
        assert_eq!(hub.site_version(), 0, "nothing changed");
        hub.apply_site(&update(3, SITE), &outbox).await.unwrap();
        assert_eq!(hub.site_version(), 3);
        assert_eq!(hub.current().policy.origin, Origin::Site);
        outbox.close().await;
        drop(outbox);

        let (again, _outbox) = self::hub(dir.path()).await;
        assert_eq!(again.site_version(), 3, "kept across restarts");
        assert_eq!(&*again.current().policy.toml, SITE);
    }

    #[tokio::test]
    async fn a_local_override_wins_and_a_broken_edit_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let (hub, outbox) = hub(dir.path()).await;
        hub.apply_site(&update(3, SITE), &outbox).await.unwrap();
        let path = dir.path().join("policy.toml");
        hub.reload_override(&path).unwrap();
        assert_eq!(hub.current().policy.origin, Origin::Site, "no file yet");
        std::fs::write(&path, SITE.replace("alpha bravo", "charlie")).unwrap();
        hub.reload_override(&path).unwrap();
        assert_eq!(hub.current().policy.origin, Origin::LocalOverride);
        std::fs::write(&path, "[[rules]]\nid = \"r\"\nseverity = \"high\"\n").unwrap();
        let err = hub.reload_override(&path).unwrap_err().to_string();
        assert!(err.contains("policy.toml: line 3"), "{err}");
        let kept = parse_text(&hub.current().policy).unwrap();
        let mut buffer = String::new();
        assert_eq!(
            kept.matches(
                "charlie",
                User::without_groups(UserKind::Pupil),
                &mut buffer
            )
            .len(),
            1
        );
        std::fs::remove_file(&path).unwrap();
        hub.reload_override(&path).unwrap();
        assert_eq!(hub.current().policy.origin, Origin::Site, "removed");
    }

    #[tokio::test]
    async fn staff_come_from_patterns_and_the_collectors_state() {
        let dir = tempfile::tempdir().unwrap();
        let (hub, _outbox) = hub(dir.path()).await;
        let mut changes = hub.subscribe();
        assert_eq!(hub.current().user_kind("t.smith"), UserKind::Staff);
        assert_eq!(hub.current().user_kind("pupil7"), UserKind::Pupil);
        hub.set_staff_from_compliance(&report_with_pair("head", MfaStatus::Fresh));
        assert!(changes.has_changed().unwrap());
        assert_eq!(
            changes.borrow_and_update().user_kind("head"),
            UserKind::Staff
        );
        hub.set_staff_from_compliance(&report_with_pair("head", MfaStatus::Stale));
        assert!(!changes.has_changed().unwrap(), "same staff: no change");
    }

    fn wire_groups(rows: &[(&str, &[&str])]) -> Vec<v1::AccountGroups> {
        rows.iter()
            .map(|(account, groups)| v1::AccountGroups {
                account: (*account).to_owned(),
                groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            })
            .collect()
    }

    #[tokio::test]
    async fn account_groups_are_checked_kept_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (hub, outbox) = hub(dir.path()).await;
        let mut changes = hub.subscribe();
        assert!(hub.current().user_groups("pupil7").is_empty());
        let long_account = "a".repeat(300);
        let sent = wire_groups(&[
            ("pupil7", &["Year 7", "sen", "year-7", "bad;name", ""]),
            ("pupil8", &["year 8"]),
            ("", &["year-9"]),
            (&long_account, &["year-9"]),
            ("nogroups", &["!!"]),
        ]);
        hub.apply_account_groups(&sent, &outbox).await.unwrap();
        assert!(changes.has_changed().unwrap());
        let in_force = changes.borrow_and_update().clone();
        assert_eq!(
            in_force.user_groups("pupil7"),
            ["sen", "year-7"],
            "normalised, each once, bad ones dropped"
        );
        assert_eq!(in_force.user_groups("pupil8"), ["year-8"]);
        assert!(in_force.user_groups("nogroups").is_empty());
        assert!(in_force.user_groups(&long_account).is_empty(), "bounded");
        hub.apply_account_groups(&sent, &outbox).await.unwrap();
        assert!(!changes.has_changed().unwrap(), "same groups: no change");
        outbox.close().await;
        drop(outbox);

        let (again, outbox) = self::hub(dir.path()).await;
        assert_eq!(
            again.current().user_groups("pupil7"),
            ["sen", "year-7"],
            "kept across restarts"
        );
        again
            .apply_account_groups(&wire_groups(&[("pupil8", &["year-8"])]), &outbox)
            .await
            .unwrap();
        assert!(
            again.current().user_groups("pupil7").is_empty(),
            "replaced, not merged"
        );
        let many: Vec<(String, Vec<String>)> = (0..1500)
            .map(|n| (format!("u{n}"), vec!["year-7".to_owned()]))
            .collect();
        let many: Vec<v1::AccountGroups> = many
            .into_iter()
            .map(|(account, groups)| v1::AccountGroups { account, groups })
            .collect();
        again.apply_account_groups(&many, &outbox).await.unwrap();
        assert_eq!(again.current().groups.len(), MAX_GROUP_ACCOUNTS);
    }
}
