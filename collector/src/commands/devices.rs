//! `devices` and `enroll-secret`: the fleet and how devices join it.

use anyhow::{Context, bail};
use clap::Subcommand;
use hallmonitor_collector::cli::{self, Format};
use hallmonitor_collector::model::DeviceId;
use hallmonitor_collector::store::{NewSecret, Store};
use hallmonitor_collector::{auth, open_store};
use jiff::Timestamp;
use std::path::Path;
use std::process::ExitCode;

use super::*;

#[derive(Subcommand)]
pub(crate) enum DevicesCommand {
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
pub(crate) enum SecretCommand {
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

pub(crate) async fn devices(data: &Path, command: DevicesCommand) -> anyhow::Result<ExitCode> {
    let store = open_store(data).await?;
    let now = Timestamp::now();
    match command {
        DevicesCommand::List { site, format } => {
            let site = resolve_site(&store, site.as_deref()).await?;
            let devices = store.list_devices(site.map(|s| s.id)).await?;
            print!("{}", cli::devices_list(&devices, now, format));
        }
        DevicesCommand::Show { id, format } => {
            let Some(device) = store.device(&DeviceId::from_string(id.clone())).await? else {
                bail!("no device with id {id}");
            };
            let outbox = store.outbox_health(&device.id).await?;
            print!("{}", cli::device_show(&device, &outbox, now, format));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn enroll_secret(data: &Path, command: SecretCommand) -> anyhow::Result<ExitCode> {
    let store = open_store(data).await?;
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
                .map(|days| now.checked_add(jiff::SignedDuration::from_hours(24 * i64::from(days))))
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
    Ok(ExitCode::SUCCESS)
}
