//! The collector's commands, one module per concern: each holds its
//! subcommands (clap derive) and runs them by calling into the library and
//! printing; no rule or storage logic lives here. Part of the binary, not
//! of the library. The helpers below name sites, filters and the person
//! running a command for the audit log.

pub(crate) mod aup;
pub(crate) mod devices;
pub(crate) mod flags;
pub(crate) mod incidents;
pub(crate) mod mfa;
pub(crate) mod notifications;
pub(crate) mod policy;
pub(crate) mod report;
pub(crate) mod routes;
pub(crate) mod sites;
pub(crate) mod users;

use anyhow::Context;
use hallmonitor_collector::model::{DeviceId, SiteId};
use hallmonitor_collector::store::{AuditEntry, AuditStore, DeviceFilter, SiteStore};
use jiff::Timestamp;

/// One row in the audit log for a command run from the command line.
pub(crate) async fn audit_cli(
    store: &impl AuditStore,
    at: Timestamp,
    site: Option<SiteId>,
    actor: &str,
    action: &str,
    target: &str,
    detail: &str,
) -> anyhow::Result<()> {
    store
        .append_audit(AuditEntry {
            at,
            site,
            actor,
            action,
            target,
            detail,
            address: "cli",
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

/// The account that runs this command, from the kernel (the real uid),
/// not from the environment a caller can set; under sudo, root names the
/// account sudo was run from too.
pub(crate) fn os_user() -> String {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let name = account_name(uid).unwrap_or_else(|| format!("uid {uid}"));
    match std::env::var("SUDO_USER") {
        Ok(sudo) if uid == 0 && !sudo.is_empty() => format!("{name} (sudo: {sudo})"),
        _ => name,
    }
}

fn account_name(uid: u32) -> Option<String> {
    let mut passwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 4096];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes into `passwd` and `buffer`, both ours and
    // sized as passed; `result` is null or points at `passwd`.
    let found = unsafe {
        libc::getpwuid_r(
            uid,
            &mut passwd,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut result,
        )
    };
    if found != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success pw_name is a NUL-terminated string in `buffer`.
    let name = unsafe { std::ffi::CStr::from_ptr(passwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

pub(crate) async fn filter(
    store: &impl SiteStore,
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
    store: &impl SiteStore,
    name: Option<&str>,
) -> anyhow::Result<Option<hallmonitor_collector::model::Site>> {
    match name {
        None => Ok(None),
        Some(name) => Ok(Some(require_site(store, name).await?)),
    }
}

pub(crate) async fn require_site(
    store: &impl SiteStore,
    name: &str,
) -> anyhow::Result<hallmonitor_collector::model::Site> {
    store
        .site_by_name(name)
        .await?
        .with_context(|| format!("no site named '{name}'"))
}
