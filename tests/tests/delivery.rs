//! Nothing lost, end to end: backlogs made while the collector is away,
//! kill -9 of either side mid-flight, a full outbox, a corrupt outbox.
//!
//! Events are put into the agent's outbox through the agent library's
//! `Outbox` (the API every producer in the daemon uses), from this test
//! process, so the tests control exactly how many there are.

use hallmonitor_collector::store::IngestStore;
use std::collections::BTreeMap;
use std::time::Duration;

use hallmonitor_agent::outbox::{DEFAULT_MAX_BYTES, Outbox};
use hallmonitor_collector::model::DeviceId;
use hallmonitor_collector::store::SqliteStore;
use hallmonitor_e2e::*;
use hallmonitor_proto::v1;

const WAIT: Duration = Duration::from_secs(60);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn session(n: u64) -> v1::event::Body {
    v1::event::Body::Session(v1::SessionEvent {
        phase: 1,
        session_id: format!("s{n}"),
        account: "staff-001".into(),
        uid: 1001,
        kind: 1,
        started_at: Some(hallmonitor_proto::Timestamp {
            seconds: 1_790_000_000 + n as i64,
            nanos: 0,
        }),
        ..Default::default()
    })
}

/// Appends `n` session events to the agent's outbox in chunks, returning
/// their sequence numbers.
fn produce(agent: &Agent, n: u64, max_bytes: u64) -> Vec<u64> {
    runtime().block_on(async {
        std::fs::create_dir_all(&agent.data).unwrap();
        let (outbox, _) = Outbox::open(&agent.data, max_bytes).await.unwrap();
        let mut seqs = Vec::new();
        let now = jiff::Timestamp::now();
        for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
            seqs.extend(
                outbox
                    .append_all(chunk.iter().map(|i| (now, session(*i))).collect())
                    .await
                    .unwrap(),
            );
        }
        outbox.close().await;
        seqs
    })
}

/// (seq, kind) of every event the collector holds for the device.
fn collector_events(data: &CollectorData, device: &str) -> Vec<(u64, String)> {
    runtime().block_on(async {
        let store = SqliteStore::open(&data.data.join("collector.db"), false)
            .await
            .unwrap();
        let events = store
            .event_kinds(&DeviceId::from_string(device))
            .await
            .unwrap();
        store.close().await;
        events
    })
}

fn sessions_held(data: &CollectorData, device: &str) -> Vec<u64> {
    collector_events(data, device)
        .into_iter()
        .filter(|(_, k)| k == "session")
        .map(|(s, _)| s)
        .collect()
}

#[test]
fn ten_thousand_events_made_while_the_collector_is_down_arrive_exactly_once() {
    let data = CollectorData::init("Cabot");
    let mut collector = data.start();
    let agent = Agent::new(&data.agent_settings(&collector, "e2e-delivery-1"));
    let id = agent.enroll();
    let _daemon = agent.start();
    wait_for("the device online", WAIT, || {
        (data.device(&id)["status"] == "online").then_some(())
    });

    let ports = collector.ports();
    assert_eq!(collector.process.stop(), Some(0));
    let produced = produce(&agent, 10_000, DEFAULT_MAX_BYTES);
    assert_eq!(produced.len(), 10_000);
    wait_for("the backlog to be queued", WAIT, || {
        (agent.status()["queue_depth"].as_u64()? >= 10_000).then_some(())
    });

    let _collector = data.start_on(Some(ports));
    wait_for("the backlog to drain", WAIT, || {
        (agent.status()["queue_depth"] == 0).then_some(())
    });
    let held = sessions_held(&data, &id);
    assert_eq!(
        held, produced,
        "every event exactly once, by sequence number"
    );
    let device = data.device(&id);
    assert_eq!(device["sequence_gap"], 0, "{device}");
    assert_eq!(
        device["events_stored"], device["last_acked_seq"],
        "{device}"
    );
}

