//! What the collector sends down agents' streams besides acks: commands
//! (disable, enable), the device's compliance state and the site's
//! suspicious-activity policy, to agents connected to this instance.

use hallmonitor_proto::v1;
use jiff::Timestamp;
use tokio::sync::mpsc;

use super::Outbound;
use super::wire::{command_to_wire, wire_timestamp};
use crate::config::CollectorConfig;
use crate::model::{CommandRecord, DeviceId, SiteId};
use crate::store::{DeviceFilter, SitePolicy, Store};

/// The agents connected to this collector instance, so commands and state
/// reach them at once.
#[derive(Default)]
pub struct Streams {
    /// Wakes the notifier when this instance opened flags, so messages go
    /// out at once rather than at its next poll.
    pub notifier: std::sync::Arc<tokio::sync::Notify>,
    next: std::sync::atomic::AtomicU64,
    open: std::sync::Mutex<std::collections::HashMap<DeviceId, Connected>>,
    /// Evidence bytes each device added today, per band (severity 4-5 or
    /// not): (UTC day number, bytes).
    evidence_today: std::sync::Mutex<std::collections::HashMap<(DeviceId, bool), (i64, u64)>>,
}

/// One agent connected to this instance.
struct Connected {
    token: u64,
    tx: mpsc::Sender<Outbound>,
    site: SiteId,
    /// The SHA-256 of the certificate the stream was opened with.
    cert_sha256: String,
    /// Ends the stream with this status (taken once).
    close: Option<tokio::sync::oneshot::Sender<tonic::Status>>,
    /// The site policy version the agent holds, or was last sent.
    policy_version: u64,
    /// The acceptable-use policy version the agent holds, or was last sent.
    aup_version: u64,
}

impl Connected {
    fn close(&mut self, status: tonic::Status) {
        if let Some(close) = self.close.take() {
            let _ = close.send(status);
        }
    }
}

/// What a stream session gets back from `Streams::register`.
pub(super) struct Registration {
    pub token: u64,
    /// Resolves when the stream must end (certificate replaced, device
    /// revoked, or a newer stream of the same device).
    pub closed: tokio::sync::oneshot::Receiver<tonic::Status>,
}

impl Streams {
    /// Counts `bytes` of evidence for `device` on the UTC day of `at`, in
    /// the band of serious (severity 4-5) captures or of the others; false
    /// (nothing counted) when that would pass `limit` bytes in the band (0:
    /// no limit). Each band has its own budget, so a flood of forged minor
    /// captures cannot strip the images from the serious ones. Kept per
    /// instance: a bound on the disk, not an account.
    pub(super) fn take_evidence_budget(
        &self,
        device: &DeviceId,
        serious: bool,
        bytes: u64,
        at: Timestamp,
        limit: u64,
    ) -> bool {
        if limit == 0 {
            return true;
        }
        let day = at.as_second().div_euclid(86_400);
        let mut today = self
            .evidence_today
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Yesterday's counts go as a new day begins.
        if today.values().any(|(d, _)| *d != day) {
            today.retain(|_, (d, _)| *d == day);
        }
        let (_, used) = today.entry((device.clone(), serious)).or_insert((day, 0));
        if used.saturating_add(bytes) > limit {
            return false;
        }
        *used += bytes;
        true
    }

    /// Registers a device's stream; an older stream of the same device is
    /// closed (one stream per device).
    pub(super) fn register(
        &self,
        device: &DeviceId,
        site: SiteId,
        cert_sha256: &str,
        tx: mpsc::Sender<Outbound>,
    ) -> Registration {
        let token = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (close, closed) = tokio::sync::oneshot::channel();
        let connected = Connected {
            token,
            tx,
            site,
            cert_sha256: cert_sha256.to_owned(),
            close: Some(close),
            policy_version: 0,
            aup_version: 0,
        };
        if let Some(mut older) = self.lock().insert(device.clone(), connected) {
            tracing::info!(device_id = %device, "a newer stream of this device replaces the open one");
            older.close(tonic::Status::aborted(
                "a newer stream of this device replaced this one",
            ));
        }
        Registration { token, closed }
    }

