//! The acceptable-use policy window: the site's text, wrapped and
//! scrollable, with two buttons, Accept and Decline, on X11 through x11rb,
//! text drawn with `ab_glyph` from DejaVu Sans (Debian `fonts-dejavu-core`).
//!
//! The window is a centred dialog that stays on top (`_NET_WM_WINDOW_TYPE_DIALOG`,
//! `_NET_WM_STATE_ABOVE`), named by `WM_NAME` and `_NET_WM_NAME`, and can
//! only be left by answering: closing it does nothing. It is fully
//! keyboard operable: Tab and Shift-Tab move the focus between the buttons
//! (a ring shows which), Enter or Space presses the focused one, Up, Down,
//! Page Up, Page Down, Home and End (and the mouse wheel) scroll the text.
//! Colours meet WCAG AA against their backgrounds. When the site logs out a
//! user who declines, the window says so above the buttons before they
//! choose. The state (`Dialog`) and layout are pure and tested; `ask` is
//! the X11 loop around them.

use std::path::Path;

use ab_glyph::{Font, FontVec, PxScale, ScaleFont};
use hallmonitor_capture_protocol::{AupAnswer, AupPrompt};
use x11rb::connection::{Connection, RequestConnection};
use x11rb::protocol::Event;
use x11rb::protocol::xproto::{
    AtomEnum, ConnectionExt, CreateGCAux, CreateWindowAux, EventMask, ImageFormat, InputFocus,
    PropMode, WindowClass,
};
use x11rb::wrapper::ConnectionExt as _;

/// Where Debian's `fonts-dejavu-core` puts its fonts.
pub const FONT_DIR: &str = "/usr/share/fonts/truetype/dejavu";

const WIDTH: u16 = 640;
const HEIGHT: u16 = 480;
const MARGIN: i32 = 24;
const TITLE_SIZE: f32 = 22.0;
const TEXT_SIZE: f32 = 16.0;
const LINE_HEIGHT: i32 = 22;
const BUTTON_WIDTH: i32 = 140;
const BUTTON_HEIGHT: i32 = 40;
const BUTTON_GAP: i32 = 16;
const SCROLL_LINES_PER_WHEEL: i32 = 3;

/// Colours as 0xRRGGBB. Contrast against white: text 17.4:1, the note
/// 8.6:1, the Accept button's white text on its blue 7.0:1, borders and
/// the focus ring 4.5:1 or more.
const BACKGROUND: u32 = 0xFFFFFF;
const TEXT: u32 = 0x1A1A1A;
const NOTE: u32 = 0x9B1C1C;
const ACCEPT_FILL: u32 = 0x0B5CAD;
const ACCEPT_TEXT: u32 = 0xFFFFFF;
const BORDER: u32 = 0x595959;
const FOCUS_RING: u32 = 0x1A1A1A;
const SCROLL_TRACK: u32 = 0xE6E6E6;
const SCROLL_THUMB: u32 = 0x595959;

/// The note shown above the buttons when a decline logs the user out.
pub const LOG_OUT_NOTE: &str =
    "If you decline, you will be logged out of this computer: the school requires an answer.";

/// A button of the dialog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Button {
    Accept,
    Decline,
}

/// A key the dialog understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Tab,
    ShiftTab,
    Activate,
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
}

/// The dialog's state: which button has the focus and how far the text is
/// scrolled (in pixels, 0 to `max_scroll`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dialog {
    pub focus: Button,
    pub scroll: i32,
    pub max_scroll: i32,
    /// The text area's height: one page.
    pub page: i32,
}

impl Dialog {
    pub fn new(content_height: i32, page: i32) -> Dialog {
        Dialog {
            focus: Button::Accept,
            scroll: 0,
            max_scroll: (content_height - page).max(0),
            page,
        }
    }

