//! The telemetry stream: one mutual-TLS gRPC stream to the collector,
//! reconnected with capped exponential backoff and jitter.
//!
//! On every connection the agent resends from the oldest unacknowledged
//! event in the outbox; the collector ignores what it already holds. Events
//! leave the outbox only on an Ack, which the collector sends after its
//! commit. Up to `WINDOW` batches are in flight at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use hallmonitor_proto::v1;
use hallmonitor_report::ComplianceReport;
use jiff::Timestamp;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::config::Delivery;
use crate::enroll::Identity;
use crate::outbox::{Outbox, OutboxError};
use crate::state::{Connection, State};
use crate::tls::{self, TlsError};

/// Batches sent but not yet acknowledged, at most.
const WINDOW: usize = 4;
/// Largest message the agent accepts from the collector.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("collector: {0}")]
    Status(String),
    /// The collector refuses this device until a technician acts (revoked,
    /// or pending approval): retried only at the longest backoff.
    #[error("collector: {0}")]
    Refused(String),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("protocol: {0}")]
    Protocol(String),
}

impl From<tonic::Status> for StreamError {
    fn from(s: tonic::Status) -> Self {
        let text = format!("{:?}: {}", s.code(), s.message());
        match s.code() {
            tonic::Code::PermissionDenied | tonic::Code::FailedPrecondition => {
                StreamError::Refused(text)
            }
            _ => StreamError::Status(text),
        }
    }
}

pub struct StreamSettings {
    pub collector: String,
    pub delivery: Delivery,
    pub heartbeat_interval_secs: u32,
    /// Where commands from the collector go (the enforcer task).
    pub commands: mpsc::Sender<v1::Command>,
    /// The suspicious-activity policy: updates from the collector go there.
    pub policies: Arc<crate::policy::PolicyHub>,
    /// The acceptable-use policy: updates from the collector go there.
    pub aup: Arc<crate::aup::AupHub>,
}

/// How producers tell the stream that something was queued. An ordinary
/// wake lets the stream wait `batch_linger_ms` so a burst of events goes
/// in one batch; an urgent one (a capture: a person may be waiting for its
/// alert) is sent at once and cuts a linger already under way short.
#[derive(Debug, Default)]
pub struct Wake {
    gather: Notify,
    urgent: Notify,
}

impl Wake {
    /// Something was queued; more may follow.
    pub fn notify_one(&self) {
        self.gather.notify_one();
    }

    /// Something was queued that must not wait for company.
    pub fn urgent(&self) {
        self.urgent.notify_one();
    }

    /// Returns when there is something to send: at once after an urgent
    /// wake, `linger` after an ordinary one unless an urgent one comes
    /// first.
    pub async fn gathered(&self, linger: Duration) {
        tokio::select! {
            biased;
            _ = self.urgent.notified() => return,
            _ = self.gather.notified() => {}
        }
        tokio::select! {
            biased;
            _ = self.urgent.notified() => {}
            _ = tokio::time::sleep(linger) => {}
        }
    }
}

enum Ended {
    Shutdown,
    ClosedByCollector,
}

