//! Captures arriving at the collector: image hashes verified, evidence
//! encrypted at rest, incidents per (device, account, category), severe
//! ones told to the head teacher and DSL without details, evidence export.

use std::net::TcpListener;
use std::time::Duration;

use hallmonitor_e2e::fixtures::*;
use hallmonitor_e2e::{Agent, CollectorData, Value, cli_actor, text, wait_for};
use hallmonitor_proto::v1;

const WAIT: Duration = Duration::from_secs(60);

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn capture(
    category: &str,
    severity: u32,
    matched: &str,
    image: &[u8],
    declared: Option<String>,
) -> v1::event::Body {
    v1::event::Body::Capture(v1::Capture {
        rule_id: format!("{category}-1"),
        category: category.into(),
        severity,
        matched_text: matched.into(),
        window_title: format!("{matched} - Chromium"),
        process_name: "chromium".into(),
        pid: 4242,
        account: "pupil.surname7".into(),
        image_sha256: declared.unwrap_or_else(|| sha256_hex(image)),
        image_png: image.to_vec(),
        ..Default::default()
    })
}

#[test]
fn a_severe_capture_opens_an_incident_tells_the_dsl_and_exports_its_evidence() {
    let data = CollectorData::init("Cabot");
    let root = tempfile::tempdir().unwrap();
    let smtp_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = data.data.join("collector.toml");
    let toml = std::fs::read_to_string(&path)
        .unwrap()
        .replacen("host = \"\"", "host = \"127.0.0.1\"", 1)
        .replacen("port = 587", &format!("port = {smtp_port}"), 1)
        .replacen("security = \"starttls\"", "security = \"none\"", 1);
    std::fs::write(&path, toml).unwrap();
    let maildir = root.path().join("maildir");
    let mut smtp = start_smtp(&data, smtp_port, &maildir);
    let collector = data.start();
    for (role, email) in [
        ("head_teacher", "head@cabot.sch.uk"),
        ("dsl", "dsl@cabot.sch.uk"),
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

    let agent = Agent::new(&data.agent_settings(&collector, "e2e-incident-1"));
    let id = agent.enroll();
    let image = b"\x89PNG\r\n\x1a\n pretend screen pixels ".repeat(400);
    let second = b"\x89PNG\r\n\x1a\n another screen ".repeat(300);
    queue_now(
        &agent.data,
        vec![
            capture("self-harm", 5, "kill myself", &image, None),
            capture("self-harm", 4, "self harm", &second, None),
            capture("self-harm", 5, "kill myself", &image, Some("0".repeat(64))),
            capture("drugs", 2, "buy weed", b"", None),
        ],
    );
    let _daemon = agent.start();
    let incidents = wait_for("two incidents", WAIT, || {
        let list = json(&data.cli(&["incidents", "list", "--format", "json"]));
        let incidents = list["incidents"].as_array()?.clone();
        (incidents.len() == 2 && incidents[0]["capture_count"] == 3).then_some(incidents)
    });
    let severe = &incidents[0];
    assert_eq!(severe["category"], "self-harm");
    assert_eq!(severe["severity"], 5);
    assert_eq!(incidents[1]["category"], "drugs");
    let incident_id = severe["id"].to_string();

    // The head teacher and the DSL are told once each, without details.
    let mails = wait_for("the two alerts", WAIT, || {
        let entries: Vec<String> = std::fs::read_dir(maildir.join("new"))
            .ok()?
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .collect();
        (entries.len() == 2).then_some(entries)
    });
    for mail in &mails {
        assert!(mail.contains("severity 5 capture"), "{mail}");
        assert!(mail.contains(&id), "{mail}");
        for secret in ["kill myself", "pupil.surname7", "Chromium"] {
            assert!(
                !mail.contains(secret),
                "'{secret}' must not be in an alert: {mail}"
            );
        }
    }
    assert!(mails.iter().any(|m| m.contains("To: head@cabot.sch.uk")));
    assert!(mails.iter().any(|m| m.contains("To: dsl@cabot.sch.uk")));

    // Evidence is encrypted at rest; the mismatched image was not kept.
    let hash = sha256_hex(&image);
    let stored = std::fs::read(data.data.join("evidence").join(&hash[..2]).join(&hash)).unwrap();
    assert!(
        !stored.windows(20).any(|w| w == &image[..20]),
        "encrypted at rest"
    );
    let show = json(&data.cli(&[
        "incidents",
        "show",
        &incident_id,
        "--format",
        "json",
        "--by",
        "dsl.jones",
    ]));
    let statuses: Vec<&str> = show["captures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["image_status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["verified", "verified", "hash_mismatch"]);

    // Export for CEOP: images identical to what the device captured, sums
    // that verify, metadata with the evidence.
    let out = root.path().join("export");
    let export = data.cli(&[
        "incidents",
        "export",
        &incident_id,
        "--out",
        out.to_str().unwrap(),
        "--by",
        "dsl.jones",
    ]);
    assert!(export.status.success(), "{}", text(&export.stderr));
    let folder = out.join(format!("incident-{incident_id}"));
    assert_eq!(
        std::fs::read(folder.join(format!("images/{hash}.png"))).unwrap(),
        image
    );
    // Decrypted evidence is readable by whoever exported it only.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&folder), 0o700);
        assert_eq!(mode(&folder.join("images")), 0o700);
        assert_eq!(mode(&folder.join(format!("images/{hash}.png"))), 0o600);
        assert_eq!(mode(&folder.join("SHA256SUMS")), 0o600);
    }
    let sums = std::fs::read_to_string(folder.join("SHA256SUMS")).unwrap();
    for line in sums.lines() {
        let (sum, name) = line.split_once("  ").unwrap();
        assert_eq!(
            sha256_hex(&std::fs::read(folder.join(name)).unwrap()),
            sum,
            "{name}"
        );
    }
    let metadata: Value =
        serde_json::from_slice(&std::fs::read(folder.join("metadata.json")).unwrap()).unwrap();
    assert_eq!(metadata["captures"][0]["matched_text"], "kill myself");
    assert_eq!(metadata["exported_by"], cli_actor("dsl.jones").as_str());
    let again = data.cli(&[
        "incidents",
        "export",
        &incident_id,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "an export is never overwritten"
    );

    // The evidence key is rotated while the collector runs: the old key
    // is gone, the images open with the new one.
    let key = data.data.join("pki/evidence.key");
    let old_key = std::fs::read(&key).unwrap();
    let rotated = data.cli(&["evidence", "rotate-key", "--by", "it.tech"]);
    assert!(rotated.status.success(), "{}", text(&rotated.stderr));
    assert!(
        text(&rotated.stdout).contains("2 image(s) re-encrypted; 1 old key(s) deleted"),
        "{}",
        text(&rotated.stdout)
    );
    assert_ne!(std::fs::read(&key).unwrap(), old_key);
    assert_eq!(
        std::fs::read_dir(data.data.join("pki/evidence-keys"))
            .unwrap()
            .count(),
        0
    );
    let after = root.path().join("export-after-rotation");
    let export = data.cli(&[
        "incidents",
        "export",
        &incident_id,
        "--out",
        after.to_str().unwrap(),
        "--by",
        "dsl.jones",
    ]);
    assert!(export.status.success(), "{}", text(&export.stderr));
    assert_eq!(
        std::fs::read(after.join(format!("incident-{incident_id}/images/{hash}.png"))).unwrap(),
        image
    );

    // Every look was audited.
    let audited = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let pool = sqlx::SqlitePool::connect_with(
                sqlx::sqlite::SqliteConnectOptions::new().filename(data.data.join("collector.db")),
            )
            .await
            .unwrap();
            let rows: Vec<(String, String)> =
                sqlx::query_as("SELECT actor, action FROM audit_log WHERE target = ? ORDER BY id")
                    .bind(format!("incident {incident_id}"))
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            pool.close().await;
            rows
        });
    assert_eq!(
        audited,
        [
            (cli_actor("dsl.jones"), "incident_viewed".to_string()),
            (cli_actor("dsl.jones"), "incident_exported".into()),
            (cli_actor("dsl.jones"), "incident_exported".into()),
        ]
    );

    // Retention: once the incident is closed and its captures are older
    // than 90 days, they, their images and their events' content go; an
    // open incident's captures stay however old.
    let closed = data.cli(&[
        "incidents",
        "close",
        &incident_id,
        "--reason",
        "referred to CEOP",
        "--by",
        "dsl.jones",
    ]);
    assert!(closed.status.success(), "{}", text(&closed.stderr));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = |sql: &'static str| {
        runtime.block_on(async {
            let pool = sqlx::SqlitePool::connect_with(
                sqlx::sqlite::SqliteConnectOptions::new().filename(data.data.join("collector.db")),
            )
            .await
            .unwrap();
            let old = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * 100))
                .as_millisecond();
            let n = sqlx::query(sql)
                .bind(old)
                .execute(&pool)
                .await
                .unwrap()
                .rows_affected();
            pool.close().await;
            n
        })
    };
    assert_eq!(
        db("UPDATE captures SET occurred_at = ?"),
        4,
        "every capture made old"
    );
    let purge = data.cli(&["incidents", "purge"]);
    assert!(purge.status.success(), "{}", text(&purge.stderr));
    assert!(
        text(&purge.stdout).contains("Purged 3 capture(s)"),
        "{}",
        text(&purge.stdout)
    );
    assert!(
        !data
            .data
            .join("evidence")
            .join(&hash[..2])
            .join(&hash)
            .exists(),
        "image removed"
    );
    let show = json(&data.cli(&["incidents", "show", &incident_id, "--format", "json"]));
    assert_eq!(show["captures"].as_array().unwrap().len(), 0);
    assert_eq!(
        show["incident"]["status"], "closed",
        "the incident log stays"
    );
    assert_eq!(
        db(
            "UPDATE events SET seq = seq WHERE kind = 'capture' AND body LIKE '%kill myself%' AND received_at > ?"
        ),
        0,
        "event content purged"
    );
    let open = json(&data.cli(&["incidents", "list", "--status", "open", "--format", "json"]));
    let open_id = open["incidents"][0]["id"].to_string();
    let kept = json(&data.cli(&["incidents", "show", &open_id, "--format", "json"]));
    assert_eq!(
        kept["captures"].as_array().unwrap().len(),
        1,
        "the open incident keeps its capture"
    );
    smtp.stop();
}

