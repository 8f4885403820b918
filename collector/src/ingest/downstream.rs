//! What the collector sends down agents' streams besides acks: commands
//! (disable, enable) and the device's compliance state, to agents connected
//! to this instance.

use hallmonitor_proto::v1;
use jiff::Timestamp;
use tokio::sync::mpsc;

use super::Outbound;
use super::wire::{command_to_wire, wire_timestamp};
use crate::config::CollectorConfig;
use crate::model::{CommandRecord, DeviceId};
use crate::store::{DeviceFilter, Store};

/// The agents connected to this collector instance, so commands and state
/// reach them at once.
#[derive(Default)]
pub struct Streams {
    /// Wakes the notifier when this instance opened flags, so messages go
    /// out at once rather than at its next poll.
    pub notifier: std::sync::Arc<tokio::sync::Notify>,
    next: std::sync::atomic::AtomicU64,
    open: std::sync::Mutex<std::collections::HashMap<DeviceId, (u64, mpsc::Sender<Outbound>)>>,
}

impl Streams {
    pub(super) fn register(&self, device: &DeviceId, tx: mpsc::Sender<Outbound>) -> u64 {
        let token = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().insert(device.clone(), (token, tx));
        token
    }

    pub(super) fn unregister(&self, device: &DeviceId, token: u64) {
        let mut open = self.lock();
        // A newer stream of the same device may have replaced this one.
        if open.get(device).is_some_and(|(t, _)| *t == token) {
            open.remove(device);
        }
    }

    fn sender(&self, device: &DeviceId) -> Option<mpsc::Sender<Outbound>> {
        self.lock().get(device).map(|(_, tx)| tx.clone())
    }

    pub fn connected(&self) -> Vec<DeviceId> {
        self.lock().keys().cloned().collect()
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<DeviceId, (u64, mpsc::Sender<Outbound>)>>
    {
        // A panic while holding this lock leaves a plain map behind.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a message to a connected agent; false when it is not
    /// connected here (or its stream is full and closing).
    pub async fn send(&self, device: &DeviceId, message: v1::CollectorMessage) -> bool {
        match self.sender(device) {
            Some(tx) => tx.send(Ok(message)).await.is_ok(),
            None => false,
        }
    }
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
/// check`: re-evaluated now, so it is current.
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
    Ok(Some(v1::CollectorMessage {
        body: Some(v1::collector_message::Body::State(v1::DeviceState {
            as_of: Some(wire_timestamp(now)),
            compliance_json: json,
            lock_stale_mfa_sessions: lock,
        })),
    }))
}
