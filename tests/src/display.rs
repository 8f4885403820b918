//! A display for the session helper: Xvfb, openbox, and the helper itself
//! started against an agent's socket.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use x11rb::connection::Connection;
use x11rb::protocol::xproto::{AtomEnum, ConnectionExt};

use crate::{Agent, Process, session_bin, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// Starts Xvfb (1280×800, 24 bits) on a display it chooses; its name.
pub fn start_xvfb(logs: &Path) -> (Process, String) {
    // Xvfb picks a free display itself and writes its number to stdout.
    let mut command = Command::new("Xvfb");
    command.args([
        "-displayfd",
        "1",
        "-nolisten",
        "tcp",
        "-screen",
        "0",
        "1280x800x24",
    ]);
    let mut xvfb = Process::spawn("xvfb", command, logs);
    let number = wait_for("Xvfb to choose a display", WAIT, || {
        xvfb.assert_running();
        let out = xvfb.stdout_text();
        out.ends_with('\n').then(|| out.trim().to_owned())
    });
    (xvfb, format!(":{number}"))
}

/// Starts openbox on `display` and waits until it manages the screen (it
/// names itself on the root window, as EWMH window managers do).
pub fn start_openbox(display: &str, logs: &Path) -> Process {
    let mut command = Command::new("openbox");
    command.args(["--sm-disable"]).env("DISPLAY", display);
    let mut openbox = Process::spawn("openbox", command, logs);
    let (conn, screen) = x11rb::connect(Some(display)).expect("X connection");
    let root = conn.setup().roots[screen].root;
    let check = conn
        .intern_atom(false, b"_NET_SUPPORTING_WM_CHECK")
        .unwrap()
        .reply()
        .unwrap()
        .atom;
    wait_for("openbox to manage the screen", WAIT, || {
        openbox.assert_running();
        let reply = conn
            .get_property(false, root, check, AtomEnum::WINDOW, 0, 1)
            .unwrap()
            .reply()
            .unwrap();
        (reply.value_len > 0).then_some(())
    });
    openbox
}

/// A helper started against `agent`'s daemon on `display`.
pub fn start_helper(agent: &Agent, display: &str, logs: &Path) -> Process {
    wait_for("the daemon's helper socket", WAIT, || {
        agent.socket().exists().then_some(())
    });
    let mut helper = Command::new(session_bin());
    helper
        .arg("--socket")
        .arg(agent.socket())
        .env("DISPLAY", display)
        .env("HALLMONITOR_LOG", "info,hallmonitor_session=debug");
    Process::spawn("helper", helper, logs)
}