    /// Applies a key; the answer when a button was pressed.
    pub fn key(&mut self, key: Key) -> Option<Button> {
        match key {
            Key::Tab | Key::ShiftTab => {
                self.focus = match self.focus {
                    Button::Accept => Button::Decline,
                    Button::Decline => Button::Accept,
                };
            }
            Key::Activate => return Some(self.focus),
            Key::Up => self.scroll_by(-LINE_HEIGHT),
            Key::Down => self.scroll_by(LINE_HEIGHT),
            Key::PageUp => self.scroll_by(-(self.page - LINE_HEIGHT).max(LINE_HEIGHT)),
            Key::PageDown => self.scroll_by((self.page - LINE_HEIGHT).max(LINE_HEIGHT)),
            Key::Home => self.scroll = 0,
            Key::End => self.scroll = self.max_scroll,
        }
        None
    }

    pub fn scroll_by(&mut self, pixels: i32) {
        self.scroll = (self.scroll + pixels).clamp(0, self.max_scroll);
    }
}

/// A rectangle: x, y, width, height.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    pub x: i32,
    pub y: i32,
    pub w: i32,
    pub h: i32,
}

impl Rect {
    fn contains(&self, x: i32, y: i32) -> bool {
        x >= self.x && y >= self.y && x < self.x + self.w && y < self.y + self.h
    }
}

/// Where everything goes in a window of `width` × `height`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub width: i32,
    pub height: i32,
    pub text: Rect,
    pub note_y: i32,
    pub accept: Rect,
    pub decline: Rect,
}

impl Layout {
    pub fn new(width: i32, height: i32, with_note: bool) -> Layout {
        let buttons_y = height - MARGIN - BUTTON_HEIGHT;
        let note_y = buttons_y - 16 - LINE_HEIGHT;
        let text_bottom = if with_note {
            note_y - 12
        } else {
            buttons_y - 16
        };
        let text_top = MARGIN + 40;
        let accept = Rect {
            x: width - MARGIN - BUTTON_WIDTH,
            y: buttons_y,
            w: BUTTON_WIDTH,
            h: BUTTON_HEIGHT,
        };
        let decline = Rect {
            x: accept.x - BUTTON_GAP - BUTTON_WIDTH,
            ..accept
        };
        Layout {
            width,
            height,
            text: Rect {
                x: MARGIN,
                y: text_top,
                w: width - 2 * MARGIN,
                h: (text_bottom - text_top).max(LINE_HEIGHT),
            },
            note_y,
            accept,
            decline,
        }
    }

    /// The button under a click.
    pub fn button_at(&self, x: i32, y: i32) -> Option<Button> {
        if self.accept.contains(x, y) {
            Some(Button::Accept)
        } else if self.decline.contains(x, y) {
            Some(Button::Decline)
        } else {
            None
        }
    }
}

/// The text broken into lines no wider than `width` as `measure` says:
/// paragraphs at new lines, lines at spaces, a word too long for a line
/// at any character. Empty paragraphs stay as empty lines.
pub fn wrap(text: &str, width: f32, measure: &dyn Fn(&str) -> f32) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.split('\n') {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            let candidate = if line.is_empty() {
                word.to_owned()
            } else {
                format!("{line} {word}")
            };
            if measure(&candidate) <= width {
                line = candidate;
                continue;
            }
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            // The word alone: cut it where it no longer fits.
            for c in word.chars() {
                line.push(c);
                if measure(&line) > width && line.chars().count() > 1 {
                    line.pop();
                    lines.push(std::mem::take(&mut line));
                    line.push(c);
                }
            }
        }
        lines.push(line);
    }
    lines
}

/// The fonts the window draws with.
pub struct Fonts {
    regular: FontVec,
    bold: FontVec,
}

impl Fonts {
    /// DejaVu Sans and DejaVu Sans Bold from `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<Fonts> {
        let read = |name: &str| -> anyhow::Result<FontVec> {
            let path = dir.join(name);
            let bytes = std::fs::read(&path)
                .map_err(|e| anyhow::anyhow!("reading the font {}: {e}", path.display()))?;
            FontVec::try_from_vec(bytes)
                .map_err(|e| anyhow::anyhow!("the font {}: {e}", path.display()))
        };
        Ok(Fonts {
            regular: read("DejaVuSans.ttf")?,
            bold: read("DejaVuSans-Bold.ttf")?,
        })
    }

    fn width(font: &FontVec, size: f32, text: &str) -> f32 {
        let scaled = font.as_scaled(PxScale::from(size));
        let mut width = 0.0;
        let mut previous = None;
        for c in text.chars() {
            let id = scaled.glyph_id(c);
            if let Some(previous) = previous {
                width += scaled.kern(previous, id);
            }
            width += scaled.h_advance(id);
            previous = Some(id);
        }
        width
    }
}

