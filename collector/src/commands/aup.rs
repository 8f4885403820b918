//! `aup`: sites' acceptable-use policies and the answers to them.

use anyhow::Context;
use clap::Subcommand;
use hallmonitor_collector::aup::AnswersDocument;
use hallmonitor_collector::model::AupAnswerKind;
use hallmonitor_collector::open_store;
use hallmonitor_collector::policies::{Author, Saved};
use hallmonitor_collector::render::{Format, terminal_text};
use hallmonitor_collector::store::{AupAnswerFilter, AupStore};
use jiff::Timestamp;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::*;

#[derive(Subcommand)]
pub(crate) enum AupCommand {
    /// Check FILE (TOML: title, text, decline = "log_out" | "record",
    /// [[audiences]] with groups) and save it as the site's next version.
    /// A file that does not parse is refused with its line; the last good
    /// version stays in force.
    Set {
        #[arg(long)]
        site: String,
        file: PathBuf,
        #[arg(long, env = "HALLMONITOR_ACTOR")]
        by: Option<String>,
    },
    /// Print the site's AUP (the newest version, or VERSION).
    Show {
        #[arg(long)]
        site: String,
        #[arg(long)]
        version: Option<u64>,
    },
    /// The answers users gave, newest first (accounts: pupil-level data).
    Answers {
        /// Every site when absent.
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        version: Option<u64>,
        /// accept or decline.
        #[arg(long)]
        answer: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

pub(crate) async fn aup(data: &Path, command: AupCommand) -> anyhow::Result<ExitCode> {
    match command {
        AupCommand::Set { site, file, by } => {
            let store = open_store(data).await?;
            let site = require_site(&store, &site).await?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let actor = cli_actor(by);
            let author = Author {
                name: &actor,
                address: "cli",
            };
            match hallmonitor_collector::aup::save(
                &store,
                &site,
                &text,
                &file,
                author,
                Timestamp::now(),
            )
            .await?
            {
                Saved::New(v) => println!(
                    "Saved {} acceptable-use policy version {v}; connected agents receive it within seconds.",
                    site.name
                ),
                Saved::Unchanged(v) => println!(
                    "Unchanged: {} acceptable-use policy version {v} has this text.",
                    site.name
                ),
            }
        }
        AupCommand::Show { site, version } => {
            let store = open_store(data).await?;
            let site = require_site(&store, &site).await?;
            let Some(aup) = store.site_aup(site.id, version).await? else {
                anyhow::bail!(
                    "{} has no acceptable-use policy{}",
                    site.name,
                    match version {
                        Some(v) => format!(" version {v}"),
                        None => String::new(),
                    }
                );
            };
            eprintln!(
                "# {} acceptable-use policy version {}, saved {} by {}",
                site.name, aup.version, aup.created_at, aup.created_by
            );
            print!("{}", aup.toml);
        }
        AupCommand::Answers {
            site,
            version,
            answer,
            limit,
            format,
        } => {
            let store = open_store(data).await?;
            let sites = match site {
                Some(name) => Some(vec![require_site(&store, &name).await?.id]),
                None => None,
            };
            let answer = match answer {
                Some(text) => Some(
                    AupAnswerKind::parse(&text)
                        .with_context(|| format!("--answer {text:?}: accept or decline"))?,
                ),
                None => None,
            };
            let rows = store
                .aup_answers(&AupAnswerFilter {
                    sites,
                    version,
                    answer,
                    limit,
                })
                .await?;
            match format {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&AnswersDocument::new(&rows))?
                ),
                Format::Table => {
                    println!(
                        "{:<20} {:<24} {:<20} {:>7} {:<7} {:<20} OUTCOME",
                        "ANSWERED", "DEVICE", "ACCOUNT", "VERSION", "ANSWER", "SITE"
                    );
                    for row in &rows {
                        println!(
                            "{:<20} {:<24} {:<20} {:>7} {:<7} {:<20} {}",
                            row.record.answered_at.strftime("%Y-%m-%d %H:%M:%S"),
                            terminal_text(&row.hostname, 24),
                            terminal_text(&row.record.account, 20),
                            row.record.version,
                            row.record.answer.as_str(),
                            terminal_text(&row.site, 20),
                            terminal_text(&row.record.outcome, 80),
                        );
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
