//! Foundation, end to end: init → serve → enrol → run, restart survival,
//! and bad input (secrets, certificates, messages, config files) refused
//! with a clear error and no change.

use std::time::Duration;

use hallmonitor_e2e::*;
use hallmonitor_proto::v1;

const WAIT: Duration = Duration::from_secs(30);

fn find_device(data: &CollectorData, id: &str) -> Option<Value> {
    data.devices().into_iter().find(|d| d["id"] == id)
}

#[test]
fn enrolled_agent_appears_with_facts_and_survives_a_collector_restart() {
    let data = CollectorData::init("Cabot Primary");
    let collector = data.start();
    let agent = Agent::new(&data.agent_settings(&collector, "e2e-machine-1"));
    let mut daemon = agent.start(); // enrols itself: zero-touch

    let device = wait_for("the device to appear online with its facts", WAIT, || {
        let status = agent.status();
        let id = status["device_id"].as_str()?.to_owned();
        find_device(&data, &id)
            .filter(|d| d["status"] == "online" && d["facts"]["machine_id"] == "e2e-machine-1")
    });
    let id = device["id"].as_str().unwrap().to_owned();
    assert_eq!(device["site"], "Cabot Primary");
    assert!(!device["facts"]["hostname"].as_str().unwrap().is_empty());
    assert!(device["facts"]["memory_total_bytes"].as_u64().unwrap() > 0);
    assert!(device["facts"]["cpu_cores"].as_u64().unwrap() > 0);
    assert_eq!(device["facts"]["agent_version"], env!("CARGO_PKG_VERSION"));
    assert!(
        device["facts"]["os_name"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );

    // The identity is private to root.
    use std::os::unix::fs::PermissionsExt;
    for file in ["device.key", "device.crt"] {
        let mode = std::fs::metadata(agent.identity_dir().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }

    // Stop the collector (gracefully): the agent notices and keeps queueing.
    let ports = collector.ports();
    let mut collector = collector;
    assert_eq!(
        collector.process.stop(),
        Some(0),
        "graceful shutdown exits 0"
    );
    let stored_before = data.device(&id)["events_stored"].as_u64().unwrap();
    wait_for(
        "the agent to notice the collector is gone and queue events",
        WAIT,
        || {
            // Offline heartbeats merge into one interval event, so the
            // queue holds one row that ages across several intervals.
            let s = agent.status();
            (s["connection"] != "connected"
                && s["queue_depth"].as_u64()? >= 1
                && s["oldest_unsent_age_secs"].as_i64()? >= 3)
                .then_some(())
        },
    );

    // Start it again on the same ports: the agent reconnects and drains.
    let _collector = data.start_on(Some(ports));
    wait_for("the agent to reconnect and drain its queue", WAIT, || {
        let s = agent.status();
        (s["connection"] == "connected" && s["queue_depth"] == 0).then_some(())
    });
    let after = data.device(&id);
    assert!(
        after["events_stored"].as_u64().unwrap() > stored_before,
        "queued events arrived: {after}"
    );
    assert_eq!(after["sequence_gap"], 0, "nothing lost: {after}");
    assert_eq!(after["status"], "online");

    let status = agent.status();
    assert_eq!(status["enrolled"], true);
    assert_eq!(status["daemon_running"], true);
    assert!(status["last_successful_send_at"].is_string());
    assert_eq!(daemon.stop(), Some(0));
}

#[test]
fn devices_list_table_and_show_describe_the_device() {
    let data = CollectorData::init("Hillside");
    let collector = data.start();
    let agent = Agent::new(&data.agent_settings(&collector, "e2e-machine-table"));
    let id = agent.enroll();
    let _daemon = agent.start();
    wait_for("facts to arrive", WAIT, || {
        (data.device(&id)["events_stored"].as_u64()? > 0).then_some(())
    });
    let table = text(&data.cli(&["devices", "list", "--site", "Hillside"]).stdout);
    assert!(table.starts_with("DEVICE"), "{table}");
    assert!(table.contains(&id) && table.contains("online"), "{table}");
    let show = text(&data.cli(&["devices", "show", &id]).stdout);
    for label in [
        "machine id",
        "e2e-machine-table",
        "last acked sequence",
        "sequence gap",
        "disk",
    ] {
        assert!(show.contains(label), "missing '{label}' in:\n{show}");
    }
    let unknown = data.cli(&["devices", "list", "--site", "Nowhere"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(text(&unknown.stderr).contains("no site named 'Nowhere'"));
}

#[test]
fn reenrolling_keeps_the_device_id_and_retires_the_old_certificate() {
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let agent = Agent::new(&data.agent_settings(&collector, "e2e-machine-2"));
    let first = agent.enroll();
    let old_cert = std::fs::read_to_string(agent.identity_dir().join("device.crt")).unwrap();
    let old_key = std::fs::read_to_string(agent.identity_dir().join("device.key")).unwrap();

    let again = agent.cli(&["enroll"]);
    assert_eq!(again.status.code(), Some(2), "refuses without --force");
    assert!(text(&again.stderr).contains("already enrolled"));

    let forced = agent.cli(&["enroll", "--force"]);
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    assert_eq!(
        agent.status()["device_id"],
        first.as_str(),
        "same machine, same id"
    );
    assert_eq!(data.devices().len(), 1);

    // A different machine with the same secret gets its own id.
    let other = Agent::new(&data.agent_settings(&collector, "e2e-machine-3"));
    assert_ne!(other.enroll(), first);

    // The superseded certificate is still signed by our CA, so TLS accepts
    // it, but the collector no longer recognises it.
    let ca = std::fs::read_to_string(agent.identity_dir().join("ca.crt")).unwrap();
    let result = stream_hello(
        &format!("localhost:{}", collector.telemetry.port()),
        &ca,
        &old_cert,
        &old_key,
    );
    let err = result.expect_err("old certificate must be refused");
    assert!(
        err.contains("Unauthenticated") && err.contains("not current"),
        "{err}"
    );
}

#[test]
fn a_secret_and_a_copied_machine_id_enrol_a_pending_device_not_the_enrolled_one() {
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let victim = Agent::new(&data.agent_settings(&collector, "e2e-victim"));
    let victim_id = victim.enroll();
    let _daemon = victim.start();
    wait_for("the victim online", WAIT, || {
        (data.device(&victim_id)["status"] == "online").then_some(())
    });

    // Someone with the site's secret and a copy of /etc/machine-id.
    let intruder = Agent::new(&data.agent_settings(&collector, "e2e-victim"));
    let intruder_id = intruder.enroll();
    assert_ne!(intruder_id, victim_id, "never the enrolled device's id");
    let pending = data.device(&intruder_id);
    assert_eq!(pending["standing"], "pending", "{pending}");
    assert_eq!(pending["duplicate_of"], victim_id.as_str(), "{pending}");
    let victim_now = data.device(&victim_id);
    assert_eq!(victim_now["standing"], "active", "{victim_now}");
    assert_eq!(victim_now["site"], "Cabot");

    // The pending device cannot stream; the victim's agent is undisturbed.
    let address = format!("localhost:{}", collector.telemetry.port());
    let read = |agent: &Agent, name: &str| {
        std::fs::read_to_string(agent.identity_dir().join(name)).unwrap()
    };
    let refused = stream_hello(
        &address,
        &read(&intruder, "ca.crt"),
        &read(&intruder, "device.crt"),
        &read(&intruder, "device.key"),
    )
    .expect_err("a pending device's stream is refused");
    assert!(
        refused.contains("FailedPrecondition") && refused.contains("pending"),
        "{refused}"
    );
    stream_hello(
        &address,
        &read(&victim, "ca.crt"),
        &read(&victim, "device.crt"),
        &read(&victim, "device.key"),
    )
    .expect("the victim's certificate still works");
    let list = text(&data.cli(&["devices", "list"]).stdout);
    assert!(list.contains("pending"), "{list}");

    // A technician who knows it is a second machine (a cloned image)
    // approves it; a pending device cannot be approved twice.
    let approve = data.cli(&["devices", "approve", &intruder_id]);
    assert!(approve.status.success(), "{}", text(&approve.stderr));
    assert_eq!(data.device(&intruder_id)["standing"], "active");
    stream_hello(
        &address,
        &read(&intruder, "ca.crt"),
        &read(&intruder, "device.crt"),
        &read(&intruder, "device.key"),
    )
    .expect("approved");
    assert!(
        !data
            .cli(&["devices", "approve", &intruder_id])
            .status
            .success()
    );
}

#[test]
fn a_revoked_device_is_closed_at_once_and_told_why_and_a_link_replaces_a_device() {
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let agent = Agent::new(&data.agent_settings(&collector, "e2e-revoked"));
    let id = agent.enroll();
    let _daemon = agent.start();
    wait_for("the agent connected", WAIT, || {
        (agent.status()["connection"] == "connected").then_some(())
    });
    let revoke = data.cli(&["devices", "revoke", &id, "--reason", "reported stolen"]);
    assert!(revoke.status.success(), "{}", text(&revoke.stderr));
    // The open stream is closed and the agent says why, without a tight
    // retry loop (it waits the longest backoff).
    let status = wait_for("the agent to be refused", WAIT, || {
        let status = agent.status();
        (status["connection"] == "refused").then_some(status)
    });
    let why = status["last_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("revoked") && why.contains("reported stolen"),
        "{status}"
    );
    let shown = data.device(&id);
    assert_eq!(shown["standing"], "revoked", "{shown}");
    assert_eq!(shown["standing_reason"], "reported stolen");

    // The laptop comes back re-imaged: its agent has lost its key, so it
    // enrols as a pending device, and the technician links it.
    let reimaged = Agent::new(&data.agent_settings(&collector, "e2e-revoked"));
    let new_id = reimaged.enroll();
    assert_eq!(data.device(&new_id)["standing"], "pending");
    let wrong = data.cli(&["devices", "link", &id, "--replaces", &new_id]);
    assert!(
        !wrong.status.success(),
        "only a pending device can be linked"
    );
    let link = data.cli(&["devices", "link", &new_id, "--replaces", &id]);
    assert!(link.status.success(), "{}", text(&link.stderr));
    assert_eq!(data.device(&new_id)["standing"], "active");
    assert_eq!(data.device(&id)["standing"], "revoked");
}

#[test]
fn reenrolling_closes_the_stream_of_the_replaced_certificate() {
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let agent = Agent::new(&data.agent_settings(&collector, "e2e-replaced"));
    let id = agent.enroll();
    // The daemon keeps the old certificate in memory.
    let _daemon = agent.start();
    wait_for("the agent connected", WAIT, || {
        (agent.status()["connection"] == "connected").then_some(())
    });
    let forced = agent.cli(&["enroll", "--force"]);
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    assert_eq!(
        data.device(&id)["standing"],
        "active",
        "proven: same device"
    );
    // The open stream is closed ("replaced"); the daemon's reconnects with
    // the certificate it holds are then refused ("not current"). Either
    // message may be the one `status` shows when it is read.
    let status = wait_for("the old stream closed", WAIT, || {
        let status = agent.status();
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("replaced") || e.contains("not current"))
            .then_some(status)
    });
    assert_ne!(status["connection"], "connected", "{status}");
    let log = collector.process.stderr_text();
    assert!(log.contains("closing the device's open stream"), "{log}");
}

/// A second daemon on the same data directory refuses to start: it would
/// share the outbox and identity, each stream closing the other's.
#[test]
fn a_second_daemon_on_one_data_directory_refuses_to_start() {
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let agent = Agent::new(&data.agent_settings(&collector, "e2e-two-daemons"));
    agent.enroll();
    let mut first = agent.start();
    wait_for("the agent connected", WAIT, || {
        (agent.status()["connection"] == "connected").then_some(())
    });
    let mut second = agent.start();
    let code = wait_for("the second daemon to exit", WAIT, || second.has_exited());
    assert_ne!(code, 0);
    let log = second.stderr_text();
    assert!(
        log.contains("another hallmonitor-agent daemon is running"),
        "{log}"
    );
    first.assert_running();
    assert_eq!(agent.status()["daemon_pid"], first.pid(), "the first one's");
}

#[test]
fn a_task_that_fails_stops_the_daemon_with_a_non_zero_exit_naming_it() {
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    // The helper socket cannot be made under a regular file.
    let agent = Agent::with_config(
        &data.agent_settings(&collector, "e2e-task-fails"),
        "",
        "[capture]\nsocket = \"/dev/null/agent.sock\"\n",
    );
    agent.enroll();
    let mut daemon = agent.start();
    let code = wait_for("the daemon to exit", WAIT, || daemon.has_exited());
    assert_ne!(code, 0, "a failed task is a failed daemon");
    let log = daemon.stderr_text();
    assert!(
        log.contains("session helper socket") && log.contains("task failed"),
        "{log}"
    );
}

#[test]
fn connections_that_never_start_tls_are_closed_after_the_handshake_deadline() {
    use std::io::Read;
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let ports = [collector.telemetry, collector.enroll, collector.api];
    let mut idle: Vec<std::net::TcpStream> = ports
        .iter()
        .map(|address| std::net::TcpStream::connect(address).unwrap())
        .collect();
    let started = std::time::Instant::now();
    for (socket, address) in idle.iter_mut().zip(ports) {
        // Well past the 10 s deadline: a read that ends (0 bytes or reset)
        // is the collector closing it; a timeout means it never did.
        socket
            .set_read_timeout(Some(Duration::from_secs(40)))
            .unwrap();
        let mut buf = [0u8; 16];
        let read = socket.read(&mut buf);
        assert!(
            matches!(read, Ok(0))
                || matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "{address}: an idle connection stays open: {read:?}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(40));
    // The collector still serves.
    let agent = Agent::new(&data.agent_settings(&collector, "e2e-after-idle"));
    agent.enroll();
}

/// A flood of failing connections (each one logged) does not flood the
/// log: a call site writes its share a second, and says how many lines
/// it dropped.
#[test]
fn repeated_log_lines_are_limited_per_call_site_and_counted() {
    use std::io::Write;
    let data = CollectorData::init("Cabot");
    let mut collector = data.start();
    let garbage = |n: usize| {
        for _ in 0..n {
            let mut socket = std::net::TcpStream::connect(collector.telemetry).unwrap();
            let _ = socket.write_all(b"GET / HTTP/1.0\r\n\r\n");
        }
    };
    const FLOOD: usize = 400;
    garbage(FLOOD);
    // The summary comes with the site's next line (a second later at most).
    let log = wait_for("the dropped lines counted", Duration::from_secs(60), || {
        garbage(1);
        let log = collector.process.stderr_text();
        log.contains("repeated log line(s) from").then_some(log)
    });
    let failed = log.matches("TLS handshake failed").count();
    assert!(
        failed < FLOOD,
        "{failed} handshake failures logged for {FLOOD}+ connections"
    );
    assert!(failed > 0, "{log}");
    collector.process.assert_running();
}

#[test]
fn wrong_revoked_or_missing_secrets_are_refused_and_change_nothing() {
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let mut settings = data.agent_settings(&collector, "e2e-machine-4");

    settings.secret = "hmes_0000000000000000000000000000000000000000".into();
    let agent = Agent::new(&settings);
    let out = agent.cli(&["enroll"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unknown enrolment secret"),
        "{}",
        text(&out.stderr)
    );
    assert!(!agent.identity_dir().join("device.toml").exists());

    // A revoked secret.
    let created = data.cli(&[
        "enroll-secret",
        "create",
        "--site",
        "Cabot",
        "--label",
        "Year 7 laptops",
    ]);
    assert!(created.status.success());
    let secret = text(&created.stdout).trim().to_owned();
    let list: Value = serde_json::from_slice(
        &data
            .cli(&["enroll-secret", "list", "--format", "json"])
            .stdout,
    )
    .unwrap();
    let id = list["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["label"] == "Year 7 laptops")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    assert!(
        !list.to_string().contains(&secret),
        "the secret itself is never listed"
    );
    let revoked = data.cli(&[
        "enroll-secret",
        "revoke",
        "--site",
        "Cabot",
        &id.to_string(),
    ]);
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    settings.secret = secret;
    agent.write_config(&settings);
    let out = agent.cli(&["enroll"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("revoked"),
        "{}",
        text(&out.stderr)
    );

    // Revoking twice is an error, not a silent success.
    let twice = data.cli(&[
        "enroll-secret",
        "revoke",
        "--site",
        "Cabot",
        &id.to_string(),
    ]);
    assert_eq!(twice.status.code(), Some(2));

    // A daemon refused at enrolment exits with the reason.
    let mut daemon = agent.start();
    let code = wait_for("the refused daemon to exit", WAIT, || daemon.has_exited());
    assert_eq!(code, 2);
    assert!(daemon.stderr_text().contains("revoked"));

    assert!(data.devices().is_empty(), "no device was created");
}

#[test]
fn a_collector_whose_ca_does_not_match_the_pin_is_refused() {
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let mut settings = data.agent_settings(&collector, "e2e-machine-5");
    settings.ca_fingerprint = "ab".repeat(32);
    let agent = Agent::new(&settings);
    let out = agent.cli(&["enroll"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("does not match ca_fingerprint"),
        "{}",
        text(&out.stderr)
    );
    assert!(data.devices().is_empty());
}

#[test]
fn the_tls_layer_refuses_missing_and_foreign_client_certificates() {
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let agent = Agent::new(&data.agent_settings(&collector, "e2e-machine-6"));
    agent.enroll();
    let ca = std::fs::read_to_string(agent.identity_dir().join("ca.crt")).unwrap();
    let address = format!("localhost:{}", collector.telemetry.port());

    // No client certificate at all: the server's TLS stack answers with an
    // alert before any gRPC is spoken.
    let err =
        tls_probe(&address, without_client_cert(&ca)).expect_err("no certificate must be refused");
    assert!(
        err.contains("CertificateRequired"),
        "refused by a TLS alert: {err}"
    );
    assert!(stream_hello_with(&address, without_client_cert(&ca)).is_err());

    // A certificate from another CA.
    let (foreign_cert, foreign_key) = foreign_client_certificate();
    let foreign =
        hallmonitor_agent::tls::mutual_tls_config(&ca, &foreign_cert, &foreign_key).unwrap();
    let err = tls_probe(&address, foreign.clone()).expect_err("foreign CA must be refused");
    assert!(
        err.contains("received fatal alert"),
        "refused by a TLS alert: {err}"
    );
    assert!(stream_hello_with(&address, foreign).is_err());

    // The real identity passes the same probe and opens a stream, so the
    // refusals were about the certificates.
    let cert = std::fs::read_to_string(agent.identity_dir().join("device.crt")).unwrap();
    let key = std::fs::read_to_string(agent.identity_dir().join("device.key")).unwrap();
    let good = hallmonitor_agent::tls::mutual_tls_config(&ca, &cert, &key).unwrap();
    tls_probe(&address, good).expect("the enrolled identity passes TLS");
    stream_hello(&address, &ca, &cert, &key).expect("the enrolled identity is accepted");
    assert!(
        data.devices().len() == 1,
        "no device appeared from the refused connections"
    );
}

#[test]
fn malformed_and_oversized_messages_are_refused_and_store_nothing() {
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let agent = Agent::new(&data.agent_settings(&collector, "e2e-machine-7"));
    let id = agent.enroll();
    let read = |f: &str| std::fs::read_to_string(agent.identity_dir().join(f)).unwrap();
    let (ca, cert, key) = (read("ca.crt"), read("device.crt"), read("device.key"));
    let address = format!("localhost:{}", collector.telemetry.port());
    let heartbeat = |seq| v1::Event {
        seq,
        event_id: format!("e{seq}"),
        occurred_at: Some(hallmonitor_proto::Timestamp {
            seconds: 1_800_000_000,
            nanos: 0,
        }),
        body: Some(v1::event::Body::Heartbeat(v1::Heartbeat {
            uptime_secs: 1,
            interval_secs: 60,
        })),
    };
    let batch = |events| v1::AgentMessage {
        body: Some(v1::agent_message::Body::Batch(v1::EventBatch {
            batch_id: 1,
            events,
        })),
    };

    let cases: Vec<(&str, v1::AgentMessage, &str)> = vec![
        (
            "empty message",
            v1::AgentMessage { body: None },
            "InvalidArgument",
        ),
        (
            "sequence number zero",
            batch(vec![heartbeat(0)]),
            "InvalidArgument",
        ),
        (
            "too many events",
            batch((1..=5001).map(heartbeat).collect()),
            "InvalidArgument",
        ),
        (
            "message over 16 MiB",
            batch(vec![v1::Event {
                body: Some(v1::event::Body::Capture(v1::Capture {
                    image_png: vec![0u8; 17 * 1024 * 1024],
                    ..Default::default()
                })),
                ..heartbeat(1)
            }]),
            "OutOfRange",
        ),
    ];
    for (name, message, want) in cases {
        let err = send_one(&address, &ca, &cert, &key, message).expect_err(name);
        assert!(err.contains(want), "{name}: {err}");
    }
    // The protocol's order: a hello first, sequence numbers ascending.
    let tls = hallmonitor_agent::tls::mutual_tls_config(&ca, &cert, &key).unwrap();
    let err = open_stream_with(&address, tls, Some(batch(vec![heartbeat(1)])), false)
        .expect_err("a batch before the hello");
    assert!(
        err.contains("FailedPrecondition") && err.contains("AgentHello"),
        "{err}"
    );
    let err = send_one(
        &address,
        &ca,
        &cert,
        &key,
        batch(vec![heartbeat(2), heartbeat(1)]),
    )
    .expect_err("sequence numbers going back");
    assert!(
        err.contains("InvalidArgument") && err.contains("ascend"),
        "{err}"
    );
    let device = data.device(&id);
    assert_eq!(device["events_stored"], 0, "nothing stored: {device}");

    // The collector is still healthy and accepts a good batch.
    send_one(&address, &ca, &cert, &key, batch(vec![heartbeat(1)]))
        .expect("a good batch is acknowledged");
    assert_eq!(data.device(&id)["events_stored"], 1);
}

#[test]
fn corrupt_config_files_are_named_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "collector = \"localhost:1\"\n\nheartbeat_interval_secs = \"often\"\n",
    )
    .unwrap();
    let out = run({
        let mut c = std::process::Command::new(agent_bin());
        c.arg("--config").arg(&config).arg("status");
        c
    });
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains(&config.display().to_string()) && err.contains("line 3"),
        "{err}"
    );

    // A collector whose collector.toml is broken refuses to start and
    // leaves its data alone.
    let data = CollectorData::init("Cabot");
    let path = data.data.join("collector.toml");
    let original = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{original}\nlisten = 12\n")).unwrap();
    let out = data.cli(&["serve"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains(&path.display().to_string()) && err.contains("line"),
        "{err}"
    );
    assert!(
        data.cli(&["devices", "list"]).status.success(),
        "database untouched"
    );

    // init refuses to overwrite an existing collector.
    let again = data.cli(&["init", "--site", "Other", "--hostname", "localhost"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again.stderr).contains("refusing to overwrite"));
}

// ---------------------------------------------------------------- helpers

fn runtime() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Opens a telemetry stream and waits for the collector's hello.
fn stream_hello(address: &str, ca: &str, cert: &str, key: &str) -> Result<(), String> {
    let tls =
        hallmonitor_agent::tls::mutual_tls_config(ca, cert, key).map_err(|e| e.to_string())?;
    open_stream(address, tls, None)
}

fn stream_hello_with(address: &str, tls: rustls::ClientConfig) -> Result<(), String> {
    open_stream(address, tls, None)
}

fn without_client_cert(ca: &str) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    tls
}

/// A bare TLS connection: handshake, send the HTTP/2 preface, read the
/// answer. Ok when the server answers (it accepted us); the TLS error
/// otherwise. With TLS 1.3 the server judges the client certificate after
/// the client's side of the handshake, so its verdict arrives on the read.
fn tls_probe(address: &str, tls: rustls::ClientConfig) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
        let mut stream = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Err(_) => Err("no answer within 10 s".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(0)) => Err("closed without an answer".into()),
            Ok(Ok(_)) => Ok(()),
        }
    })
}

/// Sends one message after the hello and returns the first error the
/// collector answers with (Ok when it acknowledges instead).
fn send_one(
    address: &str,
    ca: &str,
    cert: &str,
    key: &str,
    message: v1::AgentMessage,
) -> Result<(), String> {
    let tls =
        hallmonitor_agent::tls::mutual_tls_config(ca, cert, key).map_err(|e| e.to_string())?;
    open_stream_with(address, tls, Some(message), true)
}

fn open_stream(
    address: &str,
    tls: rustls::ClientConfig,
    message: Option<v1::AgentMessage>,
) -> Result<(), String> {
    open_stream_with(address, tls, message, false)
}

/// Opens a stream, waits for the collector's hello, then sends our hello
/// (when `hello`) and `message`.
fn open_stream_with(
    address: &str,
    tls: rustls::ClientConfig,
    message: Option<v1::AgentMessage>,
    hello: bool,
) -> Result<(), String> {
    runtime().block_on(async {
        let channel = hallmonitor_agent::tls::connect(address, tls, Duration::from_secs(5))
            .await
            .map_err(|e| format!("{e:?}"))?;
        let mut client =
            v1::telemetry_client::TelemetryClient::new(channel).max_encoding_message_size(64 << 20);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut inbound = client
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| describe(&s))?
            .into_inner();
        let first = inbound.message().await.map_err(|s| describe(&s))?;
        if !matches!(
            first,
            Some(v1::CollectorMessage {
                body: Some(v1::collector_message::Body::Hello(_))
            })
        ) {
            return Err(format!("expected hello, got {first:?}"));
        }
        let Some(message) = message else {
            return Ok(());
        };
        if hello {
            let hello = v1::AgentMessage {
                body: Some(v1::agent_message::Body::Hello(v1::AgentHello::default())),
            };
            tx.send(hello)
                .await
                .map_err(|_| "stream closed".to_string())?;
        }
        tx.send(message)
            .await
            .map_err(|_| "stream closed".to_string())?;
        loop {
            match inbound.message().await {
                Ok(Some(v1::CollectorMessage {
                    body: Some(v1::collector_message::Body::Ack(_)),
                })) => return Ok(()),
                // The collector also sends the device's state on connect.
                Ok(Some(v1::CollectorMessage {
                    body: Some(v1::collector_message::Body::State(_)),
                })) => continue,
                Ok(other) => return Err(format!("unexpected answer {other:?}")),
                Err(s) => return Err(describe(&s)),
            }
        }
    })
}

