//! 2FA-freshness rule end to end: real collector and agents on loopback,
//! a directory and sign-in logs imported through the CLI, two-step
//! sign-ins reported by an agent.

use std::time::Duration;

use hallmonitor_e2e::fixtures::*;
use hallmonitor_e2e::{Agent, CollectorData, Value, text, wait_for};
use hallmonitor_proto::v1;

const WAIT: Duration = Duration::from_secs(60);

fn ago(days: i64) -> jiff::Timestamp {
    jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * days)
}

fn wire(t: jiff::Timestamp) -> hallmonitor_proto::Timestamp {
    hallmonitor_proto::Timestamp {
        seconds: t.as_second(),
        nanos: 0,
    }
}

fn session(id: &str, account: &str, uid: u32, days_ago: i64) -> v1::event::Body {
    let start = ago(days_ago);
    v1::event::Body::Session(v1::SessionEvent {
        phase: v1::session_event::Phase::End as i32,
        session_id: id.into(),
        account: account.into(),
        uid,
        kind: v1::session_event::Kind::Graphical as i32,
        started_at: Some(wire(start)),
        ended_at: Some(wire(start + jiff::SignedDuration::from_hours(2))),
        active_secs: 7200,
        ..Default::default()
    })
}

fn pairs(data: &CollectorData) -> Vec<Value> {
    let output = data.cli(&["mfa", "list", "--format", "json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    json(&output)["pairs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn pair(data: &CollectorData, device: &str, account: &str) -> Option<Value> {
    pairs(data)
        .into_iter()
        .find(|p| p["device_id"] == device && p["account"] == account)
}

#[test]
fn a_teacher_on_three_devices_with_two_step_sign_in_on_one() {
    let data = CollectorData::init("Cabot");
    data.set_config("evaluate_every_secs", "1");
    let collector = data.start();
    let root = tempfile::tempdir().unwrap();

    let directory = root.path().join("mis.csv");
    std::fs::write(
        &directory,
        "Username,Role,Email,Display Name\nj.smith,Teacher,J.Smith@cabot.sch.uk,Jane Smith\npupil1,Student,,Pupil One\n",
    )
    .unwrap();
    let imported = data.cli(&[
        "directory",
        "import",
        "--site",
        "Cabot",
        directory.to_str().unwrap(),
    ]);
    assert!(imported.status.success(), "{}", text(&imported.stderr));
    assert!(
        text(&imported.stdout).contains("2 accounts (1 staff, 1 pupils)"),
        "{}",
        text(&imported.stdout)
    );

    // A broken re-import is refused whole, naming line and column, and the
    // directory stays as it was.
    let broken = root.path().join("broken.csv");
    std::fs::write(&broken, "Username,Role\nj.smith,Teacher\nx,caretaker\n").unwrap();
    let refused = data.cli(&[
        "directory",
        "import",
        "--site",
        "Cabot",
        broken.to_str().unwrap(),
    ]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        text(&refused.stderr).contains("line 3, column 2 (Role): 'caretaker'"),
        "{}",
        text(&refused.stderr)
    );
    let listed = json(&data.cli(&["directory", "list", "--site", "Cabot", "--format", "json"]));
    assert_eq!(listed["accounts"].as_array().unwrap().len(), 2);

    // Three devices the teacher used in the last 45 days; a pupil and an
    // account missing from the directory used them too.
    let agents: Vec<Agent> = (1..=3)
        .map(|n| Agent::new(&data.agent_settings(&collector, &format!("e2e-mfa-{n}"))))
        .collect();
    let ids: Vec<String> = agents.iter().map(Agent::enroll).collect();
    for (n, agent) in agents.iter().enumerate() {
        queue(
            &agent.data,
            vec![
                (ago(10), session(&format!("t{n}"), "j.smith", 1001, 10)),
                (ago(9), session(&format!("p{n}"), "pupil1", 1002, 9)),
                (ago(8), session(&format!("v{n}"), "visitor", 1003, 8)),
            ],
        );
    }
    let _daemons: Vec<_> = agents.iter().map(Agent::start).collect();
    for id in &ids {
        wait_for("the teacher's pairs to be evaluated", WAIT, || {
            pair(&data, id, "j.smith")
        });
    }
    assert!(
        pairs(&data).iter().all(|p| p["account"] == "j.smith"),
        "pupils and unknown accounts are never checked"
    );
    assert!(
        pairs(&data).iter().all(|p| p["status"] == "stale"),
        "never completed: stale"
    );

    // The identity provider's log: a two-step sign-in on the first device
    // (matched by device id), one on a machine we do not know, a
    // single-factor and a failed one.
    let log = root.path().join("signins.csv");
    std::fs::write(
        &log,
        format!(
            "Date (UTC),Request ID,User,Username,Status,Authentication requirement,Device ID,Device\n\
             {},r1,Jane Smith,J.Smith@cabot.sch.uk,Success,Multifactor authentication,{},\n\
             {},r2,Jane Smith,J.Smith@cabot.sch.uk,Success,Multifactor authentication,,HOME-PC\n\
             {},r3,Jane Smith,J.Smith@cabot.sch.uk,Success,Single-factor authentication,{},\n\
             {},r4,Jane Smith,J.Smith@cabot.sch.uk,Failure,Multifactor authentication,{},\n",
            ago(3), ids[0], ago(3), ago(1), ids[1], ago(1), ids[2]
        ),
    )
    .unwrap();
    let import = |expect_new: &str| {
        let output = data.cli(&[
            "signins",
            "import",
            "--site",
            "Cabot",
            "--format",
            "entra-csv",
            log.to_str().unwrap(),
        ]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        let out = text(&output.stdout);
        assert!(out.contains("4 rows: 1 two-step sign-ins matched a device, 1 matched none, 1 not successful, 1 without a second factor"), "{out}");
        assert!(
            out.contains("line 3: j.smith@cabot.sch.uk on 'HOME-PC'"),
            "{out}"
        );
        assert!(out.contains(expect_new), "{out}");
    };
    import("2 new, 0 already held");
    import("0 new, 2 already held");

    let first = pair(&data, &ids[0], "j.smith").unwrap();
    assert_eq!(first["status"], "fresh");
    assert_eq!(pair(&data, &ids[1], "j.smith").unwrap()["status"], "stale");
    let check = data.cli(&[
        "compliance",
        "check",
        "--device",
        &ids[1],
        "--format",
        "json",
    ]);
    assert_eq!(check.status.code(), Some(1), "a stale pair fails the check");
    assert_eq!(json(&check)["devices"][0]["mfa"][0]["status"], "stale");
    let flags = json(&data.cli(&["flags", "list", "--format", "json"]));
    let stale_flags: Vec<&Value> = flags["flags"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "mfa_stale" && f["state"] == "open")
        .collect();
    assert_eq!(stale_flags.len(), 2, "one per stale pair: {flags}");

    // The third device's agent saw a two-step sign-in in its auth log 40
    // days ago: due soon, a reminder queued, its flag resolved.
    queue(
        &agents[2].data,
        vec![(
            ago(40),
            v1::event::Body::Mfa(v1::MfaCompletion {
                account: "j.smith".into(),
                method: "pam_google_authenticator".into(),
                source: "/var/log/auth.log:12".into(),
            }),
        )],
    );
    let third = wait_for("the agent's evidence to count", WAIT, || {
        pair(&data, &ids[2], "j.smith").filter(|p| p["status"] != "stale")
    });
    assert_eq!(third["status"], "due_soon");
    let due = json(&data.cli(&["mfa", "list", "--status", "due_soon", "--format", "json"]));
    assert_eq!(due["pairs"].as_array().unwrap().len(), 1);
    let flags = json(&data.cli(&["flags", "list", "--device", &ids[2], "--format", "json"]));
    assert_eq!(flags["flags"][0]["state"], "dismissed", "{flags}");
}

#[test]
fn the_agent_follows_its_auth_log_through_rotation_and_its_pam_hook() {
    let data = CollectorData::init("Cabot");
    data.set_config("evaluate_every_secs", "1");
    let config = data.data.join("collector.toml");
    let toml = std::fs::read_to_string(&config).unwrap();
    assert!(toml.contains("staff_accounts = []"));
    std::fs::write(
        &config,
        toml.replace("staff_accounts = []", "staff_accounts = [\"*.staff\"]"),
    )
    .unwrap();
    let collector = data.start();
    let root = tempfile::tempdir().unwrap();
    let log = root.path().join("auth.log");
    let accepted = |user: &str| {
        format!(
            "Nov 20 08:01:02 lab-07 sshd(pam_google_authenticator)[12366]: Accepted google_authenticator for {user}\n"
        )
    };
    // What any account can write to the system log: `logger` with its
    // default tag (the account's name), the hook's text under any tag, and
    // text sshd copies from a client (an invalid user name).
    let forged = [
        "Nov 20 08:00:00 lab-07 pupil1: hallmonitor-mfa: pam_u2f accepted for e.staff\n",
        "Nov 20 08:00:01 lab-07 hallmonitor-mfa: pam_u2f accepted for e.staff\n",
        "Nov 20 08:00:02 lab-07 sshd[12300]: Invalid user hallmonitor-mfa: pam_u2f accepted for e.staff from 10.0.2.2 port 4 ssh2\n",
        "Nov 20 08:00:03 lab-07 pupil1: sshd(pam_google_authenticator)[12366]: Accepted google_authenticator for e.staff\n",
    ]
    .concat();
    std::fs::write(&log, format!("{forged}{}Nov 20 08:01:09 lab-07 sshd(pam_google_authenticator)[12367]: Invalid verification code for b.staff\n", accepted("a.staff"))).unwrap();
    let agent = Agent::with_config(
        &data.agent_settings(&collector, "e2e-mfa-log"),
        "",
        &format!(
            // The text log, even where journald runs.
            "[mfa]\nsource = \"files\"\nauth_logs = [\"{}\"]\npoll_secs = 1\n",
            log.display()
        ),
    );
    let id = agent.enroll();
    staff_used_the_device(&agent);
    let _daemon = agent.start();
    let status =
        |account: &str| pair(&data, &id, account).map(|p| p["status"].as_str().unwrap().to_owned());
    wait_for("a.staff fresh from the auth log", WAIT, || {
        (status("a.staff")? == "fresh").then_some(())
    });
    assert_eq!(
        status("b.staff").as_deref(),
        Some("stale"),
        "an invalid code is not a completion"
    );
    assert_eq!(
        status("e.staff").as_deref(),
        Some("stale"),
        "lines other programs wrote are not completions"
    );

    // logrotate: one more line in the old file, renamed, a new file.
    let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut file, accepted("b.staff").as_bytes()).unwrap();
    drop(file);
    std::fs::rename(&log, root.path().join("auth.log.1")).unwrap();
    std::fs::write(&log, accepted("c.staff")).unwrap();
    wait_for("both sides of the rotation to count", WAIT, || {
        (status("b.staff")? == "fresh" && status("c.staff")? == "fresh").then_some(())
    });

    // A module that does not log its success goes through the PAM hook.
    let hook = agent.cli(&["mfa-hook", "--method", "pam_u2f", "--user", "d.staff"]);
    assert!(hook.status.success(), "{}", text(&hook.stderr));
    queue(
        &agent.data,
        vec![(ago(1), session("s9", "d.staff", 1009, 1))],
    );
    wait_for("the hook's completion to count", WAIT, || {
        (status("d.staff")? == "fresh").then_some(())
    });

    // Every completion arrived once.
    let mfa_events = runtime().block_on(async {
        let store =
            hallmonitor_collector::store::SqliteStore::open(&data.data.join("collector.db"), false)
                .await
                .unwrap();
        let kinds = hallmonitor_collector::store::IngestStore::event_kinds(
            &store,
            &hallmonitor_collector::model::DeviceId::from_string(id.clone()),
        )
        .await
        .unwrap();
        store.close().await;
        kinds.into_iter().filter(|(_, k)| k == "mfa").count()
    });
    assert_eq!(mfa_events, 4);
}

/// A stand-in for journalctl in `dir`: prints the lines of
/// `dir/entries.json` after `--after-cursor` (all without one, the last N
/// with `-n N`). Run through `sh` (a file just written can be busy).
fn stand_in_journalctl(dir: &std::path::Path) -> Vec<String> {
    let script = dir.join("journalctl");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
entries={}
after=
count=
while [ $# -gt 0 ]; do
  case "$1" in
    --after-cursor=*) after="${{1#--after-cursor=}}" ;;
    -n) count="$2"; shift ;;
  esac
  shift
done
touch "$entries"
if [ -n "$count" ]; then tail -n "$count" "$entries"; exit 0; fi
if [ -z "$after" ]; then cat "$entries"; exit 0; fi
grep -q "\"__CURSOR\":\"$after\"" "$entries" || exit 1
awk -v c="\"__CURSOR\":\"$after\"" 'seen {{ print }} index($0, c) {{ seen = 1 }}' "$entries"
"#,
            dir.join("entries.json").display()
        ),
    )
    .unwrap();
    vec!["sh".into(), script.display().to_string()]
}