    /// Closes the stream of each changed device whose certificate is no
    /// longer current or which is no longer active.
    fn close_invalid(&self, changes: &[crate::store::IdentityChange]) -> usize {
        let mut open = self.lock();
        let mut closed = 0;
        for change in changes {
            let Some(connected) = open.get_mut(&change.device) else {
                continue;
            };
            let status = if change.status != crate::model::DeviceStatus::Active {
                tonic::Status::permission_denied(format!(
                    "device {} is {}: {}",
                    change.device,
                    change.status.as_str(),
                    change.status_reason
                ))
            } else if connected.cert_sha256 != change.cert_sha256 {
                tonic::Status::unauthenticated(
                    "this certificate was replaced by a re-enrolment; it is no longer accepted",
                )
            } else {
                continue;
            };
            tracing::warn!(device_id = %change.device, reason = %status.message(), "closing the device's open stream");
            connected.close(status);
            open.remove(&change.device);
            closed += 1;
        }
        closed
    }

    /// Records the policy version an agent holds (its hello) or was sent.
    pub(super) fn set_policy_version(&self, device: &DeviceId, version: u64) {
        if let Some(connected) = self.lock().get_mut(device) {
            connected.policy_version = version;
        }
    }

    /// Records the AUP version an agent holds (its hello) or was sent.
    pub(super) fn set_aup_version(&self, device: &DeviceId, version: u64) {
        if let Some(connected) = self.lock().get_mut(device) {
            connected.aup_version = version;
        }
    }

    /// (device, site, AUP version held) of every agent connected here.
    fn aup_holders(&self) -> Vec<(DeviceId, SiteId, u64)> {
        self.lock()
            .iter()
            .map(|(id, c)| (id.clone(), c.site, c.aup_version))
            .collect()
    }

    /// (device, site, policy version held) of every agent connected here.
    fn policy_holders(&self) -> Vec<(DeviceId, SiteId, u64)> {
        self.lock()
            .iter()
            .map(|(id, c)| (id.clone(), c.site, c.policy_version))
            .collect()
    }

    pub(super) fn unregister(&self, device: &DeviceId, token: u64) {
        let mut open = self.lock();
        // A newer stream of the same device may have replaced this one.
        if open.get(device).is_some_and(|c| c.token == token) {
            open.remove(device);
        }
    }

    fn sender(&self, device: &DeviceId) -> Option<mpsc::Sender<Outbound>> {
        self.lock().get(device).map(|c| c.tx.clone())
    }

    pub fn connected(&self) -> Vec<DeviceId> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<DeviceId, Connected>> {
        // A panic while holding this lock leaves a plain map behind.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a message to a connected agent without waiting; false when it
    /// is not connected here. An agent that has not read the last 64
    /// messages is too slow to keep: its stream is closed (it reconnects
    /// and gets what is pending then), so one stuck device never holds up
    /// the rules loop.
    pub async fn send(&self, device: &DeviceId, message: v1::CollectorMessage) -> bool {
        let Some(tx) = self.sender(device) else {
            return false;
        };
        match tx.try_send(Ok(message)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(_)) => {
                let mut open = self.lock();
                if let Some(connected) = open.get_mut(device) {
                    tracing::warn!(device_id = %device, "agent not reading its stream; closing it");
                    connected.close(tonic::Status::resource_exhausted(
                        "the agent did not read the collector's messages; reconnect",
                    ));
                    open.remove(device);
                }
                false
            }
        }
    }
}

/// Closes the streams of devices whose certificate was replaced or which
/// were revoked since `watermark` (by this instance, the CLI or another
/// instance), and moves the watermark on. Changes are read again for a
/// little while, so one committed in the same millisecond as the last
/// read is not missed (closing is idempotent).
pub async fn close_superseded_streams(
    store: &dyn Store,
    streams: &Streams,
    watermark: &mut Timestamp,
) -> crate::store::Result<usize> {
    let since = *watermark - jiff::SignedDuration::from_secs(2);
    let changes = store.identity_changes_since(since).await?;
    if let Some(last) = changes.last() {
        *watermark = (*watermark).max(last.at);
    }
    Ok(streams.close_invalid(&changes))
}