#[test]
fn kill_nine_of_agent_then_collector_mid_flight_loses_and_duplicates_nothing() {
    const TOTAL: u64 = 20_000;
    let data = CollectorData::init("Cabot");
    let mut collector = data.start();
    // Small batches so the drain takes long enough to be interrupted.
    let agent = Agent::with_delivery(
        &data.agent_settings(&collector, "e2e-delivery-2"),
        "batch_max_events = 20",
    );
    let id = agent.enroll();
    let produced = produce(&agent, TOTAL, DEFAULT_MAX_BYTES);

    let mut daemon = agent.start();
    wait_for("part of the backlog to arrive", WAIT, || {
        let n = sessions_held(&data, &id).len() as u64;
        (n > 1_000).then_some(n)
    });
    daemon.kill();
    let after_agent_kill = sessions_held(&data, &id).len() as u64;
    assert!(
        after_agent_kill < TOTAL,
        "the agent was killed mid-send ({after_agent_kill} of {TOTAL})"
    );

    let _daemon = agent.start();
    wait_for("more of the backlog to arrive", WAIT, || {
        (sessions_held(&data, &id).len() as u64 > after_agent_kill + 1_000).then_some(())
    });
    let ports = collector.ports();
    collector.process.kill();
    let after_collector_kill = sessions_held(&data, &id).len() as u64;
    assert!(
        after_collector_kill < TOTAL,
        "the collector was killed mid-commit ({after_collector_kill} of {TOTAL})"
    );

    let _collector = data.start_on(Some(ports));
    wait_for("everything to arrive", WAIT, || {
        (agent.status()["queue_depth"] == 0 && sessions_held(&data, &id).len() as u64 == TOTAL)
            .then_some(())
    });
    assert_eq!(
        sessions_held(&data, &id),
        produced,
        "no loss, no duplicates, by sequence number"
    );
    let all = collector_events(&data, &id);
    let mut seqs: Vec<u64> = all.iter().map(|(s, _)| *s).collect();
    seqs.dedup();
    assert_eq!(seqs.len(), all.len());
    assert_eq!(data.device(&id)["sequence_gap"], 0);
}

#[test]
fn a_full_outbox_evicts_by_priority_and_the_collector_is_told() {
    const BOUND: u64 = 65_536;
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let agent = Agent::with_delivery(
        &data.agent_settings(&collector, "e2e-delivery-3"),
        &format!("outbox_max_bytes = {BOUND}"),
    );
    let id = agent.enroll();

    // While "offline": far more sessions than fit, then a severe capture
    // bigger than the whole bound.
    produce(&agent, 2_000, BOUND);
    let capture_seq = runtime().block_on(async {
        let (outbox, _) = Outbox::open(&agent.data, BOUND).await.unwrap();
        let capture = v1::event::Body::Capture(v1::Capture {
            severity: 5,
            category: "self-harm".into(),
            image_png: vec![42; 80_000],
            ..Default::default()
        });
        let seq = outbox
            .append(jiff::Timestamp::now(), capture)
            .await
            .unwrap()
            .expect("a severity 5 capture is never dropped");
        outbox.close().await;
        seq
    });
    let evicted_on_agent: BTreeMap<String, u64> =
        serde_json::from_value(agent.status()["evicted"].clone()).unwrap();
    let queued = agent.status()["queue_depth"].as_u64().unwrap();
    assert_eq!(
        evicted_on_agent["sessions"] + queued,
        2_000 + 1,
        "{evicted_on_agent:?}, {queued} queued"
    );
    assert_eq!(evicted_on_agent["captures"], 0);

    let _daemon = agent.start();
    wait_for("the queue to drain", WAIT, || {
        (agent.status()["queue_depth"] == 0).then_some(())
    });
    let events = collector_events(&data, &id);
    assert!(
        events.contains(&(capture_seq, "capture".to_string())),
        "the severe capture arrived"
    );
    // The running daemon may drop a few heartbeats of its own while the
    // oversized capture still fills the outbox; those are reported too. So
    // wait until what the collector was told matches the agent's totals.
    let reported = wait_for("the collector to learn every eviction", WAIT, || {
        let on_agent: BTreeMap<String, u64> =
            serde_json::from_value(agent.status()["evicted"].clone()).ok()?;
        let reported: BTreeMap<String, u64> =
            serde_json::from_value(data.device(&id)["outbox"]["evicted"].clone()).ok()?;
        (reported == on_agent).then_some(reported)
    });
    assert_eq!(
        reported["sessions"], evicted_on_agent["sessions"],
        "sessions evicted while offline, reported exactly"
    );
    assert_eq!(reported.get("captures").copied().unwrap_or(0), 0);
    let show = text(&data.cli(&["devices", "show", &id]).stdout);
    assert!(
        show.contains("evicted on device") && show.contains("sessions"),
        "{show}"
    );
}

#[test]
fn a_corrupt_outbox_is_moved_aside_reported_and_numbering_continues() {
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let agent = Agent::new(&data.agent_settings(&collector, "e2e-delivery-4"));
    let id = agent.enroll();
    let mut daemon = agent.start();
    let before = wait_for("some events committed", WAIT, || {
        let seq = data.device(&id)["last_acked_seq"].as_u64()?;
        (seq >= 3).then_some(seq)
    });
    assert_eq!(daemon.stop(), Some(0));

    let outbox = agent.data.join("outbox.db");
    std::fs::write(&outbox, b"\x00garbage, not SQLite".repeat(500)).unwrap();
    for side in ["outbox.db-wal", "outbox.db-shm"] {
        let _ = std::fs::remove_file(agent.data.join(side));
    }
    let _daemon = agent.start();
    wait_for("the replacement to be reported", WAIT, || {
        (data.device(&id)["outbox"]["corrupt_replacements"] == 1).then_some(())
    });
    let status = agent.status();
    let moved = status["corrupt_outbox_moved_to"]
        .as_str()
        .expect("status names the moved file");
    assert!(std::path::Path::new(moved).exists(), "{moved}");
    assert_eq!(status["daemon_running"], true);

    // New events are numbered past what the collector held, so none is
    // mistaken for a duplicate.
    let stored_then = data.device(&id)["events_stored"].as_u64().unwrap();
    wait_for("new events stored after the replacement", WAIT, || {
        let d = data.device(&id);
        (d["events_stored"].as_u64()? >= stored_then + 2 && d["last_acked_seq"].as_u64()? > before)
            .then_some(())
    });
    let seqs: Vec<u64> = collector_events(&data, &id)
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
}

