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
    if data.exists()
        && data
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{} already exists and is not empty: refusing to overwrite a collector",
            data.display()
        );
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
            if data.exists() {
                std::fs::remove_dir(data)
                    .with_context(|| format!("replacing empty {}", data.display()))?;
            }
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
