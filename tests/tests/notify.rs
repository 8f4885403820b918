//! Notifications end to end: a real SMTP server (Debian's aiosmtpd) and a
//! webhook receiver on loopback, the collector's worker sending to them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hallmonitor_e2e::fixtures::*;
use hallmonitor_e2e::{Agent, CollectorData, Process, Value, text, wait_for};
use hallmonitor_proto::v1;

const WAIT: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// aiosmtpd writing every message it accepts into a Maildir.
struct Smtp {
    process: Process,
    maildir: PathBuf,
}

fn start_smtp(port: u16, maildir: &Path, logs: &Path) -> Smtp {
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let mut command = std::process::Command::new(python);
    command
        .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
        .args(["-c", "aiosmtpd.handlers.Mailbox"])
        .arg(maildir);
    let mut process = Process::spawn("smtp", command, logs);
    wait_for("the SMTP server to listen", WAIT, || {
        if let Some(code) = process.has_exited() {
            panic!(
                "aiosmtpd exited with {code} (is python3-aiosmtpd installed?): {}",
                process.stderr_text()
            );
        }
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    Smtp {
        process,
        maildir: maildir.to_path_buf(),
    }
}

impl Smtp {
    /// (To, Subject, body) of every message received.
    fn messages(&self) -> Vec<(String, String, String)> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        let mut out: Vec<(String, String, String)> = entries
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .map(|raw| {
                let (head, body) = raw.split_once("\n\n").unwrap_or((&raw, ""));
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                        .unwrap_or("")
                        .trim()
                        .to_owned()
                };
                (
                    header("To"),
                    header("Subject"),
                    body.replace("=\n", "").replace("=3D", "="),
                )
            })
            .collect();
        out.sort();
        out
    }

    fn to(&self, address: &str) -> Vec<(String, String)> {
        self.messages()
            .into_iter()
            .filter(|(to, _, _)| to.contains(address))
            .map(|(_, subject, body)| (subject, body))
            .collect()
    }
}

/// A webhook receiver that checks each request's HMAC signature.
struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<(bool, Value)>>>,
}

fn start_receiver(secret: &'static str) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                headers.push(line.trim().to_owned());
            }
            let header = |name: &str| {
                headers
                    .iter()
                    .find_map(|h| {
                        let (k, v) = h.split_once(": ")?;
                        k.eq_ignore_ascii_case(name).then(|| v.to_owned())
                    })
                    .unwrap_or_default()
            };
            let length: usize = header("content-length").parse().unwrap_or(0);
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
            let expected: String = ring::hmac::sign(&key, &body)
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let valid = header("x-hallmonitor-signature") == format!("sha256={expected}");
            let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
            sink.lock().unwrap().push((valid, json));
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    Receiver { addr, received }
}

fn edit_config(data: &CollectorData, edits: &[(&str, String)]) {
    let path = data.data.join("collector.toml");
    let mut toml = std::fs::read_to_string(&path).unwrap();
    for (old, new) in edits {
        assert!(toml.contains(old), "collector.toml has no '{old}'");
        toml = toml.replacen(old, new, 1);
    }
    std::fs::write(&path, toml).unwrap();
}

/// An enrolled device used for five minutes by a pupil, enrolled long ago:
/// the rules flag it inactive.
fn inactive_device(
    data: &CollectorData,
    collector: &hallmonitor_e2e::RunningCollector,
    name: &str,
) -> (Agent, String) {
    let agent = Agent::new(&data.agent_settings(collector, name));
    let id = agent.enroll();
    let start = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(48);
    let wire = |t: jiff::Timestamp| hallmonitor_proto::Timestamp {
        seconds: t.as_second(),
        nanos: 0,
    };
    queue(
        &agent.data,
        vec![(
            start,
            v1::event::Body::Session(v1::SessionEvent {
                phase: v1::session_event::Phase::End as i32,
                session_id: "s1".into(),
                account: "pupil.surname1".into(),
                uid: 1001,
                kind: v1::session_event::Kind::Graphical as i32,
                started_at: Some(wire(start)),
                ended_at: Some(wire(start + jiff::SignedDuration::from_mins(5))),
                ..Default::default()
            }),
        )],
    );
    enrolled_days_ago(data, &id, 60);
    (agent, id)
}

