//! `compliance check` and `flags`: verdicts and the flag workflow.

use anyhow::{Context, bail};
use clap::Subcommand;
use hallmonitor_collector::config::CollectorConfig;
use hallmonitor_collector::flags::{FlagAction, FlagState};
use hallmonitor_collector::render::{self, Format};
use hallmonitor_collector::store::ActivityStore;
use hallmonitor_collector::{compliance, open_store};
use jiff::Timestamp;
use std::path::Path;
use std::process::ExitCode;

use super::*;

#[derive(Subcommand)]
pub(crate) enum ComplianceCommand {
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
pub(crate) enum FlagsCommand {
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

pub(crate) async fn compliance(
    data: &Path,
    command: ComplianceCommand,
) -> anyhow::Result<ExitCode> {
    let ComplianceCommand::Check {
        site,
        device,
        as_of,
        format,
    } = command;
    let store = open_store(data).await?;
    let config = CollectorConfig::load(data)?;
    let filter = filter(&store, site.as_deref(), device).await?;
    let as_of = as_of.unwrap_or_else(Timestamp::now);
    let report = compliance::check(&store, &config, &filter, as_of).await?;
    if filter.device.is_some() && report.devices.is_empty() {
        bail!("no such device");
    }
    print!("{}", render::compliance(&report, format));
    Ok(ExitCode::from(
        hallmonitor_collector::compliance::exit_code(&report),
    ))
}

pub(crate) async fn flags(data: &Path, command: FlagsCommand) -> anyhow::Result<ExitCode> {
    let store = open_store(data).await?;
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
            print!("{}", render::flags_list(&flags, now, format));
            return Ok(ExitCode::SUCCESS);
        }
        FlagsCommand::Show { id, format } => {
            let flag = store
                .flag(id)
                .await?
                .with_context(|| format!("no flag with id {id}"))?;
            let history = store.flag_history(id).await?;
            print!("{}", render::flag_show(&flag, &history, format));
            return Ok(ExitCode::SUCCESS);
        }
        FlagsCommand::Approve { id, reason, by } => (id, FlagAction::Approve, reason, by),
        FlagsCommand::Dismiss { id, reason, by } => (id, FlagAction::Dismiss, reason, by),
        FlagsCommand::Reenable { id, reason, by } => (id, FlagAction::Reenable, reason, by),
    };
    if reason.trim().is_empty() {
        bail!("--reason must say why");
    }
    let actor = cli_actor(by);
    let flag = store
        .transition_flag(id, action, &actor, &reason, now)
        .await??;
    // The same row the console and the API write for a flag decision.
    audit_cli(
        &store,
        now,
        Some(flag.site_id),
        &actor,
        &format!("flag_{}", action.verb().replace([' ', '-'], "_")),
        &format!("flag {id}"),
        &reason,
    )
    .await?;
    println!(
        "Flag {} is now {} (device {}).",
        flag.id,
        flag.state.as_str(),
        flag.device_id
    );
    Ok(ExitCode::SUCCESS)
}
