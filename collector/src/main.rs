//! hallmonitor-collector: command-line entry point. Parses arguments,
//! installs the rustls crypto provider and logging, and calls the library.

use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use commands::aup::AupCommand;
use commands::devices::{DevicesCommand, SecretCommand};
use commands::flags::{ComplianceCommand, FlagsCommand};
use commands::incidents::{EvidenceCommand, IncidentsCommand};
use commands::mfa::{ApiTokenCommand, DirectoryCommand, MfaCommand, SigninsCommand};
use commands::notifications::{NotificationsCommand, NotifyCommand, RecipientsCommand};
use commands::policy::PolicyCommand;
use commands::users::UsersCommand;
use hallmonitor_collector::{init, serve};
use tokio_util::sync::CancellationToken;

mod commands;

#[derive(Parser)]
#[command(
    name = "hallmonitor-collector",
    version,
    about = "Hall Monitor collector: enrolment, ingest and checks"
)]
struct Cli {
    /// Collector data directory (configuration, certificates, database).
    #[arg(
        long,
        global = true,
        env = "HALLMONITOR_DATA",
        default_value = "/var/lib/hallmonitor-collector"
    )]
    data: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new data directory: CA, server certificate, database, first
    /// site, its enrolment secret and the first console administrator.
    Init {
        /// Name of the first site (school).
        #[arg(long)]
        site: String,
        /// Host names or IP addresses agents use to reach the collector (repeatable).
        #[arg(long = "hostname", required = true)]
        hostnames: Vec<String>,
        /// Time zone the site's reports are shown in.
        #[arg(long, default_value = "Europe/London")]
        timezone: String,
        /// User name of the first console administrator.
        #[arg(long, default_value = "admin")]
        admin_user: String,
        /// Telemetry address to write into collector.toml.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Enrolment address to write into collector.toml.
        #[arg(long)]
        enroll_listen: Option<SocketAddr>,
        /// HTTPS API address to write into collector.toml.
        #[arg(long)]
        api_listen: Option<SocketAddr>,
    },
    /// Serve enrolment and telemetry until SIGTERM or SIGINT.
    Serve {
        /// Telemetry address (overrides collector.toml).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Enrolment address (overrides collector.toml).
        #[arg(long)]
        enroll_listen: Option<SocketAddr>,
        /// HTTPS API address (overrides collector.toml).
        #[arg(long)]
        api_listen: Option<SocketAddr>,
    },
    /// What the collector knows about devices.
    Devices {
        #[command(subcommand)]
        command: DevicesCommand,
    },
    /// Manage sites' enrolment secrets.
    EnrollSecret {
        #[command(subcommand)]
        command: SecretCommand,
    },
    /// Device compliance with the rules, for scripts: exit 0 when
    /// everything selected is compliant, 1 when something is not, 2 on error.
    Compliance {
        #[command(subcommand)]
        command: ComplianceCommand,
    },
    /// Flags raised by the rules, and the decisions on them.
    Flags {
        #[command(subcommand)]
        command: FlagsCommand,
    },
    /// A site's directory of accounts: who is staff, who is a pupil.
    Directory {
        #[command(subcommand)]
        command: DirectoryCommand,
    },
    /// Identity-provider sign-in logs: evidence of two-step sign-ins.
    Signins {
        #[command(subcommand)]
        command: SigninsCommand,
    },
    /// Console accounts: add, list, disable, enable, passwd, roles.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Print the JSON API's OpenAPI document (also served at
    /// /api/v1/openapi.json).
    Openapi,
    /// Tokens for the HTTPS JSON API: each carries a console role and a
    /// site (or every site).
    ApiToken {
        #[command(subcommand)]
        command: ApiTokenCommand,
    },
    /// Incidents: captures gathered per device, account and category, with
    /// their evidence. Every look at one is audited.
    Incidents {
        #[command(subcommand)]
        command: IncidentsCommand,
    },
    /// A site's suspicious-activity policy: what window titles agents
    /// capture. Saved versions reach connected agents within seconds.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// A site's acceptable-use policy, shown by the session helper at
    /// log-on and after each new version, and the answers users gave.
    Aup {
        #[command(subcommand)]
        command: AupCommand,
    },
    /// A consistent copy of the database, taken while the collector runs
    /// (restore: stop the collector, copy it to DATA/collector.db). The
    /// evidence images under DATA/evidence and the keys are files: back
    /// them up with the data directory.
    Backup {
        /// Where to write the copy (must not exist).
        #[arg(long)]
        to: std::path::PathBuf,
    },
    /// Check the database's integrity (SQLite quick_check): exit 0 when
    /// sound, 1 when damaged.
    CheckDatabase,
    /// The evidence store: encrypted images under DATA/evidence.
    Evidence {
        #[command(subcommand)]
        command: EvidenceCommand,
    },
    /// Sites (schools): add one beyond the first, list them.
    Sites {
        #[command(subcommand)]
        command: commands::sites::SitesCommand,
    },
    /// Who is told about a site's flags and captures.
    Recipients {
        #[command(subcommand)]
        command: RecipientsCommand,
    },
    /// A site's own notification routes (else collector.toml's).
    Routes {
        #[command(subcommand)]
        command: commands::routes::RoutesCommand,
    },
    /// Send a test message to a site's recipients of one role.
    Notify {
        #[command(subcommand)]
        command: NotifyCommand,
    },
    /// The notification outbox: what was sent, what waits, what failed.
    Notifications {
        #[command(subcommand)]
        command: NotificationsCommand,
    },
    /// Two-step sign-in freshness of each (staff account, device) pair.
    Mfa {
        #[command(subcommand)]
        command: MfaCommand,
    },
    /// The annual review of monitoring's effectiveness for a period (the
    /// console's /report), as JSON (hallmonitor.annual_review.v1) or PDF.
    /// Counts only: no pupil is named. Audited.
    Report(commands::report::ReportArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One crypto provider for every TLS user in the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    hallmonitor_collector::logging::init();
    let runtime = match tokio::runtime::Runtime::new() {
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

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let data = cli.data;
    match cli.command {
        Command::Init {
            site,
            hostnames,
            timezone,
            admin_user,
            listen,
            enroll_listen,
            api_listen,
        } => {
            let report = init::init(init::InitOptions {
                data: data.clone(),
                site,
                timezone,
                hostnames,
                admin_user,
                listen,
                enroll_listen,
                api_listen,
            })
            .await?;
            println!("Initialised collector in {}", report.data.display());
            println!("  site:                 {}", report.site);
            println!("  telemetry address:    {}", report.config.listen);
            println!("  enrolment address:    {}", report.config.enroll_listen);
            println!("  CA fingerprint:       {}", report.ca_fingerprint);
            println!("  enrolment secret:     {}", report.enrollment_secret);
            println!(
                "  console admin:        {} / {}",
                report.admin_user, report.admin_password
            );
            println!();
            println!("The secret and password are shown only now; store them safely.");
            println!("Give agents the CA fingerprint and the enrolment secret (agent.toml).");
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup { to } => {
            if to.exists() {
                anyhow::bail!("{} exists; choose a new file for the backup", to.display());
            }
            let store = hallmonitor_collector::open_store(&data).await?;
            store
                .backup(&to)
                .await
                .with_context(|| format!("writing the backup to {}", to.display()))?;
            std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .with_context(|| format!("making {} private", to.display()))?;
            println!("Backed up the database to {}.", to.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckDatabase => {
            let checked = match hallmonitor_collector::open_store(&data).await {
                Ok(store) => store.quick_check().await.map_err(anyhow::Error::from),
                Err(e) => Err(e),
            };
            match checked.unwrap_or_else(|e| Err(format!("{e:#}"))) {
                Ok(()) => {
                    println!("ok");
                    Ok(ExitCode::SUCCESS)
                }
                Err(found) => {
                    println!("damaged: {found}");
                    eprintln!("{}", hallmonitor_collector::RESTORE);
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Serve {
            listen,
            enroll_listen,
            api_listen,
        } => {
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            serve::serve(
                &data,
                serve::ServeOverrides {
                    listen,
                    enroll_listen,
                    api_listen,
                },
                shutdown,
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Devices { command } => commands::devices::devices(&data, command).await,
        Command::EnrollSecret { command } => commands::devices::enroll_secret(&data, command).await,
        Command::Compliance { command } => commands::flags::compliance(&data, command).await,
        Command::Directory { command } => commands::mfa::directory(&data, command).await,
        Command::Signins { command } => commands::mfa::signins(&data, command).await,
        Command::Policy { command } => commands::policy::policy(&data, command).await,
        Command::Aup { command } => commands::aup::aup(&data, command).await,
        Command::Evidence { command } => commands::incidents::evidence(&data, command).await,
        Command::Incidents { command } => commands::incidents::incidents(&data, command).await,
        Command::Sites { command } => commands::sites::sites(&data, command).await,
        Command::Report(args) => commands::report::report(&data, args).await,
        Command::Recipients { command } => {
            commands::notifications::recipients(&data, command).await
        }
        Command::Routes { command } => commands::routes::routes(&data, command).await,
        Command::Notify { command } => commands::notifications::notify(&data, command).await,
        Command::Notifications { command } => {
            commands::notifications::notifications(&data, command).await
        }
        Command::ApiToken { command } => commands::mfa::api_token(&data, command).await,
        Command::Openapi => {
            println!("{}", hallmonitor_collector::api::openapi_json());
            Ok(ExitCode::SUCCESS)
        }
        Command::Users { command } => commands::users::users(&data, command).await,
        Command::Mfa { command } => commands::mfa::mfa(&data, command).await,
        Command::Flags { command } => commands::flags::flags(&data, command).await,
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
