//! Text from devices is hostile: a device that enrols with a 100,000-
//! character hostname full of terminal escape sequences is stored bounded
//! and clean, and the CLI's human output stays safe (documented exit codes,
//! no raw control characters) even for a row stored raw before ingest
//! bounded it.

use std::time::Duration;

use hallmonitor_agent::config::AgentConfig;
use hallmonitor_e2e::fixtures::*;
use hallmonitor_e2e::{Agent, CollectorData, Value, text, wait_for};
use hallmonitor_proto::v1;

const WAIT: Duration = Duration::from_secs(60);
const ESC: u8 = 0x1b;

/// Sets the terminal's title, clears the screen, then 100,000 characters.
fn hostile_hostname() -> String {
    format!("\u{1b}]0;owned\u{7}\u{1b}[2J{}", "h".repeat(100_000))
}

/// Enrols with the agent's own code, its facts saying what we choose.
fn enrol_with_hostname(agent: &Agent, hostname: &str) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    runtime().block_on(async {
        let config = AgentConfig::load(Some(&agent.config), &Vec::new()).expect("agent.toml");
        let mut facts = hallmonitor_agent::facts::collect_for(&config).await;
        facts.hostname = hostname.to_owned();
        facts.os_name = "Linux\u{1b}[31m".into();
        hallmonitor_agent::enroll::enroll(&config, facts)
            .await
            .expect("enrolment")
            .device_id
    })
}

/// Writes a hostname into the collector's store as it is, the way rows
/// stored before ingest bounded facts can hold one.
fn store_raw_hostname(data: &CollectorData, device: &str, hostname: &str) {
    runtime().block_on(async {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(data.data.join("collector.db"))
            .busy_timeout(Duration::from_secs(10));
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        sqlx::query(
            "UPDATE devices SET hostname = ?1, \
             facts_json = json_set(facts_json, '$.hostname', ?1, '$.os_name', ?2) WHERE id = ?3",
        )
        .bind(hostname)
        .bind("Linux\u{1b}[31m\u{9b}")
        .bind(device)
        .execute(&pool)
        .await
        .expect("writing the raw hostname");
        pool.close().await;
    });
}

fn session_long_ago() -> v1::event::Body {
    let start = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * 40);
    let wire = |t: jiff::Timestamp| hallmonitor_proto::Timestamp {
        seconds: t.as_second(),
        nanos: 0,
    };
    v1::event::Body::Session(v1::SessionEvent {
        phase: v1::session_event::Phase::End as i32,
        session_id: "old".into(),
        account: "pupil1".into(),
        uid: 1001,
        kind: v1::session_event::Kind::Graphical as i32,
        started_at: Some(wire(start)),
        ended_at: Some(wire(start + jiff::SignedDuration::from_mins(5))),
        active_secs: 300,
        ..Default::default()
    })
}

/// Runs the read commands a technician uses, in table form, and checks
/// each exits with its documented code and prints no raw escape.
fn read_commands_are_safe(data: &CollectorData, device: &str, flag: &str, when: &str) {
    let commands: [(&[&str], i32); 5] = [
        (&["devices", "list"], 0),
        (&["devices", "show", device], 0),
        (&["flags", "list"], 0),
        (&["flags", "show", flag], 0),
        // Exit 1: the device is not compliant.
        (&["compliance", "check"], 1),
    ];
    for (args, code) in commands {
        let output = data.cli(args);
        let shown = text(&output.stdout);
        assert_eq!(
            output.status.code(),
            Some(code),
            "{when}: {args:?}: {}",
            text(&output.stderr)
        );
        assert!(
            !output.stdout.contains(&ESC) && !output.stderr.contains(&ESC),
            "{when}: {args:?} printed a raw escape"
        );
        assert!(
            shown.contains("\\u{1b}]0;owned\\u{7}\\u{1b}[2Jhhh"),
            "{when}: {args:?} shows the hostname's escapes visibly:\n{shown}"
        );
        assert!(
            shown.lines().all(|l| l.chars().count() < 2_000),
            "{when}: {args:?}: lines are bounded"
        );
    }
}

#[test]
fn a_hostile_hostname_is_bounded_at_enrolment_and_never_breaks_the_cli() {
    let data = CollectorData::init("Cabot");
    data.set_config("evaluate_every_secs", "1");
    let collector = data.start();
    let agent = Agent::new(&data.agent_settings(&collector, "e2e-hostile-1"));
    let hostile = hostile_hostname();
    let id = enrol_with_hostname(&agent, &hostile);

    // Enrolment stored it bounded and clean, and says what was cut.
    let device = data.device(&id);
    let hostname = device["hostname"].as_str().unwrap();
    assert_eq!(hostname.chars().count(), 255, "{hostname}");
    assert!(!hostname.chars().any(char::is_control), "{hostname:?}");
    assert!(hostname.starts_with("\u{fffd}]0;owned\u{fffd}\u{fffd}[2Jhhh"));
    assert_eq!(device["facts"]["hostname"], device["hostname"]);
    assert_eq!(device["facts"]["os_name"], "Linux\u{fffd}[31m");
    assert_eq!(
        device["facts"]["truncated"]["hostname"],
        hostile.chars().count() as u64
    );
    let show = text(&data.cli(&["devices", "show", &id]).stdout);
    assert!(
        show.contains(&format!("hostname (was {})", hostile.chars().count())),
        "{show}"
    );

    // A device_inactive flag, so `flags list` has a row naming the device.
    enrolled_days_ago(&data, &id, 60);
    queue_now(&agent.data, vec![session_long_ago()]);
    let mut daemon = agent.start();
    let flag = wait_for("a device_inactive flag", WAIT, || {
        let output = data.cli(&["flags", "list", "--device", &id, "--format", "json"]);
        json(&output)["flags"]
            .as_array()?
            .iter()
            .find(|f| f["kind"] == "device_inactive")
            .cloned()
    });
    let flag: Value = flag;
    let flag = flag["id"].as_i64().unwrap().to_string();
    // The running agent has sent its real facts since; stop it so they stay
    // as we write them.
    assert_eq!(daemon.stop(), Some(0));

    // A row stored raw (before ingest bounded facts): the table output
    // neither panics on the width nor passes the escapes through.
    store_raw_hostname(&data, &id, &hostile);
    read_commands_are_safe(&data, &id, &flag, "raw row");

    // JSON keeps the value whole, escaped by JSON itself.
    let listed = data.cli(&["devices", "list", "--format", "json"]);
    assert_eq!(listed.status.code(), Some(0));
    assert!(!listed.stdout.contains(&ESC));
    assert_eq!(
        json(&listed)["devices"][0]["hostname"].as_str().unwrap(),
        hostile
    );
}
