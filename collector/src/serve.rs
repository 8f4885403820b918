//! `serve`: runs the enrolment and telemetry gRPC services until the
//! shutdown token fires, then lets in-flight batches commit (bounded by
//! `shutdown_grace_secs`) and closes the database.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hallmonitor_proto::v1::enrollment_server::EnrollmentServer;
use hallmonitor_proto::v1::telemetry_server::TelemetryServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use crate::config::CollectorConfig;
use crate::enroll::EnrollmentService;
use crate::ingest::{
    Streams, TelemetryService, close_superseded_streams, device_state, dispatch_commands,
    dispatch_policies,
};
use crate::listener::{Limits, grpc_tls_config, tls_incoming};
use crate::pki::{CertificateAuthority, PkiPaths, read};
use crate::store::Store;

/// Command-line overrides of the configuration file.
#[derive(Clone, Debug, Default)]
pub struct ServeOverrides {
    pub listen: Option<SocketAddr>,
    pub enroll_listen: Option<SocketAddr>,
    pub api_listen: Option<SocketAddr>,
}

pub async fn serve(
    data: &Path,
    overrides: ServeOverrides,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut config = CollectorConfig::load(data)?;
    config.listen = overrides.listen.unwrap_or(config.listen);
    config.enroll_listen = overrides.enroll_listen.unwrap_or(config.enroll_listen);
    config.api_listen = overrides.api_listen.unwrap_or(config.api_listen);

    let store = crate::open_checked_store(data)
        .await?
        .with_incident_window(jiff::SignedDuration::from_hours(i64::from(
            config.captures.incident_window_hours,
        )))
        .with_alerts(crate::alerts::FileAlerts::from_config(&config));
    let paths = PkiPaths::in_data_dir(data);
    let ca = Arc::new(CertificateAuthority::load(&paths)?);
    let (server_cert, server_key) = (read(&paths.server_cert)?, read(&paths.server_key)?);
    let agents_tls = Arc::new(grpc_tls_config(
        &server_cert,
        &server_key,
        Some(&ca.cert_pem),
    )?);
    let enroll_tls = Arc::new(grpc_tls_config(&server_cert, &server_key, None)?);
    let (telemetry_limits, enroll_limits, api_limits) = Limits::for_this_process();

    let telemetry_listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the telemetry address {}", config.listen))?;
    let enroll_listener = TcpListener::bind(config.enroll_listen)
        .await
        .with_context(|| format!("binding the enrolment address {}", config.enroll_listen))?;
    let api_listener = TcpListener::bind(config.api_listen)
        .await
        .with_context(|| format!("binding the API address {}", config.api_listen))?;
    let telemetry_addr = telemetry_listener.local_addr()?;
    let enroll_addr = enroll_listener.local_addr()?;
    let api_addr = api_listener.local_addr()?;
    let api_tls = Arc::new(crate::api::tls_config(&server_cert, &server_key)?);
    // Scripts and tests read this line to find the ports (they may ask for
    // port 0).
    println!(
        "hallmonitor-collector listening telemetry={telemetry_addr} enroll={enroll_addr} api={api_addr}"
    );
    tracing::info!(%telemetry_addr, %enroll_addr, ca_fingerprint = %ca.fingerprint(), "collector serving");

    let sqlite = store.clone();
    let store: Arc<dyn Store> = Arc::new(store);
    let config = Arc::new(config);
    let streams = Arc::new(Streams::default());
    let streams_stop = CancellationToken::new();
    let sender = Arc::new(crate::notify::Sender::new(&config.notifications)?);
    let notifier = tokio::spawn(crate::notify::run(
        store.clone(),
        config.clone(),
        sender,
        streams.notifier.clone(),
        shutdown.clone(),
    ));

    let rules = tokio::spawn(rules_loop(
        store.clone(),
        config.clone(),
        streams.clone(),
        shutdown.clone(),
    ));
    let evidence = Arc::new(crate::evidence::EvidenceStore::open(data)?);
    let api = tokio::spawn(crate::api::serve(
        tls_incoming(api_listener, api_tls, api_limits, "api", shutdown.clone()),
        crate::api::router(store.clone(), config.clone(), Some(evidence.clone())),
    ));
    let retention = tokio::spawn(retention_loop(
        store.clone(),
        evidence.clone(),
        config.clone(),
        shutdown.clone(),
    ));
    let memory = tokio::spawn(crate::memory::run(
        Duration::from_secs(config.release_memory_every_secs),
        shutdown.clone(),
    ));
    let telemetry = TelemetryService {
        store: store.clone(),
        config: config.clone(),
        streams: streams.clone(),
        evidence,
        heartbeat_interval_secs: config.heartbeat_interval_secs.get(),
        max_batch_events: config.max_batch_events.get(),
        shutdown: streams_stop.clone(),
    };
    let enrollment = EnrollmentService {
        store: store.clone(),
        ca: ca.clone(),
        heartbeat_interval_secs: config.heartbeat_interval_secs.get(),
        refusals: crate::enroll::RefusalLimit::default(),
    };

    let telemetry_server = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(
            TelemetryServer::new(telemetry).max_decoding_message_size(config.max_message_bytes),
        )
        .serve_with_incoming_shutdown(
            tls_incoming(
                telemetry_listener,
                agents_tls,
                telemetry_limits,
                "telemetry",
                shutdown.clone(),
            ),
            shutdown.clone().cancelled_owned(),
        );
    let enroll_server = Server::builder()
        .timeout(Duration::from_secs(30))
        // Enrolment is one call: a connection kept open longer only holds
        // one of the port's few slots.
        .max_connection_age(Duration::from_secs(60))
        .add_service(EnrollmentServer::new(enrollment).max_decoding_message_size(256 * 1024))
        .serve_with_incoming_shutdown(
            tls_incoming(
                enroll_listener,
                enroll_tls,
                enroll_limits,
                "enroll",
                shutdown.clone(),
            ),
            shutdown.clone().cancelled_owned(),
        );

    let servers = async { tokio::try_join!(telemetry_server, enroll_server) };
    tokio::pin!(servers);
    tokio::select! {
        result = &mut servers => { result.context("gRPC server failed")?; }
        _ = shutdown.cancelled() => {
            tracing::info!("shutting down: finishing in-flight batches");
            streams_stop.cancel();
            let grace = Duration::from_secs(config.shutdown_grace_secs);
            match tokio::time::timeout(grace, &mut servers).await {
                Ok(result) => { result.context("gRPC server failed")?; }
                Err(_) => tracing::warn!(grace_secs = config.shutdown_grace_secs, "connections still open after the grace period; closing"),
            }
        }
    }
    // The background tasks stop at the shutdown token; a pass in progress
    // (a rule evaluation, a message being sent, a purge) may finish within
    // the grace period, and is cut off after it.
    let mut background = [rules, api, notifier, retention, memory];
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let finished = tokio::time::timeout(grace, async {
        for task in &mut background {
            let _ = task.await;
        }
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            grace_secs = config.shutdown_grace_secs,
            "background tasks still running after the grace period; stopping them"
        );
        for task in &background {
            task.abort();
        }
    }
    // Closing the last connection checkpoints the WAL into collector.db
    // and removes collector.db-wal, so the file alone is the whole
    // database (a copy after a stop is a backup; nothing stale beside it
    // is replayed onto a restored one).
    drop(store);
    sqlite.close().await;
    tracing::info!("collector stopped");
    Ok(())
}

