//! Shared by the bench binaries: simulated agents that enrol through the
//! real enrolment service and stream over mutual TLS.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use hallmonitor_agent::config::AgentConfig;
use hallmonitor_agent::enroll::{self, Identity};
use hallmonitor_agent::tls;
use hallmonitor_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// A collector to enrol with and stream to (command-line arguments of
/// every bench that talks to one).
#[derive(Clone, Debug, clap::Args)]
pub struct Target {
    /// Collector enrolment address (host:port; the host must be in the
    /// server certificate, e.g. localhost or 127.0.0.1).
    #[arg(long)]
    pub enroll: String,
    /// Collector telemetry address (host:port).
    #[arg(long)]
    pub telemetry: String,
    #[arg(long)]
    pub ca_fingerprint: String,
    /// A site enrolment secret.
    #[arg(long)]
    pub secret: String,
    #[arg(long)]
    pub site: String,
}

/// Enrols `count` simulated machines (`PREFIX-000001`…), reusing
/// identities kept under `work` from earlier runs.
pub async fn enroll_agents(
    target: &Target,
    prefix: &str,
    count: usize,
    concurrency: usize,
    work: &Path,
) -> anyhow::Result<Vec<Identity>> {
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..count {
        let machine_id = format!("{prefix}-{n:06}");
        let config = AgentConfig {
            collector: target.telemetry.parse().map_err(anyhow::Error::msg)?,
            enroll_address: target.enroll.parse().map_err(anyhow::Error::msg)?,
            ca_fingerprint: target.ca_fingerprint.parse().map_err(anyhow::Error::msg)?,
            site: target.site.clone(),
            enrollment_secret: target.secret.clone(),
            data_dir: work.join(&machine_id),
            machine_id: machine_id.clone(),
            ..AgentConfig::default()
        };
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            if let Some(identity) = Identity::load(&config.data_dir)? {
                return Ok(identity);
            }
            let facts = v1::DeviceFacts {
                hostname: machine_id.clone(),
                machine_id: machine_id.clone(),
                os_name: "Loadgen".into(),
                agent_version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            };
            enroll::enroll(&config, facts)
                .await
                .with_context(|| format!("enrolling {machine_id}"))
        });
    }
    let mut identities = Vec::with_capacity(count);
    while let Some(result) = tasks.join_next().await {
        identities.push(result.context("enrol task")??);
    }
    Ok(identities)
}

/// An open telemetry stream after the hellos.
pub struct OpenStream {
    pub tx: mpsc::Sender<v1::AgentMessage>,
    pub inbound: tonic::Streaming<v1::CollectorMessage>,
    pub next_seq: u64,
}

pub async fn connect(
    telemetry: &str,
    identity: Identity,
    window: usize,
) -> anyhow::Result<OpenStream> {
    let config = tls::mutual_tls_config(&identity.ca_pem, &identity.cert_pem, &identity.key_pem)?;
    let channel = tls::connect(telemetry, config, Duration::from_secs(10)).await?;
    let mut client = v1::telemetry_client::TelemetryClient::new(channel)
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20);
    let (tx, rx) = mpsc::channel(window + 2);
    tx.send(v1::AgentMessage {
        body: Some(v1::agent_message::Body::Hello(v1::AgentHello {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            heartbeat_interval_secs: 60,
            ..Default::default()
        })),
    })
    .await?;
    let mut inbound = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    let Some(v1::CollectorMessage {
        body: Some(v1::collector_message::Body::Hello(hello)),
    }) = inbound.message().await?
    else {
        bail!("{}: no hello from the collector", identity.device_id);
    };
    Ok(OpenStream {
        tx,
        inbound,
        next_seq: hello.last_committed_seq + 1,
    })
}

pub fn now_wire() -> hallmonitor_proto::Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    hallmonitor_proto::Timestamp {
        seconds: now.as_secs() as i64,
        nanos: now.subsec_nanos() as i32,
    }
}