/// A frame of 0x00RRGGBB pixels, drawn into and then sent to the window.
pub struct Canvas {
    pub width: i32,
    pub height: i32,
    pub pixels: Vec<u32>,
}

impl Canvas {
    fn new(width: i32, height: i32) -> Canvas {
        Canvas {
            width,
            height,
            pixels: vec![BACKGROUND; (width * height) as usize],
        }
    }

    fn fill(&mut self, r: Rect, colour: u32) {
        for y in r.y.max(0)..(r.y + r.h).min(self.height) {
            for x in r.x.max(0)..(r.x + r.w).min(self.width) {
                self.pixels[(y * self.width + x) as usize] = colour;
            }
        }
    }

    fn outline(&mut self, r: Rect, thickness: i32, colour: u32) {
        self.fill(Rect { h: thickness, ..r }, colour);
        self.fill(
            Rect {
                y: r.y + r.h - thickness,
                h: thickness,
                ..r
            },
            colour,
        );
        self.fill(Rect { w: thickness, ..r }, colour);
        self.fill(
            Rect {
                x: r.x + r.w - thickness,
                w: thickness,
                ..r
            },
            colour,
        );
    }

    /// Draws `text` with its baseline at `y`, clipped to `clip`.
    fn text(
        &mut self,
        font: &FontVec,
        size: f32,
        at: (f32, f32),
        text: &str,
        colour: u32,
        clip: Rect,
    ) {
        let scaled = font.as_scaled(PxScale::from(size));
        let (mut x, y) = at;
        let mut previous = None;
        for c in text.chars() {
            let id = scaled.glyph_id(c);
            if let Some(previous) = previous {
                x += scaled.kern(previous, id);
            }
            let glyph = id.with_scale_and_position(PxScale::from(size), ab_glyph::point(x, y));
            x += scaled.h_advance(id);
            previous = Some(id);
            let Some(outlined) = font.outline_glyph(glyph) else {
                continue;
            };
            let bounds = outlined.px_bounds();
            outlined.draw(|gx, gy, coverage| {
                let px = bounds.min.x as i32 + gx as i32;
                let py = bounds.min.y as i32 + gy as i32;
                if !clip.contains(px, py) || px >= self.width || py >= self.height {
                    return;
                }
                let at = (py * self.width + px) as usize;
                self.pixels[at] = blend(self.pixels[at], colour, coverage);
            });
        }
    }
}

fn blend(under: u32, over: u32, coverage: f32) -> u32 {
    let coverage = coverage.clamp(0.0, 1.0);
    let channel = |shift: u32| {
        let a = ((under >> shift) & 0xFF) as f32;
        let b = ((over >> shift) & 0xFF) as f32;
        ((a + (b - a) * coverage).round() as u32) << shift
    };
    channel(16) | channel(8) | channel(0)
}

/// What the window shows, laid out once.
pub struct View<'a> {
    pub prompt: &'a AupPrompt,
    pub fonts: &'a Fonts,
    pub layout: Layout,
    pub lines: Vec<String>,
}

