//! Carrying out the collector's disable and enable commands.
//!
//! The disabled state lives in a marker file (`[enforcement]
//! disabled_marker`), written before anything else happens, so it survives
//! crashes and reboots; the login hook (`hallmonitor-agent login-allowed`,
//! called by PAM) refuses every account except `admin_accounts` while it
//! exists.
//!
//! The login hook fails closed for everyone but administrators: it lets an
//! ordinary account in only when it knows the marker is absent (looking it
//! up says "no such file" and its folder can be read). When it cannot tell
//! (permission denied, an I/O error, a configuration it cannot read) only
//! administrators get in: `admin_accounts`, or root alone when the
//! configuration is unreadable. A broken configuration therefore locks out
//! everyone but root until it is fixed; a pupil who can make the hook blind
//! (an unreadable folder, a hook run without privileges) cannot make it
//! say yes. With the built-in action a disable also locks the open sessions
//! of other accounts; with `action = "command"` the configured programs do
//! the work instead. Every command's outcome goes into the outbox as an
//! enforcement event, once per command id (the collector resends a command
//! until that event arrives).

use std::path::{Path, PathBuf};

use hallmonitor_proto::v1;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::config::{AgentConfig, EnforcementAction, EnforcementConfig};
use crate::outbox::Outbox;
use crate::sessions;
use crate::state::State;
use crate::task::TaskContext;

/// What the marker file holds.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    command_id: String,
    reason: String,
    disabled_at: Timestamp,
}

/// Whether the device is disabled (the marker exists).
pub fn is_disabled(config: &AgentConfig) -> bool {
    marker_state(&config.enforcement.marker_path(&config.data_dir)) == MarkerState::Present
}

/// What looking for the marker file tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkerState {
    /// The device is disabled.
    Present,
    /// Known absent: not found, in a folder that could be read.
    Absent,
    /// Could not tell (permission denied, an I/O error…).
    Unknown(std::io::ErrorKind),
}

/// Looks for the marker (not following a symbolic link: whatever is
/// there counts as present).
pub fn marker_state(marker: &Path) -> MarkerState {
    let lookup = std::fs::symlink_metadata(marker).map(drop);
    let folder = match marker.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => std::fs::read_dir(folder).map(drop),
        _ => std::fs::read_dir(".").map(drop),
    };
    classify_marker(lookup, folder)
}

/// The state from looking up the marker and reading its folder.
fn classify_marker(lookup: std::io::Result<()>, folder: std::io::Result<()>) -> MarkerState {
    match (lookup, folder) {
        (Ok(()), _) => MarkerState::Present,
        (Err(e), Ok(())) if e.kind() == std::io::ErrorKind::NotFound => MarkerState::Absent,
        (Err(e), Ok(())) => MarkerState::Unknown(e.kind()),
        (Err(_), Err(e)) => MarkerState::Unknown(e.kind()),
    }
}

/// The login hook's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Login {
    Allowed,
    /// The device is disabled and the account is not an administrator.
    Disabled,
    /// Whether the device is disabled is not known, and the account is not
    /// an administrator.
    Undetermined(String),
}

/// The decision: administrators always; anyone else only when the marker
/// is known absent.
pub fn decide(administrator: bool, marker: MarkerState) -> Login {
    match (administrator, marker) {
        (true, _) | (false, MarkerState::Absent) => Login::Allowed,
        (false, MarkerState::Present) => Login::Disabled,
        (false, MarkerState::Unknown(kind)) => {
            Login::Undetermined(format!("the disable marker cannot be read ({kind})"))
        }
    }
}

/// The login hook's decision for `account`.
pub fn login(config: &AgentConfig, account: &str) -> Login {
    let administrator = config
        .enforcement
        .admin_accounts
        .iter()
        .any(|a| a == account);
    decide(
        administrator,
        marker_state(&config.enforcement.marker_path(&config.data_dir)),
    )
}

/// The decision when the configuration cannot be read: who the
/// administrators are and where the marker is are unknown, so only root
/// (the default administrator) gets in.
pub fn login_unconfigured(account: &str, why: &str) -> Login {
    let administrator = EnforcementConfig::default()
        .admin_accounts
        .iter()
        .any(|a| a == account);
    match decide(
        administrator,
        MarkerState::Unknown(std::io::ErrorKind::Other),
    ) {
        Login::Undetermined(_) => {
            Login::Undetermined(format!("the agent configuration cannot be read ({why})"))
        }
        other => other,
    }
}

