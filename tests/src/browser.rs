//! A real headless Chromium, driven over WebDriver, for the console's
//! browser tests: the flows a person clicks through, what a phone-width
//! window shows, cookie flags, and an accessibility check with axe-core.
//!
//! - `Browser::start` runs Debian's `chromedriver` on a loopback port the
//!   OS picks, with a fresh profile in a temporary directory; dropping the
//!   `Browser` ends the session and kills chromedriver and every Chromium
//!   process it started (they share one process group; Chromium's crash
//!   handler leaves the group but exits by itself once Chromium is gone).
//!   If the test is panicking, the drop first saves a screenshot and
//!   prints the page's address and chromedriver's log.
//! - The methods are blocking, like the rest of this harness: call them
//!   from a plain `#[test]`, not from inside an async runtime. A failed
//!   step panics naming the step and its selector.
//! - Waiting is polling with a deadline (`wait_for`, or the crate's
//!   `wait_for` for any other condition), never a fixed sleep.
//! - The network here is closed: the command-line flags turn off
//!   Chromium's background connections (updates, sync, components).
//!
//! Needs `chromium` and `chromium-driver` (deploy/system-deps.sh test) and,
//! for `axe`, the npm package axe-core under `target/axe-core`
//! (tests/run.sh installs both).

use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Process;

/// Debian's chromedriver (package chromium-driver).
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The Chromium binary itself. /usr/bin/chromium is a shell launcher that
/// adds the flags of /etc/chromium.d (extension loading, GPU
/// rasterisation) and then runs this file; starting it directly keeps the
/// browser's flags exactly the ones below.
const CHROMIUM: &str = "/usr/lib/chromium/chromium";

/// How long `wait_for` waits by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);
/// No single WebDriver command may take longer than this (a page load, a
/// script): past it the test fails instead of hanging.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// The WCAG levels the console must meet, as axe-core tags.
const AXE_TAGS: [&str; 5] = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"];

/// A headless Chromium session; everything it started dies with it.
pub struct Browser {
    // Declared (and so dropped) in this order: the session, the runtime
    // its background task runs on, chromedriver, then the profile.
    client: Option<Client>,
    runtime: tokio::runtime::Runtime,
    _driver: Driver,
    _home: tempfile::TempDir,
}

/// chromedriver, leading a process group that the Chromium it starts
/// joins: dropping it kills them all, even if the session never started.
struct Driver(Process);

impl Drop for Driver {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group our own child leads.
        unsafe { libc::kill(-(self.0.pid() as i32), libc::SIGKILL) };
        // Then the `Process` field reaps chromedriver (and prints its
        // logs if the test is panicking).
    }
}

/// A cookie as the browser holds it, with the flags the server set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cookie {
    pub name: String,
    pub value: String,
    pub path: Option<String>,
    pub domain: Option<String>,
    pub secure: bool,
    pub http_only: bool,
    pub same_site: Option<SameSite>,
    /// None for a session cookie.
    pub expires: Option<jiff::Timestamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

/// One axe-core rule that the page breaks, and where.
#[derive(Debug, Clone, Deserialize)]
pub struct AxeViolation {
    /// The rule, e.g. `image-alt`, `label`, `color-contrast`.
    pub id: String,
    /// None when axe gives no impact.
    pub impact: Option<Impact>,
    /// What the rule asks for, in a sentence.
    pub help: String,
    /// A CSS selector for each element that breaks it.
    pub targets: Vec<String>,
}

