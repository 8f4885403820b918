//! `run`: the agent daemon. Enrols first if it has no identity (zero-touch:
//! MDM drops the config, the service starts, the device appears), then runs
//! its tasks until shutdown: the producer (heartbeats, facts on start and on
//! change), sessions, auth logs, the file watcher and the helper socket
//! appending to the outbox, the stream draining it, and the enforcer
//! applying commands. A `Supervisor` holds them: the first task to fail
//! stops the rest and the daemon exits non-zero, so systemd restarts it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hallmonitor_proto::v1;
use jiff::Timestamp;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::authlog::{self, follow};
use crate::config::AgentConfig;
use crate::enroll::{self, EnrollError, Identity};
use crate::facts::{self, FactSources};
use crate::outbox::{self, OpenError, Outbox};
use crate::sessions;
use crate::stream::{self, StreamSettings};

pub fn fact_sources(config: &AgentConfig) -> FactSources {
    FactSources {
        machine_id_override: config.machine_id.clone(),
        ..FactSources::default()
    }
}

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

    let hub = Arc::new(crate::policy::PolicyHub::load(&outbox, &config.capture).await?);
    let wake = Arc::new(Notify::new());
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
    tasks.spawn(
        "producer",
        produce(
            config.clone(),
            outbox.clone(),
            wake.clone(),
            shutdown.clone(),
        ),
    );
    let (commands, command_queue) = tokio::sync::mpsc::channel(16);
    // Ends when the stream drops the only command sender.
    tasks.spawn(
        "enforcer",
        enforce_commands(config.clone(), outbox.clone(), command_queue, wake.clone()),
    );
    tasks.spawn(
        "sessions",
        track_sessions(
            config.clone(),
            outbox.clone(),
            wake.clone(),
            shutdown.clone(),
        ),
    );
    let presence = Arc::new(crate::gaps::HelperPresence::installed());
    tasks.spawn(
        "session helper socket",
        crate::capture::serve_helpers(
            config.capture.socket.clone(),
            outbox.clone(),
            hub.clone(),
            presence.clone(),
            wake.clone(),
            shutdown.clone(),
        ),
    );
    if config.capture.helper_grace_secs > 0 {
        tasks.spawn(
            "monitoring gaps",
            watch_helpers(
                config.clone(),
                outbox.clone(),
                presence,
                wake.clone(),
                shutdown.clone(),
            ),
        );
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
    tasks.spawn(
        "auth logs",
        watch_auth_logs(
            config.clone(),
            outbox.clone(),
            wake.clone(),
            shutdown.clone(),
        ),
    );
    let settings = StreamSettings {
        collector: config.collector.clone(),
        delivery: config.delivery.clone(),
        heartbeat_interval_secs: config.heartbeat_interval_secs,
        commands,
        policies: hub,
    };
    let (stream_outbox, token) = (outbox.clone(), shutdown.clone());
    tasks.spawn("stream", async move {
        stream::run(identity, settings, stream_outbox, wake, token)
            .await
            .map_err(anyhow::Error::from)
    });

    let failure = tasks.wait(&shutdown).await;
    outbox.set_state("daemon_pid", "").await.ok();
    outbox.close().await;
    match failure {
        Some(e) => Err(e),
        None => {
            tracing::info!("agent stopped");
            Ok(())
        }
    }
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
    let mut trouble = WriteTrouble::default();
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
        let written = async {
            if !events.is_empty() {
                outbox.append_all(events).await?;
            }
            // Evictions while connected (a burst of captures, a slow link)
            // are reported at the next tick rather than at the next
            // reconnection.
            outbox.take_eviction_report().await?;
            let heartbeat = v1::Heartbeat {
                uptime_secs: facts::uptime_secs(),
                interval_secs: interval,
            };
            outbox.append_heartbeat(now, heartbeat).await?;
            outbox.set_state(ALIVE_AT, &now.to_string()).await
        }
        .await;
        match written {
            Ok(()) => {
                trouble.cleared("producer");
                wake.notify_one();
            }
            Err(e) => {
                // A full disk: the facts are sent again once it is not.
                trouble.failed("producer", &e);
                last_facts = None;
            }
        }
    }
}

/// Outbox state key: the producer's last successful write. `status`
/// reads a stalled outbox (a full disk) from its age.
pub const ALIVE_AT: &str = "daemon_alive_at";

/// A task's outbox writes failing (a full disk, an I/O error): said once
/// when they start failing and once when they work again, while the task
/// retries, instead of the task (and with it the daemon) stopping.
#[derive(Debug, Default)]
pub struct WriteTrouble {
    said: Option<String>,
}