/// Keeps a stream to the collector open until `shutdown`.
pub async fn run(
    identity: Identity,
    settings: StreamSettings,
    outbox: Outbox,
    wake: Arc<Wake>,
    shutdown: CancellationToken,
) -> Result<(), StreamError> {
    let tls = tls::mutual_tls_config(&identity.ca_pem, &identity.cert_pem, &identity.key_pem)?;
    let mut attempt: u32 = 0;
    loop {
        set_connection(&outbox, Connection::Connecting, None).await;
        let mut connected = false;
        let mut refused = false;
        let mut outbox_failed = false;
        let outcome = run_once(
            &settings,
            tls.clone(),
            &outbox,
            &wake,
            &shutdown,
            &mut connected,
        )
        .await;
        match outcome {
            Ok(Ended::Shutdown) => {
                set_connection(&outbox, Connection::Stopped, None).await;
                return Ok(());
            }
            Ok(Ended::ClosedByCollector) => {
                tracing::info!("collector closed the stream; reconnecting");
                set_connection(
                    &outbox,
                    Connection::Disconnected,
                    Some("closed by the collector"),
                )
                .await;
            }
            // A full disk or an I/O error: acknowledged events could not
            // be deleted. Reconnect and resend; the collector recognises
            // what it already holds.
            Err(StreamError::Outbox(e)) if !e.is_transient() => {
                return Err(StreamError::Outbox(e));
            }
            Err(StreamError::Outbox(e)) => {
                tracing::error!(error = %e, "the outbox failed under the stream; reconnecting");
                set_connection(
                    &outbox,
                    Connection::Disconnected,
                    Some(&format!("outbox: {e}")),
                )
                .await;
                outbox_failed = true;
            }
            Err(StreamError::Refused(why)) => {
                // Nothing changes until a technician acts: no tight loop.
                tracing::error!(reason = %why, "the collector refuses this device; events stay queued");
                set_connection(&outbox, Connection::Refused, Some(&why)).await;
                refused = true;
            }
            // Certificates are valid for a period: a clock far off is a
            // problem a person must fix, named as such.
            Err(e @ StreamError::Tls(TlsError::Clock { .. })) => {
                tracing::error!(error = %e, "this device's clock is wrong; cannot connect");
                set_connection(&outbox, Connection::ClockWrong, Some(&e.to_string())).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "telemetry stream failed");
                set_connection(&outbox, Connection::Disconnected, Some(&e.to_string())).await;
            }
        }
        // Whatever was in flight on the dead stream will be resent.
        outbox.release_claims().await;
        // A stream that connected starts the backoff again, unless the
        // outbox failed under it (it would fail again at once).
        if connected && !outbox_failed {
            attempt = 0;
        }
        if refused {
            attempt = u32::MAX;
        }
        let delay = backoff(&settings.delivery, attempt, random_unit());
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => {
                set_connection(&outbox, Connection::Stopped, None).await;
                return Ok(());
            }
        }
    }
}

async fn run_once(
    settings: &StreamSettings,
    tls: rustls::ClientConfig,
    outbox: &Outbox,
    wake: &Wake,
    shutdown: &CancellationToken,
    connected: &mut bool,
) -> Result<Ended, StreamError> {
    let channel = tokio::select! {
        channel = tls::connect(&settings.collector, tls, Duration::from_secs(10)) => channel?,
        _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
    };
    let mut client = v1::telemetry_client::TelemetryClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let (tx, rx) = mpsc::channel::<v1::AgentMessage>(WINDOW + 2);
    tx.send(agent_hello(settings, outbox).await?)
        .await
        .map_err(|_| StreamError::Protocol("stream closed".into()))?;
    let mut inbound = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    let first = tokio::time::timeout(Duration::from_secs(15), inbound.message())
        .await
        .map_err(|_| StreamError::Protocol("no hello from the collector within 15 s".into()))??;
    let Some(v1::CollectorMessage {
        body: Some(v1::collector_message::Body::Hello(server_hello)),
    }) = first
    else {
        return Err(StreamError::Protocol(
            "the collector did not start with a hello".into(),
        ));
    };
    outbox
        .raise_sequence_floor(server_hello.last_committed_seq)
        .await?;
    // Nothing is in flight on a new stream; tell the collector what was
    // evicted while we were away.
    outbox.release_claims().await;
    outbox.take_eviction_report().await?;
    *connected = true;
    set_connection(outbox, Connection::Connected, None).await;
    tracing::info!(device_id = %server_hello.device_id, last_committed_seq = server_hello.last_committed_seq, "connected to collector");

    let mut in_flight: VecDeque<(u64, u64, u64)> = VecDeque::new();
    let mut sent_up_to = 0u64;
    let mut next_batch_id = 1u64;
    loop {
        while in_flight.len() < WINDOW {
            let events = outbox
                .read_for_send(sent_up_to, settings.delivery.batch_max_events.get())
                .await?;
            let (Some(first), Some(last)) =
                (events.first().map(|e| e.seq), events.last().map(|e| e.seq))
            else {
                break;
            };
            let batch_id = next_batch_id;
            next_batch_id += 1;
            let message = v1::AgentMessage {
                body: Some(v1::agent_message::Body::Batch(v1::EventBatch {
                    batch_id,
                    events,
                })),
            };
            if tx.send(message).await.is_err() {
                return Err(StreamError::Protocol("stream closed while sending".into()));
            }
            sent_up_to = last;
            in_flight.push_back((batch_id, first, last));
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
            message = inbound.message() => {
                let Some(message) = message? else { return Ok(Ended::ClosedByCollector) };
                if handle(message, outbox, settings, &mut in_flight).await? {
                    // The site policy changed: say which version is held now.
                    tx.send(agent_hello(settings, outbox).await?)
                        .await
                        .map_err(|_| StreamError::Protocol("stream closed while sending".into()))?;
                }
            }
            // Cancelled by a message from the collector mid-linger: the
            // loop sends what is queued anyway.
            _ = wake.gathered(Duration::from_millis(settings.delivery.batch_linger_ms)),
                if in_flight.len() < WINDOW => {}
        }
    }
}

