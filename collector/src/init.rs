//! `init`: creates a collector data directory: configuration, CA and server
//! certificate, database, the first site with an enrolment secret, and the
//! first console administrator. Secrets are printed once and stored hashed.
//!
//! Nothing is half-created: everything is built in a temporary sibling
//! directory that is renamed into place only when complete.

use crate::store::{AuditStore, ConsoleStore, DeviceStore, SiteStore};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use jiff::Timestamp;

use crate::auth;
use crate::config::{self, CollectorConfig};
use crate::pki::{self, CertificateAuthority, PkiPaths};
use crate::store::{AuditEntry, NewSecret};

pub struct InitOptions {
    pub data: PathBuf,
    pub site: String,
    pub timezone: String,
    pub hostnames: Vec<String>,
    pub admin_user: String,
    pub listen: Option<SocketAddr>,
    pub enroll_listen: Option<SocketAddr>,
    pub api_listen: Option<SocketAddr>,
}

/// What `init` made that the operator must see once.
pub struct InitReport {
    pub data: PathBuf,
    pub site: String,
    pub enrollment_secret: String,
    pub ca_fingerprint: String,
    pub admin_user: String,
    pub admin_password: String,
    pub config: CollectorConfig,
}

pub async fn init(options: InitOptions) -> anyhow::Result<InitReport> {
    if options.hostnames.is_empty() {
        bail!(
            "at least one --hostname is needed: the names or addresses agents use to reach this collector"
        );
    }
    if options.site.trim().is_empty() {
        bail!("--site must not be empty");
    }
    jiff::tz::TimeZone::get(&options.timezone)
        .ok()
        .with_context(|| {
            format!(
                "--timezone {}: not a known IANA time zone",
                options.timezone
            )
        })?;
    let data = &options.data;
    // A leftover staging folder of an interrupted `init` does not count.
    let holds_something = |dir: &Path| {
        dir.read_dir()
            .map(|entries| {
                entries.flatten().any(|e| {
                    !e.file_name()
                        .to_str()
                        .is_some_and(|n| n.starts_with(STAGING_PREFIX))
                })
            })
            .unwrap_or(true)
    };
    if data.exists() && holds_something(data) {
        bail!(
            "{} already exists and is not empty: refusing to overwrite a collector",
            data.display()
        );
    }
    if data.exists() {
        // An empty folder made for us (the package makes
        // /var/lib/hallmonitor-collector, owned by the service's user, in
        // a parent that user cannot write): build inside it and move the
        // pieces up, the configuration last, so a collector never starts
        // on half a data folder (the unit waits for collector.toml).
        let staging = data.join(format!("{STAGING_PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        let report = match build(&options, &staging).await {
            Ok(report) => report,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        let mut names: Vec<_> = std::fs::read_dir(&staging)
            .with_context(|| format!("reading {}", staging.display()))?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort_by_key(|n| n == config::FILE_NAME);
        for name in names {
            std::fs::rename(staging.join(&name), data.join(&name)).with_context(|| {
                format!("moving {} into {}", name.to_string_lossy(), data.display())
            })?;
        }
        std::fs::remove_dir(&staging).with_context(|| format!("removing {}", staging.display()))?;
        return Ok(InitReport {
            data: data.clone(),
            ..report
        });
    }
    let parent = data
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = parent.join(format!(
        ".{}.init-{}",
        data.file_name().and_then(|n| n.to_str()).unwrap_or("data"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    let result = build(&options, &staging).await;
    match result {
        Ok(report) => {
            std::fs::rename(&staging, data)
                .with_context(|| format!("moving {} to {}", staging.display(), data.display()))?;
            Ok(InitReport {
                data: data.clone(),
                ..report
            })
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

/// Names of the folder `init` builds in before moving it into place.
const STAGING_PREFIX: &str = ".init-";

async fn build(options: &InitOptions, dir: &Path) -> anyhow::Result<InitReport> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut config = CollectorConfig::default();
    if let Some(listen) = options.listen {
        config.listen = listen;
    }
    if let Some(api_listen) = options.api_listen {
        config.api_listen = api_listen;
    }
    if let Some(enroll_listen) = options.enroll_listen {
        config.enroll_listen = enroll_listen;
    }
    let config_path = dir.join(config::FILE_NAME);
    pki::write_new(&config_path, config.to_file_text().as_bytes(), 0o640)?;

    let paths = PkiPaths::in_data_dir(dir);
    pki::create(&paths, &options.site, &options.hostnames)?;
    let ca = CertificateAuthority::load(&paths)?;

    let store = crate::store::SqliteStore::open(&dir.join(crate::DATABASE_FILE), true).await?;
    let now = Timestamp::now();
    let site = store
        .create_site(&options.site, &options.timezone, now)
        .await?;
    let secret = auth::generate_enrollment_secret();
    store
        .create_enrollment_secret(NewSecret {
            site: site.id,
            secret_sha256: auth::secret_digest(&secret),
            hint: auth::secret_hint(&secret),
            label: "created by init".into(),
            expires_at: None,
            at: now,
        })
        .await?;
    let password = auth::generate_password();
    let hash = auth::hash_password(&password)
        .map_err(|e| anyhow::anyhow!("hashing the admin password: {e}"))?;
    store
        .create_console_user(
            crate::store::NewConsoleUser {
                username: &options.admin_user,
                password_hash: &hash,
                role: crate::model::ConsoleRole::Admin,
                sites: None,
            },
            now,
        )
        .await?;
    store
        .append_audit(AuditEntry {
            at: now,
            // The first account sees every site: collector-wide.
            site: None,
            actor: "init",
            action: "collector_initialised",
            target: &options.site,
            detail: &format!("admin user {}", options.admin_user),
            address: "cli",
        })
        .await?;
    store.close().await;
    Ok(InitReport {
        data: dir.into(),
        site: site.name,
        enrollment_secret: secret,
        ca_fingerprint: ca.fingerprint(),
        admin_user: options.admin_user.clone(),
        admin_password: password,
        config,
    })
}