#[test]
fn from_the_journal_only_roots_entries_count_and_the_text_log_is_not_read() {
    let data = CollectorData::init("Cabot");
    data.set_config("evaluate_every_secs", "1");
    let config = data.data.join("collector.toml");
    let toml = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        toml.replace("staff_accounts = []", "staff_accounts = [\"*.staff\"]"),
    )
    .unwrap();
    let collector = data.start();
    let root = tempfile::tempdir().unwrap();
    let journalctl = stand_in_journalctl(root.path());
    let entries = root.path().join("entries.json");
    let log = root.path().join("auth.log");
    let module = "sshd(pam_google_authenticator)";
    let entry = |uid: &str, account: &str, cursor: &str| {
        format!(
            "{}\n",
            serde_json::json!({
                "__CURSOR": cursor,
                "__REALTIME_TIMESTAMP": (ago(1).as_microsecond()).to_string(),
                "_UID": uid,
                "SYSLOG_IDENTIFIER": module,
                "MESSAGE": format!("Accepted google_authenticator for {account}"),
            })
        )
    };
    // `logger -t 'sshd(pam_google_authenticator)'` by a pupil: a text line
    // no header check can tell apart, and a journal entry of the pupil's uid.
    let forged = format!(
        "Nov 20 08:00:00 lab-07 {module}[12366]: Accepted google_authenticator for e.staff\n"
    );
    std::fs::write(&log, &forged).unwrap();
    std::fs::write(
        &entries,
        format!(
            "{}{}",
            entry("0", "a.staff", "c1"),
            entry("1001", "e.staff", "c2")
        ),
    )
    .unwrap();
    let agent = Agent::with_config(
        &data.agent_settings(&collector, "e2e-mfa-journal"),
        "",
        &format!(
            "[mfa]\nsource = \"journal\"\njournalctl = {}\nauth_logs = [\"{}\"]\npoll_secs = 1\n",
            serde_json::to_string(&journalctl).unwrap(),
            log.display()
        ),
    );
    let id = agent.enroll();
    staff_used_the_device(&agent);
    let mut daemon = agent.start();
    let status =
        |account: &str| pair(&data, &id, account).map(|p| p["status"].as_str().unwrap().to_owned());
    wait_for("a.staff fresh from the journal", WAIT, || {
        (status("a.staff")? == "fresh").then_some(())
    });
    // A later root entry counts; one more forged line counts nowhere.
    let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut file, forged.as_bytes()).unwrap();
    drop(file);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&entries)
        .unwrap();
    std::io::Write::write_all(&mut file, entry("0", "b.staff", "c3").as_bytes()).unwrap();
    drop(file);
    wait_for("b.staff fresh from the journal", WAIT, || {
        (status("b.staff")? == "fresh").then_some(())
    });
    assert_eq!(
        status("e.staff").as_deref(),
        Some("stale"),
        "a forged line counts neither from the text log nor from the journal"
    );
    // A restart goes on from the stored cursor: by the time a later entry
    // counts, anything read again would have arrived before it.
    daemon.stop();
    let _daemon = agent.start();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&entries)
        .unwrap();
    std::io::Write::write_all(&mut file, entry("0", "c.staff", "c4").as_bytes()).unwrap();
    drop(file);
    wait_for("c.staff fresh after the restart", WAIT, || {
        (status("c.staff")? == "fresh").then_some(())
    });
    let mfa_events = || {
        runtime().block_on(async {
            let store = hallmonitor_collector::store::SqliteStore::open(
                &data.data.join("collector.db"),
                false,
            )
            .await
            .unwrap();
            let kinds = hallmonitor_collector::store::IngestStore::event_kinds(
                &store,
                &hallmonitor_collector::model::DeviceId::from_string(id.clone()),
            )
            .await
            .unwrap();
            store.close().await;
            kinds.into_iter().filter(|(_, k)| k == "mfa").count()
        })
    };
    assert_eq!(mfa_events(), 3);
}