/// axe-core's impact levels, least to most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Impact {
    Minor,
    Moderate,
    Serious,
    Critical,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session.
    #[track_caller]
    pub fn start() -> Browser {
        for binary in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: run `bash deploy/system-deps.sh test` as root \
                 (it installs chromium and chromium-driver)"
            );
        }
        let home = tempfile::tempdir().expect("browser temporary directory");
        let logs = home.path().join("logs");
        std::fs::create_dir(&logs).expect("browser log directory");
        let mut command = Command::new(CHROMEDRIVER);
        // Port 0: chromedriver binds a free loopback port and prints it.
        // Its own process group, so that drop can kill Chromium too.
        command.arg("--port=0").process_group(0);
        // Whatever Chromium writes outside its profile stays in the
        // temporary directory too.
        command
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .env("XDG_CACHE_HOME", home.path().join("cache"));
        let mut driver = Driver(Process::spawn("chromedriver", command, &logs));
        let port = wait_for_port(&mut driver.0);
        wait_until_ready(&mut driver.0, port);

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let capabilities = capabilities(&home.path().join("profile"));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = runtime
            .block_on(async {
                let mut builder = ClientBuilder::new(connector);
                builder.capabilities(capabilities);
                let url = format!("http://127.0.0.1:{port}");
                let connect = builder.connect(&url);
                tokio::time::timeout(COMMAND_TIMEOUT, connect).await
            })
            .unwrap_or_else(|_| panic!("no Chromium session within {COMMAND_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("starting a Chromium session: {e}"));
        Browser {
            client: Some(client),
            runtime,
            _driver: driver,
            _home: home,
        }
    }

    /// Opens `url` and waits for it to load.
    #[track_caller]
    pub fn goto(&self, url: &str) {
        self.run(
            &format!("opening {url}"),
            |c| async move { c.goto(url).await },
        );
    }

    #[track_caller]
    pub fn current_url(&self) -> String {
        self.run(
            "reading the address",
            |c| async move { c.current_url().await },
        )
        .to_string()
    }

    /// The current DOM, serialised.
    #[track_caller]
    pub fn page_source(&self) -> String {
        self.run(
            "reading the page source",
            |c| async move { c.source().await },
        )
    }

    /// Clears the field matching `css` and types `text` into it.
    #[track_caller]
    pub fn fill(&self, css: &str, text: &str) {
        self.run(&format!("filling {css}"), |c| async move {
            let field = c.find(Locator::Css(css)).await?;
            field.clear().await?;
            field.send_keys(text).await
        });
    }

    #[track_caller]
    pub fn click(&self, css: &str) {
        self.run(&format!("clicking {css}"), |c| async move {
            c.find(Locator::Css(css)).await?.click().await
        });
    }

    /// Presses Enter in the element matching `css` (in a form field, this
    /// submits the form as a person would).
    #[track_caller]
    pub fn press_enter(&self, css: &str) {
        let enter = char::from(fantoccini::key::Key::Enter).to_string();
        self.run(&format!("pressing Enter in {css}"), |c| async move {
            c.find(Locator::Css(css)).await?.send_keys(&enter).await
        });
    }

    /// Submits the form matching `css` as its submit button would
    /// (validation and submit handlers run).
    #[track_caller]
    pub fn submit_form(&self, css: &str) {
        self.execute(
            "document.querySelector(arguments[0]).requestSubmit()",
            vec![json!(css)],
        );
    }

    /// The rendered text of the element matching `css`.
    #[track_caller]
    pub fn text(&self, css: &str) -> String {
        self.run(&format!("reading the text of {css}"), |c| async move {
            c.find(Locator::Css(css)).await?.text().await
        })
    }

    /// An attribute of the element matching `css`, if it has it.
    #[track_caller]
    pub fn attribute(&self, css: &str, name: &str) -> Option<String> {
        self.run(&format!("reading {name} of {css}"), |c| async move {
            c.find(Locator::Css(css)).await?.attr(name).await
        })
    }

    /// How many elements match `css` now.
    #[track_caller]
    pub fn count(&self, css: &str) -> usize {
        self.run(&format!("finding {css}"), |c| async move {
            c.find_all(Locator::Css(css)).await
        })
        .len()
    }

    /// Whether an element matches `css` now.
    #[track_caller]
    pub fn exists(&self, css: &str) -> bool {
        self.count(css) > 0
    }

    /// Waits up to `DEFAULT_WAIT` for an element to match `css`.
    #[track_caller]
    pub fn wait_for(&self, css: &str) {
        self.wait_for_within(css, DEFAULT_WAIT);
    }

    #[track_caller]
    pub fn wait_for_within(&self, css: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.exists(css) {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {css} on {}",
                self.current_url()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resizes the window; in headless Chromium the viewport is the window.
    #[track_caller]
    pub fn set_window_size(&self, width: u32, height: u32) {
        self.run(&format!("resizing to {width}×{height}"), |c| async move {
            c.set_window_size(width, height).await
        });
    }

    /// The cookies visible to the current page, with their flags
    /// (HttpOnly ones included: WebDriver reads the browser's jar).
    #[track_caller]
    pub fn cookies(&self) -> Vec<Cookie> {
        let cookies = self.run(
            "reading cookies",
            |c| async move { c.get_all_cookies().await },
        );
        cookies.iter().map(cookie_from).collect()
    }

    /// Runs `js` as the body of a function in the page (`arguments[i]`
    /// are `args`) and returns what it returns. Page CSP does not apply.
    #[track_caller]
    pub fn execute(&self, js: &str, args: Vec<Value>) -> Value {
        self.run(
            "running a script",
            |c| async move { c.execute(js, args).await },
        )
    }

    /// Saves a PNG of the viewport as
    /// `target/console-screenshots/NAME.png` and returns its path.
    #[track_caller]
    pub fn screenshot(&self, name: &str) -> PathBuf {
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "screenshot name {name:?}: use letters, digits, - and _"
        );
        let png = self.run(
            "taking a screenshot",
            |c| async move { c.screenshot().await },
        );
        let dir = target_dir().join("console-screenshots");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    /// Runs axe-core's WCAG 2.0–2.2 A and AA rules on the current page.
    ///
    /// axe is injected through WebDriver's execute-script, which Chromium
    /// runs outside the page's Content-Security-Policy: a console that
    /// allows no inline or eval'd script is checked all the same (the
    /// browser smoke test proves it on a page with such a policy).
    #[track_caller]
    pub fn axe(&self) -> Vec<AxeViolation> {
        let loaded = self.execute("return typeof window.axe === 'object';", vec![]);
        if loaded != json!(true) {
            let path = axe_script();
            let source = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "reading {}: {e} (tests/run.sh installs axe-core)",
                    path.display()
                )
            });
            self.execute(&format!("{source}\n;return null;"), vec![]);
        }
        let script = r#"
            const done = arguments[arguments.length - 1];
            axe.run(document, { runOnly: { type: 'tag', values: arguments[0] } })
                .then(results => done({ violations: results.violations.map(v => ({
                    id: v.id,
                    impact: v.impact || null,
                    help: v.help,
                    targets: v.nodes.map(n => n.target.flat(Infinity).join(' ')),
                })) }))
                .catch(error => done({ error: String(error) }));
        "#;
        let result = self.run("running axe", |c| async move {
            c.execute_async(script, vec![json!(AXE_TAGS)]).await
        });
        if let Some(error) = result.get("error") {
            panic!("axe failed on {}: {error}", self.current_url());
        }
        serde_json::from_value(result["violations"].clone())
            .unwrap_or_else(|e| panic!("axe's answer: {e}: {result}"))
    }

    /// Fails the test, listing them, if axe finds any serious or critical
    /// violation on the current page (`page_name` names it in the message).
    #[track_caller]
    pub fn assert_no_serious_axe_violations(&self, page_name: &str) {
        let serious: Vec<AxeViolation> = self
            .axe()
            .into_iter()
            .filter(|v| v.impact >= Some(Impact::Serious))
            .collect();
        if serious.is_empty() {
            return;
        }
        let list: Vec<String> = serious
            .iter()
            .map(|v| {
                format!(
                    "  {} ({:?}): {}\n    at {}",
                    v.id,
                    v.impact,
                    v.help,
                    v.targets.join(", ")
                )
            })
            .collect();
        panic!(
            "{page_name} ({}) has {} serious or critical accessibility violation(s):\n{}",
            self.current_url(),
            serious.len(),
            list.join("\n")
        );
    }

    /// Runs one WebDriver step, failing the test with `what` and the
    /// error if it fails or takes longer than `COMMAND_TIMEOUT`.
    #[track_caller]
    fn run<'a, T, E, F>(&'a self, what: &str, step: impl FnOnce(&'a Client) -> F) -> T
    where
        F: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let client = self.client.as_ref().expect("session open until drop");
        let step = step(client);
        let outcome = self
            .runtime
            .block_on(async { tokio::time::timeout(COMMAND_TIMEOUT, step).await });
        match outcome {
            Ok(Ok(value)) => value,
            Ok(Err(e)) => panic!("{what}: {e}"),
            Err(_) => panic!("{what}: no answer within {COMMAND_TIMEOUT:?}"),
        }
    }

    /// On a failing test: a screenshot and the page's address.
    fn record_failure(&self) {
        let name: String = std::thread::current()
            .name()
            .unwrap_or("test")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let Some(client) = self.client.as_ref() else {
            return;
        };
        let snapshot = self.runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), async {
                (client.current_url().await, client.screenshot().await)
            })
            .await
        });
        let Ok((url, png)) = snapshot else {
            return;
        };
        let dir = target_dir().join("console-screenshots");
        let path = dir.join(format!("FAILED-{name}.png"));
        if let Ok(png) = png
            && std::fs::create_dir_all(&dir).is_ok()
            && std::fs::write(&path, png).is_ok()
        {
            eprintln!("browser screenshot at failure: {}", path.display());
        }
        if let Ok(url) = url {
            eprintln!("browser page at failure: {url}");
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A second panic here would abort the test process and leave
            // Chromium running: the screenshot is only a nicety.
            let _ =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.record_failure()));
        }
        // Ending the session makes chromedriver quit Chromium cleanly.
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), client.close()).await
            });
        }
        // Dropping `_driver` then kills anything left in its group.
    }
}