/// Re-evaluates every device every `evaluate_every_secs` (time passing
/// alone changes verdicts), looks for silent agents hourly, and sends commands and policies decided
/// elsewhere (the CLI, another collector instance) to agents connected
/// here, once a second.
async fn rules_loop(
    store: Arc<dyn Store>,
    config: Arc<CollectorConfig>,
    streams: Arc<Streams>,
    shutdown: CancellationToken,
) {
    let every = Duration::from_secs(config.evaluate_every_secs.get());
    let mut next_evaluation = tokio::time::Instant::now();
    // The silence rule counts in hours: hourly is often enough.
    let mut next_silence_check = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Streams opened from now on were checked when they opened.
    let mut identity_watermark = jiff::Timestamp::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        // A re-enrolment or `devices revoke` (here, the CLI or another
        // instance) ends the device's open stream within a second.
        if let Err(e) = close_superseded_streams(&*store, &streams, &mut identity_watermark).await {
            tracing::error!(error = %e, "checking device identities failed");
        }
        if tokio::time::Instant::now() >= next_evaluation {
            next_evaluation = tokio::time::Instant::now() + every;
            let filter = crate::store::DeviceFilter::default();
            match crate::rules::evaluate::refresh(&*store, &config, &filter, jiff::Timestamp::now())
                .await
            {
                Ok(changes) => {
                    if !changes.opened.is_empty() {
                        streams.notifier.notify_one();
                    }
                    if !changes.opened.is_empty() || !changes.resolved.is_empty() {
                        tracing::info!(
                            opened = changes.opened.len(),
                            resolved = changes.resolved.len(),
                            auto_approved = changes.auto_approved.len(),
                            "device-activity rule evaluated"
                        );
                    }
                    for device in streams.connected() {
                        if let Ok(Some(state)) = device_state(&*store, &config, &device).await {
                            streams.send(&device, state).await;
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "evaluating the device-activity rule failed"),
            }
        }
        if tokio::time::Instant::now() >= next_silence_check {
            next_silence_check = tokio::time::Instant::now() + Duration::from_secs(3600);
            match crate::rules::silence::check_silent_devices(
                &*store,
                &config.tamper,
                jiff::Timestamp::now(),
            )
            .await
            {
                Ok(opened) if !opened.is_empty() => {
                    tracing::info!(
                        opened = opened.len(),
                        "agent-silence rule opened tamper flags"
                    );
                    streams.notifier.notify_one();
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "checking for silent agents failed"),
            }
        }
        if let Err(e) = dispatch_commands(&*store, &streams).await {
            tracing::error!(error = %e, "dispatching commands failed");
        }
        // A policy saved by the CLI (or another instance) reaches the
        // agents connected here within a second.
        if let Err(e) = dispatch_policies(&*store, &streams, None).await {
            tracing::error!(error = %e, "dispatching policies failed");
        }
        if let Err(e) = crate::ingest::dispatch_aups(&*store, &streams, None).await {
            tracing::error!(error = %e, "dispatching acceptable-use policies failed");
        }
    }
}

/// Purges expired evidence at start and then daily.
async fn retention_loop(
    store: Arc<dyn Store>,
    evidence: Arc<crate::evidence::EvidenceStore>,
    config: Arc<CollectorConfig>,
    shutdown: CancellationToken,
) {
    let mut daily = tokio::time::interval(Duration::from_secs(24 * 3600));
    loop {
        tokio::select! {
            _ = daily.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        // Each site's period, read again each day: the console may have
        // changed it.
        let retention = match crate::site_settings::retention_by_site(&*store, &config).await {
            Ok(retention) => retention,
            Err(e) => {
                tracing::error!(error = %e, "reading sites' evidence retention failed");
                continue;
            }
        };
        match crate::incidents::purge_expired(
            &*store,
            &evidence,
            &retention,
            jiff::Timestamp::now(),
        )
        .await
        {
            Ok(purge) if purge.captures == 0 => {}
            Ok(purge) => tracing::info!(
                captures = purge.captures,
                images = purge.images_removed,
                images_skipped = purge.images_skipped.len(),
                "expired evidence purged"
            ),
            Err(e) => tracing::error!(error = %e, "purging expired evidence failed"),
        }
    }
}