/// POSTs JSON to the collector's API with curl, trusting only its CA.
fn post(data: &CollectorData, api: std::net::SocketAddr, token: &str, body: &str) -> (u16, Value) {
    let output = std::process::Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--max-time",
            "20",
            "--write-out",
            "\n%{http_code}",
        ])
        .arg("--cacert")
        .arg(data.data.join("pki/ca.crt"))
        .args([
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/json",
        ])
        .args(["--data-binary", body])
        .arg(format!(
            "https://localhost:{}/api/v1/mfa-completions",
            api.port()
        ))
        .output()
        .expect("curl runs");
    let out = text(&output.stdout);
    let (json_part, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    assert!(output.status.success(), "curl: {}", text(&output.stderr));
    (
        code.trim().parse().unwrap(),
        serde_json::from_str(json_part).unwrap_or(Value::Null),
    )
}

#[test]
fn identity_providers_post_completions_with_a_site_token() {
    let data = CollectorData::init("Cabot");
    data.set_config("evaluate_every_secs", "1");
    let collector = data.start();
    let root = tempfile::tempdir().unwrap();
    let directory = root.path().join("mis.csv");
    std::fs::write(
        &directory,
        "username,role,email\nj.smith,staff,j.smith@cabot.sch.uk\n",
    )
    .unwrap();
    assert!(
        data.cli(&[
            "directory",
            "import",
            "--site",
            "Cabot",
            directory.to_str().unwrap()
        ])
        .status
        .success()
    );
    let agent = Agent::new(&data.agent_settings(&collector, "e2e-mfa-api"));
    let id = agent.enroll();
    queue(
        &agent.data,
        vec![(ago(2), session("s1", "j.smith", 1001, 2))],
    );
    let _daemon = agent.start();
    wait_for("the pair to be evaluated", WAIT, || {
        pair(&data, &id, "j.smith")
    });

    let created = data.cli(&[
        "api-token",
        "create",
        "--site",
        "Cabot",
        "--role",
        "technician",
        "--label",
        "Okta bridge",
    ]);
    assert!(created.status.success(), "{}", text(&created.stderr));
    let token = text(&created.stdout).trim().to_owned();

    let body = format!(
        r#"{{"completions": [{{"id": "okta-1", "account": "J.Smith@cabot.sch.uk", "completed_at": "{}", "method": "okta_verify", "device_id": "{id}"}}]}}"#,
        ago(1)
            .to_zoned(jiff::tz::TimeZone::fixed(jiff::tz::offset(-5)))
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
    );
    assert_eq!(post(&data, collector.api, "not-a-token", &body).0, 401);
    let (code, bad) = post(
        &data,
        collector.api,
        &token,
        r#"{"completions": [{"account": "x", "completed_at": "yesterday"}]}"#,
    );
    assert_eq!(code, 400);
    assert!(
        bad["error"]
            .as_str()
            .unwrap()
            .contains("completions[0].completed_at"),
        "{bad}"
    );
    // A completion a day ahead of the collector's clock would keep the
    // pair fresh for 45 days from then: refused, naming the field.
    let tomorrow = ago(-1).strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let (code, future) = post(
        &data,
        collector.api,
        &token,
        &format!(
            r#"{{"completions": [{{"account": "j.smith@cabot.sch.uk", "completed_at": "{tomorrow}", "device_id": "{id}"}}]}}"#
        ),
    );
    assert_eq!(code, 400, "{future}");
    let message = future["error"].as_str().unwrap();
    assert!(
        message.starts_with("completions[0].completed_at: ") && message.contains("in the future"),
        "{future}"
    );
    assert_eq!(
        pair(&data, &id, "j.smith").unwrap()["status"],
        "stale",
        "a refused request stores nothing"
    );

    let (code, answer) = post(&data, collector.api, &token, &body);
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["new"], 1);
    assert_eq!(answer["mapped"], 1);
    assert_eq!(pair(&data, &id, "j.smith").unwrap()["status"], "fresh");
    let (_, again) = post(&data, collector.api, &token, &body);
    assert_eq!(again["new"], 0, "the same id twice is stored once");

    let list = json(&data.cli(&["api-token", "list", "--format", "json"]));
    let token_id = list["tokens"][0]["id"].to_string();
    assert!(list["tokens"][0]["last_used_at"].is_string());
    assert!(
        data.cli(&["api-token", "revoke", "--site", "Cabot", &token_id])
            .status
            .success()
    );
    assert_eq!(post(&data, collector.api, &token, &body).0, 401, "revoked");
}

