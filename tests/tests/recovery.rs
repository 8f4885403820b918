//! The collector's database under faults: a lost (empty) or damaged file
//! is refused with directions instead of serving as an empty collector,
//! and `backup` makes a copy that restores.

use std::time::Duration;

use hallmonitor_e2e::*;

/// Runs `serve` and returns its exit code and stderr (it must not serve).
fn serve_refused(data: &CollectorData) -> (i32, String) {
    let mut process = Process::spawn(
        "collector",
        collector_cmd(&data.data, &["serve"]),
        &data.logs(),
    );
    let code = wait_for("serve to refuse", Duration::from_secs(30), || {
        process.has_exited()
    });
    assert!(
        !process.stdout_text().contains("listening"),
        "it served: {}",
        process.stdout_text()
    );
    (code, process.stderr_text())
}

#[test]
fn an_empty_or_damaged_database_is_refused_and_a_backup_restores() {
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let agent = Agent::new(&data.agent_settings(&collector, "e2e-recovery"));
    let id = agent.enroll();
    drop(collector);

    let db = data.data.join("collector.db");
    let backup = data.data.parent().unwrap().join("backup.db");
    let out = data.cli(&["backup", "--to", backup.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let again = data.cli(&["backup", "--to", backup.to_str().unwrap()]);
    assert!(!again.status.success(), "never overwrites a file");
    // The backup is the whole database in one file (no write-ahead log).
    let good = std::fs::read(&backup).unwrap();
    let remove_log = || {
        let _ = std::fs::remove_file(data.data.join("collector.db-wal"));
        let _ = std::fs::remove_file(data.data.join("collector.db-shm"));
    };
    remove_log();

    // A database truncated to nothing.
    std::fs::write(&db, b"").unwrap();
    let (code, log) = serve_refused(&data);
    assert_ne!(code, 0);
    assert!(log.contains("is empty") && log.contains("backup"), "{log}");

    // A database with scribbled pages: a copy of the good one with bytes
    // overwritten past its first page.
    let mut damaged = good.clone();
    assert!(damaged.len() > 4096 * 2, "{} bytes", damaged.len());
    for byte in damaged.iter_mut().skip(4096) {
        *byte = 0x5a;
    }
    std::fs::write(&db, &damaged).unwrap();
    remove_log();
    let check = data.cli(&["check-database"]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check.stdout));
    let (code, log) = serve_refused(&data);
    assert_ne!(code, 0);
    assert!(log.contains("backup"), "{log}");

    // Restored from the backup: the device is there again.
    std::fs::copy(&backup, &db).unwrap();
    remove_log();
    let check = data.cli(&["check-database"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stdout));
    let _collector = data.start();
    assert!(
        data.devices().iter().any(|d| d["id"] == id.as_str()),
        "restored"
    );
}

/// A tmpfs mounted on a folder for one test (needs root; None elsewhere).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(on: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(on).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(on)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!("skipped: cannot mount a tmpfs here: {}", text(&out.stderr));
            return None;
        }
        Some(Tmpfs(on.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Writes `path` until the disk is full.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 4096];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
}