/// Whether the login hook lets `account` in.
pub fn login_allowed(config: &AgentConfig, account: &str) -> bool {
    login(config, account) == Login::Allowed
}

/// Applies a command unless this id was already applied, and queues its
/// result. Returns the result queued, if any.
pub async fn apply(
    config: &AgentConfig,
    outbox: &Outbox,
    command: v1::Command,
) -> anyhow::Result<Option<v1::EnforcementResult>> {
    let state = State::new(outbox);
    if state.command_applied(&command.command_id).await? {
        tracing::debug!(command_id = %command.command_id, "command already applied");
        return Ok(None);
    }
    let kind = v1::CommandKind::try_from(command.kind).unwrap_or(v1::CommandKind::Unspecified);
    let (ok, detail) = match kind {
        v1::CommandKind::Disable => disable(config, &command).await,
        v1::CommandKind::Enable => enable(config, &command).await,
        v1::CommandKind::Unspecified => (false, "unknown command kind".to_owned()),
    };
    tracing::info!(command_id = %command.command_id, kind = kind.as_str_name(), ok, detail, "command applied");
    let result = v1::EnforcementResult {
        command_id: command.command_id.clone(),
        kind: command.kind,
        ok,
        detail,
    };
    outbox
        .append(
            Timestamp::now(),
            v1::event::Body::Enforcement(result.clone()),
        )
        .await?;
    state
        .record_command_applied(&command.command_id, Timestamp::now())
        .await?;
    state.set_enforcement(is_disabled(config)).await?;
    Ok(Some(result))
}

async fn disable(config: &AgentConfig, command: &v1::Command) -> (bool, String) {
    let marker = config.enforcement.marker_path(&config.data_dir);
    let contents = Marker {
        command_id: command.command_id.clone(),
        reason: command.reason.clone(),
        disabled_at: Timestamp::now(),
    };
    if let Err(e) = write_marker(&marker, &contents) {
        return (false, format!("{}: {e}", marker.display()));
    }
    match config.enforcement.action {
        EnforcementAction::Command => {
            run_hook(
                &config.enforcement,
                &config.enforcement.disable_command,
                command,
            )
            .await
        }
        EnforcementAction::Builtin => {
            let locked = lock_sessions(config).await;
            (
                true,
                format!(
                    "new logins refused except {}; {locked}",
                    admins(&config.enforcement)
                ),
            )
        }
    }
}

async fn enable(config: &AgentConfig, command: &v1::Command) -> (bool, String) {
    let marker = config.enforcement.marker_path(&config.data_dir);
    if let Err(e) = std::fs::remove_file(&marker)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return (false, format!("{}: {e}", marker.display()));
    }
    match config.enforcement.action {
        EnforcementAction::Command => {
            run_hook(
                &config.enforcement,
                &config.enforcement.enable_command,
                command,
            )
            .await
        }
        EnforcementAction::Builtin => (true, "logins allowed again".into()),
    }
}

fn admins(config: &EnforcementConfig) -> String {
    if config.admin_accounts.is_empty() {
        "nobody".into()
    } else {
        config.admin_accounts.join(", ")
    }
}

/// Writes the marker as a private file (0600; a folder made for it 0700),
/// whatever the umask. An existing folder (the data directory, or one the
/// configuration names) is left as it is.
fn write_marker(path: &Path, marker: &Marker) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        crate::data_dir::prepare(dir)?;
    }
    crate::data_dir::write_private(path, &serde_json::to_vec_pretty(marker)?)
}

