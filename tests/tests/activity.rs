//! Device-activity rule end to end: real collector and agent processes on
//! loopback, sessions read by the agent from a utmp file, flags driven
//! through the CLI, the disable command carried out by the agent.

use std::time::Duration;

use hallmonitor_e2e::fixtures::*;
use hallmonitor_e2e::{Agent, CollectorData, Value, cli_actor, text, wait_for};
use hallmonitor_proto::v1;

const WAIT: Duration = Duration::from_secs(60);

fn flags_of(data: &CollectorData, device: &str) -> Vec<Value> {
    let output = data.cli(&["flags", "list", "--device", device, "--format", "json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    json(&output)["flags"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn collector_for_rules() -> CollectorData {
    let data = CollectorData::init("Cabot");
    data.set_config("evaluate_every_secs", "1");
    data
}

#[test]
fn inactive_device_is_flagged_disabled_by_approval_and_reenabled() {
    let data = collector_for_rules();
    let collector = data.start();
    let root = tempfile::tempdir().unwrap();
    let utmp = root.path().join("utmp");
    let locked = root.path().join("locked");
    // A pupil is logged in on the display, an administrator on tty1.
    let now = jiff::Timestamp::now().as_second();
    let mut records = utmp_record(":0", "pupil1", ":0", now);
    records.extend(utmp_record("tty1", "root", "", now));
    std::fs::write(&utmp, records).unwrap();
    let extra = format!(
        "[sessions]\nsource = \"utmp\"\nutmp_path = \"{}\"\npoll_secs = 1\n\
         [enforcement]\nadmin_accounts = [\"root\", \"itadmin\"]\n\
         lock_session_command = [\"sh\", \"-c\", \"echo \\\"$1\\\" >> {}\", \"lock\"]\n",
        utmp.display(),
        locked.display()
    );
    let agent = Agent::with_config(
        &data.agent_settings(&collector, "e2e-activity-1"),
        "",
        &extra,
    );
    let id = agent.enroll();
    enrolled_days_ago(&data, &id, 60);
    let mut daemon = agent.start();

    // Seconds of use in 28 days: non-compliant, one flag however many
    // evaluations run.
    let flag = wait_for("a device_inactive flag", WAIT, || {
        flags_of(&data, &id)
            .into_iter()
            .find(|f| f["kind"] == "device_inactive")
    });
    assert_eq!(flag["state"], "open");
    let flag_id = flag["id"].as_i64().unwrap().to_string();
    let check = data.cli(&["compliance", "check", "--device", &id, "--format", "json"]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check.stderr));
    let report = json(&check);
    assert_eq!(report["schema"], "hallmonitor.compliance.v1");
    assert_eq!(report["devices"][0]["activity"]["status"], "non_compliant");
    wait_for("evaluations to repeat", WAIT, || {
        let evaluated =
            json(&data.cli(&["compliance", "check", "--device", &id, "--format", "json"]));
        (evaluated["as_of"] != report["as_of"]).then_some(())
    });
    assert_eq!(
        flags_of(&data, &id).len(),
        1,
        "one flag, not one per evaluation"
    );

    // The agent reports the same verdict to local scripts.
    let local = wait_for("the agent to hold the collector's verdict", WAIT, || {
        let output = agent.cli(&["check", "--format", "json"]);
        (output.status.code() == Some(1)).then(|| json(&output))
    });
    assert_eq!(local["devices"][0]["device_id"], id.as_str());

    // A technician approves: the agent locks the pupil's session, refuses
    // new pupil logins, keeps administrators able to log in, confirms.
    let approve = data.cli(&["flags", "approve", &flag_id, "--by", "tech1"]);
    assert!(approve.status.success(), "{}", text(&approve.stderr));
    // In the audit log too, as the console and the API record it.
    let audited: Vec<String> = runtime().block_on(async {
        let pool = sqlx::SqlitePool::connect_with(
            sqlx::sqlite::SqliteConnectOptions::new().filename(data.data.join("collector.db")),
        )
        .await
        .unwrap();
        let rows = sqlx::query_scalar("SELECT actor FROM audit_log WHERE action = 'flag_approved'")
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        rows
    });
    assert_eq!(audited, [cli_actor("tech1")]);
    wait_for("the agent to confirm the disable", WAIT, || {
        (flags_of(&data, &id)[0]["state"] == "disabled").then_some(())
    });
    assert_eq!(data.device(&id)["enforcement"], "disabled");
    assert_eq!(
        agent
            .cli(&["login-allowed", "--user", "pupil1"])
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        agent
            .cli(&["login-allowed", "--user", "itadmin"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        agent
            .cli(&["login-allowed", "--user", "root"])
            .status
            .code(),
        Some(0)
    );
    let locked_sessions = std::fs::read_to_string(&locked).unwrap_or_default();
    assert_eq!(
        locked_sessions.trim(),
        ":0",
        "only the pupil's session is locked"
    );

    // The disabled state survives the agent stopping (a reboot).
    assert_eq!(daemon.stop(), Some(0));
    assert_eq!(
        agent
            .cli(&["login-allowed", "--user", "pupil1"])
            .status
            .code(),
        Some(1)
    );
    let _daemon = agent.start();

    // Re-enabled: logins allowed again, a new grace period starts.
    let reenable = data.cli(&[
        "flags",
        "reenable",
        &flag_id,
        "--reason",
        "pupil returned the laptop",
        "--by",
        "tech1",
    ]);
    assert!(reenable.status.success(), "{}", text(&reenable.stderr));
    wait_for("the agent to lift the disable", WAIT, || {
        (data.device(&id)["enforcement"] == "enabled").then_some(())
    });
    assert_eq!(
        agent
            .cli(&["login-allowed", "--user", "pupil1"])
            .status
            .code(),
        Some(0)
    );
    let check = data.cli(&["compliance", "check", "--device", &id, "--format", "json"]);
    assert_eq!(check.status.code(), Some(0));
    assert_eq!(json(&check)["devices"][0]["activity"]["status"], "grace");

    // The audit trail: who, when, why.
    let show = json(&data.cli(&["flags", "show", &flag_id, "--format", "json"]));
    let trail: Vec<(String, String)> = show["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["actor"].as_str().unwrap().to_owned(),
                t["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        trail,
        [
            ("rules".to_string(), "open".to_string()),
            (cli_actor("tech1"), "disable_approved".into()),
            (format!("agent:{id}"), "disabled".into()),
            (cli_actor("tech1"), "reenabled".into()),
        ]
    );
    assert_eq!(show["history"][3]["reason"], "pupil returned the laptop");
    // A closed flag cannot be approved again.
    let again = data.cli(&["flags", "approve", &flag_id]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        text(&again.stderr).contains("reenabled"),
        "{}",
        text(&again.stderr)
    );
}

fn at(days_ago: i64, hour: i64) -> hallmonitor_proto::Timestamp {
    let t = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * days_ago)
        + jiff::SignedDuration::from_hours(hour);
    hallmonitor_proto::Timestamp {
        seconds: t.as_second(),
        nanos: 0,
    }
}

fn session(id: &str, account: &str, uid: u32, start: (i64, i64), minutes: i64) -> v1::event::Body {
    let started = at(start.0, start.1);
    v1::event::Body::Session(v1::SessionEvent {
        phase: v1::session_event::Phase::End as i32,
        session_id: id.into(),
        account: account.into(),
        uid,
        kind: v1::session_event::Kind::Graphical as i32,
        seat: "seat0".into(),
        started_at: Some(started),
        ended_at: Some(hallmonitor_proto::Timestamp {
            seconds: started.seconds + minutes * 60,
            nanos: 0,
        }),
        active_secs: (minutes * 60) as u64,
    })
}

#[test]
fn sessions_queued_offline_for_weeks_count_on_the_days_they_happened() {
    let data = collector_for_rules();
    let collector = data.start();
    let agent = Agent::with_config(
        &data.agent_settings(&collector, "e2e-activity-2"),
        "",
        "[sessions]\nsource = \"utmp\"\nutmp_path = \"/nonexistent/utmp\"\n",
    );
    let id = agent.enroll();
    enrolled_days_ago(&data, &id, 60);
    let flag = wait_for("the idle device to be flagged", WAIT, || {
        flags_of(&data, &id)
            .into_iter()
            .find(|f| f["state"] == "open")
    });

    // Three weeks away: sessions made then reach the collector only now.
    // Two accounts overlap (counted once); a system account does not count.
    queue_now(
        &agent.data,
        vec![
            session("s1", "pupil1", 1001, (20, 9), 40),
            session("s2", "pupil2", 1002, (20, 9), 40), // same 40 minutes
            session("s3", "pupil1", 1001, (18, 13), 30),
            session("s4", "gdm", 120, (19, 8), 300),
        ],
    );
    let _daemon = agent.start();
    let resolved = wait_for("the late sessions to resolve the flag", WAIT, || {
        let f = flags_of(&data, &id)
            .into_iter()
            .find(|f| f["id"] == flag["id"])?;
        (f["state"] == "dismissed").then_some(f)
    });
    let history = json(&data.cli(&[
        "flags",
        "show",
        &resolved["id"].to_string(),
        "--format",
        "json",
    ]));
    assert_eq!(history["history"][1]["actor"], "rules");
    assert!(
        history["history"][1]["reason"]
            .as_str()
            .unwrap()
            .contains("compliant again: 70 min"),
        "{history}"
    );

    let report = json(&data.cli(&["compliance", "check", "--device", &id, "--format", "json"]));
    let activity = &report["devices"][0]["activity"];
    assert_eq!(
        activity["used_minutes"], 70,
        "overlap once, system account never"
    );
    assert_eq!(activity["status"], "compliant");
    // As of 19 days ago only the first day's 40 minutes existed.
    let then = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * 19)).to_string();
    let past = data.cli(&[
        "compliance",
        "check",
        "--device",
        &id,
        "--as-of",
        &then,
        "--format",
        "json",
    ]);
    assert_eq!(past.status.code(), Some(1));
    assert_eq!(json(&past)["devices"][0]["activity"]["used_minutes"], 40);
    // The whole site, as a table for people.
    let table = data.cli(&["compliance", "check", "--site", "Cabot"]);
    assert_eq!(table.status.code(), Some(0), "{}", text(&table.stdout));
    assert!(
        text(&table.stdout).contains("70/60 min in 28 d"),
        "{}",
        text(&table.stdout)
    );
}