/// A second connection holding an exclusive lock on the outbox file, as
/// another process (a backup tool, a stuck older daemon) would.
async fn lock_exclusively(path: &std::path::Path) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .pragma("locking_mode", "EXCLUSIVE");
    let mut other = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut other)
        .await
        .unwrap();
    sqlx::query("INSERT INTO state (key, value) VALUES ('held by', 'a test')")
        .execute(&mut other)
        .await
        .unwrap();
    other
}

#[test]
fn a_locked_outbox_is_waited_for_never_moved_aside() {
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let agent = Agent::new(&data.agent_settings(&collector, "e2e-delivery-5"));
    let id = agent.enroll();
    let produced = produce(&agent, 100, DEFAULT_MAX_BYTES);

    let mut daemon = runtime().block_on(async {
        let lock = lock_exclusively(&agent.data.join("outbox.db")).await;
        let mut daemon = agent.start();
        wait_for("the daemon to find the outbox unavailable", WAIT, || {
            agent.data.join("outbox.unavailable").exists().then_some(())
        });
        daemon.assert_running();
        let status = agent.status();
        let why = status["outbox_unavailable"].as_str().unwrap_or_default();
        assert!(why.contains("locked"), "{status}");
        let files: Vec<String> = std::fs::read_dir(&agent.data)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            !files.iter().any(|f| f.contains("corrupt")),
            "a locked outbox is not corrupt: {files:?}"
        );
        use sqlx::Connection;
        lock.close().await.unwrap();
        daemon
    });
    wait_for("the queued events to arrive", WAIT, || {
        (sessions_held(&data, &id) == produced).then_some(())
    });
    daemon.assert_running();
    let status = agent.status();
    assert!(status["outbox_unavailable"].is_null(), "{status}");
    assert!(status["corrupt_outbox_moved_to"].is_null(), "{status}");
}

#[test]
fn every_eviction_is_reported_exactly_under_sustained_pressure() {
    const BOUND: u64 = 65_536;
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let agent = Agent::with_delivery(
        &data.agent_settings(&collector, "e2e-delivery-6"),
        &format!("outbox_max_bytes = {BOUND}"),
    );
    let id = agent.enroll();
    // Offline for a long while: sessions keep coming and the producer
    // reports the evictions at every tick, so later sessions press on the
    // earlier reports.
    runtime().block_on(async {
        std::fs::create_dir_all(&agent.data).unwrap();
        let (outbox, _) = Outbox::open(&agent.data, BOUND).await.unwrap();
        let now = jiff::Timestamp::now();
        for round in 0..50 {
            outbox
                .append_all((0..200).map(|i| (now, session(round * 200 + i))).collect())
                .await
                .unwrap();
            outbox.take_eviction_report().await.unwrap();
        }
        outbox.close().await;
    });
    let offline: BTreeMap<String, u64> =
        serde_json::from_value(agent.status()["evicted"].clone()).unwrap();
    assert!(offline["sessions"] > 9_000, "{offline:?}");

    let _daemon = agent.start();
    wait_for("the queue to drain", WAIT, || {
        (agent.status()["queue_depth"] == 0).then_some(())
    });
    let reported = wait_for("the collector to learn every eviction", WAIT, || {
        let on_agent: BTreeMap<String, u64> =
            serde_json::from_value(agent.status()["evicted"].clone()).ok()?;
        let reported: BTreeMap<String, u64> =
            serde_json::from_value(data.device(&id)["outbox"]["evicted"].clone()).ok()?;
        (reported == on_agent).then_some(reported)
    });
    // The daemon's own start signals (never evicted) may push out a few
    // more sessions; whatever went, the collector was told exactly.
    assert!(
        (offline["sessions"]..=offline["sessions"] + 4).contains(&reported["sessions"]),
        "{offline:?} then {reported:?}"
    );
    let show = text(&data.cli(&["devices", "show", &id]).stdout);
    assert!(
        show.contains(&reported["sessions"].to_string()),
        "devices show names the exact count: {show}"
    );
}