async fn agent_hello(
    settings: &StreamSettings,
    outbox: &Outbox,
) -> Result<v1::AgentMessage, StreamError> {
    let stats = outbox.stats().await?;
    Ok(v1::AgentMessage {
        body: Some(v1::agent_message::Body::Hello(v1::AgentHello {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            oldest_unacked_seq: stats.oldest_seq.unwrap_or(0),
            next_seq: stats.next_seq,
            policy_version: settings.policies.site_version(),
            heartbeat_interval_secs: settings.heartbeat_interval_secs,
            aup_version: settings.aup.version(),
        })),
    })
}

/// Handles one message from the collector; true when the site policy
/// changed (the collector is told with a new hello).
async fn handle(
    message: v1::CollectorMessage,
    outbox: &Outbox,
    settings: &StreamSettings,
    in_flight: &mut VecDeque<(u64, u64, u64)>,
) -> Result<bool, StreamError> {
    use v1::collector_message::Body;
    let commands = &settings.commands;
    match message.body {
        Some(Body::Ack(ack)) => {
            let Some(position) = in_flight.iter().position(|(id, _, _)| *id == ack.batch_id) else {
                return Err(StreamError::Protocol(format!(
                    "ack for unknown batch {}",
                    ack.batch_id
                )));
            };
            let (_, first, last) = in_flight.remove(position).expect("position is in range");
            outbox.acknowledge(first, last).await?;
            State::new(outbox)
                .set_last_ack(Timestamp::now(), last)
                .await?;
            tracing::debug!(
                batch_id = ack.batch_id,
                first,
                last,
                stored = ack.stored,
                duplicates = ack.duplicates,
                "batch acknowledged"
            );
            if ack.rejected > 0 {
                tracing::warn!(
                    batch_id = ack.batch_id,
                    rejected = ack.rejected,
                    "collector could not interpret some events (kept as unrecognised)"
                );
            }
        }
        Some(Body::Hello(_)) => return Err(StreamError::Protocol("second hello".into())),
        Some(Body::Policy(update)) => {
            match settings.policies.apply_site(&update, outbox).await {
                Ok(()) => return Ok(true),
                Err(crate::policy::UpdateError::Outbox(e)) => return Err(e.into()),
                // The collector checks policies before sending them; one
                // that still fails here is refused and the last good kept.
                Err(e) => {
                    tracing::error!(error = %e, "site policy refused; the last good one stays in force")
                }
            }
        }
        Some(Body::Aup(update)) => match settings.aup.apply(&update, outbox).await {
            Ok(()) => return Ok(true),
            Err(crate::aup::UpdateError::Outbox(e)) => return Err(e.into()),
            // Checked by the collector too; the last good one stays.
            Err(e) => {
                tracing::error!(error = %e, "acceptable-use policy refused; the last good one stays in force")
            }
        },
        Some(Body::Command(c)) => {
            tracing::info!(command_id = %c.command_id, kind = c.kind, "command received");
            if commands.send(c).await.is_err() {
                return Err(StreamError::Protocol("the enforcer has stopped".into()));
            }
        }
        // What the collector concluded about this device: kept for
        // `hallmonitor-agent check`.
        Some(Body::State(state)) => {
            // A report this agent cannot read changes no one's scope; it is
            // still kept for `check`, which names the problem.
            if let Ok(report) = serde_json::from_str::<ComplianceReport>(&state.compliance_json) {
                settings.policies.set_staff_from_compliance(&report);
            }
            settings
                .policies
                .apply_account_groups(&state.account_groups, outbox)
                .await?;
            State::new(outbox)
                .set_device_state(
                    &state.compliance_json,
                    Timestamp::now(),
                    state.lock_stale_mfa_sessions,
                )
                .await?;
        }
        None => {}
    }
    Ok(false)
}

