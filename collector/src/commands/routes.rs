//! `routes`: a site's own notification routes (which events go to which
//! recipients' roles, and when), stored in the database like the
//! console's; a site without any uses collector.toml's. Audited.

use anyhow::bail;
use clap::Subcommand;
use hallmonitor_collector::alerts::EVENT_KINDS;
use hallmonitor_collector::config::CollectorConfig;
use hallmonitor_collector::model::{Role, Timing};
use hallmonitor_collector::open_store;
use hallmonitor_collector::render::Format;
use hallmonitor_collector::store::{AlertStore, AuditEntry, SiteRoute};
use jiff::Timestamp;
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;

use super::*;

#[derive(Subcommand)]
pub(crate) enum RoutesCommand {
    /// The routes in force at a site, and where they come from.
    List {
        #[arg(long)]
        site: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Add a route to a site; a site that used collector.toml's routes
    /// starts from a copy of them.
    Add {
        #[arg(long)]
        site: String,
        /// capture_severe, capture_instant, capture_threshold,
        /// device_inactive, mfa_stale, mfa_due_soon or tamper.
        #[arg(long)]
        kind: String,
        /// head_teacher, dsl, online_safety_lead, technician or staff_member.
        #[arg(long)]
        role: String,
        /// immediate or digest.
        #[arg(long, default_value = "immediate")]
        timing: String,
        /// The person this is done for (recorded beside the OS account).
        #[arg(long)]
        by: Option<String>,
    },
    /// Remove one of a site's routes (by the id `routes list` shows).
    Remove {
        #[arg(long)]
        site: String,
        id: i64,
        #[arg(long)]
        by: Option<String>,
    },
    /// Remove all of a site's routes: it uses collector.toml's again.
    Clear {
        #[arg(long)]
        site: String,
        #[arg(long)]
        by: Option<String>,
    },
}

pub(crate) async fn routes(data: &Path, command: RoutesCommand) -> anyhow::Result<ExitCode> {
    let store = open_store(data).await?;
    let config = CollectorConfig::load(data)?;
    match command {
        RoutesCommand::List { site, format } => {
            let site = require_site(&store, &site).await?;
            let own = store.site_routes(site.id).await?;
            let from = if own.is_empty() {
                "collector.toml"
            } else {
                "site"
            };
            let rows: Vec<(i64, String, String, String)> = if own.is_empty() {
                config
                    .notifications
                    .routes
                    .iter()
                    .flat_map(|r| {
                        r.roles
                            .iter()
                            .map(|role| (0, r.kind.clone(), role.to_string(), r.timing.to_string()))
                    })
                    .collect()
            } else {
                own.into_iter()
                    .map(|r| (r.id, r.kind, r.role.to_string(), r.timing.to_string()))
                    .collect()
            };
            match format {
                Format::Json => {
                    let doc = json!({
                        "schema": "hallmonitor.routes.v1",
                        "site": site.name,
                        "from": from,
                        "routes": rows.iter().map(|(id, kind, role, timing)| json!({
                            "id": if *id == 0 { None } else { Some(id) },
                            "kind": kind, "role": role, "timing": timing,
                        })).collect::<Vec<_>>(),
                    });
                    println!("{}", serde_json::to_string_pretty(&doc)?);
                }
                Format::Table => {
                    println!("{}: routes from {from}", site.name);
                    println!("{:<6} {:<20} {:<20} TIMING", "ID", "KIND", "ROLE");
                    for (id, kind, role, timing) in rows {
                        let id = if id == 0 {
                            "-".to_owned()
                        } else {
                            id.to_string()
                        };
                        println!("{id:<6} {kind:<20} {role:<20} {timing}");
                    }
                }
            }
        }
        RoutesCommand::Add {
            site,
            kind,
            role,
            timing,
            by,
        } => {
            let site = require_site(&store, &site).await?;
            if !EVENT_KINDS.contains(&kind.as_str()) {
                bail!("--kind: expected one of {}", EVENT_KINDS.join(", "));
            }
            let Some(role) = Role::parse(&role) else {
                bail!("--role: expected {}", Role::expected());
            };
            let Some(timing) = Timing::parse(&timing) else {
                bail!("--timing: expected {}", Timing::expected());
            };
            let actor = cli_actor(by);
            let target = format!("site {}", site.name);
            let detail = format!("{kind} → {role} ({timing})");
            let added = store
                .add_site_route(
                    site.id,
                    &SiteRoute {
                        id: 0,
                        kind: kind.clone(),
                        role,
                        timing,
                    },
                    &config.notifications.routes,
                    entry(&actor, "route_added", &target, &detail),
                )
                .await?;
            if !added {
                bail!("{} already has the route {detail}", site.name);
            }
            println!("{}: added {detail}", site.name);
        }
        RoutesCommand::Remove { site, id, by } => {
            let site = require_site(&store, &site).await?;
            let actor = cli_actor(by);
            let target = format!("site {}", site.name);
            let detail = format!("route {id}");
            if !store
                .remove_site_route(
                    site.id,
                    id,
                    entry(&actor, "route_removed", &target, &detail),
                )
                .await?
            {
                bail!(
                    "{} has no route {id} of its own (see `routes list`)",
                    site.name
                );
            }
            println!("{}: removed route {id}", site.name);
        }
        RoutesCommand::Clear { site, by } => {
            let site = require_site(&store, &site).await?;
            let actor = cli_actor(by);
            let target = format!("site {}", site.name);
            let removed = store
                .clear_site_routes(
                    site.id,
                    entry(
                        &actor,
                        "routes_cleared",
                        &target,
                        "back to collector.toml's routes",
                    ),
                )
                .await?;
            println!(
                "{}: removed {removed} route(s); collector.toml's routes apply",
                site.name
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn entry<'a>(actor: &'a str, action: &'a str, target: &'a str, detail: &'a str) -> AuditEntry<'a> {
    AuditEntry {
        at: Timestamp::now(),
        // The store files the row under the site it changes.
        site: None,
        actor,
        action,
        target,
        detail,
        address: "cli",
    }
}
