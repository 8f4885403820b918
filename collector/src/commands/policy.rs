//! `policy`: sites' suspicious-activity policies.

use anyhow::{Context, bail};
use clap::Subcommand;
use hallmonitor_collector::open_store;
use hallmonitor_collector::render::Format;
use hallmonitor_collector::store::PolicyStore;
use jiff::Timestamp;
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;

use super::*;

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
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

pub(crate) async fn policy(data: &Path, command: PolicyCommand) -> anyhow::Result<ExitCode> {
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
            let actor = cli_actor(by);
            match policies::save(
                &store,
                &site,
                &text,
                &file,
                &comment,
                policies::Author {
                    name: &actor,
                    address: "cli",
                },
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
            let actor = cli_actor(by);
            let file = std::path::Path::new("(default)");
            match policies::save(
                &store,
                &site,
                "",
                file,
                "reset to the project's default",
                policies::Author {
                    name: &actor,
                    address: "cli",
                },
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
    Ok(ExitCode::SUCCESS)
}