#[test]
fn flags_reach_the_right_people_once_by_email_webhook_and_digest() {
    let data = CollectorData::init("Cabot");
    let root = tempfile::tempdir().unwrap();
    let smtp_port = free_port();
    edit_config(
        &data,
        &[
            ("evaluate_every_secs = 60", "evaluate_every_secs = 1".into()),
            (
                "console_url = \"\"",
                "console_url = \"https://hm.cabot.example\"".into(),
            ),
            ("host = \"\"", "host = \"127.0.0.1\"".into()),
            ("port = 587", format!("port = {smtp_port}")),
            ("security = \"starttls\"", "security = \"none\"".into()),
            ("max_attempts = 8", "max_attempts = 3".into()),
            ("retry_initial_secs = 30", "retry_initial_secs = 1".into()),
            ("retry_max_secs = 3600", "retry_max_secs = 2".into()),
        ],
    );
    let maildir = root.path().join("maildir");
    let mut smtp = start_smtp(smtp_port, &maildir, &data.logs());
    let collector = data.start();

    let hook = start_receiver("s3cret-hmac-key");
    let secret = root.path().join("hook.secret");
    std::fs::write(&secret, "s3cret-hmac-key\n").unwrap();
    let add = |args: &[&str]| {
        let output = data.cli(&[&["recipients", "add", "--site", "Cabot"], args].concat());
        assert!(output.status.success(), "{}", text(&output.stderr));
    };
    add(&["--role", "technician", "--email", "it@cabot.sch.uk"]);
    add(&["--role", "head_teacher", "--email", "head@cabot.sch.uk"]);
    let url = format!("http://127.0.0.1:{}/hook", hook.addr.port());
    add(&[
        "--role",
        "dsl",
        "--webhook",
        &url,
        "--webhook-secret-file",
        secret.to_str().unwrap(),
    ]);
    add(&[
        "--role",
        "online_safety_lead",
        "--webhook",
        &format!("http://127.0.0.1:{}/gone", free_port()),
    ]);

    // A test message to the DSL's webhook, signed.
    let test = data.cli(&["notify", "test", "--site", "Cabot", "--to", "dsl"]);
    assert_eq!(
        test.status.code(),
        Some(0),
        "{}{}",
        text(&test.stdout),
        text(&test.stderr)
    );
    let received = hook.received.lock().unwrap().clone();
    assert_eq!(received.len(), 1);
    assert!(received[0].0, "HMAC signature verifies");
    assert_eq!(received[0].1["kind"], "test");

    // An inactive device: the technician is told at once; no pupil name.
    let (agent1, id1) = inactive_device(&data, &collector, "e2e-notify-1");
    let _daemon1 = agent1.start();
    let mails = wait_for("the technician's email", WAIT, || {
        let mails = smtp.to("it@cabot.sch.uk");
        (!mails.is_empty()).then_some(mails)
    });
    let (subject, body) = &mails[0];
    assert!(
        subject.contains("Cabot") && subject.contains("inactive"),
        "{subject}"
    );
    assert!(body.contains(&id1), "{body}");
    assert!(body.contains("https://hm.cabot.example/flags/"), "{body}");
    assert!(
        !body.contains("pupil.surname1") && !subject.contains("pupil"),
        "no pupil names: {body}"
    );
    assert!(
        smtp.to("head@cabot.sch.uk").is_empty(),
        "the head teacher gets the digest, not an email per flag"
    );

    // SMTP down: the next flag's email waits and is retried, then
    // delivered once when the server is back.
    smtp.process.kill();
    let (agent2, id2) = inactive_device(&data, &collector, "e2e-notify-2");
    let _daemon2 = agent2.start();
    wait_for("a failed attempt to be recorded", WAIT, || {
        let pending = json(&data.cli(&[
            "notifications",
            "list",
            "--status",
            "pending",
            "--format",
            "json",
        ]));
        pending["notifications"]
            .as_array()?
            .iter()
            .any(|n| {
                n["address"] == "it@cabot.sch.uk"
                    && n["attempts"].as_i64().unwrap_or(0) >= 1
                    && n["last_error"] != ""
            })
            .then_some(())
    });
    smtp = start_smtp(smtp_port, &maildir, &data.logs());
    wait_for("the waiting email to arrive", WAIT, || {
        (smtp.to("it@cabot.sch.uk").len() == 2).then_some(())
    });
    let tech = smtp.to("it@cabot.sch.uk");
    assert!(tech.iter().any(|(_, b)| b.contains(&id2)));

    // The digest: one message to the head teacher, each flag once.
    let digest = data.cli(&["notifications", "digest", "--site", "Cabot"]);
    assert!(digest.status.success(), "{}", text(&digest.stderr));
    let head = wait_for("the head teacher's digest", WAIT, || {
        let mails = smtp.to("head@cabot.sch.uk");
        (!mails.is_empty()).then_some(mails)
    });
    assert_eq!(head.len(), 1);
    let (subject, body) = &head[0];
    assert!(subject.contains("daily digest, 2 item(s)"), "{subject}");
    assert_eq!(body.matches(&id1).count(), 1, "{body}");
    assert_eq!(body.matches(&id2).count(), 1, "{body}");

    // A webhook that never answers ends as a dead letter, visibly.
    let test = data.cli(&[
        "notify",
        "test",
        "--site",
        "Cabot",
        "--to",
        "online_safety_lead",
    ]);
    assert_eq!(test.status.code(), Some(1));
    wait_for("the dead letter", WAIT, || {
        let dead = json(&data.cli(&[
            "notifications",
            "list",
            "--status",
            "dead",
            "--format",
            "json",
        ]));
        (dead["notifications"].as_array()?.len() == 1).then_some(())
    });
    // Nothing was sent twice.
    assert_eq!(smtp.to("it@cabot.sch.uk").len(), 2);
    assert_eq!(smtp.to("head@cabot.sch.uk").len(), 1);
}

