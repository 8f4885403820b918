//! The Debian packages, built with cargo-deb from the binaries the tests
//! use (deploy/package.sh builds release ones) and, where the tests run as
//! root on Debian, really installed, upgraded, removed and purged with
//! dpkg. systemd is not PID 1 here, so the maintainer scripts' service
//! steps are skipped as on any machine without it (they check
//! /run/systemd/system); the units themselves are checked in deploy.rs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hallmonitor_e2e::text;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(command: &mut Command) -> Output {
    let output = command.output().expect("the command runs");
    assert!(
        output.status.success(),
        "{command:?}: {}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    output
}

/// Builds `package` from target/debug into `out` with version `version`.
fn build(package: &str, version: &str, out: &Path) -> PathBuf {
    let output = run(Command::new("cargo")
        .current_dir(workspace())
        .args([
            "deb",
            "-p",
            package,
            "--no-build",
            "--profile",
            "dev",
            "--fast",
            "-q",
        ])
        .args(["--deb-version", version, "-o"])
        .arg(out));
    PathBuf::from(text(&output.stdout).trim())
}

fn field(deb: &Path, name: &str) -> String {
    text(&run(Command::new("dpkg-deb").args(["-f"]).arg(deb).arg(name)).stdout)
        .trim()
        .to_owned()
}

/// dpkg takes one lock for the machine (and dpkg-shlibdeps, run while
/// building, reads its database): the tests take turns.
static DPKG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn is_root() -> bool {
    text(&run(Command::new("id").arg("-u")).stdout).trim() == "0"
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| text(&o.stdout).contains("install ok installed"))
}

#[test]
fn the_collector_package_installs_keeps_its_data_and_purges_it() {
    let _turn = DPKG.lock().unwrap_or_else(|e| e.into_inner());
    let out = tempfile::tempdir().unwrap();
    let deb = build("hallmonitor-collector", "0.1.0-1", out.path());
    assert_eq!(field(&deb, "Package"), "hallmonitor-collector");
    assert!(
        field(&deb, "Depends").contains("libc6"),
        "shared libraries found"
    );
    let contents = text(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)).stdout);
    for path in [
        "./usr/bin/hallmonitor-collector",
        "./usr/lib/systemd/system/hallmonitor-collector.service",
        "./usr/share/doc/hallmonitor-collector/examples/collector.toml",
        "./usr/share/doc/hallmonitor-collector/openapi.json",
    ] {
        assert!(contents.contains(path), "{path} not in\n{contents}");
    }

    if !is_root() || installed("hallmonitor-collector") {
        eprintln!("not root, or a collector is installed here: dpkg steps skipped");
        return;
    }
    let data = Path::new("/var/lib/hallmonitor-collector");
    assert!(!data.exists(), "{} exists before the test", data.display());
    // Purge whatever happens, so a failure leaves the machine as it was.
    struct Purge;
    impl Drop for Purge {
        fn drop(&mut self) {
            let _ = Command::new("dpkg")
                .args(["--purge", "hallmonitor-collector"])
                .output();
        }
    }
    let _purge = Purge;

    let install = run(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(
        text(&install.stdout).contains("not initialised yet"),
        "{}",
        text(&install.stdout)
    );
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(data).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o700, "the data folder is private");
    let owner = text(&run(Command::new("stat").args(["-c", "%U"]).arg(data)).stdout);
    assert_eq!(owner.trim(), "hallmonitor");

    // Initialised as the service's user with the installed binary.
    run(Command::new("runuser")
        .args(["-u", "hallmonitor", "--"])
        .args([
            "/usr/bin/hallmonitor-collector",
            "--data",
            "/var/lib/hallmonitor-collector",
            "init",
            "--site",
            "Cabot",
            "--hostname",
            "localhost",
        ]));
    let database = data.join("collector.db");
    assert!(database.exists());

    // An upgrade keeps the data; removal keeps it; purge deletes it.
    let newer = build("hallmonitor-collector", "0.1.0-2", out.path());
    run(Command::new("dpkg").arg("-i").arg(&newer));
    assert_eq!(
        text(
            &run(Command::new("dpkg-query").args(["-W", "-f=${Version}", "hallmonitor-collector"]))
                .stdout
        ),
        "0.1.0-2"
    );
    assert!(database.exists(), "an upgrade keeps the database");
    run(Command::new("dpkg").args(["--remove", "hallmonitor-collector"]));
    assert!(!Path::new("/usr/bin/hallmonitor-collector").exists());
    assert!(database.exists(), "removal keeps the data");
    let purged = run(Command::new("dpkg").args(["--purge", "hallmonitor-collector"]));
    assert!(text(&purged.stdout).contains("deletes /var/lib/hallmonitor-collector"));
    assert!(!data.exists(), "purge deletes the data");
}

