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

mod downstream;
mod validate;
mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use hallmonitor_proto::v1;
use jiff::Timestamp;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

pub use downstream::{
    Streams, close_superseded_streams, device_state, dispatch_aups, dispatch_commands,
    dispatch_policies,
};
pub use wire::{command_from_wire, command_to_wire, event_from_wire, facts_from_wire};

use crate::config::CollectorConfig;
use crate::model::{DeviceStatus, Event, EventBody};
use crate::pki::sha256_hex;
use crate::store::{DeviceFilter, Store, StreamDevice};
use downstream::command_message;

pub struct TelemetryService {
    pub store: Arc<dyn Store>,
    pub config: Arc<CollectorConfig>,
    pub streams: Arc<Streams>,
    pub evidence: Arc<crate::evidence::EvidenceStore>,
    pub heartbeat_interval_secs: u32,
    pub max_batch_events: usize,
    pub shutdown: CancellationToken,
}

pub(crate) type Outbound = Result<v1::CollectorMessage, Status>;

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
        match device.status {
            DeviceStatus::Active => {}
            DeviceStatus::Pending => {
                return Err(Status::failed_precondition(format!(
                    "device {} is pending a technician's approval (devices approve / devices link): {}",
                    device.id, device.status_reason
                )));
            }
            DeviceStatus::Revoked => {
                tracing::warn!(device_id = %device.id, "stream refused: device revoked");
                return Err(Status::permission_denied(format!(
                    "device {} is revoked: {}",
                    device.id, device.status_reason
                )));
            }
        }

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
        let registration = self
            .streams
            .register(&device.id, device.site, &fingerprint, tx.clone());
        let token = registration.token;
        let session = StreamSession {
            store: self.store.clone(),
            config: self.config.clone(),
            streams: self.streams.clone(),
            evidence: self.evidence.clone(),
            token,
            device,
            max_batch_events: self.max_batch_events,
            tx,
            hello_seen: AtomicBool::new(false),
            last_seq: AtomicU64::new(0),
            hellos: std::sync::Mutex::new((std::time::Instant::now(), 0)),
        };
        let inbound = request.into_inner();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move { session.run(inbound, registration.closed, shutdown).await });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// An event that broke the protocol's rules, kept verbatim (its kind and
/// the reason) so nothing a device sent is lost, and used by no rule.
fn refused_event(e: v1::Event, why: &str, received_at: Timestamp) -> Event {
    let kind = e.body.as_ref().map_or("unknown", body_kind);
    Event {
        seq: crate::model::Seq(e.seq),
        event_id: e.event_id,
        occurred_at: received_at,
        body: EventBody::Other {
            name: "unrecognised".into(),
            json: serde_json::json!({ "kind": kind, "error": why }),
        },
    }
}

fn body_kind(body: &v1::event::Body) -> &'static str {
    use v1::event::Body;
    match body {
        Body::Heartbeat(_) => "heartbeat",
        Body::HeartbeatInterval(_) => "heartbeat_interval",
        Body::Facts(_) => "facts",
        Body::Session(_) => "session",
        Body::Mfa(_) => "mfa",
        Body::Capture(_) => "capture",
        Body::FileAlert(_) => "file_alert",
        Body::Enforcement(_) => "enforcement",
        Body::OutboxReport(_) => "outbox_report",
        Body::MonitoringGap(_) => "monitoring_gap",
        Body::AgentSignal(_) => "agent_signal",
        Body::AupAnswer(_) => "aup_answer",
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
    evidence: Arc<crate::evidence::EvidenceStore>,
    token: u64,
    device: StreamDevice,
    max_batch_events: usize,
    tx: mpsc::Sender<Outbound>,
    /// The protocol: a hello first, then sequence numbers ascending within
    /// the stream.
    hello_seen: AtomicBool,
    last_seq: AtomicU64,
    /// Hellos in the current 10 s (each costs a write).
    hellos: std::sync::Mutex<(std::time::Instant, u32)>,
}