#[test]
fn two_collector_instances_on_one_database_send_each_message_once() {
    let data = CollectorData::init("Cabot");
    let root = tempfile::tempdir().unwrap();
    let smtp_port = free_port();
    edit_config(
        &data,
        &[
            ("evaluate_every_secs = 60", "evaluate_every_secs = 1".into()),
            ("host = \"\"", "host = \"127.0.0.1\"".into()),
            ("port = 587", format!("port = {smtp_port}")),
            ("security = \"starttls\"", "security = \"none\"".into()),
        ],
    );
    let smtp = start_smtp(smtp_port, &root.path().join("maildir"), &data.logs());
    let first = data.start();
    let second = data.start();
    let added = data.cli(&[
        "recipients",
        "add",
        "--site",
        "Cabot",
        "--role",
        "technician",
        "--email",
        "it@cabot.sch.uk",
    ]);
    assert!(added.status.success(), "{}", text(&added.stderr));

    // Six inactive devices, half streaming to each instance; both
    // instances evaluate and both run a notifier.
    let mut daemons = Vec::new();
    let mut agents = Vec::new();
    for n in 0..6 {
        let collector = if n % 2 == 0 { &first } else { &second };
        let (agent, _) = inactive_device(&data, collector, &format!("e2e-notify-ha-{n}"));
        daemons.push(agent.start());
        agents.push(agent);
    }
    wait_for("six messages sent", WAIT, || {
        let sent = json(&data.cli(&[
            "notifications",
            "list",
            "--status",
            "sent",
            "--format",
            "json",
        ]));
        (sent["notifications"].as_array()?.len() == 6).then_some(())
    });
    let sent = json(&data.cli(&["notifications", "list", "--format", "json"]));
    assert!(
        sent["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["attempts"] == 1),
        "{sent}"
    );
    assert_eq!(
        smtp.to("it@cabot.sch.uk").len(),
        6,
        "each flag's email exactly once"
    );
    let flags = json(&data.cli(&["flags", "list", "--format", "json"]));
    assert_eq!(
        flags["flags"].as_array().unwrap().len(),
        6,
        "one flag per device"
    );
}

/// A capture as a session helper sends one, without an image.
fn capture(category: &str, severity: u32, matched: &str, account: &str) -> v1::event::Body {
    v1::event::Body::Capture(v1::Capture {
        rule_id: category.into(),
        category: category.into(),
        severity,
        matched_text: matched.into(),
        window_title: format!("{matched} - Chat - Chromium"),
        process_name: "chromium".into(),
        pid: 4242,
        account: account.into(),
        no_image_reason: "no display".into(),
        ..Default::default()
    })
}

#[test]
fn an_instant_self_harm_capture_and_a_threshold_crossing_alert_once_by_the_sites_routes() {
    let data = CollectorData::init("Cabot");
    let root = tempfile::tempdir().unwrap();
    let smtp_port = free_port();
    edit_config(
        &data,
        &[
            ("host = \"\"", "host = \"127.0.0.1\"".into()),
            ("port = 587", format!("port = {smtp_port}")),
            ("security = \"starttls\"", "security = \"none\"".into()),
            // A threshold of 3 in a day for this test, besides bullying's.
            (
                "[[alerts.thresholds]]",
                "[[alerts.thresholds]]\ncategory = \"violence\"\ncount = 3\ndays = 1\n\n[[alerts.thresholds]]"
                    .into(),
            ),
        ],
    );
    let smtp = start_smtp(smtp_port, &root.path().join("maildir"), &data.logs());
    let collector = data.start();
    for (role, email) in [
        ("dsl", "dsl@cabot.sch.uk"),
        ("head_teacher", "head@cabot.sch.uk"),
    ] {
        let added = data.cli(&[
            "recipients",
            "add",
            "--site",
            "Cabot",
            "--role",
            role,
            "--email",
            email,
        ]);
        assert!(added.status.success(), "{}", text(&added.stderr));
    }
    // The site's own route: the head teacher hears of threshold alerts too
    // (collector.toml tells only the DSL); the rest are copied from it.
    let route = data.cli(&[
        "routes",
        "add",
        "--site",
        "Cabot",
        "--kind",
        "capture_threshold",
        "--role",
        "head_teacher",
        "--timing",
        "immediate",
        "--by",
        "e2e",
    ]);
    assert!(route.status.success(), "{}", text(&route.stderr));

    let agent = Agent::new(&data.agent_settings(&collector, "e2e-alerts-1"));
    let id = agent.enroll();
    let now = jiff::Timestamp::now();
    let minutes = |n: i64| now - jiff::SignedDuration::from_mins(n);
    let mut events = vec![
        // Severity 2 self-harm: at once, whatever the severity.
        (
            minutes(50),
            capture("self-harm", 2, "i hate myself", "pupil.surname3"),
        ),
    ];
    // Four violence captures: the third crosses the threshold, the fourth
    // does not alert again.
    for n in 0..4 {
        events.push((
            minutes(40 - n),
            capture("violence", 2, "fight after school", "pupil.surname3"),
        ));
    }
    queue(&agent.data, events);
    let _daemon = agent.start();

    let mails = wait_for("both alerts to both people", WAIT, || {
        let dsl = smtp.to("dsl@cabot.sch.uk");
        let head = smtp.to("head@cabot.sch.uk");
        (dsl.len() >= 2 && head.len() >= 2).then_some((dsl, head))
    });
    for (who, mails) in [("dsl", &mails.0), ("head", &mails.1)] {
        let instant: Vec<_> = mails
            .iter()
            .filter(|(s, _)| s.contains("self-harm capture on"))
            .collect();
        let threshold: Vec<_> = mails
            .iter()
            .filter(|(s, _)| s.contains("capture threshold passed on"))
            .collect();
        assert_eq!((instant.len(), threshold.len()), (1, 1), "{who}: {mails:?}");
        let (_, body) = threshold[0];
        assert!(
            body.contains("3 violence captures in 1 days on this device"),
            "{who}: {body}"
        );
        assert!(body.contains(&id), "{who}: the device is named: {body}");
        for (subject, body) in mails {
            for secret in ["pupil.surname3", "i hate myself", "fight after school"] {
                assert!(
                    !body.contains(secret) && !subject.contains(secret),
                    "{who}: '{secret}' in {subject}: {body}"
                );
            }
        }
    }
    // Exactly once: every message sent, nothing else queued.
    wait_for("all messages sent", WAIT, || {
        let all = json(&data.cli(&["notifications", "list", "--format", "json"]));
        let all = all["notifications"].as_array()?.clone();
        all.iter().all(|n| n["status"] == "sent").then_some(())
    });
    assert_eq!(smtp.to("dsl@cabot.sch.uk").len(), 2);
    assert_eq!(smtp.to("head@cabot.sch.uk").len(), 2);
}
