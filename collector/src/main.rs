//! hallmonitor-collector: command-line entry point. Parses arguments,
//! installs the rustls crypto provider and logging, and calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use hallmonitor_collector::cli::{self, Format};
use hallmonitor_collector::config::CollectorConfig;
use hallmonitor_collector::flags::{FlagAction, FlagState};
use hallmonitor_collector::model::DeviceId;
use hallmonitor_collector::rules::mfa::MfaStatus;
use hallmonitor_collector::signins::{self, SigninFormat};
use hallmonitor_collector::store::{AuditEntry, DeviceFilter, NewSecret, Store};
use hallmonitor_collector::{auth, compliance, directory, init, notify, open_store, serve};
use jiff::Timestamp;
use tokio_util::sync::CancellationToken;

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
    /// Tokens for the HTTPS JSON API (one site each).
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
    /// The evidence store: encrypted images under DATA/evidence.
    Evidence {
        #[command(subcommand)]
        command: EvidenceCommand,
    },
    /// Who is told about a site's flags and captures.
    Recipients {
        #[command(subcommand)]
        command: RecipientsCommand,
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
}

#[derive(Subcommand)]
enum DirectoryCommand {
    /// Replace the site's directory with a CSV export (columns username,
    /// role, and optionally email and display name). A file with any
    /// problem is rejected whole, naming its line and column.
    Import {
        #[arg(long)]
        site: String,
        file: PathBuf,
    },
    List {
        #[arg(long)]
        site: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(Subcommand)]
enum SigninsCommand {
    /// Import a sign-in log export; importing it again adds nothing.
    Import {
        #[arg(long)]
        site: String,
        #[arg(long, value_enum)]
        format: SigninFormat,
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ApiTokenCommand {
    /// Create a token; it is printed once and stored hashed.
    Create {
        #[arg(long)]
        site: String,
        #[arg(long, default_value = "")]
        label: String,
    },
    List {
        #[arg(long)]
        site: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    Revoke {
        #[arg(long)]
        site: String,
        id: i64,
    },
}

#[derive(Subcommand)]
enum IncidentsCommand {
    List {
        #[arg(long)]
        site: Option<String>,
        /// open or closed
        #[arg(long)]
        status: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    Show {
        id: i64,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        #[arg(long, env = "HALLMONITOR_ACTOR")]
        by: Option<String>,
    },
    /// Write the evidence (images, metadata, SHA-256 sums) to OUT/incident-ID
    /// for a report to CEOP or the police.
    Export {
        id: i64,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, env = "HALLMONITOR_ACTOR")]
        by: Option<String>,
    },
    Close {
        id: i64,
        #[arg(long)]
        reason: String,
        #[arg(long, env = "HALLMONITOR_ACTOR")]
        by: Option<String>,
    },
    /// Purge evidence past `[captures] retention_days` now (the collector
    /// also does it daily): captures of closed incidents, their images and
    /// the content of their events.
    Purge {
        #[arg(long, env = "HALLMONITOR_ACTOR")]
        by: Option<String>,
    },
}

#[derive(Subcommand)]
enum EvidenceCommand {
    /// Make a new evidence key, re-encrypt every image under it and delete
    /// the old key once no image needs it. Safe while the collector runs.
    RotateKey {
        #[arg(long, env = "HALLMONITOR_ACTOR")]
        by: Option<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Check FILE and save it as the site's next policy version. Start it
    /// with `extends = "default"` to add to the project's default policy.
    Set {
        #[arg(long)]
        site: String,
        file: PathBuf,
        /// Why it changed, kept with the version.
        #[arg(long, default_value = "")]
        comment: String,
        #[arg(long, env = "HALLMONITOR_ACTOR")]
        by: Option<String>,
    },
    /// Return the site to the project's default policy (a new version).
    Reset {
        #[arg(long)]
        site: String,
        #[arg(long, env = "HALLMONITOR_ACTOR")]
        by: Option<String>,
    },
    /// Print the TOML agents match with (the newest version, or VERSION).
    Show {
        #[arg(long)]
        site: String,
        #[arg(long)]
        version: Option<u64>,
    },
    /// Versions, who saved them, and how many devices hold each.
    History {
        #[arg(long)]
        site: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Check a policy file without saving it (exit 0 valid, 2 not).
    Check { file: PathBuf },
    /// Print the project's default policy (a starting point for a site's).
    Default,
}

#[derive(Subcommand)]
enum RecipientsCommand {
    /// Add a recipient: an email address or a webhook URL.
    Add {
        #[arg(long)]
        site: String,
        /// head_teacher, dsl, online_safety_lead or technician.
        #[arg(long)]
        role: String,
        #[arg(long, conflicts_with = "webhook", required_unless_present = "webhook")]
        email: Option<String>,
        #[arg(long)]
        webhook: Option<String>,
        /// json (signed payload), teams or slack.
        #[arg(long, default_value = "json")]
        webhook_format: String,
        /// File holding the HMAC-SHA256 key that signs webhook posts.
        #[arg(long)]
        webhook_secret_file: Option<PathBuf>,
    },
    List {
        #[arg(long)]
        site: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    Remove {
        #[arg(long)]
        site: String,
        id: i64,
    },
}

#[derive(Subcommand)]
enum NotifyCommand {
    Test {
        #[arg(long)]
        site: String,
        #[arg(long)]
        to: String,
    },
}

#[derive(Subcommand)]
enum NotificationsCommand {
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Send a site's daily digest now (it is also sent at digest_time).
    Digest {
        #[arg(long)]
        site: String,
    },
}

#[derive(Subcommand)]
enum MfaCommand {
    List {
        #[arg(long)]
        site: Option<String>,
        #[arg(long, value_enum)]
        status: Option<MfaStatus>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(Subcommand)]
enum ComplianceCommand {
    /// Evaluate the rules for the selected devices.
    Check {
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        device: Option<String>,
        /// Evaluate at this instant (RFC 3339, e.g. 2026-11-24T09:00:00Z)
        /// instead of now.
        #[arg(long)]
        as_of: Option<Timestamp>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(Subcommand)]
enum FlagsCommand {
    List {
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        device: Option<String>,
        #[arg(long, value_enum)]
        state: Option<FlagState>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// One flag with its full history (who, when, why).
    Show {
        id: i64,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Approve disabling the flagged device: the agent is told at once if
    /// connected, otherwise when it next connects.
    Approve {
        id: i64,
        #[arg(long, default_value = "approved by a technician")]
        reason: String,
        /// Who is deciding (recorded in the audit log).
        #[arg(long, env = "HALLMONITOR_ACTOR")]
        by: Option<String>,
    },
    /// Close a flag without action.
    Dismiss {
        id: i64,
        #[arg(long)]
        reason: String,
        #[arg(long, env = "HALLMONITOR_ACTOR")]
        by: Option<String>,
    },
    /// Re-enable a disabled (or about to be disabled) device; a new grace
    /// period starts.
    Reenable {
        id: i64,
        #[arg(long)]
        reason: String,
        #[arg(long, env = "HALLMONITOR_ACTOR")]
        by: Option<String>,
    },
}

#[derive(Subcommand)]
enum DevicesCommand {
    /// List devices with last seen time and online/offline status.
    List {
        #[arg(long)]
        site: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Everything known about one device.
    Show {
        id: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(Subcommand)]
enum SecretCommand {
    /// Create a secret for a site; it is printed once and stored hashed.
    Create {
        #[arg(long)]
        site: String,
        /// A note to tell secrets apart (e.g. "Year 7 laptops, Intune").
        #[arg(long, default_value = "")]
        label: String,
        /// Stop accepting the secret after this many days.
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    List {
        #[arg(long)]
        site: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Stop accepting a secret. Devices already enrolled are not affected.
    Revoke {
        #[arg(long)]
        site: String,
        /// The secret's ID from `enroll-secret list`.
        id: i64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One crypto provider for every TLS user in the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HALLMONITOR_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
        }
        Command::Devices { command } => {
            let store = open_store(&data).await?;
            let now = Timestamp::now();
            match command {
                DevicesCommand::List { site, format } => {
                    let site = resolve_site(&store, site.as_deref()).await?;
                    let devices = store.list_devices(site.map(|s| s.id)).await?;
                    print!("{}", cli::devices_list(&devices, now, format));
                }
                DevicesCommand::Show { id, format } => {
                    let Some(device) = store.device(&DeviceId::from_string(id.clone())).await?
                    else {
                        bail!("no device with id {id}");
                    };
                    let outbox = store.outbox_health(&device.id).await?;
                    print!("{}", cli::device_show(&device, &outbox, now, format));
                }
            }
        }
        Command::EnrollSecret { command } => {
            let store = open_store(&data).await?;
            let now = Timestamp::now();
            match command {
                SecretCommand::Create {
                    site,
                    label,
                    expires_in_days,
                } => {
                    let site = require_site(&store, &site).await?;
                    let secret = auth::generate_enrollment_secret();
                    let expires_at = expires_in_days
                        .map(|days| {
                            now.checked_add(jiff::SignedDuration::from_hours(24 * i64::from(days)))
                        })
                        .transpose()
                        .context("--expires-in-days is too large")?;
                    let info = store
                        .create_enrollment_secret(NewSecret {
                            site: site.id,
                            secret_sha256: auth::secret_digest(&secret),
                            hint: auth::secret_hint(&secret),
                            label,
                            expires_at,
                            at: now,
                        })
                        .await?;
                    audit_cli(
                        &store,
                        now,
                        &format!("cli:{}", os_user()),
                        "enrollment_secret_created",
                        &format!("secret {}", info.id),
                        &format!("site={}", site.name),
                    )
                    .await?;
                    println!("{secret}");
                    eprintln!(
                        "Created enrolment secret {} for site {}; it is shown only now.",
                        info.id, site.name
                    );
                }
                SecretCommand::List { site, format } => {
                    let site = resolve_site(&store, site.as_deref()).await?;
                    let secrets = store.list_enrollment_secrets(site.map(|s| s.id)).await?;
                    print!("{}", cli::secrets_list(&secrets, now, format));
                }
                SecretCommand::Revoke { site, id } => {
                    let site = require_site(&store, &site).await?;
                    if !store.revoke_enrollment_secret(site.id, id, now).await? {
                        bail!(
                            "site {} has no active enrolment secret with id {id}",
                            site.name
                        );
                    }
                    audit_cli(
                        &store,
                        now,
                        &format!("cli:{}", os_user()),
                        "enrollment_secret_revoked",
                        &format!("secret {id}"),
                        &format!("site={}", site.name),
                    )
                    .await?;
                    println!("Revoked enrolment secret {id} of site {}.", site.name);
                }
            }
        }
        Command::Compliance {
            command:
                ComplianceCommand::Check {
                    site,
                    device,
                    as_of,
                    format,
                },
        } => {
            let store = open_store(&data).await?;
            let config = CollectorConfig::load(&data)?;
            let filter = filter(&store, site.as_deref(), device).await?;
            let as_of = as_of.unwrap_or_else(Timestamp::now);
            let report = compliance::check(&store, &config, &filter, as_of).await?;
            if filter.device.is_some() && report.devices.is_empty() {
                bail!("no such device");
            }
            print!("{}", cli::compliance(&report, format));
            return Ok(ExitCode::from(report.exit_code()));
        }
        Command::Directory { command } => {
            let store = open_store(&data).await?;
            match command {
                DirectoryCommand::Import { site, file } => {
                    let site = require_site(&store, &site).await?;
                    let bytes = std::fs::read(&file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    let accounts = directory::parse_directory(&bytes, &file.display().to_string())?;
                    let now = Timestamp::now();
                    let summary = store.import_directory(site.id, &accounts, now).await?;
                    audit_cli(
                        &store,
                        now,
                        &format!("cli:{}", os_user()),
                        "directory_imported",
                        &format!("site {}", site.name),
                        &format!("{} accounts from {}", accounts.len(), file.display()),
                    )
                    .await?;
                    let staff = accounts
                        .iter()
                        .filter(|a| a.role == directory::Role::Staff)
                        .count();
                    println!(
                        "Imported {} accounts ({staff} staff, {} pupils) for {}: {} added, {} updated, {} removed, {} unchanged.",
                        accounts.len(),
                        accounts.len() - staff,
                        site.name,
                        summary.added,
                        summary.updated,
                        summary.removed,
                        summary.unchanged
                    );
                }
                DirectoryCommand::List { site, format } => {
                    let site = require_site(&store, &site).await?;
                    let accounts = store.directory(site.id).await?;
                    print!("{}", cli::directory_list(&accounts, format));
                }
            }
        }
        Command::Signins {
            command: SigninsCommand::Import { site, format, file },
        } => {
            let store = open_store(&data).await?;
            let config = CollectorConfig::load(&data)?;
            let site = require_site(&store, &site).await?;
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let rows = signins::parse(format, &bytes, &file.display().to_string())?;
            let report = signins::import(
                &store,
                &config,
                &site,
                rows,
                format.source(),
                Timestamp::now(),
            )
            .await?;
            print!("{}", cli::signins_report(&report));
        }
        Command::Policy { command } => policy_command(&data, command).await?,
        Command::Evidence {
            command: EvidenceCommand::RotateKey { by },
        } => {
            let store = open_store(&data).await?;
            let evidence = hallmonitor_collector::evidence::EvidenceStore::open(&data)?;
            let rotation = tokio::task::spawn_blocking(move || evidence.rotate_key()).await??;
            let actor = format!("cli:{}", by.unwrap_or_else(os_user));
            let detail = format!(
                "new key {}; {} image(s) re-encrypted; {} old key(s) deleted, {} kept; {} unreadable",
                rotation.key_id,
                rotation.reencrypted,
                rotation.old_keys_removed,
                rotation.old_keys_kept,
                rotation.failed.len()
            );
            audit_cli(
                &store,
                Timestamp::now(),
                &actor,
                "evidence_key_rotated",
                "evidence",
                &detail,
            )
            .await?;
            println!("Evidence key rotated: {detail}.");
            if !rotation.failed.is_empty() {
                bail!(
                    "{} image(s) could not be decrypted and keep the old key: {}",
                    rotation.failed.len(),
                    rotation.failed.join(", ")
                );
            }
        }
        Command::Incidents { command } => {
            let store = open_store(&data).await?;
            let now = Timestamp::now();
            let audit = |actor: String, action: &'static str, id: i64, detail: String| {
                let store = &store;
                async move {
                    audit_cli(
                        store,
                        now,
                        &actor,
                        action,
                        &format!("incident {id}"),
                        &detail,
                    )
                    .await
                }
            };
            match command {
                IncidentsCommand::List {
                    site,
                    status,
                    format,
                } => {
                    let filter = filter(&store, site.as_deref(), None).await?;
                    let list = store.list_incidents(&filter, status.as_deref()).await?;
                    print!("{}", cli::incidents_list(&list, format));
                }
                IncidentsCommand::Show { id, format, by } => {
                    let (incident, captures, _) = store
                        .incident(id)
                        .await?
                        .with_context(|| format!("no incident with id {id}"))?;
                    audit(
                        format!("cli:{}", by.unwrap_or_else(os_user)),
                        "incident_viewed",
                        id,
                        String::new(),
                    )
                    .await?;
                    print!("{}", cli::incident_show(&incident, &captures, format));
                }
                IncidentsCommand::Export { id, out, by } => {
                    let (incident, captures, _) = store
                        .incident(id)
                        .await?
                        .with_context(|| format!("no incident with id {id}"))?;
                    let evidence = hallmonitor_collector::evidence::EvidenceStore::open(&data)?;
                    let actor = format!("cli:{}", by.unwrap_or_else(os_user));
                    let folder =
                        incidents_export(&evidence, &incident, &captures, &out, &actor, now)?;
                    audit(actor, "incident_exported", id, folder.display().to_string()).await?;
                    println!(
                        "Exported incident {id} ({} capture(s)) to {}.",
                        captures.len(),
                        folder.display()
                    );
                }
                IncidentsCommand::Close { id, reason, by } => {
                    if reason.trim().is_empty() {
                        bail!("--reason must say why");
                    }
                    if !store.close_incident(id, &reason, now).await? {
                        bail!("no open incident with id {id}");
                    }
                    audit(
                        format!("cli:{}", by.unwrap_or_else(os_user)),
                        "incident_closed",
                        id,
                        reason,
                    )
                    .await?;
                    println!("Closed incident {id}.");
                }
                IncidentsCommand::Purge { by } => {
                    let config = CollectorConfig::load(&data)?;
                    let evidence = hallmonitor_collector::evidence::EvidenceStore::open(&data)?;
                    let retention = jiff::SignedDuration::from_hours(
                        24 * i64::from(config.captures.retention_days),
                    );
                    let purged = hallmonitor_collector::incidents::purge_expired(
                        &store, &evidence, retention, now,
                    )
                    .await?;
                    audit(
                        format!("cli:{}", by.unwrap_or_else(os_user)),
                        "evidence_purged",
                        0,
                        format!("{purged} captures"),
                    )
                    .await?;
                    println!(
                        "Purged {purged} capture(s) older than {} days from closed incidents.",
                        config.captures.retention_days
                    );
                }
            }
        }
        Command::Recipients { command } => {
            let store = open_store(&data).await?;
            let now = Timestamp::now();
            match command {
                RecipientsCommand::Add {
                    site,
                    role,
                    email,
                    webhook,
                    webhook_format,
                    webhook_secret_file,
                } => {
                    let site = require_site(&store, &site).await?;
                    if !hallmonitor_collector::config::ROLES.contains(&role.as_str())
                        || role == "staff_member"
                    {
                        bail!(
                            "--role: expected head_teacher, dsl, online_safety_lead or technician"
                        );
                    }
                    if !["json", "teams", "slack"].contains(&webhook_format.as_str()) {
                        bail!("--webhook-format: expected json, teams or slack");
                    }
                    let (channel, address) = match (email, webhook) {
                        (Some(email), _) => {
                            email
                                .parse::<lettre::Address>()
                                .with_context(|| format!("--email '{email}'"))?;
                            ("email", email)
                        }
                        (None, Some(url)) => {
                            let uri: axum::http::Uri =
                                url.parse().with_context(|| format!("--webhook '{url}'"))?;
                            if !matches!(uri.scheme_str(), Some("http" | "https"))
                                || uri.host().is_none()
                            {
                                bail!("--webhook '{url}': expected an http:// or https:// URL");
                            }
                            ("webhook", url)
                        }
                        (None, None) => bail!("give --email or --webhook"),
                    };
                    let secret = match webhook_secret_file {
                        Some(path) => std::fs::read_to_string(&path)
                            .with_context(|| format!("reading {}", path.display()))?
                            .trim()
                            .to_owned(),
                        None => String::new(),
                    };
                    let id = store
                        .add_recipient(
                            &hallmonitor_collector::store::Recipient {
                                id: 0,
                                site: site.id,
                                role: role.clone(),
                                channel: channel.into(),
                                address: address.clone(),
                                webhook_format,
                                webhook_secret: secret,
                            },
                            now,
                        )
                        .await?;
                    println!(
                        "Recipient {id}: {role} of {} by {channel} ({address}).",
                        site.name
                    );
                }
                RecipientsCommand::List { site, format } => {
                    let site = resolve_site(&store, site.as_deref()).await?;
                    let recipients = store.recipients(site.map(|s| s.id)).await?;
                    print!("{}", cli::recipients(&recipients, format));
                }
                RecipientsCommand::Remove { site, id } => {
                    let site = require_site(&store, &site).await?;
                    if !store.remove_recipient(site.id, id).await? {
                        bail!("site {} has no recipient {id}", site.name);
                    }
                    println!("Removed recipient {id} of {}.", site.name);
                }
            }
        }
        Command::Notify {
            command: NotifyCommand::Test { site, to },
        } => {
            let store = open_store(&data).await?;
            let config = CollectorConfig::load(&data)?;
            let site = require_site(&store, &site).await?;
            let now = Timestamp::now();
            let queued = notify::queue_test(&store, &config, &site, &to, now).await?;
            if queued == 0 {
                bail!("site {} has no recipient with role {to}", site.name);
            }
            let sender = notify::Sender::new(&config.notifications)?;
            let owner = format!("cli-{}", std::process::id());
            let (sent, failed) =
                notify::deliver(&store, &config.notifications, &sender, &owner, now).await?;
            println!(
                "Test message queued for {queued} recipient(s); {sent} sent now, {failed} failed (retried by the collector; see notifications list)."
            );
            if failed > 0 {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Notifications { command } => {
            let store = open_store(&data).await?;
            match command {
                NotificationsCommand::List { status, format } => {
                    if let Some(s) = &status
                        && !["pending", "sent", "dead", "digested"].contains(&s.as_str())
                    {
                        bail!("--status: expected pending, sent, dead or digested");
                    }
                    let list = store.list_notifications(status.as_deref()).await?;
                    print!("{}", cli::notifications(&list, format));
                }
                NotificationsCommand::Digest { site } => {
                    let site = require_site(&store, &site).await?;
                    let zone =
                        jiff::tz::TimeZone::get(&site.timezone).unwrap_or(jiff::tz::TimeZone::UTC);
                    let now = Timestamp::now();
                    let count =
                        notify::digest(&store, &site, &now.to_zoned(zone).date().to_string(), now)
                            .await?;
                    println!(
                        "Digest for {}: {count} message(s) queued; the collector sends them.",
                        site.name
                    );
                }
            }
        }
        Command::ApiToken { command } => {
            let store = open_store(&data).await?;
            let now = Timestamp::now();
            match command {
                ApiTokenCommand::Create { site, label } => {
                    let site = require_site(&store, &site).await?;
                    let token = auth::generate_api_token();
                    let id = store
                        .create_api_token(site.id, &auth::secret_digest(&token), &label, now)
                        .await?;
                    audit_cli(
                        &store,
                        now,
                        &format!("cli:{}", os_user()),
                        "api_token_created",
                        &format!("api token {id}"),
                        &format!("site={}", site.name),
                    )
                    .await?;
                    println!("{token}");
                    eprintln!(
                        "Created API token {id} for site {}; it is shown only now.",
                        site.name
                    );
                }
                ApiTokenCommand::List { site, format } => {
                    let site = resolve_site(&store, site.as_deref()).await?;
                    let tokens = store.list_api_tokens(site.map(|s| s.id)).await?;
                    print!("{}", cli::api_tokens(&tokens, format));
                }
                ApiTokenCommand::Revoke { site, id } => {
                    let site = require_site(&store, &site).await?;
                    if !store.revoke_api_token(site.id, id, now).await? {
                        bail!("site {} has no active API token with id {id}", site.name);
                    }
                    audit_cli(
                        &store,
                        now,
                        &format!("cli:{}", os_user()),
                        "api_token_revoked",
                        &format!("api token {id}"),
                        &format!("site={}", site.name),
                    )
                    .await?;
                    println!("Revoked API token {id} of site {}.", site.name);
                }
            }
        }
        Command::Mfa {
            command:
                MfaCommand::List {
                    site,
                    status,
                    format,
                },
        } => {
            let store = open_store(&data).await?;
            let filter = filter(&store, site.as_deref(), None).await?;
            let pairs = store.mfa_pairs(&filter, status).await?;
            print!("{}", cli::mfa_list(&pairs, Timestamp::now(), format));
        }
        Command::Flags { command } => {
            let store = open_store(&data).await?;
            let now = Timestamp::now();
            let (id, action, reason, by) = match command {
                FlagsCommand::List {
                    site,
                    device,
                    state,
                    format,
                } => {
                    let filter = filter(&store, site.as_deref(), device).await?;
                    let flags = store.list_flags(&filter, state).await?;
                    print!("{}", cli::flags_list(&flags, now, format));
                    return Ok(ExitCode::SUCCESS);
                }
                FlagsCommand::Show { id, format } => {
                    let flag = store
                        .flag(id)
                        .await?
                        .with_context(|| format!("no flag with id {id}"))?;
                    let history = store.flag_history(id).await?;
                    print!("{}", cli::flag_show(&flag, &history, format));
                    return Ok(ExitCode::SUCCESS);
                }
                FlagsCommand::Approve { id, reason, by } => (id, FlagAction::Approve, reason, by),
                FlagsCommand::Dismiss { id, reason, by } => (id, FlagAction::Dismiss, reason, by),
                FlagsCommand::Reenable { id, reason, by } => (id, FlagAction::Reenable, reason, by),
            };
            if reason.trim().is_empty() {
                bail!("--reason must say why");
            }
            let actor = format!("cli:{}", by.unwrap_or_else(os_user));
            let flag = store
                .transition_flag(id, action, &actor, &reason, now)
                .await??;
            println!(
                "Flag {} is now {} (device {}).",
                flag.id,
                flag.state.as_str(),
                flag.device_id
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes an incident's evidence to OUT/incident-ID: the images
/// (decrypted, checked against their hashes), metadata.json and
/// SHA256SUMS. Built in a temporary folder and renamed into place, so a
/// failure leaves nothing half-written; an existing export is never
/// overwritten.
fn incidents_export(
    evidence: &hallmonitor_collector::evidence::EvidenceStore,
    incident: &hallmonitor_collector::incidents::IncidentRecord,
    captures: &[hallmonitor_collector::incidents::CaptureRow],
    out: &std::path::Path,
    actor: &str,
    now: Timestamp,
) -> anyhow::Result<PathBuf> {
    use hallmonitor_collector::evidence::sha256_hex;
    let folder = out.join(format!("incident-{}", incident.id));
    if folder.exists() {
        bail!("{} exists already; choose another --out", folder.display());
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let staging = out.join(format!(".incident-{}.partial", incident.id));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(staging.join("images"))
        .with_context(|| format!("creating {}", staging.display()))?;
    let mut sums = String::new();
    for capture in captures.iter().filter(|c| c.image_status == "verified") {
        let image = evidence
            .get(&capture.image_sha256)
            .with_context(|| format!("evidence image of capture {}", capture.id))?;
        let name = format!("images/{}.png", capture.image_sha256);
        std::fs::write(staging.join(&name), &image).with_context(|| format!("writing {name}"))?;
        sums.push_str(&format!("{}  {name}\n", sha256_hex(&image)));
    }
    let metadata = serde_json::json!({
        "schema": "hallmonitor.incident_export.v1",
        "exported_at": now,
        "exported_by": actor,
        "incident": incident,
        "captures": captures,
    });
    let metadata = serde_json::to_vec_pretty(&metadata)?;
    std::fs::write(staging.join("metadata.json"), &metadata).context("writing metadata.json")?;
    sums.push_str(&format!("{}  metadata.json\n", sha256_hex(&metadata)));
    std::fs::write(staging.join("SHA256SUMS"), sums).context("writing SHA256SUMS")?;
    std::fs::rename(&staging, &folder)
        .with_context(|| format!("renaming into {}", folder.display()))?;
    Ok(folder)
}

async fn policy_command(data: &std::path::Path, command: PolicyCommand) -> anyhow::Result<()> {
    use hallmonitor_collector::policies::{self, Saved};
    let read = |file: &std::path::Path| {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
    };
    match command {
        PolicyCommand::Check { file } => {
            let policy = hallmonitor_policy::Policy::parse(&read(&file)?, &file)?;
            println!(
                "{}: valid, version {}, {} rule(s).",
                file.display(),
                policy.version,
                policy.rules().len()
            );
        }
        PolicyCommand::Default => print!("{}", hallmonitor_policy::DEFAULT_POLICY),
        PolicyCommand::Set {
            site,
            file,
            comment,
            by,
        } => {
            let store = open_store(data).await?;
            let site = require_site(&store, &site).await?;
            let text = read(&file)?;
            if text.trim().is_empty() {
                bail!(
                    "{} is empty; to use the project's default run `policy reset`",
                    file.display()
                );
            }
            let actor = format!("cli:{}", by.unwrap_or_else(os_user));
            match policies::save(
                &store,
                &site,
                &text,
                &file,
                &comment,
                &actor,
                Timestamp::now(),
            )
            .await?
            {
                Saved::New(v) => println!(
                    "Saved {} policy version {v}; connected agents receive it within seconds.",
                    site.name
                ),
                Saved::Unchanged(v) => {
                    println!("Unchanged: {} policy version {v} has this text.", site.name)
                }
            }
        }
        PolicyCommand::Reset { site, by } => {
            let store = open_store(data).await?;
            let site = require_site(&store, &site).await?;
            let actor = format!("cli:{}", by.unwrap_or_else(os_user));
            let file = std::path::Path::new("(default)");
            match policies::save(
                &store,
                &site,
                "",
                file,
                "reset to the project's default",
                &actor,
                Timestamp::now(),
            )
            .await?
            {
                Saved::New(v) => println!(
                    "{} uses the project's default policy from version {v}.",
                    site.name
                ),
                Saved::Unchanged(v) => println!(
                    "Unchanged: {} already uses the project's default (version {v}).",
                    site.name
                ),
            }
        }
        PolicyCommand::Show { site, version } => {
            let store = open_store(data).await?;
            let site = require_site(&store, &site).await?;
            let policy = store.site_policy(site.id, version).await?;
            if let (Some(v), None) = (version, &policy) {
                bail!("{} has no policy version {v}", site.name);
            }
            print!("{}", policies::effective_text(policy.as_ref()));
        }
        PolicyCommand::History { site, format } => {
            let store = open_store(data).await?;
            let site = require_site(&store, &site).await?;
            let history = store.site_policy_history(site.id).await?;
            let devices = store.device_policy_versions(site.id).await?;
            print!(
                "{}",
                policies::history_report(&site, &history, &devices, format)
            );
        }
    }
    Ok(())
}

/// One row in the audit log for a command run from the command line.
async fn audit_cli(
    store: &impl Store,
    at: Timestamp,
    actor: &str,
    action: &str,
    target: &str,
    detail: &str,
) -> anyhow::Result<()> {
    store
        .append_audit(AuditEntry {
            at,
            actor,
            action,
            target,
            detail,
        })
        .await?;
    Ok(())
}

/// Who is running the command, for the audit log.
fn os_user() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

async fn filter(
    store: &impl Store,
    site: Option<&str>,
    device: Option<String>,
) -> anyhow::Result<DeviceFilter> {
    Ok(DeviceFilter {
        site: resolve_site(store, site).await?.map(|s| s.id),
        device: device.map(DeviceId::from_string),
        devices: None,
    })
}

async fn resolve_site(
    store: &impl Store,
    name: Option<&str>,
) -> anyhow::Result<Option<hallmonitor_collector::model::Site>> {
    match name {
        None => Ok(None),
        Some(name) => Ok(Some(require_site(store, name).await?)),
    }
}

async fn require_site(
    store: &impl Store,
    name: &str,
) -> anyhow::Result<hallmonitor_collector::model::Site> {
    store
        .site_by_name(name)
        .await?
        .with_context(|| format!("no site named '{name}'"))
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