impl<'a> View<'a> {
    pub fn new(prompt: &'a AupPrompt, fonts: &'a Fonts, width: i32, height: i32) -> View<'a> {
        let layout = Layout::new(width, height, prompt.log_out_on_decline);
        // Room for the scroll bar on the right.
        let text_width = (layout.text.w - 20) as f32;
        let measure = |s: &str| Fonts::width(&fonts.regular, TEXT_SIZE, s);
        let lines = wrap(&prompt.text, text_width, &measure);
        View {
            prompt,
            fonts,
            layout,
            lines,
        }
    }

    pub fn dialog(&self) -> Dialog {
        Dialog::new(
            self.lines.len() as i32 * LINE_HEIGHT + 8,
            self.layout.text.h - 8,
        )
    }

    /// The whole frame for `dialog`'s state.
    pub fn render(&self, dialog: &Dialog) -> Canvas {
        let l = &self.layout;
        let mut canvas = Canvas::new(l.width, l.height);
        let everywhere = Rect {
            x: 0,
            y: 0,
            w: l.width,
            h: l.height,
        };
        canvas.text(
            &self.fonts.bold,
            TITLE_SIZE,
            (MARGIN as f32, (MARGIN + 22) as f32),
            &self.prompt.title,
            TEXT,
            Rect {
                w: l.width - MARGIN,
                ..everywhere
            },
        );
        canvas.outline(
            Rect {
                x: l.text.x - 1,
                y: l.text.y - 1,
                w: l.text.w + 2,
                h: l.text.h + 2,
            },
            1,
            BORDER,
        );
        let inner = Rect {
            x: l.text.x + 8,
            y: l.text.y + 4,
            w: l.text.w - 28,
            h: l.text.h - 8,
        };
        for (n, line) in self.lines.iter().enumerate() {
            let top = inner.y + n as i32 * LINE_HEIGHT - dialog.scroll;
            if top + LINE_HEIGHT < inner.y || top > inner.y + inner.h {
                continue;
            }
            let baseline = (top + LINE_HEIGHT - 6) as f32;
            canvas.text(
                &self.fonts.regular,
                TEXT_SIZE,
                (inner.x as f32, baseline),
                line,
                TEXT,
                inner,
            );
        }
        if dialog.max_scroll > 0 {
            let track = Rect {
                x: l.text.x + l.text.w - 12,
                y: l.text.y + 2,
                w: 10,
                h: l.text.h - 4,
            };
            canvas.fill(track, SCROLL_TRACK);
            let total = dialog.max_scroll + dialog.page;
            let thumb_h = (track.h * dialog.page / total).max(24).min(track.h);
            let thumb_y = track.y + (track.h - thumb_h) * dialog.scroll / dialog.max_scroll;
            canvas.fill(
                Rect {
                    y: thumb_y,
                    h: thumb_h,
                    ..track
                },
                SCROLL_THUMB,
            );
        }
        if self.prompt.log_out_on_decline {
            canvas.text(
                &self.fonts.regular,
                15.0,
                (MARGIN as f32, (l.note_y + 16) as f32),
                LOG_OUT_NOTE,
                NOTE,
                Rect {
                    w: l.width - MARGIN,
                    ..everywhere
                },
            );
        }
        self.button(&mut canvas, l.accept, "Accept", true);
        self.button(&mut canvas, l.decline, "Decline", false);
        let focused = match dialog.focus {
            Button::Accept => l.accept,
            Button::Decline => l.decline,
        };
        canvas.outline(
            Rect {
                x: focused.x - 5,
                y: focused.y - 5,
                w: focused.w + 10,
                h: focused.h + 10,
            },
            3,
            FOCUS_RING,
        );
        canvas
    }

    fn button(&self, canvas: &mut Canvas, r: Rect, label: &str, primary: bool) {
        let (fill, text) = if primary {
            (ACCEPT_FILL, ACCEPT_TEXT)
        } else {
            (BACKGROUND, TEXT)
        };
        canvas.fill(r, fill);
        canvas.outline(r, 2, if primary { ACCEPT_FILL } else { BORDER });
        let width = Fonts::width(&self.fonts.bold, TEXT_SIZE, label);
        let x = r.x as f32 + (r.w as f32 - width) / 2.0;
        let y = (r.y + r.h / 2 + 6) as f32;
        canvas.text(&self.fonts.bold, TEXT_SIZE, (x, y), label, text, r);
    }
}

/// X keysyms the dialog reads.
mod keysym {
    pub const TAB: u32 = 0xff09;
    pub const ISO_LEFT_TAB: u32 = 0xfe20;
    pub const RETURN: u32 = 0xff0d;
    pub const KP_ENTER: u32 = 0xff8d;
    pub const SPACE: u32 = 0x20;
    pub const UP: u32 = 0xff52;
    pub const DOWN: u32 = 0xff54;
    pub const PAGE_UP: u32 = 0xff55;
    pub const PAGE_DOWN: u32 = 0xff56;
    pub const HOME: u32 = 0xff50;
    pub const END: u32 = 0xff57;
    pub const LEFT: u32 = 0xff51;
    pub const RIGHT: u32 = 0xff53;
}

