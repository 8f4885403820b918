//! `title_alert`: end-to-end alert latency as the DSL experiences it. On
//! the X display in `$DISPLAY` (where a real session helper runs, connected
//! to a real agent daemon streaming to a real collector that mails through
//! a real SMTP server), puts a window with a harmless title up and makes it
//! active, then changes its title to one the default policy grades
//! severity 5, and times it until one more message is in the SMTP
//! server's Maildir. The path timed: the helper's X event, policy match,
//! screen snapshot, the daemon's re-check and durable outbox, the mTLS
//! stream, the collector's commit, its notifier and SMTP.
//!
//! An alert goes out when a capture opens an incident, and captures of one
//! device, account and category join the open one; so after each alert
//! the incident is closed with the collector's CLI (not timed). Alerts are
//! spaced `--gap-ms` apart because the daemon queues at most 60 serious
//! captures per account and minute.
//!
//! ```text
//! DISPLAY=:99 title_alert --maildir DIR --collector BIN --data DIR [--alerts 100]
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{AtomEnum, ConnectionExt, CreateWindowAux, PropMode, WindowClass};
use x11rb::wrapper::ConnectionExt as _;

#[derive(Parser)]
struct Args {
    /// The SMTP server's Maildir (aiosmtpd's Mailbox handler).
    #[arg(long)]
    maildir: PathBuf,
    /// The collector's binary, for closing incidents.
    #[arg(long)]
    collector: PathBuf,
    /// The collector's data directory.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value_t = 100)]
    alerts: usize,
    /// Time between one alert's email and the next title.
    #[arg(long, default_value_t = 1100)]
    gap_ms: u64,
}

fn mails(maildir: &Path) -> usize {
    std::fs::read_dir(maildir.join("new")).map_or(0, |d| d.count())
}

/// Closes every open incident (so the next capture opens a new one).
fn close_open_incidents(args: &Args) -> anyhow::Result<usize> {
    let out = Command::new(&args.collector)
        .arg("--data")
        .arg(&args.data)
        .args(["incidents", "list", "--status", "open", "--format", "json"])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "incidents list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let incidents = list["incidents"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("incidents list: no \"incidents\" array"))?;
    for incident in incidents {
        let id = incident["id"]
            .as_i64()
            .ok_or_else(|| anyhow::anyhow!("incident without an id: {incident}"))?;
        let status = Command::new(&args.collector)
            .arg("--data")
            .arg(&args.data)
            .args(["incidents", "close", &id.to_string()])
            .args(["--reason", "bench", "--by", "bench"])
            .output()?;
        anyhow::ensure!(
            status.status.success(),
            "incidents close {id}: {}",
            String::from_utf8_lossy(&status.stderr)
        );
    }
    Ok(incidents.len())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (conn, screen) = x11rb::connect(None)?;
    let root = conn.setup().roots[screen].root;
    let atom =
        |name: &[u8]| -> anyhow::Result<u32> { Ok(conn.intern_atom(false, name)?.reply()?.atom) };
    let (active, wm_name, utf8) = (
        atom(b"_NET_ACTIVE_WINDOW")?,
        atom(b"_NET_WM_NAME")?,
        atom(b"UTF8_STRING")?,
    );
    let mut latencies = Vec::with_capacity(args.alerts);
    for n in 0..args.alerts {
        close_open_incidents(&args)?;
        let window = conn.generate_id()?;
        conn.create_window(
            0,
            window,
            root,
            (n % 10) as i16 * 40,
            (n % 7) as i16 * 30,
            800,
            600,
            0,
            WindowClass::INPUT_OUTPUT,
            0,
            &CreateWindowAux::new().background_pixel(0x0033_6699 + n as u32 * 0x10),
        )?;
        conn.change_property8(
            PropMode::REPLACE,
            window,
            wm_name,
            utf8,
            format!("Homework notes {n} - Chromium").as_bytes(),
        )?;
        conn.map_window(window)?;
        conn.change_property32(PropMode::REPLACE, root, active, AtomEnum::WINDOW, &[window])?;
        conn.sync()?;
        // Let the helper take in the new, harmless window first.
        std::thread::sleep(Duration::from_millis(200));
        let before = mails(&args.maildir);
        let title = format!("how to kill myself ({n}) - Chromium");
        let started = Instant::now();
        conn.change_property8(PropMode::REPLACE, window, wm_name, utf8, title.as_bytes())?;
        conn.flush()?;
        let deadline = started + Duration::from_secs(30);
        while mails(&args.maildir) <= before {
            anyhow::ensure!(
                Instant::now() < deadline,
                "no email for alert {n} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        latencies.push(started.elapsed());
        conn.destroy_window(window)?;
        conn.flush()?;
        std::thread::sleep(Duration::from_millis(args.gap_ms));
    }
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "title_alert: {} alerts, flagged title on the X screen → email in the Maildir: p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms",
        latencies.len(),
        ms(pick(0.5)),
        ms(pick(0.95)),
        latencies.last().map_or(0.0, |l| ms(*l))
    );
    Ok(())
}