impl StreamSession {
    async fn run(
        self,
        mut inbound: Streaming<v1::AgentMessage>,
        mut closed: tokio::sync::oneshot::Receiver<Status>,
        shutdown: CancellationToken,
    ) {
        let device_id = self.device.id.clone();
        tracing::info!(device_id = %device_id, "agent connected");
        // Rules are re-evaluated shortly after sessions arrive, at most
        // every REEVALUATE_AFTER while a backlog drains.
        let mut reevaluate_at: Option<tokio::time::Instant> = None;
        loop {
            let message = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                status = &mut closed => {
                    // Replaced, revoked or superseded: nothing more from
                    // this certificate is stored.
                    if let Ok(status) = status {
                        let _ = self.tx.send(Err(status)).await;
                    }
                    break;
                }
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
                self.hello_seen.store(true, Ordering::Relaxed);
                if !self.hello_allowed() {
                    return Err(Status::resource_exhausted(
                        "more than 10 hellos in 10 s on one stream",
                    ));
                }
                self.store
                    .record_hello(
                        &self.device.id,
                        hello.heartbeat_interval_secs,
                        hello.policy_version,
                        Timestamp::now(),
                    )
                    .await
                    .map_err(|e| unavailable(&e))?;
                self.streams
                    .set_policy_version(&self.device.id, hello.policy_version);
                dispatch_policies(&*self.store, &self.streams, Some(&self.device.id))
                    .await
                    .map_err(|e| unavailable(&e))?;
                self.streams
                    .set_aup_version(&self.device.id, hello.aup_version);
                dispatch_aups(&*self.store, &self.streams, Some(&self.device.id))
                    .await
                    .map_err(|e| unavailable(&e))?;
                Ok(false)
            }
            Some(v1::agent_message::Body::Batch(_)) if !self.hello_seen.load(Ordering::Relaxed) => {
                Err(Status::failed_precondition(
                    "the first message of a stream must be an AgentHello",
                ))
            }
            Some(v1::agent_message::Body::Batch(batch)) => self.handle_batch(batch).await,
            None => Err(Status::invalid_argument("empty agent message")),
        }
    }

    /// An agent says hello on connect and after each policy change: ten in
    /// ten seconds is far more than one needs.
    fn hello_allowed(&self) -> bool {
        let mut hellos = self.hellos.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if now.duration_since(hellos.0) >= std::time::Duration::from_secs(10) {
            *hellos = (now, 0);
        }
        hellos.1 += 1;
        hellos.1 <= 10
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
        if let Some(bad) = batch
            .events
            .iter()
            .find(|e| e.seq == 0 || e.seq > i64::MAX as u64)
        {
            return Err(Status::invalid_argument(format!(
                "event {} has sequence number {}; it must be between 1 and 2^63-1",
                bad.event_id, bad.seq
            )));
        }
        let mut previous = self.last_seq.load(Ordering::Relaxed);
        for event in &batch.events {
            if event.seq <= previous {
                return Err(Status::invalid_argument(format!(
                    "event {} has sequence number {} after {previous}: sequence numbers ascend within a stream",
                    event.event_id, event.seq
                )));
            }
            previous = event.seq;
        }
        self.last_seq.store(previous, Ordering::Relaxed);
        let mut rejected = 0u32;
        let mut events: Vec<Event> = batch
            .events
            .into_iter()
            .map(|e| match validate::check(&e, received_at) {
                Ok(()) => {
                    let (event, ok) = event_from_wire(e, received_at);
                    rejected += u32::from(!ok);
                    event
                }
                Err(why) => {
                    rejected += 1;
                    tracing::warn!(device_id = %self.device.id, seq = e.seq, error = %why, "event refused; kept as unrecognised");
                    refused_event(e, &why, received_at)
                }
            })
            .collect();
        let first_seq = events.iter().map(|e| e.seq.0).min().unwrap_or(0);
        let last_seq = events.iter().map(|e| e.seq.0).max().unwrap_or(0);
        // Images first: an event is acked only when its evidence is on disk.
        let budget = self
            .config
            .captures
            .evidence_mib_per_device_per_day
            .saturating_mul(1024 * 1024);
        for event in &mut events {
            // An image stored already (a resent batch, the same screen
            // again) costs nothing.
            if let EventBody::Capture(capture) = &mut event.body
                && capture.image_status == "verified"
                && !self.evidence.contains(&capture.image_sha256)
                && !self.streams.take_evidence_budget(
                    &self.device.id,
                    capture.severity >= 4,
                    capture.image.len() as u64,
                    received_at,
                    budget,
                )
            {
                tracing::warn!(device_id = %self.device.id, seq = event.seq.0, "the device's evidence budget for today is spent; capture kept without its image");
                capture.image_status = "no_image".into();
                capture.image = Vec::new();
                capture.image_sha256 = String::new();
                capture.no_image_reason = format!(
                    "image refused by the collector: this device sent more than {} MiB of images today ([captures] evidence_mib_per_device_per_day)",
                    self.config.captures.evidence_mib_per_device_per_day
                );
            }
        }
        for event in &events {
            if let EventBody::Capture(capture) = &event.body
                && capture.image_status == "verified"
            {
                let evidence = self.evidence.clone();
                let (image, sha) = (capture.image.clone(), capture.image_sha256.clone());
                tokio::task::spawn_blocking(move || evidence.put(&image, &sha))
                    .await
                    .map_err(|e| unavailable(&e))?
                    .map_err(|e| unavailable(&e))?;
            } else if let EventBody::Capture(capture) = &event.body
                && capture.image_status == "hash_mismatch"
            {
                tracing::warn!(device_id = %self.device.id, seq = event.seq.0, "capture image does not match its SHA-256; kept without the image");
            }
        }
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
        if outcome.stored > 0 && events.iter().any(|e| e.body.may_notify()) {
            self.streams.notifier.notify_one();
        }
        Ok(outcome.stored > 0 && events.iter().any(|e| e.body.affects_rules()))
    }

    /// New sessions or command results: re-evaluate this device now (after
    /// the ack, so the agent never waits for it) and tell the agent.
    async fn reevaluate(&self) {
        let filter = DeviceFilter::one(self.device.id.clone());
        let store = &*self.store;
        match crate::rules::evaluate::refresh(store, &self.config, &filter, Timestamp::now()).await
        {
            Ok(changes) if !changes.opened.is_empty() => self.streams.notifier.notify_one(),
            Ok(_) => {}
            Err(e) => {
                tracing::error!(device_id = %self.device.id, error = %e, "re-evaluating device failed");
                return;
            }
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
