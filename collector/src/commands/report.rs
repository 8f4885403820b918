//! `report`: the annual review of monitoring's effectiveness for scripts
//! (the console's /report page, as JSON `hallmonitor.annual_review.v1` or
//! as the same PDF). Audited like a view in the console.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use hallmonitor_collector::annual_review::{self, period_of};
use hallmonitor_collector::open_store;
use hallmonitor_collector::store::SiteStore;
use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::{audit_cli, cli_actor, require_site};

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum ReportFormat {
    Json,
    Pdf,
}

#[derive(clap::Args)]
pub(crate) struct ReportArgs {
    /// The site (default: every site).
    #[arg(long)]
    site: Option<String>,
    /// First day, YYYY-MM-DD in the site's time (default: 365 days before
    /// --to).
    #[arg(long)]
    from: Option<String>,
    /// Last day, included (default: now).
    #[arg(long)]
    to: Option<String>,
    #[arg(long, value_enum, default_value = "json")]
    format: ReportFormat,
    /// Where to write it (`-` or absent: standard output; a PDF needs a
    /// file).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Devices heard from in this many days count as reporting.
    #[arg(long, default_value_t = annual_review::DEFAULT_REPORTING_DAYS)]
    reporting_days: i64,
    /// Who the report is made for, recorded in the audit log.
    #[arg(long)]
    by: Option<String>,
}

pub(crate) async fn report(data: &Path, args: ReportArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(data).await?;
    let sites = match &args.site {
        Some(name) => vec![require_site(&store, name).await?],
        None => store.sites().await?,
    };
    anyhow::ensure!(!sites.is_empty(), "the collector has no site yet");
    anyhow::ensure!(
        (1..=365).contains(&args.reporting_days),
        "--reporting-days must be 1 to 365"
    );
    let out = args.out.filter(|p| p.as_os_str() != "-");
    if matches!(args.format, ReportFormat::Pdf) && out.is_none() {
        anyhow::bail!("a PDF needs --out FILE");
    }
    let zone = TimeZone::get(&sites[0].timezone).unwrap_or(TimeZone::UTC);
    let now = Timestamp::now();
    let period = period_of(
        args.from.as_deref().unwrap_or(""),
        args.to.as_deref().unwrap_or(""),
        &zone,
        now,
        365,
    )
    .map_err(anyhow::Error::msg)?;
    let review = annual_review::gather(&store, &sites, period, now, args.reporting_days).await?;
    let words = annual_review::period_words(period, &zone);
    let bytes = match args.format {
        ReportFormat::Json => {
            let mut json = serde_json::to_vec_pretty(&review)?;
            json.push(b'\n');
            json
        }
        ReportFormat::Pdf => annual_review::pdf::render(&review, &words),
    };
    audit_cli(
        &store,
        now,
        match sites.as_slice() {
            [one] => Some(one.id),
            _ => None,
        },
        &cli_actor(args.by),
        "report_exported",
        &format!("report {}", review.sites.join(", ")),
        &format!(
            "{words}; {}",
            match args.format {
                ReportFormat::Json => "json",
                ReportFormat::Pdf => "pdf",
            }
        ),
    )
    .await?;
    match out {
        Some(path) => {
            std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?
        }
        None => std::io::stdout().write_all(&bytes)?,
    }
    Ok(ExitCode::SUCCESS)
}
