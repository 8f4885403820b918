//! `devices` and `enroll-secret`: the fleet and how devices join it.

use anyhow::{Context, bail};
use clap::Subcommand;
use hallmonitor_collector::model::{DeviceId, DeviceRecord, DeviceStatus};
use hallmonitor_collector::render::{self, Format};
use hallmonitor_collector::store::{DeviceStore, IngestStore, NewSecret, TamperStore};
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
    /// Stop accepting a device's certificate: its open stream closes within
    /// a second and its agent is told why on every connect. It stays
    /// listed, with its history.
    Revoke {
        id: String,
        /// Why (shown to technicians and in the agent's status).
        #[arg(long)]
        reason: String,
    },
    /// Accept a pending device as a machine of its own (e.g. from a cloned
    /// image that shares a machine id): it streams and counts from now on.
    Approve { id: String },
    /// Accept a pending device as the same machine as an enrolled one
    /// (re-imaged, its key lost): the pending device becomes active and
    /// the old one is revoked, pointing at it.
    Link {
        /// The pending device.
        id: String,
        /// The device it replaces.
        #[arg(long)]
        replaces: String,
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
            print!("{}", render::devices_list(&devices, now, format));
        }
        DevicesCommand::Show { id, format } => {
            let Some(device) = store.device(&DeviceId::from_string(id.clone())).await? else {
                bail!("no device with id {id}");
            };
            let outbox = store.outbox_health(&device.id).await?;
            let signals = store
                .agent_signals(&device.id, hallmonitor_collector::tamper::SIGNALS_SHOWN)
                .await?;
            print!(
                "{}",
                render::device_show(&device, &outbox, &signals, now, format)
            );
        }
        DevicesCommand::Revoke { id, reason } => {
            let device = existing_device(&store, &id).await?;
            if device.status == DeviceStatus::Revoked {
                bail!("device {id} is already revoked ({})", device.status_reason);
            }
            let reason = reason.trim();
            if reason.is_empty() {
                bail!("--reason must say why the device is revoked");
            }
            store
                .set_device_status(&device.id, DeviceStatus::Revoked, reason, now)
                .await?;
            audit_device(&store, now, "device_revoked", &device, reason).await?;
            println!("Revoked device {id}; its certificate is no longer accepted.");
        }
        DevicesCommand::Approve { id } => {
            let device = pending_device(&store, &id).await?;
            store
                .set_device_status(&device.id, DeviceStatus::Active, "", now)
                .await?;
            let detail = match &device.duplicate_of {
                Some(of) => format!("a machine of its own beside {of}"),
                None => "a machine of its own".to_owned(),
            };
            audit_device(&store, now, "device_approved", &device, &detail).await?;
            println!("Approved device {id}.");
        }
        DevicesCommand::Link { id, replaces } => {
            let device = pending_device(&store, &id).await?;
            let old = existing_device(&store, &replaces).await?;
            if old.id == device.id {
                bail!("a device cannot replace itself");
            }
            if old.site != device.site {
                bail!(
                    "device {replaces} belongs to site {}, device {id} to site {}: devices never move between sites",
                    old.site,
                    device.site
                );
            }
            // The old certificate goes first: never two active identities
            // for one machine.
            store
                .set_device_status(
                    &old.id,
                    DeviceStatus::Revoked,
                    &format!("replaced by device {id}"),
                    now,
                )
                .await?;
            store
                .set_device_status(&device.id, DeviceStatus::Active, "", now)
                .await?;
            audit_device(
                &store,
                now,
                "device_linked",
                &device,
                &format!("replaces {replaces}"),
            )
            .await?;
            println!("Device {id} replaces device {replaces}, which is revoked.");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn existing_device(store: &impl DeviceStore, id: &str) -> anyhow::Result<DeviceRecord> {
    match store.device(&DeviceId::from_string(id.to_owned())).await? {
        Some(device) => Ok(device),
        None => bail!("no device with id {id}"),
    }
}

async fn pending_device(store: &impl DeviceStore, id: &str) -> anyhow::Result<DeviceRecord> {
    let device = existing_device(store, id).await?;
    if device.status != DeviceStatus::Pending {
        bail!("device {id} is {}, not pending", device.status.as_str());
    }
    Ok(device)
}

async fn audit_device(
    store: &(impl AuditStore + SiteStore),
    now: Timestamp,
    action: &str,
    device: &DeviceRecord,
    detail: &str,
) -> anyhow::Result<()> {
    let site = store.site_by_name(&device.site).await?.map(|s| s.id);
    audit_cli(
        store,
        now,
        site,
        &format!("cli:{}", os_user()),
        action,
        device.id.as_str(),
        detail,
    )
    .await
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
                Some(site.id),
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
            print!("{}", render::secrets_list(&secrets, now, format));
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
                Some(site.id),
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
