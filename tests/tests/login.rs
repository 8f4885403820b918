//! The login hook (`hallmonitor-agent login-allowed`, called by PAM) as an
//! ordinary account would meet it: it lets a non-administrator in only
//! when it can see that the device is not disabled.
//!
//! PAM usually runs the hook as root, which reads everything; these tests
//! run it as `nobody` (present on every Linux system) so that the agent's
//! data directory and configuration really are unreadable to it. CI runs
//! as root; without root (a developer's shell) the unprivileged cases are
//! skipped with a message, and the rest still run.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use hallmonitor_e2e::{agent_bin, text};

/// `nobody`'s uid and gid on Debian-family systems.
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A device's agent files: a configuration naming `itadmin` as the only
/// administrator besides root, and its data directory.
struct Device {
    root: tempfile::TempDir,
}

impl Device {
    fn new() -> Device {
        let root = tempfile::tempdir().unwrap();
        // The temporary folder itself must let `nobody` reach the files
        // whose own modes each case sets.
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let device = Device { root };
        std::fs::create_dir(device.data()).unwrap();
        std::fs::write(
            device.config(),
            format!(
                "collector = \"hm.school:50051\"\ndata_dir = \"{}\"\n\
                 [enforcement]\nadmin_accounts = [\"root\", \"itadmin\"]\n",
                device.data().display()
            ),
        )
        .unwrap();
        device
    }

    fn data(&self) -> PathBuf {
        self.root.path().join("agent-data")
    }

    fn config(&self) -> PathBuf {
        self.root.path().join("agent.toml")
    }

    fn disable(&self) {
        std::fs::write(self.data().join("disabled"), "{}").unwrap();
    }

    fn modes(&self, config: u32, data: u32) {
        std::fs::set_permissions(self.config(), std::fs::Permissions::from_mode(config)).unwrap();
        std::fs::set_permissions(self.data(), std::fs::Permissions::from_mode(data)).unwrap();
    }

    /// The hook's exit code for `account`, run as `uid` (root: as is).
    fn login_allowed(&self, account: &str, uid: u32) -> Option<i32> {
        self.login_allowed_with(account, uid, &[])
    }

    /// The same, with further environment variables.
    fn login_allowed_with(&self, account: &str, uid: u32, env: &[(&str, &Path)]) -> Option<i32> {
        let mut command = if uid == 0 {
            Command::new(agent_bin())
        } else {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg(agent_bin());
            c
        };
        command
            .arg("--config")
            .arg(self.config())
            .args(["login-allowed", "--user", account])
            .env_remove("HALLMONITOR_CONFIG")
            .env_remove("HALLMONITOR_DATA_DIR")
            .envs(env.iter().copied());
        let output = command.output().expect("running the login hook");
        eprintln!("{account} as uid {uid}: {}", text(&output.stderr).trim());
        output.status.code()
    }
}

/// `nobody` must be able to run the binary: every folder above it needs
/// the search bit.
fn binary_reachable_by_others(binary: &Path) -> bool {
    binary
        .ancestors()
        .skip(1)
        .all(|dir| std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

fn unprivileged_cases_possible() -> bool {
    if !is_root() {
        eprintln!("not root: the cases run as another account are skipped");
        return false;
    }
    assert!(
        binary_reachable_by_others(&agent_bin()),
        "{} is not reachable by other accounts",
        agent_bin().display()
    );
    true
}

#[test]
fn an_unreadable_marker_keeps_pupils_out() {
    if !unprivileged_cases_possible() {
        return;
    }
    let device = Device::new();
    device.disable();
    // Configuration readable, data directory not: the hook cannot tell
    // whether the device is disabled.
    device.modes(0o644, 0o700);
    assert_eq!(device.login_allowed("pupil1", NOBODY), Some(1));
    assert_eq!(
        device.login_allowed("itadmin", NOBODY),
        Some(0),
        "administrators are let in whatever the marker says"
    );
    // Not disabled, but still unreadable: the same answer for pupils.
    std::fs::remove_file(device.data().join("disabled")).unwrap();
    assert_eq!(device.login_allowed("pupil1", NOBODY), Some(1));
    // Readable and absent: allowed.
    device.modes(0o644, 0o755);
    assert_eq!(device.login_allowed("pupil1", NOBODY), Some(0));
    // Readable and present: refused.
    device.disable();
    assert_eq!(device.login_allowed("pupil1", NOBODY), Some(1));
}

#[test]
fn an_unreadable_configuration_keeps_pupils_out() {
    if !unprivileged_cases_possible() {
        return;
    }
    let device = Device::new();
    device.modes(0o600, 0o755);
    assert_eq!(device.login_allowed("pupil1", NOBODY), Some(1));
    assert_eq!(
        device.login_allowed("root", NOBODY),
        Some(0),
        "root can always log in to repair the device"
    );
}

#[test]
fn as_root_the_marker_decides() {
    if !is_root() {
        return;
    }
    let device = Device::new();
    device.modes(0o600, 0o700);
    assert_eq!(device.login_allowed("pupil1", 0), Some(0));
    device.disable();
    assert_eq!(device.login_allowed("pupil1", 0), Some(1));
    assert_eq!(device.login_allowed("itadmin", 0), Some(0));
    // PAM hooks run in an environment other accounts may be able to set:
    // HALLMONITOR_* variables do not move the marker.
    let elsewhere = tempfile::tempdir().unwrap();
    assert_eq!(
        device.login_allowed_with("pupil1", 0, &[("HALLMONITOR_DATA_DIR", elsewhere.path())]),
        Some(1)
    );
    // A configuration that parses but would not run the daemon (no
    // collector) still names the marker and the administrators.
    std::fs::write(
        device.config(),
        format!(
            "data_dir = \"{}\"\n[enforcement]\nadmin_accounts = [\"itadmin\"]\n",
            device.data().display()
        ),
    )
    .unwrap();
    assert_eq!(device.login_allowed("pupil1", 0), Some(1));
    assert_eq!(device.login_allowed("itadmin", 0), Some(0));
}
