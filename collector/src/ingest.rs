//! `Telemetry.Stream`: one bidirectional stream per agent over mutual TLS.
//!
//! The device is identified by the SHA-256 of the client certificate it
//! presented (the TLS layer already checked that our CA signed it), never by
//! anything in the messages. Each batch is committed in one transaction and
//! only then acknowledged; events the collector already holds (same device
//! and sequence number) are acknowledged without being stored again.
//!
//! On shutdown a stream finishes the batch it is committing, acks it, and
//! ends, so the agent resends nothing that was committed.

use std::sync::Arc;

use hallmonitor_proto::v1;
use jiff::Timestamp;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::config::CollectorConfig;
use crate::model::{
    CommandKind, CommandRecord, DeviceFacts, DeviceId, Disk, Encryption, Event, EventBody, Seq,
    SessionKind, SessionRecord,
};
use crate::pki::sha256_hex;
use crate::store::{DeviceFilter, Store, StreamDevice};

pub struct TelemetryService {
    pub store: Arc<dyn Store>,
    pub config: Arc<CollectorConfig>,
    pub streams: Arc<Streams>,
    pub heartbeat_interval_secs: u32,
    pub max_batch_events: usize,
    pub shutdown: CancellationToken,
}

/// The agents connected to this collector instance, so commands and state
/// reach them at once.
#[derive(Default)]
pub struct Streams {
    next: std::sync::atomic::AtomicU64,
    open: std::sync::Mutex<std::collections::HashMap<DeviceId, (u64, mpsc::Sender<Outbound>)>>,
}

impl Streams {
    fn register(&self, device: &DeviceId, tx: mpsc::Sender<Outbound>) -> u64 {
        let token = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().insert(device.clone(), (token, tx));
        token
    }