#[test]
fn the_agent_package_ships_both_binaries_and_never_locks_out_an_unconfigured_device() {
    let _turn = DPKG.lock().unwrap_or_else(|e| e.into_inner());
    let out = tempfile::tempdir().unwrap();
    let deb = build("hallmonitor-agent", "0.1.0-1", out.path());
    let depends = field(&deb, "Depends");
    // The helper's X11 library comes in through the package, the daemon
    // needs none (deploy.rs checks the binaries themselves).
    for dependency in ["libc6", "libxcb1", "libpam-runtime"] {
        assert!(depends.contains(dependency), "{dependency} in {depends}");
    }
    let contents = text(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)).stdout);
    for path in [
        "./usr/bin/hallmonitor-agent",
        "./usr/bin/hallmonitor-session",
        "./usr/lib/systemd/system/hallmonitor-agent.service",
        "./usr/lib/systemd/user/hallmonitor-session.service",
        "./etc/xdg/autostart/hallmonitor-session.desktop",
        "./usr/share/pam-configs/hallmonitor",
        "./usr/share/doc/hallmonitor-agent/examples/agent.toml",
    ] {
        assert!(contents.contains(path), "{path} not in\n{contents}");
    }

    let config = Path::new("/etc/hallmonitor/agent.toml");
    if !is_root() || installed("hallmonitor-agent") || config.exists() {
        eprintln!("not root, or an agent is installed or configured here: dpkg steps skipped");
        return;
    }
    struct Purge;
    impl Drop for Purge {
        fn drop(&mut self) {
            let _ = Command::new("dpkg")
                .args(["--purge", "hallmonitor-agent"])
                .output();
        }
    }
    let _purge = Purge;
    let pam_stack = || std::fs::read_to_string("/etc/pam.d/common-account").unwrap_or_default();

    // Without its configuration the login hook stays out of PAM: it fails
    // closed, and would otherwise let only root log in.
    let install = run(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(
        text(&install.stdout).contains("pam-auth-update --enable hallmonitor"),
        "{}",
        text(&install.stdout)
    );
    assert!(!pam_stack().contains("hallmonitor-agent login-allowed"));
    let version = run(Command::new("/usr/bin/hallmonitor-session").arg("--version"));
    assert!(text(&version.stdout).contains("hallmonitor-session"));

    // An identity kept by removal goes with purge.
    let state = Path::new("/var/lib/hallmonitor-agent");
    std::fs::create_dir_all(state).unwrap();
    std::fs::write(state.join("identity.marker"), b"kept").unwrap();
    run(Command::new("dpkg").args(["--remove", "hallmonitor-agent"]));
    assert!(!Path::new("/usr/bin/hallmonitor-agent").exists());
    assert!(
        state.join("identity.marker").exists(),
        "removal keeps the identity"
    );
    assert!(
        !pam_stack().contains("hallmonitor-agent"),
        "no hook left behind"
    );
    let purged = run(Command::new("dpkg").args(["--purge", "hallmonitor-agent"]));
    assert!(text(&purged.stdout).contains("deletes /var/lib/hallmonitor-agent"));
    assert!(!state.exists());
}
