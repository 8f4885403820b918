//! `recipients`, `notify test` and `notifications`.

use anyhow::{Context, bail};
use clap::Subcommand;
use hallmonitor_collector::config::CollectorConfig;
use hallmonitor_collector::model::{Channel, NotificationStatus, Role};
use hallmonitor_collector::render::{self, Format};
use hallmonitor_collector::store::NotificationStore;
use hallmonitor_collector::{notify, open_store};
use jiff::Timestamp;
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;

use super::*;

#[derive(Subcommand)]
pub(crate) enum RecipientsCommand {
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
pub(crate) enum NotifyCommand {
    Test {
        #[arg(long)]
        site: String,
        #[arg(long)]
        to: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum NotificationsCommand {
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

pub(crate) async fn recipients(
    data: &Path,
    command: RecipientsCommand,
) -> anyhow::Result<ExitCode> {
    let store = open_store(data).await?;
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
            let role = match Role::parse(&role) {
                Some(role) if role != Role::StaffMember => role,
                _ => bail!("--role: expected head_teacher, dsl, online_safety_lead or technician"),
            };
            if !["json", "teams", "slack"].contains(&webhook_format.as_str()) {
                bail!("--webhook-format: expected json, teams or slack");
            }
            let (channel, address) = match (email, webhook) {
                (Some(email), _) => {
                    email
                        .parse::<lettre::Address>()
                        .with_context(|| format!("--email '{email}'"))?;
                    (Channel::Email, email)
                }
                (None, Some(url)) => {
                    let uri: axum::http::Uri =
                        url.parse().with_context(|| format!("--webhook '{url}'"))?;
                    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                        bail!("--webhook '{url}': expected an http:// or https:// URL");
                    }
                    (Channel::Webhook, url)
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
                        role,
                        channel,
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
            print!("{}", render::recipients(&recipients, format));
        }
        RecipientsCommand::Remove { site, id } => {
            let site = require_site(&store, &site).await?;
            if !store.remove_recipient(site.id, id).await? {
                bail!("site {} has no recipient {id}", site.name);
            }
            println!("Removed recipient {id} of {}.", site.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn notify(data: &Path, command: NotifyCommand) -> anyhow::Result<ExitCode> {
    let NotifyCommand::Test { site, to } = command;
    let store = open_store(data).await?;
    let config = CollectorConfig::load(data)?;
    let site = require_site(&store, &site).await?;
    let now = Timestamp::now();
    let Some(role) = Role::parse(&to) else {
        bail!("--to: expected {}", Role::expected());
    };
    let queued = notify::queue_test(&store, &config, &site, role, now).await?;
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
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn notifications(
    data: &Path,
    command: NotificationsCommand,
) -> anyhow::Result<ExitCode> {
    let store = open_store(data).await?;
    match command {
        NotificationsCommand::List { status, format } => {
            let status = match status.as_deref().map(NotificationStatus::parse) {
                None => None,
                Some(Some(status)) => Some(status),
                Some(None) => bail!("--status: expected {}", NotificationStatus::expected()),
            };
            let list = store.list_notifications(status).await?;
            print!("{}", render::notifications(&list, format));
        }
        NotificationsCommand::Digest { site } => {
            let site = require_site(&store, &site).await?;
            let zone = jiff::tz::TimeZone::get(&site.timezone).unwrap_or(jiff::tz::TimeZone::UTC);
            let now = Timestamp::now();
            let count =
                notify::digest(&store, &site, &now.to_zoned(zone).date().to_string(), now).await?;
            println!(
                "Digest for {}: {count} message(s) queued; the collector sends them.",
                site.name
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