/// Locks every open session of an account that is not an administrator.
async fn lock_sessions(config: &AgentConfig) -> String {
    let source = sessions::source(&config.sessions);
    let sessions = match tokio::task::spawn_blocking(move || source.sessions()).await {
        Ok(Ok(sessions)) => sessions,
        Ok(Err(e)) => return format!("open sessions not locked: {e}"),
        Err(e) => return format!("open sessions not locked: {e}"),
    };
    let targets: Vec<_> = sessions
        .into_iter()
        .filter(|s| !config.enforcement.admin_accounts.contains(&s.account))
        .collect();
    if targets.is_empty() {
        return "no open sessions to lock".into();
    }
    let Some((program, args)) = config.enforcement.lock_session_command.split_first() else {
        return format!(
            "{} open session(s) not locked: no lock_session_command",
            targets.len()
        );
    };
    let mut locked = 0;
    let mut failed = Vec::new();
    for session in &targets {
        let status = tokio::process::Command::new(program)
            .args(args)
            .arg(&session.platform_id)
            .status()
            .await;
        match status {
            Ok(s) if s.success() => locked += 1,
            Ok(s) => failed.push(format!("{} ({s})", session.platform_id)),
            Err(e) => failed.push(format!("{} ({e})", session.platform_id)),
        }
    }
    if failed.is_empty() {
        format!("{locked} open session(s) locked")
    } else {
        format!(
            "{locked} open session(s) locked; not locked: {}",
            failed.join(", ")
        )
    }
}