/// The session's capabilities: certificates from the collector's own CA
/// accepted, headless, a fresh profile, and no background connections.
fn capabilities(profile: &Path) -> serde_json::Map<String, Value> {
    let args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        // Not --disable-crashpad-for-testing (to keep the crash handler
        // out): with it, Chromium 156's network service dies on an FD
        // ownership check and no page loads.
    ]
    .map(String::from)
    .into_iter()
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect::<Vec<_>>();
    let capabilities = json!({
        "browserName": "chrome",
        "acceptInsecureCerts": true,
        "timeouts": { "script": 30_000, "pageLoad": 30_000, "implicit": 0 },
        "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
    });
    match capabilities {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

/// Reads the port chromedriver chose from its first lines of output.
fn wait_for_port(driver: &mut Process) -> u16 {
    crate::wait_for("chromedriver to listen", Duration::from_secs(20), || {
        if let Some(code) = driver.has_exited() {
            panic!(
                "chromedriver exited with {code}: {}{}",
                driver.stdout_text(),
                driver.stderr_text()
            );
        }
        driver.stdout_text().lines().find_map(|line| {
            line.strip_prefix("ChromeDriver was started successfully on port ")?
                .trim_end_matches('.')
                .parse()
                .ok()
        })
    })
}

/// Polls chromedriver's `/status` until it says it is ready.
fn wait_until_ready(driver: &mut Process, port: u16) {
    crate::wait_for("chromedriver to be ready", Duration::from_secs(20), || {
        driver.assert_running();
        status_ready(port).then_some(())
    });
}

fn status_ready(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.take(64 * 1024).read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") && answer.contains("\"ready\":true")
}

fn cookie_from(cookie: &fantoccini::cookies::Cookie<'static>) -> Cookie {
    Cookie {
        name: cookie.name().to_owned(),
        value: cookie.value().to_owned(),
        path: cookie.path().map(str::to_owned),
        domain: cookie.domain().map(str::to_owned),
        secure: cookie.secure().unwrap_or(false),
        http_only: cookie.http_only().unwrap_or(false),
        same_site: cookie.same_site().map(|s| {
            if s.is_strict() {
                SameSite::Strict
            } else if s.is_lax() {
                SameSite::Lax
            } else {
                SameSite::None
            }
        }),
        expires: cookie
            .expires_datetime()
            .and_then(|at| jiff::Timestamp::from_second(at.unix_timestamp()).ok()),
    }
}

/// The workspace's target directory: `CARGO_TARGET_DIR` if set (relative
/// to the workspace), else `target/` beside the workspace's Cargo.toml.
fn target_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace");
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace.join(dir),
        _ => workspace.join("target"),
    }
}

/// Where tests/run.sh installs axe-core: always under the workspace's
/// own `target/`, whatever `CARGO_TARGET_DIR` says.
fn axe_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/axe-core/node_modules/axe-core/axe.min.js")
}
