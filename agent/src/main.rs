//! hallmonitor-agent: command-line entry point. Parses arguments, installs
//! the rustls crypto provider and logging, and calls the library. (The
//! session helper is its own program, `hallmonitor-session`.)

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use hallmonitor_agent::config::{self, AgentConfig};
use hallmonitor_agent::enroll::{self, Identity};
use hallmonitor_agent::{check, daemon, doctor, enforce, status};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "hallmonitor-agent",
    version,
    about = "Hall Monitor device agent"
)]
struct Cli {
    /// Configuration file (default /etc/hallmonitor/agent.toml; HALLMONITOR_*
    /// environment variables override it).
    #[arg(long, global = true, env = "HALLMONITOR_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enrol this device with the collector and store its identity.
    Enroll {
        /// Enrol again even if already enrolled (keeps the device id).
        #[arg(long)]
        force: bool,
    },
    /// Run the daemon: enrol if needed, then stream to the collector.
    Run,
    /// Show enrolment, connection and queue state.
    Status {
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
    /// Compliance of this device as the collector last evaluated it (same
    /// JSON schema as `hallmonitor-collector compliance check`). Exit 0
    /// when compliant, 1 when not, 2 when unknown or on error.
    Check {
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
    /// Check configuration, identity, collector and its CA pin, outbox,
    /// socket folder, session helpers, PAM hook and clock; print what to
    /// fix. Exit 0 when all is well, 1 on a warning, 2 on a failure.
    Doctor {
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
    /// PAM hook placed after a second-factor module that does not log its
    /// own success (pam_u2f, pam_oath): records that the second factor was
    /// accepted for the account, for the 2FA-freshness rule.
    MfaHook {
        /// The module that accepted the second factor.
        #[arg(long)]
        method: String,
        /// The account (default: PAM_USER, as pam_exec sets it).
        #[arg(long, env = "PAM_USER")]
        user: String,
    },
    /// Login hook for PAM (pam_exec): exit 0 when the account may log in,
    /// 1 when the device is disabled and the account is not an
    /// administrator.
    LoginAllowed {
        /// The account (default: PAM_USER, as pam_exec sets it).
        #[arg(long, env = "PAM_USER")]
        user: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // The login hook takes its configuration from its command line only,
    // not from HALLMONITOR_CONFIG: PAM hooks run in an environment other
    // accounts may set (pam_env user files, sshd AcceptEnv).
    let config_on_command_line =
        matches.value_source("config") == Some(clap::parser::ValueSource::CommandLine);
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HALLMONITOR_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Command::LoginAllowed { user } = &cli.command {
        let config = cli.config.as_deref().filter(|_| config_on_command_line);
        return login_allowed(config, user);
    }
    limit_malloc_arenas();
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The agent's runtime: one thread. Every command, the daemon included,
/// waits on sockets, timers and SQLite (sqlx gives the connection a thread
/// of its own) and does its blocking work (sysinfo, `loginctl`, reading
/// logs, files) through `spawn_blocking`; a pool of workers would add only
/// threads to keep resident, each with its stack and a malloc arena
/// (issue 17: the daemon idles in at most 10 MiB). The blocking pool is
/// bounded (tokio's default is 512): the daemon's blocking calls are
/// short and few at a time.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(8)
        .enable_all()
        .build()
}

/// glibc gives every new thread a malloc arena of its own (up to eight
/// per core) and keeps what each arena frees for that arena, so a thread
/// that once allocated leaves its free pages resident. The daemon's
/// threads (the runtime, sqlx's connection, the blocking pool, the file
/// watcher) allocate little and seldom contend, so two arenas serve them.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes no pointers and runs before any other thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Run = cli.command {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        tokio::spawn(hallmonitor_agent::memory::watch(shutdown.clone()));
        let Some(config) = usable_config(cli.config.as_deref(), &shutdown).await else {
            return Ok(ExitCode::SUCCESS);
        };
        daemon::run(config, shutdown).await?;
        return Ok(ExitCode::SUCCESS);
    }
    // The doctor reports a configuration that does not load.
    if let Command::Doctor { format } = cli.command {
        let report = doctor::run(
            cli.config.as_deref(),
            &config::process_env(),
            jiff::Timestamp::now(),
        )
        .await;
        match format {
            OutputFormat::Text => print!("{}", doctor::render_text(&report)),
            OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        }
        return Ok(ExitCode::from(report.exit_code()));
    }
    let config = AgentConfig::load(cli.config.as_deref(), &config::process_env())?;
    match cli.command {
        Command::Enroll { force } => {
            if let Some(identity) = Identity::load(&config.data_dir)?
                && !force
            {
                bail!(
                    "already enrolled as {} (site {}); use --force to enrol again",
                    identity.device_id,
                    identity.site
                );
            }
            let facts = hallmonitor_agent::facts::collect_for(&config).await;
            let identity = enroll::enroll(&config, facts).await?;
            println!(
                "Enrolled as {} (site {}).",
                identity.device_id, identity.site
            );
        }
        Command::Run => unreachable!("handled above"),
        Command::Status { format } => {
            let status = status::read(&config, jiff::Timestamp::now()).await?;
            match format {
                OutputFormat::Text => print!("{}", status::render_text(&status)),
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&status)?),
            }
        }
        Command::Check { format } => {
            let report = check::read(&config).await?;
            match format {
                OutputFormat::Text => print!("{}", check::render_text(&report)),
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report.json)?),
            }
            return Ok(ExitCode::from(report.exit_code));
        }
        Command::MfaHook { method, user } => {
            mfa_hook(&config, &method, &user)?;
        }
        Command::LoginAllowed { .. } | Command::Doctor { .. } => {
            unreachable!("handled before loading the configuration")
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The daemon's configuration, waiting for it to become usable: a file
/// an MDM delivers late or wrong is reported once per distinct error
/// (with its file and line), then re-read when it changes or, at the
/// latest, after a back-off that doubles from 2 s to 2 minutes. Exiting
/// instead would have the service manager restart the agent and repeat
/// the same error in the journal every 30 s. None: asked to stop.
async fn usable_config(
    path: Option<&std::path::Path>,
    shutdown: &CancellationToken,
) -> Option<AgentConfig> {
    use std::time::Duration;
    const FIRST: Duration = Duration::from_secs(2);
    const LONGEST: Duration = Duration::from_secs(120);
    let watched = path
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| config::DEFAULT_PATH.into());
    let stamp = || {
        std::fs::metadata(&watched)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    let mut reported: Option<String> = None;
    let mut wait = FIRST;
    loop {
        let seen = stamp();
        match AgentConfig::load(path, &config::process_env()) {
            Ok(config) => {
                if reported.is_some() {
                    tracing::info!(file = %watched.display(), "the configuration is usable now");
                }
                return Some(config);
            }
            Err(e) => {
                let message = format!("{e:#}");
                if reported.as_deref() != Some(message.as_str()) {
                    tracing::error!(
                        file = %watched.display(),
                        error = %message,
                        "the configuration cannot be used; waiting for it to change"
                    );
                    reported = Some(message);
                    wait = FIRST;
                }
            }
        }
        // Until the file changes or the back-off ends, whichever is first.
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if stamp() != seen || tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        wait = (wait * 2).min(LONGEST);
    }
}

/// Appends one line the auth-log follower recognises. Never fails the
/// login: PAM calls this as `optional`.
fn mfa_hook(config: &AgentConfig, method: &str, user: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let clean = |s: &str| -> String {
        s.chars()
            .filter(|c| !c.is_whitespace() && !c.is_control())
            .collect()
    };
    let (method, user) = (clean(method), clean(user));
    if user.is_empty() || method.is_empty() {
        bail!("mfa-hook needs a method and an account");
    }
    let path = hallmonitor_agent::authlog::hook_log(&config.data_dir);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // Private whatever the umask (and if an older version made it looser).
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    writeln!(
        file,
        "{} hallmonitor-mfa: {method} accepted for {user}",
        jiff::Timestamp::now()
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The PAM hook fails closed for everyone but administrators (see
/// `enforce`): exit 0 lets the account in, 1 refuses it.
fn login_allowed(config_path: Option<&std::path::Path>, user: &str) -> ExitCode {
    let decision = match AgentConfig::load_for_login(config_path) {
        Ok(config) => enforce::login(&config, user),
        Err(e) => enforce::login_unconfigured(user, &e.to_string()),
    };
    match decision {
        enforce::Login::Allowed => ExitCode::SUCCESS,
        enforce::Login::Disabled => {
            eprintln!("This device has been disabled by the school. Please contact the IT team.");
            ExitCode::from(1)
        }
        enforce::Login::Undetermined(why) => {
            eprintln!(
                "hallmonitor: {why}; only administrators may log in. Please contact the IT team."
            );
            ExitCode::from(1)
        }
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        tracing::error!("cannot listen for SIGTERM");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
