//! `title_burst`: what a burst of window-title changes costs the session
//! helper. Makes a window on the X display in `$DISPLAY`, makes it active,
//! changes its title CHANGES times (each matching the default policy, so
//! every change is matched and rate-limited), waits until the helper's CPU
//! time stops growing, and prints the CPU time the helper (PID) used.
//!
//! ```text
//! DISPLAY=:99 title_burst --pid HELPER_PID [--changes 1000]
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{AtomEnum, ConnectionExt, CreateWindowAux, PropMode, WindowClass};
use x11rb::wrapper::ConnectionExt as _;

#[derive(Parser)]
struct Args {
    /// The session helper's process id.
    #[arg(long)]
    pid: u32,
    #[arg(long, default_value_t = 1000)]
    changes: u32,
}

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let after = stat
        .rsplit_once(')')
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc/{pid}/stat"))?
        .1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// Waits until the helper's CPU time has not grown for a second.
fn settled(pid: u32) -> anyhow::Result<u64> {
    let mut last = cpu_ticks(pid)?;
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = cpu_ticks(pid)?;
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= Duration::from_secs(1) {
            return Ok(now);
        }
    }
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
    let window = conn.generate_id()?;
    conn.create_window(
        0,
        window,
        root,
        0,
        0,
        400,
        300,
        0,
        WindowClass::INPUT_OUTPUT,
        0,
        &CreateWindowAux::new().background_pixel(0x336699),
    )?;
    conn.map_window(window)?;
    conn.change_property8(PropMode::REPLACE, window, wm_name, utf8, b"warm-up")?;
    conn.change_property32(PropMode::REPLACE, root, active, AtomEnum::WINDOW, &[window])?;
    conn.flush()?;
    let before = settled(args.pid)?;
    let started = Instant::now();
    for n in 0..args.changes {
        let title = format!("how to kill myself ({n}) - Chromium");
        conn.change_property8(PropMode::REPLACE, window, wm_name, utf8, title.as_bytes())?;
        conn.flush()?;
    }
    conn.sync()?;
    let sent_in = started.elapsed();
    let after = settled(args.pid)?;
    let cpu = (after - before) as f64 / ticks_per_second() as f64;
    println!(
        "title burst: {} title changes sent in {:.0} ms; session helper CPU {:.0} ms in all ({:.0} µs per change; one snapshot, the rest rate-limited)",
        args.changes,
        sent_in.as_secs_f64() * 1e3,
        cpu * 1e3,
        cpu * 1e6 / f64::from(args.changes)
    );
    Ok(())
}
