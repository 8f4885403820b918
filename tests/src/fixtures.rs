//! Fixtures shared by the end-to-end tests: setting up the past (a device
//! enrolled long ago, events queued while offline), utmp records, JSON
//! output.

use std::path::Path;
use std::time::Duration;

use hallmonitor_agent::outbox::{DEFAULT_MAX_BYTES, Outbox};
use hallmonitor_proto::v1;
use jiff::Timestamp;

use crate::{CollectorData, Value, text};

/// A single-threaded runtime for the async libraries the tests call.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A command's stdout as JSON, or a panic showing what it printed.
pub fn json(output: &std::process::Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            text(&output.stdout),
            text(&output.stderr)
        )
    })
}

/// Moves a device's enrolment into the past, as if it had been enrolled
/// `days` ago (the fixture for "a device enrolled long ago").
pub fn enrolled_days_ago(data: &CollectorData, device: &str, days: i64) {
    runtime().block_on(async {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(data.data.join("collector.db"))
            .busy_timeout(Duration::from_secs(10));
        let pool = sqlx::SqlitePool::connect_with(options)
            .await
            .expect("collector database");
        let at = Timestamp::now() - jiff::SignedDuration::from_hours(24 * days);
        sqlx::query("UPDATE devices SET enrolled_at = ? WHERE id = ?")
            .bind(at.as_millisecond())
            .bind(device)
            .execute(&pool)
            .await
            .expect("backdating the enrolment");
        pool.close().await;
    });
}

/// Adds a site to the collector's database (there is no command for a
/// second site yet; the console and CLI find it like any other).
pub fn add_site(data: &CollectorData, name: &str, timezone: &str) {
    runtime().block_on(async {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(data.data.join("collector.db"))
            .busy_timeout(Duration::from_secs(10));
        let pool = sqlx::SqlitePool::connect_with(options)
            .await
            .expect("collector database");
        sqlx::query("INSERT INTO sites (name, timezone, created_at) VALUES (?, ?, ?)")
            .bind(name)
            .bind(timezone)
            .bind(Timestamp::now().as_millisecond())
            .execute(&pool)
            .await
            .expect("adding a site");
        pool.close().await;
    });
}

/// A console account limited to one site; returns its first password.
pub fn add_site_user(data: &CollectorData, name: &str, role: &str, site: &str) -> String {
    let output = data.cli(&["users", "add", name, "--role", role, "--sites", site]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    text(&output.stdout)
        .rsplit_once("(shown once): ")
        .map(|(_, p)| p.trim().to_owned())
        .expect("a password")
}

/// A utmp USER_PROCESS record as glibc writes it (see agent/src/sessions.rs).
pub fn utmp_record(line: &str, user: &str, host: &str, seconds: i64) -> Vec<u8> {
    let mut r = vec![0u8; 384];
    r[0..2].copy_from_slice(&7i16.to_ne_bytes());
    r[8..8 + line.len()].copy_from_slice(line.as_bytes());
    r[44..44 + user.len()].copy_from_slice(user.as_bytes());
    r[76..76 + host.len()].copy_from_slice(host.as_bytes());
    r[340..344].copy_from_slice(&(seconds as i32).to_ne_bytes());
    r
}

/// Appends events to an agent's outbox (as if it had produced them while
/// offline), each with its own time.
pub fn queue(agent_data: &Path, events: Vec<(Timestamp, v1::event::Body)>) {
    runtime().block_on(async {
        std::fs::create_dir_all(agent_data).expect("agent data directory");
        let (outbox, _) = Outbox::open(agent_data, DEFAULT_MAX_BYTES)
            .await
            .expect("agent outbox");
        outbox.append_all(events).await.expect("queueing events");
        outbox.close().await;
    });
}

/// `queue`, every event made now.
pub fn queue_now(agent_data: &Path, bodies: Vec<v1::event::Body>) {
    let now = Timestamp::now();
    queue(agent_data, bodies.into_iter().map(|b| (now, b)).collect());
}

/// Adds a console account with the CLI; returns its first password.
pub fn add_user(data: &crate::CollectorData, name: &str, role: &str) -> String {
    let output = data.cli(&["users", "add", name, "--role", role]);
    assert!(output.status.success(), "{}", crate::text(&output.stderr));
    crate::text(&output.stdout)
        .rsplit_once("(shown once): ")
        .map(|(_, p)| p.trim().to_owned())
        .expect("a password")
}

/// A real (decodable) PNG of a few pixels.
pub fn png(shade: u8) -> Vec<u8> {
    let image = image::RgbImage::from_pixel(64, 48, image::Rgb([shade, 40, 90]));
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(image)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A severity-5 self-harm capture by `account` with `image` as its
/// snapshot (its SHA-256 declared), as a session helper sends one.
pub fn severe_capture(account: &str, image: &[u8]) -> v1::event::Body {
    v1::event::Body::Capture(v1::Capture {
        rule_id: "selfharm-1".into(),
        category: "self-harm".into(),
        severity: 5,
        matched_text: "hurt myself".into(),
        window_title: "how to hurt myself - Chromium".into(),
        process_name: "chromium".into(),
        pid: 4242,
        account: account.into(),
        image_sha256: sha256_hex(image),
        image_png: image.to_vec(),
        ..Default::default()
    })
}

/// A real SMTP server (Debian's aiosmtpd) on `port`, delivering into the
/// maildir `maildir`; waits until it accepts connections.
pub fn start_smtp(data: &crate::CollectorData, port: u16, maildir: &Path) -> crate::Process {
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let mut command = std::process::Command::new(python);
    command
        .args([
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            &format!("127.0.0.1:{port}"),
            "-c",
            "aiosmtpd.handlers.Mailbox",
        ])
        .arg(maildir);
    let mut smtp = crate::Process::spawn("smtp", command, &data.logs());
    crate::wait_for("the SMTP server", Duration::from_secs(60), || {
        assert!(
            smtp.has_exited().is_none(),
            "aiosmtpd: {}",
            smtp.stderr_text()
        );
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    smtp
}