/// The agent's disk fills while it runs: the daemon keeps running,
/// `status` says its writes fail, and once space returns it queues and
/// delivers again by itself.
#[test]
fn an_agent_whose_disk_fills_keeps_running_and_recovers_when_space_returns() {
    const WAIT: Duration = Duration::from_secs(60);
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let agent = Agent::new(&data.agent_settings(&collector, "e2e-full-disk"));
    let Some(_disk) = Tmpfs::mount(&agent.data, "4m") else {
        return;
    };
    let id = agent.enroll();
    let mut daemon = agent.start();
    wait_for("the agent connected", WAIT, || {
        (agent.status()["connection"] == "connected").then_some(())
    });
    let filler = agent.data.join("filler");
    fill(&filler);
    let status = wait_for("status to say writes fail", WAIT, || {
        daemon.assert_running();
        let status = agent.status();
        status["outbox_writes_failing_secs"]
            .is_u64()
            .then_some(status)
    });
    daemon.assert_running();
    let log = daemon.stderr_text();
    assert!(
        log.contains("cannot write to the outbox; will retry"),
        "{status}\n{log}"
    );

    std::fs::remove_file(&filler).unwrap();
    wait_for("writes to work again", WAIT, || {
        daemon.assert_running();
        agent.status()["outbox_writes_failing_secs"]
            .is_null()
            .then_some(())
    });
    let acked = |d: &Value| d["last_acked_seq"].as_u64().unwrap_or(0);
    let before = acked(&data.device(&id));
    wait_for("new heartbeats at the collector", WAIT, || {
        daemon.assert_running();
        (acked(&data.device(&id)) > before).then_some(())
    });
    assert!(daemon.stderr_text().contains("writing to the outbox again"));

    // Stopped, and started again on a disk that is full: the daemon waits
    // with the file untouched, and `status` says why instead of failing.
    daemon.stop();
    fill(&filler);
    let mut daemon = agent.start();
    wait_for("the daemon to find its outbox unavailable", WAIT, || {
        daemon.assert_running();
        daemon
            .stderr_text()
            .contains("outbox unavailable")
            .then_some(())
    });
    let out = agent.cli(&["status", "--format", "json"]);
    assert!(out.status.success(), "status failed: {}", text(&out.stderr));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(status["outbox_unavailable"].is_string(), "{status}");
}

/// A collector stopped with SIGTERM leaves one file: the WAL is written
/// back into collector.db, so a copy after a stop is a whole backup and no
/// stale `-wal` can be replayed onto a restored one.
#[test]
fn a_stopped_collector_leaves_its_database_in_one_file() {
    let data = CollectorData::init("Cabot");
    let mut collector = data.start();
    let agent = Agent::new(&data.agent_settings(&collector, "e2e-one-file"));
    agent.enroll();
    let wal = data.data.join("collector.db-wal");
    assert!(wal.exists(), "in WAL mode while it runs");
    assert_eq!(collector.process.stop(), Some(0));
    assert!(!wal.exists(), "the WAL was checkpointed and removed");
    let out = data.cli(&["check-database"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(data.devices().len(), 1, "what it held is in collector.db");
}

/// An MDM that delivers a broken agent.toml: the daemon says what is wrong
/// once per distinct error (file and line), keeps waiting without exiting,
/// and starts as soon as the file is fixed.
#[test]
fn a_broken_configuration_is_reported_once_per_change_and_picked_up_when_fixed() {
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let settings = data.agent_settings(&collector, "e2e-bad-config");
    let agent = Agent::new(&settings);
    let good = std::fs::read_to_string(&agent.config).unwrap();
    let broken = good.replace(
        "heartbeat_interval_secs = 1",
        "heartbeat_interval_secs = \"often\"",
    );
    assert_ne!(broken, good);
    std::fs::write(&agent.config, &broken).unwrap();
    let mut daemon = agent.start();
    let first = "heartbeat_interval_secs";
    wait_for("the error in the journal", Duration::from_secs(30), || {
        daemon.stderr_text().contains(first).then_some(())
    });
    // The same text written again (a new mtime) is not reported again; a
    // different mistake is.
    std::fs::write(&agent.config, &broken).unwrap();
    let other = good.replace("site = ", "sitte = ");
    std::fs::write(&agent.config, &other).unwrap();
    wait_for("the second error", Duration::from_secs(30), || {
        daemon.stderr_text().contains("sitte").then_some(())
    });
    daemon.assert_running();
    let reports = |log: &str| log.matches("the configuration cannot be used").count();
    assert_eq!(
        reports(&daemon.stderr_text()),
        2,
        "{}",
        daemon.stderr_text()
    );

    std::fs::write(&agent.config, &good).unwrap();
    wait_for(
        "enrolment once the file is fixed",
        Duration::from_secs(60),
        || agent.status()["device_id"].as_str().map(str::to_owned),
    );
    assert!(
        daemon
            .stderr_text()
            .contains("the configuration is usable now")
    );
}
