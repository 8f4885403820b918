//! `run`: the agent daemon, wiring only. Takes the data directory's lock
//! (one daemon per directory), enrols first if it has no identity
//! (zero-touch: MDM drops the config, the service starts, the device
//! appears), opens the outbox, then runs its tasks until shutdown, each
//! given a `TaskContext` (config, outbox, wake, shutdown): the producer
//! (`heartbeat`), the session tracker (`sessions::watch`), the auth-log or
//! journal follower (`authlog::follow::watch`), the file watcher
//! (`files::watch`), the helper socket (`capture::serve_helpers`), the
//! monitoring-gap check (`gaps::watch`) and the policy-override watcher
//! append to the outbox or change what is in force; the stream drains it
//! and the enforcer (`enforce::run_commands`) applies commands. A
//! `Supervisor` holds them: the first task to fail stops the rest and the
//! daemon exits non-zero, so systemd restarts it.

use std::sync::Arc;

use anyhow::Context;
use hallmonitor_proto::v1;
use jiff::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::enroll::{self, EnrollError, Identity};
use crate::facts;
use crate::outbox::{self, OpenError, Outbox};
use crate::state::State;
use crate::stream::{self, StreamSettings};
use crate::task::TaskContext;

pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    crate::data_dir::prepare(&config.data_dir)
        .with_context(|| format!("preparing {}", config.data_dir.display()))?;
    // One daemon per data directory: two would share one outbox and one
    // identity, each stream closing the other's.
    let _only_daemon = lock_data_dir(&config.data_dir)?;
    let Some(identity) = identity_or_enroll(&config, &shutdown).await? else {
        return Ok(());
    };
    tracing::info!(device_id = %identity.device_id, site = %identity.site, "agent starting");

    let Some((outbox, moved)) = open_outbox(&config, &shutdown).await? else {
        return Ok(());
    };
    // Best effort: a disk that filled while the daemon was stopped must not
    // stop it from starting (its tasks retry their writes).
    let this_run = crate::signals::ThisRun::current(&config);
    if let Err(e) = record_start(&outbox, &this_run).await {
        tracing::error!(error = %e, "cannot record the daemon's start in the outbox");
    }
    if let Some(moved) = moved
        && let Err(e) = outbox
            .append(
                Timestamp::now(),
                v1::event::Body::OutboxReport(v1::OutboxReport {
                    corrupt_file_moved_to: moved.display().to_string(),
                    ..Default::default()
                }),
            )
            .await
    {
        tracing::error!(error = %e, moved = %moved.display(), "cannot queue the report of the corrupt outbox moved aside");
    }

    let hub = Arc::new(crate::policy::PolicyHub::load(&outbox, &config.capture).await?);
    let aup = Arc::new(crate::aup::AupHub::load(&outbox).await?);
    let wake = Arc::new(crate::stream::Wake::default());
    let ctx = TaskContext {
        config: config.clone(),
        outbox: outbox.clone(),
        wake: wake.clone(),
        shutdown: shutdown.clone(),
    };
    let mut tasks = Supervisor::default();
    let (hub_for_override, override_path, token) = (
        hub.clone(),
        config.capture.policy_override.clone(),
        shutdown.clone(),
    );
    tasks.spawn("policy override", async move {
        crate::policy::watch_override(hub_for_override, override_path, token).await;
        Ok(())
    });
    tasks.spawn("producer", crate::heartbeat::run(ctx.clone()));
    let (commands, command_queue) = tokio::sync::mpsc::channel(16);
    // Ends when the stream drops the only command sender.
    tasks.spawn(
        "enforcer",
        crate::enforce::run_commands(ctx.clone(), command_queue),
    );
    tasks.spawn("sessions", crate::sessions::watch(ctx.clone()));
    let presence = Arc::new(crate::gaps::HelperPresence::installed());
    tasks.spawn(
        "tamper signals",
        crate::signals::watch(ctx.clone(), presence.clone(), this_run),
    );
    tasks.spawn(
        "session helper socket",
        crate::capture::serve_helpers(crate::capture::HelperSocket {
            socket: config.capture.socket.clone(),
            outbox: outbox.clone(),
            hub: hub.clone(),
            aup: aup.clone(),
            config: Arc::new(config.clone()),
            presence: presence.clone(),
            wake: wake.clone(),
            shutdown: shutdown.clone(),
        }),
    );
    if config.capture.helper_grace_secs > 0 {
        tasks.spawn("monitoring gaps", crate::gaps::watch(ctx.clone(), presence));
    }
    tasks.spawn(
        "file watcher",
        crate::files::watch(
            config.files.clone(),
            outbox.clone(),
            wake.clone(),
            shutdown.clone(),
        ),
    );
    tasks.spawn("auth logs", crate::authlog::follow::watch(ctx));
    let settings = StreamSettings {
        collector: config.collector.to_string(),
        delivery: config.delivery.clone(),
        heartbeat_interval_secs: config.heartbeat_interval_secs.get(),
        commands,
        policies: hub,
        aup,
    };
    let (stream_outbox, token) = (outbox.clone(), shutdown.clone());
    tasks.spawn("stream", async move {
        stream::run(identity, settings, stream_outbox, wake, token)
            .await
            .map_err(anyhow::Error::from)
    });

    let failure = tasks.wait(&shutdown).await;
    let why = failure
        .as_ref()
        .map_or_else(String::new, |e| format!("{e:#}"));
    let stopped = v1::event::Body::AgentSignal(crate::signals::stopped(why));
    if let Err(e) = outbox.append(Timestamp::now(), stopped).await {
        tracing::warn!(error = %e, "cannot queue the agent's stop");
    }
    State::new(&outbox).record_daemon_stop().await.ok();
    outbox.close().await;
    match failure {
        Some(e) => Err(e),
        None => {
            tracing::info!("agent stopped");
            Ok(())
        }
    }
}

