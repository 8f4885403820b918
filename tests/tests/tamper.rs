//! Tamper signals from a real agent to a real collector: the daemon's
//! start and clean stop, a kill -9 found at the next start, a changed
//! configuration file, a replaced version, and the wall clock moved under
//! the running daemon by libfaketime; the interference ones open a
//! `tamper` flag for the site's technicians. (A killed session helper is
//! in capture.rs, beside the helper's other tests.)

use std::path::PathBuf;
use std::time::Duration;

use hallmonitor_e2e::*;

const WAIT: Duration = Duration::from_secs(60);

/// libfaketime as Debian installs it (the test command installs it).
fn libfaketime() -> PathBuf {
    let found = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
    ]
    .iter()
    .map(|dir| PathBuf::from(dir).join("faketime/libfaketime.so.1"))
    .find(|path| path.exists());
    found.expect("libfaketime is installed (apt-get install libfaketime)")
}

/// The signals the collector holds for `id`, newest first.
fn signals(data: &CollectorData, id: &str) -> Vec<Value> {
    data.device(id)["signals"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn count(signals: &[Value], kind: &str) -> usize {
    signals.iter().filter(|s| s["signal"] == kind).count()
}

/// Waits until the collector holds `n` signals of `kind` for `id`; the
/// newest of them.
fn wait_for_signal(
    data: &CollectorData,
    id: &str,
    kind: &str,
    n: usize,
    daemon: &mut Process,
) -> Value {
    wait_for(
        &format!("{n} '{kind}' signal(s) at the collector"),
        WAIT,
        || {
            daemon.assert_running();
            let signals = signals(data, id);
            (count(&signals, kind) >= n)
                .then(|| signals.into_iter().find(|s| s["signal"] == kind).unwrap())
        },
    )
}

fn tamper_flags(data: &CollectorData, id: &str) -> Vec<Value> {
    let output = data.cli(&["flags", "list", "--format", "json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let flags: Value = serde_json::from_slice(&output.stdout).unwrap();
    flags["flags"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f["kind"] == "tamper" && f["device_id"] == id)
        .collect()
}

#[test]
fn the_agents_life_and_interference_with_it_reach_the_collector() {
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let agent = Agent::new(&data.agent_settings(&collector, "e2e-tamper"));
    let id = agent.enroll();
    // The daemon's wall clock is whatever this file says (read at every
    // call): "+0" now, moved below. Its boot-time clock is left alone.
    let clock = agent.root.path().join("faketime");
    std::fs::write(&clock, "+0\n").unwrap();
    let start = || {
        let mut command = agent.command(&["run"]);
        command
            .env("LD_PRELOAD", libfaketime())
            .env("FAKETIME_TIMESTAMP_FILE", &clock)
            .env("FAKETIME_NO_CACHE", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        Process::spawn("agent", command, &agent.root.path().join("logs"))
    };
    let mut daemon = start();
    let started = wait_for_signal(&data, &id, "started", 1, &mut daemon);
    assert!(started["agent_version"].is_string(), "{started}");
    assert!(
        tamper_flags(&data, &id).is_empty(),
        "a plain start is no interference"
    );

    // A technician (or someone with root) edits the configuration under
    // the running daemon.
    let mut toml = std::fs::read_to_string(&agent.config).unwrap();
    toml.push_str("\n# edited\n");
    std::fs::write(&agent.config, toml).unwrap();
    let changed = wait_for_signal(&data, &id, "config_changed", 1, &mut daemon);
    assert!(
        changed["detail"].as_str().unwrap().ends_with("agent.toml"),
        "{changed}"
    );

    // The wall clock set a day ahead.
    std::fs::write(&clock, "+1d\n").unwrap();
    let jumped = wait_for_signal(&data, &id, "clock_jumped", 1, &mut daemon);
    let secs = jumped["clock_jump_secs"].as_i64().unwrap();
    assert!((86_400 - 300..=86_400 + 300).contains(&secs), "{jumped}");
    let flags = wait_for("a tamper flag", WAIT, || {
        let flags = tamper_flags(&data, &id);
        (!flags.is_empty()).then_some(flags)
    });
    assert_eq!(flags.len(), 1, "{flags:?}");
    assert_eq!(flags[0]["state"], "open");
    // And back: a second jump, the other way, on the same open flag.
    std::fs::write(&clock, "+0\n").unwrap();
    wait_for_signal(&data, &id, "clock_jumped", 2, &mut daemon);
    assert_eq!(tamper_flags(&data, &id).len(), 1, "one flag per device");

    // kill -9: found at the next start, on the same boot.
    daemon.signal_and_wait(libc::SIGKILL);
    let mut daemon = start();
    let unclean = wait_for_signal(&data, &id, "stopped_uncleanly", 1, &mut daemon);
    assert_eq!(unclean["same_boot"], true, "{unclean}");
    assert!(unclean["last_alive_at"].is_string(), "{unclean}");
    wait_for_signal(&data, &id, "started", 2, &mut daemon);

    // A clean stop says so, and the next start finds nothing wrong.
    assert_eq!(daemon.signal_and_wait(libc::SIGTERM), Some(0));
    // As an upgrade from an older version would leave it.
    set_outbox_state(&agent.data, "agent_version", "0.0.1");
    let mut daemon = start();
    let upgraded = wait_for_signal(&data, &id, "upgraded", 1, &mut daemon);
    assert_eq!(upgraded["previous_agent_version"], "0.0.1", "{upgraded}");
    let held = wait_for_signal(&data, &id, "started", 3, &mut daemon);
    assert!(held["agent_version"].is_string());
    let all = signals(&data, &id);
    assert_eq!(count(&all, "stopped"), 1, "{all:?}");
    assert_eq!(
        count(&all, "stopped_uncleanly"),
        1,
        "the clean stop is no unclean one: {all:?}"
    );
    drop(collector);
}

/// Writes a key of a stopped agent's state table.
fn set_outbox_state(agent_data: &std::path::Path, key: &str, value: &str) {
    let file = agent_data.join("outbox.db");
    fixtures::runtime().block_on(async {
        use sqlx::ConnectOptions;
        let mut db = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&file)
            .connect()
            .await
            .expect("the agent's outbox");
        sqlx::query("UPDATE state SET value = ? WHERE key = ?")
            .bind(value)
            .bind(key)
            .execute(&mut db)
            .await
            .expect("updating the state table");
    });
}
