//! The acceptable-use policy at log-on, end to end: a version set at the
//! collector reaches the agent, the session helper shows it in its window
//! on a real X server (Xvfb + openbox), synthetic key presses (XTEST)
//! answer it, and the answer reaches the collector as an event; a new
//! version is asked again, a decline under `decline = "log_out"` runs the
//! agent's end-session command, and a broken file is refused with its line.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hallmonitor_e2e::display::{start_helper, start_openbox, start_xvfb};
use hallmonitor_e2e::fixtures::{json, utmp_record};
use hallmonitor_e2e::{Agent, CollectorData, Value, bin_dir, text, wait_for};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{ConnectionExt, ImageFormat, MapState, Window};
use x11rb::protocol::xtest::ConnectionExt as _;
use x11rb::wrapper::ConnectionExt as _;

const WAIT: Duration = Duration::from_secs(60);

fn whoami() -> String {
    text(&Command::new("id").arg("-un").output().unwrap().stdout)
        .trim()
        .to_owned()
}

/// The first viewable window under `window` whose `_NET_WM_NAME` is `title`.
fn find_window(
    conn: &impl Connection,
    window: Window,
    name_atom: u32,
    title: &str,
) -> Option<Window> {
    let name = conn
        .get_property(false, window, name_atom, x11rb::NONE, 0, 1024)
        .ok()?
        .reply()
        .ok()?;
    if name.value == title.as_bytes() {
        let attributes = conn.get_window_attributes(window).ok()?.reply().ok()?;
        return (attributes.map_state == MapState::VIEWABLE).then_some(window);
    }
    let tree = conn.query_tree(window).ok()?.reply().ok()?;
    tree.children
        .into_iter()
        .find_map(|child| find_window(conn, child, name_atom, title))
}

struct Screen {
    conn: x11rb::rust_connection::RustConnection,
    root: Window,
    net_wm_name: u32,
}

impl Screen {
    fn connect(display: &str) -> Screen {
        let (conn, screen) = x11rb::connect(Some(display)).expect("X connection");
        let root = conn.setup().roots[screen].root;
        let net_wm_name = conn
            .intern_atom(false, b"_NET_WM_NAME")
            .unwrap()
            .reply()
            .unwrap()
            .atom;
        Screen {
            conn,
            root,
            net_wm_name,
        }
    }

    /// Waits for the window titled `title` to be shown and to hold the
    /// keyboard focus.
    fn wait_for_window(&self, title: &str) -> Window {
        let window = wait_for(&format!("the window {title:?}"), WAIT, || {
            find_window(&self.conn, self.root, self.net_wm_name, title)
        });
        wait_for("the window to have the keyboard focus", WAIT, || {
            let focus = self.conn.get_input_focus().unwrap().reply().unwrap().focus;
            (focus == window).then_some(())
        });
        window
    }

    /// Saves the window's pixels as a PNG; how many distinct colours it has.
    fn screenshot(&self, window: Window, path: &Path) -> usize {
        let geometry = self.conn.get_geometry(window).unwrap().reply().unwrap();
        let image = self
            .conn
            .get_image(
                ImageFormat::Z_PIXMAP,
                window,
                0,
                0,
                geometry.width,
                geometry.height,
                !0,
            )
            .unwrap()
            .reply()
            .unwrap();
        let rgb: Vec<u8> = image
            .data
            .chunks_exact(4)
            .flat_map(|p| [p[2], p[1], p[0]])
            .collect();
        let colours: std::collections::HashSet<&[u8]> = rgb.chunks_exact(3).collect();
        let distinct = colours.len();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::from_raw(u32::from(geometry.width), u32::from(geometry.height), rgb)
            .unwrap()
            .save(path)
            .unwrap();
        distinct
    }

    /// Waits until the window shows text and buttons (more than 20
    /// colours: a blank window has one), saving it as `path`.
    fn wait_until_drawn(&self, window: Window, path: &Path) {
        wait_for(&format!("{} to be drawn", path.display()), WAIT, || {
            (self.screenshot(window, path) > 20).then_some(())
        });
    }

    /// Presses and releases the key of `keysym` through XTEST.
    fn press(&self, keysym: u32) {
        let setup = self.conn.setup();
        let (min, max) = (setup.min_keycode, setup.max_keycode);
        let map = self
            .conn
            .get_keyboard_mapping(min, max - min + 1)
            .unwrap()
            .reply()
            .unwrap();
        let per = usize::from(map.keysyms_per_keycode);
        let index = map
            .keysyms
            .chunks(per)
            .position(|syms| syms.first() == Some(&keysym))
            .expect("a keycode for the keysym");
        let keycode = min + index as u8;
        for kind in [
            x11rb::protocol::xproto::KEY_PRESS_EVENT,
            x11rb::protocol::xproto::KEY_RELEASE_EVENT,
        ] {
            self.conn
                .xtest_fake_input(kind, keycode, x11rb::CURRENT_TIME, self.root, 0, 0, 0)
                .unwrap();
        }
        self.conn.sync().unwrap();
    }
}

const TAB: u32 = 0xff09;
const RETURN: u32 = 0xff0d;

