//! `directory`, `signins`, `api-token` and `mfa`: the 2FA-freshness rule's inputs and results.

use anyhow::{Context, bail};
use clap::Subcommand;
use hallmonitor_collector::config::CollectorConfig;
use hallmonitor_collector::model::ConsoleRole;
use hallmonitor_collector::render::{self, Format};
use hallmonitor_collector::rules::mfa::MfaStatus;
use hallmonitor_collector::signins::{self, SigninFormat};
use hallmonitor_collector::store::{ApiTokenStore, MfaStore, NewApiToken};
use hallmonitor_collector::{auth, directory, open_store};
use jiff::Timestamp;
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;

use super::*;

#[derive(Subcommand)]
pub(crate) enum DirectoryCommand {
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
pub(crate) enum SigninsCommand {
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
pub(crate) enum ApiTokenCommand {
    /// Create a token; it is printed once and stored hashed.
    Create {
        #[arg(long)]
        site: String,
        #[arg(long, default_value = "")]
        label: String,
        /// What the token may read and do: admin, technician, dsl or
        /// governor (the console's roles; only dsl tokens read incidents;
        /// posting two-step sign-ins needs admin, technician or dsl).
        #[arg(long)]
        role: String,
        /// Cover every site instead of only --site.
        #[arg(long)]
        all_sites: bool,
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
pub(crate) enum MfaCommand {
    List {
        #[arg(long)]
        site: Option<String>,
        #[arg(long, value_enum)]
        status: Option<MfaStatus>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

pub(crate) async fn directory(data: &Path, command: DirectoryCommand) -> anyhow::Result<ExitCode> {
    let store = open_store(data).await?;
    match command {
        DirectoryCommand::Import { site, file } => {
            let site = require_site(&store, &site).await?;
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let accounts = directory::parse_directory(&bytes, &file.display().to_string())?;
            let now = Timestamp::now();
            let summary = store.import_directory(site.id, &accounts, now).await?;
            audit_cli(
                &store,
                now,
                Some(site.id),
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
            print!("{}", render::directory_list(&accounts, format));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn signins(data: &Path, command: SigninsCommand) -> anyhow::Result<ExitCode> {
    let SigninsCommand::Import { site, format, file } = command;
    let store = open_store(data).await?;
    let config = CollectorConfig::load(data)?;
    let site = require_site(&store, &site).await?;
    let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let now = Timestamp::now();
    let rows = signins::parse(format, &bytes, &file.display().to_string(), now)?;
    let report = signins::import(&store, &config, &site, rows, format.source(), now).await?;
    print!("{}", render::signins_report(&report));
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn api_token(data: &Path, command: ApiTokenCommand) -> anyhow::Result<ExitCode> {
    let store = open_store(data).await?;
    let now = Timestamp::now();
    match command {
        ApiTokenCommand::Create {
            site,
            label,
            role,
            all_sites,
        } => {
            let Some(role) = ConsoleRole::parse(&role) else {
                bail!("--role: expected {}", ConsoleRole::expected());
            };
            let site = require_site(&store, &site).await?;
            let token = auth::generate_api_token();
            let id = store
                .create_api_token(
                    NewApiToken {
                        site: site.id,
                        token_sha256: &auth::secret_digest(&token),
                        label: &label,
                        role,
                        all_sites,
                        created_by: None,
                    },
                    now,
                )
                .await?;
            audit_cli(
                &store,
                now,
                // A token of every site is collector-wide.
                (!all_sites).then_some(site.id),
                &format!("cli:{}", os_user()),
                "api_token_created",
                &format!("api token {id}"),
                &format!("site={} role={role} all_sites={all_sites}", site.name),
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
            print!("{}", render::api_tokens(&tokens, format));
        }
        ApiTokenCommand::Revoke { site, id } => {
            let site = require_site(&store, &site).await?;
            if !store.revoke_api_token(site.id, id, now).await? {
                bail!("site {} has no active API token with id {id}", site.name);
            }
            audit_cli(
                &store,
                now,
                Some(site.id),
                &format!("cli:{}", os_user()),
                "api_token_revoked",
                &format!("api token {id}"),
                &format!("site={}", site.name),
            )
            .await?;
            println!("Revoked API token {id} of site {}.", site.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn mfa(data: &Path, command: MfaCommand) -> anyhow::Result<ExitCode> {
    let MfaCommand::List {
        site,
        status,
        format,
    } = command;
    let store = open_store(data).await?;
    let filter = filter(&store, site.as_deref(), None).await?;
    let pairs = store.mfa_pairs(&filter, status).await?;
    print!("{}", render::mfa_list(&pairs, Timestamp::now(), format));
    Ok(ExitCode::SUCCESS)
}
