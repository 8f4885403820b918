//! `sites`: the schools one collector serves. `init` makes the first; a
//! trust or local authority adds the others here, then gives each its own
//! enrolment secrets, console accounts and policy.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use hallmonitor_collector::open_store;
use hallmonitor_collector::render::{self, Format};
use hallmonitor_collector::store::SiteStore;
use jiff::Timestamp;

use super::{audit_cli, os_user};

#[derive(Subcommand)]
pub(crate) enum SitesCommand {
    /// Add a site (school).
    Add {
        name: String,
        /// IANA time zone its reports and pages are shown in.
        #[arg(long, default_value = "Europe/London")]
        timezone: String,
    },
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

pub(crate) async fn sites(data: &Path, command: SitesCommand) -> anyhow::Result<ExitCode> {
    let store = open_store(data).await?;
    match command {
        SitesCommand::Add { name, timezone } => {
            let name = name.trim().to_owned();
            if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
                bail!("the site's name must be 1 to 100 printable characters");
            }
            jiff::tz::TimeZone::get(&timezone)
                .ok()
                .with_context(|| format!("--timezone {timezone}: not a known IANA time zone"))?;
            if store.site_by_name(&name).await?.is_some() {
                bail!("a site named '{name}' exists already");
            }
            let now = Timestamp::now();
            let site = store.create_site(&name, &timezone, now).await?;
            audit_cli(
                &store,
                now,
                Some(site.id),
                &format!("cli:{}", os_user()),
                "site_added",
                &format!("site {name}"),
                &format!("timezone={timezone}"),
            )
            .await?;
            eprintln!(
                "Added site {name}. Next: enroll-secret create --site \"{name}\", users add … --sites \"{name}\"."
            );
        }
        SitesCommand::List { format } => {
            print!("{}", render::sites(&store.sites().await?, format));
        }
    }
    Ok(ExitCode::SUCCESS)
}