fn answers(data: &CollectorData) -> Vec<Value> {
    let out = data.cli(&["aup", "answers", "--site", "Cabot", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let document = json(&out);
    assert_eq!(document["schema"], "hallmonitor.aup_answers.v1");
    document["answers"].as_array().unwrap().clone()
}

fn screenshots() -> PathBuf {
    bin_dir().parent().unwrap().join("aup-screenshots")
}

#[test]
fn each_version_is_asked_once_answered_in_the_window_and_recorded_at_the_collector() {
    let data = CollectorData::init("Cabot");
    let logs = data.logs();
    let (_xvfb, display) = start_xvfb(&logs);
    let _openbox = start_openbox(&display, &logs);
    let collector = data.start();
    let account = whoami();
    // This user is logged in on the display, as logind would say; the
    // command that would end a session writes the session it was given.
    let root = tempfile::tempdir().unwrap();
    let utmp = root.path().join("utmp");
    let ended = root.path().join("ended");
    let now = jiff::Timestamp::now().as_second();
    std::fs::write(&utmp, utmp_record(":0", &account, ":0", now)).unwrap();
    let extra = format!(
        "[sessions]\nsource = \"utmp\"\nutmp_path = \"{}\"\npoll_secs = 1\n\
         [enforcement]\nend_session_command = [\"sh\", \"-c\", \"echo \\\"$1\\\" >> {}\", \"end\"]\n",
        utmp.display(),
        ended.display()
    );
    let agent = Agent::with_config(&data.agent_settings(&collector, "e2e-aup-1"), "", &extra);
    let device = agent.enroll();
    let _daemon = agent.start();

    let first = root.path().join("aup-1.toml");
    std::fs::write(
        &first,
        format!(
            "title = \"Cabot: using school computers\"\n\
             text = \"\"\"\n{}\"\"\"\n\
             decline = \"record\"\n",
            "Be kind online. Keep your password to yourself. Ask a teacher when something worries you.\n\n"
                .repeat(12)
        ),
    )
    .unwrap();
    let set = data.cli(&["aup", "set", "--site", "Cabot", first.to_str().unwrap()]);
    assert!(set.status.success(), "{}", text(&set.stderr));
    assert!(
        text(&set.stdout).contains("version 1"),
        "{}",
        text(&set.stdout)
    );
    let _helper = start_helper(&agent, &display, &logs);

    let screen = Screen::connect(&display);
    let window = screen.wait_for_window("Cabot: using school computers");
    let shot = screenshots().join("aup-version-1.png");
    // Mapped and focused before the helper drew it: wait for its pixels.
    screen.wait_until_drawn(window, &shot);
    // Accept has the focus: Enter presses it.
    screen.press(RETURN);
    let answer = wait_for("the accept at the collector", WAIT, || {
        answers(&data).into_iter().find(|a| a["version"] == 1)
    });
    assert_eq!(answer["answer"], "accept");
    assert_eq!(answer["account"], account.as_str());
    assert_eq!(answer["device_id"], device.as_str());
    assert_eq!(answer["outcome"], "");
    assert!(!ended.exists(), "an accept ends nothing");

    // A new version, which logs out those who decline: asked again.
    let second = root.path().join("aup-2.toml");
    std::fs::write(
        &second,
        "title = \"Cabot: using school computers (2)\"\n\
         text = \"Everyone: be kind.\"\n\
         [[audiences]]\n\
         groups = [\"pupils\", \"staff\"]\n\
         text = \"No games in lessons.\"\n\
         decline = \"log_out\"\n",
    )
    .unwrap();
    let set = data.cli(&["aup", "set", "--site", "Cabot", second.to_str().unwrap()]);
    assert!(set.status.success(), "{}", text(&set.stderr));
    let window = screen.wait_for_window("Cabot: using school computers (2)");
    let shot = screenshots().join("aup-version-2-log-out.png");
    screen.wait_until_drawn(window, &shot);
    // Tab to Decline, then Space.
    screen.press(TAB);
    screen.press(0x20);
    let answer = wait_for("the decline at the collector", WAIT, || {
        answers(&data).into_iter().find(|a| a["version"] == 2)
    });
    assert_eq!(answer["answer"], "decline");
    let outcome = answer["outcome"].as_str().unwrap();
    assert!(outcome.contains("ended"), "{outcome}");
    let sessions = std::fs::read_to_string(&ended).unwrap();
    assert_eq!(sessions.lines().count(), 1, "one session ended: {sessions}");
    assert!(!sessions.trim().is_empty());
    assert_eq!(answers(&data).len(), 2, "each version answered once");

    // A file that does not parse is refused with its line; version 2 stays.
    let broken = root.path().join("aup-3.toml");
    std::fs::write(
        &broken,
        "title = \"T\"\ntext = \"t\"\ndecline = \"shout\"\n",
    )
    .unwrap();
    let set = data.cli(&["aup", "set", "--site", "Cabot", broken.to_str().unwrap()]);
    assert!(!set.status.success());
    let error = text(&set.stderr);
    assert!(error.contains("aup-3.toml: line 3:"), "{error}");
    let show = data.cli(&["aup", "show", "--site", "Cabot"]);
    assert!(show.status.success(), "{}", text(&show.stderr));
    assert!(
        text(&show.stderr).contains("version 2"),
        "{}",
        text(&show.stderr)
    );
    assert!(text(&show.stdout).contains("No games in lessons."));
}
