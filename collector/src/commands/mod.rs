//! The collector's commands, one module per concern: each holds its
//! subcommands (clap derive) and runs them by calling into the library and
//! printing; no rule or storage logic lives here. Part of the binary, not
//! of the library. The helpers below name sites, filters and the person
//! running a command for the audit log.

pub(crate) mod devices;
pub(crate) mod flags;
pub(crate) mod incidents;
pub(crate) mod mfa;
pub(crate) mod notifications;
pub(crate) mod policy;

use anyhow::Context;
use hallmonitor_collector::model::DeviceId;
use hallmonitor_collector::store::{AuditEntry, DeviceFilter, Store};
use jiff::Timestamp;

/// One row in the audit log for a command run from the command line.
pub(crate) async fn audit_cli(
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
/// The actor an audited command records: always the OS account that ran
/// it, and the person it was run for when `--by` names one ("cli:root as
/// j.smith"), so `--by` can add a name but never hide who acted.
pub(crate) fn cli_actor(by: Option<String>) -> String {
    match by
        .map(|by| by.trim().to_owned())
        .filter(|by| !by.is_empty())
    {
        Some(by) => format!("cli:{} as {by}", os_user()),
        None => format!("cli:{}", os_user()),
    }
}

pub(crate) fn os_user() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) async fn filter(
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

pub(crate) async fn resolve_site(
    store: &impl Store,
    name: Option<&str>,
) -> anyhow::Result<Option<hallmonitor_collector::model::Site>> {
    match name {
        None => Ok(None),
        Some(name) => Ok(Some(require_site(store, name).await?)),
    }
}

pub(crate) async fn require_site(
    store: &impl Store,
    name: &str,
) -> anyhow::Result<hallmonitor_collector::model::Site> {
    store
        .site_by_name(name)
        .await?
        .with_context(|| format!("no site named '{name}'"))
}
