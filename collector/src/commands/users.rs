//! `users`: console accounts from the command line, for the first steps
//! and for recovery (a locked-out administrator, a lost second factor).

use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use hallmonitor_collector::auth;
use hallmonitor_collector::console::users::{parse_sites, username_problem};
use hallmonitor_collector::model::ConsoleRole;
use hallmonitor_collector::open_store;
use hallmonitor_collector::render::{self, Format};
use hallmonitor_collector::store::{
    ConsoleStore, ConsoleUser, NewConsoleUser, SiteStore, UserChange,
};
use jiff::Timestamp;

use super::{audit_cli, cli_actor};

#[derive(Subcommand)]
pub(crate) enum UsersCommand {
    /// Add an account; its first password is printed once.
    Add {
        username: String,
        /// admin, technician, dsl or governor.
        #[arg(long)]
        role: String,
        /// "all", or site names separated by commas.
        #[arg(long, default_value = "all")]
        sites: String,
    },
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Disable an account and end its sessions.
    Disable {
        username: String,
    },
    Enable {
        username: String,
    },
    /// Set a new random password (printed once), end the account's
    /// sessions and, with --reset-second-factor, remove its TOTP.
    Passwd {
        username: String,
        #[arg(long)]
        reset_second_factor: bool,
    },
    /// Change an account's role and sites.
    Roles {
        username: String,
        #[arg(long)]
        role: String,
        #[arg(long, default_value = "all")]
        sites: String,
    },
}

pub(crate) async fn users(data: &Path, command: UsersCommand) -> anyhow::Result<ExitCode> {
    let store = open_store(data).await?;
    let now = Timestamp::now();
    let actor = cli_actor(None);
    let role_of = |text: &str| match ConsoleRole::parse(text) {
        Some(role) => Ok(role),
        None => bail!("--role: expected {}", ConsoleRole::expected()),
    };
    let existing = |name: String| {
        let store = &store;
        async move {
            match store.console_user_by_name(&name.to_lowercase()).await? {
                Some(user) => Ok(user),
                None => bail!("no console account named '{name}'"),
            }
        }
    };
    match command {
        UsersCommand::Add {
            username,
            role,
            sites,
        } => {
            let username = username.trim().to_lowercase();
            if let Some(problem) = username_problem(&username) {
                bail!("{problem}");
            }
            let role = role_of(&role)?;
            let sites = parse_sites(&sites, &store.sites().await?).map_err(anyhow::Error::msg)?;
            let audit_site = ConsoleUser::audit_site_for(sites.as_deref());
            let password = auth::generate_password();
            let hash = auth::hash_password(&password)
                .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?;
            store
                .create_console_user(
                    NewConsoleUser {
                        username: &username,
                        password_hash: &hash,
                        role,
                        sites,
                    },
                    now,
                )
                .await?;
            audit_cli(
                &store,
                now,
                audit_site,
                &actor,
                "console_user_added",
                &format!("user {username}"),
                role.as_str(),
            )
            .await?;
            println!(
                "Account {username} ({role}) created. First password (shown once): {password}"
            );
        }
        UsersCommand::List { format } => {
            let users = store.console_users().await?;
            let sites = store.sites().await?;
            print!("{}", render::console_users(&users, &sites, format));
        }
        UsersCommand::Disable { username } => {
            let user = existing(username).await?;
            store
                .update_console_user(user.id, UserChange::Disabled(true), now)
                .await?;
            audit_cli(
                &store,
                now,
                user.audit_site(),
                &actor,
                "console_user_disable",
                &format!("user {}", user.username),
                "",
            )
            .await?;
            println!("Account {} disabled; its sessions ended.", user.username);
        }
        UsersCommand::Enable { username } => {
            let user = existing(username).await?;
            store
                .update_console_user(user.id, UserChange::Disabled(false), now)
                .await?;
            audit_cli(
                &store,
                now,
                user.audit_site(),
                &actor,
                "console_user_enable",
                &format!("user {}", user.username),
                "",
            )
            .await?;
            println!("Account {} enabled.", user.username);
        }
        UsersCommand::Passwd {
            username,
            reset_second_factor,
        } => {
            let user = existing(username).await?;
            let password = auth::generate_password();
            let hash = auth::hash_password(&password)
                .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?;
            store
                .update_console_user(user.id, UserChange::Password(hash), now)
                .await?;
            if reset_second_factor {
                store
                    .update_console_user(user.id, UserChange::Totp(String::new()), now)
                    .await?;
            }
            store.end_console_sessions(user.id, None).await?;
            store.clear_login_failures(&user.username).await?;
            audit_cli(
                &store,
                now,
                user.audit_site(),
                &actor,
                "console_password_reset",
                &format!("user {}", user.username),
                if reset_second_factor {
                    "second factor removed"
                } else {
                    ""
                },
            )
            .await?;
            println!(
                "New password for {} (shown once): {password}",
                user.username
            );
        }
        UsersCommand::Roles {
            username,
            role,
            sites,
        } => {
            let user = existing(username).await?;
            let role = role_of(&role)?;
            let sites = parse_sites(&sites, &store.sites().await?).map_err(anyhow::Error::msg)?;
            let audit_site = ConsoleUser::audit_site_for(sites.as_deref());
            store
                .update_console_user(user.id, UserChange::Role { role, sites }, now)
                .await?;
            audit_cli(
                &store,
                now,
                audit_site,
                &actor,
                "console_user_role",
                &format!("user {}", user.username),
                role.as_str(),
            )
            .await?;
            println!("Account {} is now {role}.", user.username);
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