#[test]
fn the_dsl_reviews_each_capture_from_the_command_line() {
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let agent = Agent::new(&data.agent_settings(&collector, "e2e-review-1"));
    agent.enroll();
    let image = b"\x89PNG\r\n\x1a\n a screen to review ".repeat(200);
    queue_now(
        &agent.data,
        vec![
            capture("weapons", 3, "buy a knife", &image, None),
            capture("weapons", 2, "knife crime", b"", None),
            capture("gambling", 2, "online casino", b"", None),
        ],
    );
    let _daemon = agent.start();
    let incidents = wait_for("two incidents", WAIT, || {
        let list = json(&data.cli(&["incidents", "list", "--format", "json"]));
        let incidents = list["incidents"].as_array()?.clone();
        (incidents.len() == 2
            && incidents[0]["capture_count"].as_i64()? + incidents[1]["capture_count"].as_i64()?
                == 3)
            .then_some(incidents)
    });
    let weapons = incidents
        .iter()
        .find(|i| i["category"] == "weapons")
        .unwrap()["id"]
        .to_string();
    let show = |id: &str| {
        json(&data.cli(&[
            "incidents",
            "show",
            id,
            "--format",
            "json",
            "--by",
            "dsl.jones",
        ]))
    };
    let before = show(&weapons);
    assert_eq!(before["incident"]["review"]["unreviewed"], 2);
    let captures: Vec<String> = before["captures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["review"]["status"], "new");
            assert!(c["review"]["grade"].is_null());
            c["id"].to_string()
        })
        .collect();
    let review = |args: &[&str]| {
        let mut all = vec!["incidents", "review"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--by", "dsl.jones"]);
        data.cli(&all)
    };

    let triaged = review(&[&captures[0], "--status", "triaged"]);
    assert!(triaged.status.success(), "{}", text(&triaged.stderr));
    // Closing needs an outcome; a refused review changes nothing.
    let refused = review(&[&captures[0], "--status", "escalated", "--note", "n"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        text(&refused.stderr).contains("an outcome is required"),
        "{}",
        text(&refused.stderr)
    );
    let closed = review(&[
        &captures[0],
        "--status",
        "escalated",
        "--grade",
        "5",
        "--outcome",
        "referred to CEOP",
        "--reference",
        "CPOMS-4411",
        "--note",
        "head teacher told",
    ]);
    assert!(closed.status.success(), "{}", text(&closed.stderr));
    let bad_grade = review(&[&captures[1], "--grade", "9"]);
    assert_eq!(bad_grade.status.code(), Some(2));

    let after = show(&weapons);
    let first = &after["captures"][0];
    assert_eq!(first["review"]["status"], "escalated");
    assert_eq!(first["review"]["grade"], 5);
    assert_eq!(first["severity"], 3, "the pregrade stays");
    assert_eq!(first["review"]["outcome"], "referred to CEOP");
    assert_eq!(first["review"]["reference"], "CPOMS-4411");
    assert!(first["review"]["first_review_ms"].as_i64().unwrap() >= 0);
    let steps: Vec<(&str, &str)> = after["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            assert_eq!(h["actor"], cli_actor("dsl.jones").as_str());
            (h["kind"].as_str().unwrap(), h["to"].as_str().unwrap_or(""))
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("status", "triaged"),
            ("status", "escalated"),
            ("grade", ""),
            ("note", "")
        ],
        "{after}"
    );
    assert_eq!(after["history"][2]["to"], 5);

    // The other capture still waits: the weapons incident is not reviewed,
    // and the list puts the longest-waiting unreviewed capture first.
    assert_eq!(after["incident"]["reviewed"], false);
    let list = json(&data.cli(&["incidents", "list", "--format", "json"]));
    let waiting: Vec<_> = list["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["review"]["unreviewed"].as_i64().unwrap())
        .collect();
    assert_eq!(waiting, [1, 1]);
    let false_positive = review(&[
        &captures[1],
        "--status",
        "false_positive",
        "--outcome",
        "a news article",
    ]);
    assert!(
        false_positive.status.success(),
        "{}",
        text(&false_positive.stderr)
    );
    let list = json(&data.cli(&["incidents", "list", "--format", "json"]));
    assert_eq!(
        list["incidents"][0]["category"], "gambling",
        "unreviewed first"
    );
    assert_eq!(list["incidents"][1]["reviewed"], true);
    assert_eq!(
        list["incidents"][1]["status"], "open",
        "the incident's own status is the DSL's to set"
    );

    // The table shows status, grade and history.
    let table = text(
        &data
            .cli(&["incidents", "show", &weapons, "--by", "dsl.jones"])
            .stdout,
    );
    for shown in [
        "escalated",
        "false_positive",
        "status new -> triaged",
        "grade 3 -> 5",
        "referred to CEOP (record CPOMS-4411)",
        "head teacher told",
    ] {
        assert!(table.contains(shown), "'{shown}' missing:\n{table}");
    }
}