/// Sends every command not sent yet to its agent, if connected here.
pub async fn dispatch_commands(store: &dyn Store, streams: &Streams) -> crate::store::Result<()> {
    for command in store.unsent_commands().await? {
        if streams
            .send(&command.device_id, command_message(&command))
            .await
        {
            store
                .mark_command_sent(&command.id, Timestamp::now())
                .await?;
            tracing::info!(device_id = %command.device_id, command_id = %command.id, kind = command.kind.as_str(), "command sent");
        }
    }
    Ok(())
}

/// Sends each connected agent (or just `only`) its site's newest policy
/// when it holds another version. An agent confirms with a new hello.
pub async fn dispatch_policies(
    store: &dyn Store,
    streams: &Streams,
    only: Option<&DeviceId>,
) -> crate::store::Result<()> {
    let current = store.current_policy_versions().await?;
    let mut policies: std::collections::HashMap<SiteId, SitePolicy> = Default::default();
    for (device, site, version) in behind(streams.policy_holders(), current, only) {
        let policy = match policies.entry(site) {
            std::collections::hash_map::Entry::Occupied(known) => known.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                let Some(policy) = store.site_policy(site, Some(version)).await? else {
                    continue;
                };
                slot.insert(policy)
            }
        };
        if streams.send(&device, policy_message(policy)).await {
            streams.set_policy_version(&device, version);
            tracing::info!(device_id = %device, version, "policy sent");
        }
    }
    Ok(())
}

/// Sends each connected agent (or just `only`) its site's newest
/// acceptable-use policy when it holds another version, as
/// `dispatch_policies` does for the site policy.
pub async fn dispatch_aups(
    store: &dyn Store,
    streams: &Streams,
    only: Option<&DeviceId>,
) -> crate::store::Result<()> {
    let current = store.current_aup_versions().await?;
    let mut aups: std::collections::HashMap<SiteId, crate::store::SiteAup> = Default::default();
    for (device, site, version) in behind(streams.aup_holders(), current, only) {
        let aup = match aups.entry(site) {
            std::collections::hash_map::Entry::Occupied(known) => known.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                let Some(aup) = store.site_aup(site, Some(version)).await? else {
                    continue;
                };
                slot.insert(aup)
            }
        };
        let message = v1::CollectorMessage {
            body: Some(v1::collector_message::Body::Aup(v1::AupUpdate {
                version: aup.version,
                aup_toml: aup.toml.clone(),
                sha256: aup.sha256.clone(),
            })),
        };
        if streams.send(&device, message).await {
            streams.set_aup_version(&device, version);
            tracing::info!(device_id = %device, version, "acceptable-use policy sent");
        }
    }
    Ok(())
}

/// Of the connected agents (`holders`: device, site, version held; or
/// just `only`), those holding another version of a site document than
/// their site's newest (`current`: site, version), with that version.
fn behind(
    holders: Vec<(DeviceId, SiteId, u64)>,
    current: Vec<(SiteId, u64)>,
    only: Option<&DeviceId>,
) -> Vec<(DeviceId, SiteId, u64)> {
    let current: std::collections::HashMap<SiteId, u64> = current.into_iter().collect();
    holders
        .into_iter()
        .filter(|(device, _, _)| only.is_none_or(|d| d == device))
        .filter_map(|(device, site, held)| {
            let version = *current.get(&site)?;
            (held != version).then_some((device, site, version))
        })
        .collect()
}

fn policy_message(policy: &SitePolicy) -> v1::CollectorMessage {
    v1::CollectorMessage {
        body: Some(v1::collector_message::Body::Policy(v1::PolicyUpdate {
            version: policy.version,
            policy_toml: policy.toml.clone(),
            sha256: policy.sha256.clone(),
        })),
    }
}

