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

/// A unit file's `Key=` values, in order.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|line| line.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .collect()
}

/// What an installed unit runs, as systemd would start it (its ExecStart,
/// as its User, with its Environment), for a machine without systemd.
fn unit_command(unit: &Path) -> Command {
    let unit = std::fs::read_to_string(unit).expect("the installed unit");
    let exec = unit_values(&unit, "ExecStart");
    let words: Vec<&str> = exec[0].split_whitespace().collect();
    let mut command = match unit_values(&unit, "User").first() {
        Some(user) => {
            let mut command = Command::new("setpriv");
            command.args(["--reuid", user, "--regid", user, "--init-groups", "--"]);
            command.args(&words);
            command
        }
        None => {
            let mut command = Command::new(words[0]);
            command.args(&words[1..]);
            command
        }
    };
    for pair in unit_values(&unit, "Environment") {
        let (key, value) = pair.split_once('=').expect("KEY=value");
        command.env(key, value);
    }
    command.env("HALLMONITOR_LOG", "info");
    command
}

/// The installed collector's command line, as its service's user (so the
/// database files it touches stay the service's).
fn installed_collector(args: &[&str]) -> Output {
    run(Command::new("setpriv")
        .args([
            "--reuid",
            "hallmonitor",
            "--regid",
            "hallmonitor",
            "--init-groups",
            "--",
            "/usr/bin/hallmonitor-collector",
            "--data",
            "/var/lib/hallmonitor-collector",
        ])
        .args(args))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Both packages on one machine, started from their installed units'
/// ExecStart lines (systemd is not PID 1 here): the agent enrols with the
/// collector and streams; events queued while the collector is down and
/// the agent package is upgraded under the running daemon (then restarted
/// as systemd would) all arrive, none lost and none twice.
#[test]
fn installed_packages_enrol_stream_and_keep_queued_events_across_an_upgrade() {
    use hallmonitor_e2e::{Process, wait_for};
    use std::time::Duration;
    let _turn = DPKG.lock().unwrap_or_else(|e| e.into_inner());
    let out = tempfile::tempdir().unwrap();
    let collector_deb = build("hallmonitor-collector", "0.1.0-1", out.path());
    let agent_deb = build("hallmonitor-agent", "0.1.0-1", out.path());
    let agent_newer = build("hallmonitor-agent", "0.1.0-2", out.path());
    let config = Path::new("/etc/hallmonitor/agent.toml");
    let collector_data = Path::new("/var/lib/hallmonitor-collector");
    let agent_data = Path::new("/var/lib/hallmonitor-agent");
    if !is_root()
        || installed("hallmonitor-agent")
        || installed("hallmonitor-collector")
        || config.exists()
        || collector_data.exists()
        || agent_data.exists()
    {
        eprintln!("not root, or Hall Monitor is installed or configured here: skipped");
        return;
    }
    // Whatever happens, the machine is left as it was.
    struct Cleanup;
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for package in ["hallmonitor-agent", "hallmonitor-collector"] {
                let _ = Command::new("dpkg").args(["--purge", package]).output();
            }
            let _ = std::fs::remove_file("/etc/hallmonitor/agent.toml");
            let _ = std::fs::remove_dir_all("/run/hallmonitor");
            let _ = std::fs::remove_dir_all("/var/lib/hallmonitor-agent");
        }
    }
    let _cleanup = Cleanup;
    let logs = out.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    const WAIT: Duration = Duration::from_secs(60);

    run(Command::new("dpkg").arg("-i").arg(&collector_deb));
    let (telemetry, enroll, api) = (free_port(), free_port(), free_port());
    let init = installed_collector(&[
        "init",
        "--site",
        "Cabot",
        "--hostname",
        "localhost",
        "--listen",
        &format!("127.0.0.1:{telemetry}"),
        "--enroll-listen",
        &format!("127.0.0.1:{enroll}"),
        "--api-listen",
        &format!("127.0.0.1:{api}"),
    ]);
    let printed = text(&init.stdout);
    let field = |label: &str| {
        printed
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("init printed no '{label}': {printed}"))
    };
    let (secret, fingerprint) = (field("enrolment secret:"), field("CA fingerprint:"));
    let collector_unit = Path::new("/usr/lib/systemd/system/hallmonitor-collector.service");
    let start_collector = || {
        let mut process = Process::spawn("collector", unit_command(collector_unit), &logs);
        wait_for("the installed collector to listen", WAIT, || {
            if let Some(code) = process.has_exited() {
                panic!("collector exited with {code}: {}", process.stderr_text());
            }
            process.stdout_text().contains("listening").then_some(())
        });
        process
    };
    let mut collector = start_collector();

    // The configuration MDM delivers, then the package.
    std::fs::create_dir_all("/etc/hallmonitor").unwrap();
    std::fs::write(
        config,
        format!(
            "collector = \"localhost:{telemetry}\"\nenroll_address = \"localhost:{enroll}\"\n\
             ca_fingerprint = \"{fingerprint}\"\nsite = \"Cabot\"\nenrollment_secret = \"{secret}\"\n\
             heartbeat_interval_secs = 1\nmachine_id = \"e2e-package-agent\"\n\
             [delivery]\nbatch_linger_ms = 20\nreconnect_initial_ms = 100\nreconnect_max_secs = 1\n\
             [files]\nwatch = []\n"
        ),
    )
    .unwrap();
    let install = run(Command::new("dpkg").arg("-i").arg(&agent_deb));
    assert!(
        !text(&install.stdout).contains("deliver /etc/hallmonitor/agent.toml"),
        "configured before installing: the login hook goes in at once: {}",
        text(&install.stdout)
    );
    assert!(
        std::fs::read_to_string("/etc/pam.d/common-account")
            .unwrap_or_default()
            .contains("hallmonitor-agent login-allowed"),
        "the login hook is in PAM"
    );
    // What systemd makes before it starts the unit.
    std::fs::create_dir_all("/run/hallmonitor").unwrap();
    let agent_unit = Path::new("/usr/lib/systemd/system/hallmonitor-agent.service");
    let mut agent = Process::spawn("agent", unit_command(agent_unit), &logs);
    let status = || -> serde_json::Value {
        let output = run(Command::new("/usr/bin/hallmonitor-agent").args([
            "--config",
            "/etc/hallmonitor/agent.toml",
            "status",
            "--format",
            "json",
        ]));
        serde_json::from_slice(&output.stdout).expect("status JSON")
    };
    let device_id = wait_for("the installed agent to enrol and stream", WAIT, || {
        agent.assert_running();
        let status = status();
        (status["connection"] == "connected" && status["last_acked_seq"].as_u64() > Some(0))
            .then(|| status["device_id"].as_str().unwrap().to_owned())
    });
    let device = || -> serde_json::Value {
        let output = installed_collector(&["devices", "show", &device_id, "--format", "json"]);
        serde_json::from_slice::<serde_json::Value>(&output.stdout).expect("devices show JSON")
            ["device"]
            .clone()
    };
    assert_eq!(device()["site"], "Cabot");

    // The collector goes away; the agent keeps queueing.
    assert_eq!(collector.signal_and_wait(libc::SIGTERM), Some(0));
    let queued = 100;
    hallmonitor_e2e::fixtures::queue_now(
        agent_data,
        (0..queued)
            .map(|i| {
                hallmonitor_proto::v1::event::Body::Mfa(hallmonitor_proto::v1::MfaCompletion {
                    account: "teacher1".into(),
                    method: "pam_u2f".into(),
                    source: format!("package test {i}"),
                })
            })
            .collect(),
    );
    let before = status();
    assert!(
        before["queue_depth"].as_u64().unwrap() >= queued,
        "{before}"
    );

    // The newer package under the running daemon, then the restart its
    // service manager would do.
    run(Command::new("dpkg").arg("-i").arg(&agent_newer));
    assert_eq!(agent.signal_and_wait(libc::SIGTERM), Some(0));
    let mut agent = Process::spawn("agent", unit_command(agent_unit), &logs);
    let _collector = start_collector();
    let after = wait_for("every queued event delivered", WAIT, || {
        agent.assert_running();
        let status = status();
        (status["queue_depth"] == 0 && status["connection"] == "connected").then_some(status)
    });
    let held = device();
    let last_acked = after["last_acked_seq"].as_u64().unwrap();
    assert!(
        last_acked >= before["next_seq"].as_u64().unwrap() - 1,
        "{before} then {after}"
    );
    assert!(
        held["last_acked_seq"].as_u64().unwrap() >= last_acked,
        "{held}"
    );
    assert_eq!(
        held["sequence_gap"], 0,
        "no sequence number missing at the collector: {held}"
    );
    // The restart told the collector it was clean.
    let signals: Vec<&str> = held["signals"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["signal"].as_str())
        .collect();
    assert!(signals.contains(&"stopped"), "{signals:?}");
    assert!(!signals.contains(&"stopped_uncleanly"), "{signals:?}");
    assert_eq!(
        text(
            &run(Command::new("dpkg-query").args(["-W", "-f=${Version}", "hallmonitor-agent"]))
                .stdout
        ),
        "0.1.0-2"
    );
}