/// Queues what the previous run's end and this start tell (an unclean
/// stop, an upgrade, a changed configuration, the start), then records
/// this run for the next start to compare with: events first, so a crash
/// in between reports twice rather than never.
async fn record_start(outbox: &Outbox, this_run: &crate::signals::ThisRun) -> anyhow::Result<()> {
    let state = State::new(outbox);
    let previous = state.previous_run().await?;
    let now = Timestamp::now();
    let signals = crate::signals::at_start(&previous, this_run);
    for signal in &signals {
        if signal.kind != v1::agent_signal::Kind::Started as i32 {
            tracing::warn!(signal = ?v1::agent_signal::Kind::try_from(signal.kind), "reported to the collector");
        }
    }
    outbox
        .append_all(
            signals
                .into_iter()
                .map(|s| (now, v1::event::Body::AgentSignal(s)))
                .collect(),
        )
        .await?;
    state.record_run(this_run).await?;
    state.record_daemon_start(std::process::id(), now).await?;
    Ok(())
}

/// Holds an exclusive lock on DATA_DIR/daemon.lock for as long as the
/// daemon runs (the kernel releases it when the process ends, however it
/// ends).
fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("daemon.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another hallmonitor-agent daemon is running on {} (it holds {}); stop it first",
            dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// The daemon's tasks, supervised: the first one that fails (or panics)
/// is logged with its name and stops the others through the shutdown
/// token, and the daemon exits non-zero so the service manager restarts
/// it. A monitoring agent with a dead task must never look healthy.
#[derive(Default)]
struct Supervisor {
    tasks: tokio::task::JoinSet<anyhow::Result<()>>,
    names: std::collections::HashMap<tokio::task::Id, &'static str>,
}

impl Supervisor {
    fn spawn(
        &mut self,
        name: &'static str,
        task: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Waits for every task; the first failure, if any.
    async fn wait(mut self, shutdown: &CancellationToken) -> Option<anyhow::Error> {
        let mut failure = None;
        while let Some(joined) = self.tasks.join_next_with_id().await {
            let (id, result) = match joined {
                Ok((id, result)) => (id, result),
                Err(e) => (
                    e.id(),
                    Err(anyhow::anyhow!("task panicked or was cancelled: {e}")),
                ),
            };
            let name = self.names.get(&id).copied().unwrap_or("task");
            let Err(e) = result else {
                tracing::debug!(task = name, "task finished");
                continue;
            };
            if failure.is_some() {
                tracing::warn!(task = name, error = %format!("{e:#}"), "task failed while stopping");
                continue;
            }
            tracing::error!(task = name, error = %format!("{e:#}"), "task failed; stopping the agent so its service manager restarts it");
            shutdown.cancel();
            failure = Some(e.context(format!("{name} task failed")));
        }
        failure
    }
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
        let facts = facts::collect_for(config).await;
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
            Err(EnrollError::Busy(e)) => {
                tracing::warn!(error = %e, "enrolment: collector busy; will retry")
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

/// Opens the outbox, waiting while it is unavailable (a full disk, an I/O
/// error, another process's lock) instead of exiting: its file and events
/// stay as they are until it opens. Each new reason is logged once and
/// written beside the outbox for `status`. None if shutdown came first.
async fn open_outbox(
    config: &AgentConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<(Outbox, Option<std::path::PathBuf>)>> {
    let note = config.data_dir.join(outbox::UNAVAILABLE_FILE);
    let mut said = String::new();
    let mut attempt = 0;
    loop {
        match Outbox::open(&config.data_dir, config.delivery.outbox_max_bytes).await {
            Ok(opened) => {
                if !said.is_empty() {
                    tracing::info!("outbox available again");
                }
                // Also one a stopped daemon left behind.
                let _ = std::fs::remove_file(&note);
                return Ok(Some(opened));
            }
            Err(OpenError::Unavailable(e)) => {
                let error = e.to_string();
                if error != said {
                    tracing::error!(error = %error, "outbox unavailable; its file is left as it is; will retry");
                    // Best effort: on a full disk this fails too.
                    if let Err(e) = crate::data_dir::write_private(&note, error.as_bytes()) {
                        tracing::debug!(error = %e, "cannot record why the outbox is unavailable");
                    }
                    said = error;
                }
            }
            Err(e) => return Err(e).context("opening the outbox"),
        }
        let delay = stream::backoff(&config.delivery, attempt, 1.0);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return Ok(None),
        }
    }
}