pub(super) fn command_message(command: &CommandRecord) -> v1::CollectorMessage {
    v1::CollectorMessage {
        body: Some(v1::collector_message::Body::Command(v1::Command {
            command_id: command.id.clone(),
            kind: command_to_wire(command.kind) as i32,
            reason: command.reason.clone(),
            issued_at: Some(wire_timestamp(command.issued_at)),
        })),
    }
}

/// The device's compliance as the agent keeps it for `hallmonitor-agent
/// check`: re-evaluated now, so it is current; with the directory groups
/// of the accounts that have used the device (for group-scoped rules).
pub async fn device_state(
    store: &dyn Store,
    config: &CollectorConfig,
    device: &DeviceId,
) -> crate::store::Result<Option<v1::CollectorMessage>> {
    let filter = DeviceFilter::one(device.clone());
    let now = Timestamp::now();
    let report = crate::compliance::check(store, config, &filter, now).await?;
    if report.devices.is_empty() {
        return Ok(None);
    }
    let lock = config.lock_stale_sessions(&report.devices[0].site);
    let json = serde_json::to_string(&report).expect("reports serialise");
    let account_groups = store
        .account_groups_on_device(device)
        .await?
        .into_iter()
        .map(|(account, groups)| v1::AccountGroups { account, groups })
        .collect();
    Ok(Some(v1::CollectorMessage {
        body: Some(v1::collector_message::Body::State(v1::DeviceState {
            as_of: Some(wire_timestamp(now)),
            compliance_json: json,
            lock_stale_mfa_sessions: lock,
            account_groups,
        })),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_agents_holding_another_version_are_sent_the_newest() {
        let device = |n: &str| DeviceId::from_string(n.to_owned());
        let holders = vec![
            (device("behind"), SiteId(1), 2),
            (device("current"), SiteId(1), 3),
            (device("other-site"), SiteId(2), 0),
            (device("site-without-one"), SiteId(3), 0),
            // A site's newest may be lower than held (a restored database).
            (device("ahead"), SiteId(2), 9),
        ];
        let current = vec![(SiteId(1), 3), (SiteId(2), 1)];
        let names = |list: Vec<(DeviceId, SiteId, u64)>| -> Vec<(String, u64)> {
            list.into_iter()
                .map(|(d, _, v)| (d.as_str().to_owned(), v))
                .collect()
        };
        assert_eq!(
            names(behind(holders.clone(), current.clone(), None)),
            [
                ("behind".to_owned(), 3),
                ("other-site".to_owned(), 1),
                ("ahead".to_owned(), 1)
            ]
        );
        assert_eq!(
            names(behind(holders, current, Some(&device("current")))),
            []
        );
    }

    #[test]
    fn each_device_has_an_evidence_budget_per_day() {
        let streams = Streams::default();
        let (a, b) = (
            DeviceId::from_string("a".to_owned()),
            DeviceId::from_string("b".to_owned()),
        );
        let day = Timestamp::from_second(1_800_000_000).unwrap();
        let next_day = day + jiff::SignedDuration::from_hours(24);
        assert!(streams.take_evidence_budget(&a, false, 600, day, 1000));
        assert!(
            !streams.take_evidence_budget(&a, false, 600, day, 1000),
            "over"
        );
        assert!(
            streams.take_evidence_budget(&a, false, 400, day, 1000),
            "what is left"
        );
        assert!(
            streams.take_evidence_budget(&a, true, 1000, day, 1000),
            "the serious band has its own budget"
        );
        assert!(
            streams.take_evidence_budget(&b, false, 1000, day, 1000),
            "per device"
        );
        assert!(
            streams.take_evidence_budget(&a, false, 1000, next_day, 1000),
            "a new day"
        );
        assert!(
            streams.take_evidence_budget(&a, false, u64::MAX, day, 0),
            "0: no limit"
        );
    }
}
