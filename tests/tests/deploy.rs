//! The shipped service units: they parse, and what they set up agrees with
//! the agent's defaults.

use std::path::{Path, PathBuf};
use std::process::Command;

use hallmonitor_e2e::{agent_bin, text};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// The values of `key` in a unit file (systemd syntax: `Key=value` lines,
/// `#` comments).
fn values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

#[test]
fn the_agent_unit_gives_helpers_a_socket_folder_they_can_reach() {
    let unit = std::fs::read_to_string(deploy("systemd/hallmonitor-agent.service")).unwrap();
    let runtime = values(&unit, "RuntimeDirectory");
    assert_eq!(runtime, ["hallmonitor"], "the socket's folder under /run");
    let socket = Path::new(hallmonitor_agent::config::DEFAULT_SOCKET);
    assert_eq!(
        socket.parent(),
        Some(Path::new("/run/hallmonitor")),
        "the daemon's default socket is in the unit's runtime folder"
    );
    // Session helpers run as the logged-in user: the folder must be
    // searchable by everyone, whatever UMask the service has.
    assert_eq!(values(&unit, "RuntimeDirectoryMode"), ["0755"]);
    assert_eq!(values(&unit, "UMask"), ["0077"], "files stay private");
}

/// `systemd-analyze verify` on every shipped unit, with the binary path
/// pointed at the built agent (verify checks that it exists).
#[test]
fn the_units_parse() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: unit files not verified");
        return;
    };
    assert!(version.status.success());
    let dir = tempfile::tempdir().unwrap();
    for unit in [
        "systemd/hallmonitor-agent.service",
        "systemd/hallmonitor-collector.service",
        "systemd/user/hallmonitor-session.service",
    ] {
        let text_of_unit = std::fs::read_to_string(deploy(unit))
            .unwrap()
            .replace(
                "/usr/bin/hallmonitor-agent",
                &agent_bin().display().to_string(),
            )
            .replace(
                "/usr/bin/hallmonitor-collector",
                &hallmonitor_e2e::collector_bin().display().to_string(),
            );
        let copy = dir.path().join(Path::new(unit).file_name().unwrap());
        std::fs::write(&copy, text_of_unit).unwrap();
        let mut command = Command::new("systemd-analyze");
        if unit.contains("/user/") {
            // A user manager needs a runtime folder, even to verify.
            command.arg("--user").env("XDG_RUNTIME_DIR", dir.path());
        }
        let output = command.arg("verify").arg(&copy).output().unwrap();
        let complaints = text(&output.stderr);
        // verify exits 0 on unknown keys, which it only warns about.
        assert!(
            output.status.success() && !complaints.contains(&format!("{}:", copy.display())),
            "{unit}: {complaints}"
        );
    }
}

/// `systemd-analyze security` scores each unit's sandbox from 0 (locked
/// down) to 10 (none). Recorded: collector 1.4 and agent 3.1 (systemd 252,
/// 2026-11-30; before the hardening: 7.0 and 9.1). A unit that loosens
/// its sandbox past these ceilings fails here.
#[test]
fn the_units_keep_their_sandbox() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: sandboxes not scored");
        return;
    };
    assert!(version.status.success());
    for (unit, ceiling) in [
        ("systemd/hallmonitor-collector.service", 1.5),
        ("systemd/hallmonitor-agent.service", 3.2),
    ] {
        let output = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(deploy(unit))
            .output()
            .unwrap();
        let report = text(&output.stdout);
        let score: f64 = report
            .lines()
            .find_map(|l| {
                l.split_once("Overall exposure level for ")?
                    .1
                    .split_once(": ")
            })
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "{unit}: no exposure level in {report}{}",
                    text(&output.stderr)
                )
            });
        assert!(
            score <= ceiling,
            "{unit}: exposure {score} above {ceiling}\n{report}"
        );
    }
}