impl WriteTrouble {
    pub fn failed(&mut self, task: &str, error: &dyn std::fmt::Display) {
        let text = error.to_string();
        if self.said.as_ref() != Some(&text) {
            tracing::error!(task, error = %text, "cannot write to the outbox; will retry");
            self.said = Some(text);
        }
    }

    pub fn cleared(&mut self, task: &str) {
        if self.said.take().is_some() {
            tracing::info!(task, "writing to the outbox again");
        }
    }
}

/// Applies commands from the collector one at a time, in order.
async fn enforce_commands(
    config: AgentConfig,
    outbox: Outbox,
    mut queue: tokio::sync::mpsc::Receiver<v1::Command>,
    wake: Arc<Notify>,
) -> anyhow::Result<()> {
    while let Some(command) = queue.recv().await {
        if crate::enforce::apply(&config, &outbox, command)
            .await?
            .is_some()
        {
            wake.notify_one();
        }
    }
    Ok(())
}

/// Polls the session source and queues start and end events. The ledger
/// of open sessions is kept in the outbox state so a restart neither
/// repeats a start nor loses an end.
async fn track_sessions(
    config: AgentConfig,
    outbox: Outbox,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let source: Arc<dyn sessions::SessionSource> = Arc::from(sessions::source(&config.sessions));
    tracing::info!(source = source.name(), "tracking login sessions");
    let mut ledger: sessions::Ledger = match outbox.state(sessions::LEDGER_KEY).await? {
        Some(json) => serde_json::from_str(&json).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "session ledger unreadable; starting afresh");
            sessions::Ledger::new()
        }),
        None => sessions::Ledger::new(),
    };
    let mut poll = tokio::time::interval(Duration::from_secs(u64::from(config.sessions.poll_secs)));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    let mut trouble = WriteTrouble::default();
    loop {
        tokio::select! {
            _ = poll.tick() => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        let reader = source.clone();
        let live = match tokio::task::spawn_blocking(move || reader.sessions()).await? {
            Ok(live) => {
                warned = false;
                live
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "cannot read login sessions; will retry");
                    warned = true;
                }
                continue;
            }
        };
        let now = Timestamp::now();
        let before = ledger.clone();
        let events = sessions::track(&mut ledger, live, now);
        let ledger_json = serde_json::to_string(&ledger)?;
        let starts: Vec<String> = events
            .iter()
            .filter(|e| e.phase == v1::session_event::Phase::Start as i32)
            .map(|e| e.session_id.clone())
            .collect();
        let written = async {
            if !events.is_empty() {
                let bodies = events
                    .into_iter()
                    .map(|e| (now, v1::event::Body::Session(e)))
                    .collect();
                outbox.append_all(bodies).await?;
                wake.notify_one();
            }
            outbox.set_state(sessions::LEDGER_KEY, &ledger_json).await
        }
        .await;
        if let Err(e) = written {
            // Not queued: the next poll finds the same changes again.
            trouble.failed("sessions", &e);
            ledger = before;
            continue;
        }
        trouble.cleared("sessions");
        for id in starts {
            if let Some(tracked) = ledger.get(&id) {
                stale_mfa_login(&config, &outbox, &tracked.session).await;
            }
        }
    }
}

/// Reports graphical sessions that have no session helper (see `gaps`).
/// Reads the session ledger `track_sessions` keeps in the outbox.
async fn watch_helpers(
    config: AgentConfig,
    outbox: Outbox,
    presence: Arc<crate::gaps::HelperPresence>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use crate::gaps;
    let grace = Duration::from_secs(u64::from(config.capture.helper_grace_secs));
    let mut book: gaps::GapBook = outbox
        .state(gaps::STATE_KEY)
        .await?
        .and_then(|json| serde_json::from_str(&json).ok())
        .unwrap_or_default();
    // As often as sessions are polled, and at least ten times a grace.
    let every = Duration::from_secs(u64::from(config.sessions.poll_secs.max(1)))
        .min(grace / 10)
        .max(Duration::from_secs(1));
    let mut poll = tokio::time::interval(every);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = poll.tick() => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        let ledger: sessions::Ledger = match outbox.state(sessions::LEDGER_KEY).await {
            Ok(json) => json
                .and_then(|json| serde_json::from_str(&json).ok())
                .unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the session ledger; will retry");
                continue;
            }
        };
        let now = Timestamp::now();
        let events = gaps::check(
            &mut book,
            &ledger,
            |uid| presence.is_connected(uid),
            now,
            grace,
        );
        if events.is_empty() {
            continue;
        }
        for gap in &events {
            if gap.phase == v1::session_event::Phase::Start as i32 {
                tracing::warn!(session = %gap.session_id, uid = gap.uid, "a graphical session has no session helper: monitoring gap reported");
            } else {
                tracing::info!(session = %gap.session_id, "monitoring gap closed");
            }
        }
        let bodies = events
            .into_iter()
            .map(|gap| (now, v1::event::Body::MonitoringGap(gap)))
            .collect();
        // Events first: a crash before the book is saved reports a gap
        // twice (the collector folds them), never not at all.
        if let Err(e) = outbox.append_all(bodies).await {
            tracing::warn!(error = %e, "cannot queue a monitoring gap; will retry");
            // Forget what was decided so the next pass decides it again.
            book = outbox
                .state(gaps::STATE_KEY)
                .await
                .ok()
                .flatten()
                .and_then(|json| serde_json::from_str(&json).ok())
                .unwrap_or_default();
            continue;
        }
        wake.notify_one();
        if let Err(e) = outbox
            .set_state(gaps::STATE_KEY, &serde_json::to_string(&book)?)
            .await
        {
            tracing::warn!(error = %e, "cannot record monitoring gaps");
        }
    }
}