/// The dialog's key for an X keysym and whether Shift is held.
pub fn key_of(sym: u32, shift: bool) -> Option<Key> {
    Some(match sym {
        keysym::TAB if shift => Key::ShiftTab,
        keysym::TAB | keysym::RIGHT => Key::Tab,
        keysym::ISO_LEFT_TAB | keysym::LEFT => Key::ShiftTab,
        keysym::RETURN | keysym::KP_ENTER | keysym::SPACE => Key::Activate,
        keysym::UP => Key::Up,
        keysym::DOWN => Key::Down,
        keysym::PAGE_UP => Key::PageUp,
        keysym::PAGE_DOWN => Key::PageDown,
        keysym::HOME => Key::Home,
        keysym::END => Key::End,
        _ => return None,
    })
}

/// Shows `prompt` on the session's X display until the user answers:
/// true for Accept, false for Decline.
pub fn ask(prompt: &AupPrompt, fonts: &Fonts) -> anyhow::Result<bool> {
    let (conn, screen_number) = x11rb::connect(None)?;
    let screen = conn.setup().roots[screen_number].clone();
    let format = conn
        .setup()
        .pixmap_formats
        .iter()
        .find(|f| f.depth == screen.root_depth)
        .copied();
    if screen.root_depth != 24 || format.is_none_or(|f| f.bits_per_pixel != 32) {
        anyhow::bail!(
            "the acceptable-use window needs a 24-bit display (this one has depth {})",
            screen.root_depth
        );
    }
    let width = WIDTH.min(screen.width_in_pixels);
    let height = HEIGHT.min(screen.height_in_pixels);
    let x = (screen.width_in_pixels - width) as i16 / 2;
    let y = (screen.height_in_pixels - height) as i16 / 2;
    let window = conn.generate_id()?;
    conn.create_window(
        screen.root_depth,
        window,
        screen.root,
        x,
        y,
        width,
        height,
        0,
        WindowClass::INPUT_OUTPUT,
        screen.root_visual,
        &CreateWindowAux::new()
            .background_pixel(BACKGROUND)
            .event_mask(
                EventMask::EXPOSURE
                    | EventMask::KEY_PRESS
                    | EventMask::BUTTON_PRESS
                    | EventMask::STRUCTURE_NOTIFY,
            ),
    )?;
    let atom =
        |name: &[u8]| -> anyhow::Result<u32> { Ok(conn.intern_atom(false, name)?.reply()?.atom) };
    let utf8 = atom(b"UTF8_STRING")?;
    conn.change_property8(
        PropMode::REPLACE,
        window,
        AtomEnum::WM_NAME,
        AtomEnum::STRING,
        latin1(&prompt.title).as_slice(),
    )?;
    conn.change_property8(
        PropMode::REPLACE,
        window,
        atom(b"_NET_WM_NAME")?,
        utf8,
        prompt.title.as_bytes(),
    )?;
    conn.change_property8(
        PropMode::REPLACE,
        window,
        AtomEnum::WM_CLASS,
        AtomEnum::STRING,
        b"hallmonitor-aup\0Hallmonitor\0",
    )?;
    conn.change_property32(
        PropMode::REPLACE,
        window,
        atom(b"_NET_WM_WINDOW_TYPE")?,
        AtomEnum::ATOM,
        &[atom(b"_NET_WM_WINDOW_TYPE_DIALOG")?],
    )?;
    conn.change_property32(
        PropMode::REPLACE,
        window,
        atom(b"_NET_WM_STATE")?,
        AtomEnum::ATOM,
        &[atom(b"_NET_WM_STATE_ABOVE")?],
    )?;
    // Closing the window is not an answer: the WM asks, we ignore it.
    let delete = atom(b"WM_DELETE_WINDOW")?;
    conn.change_property32(
        PropMode::REPLACE,
        window,
        atom(b"WM_PROTOCOLS")?,
        AtomEnum::ATOM,
        &[delete],
    )?;
    // WM_NORMAL_HINTS: program-specified position, fixed size.
    let (w, h) = (u32::from(width), u32::from(height));
    let hints: [u32; 18] = [
        0x4 | 0x10 | 0x20, // PPosition | PMinSize | PMaxSize
        x as u32,
        y as u32,
        w,
        h,
        w,
        h,
        w,
        h,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    conn.change_property32(
        PropMode::REPLACE,
        window,
        AtomEnum::WM_NORMAL_HINTS,
        AtomEnum::WM_SIZE_HINTS,
        &hints,
    )?;
    let gc = conn.generate_id()?;
    conn.create_gc(gc, window, &CreateGCAux::new())?;
    conn.map_window(window)?;
    conn.flush()?;

    let keymap = Keymap::read(&conn)?;
    let view = View::new(prompt, fonts, i32::from(width), i32::from(height));
    let mut dialog = view.dialog();
    let max_bytes = conn.maximum_request_bytes();
    let draw = |dialog: &Dialog| -> anyhow::Result<()> {
        let canvas = view.render(dialog);
        let row_bytes = canvas.width as usize * 4;
        let rows_per_request = ((max_bytes.saturating_sub(64)) / row_bytes).max(1);
        for (n, rows) in canvas
            .pixels
            .chunks(canvas.width as usize * rows_per_request)
            .enumerate()
        {
            let bytes: Vec<u8> = rows.iter().flat_map(|p| p.to_le_bytes()).collect();
            let lines = rows.len() / canvas.width as usize;
            conn.put_image(
                ImageFormat::Z_PIXMAP,
                window,
                gc,
                canvas.width as u16,
                lines as u16,
                0,
                (n * rows_per_request) as i16,
                0,
                screen.root_depth,
                &bytes,
            )?;
        }
        conn.flush()?;
        Ok(())
    };
    loop {
        let answer = match conn.wait_for_event()? {
            Event::Expose(e) if e.count == 0 => {
                draw(&dialog)?;
                None
            }
            Event::MapNotify(_) => {
                conn.set_input_focus(InputFocus::PARENT, window, x11rb::CURRENT_TIME)?;
                conn.flush()?;
                None
            }
            Event::KeyPress(e) => {
                let shift =
                    u16::from(e.state) & u16::from(x11rb::protocol::xproto::KeyButMask::SHIFT) != 0;
                let before = dialog.clone();
                let answer = keymap
                    .keysym(e.detail)
                    .and_then(|sym| key_of(sym, shift))
                    .and_then(|key| dialog.key(key));
                if dialog != before {
                    draw(&dialog)?;
                }
                answer
            }
            Event::ButtonPress(e) => {
                let before = dialog.clone();
                let answer = match e.detail {
                    1 => view
                        .layout
                        .button_at(i32::from(e.event_x), i32::from(e.event_y)),
                    4 => {
                        dialog.scroll_by(-SCROLL_LINES_PER_WHEEL * LINE_HEIGHT);
                        None
                    }
                    5 => {
                        dialog.scroll_by(SCROLL_LINES_PER_WHEEL * LINE_HEIGHT);
                        None
                    }
                    _ => None,
                };
                if dialog != before {
                    draw(&dialog)?;
                }
                answer
            }
            _ => None,
        };
        if let Some(button) = answer {
            conn.destroy_window(window)?;
            conn.flush()?;
            return Ok(button == Button::Accept);
        }
    }
}

/// Where prompts go, to the window's thread.
pub type Prompts = std::sync::mpsc::Sender<AupPrompt>;

/// Starts the thread that shows prompts one at a time (a version once) and
/// hands each answer back to the helper's loop, which sends it on the one
/// writer of the daemon's socket (so it never interleaves with a capture).
pub fn serve() -> (Prompts, std::sync::mpsc::Receiver<AupAnswer>) {
    let (sender, prompts) = std::sync::mpsc::channel::<AupPrompt>();
    let (answers, answered_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut answered = 0;
        while let Ok(prompt) = prompts.recv() {
            if prompt.version <= answered {
                continue;
            }
            let shown = Fonts::load(Path::new(FONT_DIR)).and_then(|fonts| ask(&prompt, &fonts));
            let accepted = match shown {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::error!(error = %e, "cannot show the acceptable-use policy");
                    continue;
                }
            };
            answered = prompt.version;
            tracing::info!(
                version = prompt.version,
                accepted,
                "acceptable-use policy answered"
            );
            let answer = AupAnswer {
                version: prompt.version,
                accepted,
            };
            if answers.send(answer).is_err() {
                return;
            }
        }
    });
    (sender, answered_rx)
}