/// A status with its whole source chain (the TLS alert is in there).
fn describe(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        text.push_str(&format!(" <- {e}"));
        source = e.source();
    }
    text
}

/// A client certificate signed by a CA the collector has never seen.
fn foreign_client_certificate() -> (String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["intruder".to_string()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[test]
fn a_collector_serves_more_sites_than_its_first() {
    let data = CollectorData::init("Cabot");
    let added = data.cli(&[
        "sites",
        "add",
        "Dunmore Academy",
        "--timezone",
        "Europe/Dublin",
    ]);
    assert!(added.status.success(), "{}", text(&added.stderr));
    let again = data.cli(&["sites", "add", "Dunmore Academy"]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("exists already"),
        "{}",
        text(&again.stderr)
    );
    let bad_zone = data.cli(&["sites", "add", "Elm", "--timezone", "Mars/Olympus"]);
    assert!(text(&bad_zone.stderr).contains("--timezone Mars/Olympus"));
    let list = fixtures::json(&data.cli(&["sites", "list", "--format", "json"]));
    let names: Vec<&str> = list["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Cabot", "Dunmore Academy"]);
    // The new site takes enrolment secrets of its own.
    let secret = data.cli(&["enroll-secret", "create", "--site", "Dunmore Academy"]);
    assert!(secret.status.success(), "{}", text(&secret.stderr));
}
