//! `run`: the agent daemon. Enrols first if it has no identity (zero-touch:
//! MDM drops the config, the service starts, the device appears), then runs
//! two tasks until shutdown: the producer (heartbeats, facts on start and on
//! change) appending to the outbox, and the stream draining it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hallmonitor_proto::v1;
use jiff::Timestamp;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::enroll::{self, EnrollError, Identity};
use crate::facts::{self, FactSources};
use crate::outbox::Outbox;
use crate::stream::{self, StreamSettings};

pub fn fact_sources(config: &AgentConfig) -> FactSources {
    FactSources {
        machine_id_override: config.machine_id.clone(),
        ..FactSources::default()
    }
}

pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let Some(identity) = identity_or_enroll(&config, &shutdown).await? else {
        return Ok(());
    };
    tracing::info!(device_id = %identity.device_id, site = %identity.site, "agent starting");

    let (outbox, moved) = Outbox::open(&config.data_dir, config.delivery.outbox_max_bytes).await?;
    let pid = std::process::id().to_string();
    outbox
        .set_states(&[
            ("daemon_pid", &pid),
            ("daemon_started_at", &Timestamp::now().to_string()),
        ])
        .await?;
    if let Some(moved) = moved {
        outbox
            .append(
                Timestamp::now(),
                v1::event::Body::OutboxReport(v1::OutboxReport {
                    corrupt_file_moved_to: moved.display().to_string(),
                    ..Default::default()
                }),
            )
            .await?;
    }

    let wake = Arc::new(Notify::new());
    let producer = tokio::spawn(produce(
        config.clone(),
        outbox.clone(),
        wake.clone(),
        shutdown.clone(),
    ));
    let settings = StreamSettings {
        collector: config.collector.clone(),
        delivery: config.delivery.clone(),
        heartbeat_interval_secs: config.heartbeat_interval_secs,
    };
    let streamer = tokio::spawn(stream::run(
        identity,
        settings,
        outbox.clone(),
        wake,
        shutdown.clone(),
    ));

    let (produced, streamed) = tokio::join!(producer, streamer);
    outbox.set_state("daemon_pid", "").await.ok();
    outbox.close().await;
    produced.context("producer task")??;
    streamed.context("stream task")??;
    tracing::info!("agent stopped");
    Ok(())
}

/// The stored identity, or a new one from enrolment, retrying while the
/// collector is unreachable. None if shutdown came first.
async fn identity_or_enroll(
    config: &AgentConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Identity>> {
    if let Some(identity) = Identity::load(&config.data_dir)? {
        return Ok(Some(identity));
    }
    let mut attempt = 0;
    loop {
        let facts = collect_facts(config).await;
        match enroll::enroll(config, facts).await {
            Ok(identity) => {
                tracing::info!(device_id = %identity.device_id, "enrolled");
                return Ok(Some(identity));
            }
            // Unreachable collector: keep trying. Refusals and bad
            // configuration need a person; exit so the service manager
            // shows the error.
            Err(EnrollError::Tls(e)) => {
                tracing::warn!(error = %e, "enrolment: collector unreachable; will retry")
            }
            Err(e) => return Err(e).context("enrolment failed"),
        }
        let delay = stream::backoff(&config.delivery, attempt, 1.0);
        attempt += 1;
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return Ok(None),
        }
    }
}

pub async fn collect_facts(config: &AgentConfig) -> v1::DeviceFacts {
    let sources = fact_sources(config);
    tokio::task::spawn_blocking(move || facts::collect(&sources))
        .await
        .unwrap_or_default()
}

async fn produce(
    config: AgentConfig,
    outbox: Outbox,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let interval = config.heartbeat_interval_secs;
    let mut heartbeat = tokio::time::interval(Duration::from_secs(u64::from(interval)));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let facts_every = Duration::from_secs(u64::from(config.facts_interval_secs));
    let mut last_facts: Option<v1::DeviceFacts> = None;
    let mut facts_checked = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        let now = Timestamp::now();
        // Facts first: a heartbeat merges into an unsent heartbeat only when
        // it is the newest row.
        let mut events = Vec::new();
        if last_facts.is_none() || facts_checked.elapsed() >= facts_every {
            facts_checked = tokio::time::Instant::now();
            let current = collect_facts(&config).await;
            let stable = facts::stable_view(&current);
            if last_facts.as_ref() != Some(&stable) {
                events.push((now, v1::event::Body::Facts(current)));
                last_facts = Some(stable);
            }
        }
        if !events.is_empty() {
            outbox.append_all(events).await?;
        }
        // Evictions while connected (a burst of captures, a slow link) are
        // reported at the next tick rather than at the next reconnection.
        outbox.take_eviction_report().await?;
        let heartbeat = v1::Heartbeat {
            uptime_secs: facts::uptime_secs(),
            interval_secs: interval,
        };
        outbox.append_heartbeat(now, heartbeat).await?;
        outbox
            .set_state("daemon_alive_at", &now.to_string())
            .await?;
        wake.notify_one();
    }
}