    fn unregister(&self, device: &DeviceId, token: u64) {
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

fn command_message(command: &CommandRecord) -> v1::CollectorMessage {
    v1::CollectorMessage {
        body: Some(v1::collector_message::Body::Command(v1::Command {
            command_id: command.id.clone(),
            kind: command_to_wire(command.kind) as i32,
            reason: command.reason.clone(),
            issued_at: Some(wire_timestamp(command.issued_at)),
        })),
    }
}

fn wire_timestamp(t: Timestamp) -> hallmonitor_proto::Timestamp {
    hallmonitor_proto::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
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
    let json = serde_json::to_string(&report).expect("reports serialise");
    Ok(Some(v1::CollectorMessage {
        body: Some(v1::collector_message::Body::State(v1::DeviceState {
            as_of: Some(wire_timestamp(now)),
            compliance_json: json,
        })),
    }))
}

type Outbound = Result<v1::CollectorMessage, Status>;

#[tonic::async_trait]
impl v1::telemetry_server::Telemetry for TelemetryService {
    type StreamStream = ReceiverStream<Outbound>;

    async fn stream(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let fingerprint = sha256_hex(leaf.as_ref());
        let device = self
            .store
            .device_by_certificate(&fingerprint)
            .await
            .map_err(|e| unavailable(&e))?
            .ok_or_else(|| {
                tracing::warn!(cert_sha256 = %fingerprint, "stream refused: certificate not current");
                Status::unauthenticated("certificate is not current for any device (re-enrolled or removed)")
            })?;

        let (tx, rx) = mpsc::channel(64);
        tx.send(Ok(hello(&device, self.heartbeat_interval_secs)))
            .await
            .map_err(|_| Status::cancelled("agent went away"))?;
        // Whatever is waiting for this device: commands (again, until the
        // agent reports on them; it ignores ids it has applied) and state.
        let pending = self
            .store
            .pending_commands(&device.id)
            .await
            .map_err(|e| unavailable(&e))?;
        for command in &pending {
            let _ = tx.send(Ok(command_message(command))).await;
            let _ = self
                .store
                .mark_command_sent(&command.id, Timestamp::now())
                .await;
        }
        if let Ok(Some(state)) = device_state(&*self.store, &self.config, &device.id).await {
            let _ = tx.send(Ok(state)).await;
        }
        let token = self.streams.register(&device.id, tx.clone());
        let session = StreamSession {
            store: self.store.clone(),
            config: self.config.clone(),
            streams: self.streams.clone(),
            token,
            device,
            max_batch_events: self.max_batch_events,
            tx,
        };
        let inbound = request.into_inner();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move { session.run(inbound, shutdown).await });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn hello(device: &StreamDevice, heartbeat_interval_secs: u32) -> v1::CollectorMessage {
    v1::CollectorMessage {
        body: Some(v1::collector_message::Body::Hello(v1::ServerHello {
            device_id: device.id.to_string(),
            last_committed_seq: device.last_seq,
            heartbeat_interval_secs,
        })),
    }
}

struct StreamSession {
    store: Arc<dyn Store>,
    config: Arc<CollectorConfig>,
    streams: Arc<Streams>,
    token: u64,
    device: StreamDevice,
    max_batch_events: usize,
    tx: mpsc::Sender<Outbound>,
}

impl StreamSession {
    async fn run(self, mut inbound: Streaming<v1::AgentMessage>, shutdown: CancellationToken) {
        let device_id = self.device.id.clone();
        tracing::info!(device_id = %device_id, "agent connected");
        // Rules are re-evaluated shortly after sessions arrive, at most
        // every REEVALUATE_AFTER while a backlog drains.
        let mut reevaluate_at: Option<tokio::time::Instant> = None;
        loop {
            let message = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = sleep_until(reevaluate_at), if reevaluate_at.is_some() => {
                    reevaluate_at = None;
                    self.reevaluate().await;
                    continue;
                }
                message = inbound.message() => message,
            };
            let message = match message {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(status) => {
                    tracing::info!(device_id = %device_id, error = %status.message(), "stream ended with error");
                    let _ = self.tx.send(Err(status)).await;
                    break;
                }
            };
            // A batch in hand is committed and acked even if shutdown began.
            match self.handle(message).await {
                Ok(affects_rules) => {
                    if affects_rules && reevaluate_at.is_none() {
                        reevaluate_at = Some(tokio::time::Instant::now() + REEVALUATE_AFTER);
                    }
                }
                Err(status) => {
                    let _ = self.tx.send(Err(status)).await;
                    break;
                }
            }
        }
        if reevaluate_at.is_some() {
            self.reevaluate().await;
        }
        self.streams.unregister(&device_id, self.token);
        tracing::info!(device_id = %device_id, "agent disconnected");
    }

    /// Handles one message; true when it stored events that can change a
    /// rule's verdict.
    async fn handle(&self, message: v1::AgentMessage) -> Result<bool, Status> {
        match message.body {
            Some(v1::agent_message::Body::Hello(hello)) => {
                self.store
                    .record_hello(
                        &self.device.id,
                        hello.heartbeat_interval_secs,
                        Timestamp::now(),
                    )
                    .await
                    .map_err(|e| unavailable(&e))?;
                Ok(false)
            }
            Some(v1::agent_message::Body::Batch(batch)) => self.handle_batch(batch).await,
            None => Err(Status::invalid_argument("empty agent message")),
        }
    }

    async fn handle_batch(&self, batch: v1::EventBatch) -> Result<bool, Status> {
        if batch.events.len() > self.max_batch_events {
            return Err(Status::invalid_argument(format!(
                "batch {} has {} events; the most accepted is {}",
                batch.batch_id,
                batch.events.len(),
                self.max_batch_events
            )));
        }
        if batch.events.is_empty() {
            return Ok(false);
        }
        let received_at = Timestamp::now();
        let mut rejected = 0u32;
        let events: Vec<Event> = batch
            .events
            .into_iter()
            .map(|e| {
                let (event, ok) = event_from_wire(e, received_at);
                rejected += u32::from(!ok);
                event
            })
            .collect();
        if let Some(bad) = events
            .iter()
            .find(|e| e.seq.0 == 0 || e.seq.0 > i64::MAX as u64)
        {
            return Err(Status::invalid_argument(format!(
                "event {} has sequence number {}; it must be between 1 and 2^63-1",
                bad.event_id, bad.seq.0
            )));
        }
        let first_seq = events.iter().map(|e| e.seq.0).min().unwrap_or(0);
        let last_seq = events.iter().map(|e| e.seq.0).max().unwrap_or(0);
        let outcome = self
            .store
            .record_batch(&self.device.id, &events, received_at)
            .await
            .map_err(|e| unavailable(&e))?;
        tracing::debug!(
            device_id = %self.device.id, batch_id = batch.batch_id, first_seq, last_seq,
            stored = outcome.stored, duplicates = outcome.duplicates, "batch committed"
        );
        let ack = v1::CollectorMessage {
            body: Some(v1::collector_message::Body::Ack(v1::Ack {
                batch_id: batch.batch_id,
                first_seq,
                last_seq,
                stored: outcome.stored,
                duplicates: outcome.duplicates,
                rejected,
            })),
        };
        // If the agent is gone the ack is lost; it resends, and the
        // duplicates are recognised.
        let _ = self.tx.send(Ok(ack)).await;
        Ok(outcome.stored > 0 && events.iter().any(|e| e.body.affects_rules()))
    }

    /// New sessions or command results: re-evaluate this device now (after
    /// the ack, so the agent never waits for it) and tell the agent.
    async fn reevaluate(&self) {
        let filter = DeviceFilter::one(self.device.id.clone());
        let store = &*self.store;
        if let Err(e) =
            crate::rules::evaluate::refresh(store, &self.config, &filter, Timestamp::now()).await
        {
            tracing::error!(device_id = %self.device.id, error = %e, "re-evaluating device failed");
            return;
        }
        if let Err(e) = dispatch_commands(store, &self.streams).await {
            tracing::error!(error = %e, "dispatching commands failed");
        }
        if let Ok(Some(state)) = device_state(store, &self.config, &self.device.id).await {
            let _ = self.tx.send(Ok(state)).await;
        }
    }
}

/// How long after sessions arrive their device is re-evaluated.
const REEVALUATE_AFTER: std::time::Duration = std::time::Duration::from_millis(300);

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn unavailable(e: &dyn std::fmt::Display) -> Status {
    tracing::error!(error = %e, "storage error on telemetry stream");
    Status::unavailable("collector storage unavailable; retry later")
}

fn timestamp(t: Option<&hallmonitor_proto::Timestamp>) -> Option<Timestamp> {
    let t = t?;
    Timestamp::new(t.seconds, t.nanos).ok()
}

/// Converts one wire event. The flag is false when the event could not be
/// interpreted; it is then kept verbatim as `unrecognised` so nothing an
/// agent sent is lost.
pub fn event_from_wire(e: v1::Event, received_at: Timestamp) -> (Event, bool) {
    use v1::event::Body;
    let occurred_at = timestamp(e.occurred_at.as_ref());
    let mut ok = occurred_at.is_some();
    let body = match e.body {
        Some(Body::Heartbeat(h)) => EventBody::Heartbeat {
            uptime_secs: h.uptime_secs,
            interval_secs: h.interval_secs,
        },
        Some(Body::HeartbeatInterval(h)) => {
            match (timestamp(h.first.as_ref()), timestamp(h.last.as_ref())) {
                (Some(first), Some(last)) => EventBody::HeartbeatInterval {
                    first,
                    last,
                    interval_secs: h.interval_secs,
                    count: h.count,
                },
                _ => {
                    ok = false;
                    unrecognised("heartbeat_interval", "missing first or last")
                }
            }
        }
        Some(Body::Facts(f)) => EventBody::Facts(facts_from_wire(f)),
        Some(Body::OutboxReport(r)) => EventBody::OutboxReport {
            evicted_telemetry: r.evicted_telemetry,
            evicted_sessions: r.evicted_sessions,
            evicted_mfa: r.evicted_mfa,
            evicted_captures: r.evicted_captures,
            evicted_enforcement: r.evicted_enforcement,
            evicted_other: r.evicted_other,
            corrupt_file_moved_to: r.corrupt_file_moved_to,
        },
        // Kinds whose rules arrive with later work: kept, typed by name.
        Some(Body::Session(session)) => match session_from_wire(session) {
            Some(record) => EventBody::Session(record),
            None => {
                ok = false;
                unrecognised("session", "missing session id or start time")
            }
        },
        Some(Body::Enforcement(result)) => {
            match v1::CommandKind::try_from(result.kind)
                .ok()
                .and_then(command_from_wire)
            {
                Some(command) => EventBody::Enforcement {
                    command_id: result.command_id,
                    command,
                    ok: result.ok,
                    detail: result.detail,
                },
                None => {
                    ok = false;
                    unrecognised("enforcement", "unknown command kind")
                }
            }
        }
        Some(Body::Mfa(_)) => pending("mfa"),
        Some(Body::Capture(_)) => pending("capture"),
        Some(Body::FileAlert(_)) => pending("file_alert"),
        None => {
            ok = false;
            unrecognised("unknown", "no body this collector version understands")
        }
    };
    let event = Event {
        seq: Seq(e.seq),
        event_id: e.event_id,
        occurred_at: occurred_at.unwrap_or(received_at),
        body,
    };
    (event, ok)
}

fn pending(kind: &str) -> EventBody {
    EventBody::Other {
        name: kind.into(),
        json: serde_json::json!({ "kind": kind, "note": "not interpreted by this collector version" }),
    }
}

fn unrecognised(kind: &str, why: &str) -> EventBody {
    EventBody::Other {
        name: "unrecognised".into(),
        json: serde_json::json!({ "kind": kind, "error": why }),
    }
}

pub fn facts_from_wire(f: v1::DeviceFacts) -> DeviceFacts {
    DeviceFacts {
        hostname: f.hostname,
        os_name: f.os_name,
        os_version: f.os_version,
        kernel_version: f.kernel_version,
        machine_id: f.machine_id,
        serial_number: f.serial_number,
        uptime_secs: f.uptime_secs,
        cpu_model: f.cpu_model,
        cpu_cores: f.cpu_cores,
        memory_total_bytes: f.memory_total_bytes,
        memory_available_bytes: f.memory_available_bytes,
        disks: f
            .disks
            .into_iter()
            .map(|d| Disk {
                encryption: match v1::Encryption::try_from(d.encryption) {
                    Ok(v1::Encryption::Encrypted) => Encryption::Encrypted,
                    Ok(v1::Encryption::NotEncrypted) => Encryption::NotEncrypted,
                    _ => Encryption::Unknown,
                },
                name: d.name,
                mount_point: d.mount_point,
                file_system: d.file_system,
                total_bytes: d.total_bytes,
                available_bytes: d.available_bytes,
                removable: d.removable,
            })
            .collect(),
        agent_version: f.agent_version,
        architecture: f.architecture,
    }
}

fn session_from_wire(s: v1::SessionEvent) -> Option<SessionRecord> {
    use v1::session_event::Kind;
    let started_at = timestamp(s.started_at.as_ref())?;
    if s.session_id.is_empty() {
        return None;
    }
    let kind = match Kind::try_from(s.kind).unwrap_or(Kind::Unspecified) {
        Kind::Graphical => SessionKind::Graphical,
        Kind::Console => SessionKind::Console,
        Kind::Remote => SessionKind::Remote,
        Kind::Unspecified => SessionKind::Other,
    };
    Some(SessionRecord {
        session_id: s.session_id,
        account: s.account,
        uid: s.uid,
        kind,
        started_at,
        ended_at: timestamp(s.ended_at.as_ref()),
        active_secs: s.active_secs,
    })
}

pub fn command_from_wire(kind: v1::CommandKind) -> Option<CommandKind> {
    match kind {
        v1::CommandKind::Disable => Some(CommandKind::Disable),
        v1::CommandKind::Enable => Some(CommandKind::Enable),
        v1::CommandKind::Unspecified => None,
    }
}

pub fn command_to_wire(kind: CommandKind) -> v1::CommandKind {
    match kind {
        CommandKind::Disable => v1::CommandKind::Disable,
        CommandKind::Enable => v1::CommandKind::Enable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Option<hallmonitor_proto::Timestamp> {
        Some(hallmonitor_proto::Timestamp {
            seconds: s,
            nanos: 0,
        })
    }

    #[test]
    fn wire_events_convert_or_are_kept_as_unrecognised() {
        let now = Timestamp::from_second(5_000).unwrap();
        let heartbeat = v1::Event {
            seq: 1,
            event_id: "a".into(),
            occurred_at: ts(1_000),
            body: Some(v1::event::Body::Heartbeat(v1::Heartbeat {
                uptime_secs: 9,
                interval_secs: 60,
            })),
        };
        let (event, ok) = event_from_wire(heartbeat, now);
        assert!(ok);
        assert_eq!(event.occurred_at, Timestamp::from_second(1_000).unwrap());
        assert_eq!(event.body.kind(), "heartbeat");

        let empty = v1::Event {
            seq: 2,
            event_id: "b".into(),
            occurred_at: None,
            body: None,
        };
        let (event, ok) = event_from_wire(empty, now);
        assert!(!ok);
        assert_eq!(event.body.kind(), "unrecognised");
        assert_eq!(event.occurred_at, now, "missing time falls back to receipt");
    }

    #[test]
    fn disk_encryption_maps_unknown_values_to_unknown() {
        let facts = v1::DeviceFacts {
            disks: vec![
                v1::Disk {
                    encryption: 1,
                    ..Default::default()
                },
                v1::Disk {
                    encryption: 2,
                    ..Default::default()
                },
                v1::Disk {
                    encryption: 99,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let got: Vec<_> = facts_from_wire(facts)
            .disks
            .iter()
            .map(|d| d.encryption)
            .collect();
        assert_eq!(
            got,
            [
                Encryption::Encrypted,
                Encryption::NotEncrypted,
                Encryption::Unknown
            ]
        );
    }
}