async fn set_connection(outbox: &Outbox, connection: Connection, error: Option<&str>) {
    let state = State::new(outbox);
    if let Err(e) = state
        .set_connection(connection, Timestamp::now(), error)
        .await
    {
        tracing::warn!(error = %e, "cannot record connection state");
    }
}

/// Exponential backoff: initial × 2^attempt, capped, scaled by `unit` in
/// [0, 1) into the range [½, 1) of that (jitter, so a restarted collector is
/// not hit by every agent at once).
pub fn backoff(delivery: &Delivery, attempt: u32, unit: f64) -> Duration {
    let cap = Duration::from_secs(delivery.reconnect_max_secs.max(1));
    let base = Duration::from_millis(delivery.reconnect_initial_ms.max(1))
        .saturating_mul(2u32.saturating_pow(attempt.min(30)))
        .min(cap);
    base.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

fn random_unit() -> f64 {
    let mut bytes = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Longer than any test runs: a linger that is not cut short fails
    /// the deadline below instead of hanging.
    const FOREVER: Duration = Duration::from_secs(3600);
    const DEADLINE: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn an_urgent_wake_is_sent_at_once() {
        let wake = Wake::default();
        wake.urgent();
        tokio::time::timeout(DEADLINE, wake.gathered(FOREVER))
            .await
            .expect("an urgent wake does not linger");
    }

    #[tokio::test]
    async fn an_urgent_wake_cuts_a_linger_short() {
        let wake = Arc::new(Wake::default());
        wake.notify_one();
        let waiting = tokio::spawn({
            let wake = wake.clone();
            async move { wake.gathered(FOREVER).await }
        });
        // Whether it arrives before or during the linger, it ends it.
        wake.urgent();
        tokio::time::timeout(DEADLINE, waiting)
            .await
            .expect("the capture waited for the linger")
            .unwrap();
    }

    #[tokio::test]
    async fn an_ordinary_wake_lingers_for_company() {
        let wake = Wake::default();
        wake.notify_one();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), wake.gathered(FOREVER))
                .await
                .is_err(),
            "an ordinary wake must wait for the linger"
        );
        wake.notify_one();
        tokio::time::timeout(DEADLINE, wake.gathered(Duration::from_millis(1)))
            .await
            .expect("the linger ends");
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let delivery = Delivery {
            reconnect_initial_ms: 1000,
            reconnect_max_secs: 60,
            ..Delivery::default()
        };
        let cases = [
            ("first, no jitter", 0, 1.0, 1000),
            ("first, most jitter", 0, 0.0, 500),
            ("third", 2, 1.0, 4000),
            ("capped", 10, 1.0, 60_000),
            ("capped, most jitter", 10, 0.0, 30_000),
            ("huge attempt does not overflow", u32::MAX, 1.0, 60_000),
        ];
        for (name, attempt, unit, want_ms) in cases {
            assert_eq!(
                backoff(&delivery, attempt, unit).as_millis(),
                want_ms,
                "{name}"
            );
        }
    }
}