async fn run_hook(
    config: &EnforcementConfig,
    argv: &[String],
    command: &v1::Command,
) -> (bool, String) {
    let Some((program, args)) = argv.split_first() else {
        return (false, "no command configured".into());
    };
    let output = tokio::process::Command::new(program)
        .args(args)
        .env("HALLMONITOR_COMMAND_ID", &command.command_id)
        .env("HALLMONITOR_REASON", &command.reason)
        .env(
            "HALLMONITOR_ADMIN_ACCOUNTS",
            config.admin_accounts.join(","),
        )
        .output()
        .await;
    match output {
        Ok(out) if out.status.success() => (true, format!("{program} succeeded")),
        Ok(out) => (
            false,
            format!(
                "{program} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ),
        Err(e) => (false, format!("{program}: {e}")),
    }
}

/// Where the marker is, for status output.
pub fn marker_path(config: &AgentConfig) -> PathBuf {
    config.enforcement.marker_path(&config.data_dir)
}

/// Applies commands from the collector one at a time, in order.
pub async fn run_commands(
    ctx: TaskContext,
    mut queue: tokio::sync::mpsc::Receiver<v1::Command>,
) -> anyhow::Result<()> {
    let TaskContext {
        config,
        outbox,
        wake,
        ..
    } = ctx;
    while let Some(command) = queue.recv().await {
        if crate::enforce::apply(&config, &outbox, command)
            .await?
            .is_some()
        {
            wake.notify_one();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> AgentConfig {
        AgentConfig {
            data_dir: dir.to_path_buf(),
            enforcement: EnforcementConfig {
                admin_accounts: vec!["root".into(), "itadmin".into()],
                lock_session_command: vec!["true".into()],
                ..EnforcementConfig::default()
            },
            sessions: crate::config::SessionsConfig {
                source: crate::config::SessionSourceKind::Utmp,
                utmp_path: dir.join("utmp"),
                poll_secs: std::num::NonZeroU32::new(10).expect("not zero"),
            },
            ..AgentConfig::default()
        }
    }

    fn command(id: &str, kind: v1::CommandKind) -> v1::Command {
        v1::Command {
            command_id: id.into(),
            kind: kind as i32,
            reason: "inactive".into(),
            issued_at: None,
        }
    }

    #[tokio::test]
    async fn disable_refuses_logins_except_admins_once_per_command_and_enable_undoes_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let (outbox, _) = Outbox::open(dir.path(), crate::outbox::DEFAULT_MAX_BYTES)
            .await
            .unwrap();
        let mut utmp = sessions::tests::utmp_record(7, ":0", "pupil1", ":0", 1_790_000_000);
        utmp.extend(sessions::tests::utmp_record(
            7,
            "tty1",
            "itadmin",
            "",
            1_790_000_000,
        ));
        std::fs::write(dir.path().join("utmp"), utmp).unwrap();

        assert!(login_allowed(&config, "pupil1"));
        let result = apply(&config, &outbox, command("c1", v1::CommandKind::Disable))
            .await
            .unwrap()
            .expect("applied");
        assert!(result.ok, "{}", result.detail);
        assert!(
            result.detail.contains("1 open session(s) locked"),
            "{}",
            result.detail
        );
        assert!(!login_allowed(&config, "pupil1"));
        assert!(login_allowed(&config, "itadmin"));
        assert!(login_allowed(&config, "root"));
        // The collector resends until it hears back: applied once.
        assert!(
            apply(&config, &outbox, command("c1", v1::CommandKind::Disable))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(outbox.stats().await.unwrap().depth, 1);
        let result = apply(&config, &outbox, command("c2", v1::CommandKind::Enable))
            .await
            .unwrap()
            .unwrap();
        assert!(result.ok);
        assert!(login_allowed(&config, "pupil1"));
        assert_eq!(
            State::new(&outbox).enforcement().await.unwrap().as_deref(),
            Some("enabled")
        );
    }

    #[test]
    fn the_login_hook_lets_pupils_in_only_when_the_marker_is_known_absent() {
        use std::io::{Error, ErrorKind};
        let found = || Ok(());
        let missing = || Err(Error::from(ErrorKind::NotFound));
        let denied = || Err(Error::from(ErrorKind::PermissionDenied));
        let broken = || Err(Error::other("I/O error"));
        let cases: [(&str, std::io::Result<()>, std::io::Result<()>, MarkerState); 7] = [
            ("present", found(), found(), MarkerState::Present),
            (
                "present, folder unlistable",
                found(),
                denied(),
                MarkerState::Present,
            ),
            ("absent", missing(), found(), MarkerState::Absent),
            (
                "not found, folder unreadable",
                missing(),
                denied(),
                MarkerState::Unknown(ErrorKind::PermissionDenied),
            ),
            (
                "not found, folder missing",
                missing(),
                missing(),
                MarkerState::Unknown(ErrorKind::NotFound),
            ),
            (
                "permission denied",
                denied(),
                denied(),
                MarkerState::Unknown(ErrorKind::PermissionDenied),
            ),
            (
                "I/O error",
                broken(),
                found(),
                MarkerState::Unknown(ErrorKind::Other),
            ),
        ];
        for (name, lookup, folder, state) in cases {
            let classified = classify_marker(lookup, folder);
            assert_eq!(classified, state, "{name}");
            assert_eq!(
                decide(false, classified) == Login::Allowed,
                state == MarkerState::Absent,
                "{name}: a pupil is let in only when the marker is known absent"
            );
            assert_eq!(decide(true, classified), Login::Allowed, "{name}: admin");
        }
        assert_eq!(
            login_unconfigured("root", "broken"),
            Login::Allowed,
            "root repairs a device with a broken configuration"
        );
        assert!(matches!(
            login_unconfigured("pupil1", "broken"),
            Login::Undetermined(why) if why.contains("broken")
        ));
    }

    #[tokio::test]
    async fn the_marker_is_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        if !crate::socket_dir::tests::in_child_with_umask(
            "enforce::tests::the_marker_is_private_whatever_the_umask",
            0,
        ) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        config.enforcement.disabled_marker = dir.path().join("new/disabled").display().to_string();
        let (ok, detail) = disable(&config, &command("c1", v1::CommandKind::Disable)).await;
        assert!(ok, "{detail}");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("new/disabled")), 0o600);
        assert_eq!(mode(&dir.path().join("new")), 0o700);
    }

    #[test]
    fn the_marker_is_looked_up_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("disabled");
        assert_eq!(marker_state(&marker), MarkerState::Absent);
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &marker).unwrap();
        assert_eq!(marker_state(&marker), MarkerState::Present);
        assert_eq!(
            marker_state(&dir.path().join("gone/disabled")),
            MarkerState::Unknown(std::io::ErrorKind::NotFound)
        );
    }

    #[tokio::test]
    async fn a_failing_hook_is_reported_not_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        config.enforcement.action = EnforcementAction::Command;
        config.enforcement.disable_command =
            vec!["sh".into(), "-c".into(), "echo no MDM >&2; exit 3".into()];
        config.enforcement.enable_command = vec!["true".into()];
        let (outbox, _) = Outbox::open(dir.path(), crate::outbox::DEFAULT_MAX_BYTES)
            .await
            .unwrap();
        let result = apply(&config, &outbox, command("c1", v1::CommandKind::Disable))
            .await
            .unwrap()
            .unwrap();
        assert!(!result.ok);
        assert!(result.detail.contains("no MDM"), "{}", result.detail);
    }
}
