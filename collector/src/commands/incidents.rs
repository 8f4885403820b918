//! `incidents` and `evidence`: safeguarding evidence; every look is audited.

use anyhow::{Context, bail};
use clap::Subcommand;
use hallmonitor_collector::config::CollectorConfig;
use hallmonitor_collector::open_store;
use hallmonitor_collector::render::{self, Format};
use hallmonitor_collector::review::{CaptureStatus, Grade, ReviewRequest};
use hallmonitor_collector::store::IncidentStore;
use jiff::Timestamp;
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;

use super::*;

#[derive(Subcommand)]
pub(crate) enum IncidentsCommand {
    List {
        #[arg(long)]
        site: Option<String>,
        /// open or closed
        #[arg(long)]
        status: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    Show {
        id: i64,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        #[arg(long, env = "HALLMONITOR_ACTOR")]
        by: Option<String>,
    },
    /// Write the evidence (images, metadata, SHA-256 sums) to OUT/incident-ID
    /// for a report to CEOP or the police.
    Export {
        id: i64,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, env = "HALLMONITOR_ACTOR")]
        by: Option<String>,
    },
    /// Review one capture: move its status (closing needs --outcome),
    /// regrade it, add a note. Recorded in its history and the audit log.
    Review {
        /// The capture's id (`incidents show` lists them).
        capture: i64,
        /// triaged, false_positive, no_concern, concern or escalated (a
        /// closed capture can be reopened to triaged).
        #[arg(long, value_enum)]
        status: Option<CaptureStatus>,
        /// A new grade, 1 to 5 (the rule's severity stays recorded).
        #[arg(long)]
        grade: Option<i64>,
        /// What was decided and done (needed to close).
        #[arg(long, default_value = "")]
        outcome: String,
        /// The school's own record (MyConcern, CPOMS).
        #[arg(long, default_value = "")]
        reference: String,
        #[arg(long, default_value = "")]
        note: String,
        #[arg(long, env = "HALLMONITOR_ACTOR")]
        by: Option<String>,
    },
    Close {
        id: i64,
        #[arg(long)]
        reason: String,
        #[arg(long, env = "HALLMONITOR_ACTOR")]
        by: Option<String>,
    },
    /// Purge evidence past each site's retention (`[captures]
    /// retention_days`, or the console's value for the site) now (the collector
    /// also does it daily): captures of closed incidents, their images and
    /// the content of their events.
    Purge {
        #[arg(long, env = "HALLMONITOR_ACTOR")]
        by: Option<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum EvidenceCommand {
    /// Make a new evidence key, re-encrypt every image under it and delete
    /// the old key once no image needs it. Safe while the collector runs.
    RotateKey {
        #[arg(long, env = "HALLMONITOR_ACTOR")]
        by: Option<String>,
    },
}

pub(crate) async fn incidents(data: &Path, command: IncidentsCommand) -> anyhow::Result<ExitCode> {
    let store = open_store(data).await?;
    let now = Timestamp::now();
    let audit =
        |actor: String, site: Option<SiteId>, action: &'static str, id: i64, detail: String| {
            let store = &store;
            async move {
                audit_cli(
                    store,
                    now,
                    site,
                    &actor,
                    action,
                    &format!("incident {id}"),
                    &detail,
                )
                .await
            }
        };
    match command {
        IncidentsCommand::List {
            site,
            status,
            format,
        } => {
            let filter = filter(&store, site.as_deref(), None).await?;
            let list = store.list_incidents(&filter, status.as_deref()).await?;
            print!("{}", render::incidents_list(&list, format));
        }
        IncidentsCommand::Show { id, format, by } => {
            let (incident, captures, site) = store
                .incident(id)
                .await?
                .with_context(|| format!("no incident with id {id}"))?;
            audit(
                cli_actor(by),
                Some(site),
                "incident_viewed",
                id,
                String::new(),
            )
            .await?;
            let history = store.incident_history(id).await?;
            print!(
                "{}",
                render::incident_show(&incident, &captures, &history, format)
            );
        }
        IncidentsCommand::Export { id, out, by } => {
            let (incident, captures, site) = store
                .incident(id)
                .await?
                .with_context(|| format!("no incident with id {id}"))?;
            let evidence = hallmonitor_collector::evidence::EvidenceStore::open(data)?;
            let actor = cli_actor(by);
            let folder = incidents_export(&evidence, &incident, &captures, &out, &actor, now)?;
            audit(
                actor,
                Some(site),
                "incident_exported",
                id,
                folder.display().to_string(),
            )
            .await?;
            println!(
                "Exported incident {id} ({} capture(s)) to {}.",
                captures.len(),
                folder.display()
            );
        }
        IncidentsCommand::Review {
            capture,
            status,
            grade,
            outcome,
            reference,
            note,
            by,
        } => {
            let (incident, site) = store
                .capture_place(capture)
                .await?
                .with_context(|| format!("no capture with id {capture}"))?;
            let request = ReviewRequest {
                status,
                grade: grade.map(Grade::new).transpose()?,
                outcome,
                reference,
                note,
            };
            let actor = cli_actor(by);
            let decision = store
                .review_capture(capture, &request, &actor, now)
                .await?
                .with_context(|| format!("reviewing capture {capture}"))?;
            audit(
                actor,
                Some(site),
                "capture_reviewed",
                incident,
                decision.audit_words(capture),
            )
            .await?;
            println!(
                "Capture {capture} (incident {incident}) is {}; grade {}.",
                decision.status.label(),
                decision
                    .grade
                    .map_or("as the rule's severity".to_owned(), |g| g.to_string())
            );
        }
        IncidentsCommand::Close { id, reason, by } => {
            if reason.trim().is_empty() {
                bail!("--reason must say why");
            }
            let site = store.incident(id).await?.map(|(_, _, site)| site);
            if !store.close_incident(id, &reason, now).await? {
                bail!("no open incident with id {id}");
            }
            audit(cli_actor(by), site, "incident_closed", id, reason).await?;
            println!("Closed incident {id}.");
        }
        IncidentsCommand::Purge { by } => {
            let config = CollectorConfig::load(data)?;
            let evidence = hallmonitor_collector::evidence::EvidenceStore::open(data)?;
            let retention =
                hallmonitor_collector::site_settings::retention_by_site(&store, &config).await?;
            let purge =
                hallmonitor_collector::incidents::purge_expired(&store, &evidence, &retention, now)
                    .await?;
            audit(
                cli_actor(by),
                // Every site's evidence: collector-wide.
                None,
                "evidence_purged",
                0,
                format!(
                    "{} captures, {} images, {} images skipped",
                    purge.captures,
                    purge.images_removed,
                    purge.images_skipped.len()
                ),
            )
            .await?;
            println!(
                "Purged {} capture(s) older than their site's retention from closed incidents ({} image(s) removed).",
                purge.captures, purge.images_removed
            );
            for (sha, why) in &purge.images_skipped {
                println!(
                    "  image '{}' not removed: {}",
                    render::terminal_text(sha, render::MAX_COLUMN_CHARS),
                    render::terminal_text(why, render::MAX_VALUE_CHARS)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn evidence(data: &Path, command: EvidenceCommand) -> anyhow::Result<ExitCode> {
    let EvidenceCommand::RotateKey { by } = command;
    let store = open_store(data).await?;
    let evidence = hallmonitor_collector::evidence::EvidenceStore::open(data)?;
    let rotation = tokio::task::spawn_blocking(move || evidence.rotate_key()).await??;
    let actor = cli_actor(by);
    let detail = format!(
        "new key {}; {} image(s) re-encrypted; {} old key(s) deleted, {} kept; {} unreadable",
        rotation.key_id,
        rotation.reencrypted,
        rotation.old_keys_removed,
        rotation.old_keys_kept,
        rotation.failed.len()
    );
    audit_cli(
        &store,
        Timestamp::now(),
        None,
        &actor,
        "evidence_key_rotated",
        "evidence",
        &detail,
    )
    .await?;
    println!("Evidence key rotated: {detail}.");
    if !rotation.failed.is_empty() {
        bail!(
            "{} image(s) could not be decrypted and keep the old key: {}",
            rotation.failed.len(),
            rotation.failed.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes an incident's evidence (`evidence_export::entries`) to
/// OUT/incident-ID. Built in a temporary folder and renamed into place, so
/// a failure leaves nothing half-written; an existing export is never
/// overwritten.
fn incidents_export(
    evidence: &hallmonitor_collector::evidence::EvidenceStore,
    incident: &hallmonitor_collector::incidents::IncidentRecord,
    captures: &[hallmonitor_collector::incidents::CaptureRow],
    out: &std::path::Path,
    actor: &str,
    now: Timestamp,
) -> anyhow::Result<PathBuf> {
    use hallmonitor_collector::evidence_export::{self, ExportError, Exporter};
    let folder = out.join(evidence_export::folder_name(incident.id));
    if folder.exists() {
        bail!("{} exists already; choose another --out", folder.display());
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let staging = out.join(format!(".incident-{}.partial", incident.id));
    let _ = std::fs::remove_dir_all(&staging);
    // Decrypted safeguarding evidence: readable by whoever exported it
    // only (0700 folders, 0600 files), whatever the umask.
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(staging.join("images"))
            .with_context(|| format!("creating {}", staging.display()))?;
    }
    let exporter = Exporter {
        by: actor,
        from: None,
        at: now,
    };
    let written =
        evidence_export::entries(evidence, incident, captures, &exporter, |name, bytes| {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(staging.join(name))
                .and_then(|mut file| file.write_all(bytes))
                .map_err(|source| ExportError::Write {
                    name: name.to_owned(),
                    source,
                })
        });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e).with_context(|| format!("exporting incident {}", incident.id));
    }
    // The staging folder holds decrypted images: it does not outlive a
    // failed export.
    if let Err(e) = std::fs::rename(&staging, &folder) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e).with_context(|| format!("renaming into {}", folder.display()));
    }
    Ok(folder)
}