/// Follows where two-step sign-ins are logged and queues an MFA-completion
/// event per accepted second factor (see `authlog::follow`). Bad patterns
/// end the task; a log or journal it cannot read, or an outbox it cannot
/// write, is logged and tried again at the next tick.
async fn watch_auth_logs(
    config: AgentConfig,
    outbox: Outbox,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use notify::Watcher;
    let patterns = config.mfa.compiled().map_err(|e| anyhow::anyhow!(e))?;
    let (setting, journalctl) = (config.mfa.source, config.mfa.journalctl.clone());
    let (source, why) = tokio::task::spawn_blocking(move || {
        follow::choose(setting, || {
            authlog::journal::journald_runs(
                &journalctl,
                std::path::Path::new(authlog::journal::SOCKET),
            )
        })
    })
    .await?;
    tracing::info!(source = source.name(), reason = %why, "reading two-step sign-ins");
    let mut follower = follow::Follower::new(&config.mfa, source, &config.data_dir, patterns);
    // Wake on any change in the logs' folders (rotation creates files).
    let changed = Arc::new(Notify::new());
    let notifier = changed.clone();
    let mut watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
        notifier.notify_one();
    })
    .ok();
    if let Some(watcher) = watcher.as_mut() {
        for folder in follower.folders() {
            if let Err(e) = watcher.watch(&folder, notify::RecursiveMode::NonRecursive) {
                tracing::debug!(folder = %folder.display(), error = %e, "not watching; polling only");
            }
        }
    }
    let mut poll = tokio::time::interval(Duration::from_secs(u64::from(config.mfa.poll_secs)));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = poll.tick() => {}
            _ = changed.notified() => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        if follower.read_all(&outbox).await? > 0 {
            wake.notify_one();
        }
    }
}

/// A staff account whose two-step sign-in on this device is stale (as the
/// collector last said) has logged in: tell them, and lock the session if
/// the site asks for it.
async fn stale_mfa_login(config: &AgentConfig, outbox: &Outbox, session: &sessions::LiveSession) {
    let Ok(Some(state)) = outbox.state("compliance_json").await else {
        return;
    };
    let Ok(report) = serde_json::from_str::<serde_json::Value>(&state) else {
        return;
    };
    let stale = report["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|d| d["mfa"].as_array().into_iter().flatten())
        .any(|p| p["account"] == session.account.to_lowercase().as_str() && p["status"] == "stale");
    if !stale {
        return;
    }
    tracing::info!(uid = session.uid, session = %session.platform_id, "staff login with stale two-step sign-in");
    let fill = |arg: &String| {
        arg.replace("{account}", &session.account)
            .replace("{uid}", &session.uid.to_string())
    };
    if let Some((program, args)) = config.mfa.notify_command.split_first() {
        let status = tokio::process::Command::new(fill(program))
            .args(args.iter().map(fill))
            .status()
            .await;
        if !matches!(status, Ok(s) if s.success()) {
            tracing::warn!(?status, "could not show the two-step sign-in notice");
        }
    }
    let lock = outbox.state("lock_stale_mfa_sessions").await.ok().flatten();
    if lock.as_deref() == Some("true")
        && !config.enforcement.admin_accounts.contains(&session.account)
        && let Some((program, args)) = config.enforcement.lock_session_command.split_first()
    {
        let status = tokio::process::Command::new(program)
            .args(args)
            .arg(&session.platform_id)
            .status()
            .await;
        if !matches!(status, Ok(s) if s.success()) {
            tracing::warn!(?status, "could not lock the session");
        }
    }
}
