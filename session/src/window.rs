//! The active window of the graphical session: title, process and pid.
//!
//! Linux/X11 (`X11Windows`, x11rb, no C libraries): the active window is
//! the root's `_NET_ACTIVE_WINDOW` (set by the window manager), falling
//! back to the input focus; its title is `_NET_WM_NAME` (UTF-8), falling
//! back to `WM_NAME` (some programs set only that); its process comes from
//! `_NET_WM_PID` and `/proc/PID/comm`. The watcher waits on X events (the
//! root's active-window property, the active window's title) with a
//! timeout, so a title change is seen at once and nothing polls in a tight
//! loop. Browser tab titles arrive as window titles.
//!
//! Wayland, Windows and macOS are not implemented; they would be other
//! `ActiveWindowSource`s.

use std::os::fd::AsRawFd;
use std::time::Duration;

use x11rb::connection::Connection;
use x11rb::protocol::xproto::{
    Atom, AtomEnum, ChangeWindowAttributesAux, ConnectionExt, EventMask, Window,
};
use x11rb::rust_connection::RustConnection;

/// What the user is looking at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveWindow {
    pub id: u64,
    pub title: String,
    pub process_name: String,
    pub pid: u32,
    /// The window's centre on the screen, to find its monitor.
    pub centre: Option<(i32, i32)>,
}

#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    #[error("cannot connect to the X display: {0}")]
    Connect(String),
    #[error("X11: {0}")]
    X11(String),
}

pub trait ActiveWindowSource {
    /// Waits up to `timeout` for a change, then returns the active window
    /// (None when there is none).
    fn next(&mut self, timeout: Duration) -> Result<Option<ActiveWindow>, WindowError>;
}

fn x11<E: std::fmt::Display>(e: E) -> WindowError {
    WindowError::X11(e.to_string())
}

pub struct X11Windows {
    conn: RustConnection,
    root: Window,
    watched: Option<Window>,
    net_active_window: Atom,
    net_wm_name: Atom,
    utf8_string: Atom,
    net_wm_pid: Atom,
}

impl X11Windows {
    /// Connects to `$DISPLAY`.
    pub fn connect() -> Result<X11Windows, WindowError> {
        let (conn, screen) =
            x11rb::connect(None).map_err(|e| WindowError::Connect(e.to_string()))?;
        let root = conn.setup().roots[screen].root;
        let atom = |name: &[u8]| -> Result<Atom, WindowError> {
            Ok(conn
                .intern_atom(false, name)
                .map_err(x11)?
                .reply()
                .map_err(x11)?
                .atom)
        };
        let windows = X11Windows {
            root,
            watched: None,
            net_active_window: atom(b"_NET_ACTIVE_WINDOW")?,
            net_wm_name: atom(b"_NET_WM_NAME")?,
            utf8_string: atom(b"UTF8_STRING")?,
            net_wm_pid: atom(b"_NET_WM_PID")?,
            conn,
        };
        windows
            .conn
            .change_window_attributes(
                root,
                &ChangeWindowAttributesAux::new().event_mask(EventMask::PROPERTY_CHANGE),
            )
            .map_err(x11)?;
        windows.conn.flush().map_err(x11)?;
        Ok(windows)
    }

    fn property(&self, window: Window, property: Atom, kind: Atom) -> Option<Vec<u8>> {
        let reply = self
            .conn
            .get_property(false, window, property, kind, 0, 4096)
            .ok()?
            .reply()
            .ok()?;
        (reply.type_ != u32::from(AtomEnum::NONE)).then_some(reply.value)
    }

    fn active(&self) -> Option<Window> {
        let from_wm = self
            .property(self.root, self.net_active_window, AtomEnum::WINDOW.into())
            .and_then(|v| {
                v.get(..4)
                    .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            })
            .filter(|w| *w != 0);
        from_wm.or_else(|| {
            let focus = self.conn.get_input_focus().ok()?.reply().ok()?.focus;
            (focus > 1 && focus != self.root).then_some(focus)
        })
    }

    fn title(&self, window: Window) -> String {
        if let Some(name) = self.property(window, self.net_wm_name, self.utf8_string)
            && !name.is_empty()
        {
            return String::from_utf8_lossy(&name).into_owned();
        }
        // WM_NAME is Latin-1 (STRING) for the programs that set only it.
        self.property(window, AtomEnum::WM_NAME.into(), AtomEnum::ANY.into())
            .map(|bytes| bytes.iter().map(|b| char::from(*b)).collect())
            .unwrap_or_default()
    }

    fn pid(&self, window: Window) -> u32 {
        self.property(window, self.net_wm_pid, AtomEnum::CARDINAL.into())
            .and_then(|v| {
                v.get(..4)
                    .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            })
            .unwrap_or(0)
    }

    fn centre(&self, window: Window) -> Option<(i32, i32)> {
        let geometry = self.conn.get_geometry(window).ok()?.reply().ok()?;
        let at = self
            .conn
            .translate_coordinates(
                window,
                self.root,
                (geometry.width / 2) as i16,
                (geometry.height / 2) as i16,
            )
            .ok()?
            .reply()
            .ok()?;
        Some((i32::from(at.dst_x), i32::from(at.dst_y)))
    }

    /// Waits for X events (or the timeout), draining what arrived.
    fn wait(&self, timeout: Duration) -> Result<(), WindowError> {
        if self.conn.poll_for_event().map_err(x11)?.is_some() {
            while self.conn.poll_for_event().map_err(x11)?.is_some() {}
            return Ok(());
        }
        let mut fd = libc::pollfd {
            fd: self.conn.stream().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the connection's socket.
        unsafe { libc::poll(&mut fd, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
        while self.conn.poll_for_event().map_err(x11)?.is_some() {}
        Ok(())
    }
}

impl ActiveWindowSource for X11Windows {
    fn next(&mut self, timeout: Duration) -> Result<Option<ActiveWindow>, WindowError> {
        self.wait(timeout)?;
        let Some(window) = self.active() else {
            return Ok(None);
        };
        if self.watched != Some(window) {
            // Title changes of the new active window wake us too.
            let _ = self.conn.change_window_attributes(
                window,
                &ChangeWindowAttributesAux::new().event_mask(EventMask::PROPERTY_CHANGE),
            );
            let _ = self.conn.flush();
            self.watched = Some(window);
        }
        let pid = self.pid(window);
        let process_name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        Ok(Some(ActiveWindow {
            id: u64::from(window),
            title: self.title(window),
            process_name: if pid == 0 {
                String::new()
            } else {
                process_name
            },
            pid,
            centre: self.centre(window),
        }))
    }
}