/// The title for the Latin-1 `WM_NAME` (other characters as '?').
fn latin1(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect()
}

/// Keycode to the first keysym of each key.
struct Keymap {
    min_keycode: u8,
    per_keycode: usize,
    keysyms: Vec<u32>,
}

impl Keymap {
    fn read(conn: &impl Connection) -> anyhow::Result<Keymap> {
        let setup = conn.setup();
        let (min, max) = (setup.min_keycode, setup.max_keycode);
        let reply = conn.get_keyboard_mapping(min, max - min + 1)?.reply()?;
        Ok(Keymap {
            min_keycode: min,
            per_keycode: usize::from(reply.keysyms_per_keycode),
            keysyms: reply.keysyms,
        })
    }

    fn keysym(&self, keycode: u8) -> Option<u32> {
        let index = usize::from(keycode.checked_sub(self.min_keycode)?) * self.per_keycode;
        self.keysyms.get(index).copied().filter(|&s| s != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_wraps_at_spaces_and_cuts_long_words() {
        // One unit per character.
        let measure = |s: &str| s.chars().count() as f32;
        let cases: &[(&str, &str, f32, &[&str])] = &[
            ("fits", "a b c", 10.0, &["a b c"]),
            ("at spaces", "one two three", 7.0, &["one two", "three"]),
            ("paragraphs kept", "a\n\nb", 10.0, &["a", "", "b"]),
            ("long word cut", "abcdefgh", 3.0, &["abc", "def", "gh"]),
            (
                "long word after a short",
                "ab cdefg",
                3.0,
                &["ab", "cde", "fg"],
            ),
            ("spaces collapse", "  a   b  ", 10.0, &["a b"]),
            ("empty", "", 10.0, &[""]),
        ];
        for (name, text, width, expected) in cases {
            assert_eq!(wrap(text, *width, &measure), *expected, "{name}");
        }
    }

    #[test]
    fn the_keyboard_moves_the_focus_scrolls_and_answers() {
        let mut dialog = Dialog::new(1000, 200);
        assert_eq!(dialog.max_scroll, 800);
        assert_eq!(dialog.focus, Button::Accept);
        assert_eq!(dialog.key(Key::Tab), None);
        assert_eq!(dialog.focus, Button::Decline);
        assert_eq!(dialog.key(Key::ShiftTab), None);
        assert_eq!(dialog.focus, Button::Accept);
        dialog.key(Key::Down);
        assert_eq!(dialog.scroll, LINE_HEIGHT);
        dialog.key(Key::Up);
        dialog.key(Key::Up);
        assert_eq!(dialog.scroll, 0, "not above the top");
        dialog.key(Key::PageDown);
        assert_eq!(dialog.scroll, 200 - LINE_HEIGHT);
        dialog.key(Key::End);
        assert_eq!(dialog.scroll, 800);
        dialog.key(Key::Down);
        assert_eq!(dialog.scroll, 800, "not below the end");
        dialog.key(Key::Home);
        assert_eq!(dialog.scroll, 0);
        dialog.key(Key::Tab);
        assert_eq!(dialog.key(Key::Activate), Some(Button::Decline));
        let mut short = Dialog::new(100, 200);
        short.key(Key::End);
        assert_eq!(short.scroll, 0, "a short text does not scroll");
    }

    #[test]
    fn keysyms_map_to_keys() {
        let cases = [
            (keysym::TAB, false, Some(Key::Tab)),
            (keysym::TAB, true, Some(Key::ShiftTab)),
            (keysym::ISO_LEFT_TAB, true, Some(Key::ShiftTab)),
            (keysym::RETURN, false, Some(Key::Activate)),
            (keysym::KP_ENTER, false, Some(Key::Activate)),
            (keysym::SPACE, false, Some(Key::Activate)),
            (keysym::PAGE_DOWN, false, Some(Key::PageDown)),
            (0x61, false, None),
        ];
        for (sym, shift, expected) in cases {
            assert_eq!(key_of(sym, shift), expected, "{sym:#x}");
        }
    }

    #[test]
    fn clicks_land_on_buttons_and_nothing_overlaps() {
        let layout = Layout::new(640, 480, true);
        let centre = |r: Rect| (r.x + r.w / 2, r.y + r.h / 2);
        let (ax, ay) = centre(layout.accept);
        let (dx, dy) = centre(layout.decline);
        assert_eq!(layout.button_at(ax, ay), Some(Button::Accept));
        assert_eq!(layout.button_at(dx, dy), Some(Button::Decline));
        assert_eq!(layout.button_at(layout.text.x + 1, layout.text.y + 1), None);
        assert!(layout.text.y + layout.text.h < layout.note_y);
        assert!(layout.note_y + LINE_HEIGHT < layout.accept.y);
        assert!(layout.decline.x + layout.decline.w < layout.accept.x);
    }

    #[test]
    fn colours_meet_wcag_aa() {
        fn luminance(rgb: u32) -> f64 {
            let channel = |shift: u32| {
                let c = f64::from((rgb >> shift) & 0xFF) / 255.0;
                if c <= 0.03928 {
                    c / 12.92
                } else {
                    ((c + 0.055) / 1.055).powf(2.4)
                }
            };
            0.2126 * channel(16) + 0.7152 * channel(8) + 0.0722 * channel(0)
        }
        fn contrast(a: u32, b: u32) -> f64 {
            let (la, lb) = (luminance(a), luminance(b));
            (la.max(lb) + 0.05) / (la.min(lb) + 0.05)
        }
        let text_pairs = [
            ("text", TEXT, BACKGROUND),
            ("note", NOTE, BACKGROUND),
            ("accept label", ACCEPT_TEXT, ACCEPT_FILL),
        ];
        for (name, fg, bg) in text_pairs {
            assert!(contrast(fg, bg) >= 4.5, "{name}: {}", contrast(fg, bg));
        }
        let non_text = [
            ("focus ring", FOCUS_RING, BACKGROUND),
            ("border", BORDER, BACKGROUND),
            ("scroll thumb", SCROLL_THUMB, SCROLL_TRACK),
            ("accept button", ACCEPT_FILL, BACKGROUND),
        ];
        for (name, fg, bg) in non_text {
            assert!(contrast(fg, bg) >= 3.0, "{name}: {}", contrast(fg, bg));
        }
    }

    #[test]
    fn the_frame_shows_text_buttons_and_the_focus_ring() {
        let Ok(fonts) = Fonts::load(Path::new(FONT_DIR)) else {
            // FIXME: needs fonts-dejavu-core (deploy/system-deps.sh).
            panic!("DejaVu fonts missing from {FONT_DIR}");
        };
        let prompt = AupPrompt {
            version: 1,
            title: "Acceptable use".into(),
            text: "Be kind online. ".repeat(200),
            log_out_on_decline: true,
        };
        let view = View::new(&prompt, &fonts, 640, 480);
        let mut dialog = view.dialog();
        assert!(dialog.max_scroll > 0, "a long text scrolls");
        let frame = view.render(&dialog);
        let at = |c: &Canvas, x: i32, y: i32| c.pixels[(y * c.width + x) as usize];
        let dark = frame.pixels.iter().filter(|&&p| p == TEXT).count();
        assert!(dark > 1000, "text drawn: {dark} pixels");
        let accept = view.layout.accept;
        assert_eq!(at(&frame, accept.x + 4, accept.y + 4), ACCEPT_FILL);
        // The ring is around Accept, not Decline.
        assert_eq!(at(&frame, accept.x - 4, accept.y + 10), FOCUS_RING);
        let decline = view.layout.decline;
        assert_eq!(at(&frame, decline.x - 4, decline.y + 10), BACKGROUND);
        dialog.key(Key::Tab);
        let frame = view.render(&dialog);
        assert_eq!(at(&frame, decline.x - 4, decline.y + 10), FOCUS_RING);
        assert!(frame.pixels.contains(&NOTE), "the log-out note is shown");
    }
}