#[test]
fn a_staff_login_with_stale_two_step_sign_in_is_told_and_locked_where_the_site_says() {
    let data = CollectorData::init("Cabot");
    data.set_config("evaluate_every_secs", "1");
    let config = data.data.join("collector.toml");
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str("\n[sites.\"Cabot\".mfa]\nlock_stale_sessions = true\n");
    std::fs::write(&config, toml).unwrap();
    let collector = data.start();
    let root = tempfile::tempdir().unwrap();
    let directory = root.path().join("mis.csv");
    std::fs::write(&directory, "username,role\nj.smith,staff\npupil1,pupil\n").unwrap();
    assert!(
        data.cli(&[
            "directory",
            "import",
            "--site",
            "Cabot",
            directory.to_str().unwrap()
        ])
        .status
        .success()
    );

    let (utmp, notified, locked) = (
        root.path().join("utmp"),
        root.path().join("notified"),
        root.path().join("locked"),
    );
    let extra = format!(
        "[sessions]\nsource = \"utmp\"\nutmp_path = \"{}\"\npoll_secs = 1\n\
         [enforcement]\nlock_session_command = [\"sh\", \"-c\", \"echo \\\"$1\\\" >> {}\", \"lock\"]\n\
         [mfa]\nauth_logs = []\nnotify_command = [\"sh\", \"-c\", \"echo \\\"$1\\\" >> {}\", \"notify\", \"{{account}}\"]\n",
        utmp.display(),
        locked.display(),
        notified.display()
    );
    let agent = Agent::with_config(
        &data.agent_settings(&collector, "e2e-mfa-login"),
        "",
        &extra,
    );
    let id = agent.enroll();
    queue(
        &agent.data,
        vec![(ago(3), session("old", "j.smith", 1001, 3))],
    );
    let _daemon = agent.start();
    wait_for("the agent to know the pair is stale", WAIT, || {
        let output = agent.cli(&["check", "--format", "json"]);
        let report = serde_json::from_slice::<Value>(&output.stdout).ok()?;
        (report["devices"][0]["mfa"][0]["status"] == "stale").then_some(())
    });
    assert_eq!(pair(&data, &id, "j.smith").unwrap()["status"], "stale");

    // The teacher and a pupil log in.
    let now = jiff::Timestamp::now().as_second();
    let mut records = utmp_record(":0", "j.smith", ":0", now);
    records.extend(utmp_record("tty2", "pupil1", "", now));
    std::fs::write(&utmp, records).unwrap();
    wait_for(
        "the teacher to be told and the session locked",
        WAIT,
        || {
            let told = std::fs::read_to_string(&notified).ok()?;
            let locks = std::fs::read_to_string(&locked).ok()?;
            (told.trim() == "j.smith" && locks.trim() == ":0").then_some(())
        },
    );
}

/// Four staff accounts (by the site's pattern) used the device two days
/// ago: sessions queued in its outbox before the daemon starts.
fn staff_used_the_device(agent: &Agent) {
    queue(
        &agent.data,
        ["a.staff", "b.staff", "c.staff", "e.staff"]
            .iter()
            .enumerate()
            .map(|(n, a)| (ago(2), session(&format!("s{n}"), a, 1001 + n as u32, 2)))
            .collect(),
    );
}
