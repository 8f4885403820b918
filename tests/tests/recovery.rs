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
