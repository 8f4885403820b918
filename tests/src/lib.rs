//! End-to-end test harness: runs the real `hallmonitor-collector` and
//! `hallmonitor-agent` binaries on loopback, each in its own temporary
//! directory, with ports chosen by the OS.
//!
//! - Processes are killed when their handle drops; if the test is
//!   panicking, their logs are printed first.
//! - `wait_for` polls a condition until a deadline: tests wait for what they
//!   need, never for a fixed time.
//!
//! The binaries come from the same target directory as the test (build them
//! first: `cargo build --workspace --bins`, which the test command does).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use serde_json::Value;

pub mod browser;
pub mod display;
pub mod fixtures;

/// Directory holding the built binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> → target/debug
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf();
    for name in [
        "hallmonitor-collector",
        "hallmonitor-agent",
        "hallmonitor-session",
    ] {
        assert!(
            dir.join(name).exists(),
            "{} is missing: run `cargo build --workspace --bins` before the end-to-end tests",
            dir.join(name).display()
        );
    }
    dir
}

pub fn collector_bin() -> PathBuf {
    bin_dir().join("hallmonitor-collector")
}

pub fn agent_bin() -> PathBuf {
    bin_dir().join("hallmonitor-agent")
}

/// The session helper, its own program beside the daemon.
pub fn session_bin() -> PathBuf {
    bin_dir().join("hallmonitor-session")
}

/// The actor the collector records for a command run here with `--by
/// by`: the OS account (from the kernel; under sudo, with sudo's caller)
/// and the name given.
pub fn cli_actor(by: &str) -> String {
    let account = text(&Command::new("id").arg("-un").output().expect("id").stdout)
        .trim()
        .to_owned();
    let account = match std::env::var("SUDO_USER") {
        Ok(sudo) if account == "root" && !sudo.is_empty() => format!("root (sudo: {sudo})"),
        _ => account,
    };
    format!("cli:{account} as {by}")
}

/// Polls `check` every 50 ms until it returns Some, or panics after
/// `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process whose output goes to files; killed on drop.
pub struct Process {
    pub name: String,
    child: Option<Child>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, mut command: Command, log_dir: &Path) -> Process {
        let n = std::fs::read_dir(log_dir).map(|d| d.count()).unwrap_or(0);
        let stdout = log_dir.join(format!("{name}-{n}.out"));
        let stderr = log_dir.join(format!("{name}-{n}.err"));
        command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout log"))
            .stderr(std::fs::File::create(&stderr).expect("stderr log"));
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Process {
            name: name.into(),
            child: Some(child),
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends a signal and waits for the process to exit; returns its code.
    pub fn signal_and_wait(&mut self, signal: i32) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not exit within 30 s of signal {signal}\n{}",
                    self.name,
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Graceful stop (SIGTERM); returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.signal_and_wait(libc::SIGTERM)
    }

    /// Abrupt stop (SIGKILL).
    pub fn kill(&mut self) {
        self.signal_and_wait(libc::SIGKILL);
    }

    pub fn has_exited(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        child
            .try_wait()
            .ok()
            .flatten()
            .map(|s| s.code().unwrap_or(-1))
    }

    /// Fails the test, with the process's stderr, if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(code) = self.has_exited() {
            panic!("{} exited with {code}: {}", self.name, self.stderr_text());
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- {} stdout -----\n{}", self.name, self.stdout_text());
            eprintln!("----- {} stderr -----\n{}", self.name, self.stderr_text());
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a command to completion.
pub fn run(mut command: Command) -> Output {
    command.stdin(Stdio::null());
    command.output().expect("running command")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// An initialised collector data directory.
pub struct CollectorData {
    pub root: tempfile::TempDir,
    pub data: PathBuf,
    pub site: String,
    pub secret: String,
    pub fingerprint: String,
}

impl CollectorData {
    pub fn init(site: &str) -> CollectorData {
        let root = tempfile::tempdir().expect("temp dir");
        let data = root.path().join("collector");
        std::fs::create_dir_all(root.path().join("logs")).unwrap();
        let output = run(collector_cmd(
            &data,
            &[
                "init",
                "--site",
                site,
                "--hostname",
                "localhost",
                "--hostname",
                "127.0.0.1",
                "--listen",
                "127.0.0.1:0",
                "--enroll-listen",
                "127.0.0.1:0",
                "--api-listen",
                "127.0.0.1:0",
            ],
        ));
        let stdout = text(&output.stdout);
        assert!(
            output.status.success(),
            "init failed: {stdout}{}",
            text(&output.stderr)
        );
        let field = |label: &str| {
            stdout
                .lines()
                .find_map(|l| l.trim().strip_prefix(label))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| panic!("init printed no '{label}': {stdout}"))
        };
        CollectorData {
            secret: field("enrolment secret:"),
            fingerprint: field("CA fingerprint:"),
            site: site.into(),
            data,
            root,
        }
    }

    pub fn logs(&self) -> PathBuf {
        self.root.path().join("logs")
    }

    /// Starts `serve` on fresh ports.
    pub fn start(&self) -> RunningCollector {
        self.start_on(None)
    }

    /// Starts `serve`, reusing the ports of an earlier run if given.
    pub fn start_on(&self, ports: Option<(SocketAddr, SocketAddr)>) -> RunningCollector {
        let mut args = vec!["serve".to_string()];
        if let Some((telemetry, enroll)) = ports {
            args.extend([
                "--listen".into(),
                telemetry.to_string(),
                "--enroll-listen".into(),
                enroll.to_string(),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut process =
            Process::spawn("collector", collector_cmd(&self.data, &args), &self.logs());
        let line = wait_for("the collector to listen", Duration::from_secs(30), || {
            if let Some(code) = process.has_exited() {
                panic!("collector exited with {code}: {}", process.stderr_text());
            }
            process
                .stdout_text()
                .lines()
                .find(|l| l.contains("listening"))
                .map(str::to_owned)
        });
        let addr = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in '{line}'"))
        };
        RunningCollector {
            telemetry: addr("telemetry="),
            enroll: addr("enroll="),
            api: addr("api="),
            process,
        }
    }

    /// Replaces a top-level `key = value` line of collector.toml.
    pub fn set_config(&self, key: &str, value: &str) {
        let path = self.data.join("collector.toml");
        let text = std::fs::read_to_string(&path).expect("collector.toml");
        let mut found = false;
        let lines: Vec<String> = text
            .lines()
            .map(|line| {
                if line.starts_with(&format!("{key} =")) {
                    found = true;
                    format!("{key} = {value}")
                } else {
                    line.to_owned()
                }
            })
            .collect();
        assert!(found, "collector.toml has no top-level {key}");
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    }

    /// Runs a collector CLI command against this data directory.
    pub fn cli(&self, args: &[&str]) -> Output {
        run(collector_cmd(&self.data, args))
    }

    /// `devices list --format json`, parsed.
    pub fn devices(&self) -> Vec<Value> {
        let output = self.cli(&["devices", "list", "--format", "json"]);
        assert!(
            output.status.success(),
            "devices list: {}",
            text(&output.stderr)
        );
        let value: Value = serde_json::from_slice(&output.stdout).expect("devices list JSON");
        value["devices"].as_array().cloned().unwrap_or_default()
    }

    pub fn device(&self, id: &str) -> Value {
        let output = self.cli(&["devices", "show", id, "--format", "json"]);
        assert!(
            output.status.success(),
            "devices show: {}",
            text(&output.stderr)
        );
        let value: Value = serde_json::from_slice(&output.stdout).expect("devices show JSON");
        value["device"].clone()
    }

    /// Settings an agent needs to reach `collector`.
    pub fn agent_settings(&self, collector: &RunningCollector, machine_id: &str) -> AgentSettings {
        AgentSettings {
            collector: format!("localhost:{}", collector.telemetry.port()),
            enroll_address: format!("localhost:{}", collector.enroll.port()),
            ca_fingerprint: self.fingerprint.clone(),
            site: self.site.clone(),
            secret: self.secret.clone(),
            machine_id: machine_id.into(),
        }
    }
}

pub fn collector_cmd(data: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(collector_bin());
    command
        .arg("--data")
        .arg(data)
        .args(args)
        .env("HALLMONITOR_LOG", "info,hallmonitor_collector=debug");
    command
}

pub struct RunningCollector {
    pub telemetry: SocketAddr,
    pub enroll: SocketAddr,
    /// The HTTPS JSON API.
    pub api: SocketAddr,
    pub process: Process,
}

impl RunningCollector {
    pub fn ports(&self) -> (SocketAddr, SocketAddr) {
        (self.telemetry, self.enroll)
    }
}

#[derive(Clone, Debug)]
pub struct AgentSettings {
    pub collector: String,
    pub enroll_address: String,
    pub ca_fingerprint: String,
    pub site: String,
    pub secret: String,
    pub machine_id: String,
}

/// An agent with its own config file and data directory.
pub struct Agent {
    pub root: tempfile::TempDir,
    pub config: PathBuf,
    pub data: PathBuf,
    /// Extra lines for the `[delivery]` table (batch size, outbox bound…).
    pub delivery: String,
    /// Further tables appended to the config (`[enforcement]`, `[sessions]`).
    pub extra: String,
    /// Further keys of the `[capture]` table.
    pub capture: String,
}

impl Agent {
    pub fn new(settings: &AgentSettings) -> Agent {
        Self::with_delivery(settings, "")
    }

    pub fn with_delivery(settings: &AgentSettings, delivery: &str) -> Agent {
        Self::with_config(settings, delivery, "")
    }

    pub fn with_config(settings: &AgentSettings, delivery: &str, extra: &str) -> Agent {
        let root = tempfile::tempdir().expect("temp dir");
        let data = root.path().join("agent-data");
        let config = root.path().join("agent.toml");
        std::fs::create_dir_all(root.path().join("logs")).unwrap();
        let agent = Agent {
            root,
            config,
            data,
            delivery: delivery.into(),
            extra: extra.into(),
            capture: String::new(),
        };
        agent.write_config(settings);
        agent
    }

    /// An agent with further `[capture]` keys (`staff_accounts = …`).
    pub fn with_capture(settings: &AgentSettings, capture: &str) -> Agent {
        Self::with_config_and_capture(settings, "", capture)
    }

    /// Further sections (`extra`, without `[capture]`) and `[capture]` keys.
    pub fn with_config_and_capture(settings: &AgentSettings, extra: &str, capture: &str) -> Agent {
        let mut agent = Self::with_config(settings, "", extra);
        agent.capture = capture.into();
        agent.write_config(settings);
        agent
    }

    pub fn write_config(&self, s: &AgentSettings) {
        // Each agent its own helper socket and policy override file (the
        // defaults are one per machine), and no watching of this machine's
        // real folders.
        let mut local = String::new();
        if !self.extra.contains("[capture]") {
            local.push_str(&format!(
                "[capture]\nsocket = \"{}\"\npolicy_override = \"{}\"\n{}\n",
                self.socket().display(),
                self.policy_override().display(),
                self.capture
            ));
        }
        if !self.extra.contains("[files]") {
            local.push_str("[files]\nwatch = []\n");
        }
        let toml = format!(
            "collector = \"{}\"\nenroll_address = \"{}\"\nca_fingerprint = \"{}\"\nsite = \"{}\"\n\
             enrollment_secret = \"{}\"\ndata_dir = \"{}\"\nheartbeat_interval_secs = 1\nmachine_id = \"{}\"\n\
             [delivery]\nbatch_linger_ms = 20\nreconnect_initial_ms = 100\nreconnect_max_secs = 1\n{}\n{}\n{}",
            s.collector,
            s.enroll_address,
            s.ca_fingerprint,
            s.site,
            s.secret,
            self.data.display(),
            s.machine_id,
            self.delivery,
            self.extra,
            local
        );
        std::fs::write(&self.config, toml).expect("writing agent.toml");
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(agent_bin());
        command.arg("--config").arg(&self.config).args(args);
        // Only this agent's settings: none inherited from the environment.
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("HALLMONITOR_")) {
            command.env_remove(key);
        }
        command.env("HALLMONITOR_LOG", "info,hallmonitor_agent=debug");
        command
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        run(self.command(args))
    }

    pub fn enroll(&self) -> String {
        let output = self.cli(&["enroll"]);
        assert!(
            output.status.success(),
            "enroll failed: {}",
            text(&output.stderr)
        );
        self.status()["device_id"]
            .as_str()
            .expect("device id after enrolment")
            .to_owned()
    }

    pub fn start(&self) -> Process {
        Process::spawn(
            "agent",
            self.command(&["run"]),
            &self.root.path().join("logs"),
        )
    }

    pub fn status(&self) -> Value {
        let output = self.cli(&["status", "--format", "json"]);
        assert!(output.status.success(), "status: {}", text(&output.stderr));
        serde_json::from_slice(&output.stdout).expect("status JSON")
    }

    /// The daemon's socket for session helpers.
    pub fn socket(&self) -> PathBuf {
        self.root.path().join("agent.sock")
    }

    /// The daemon's local policy override file (absent unless a test
    /// writes it).
    pub fn policy_override(&self) -> PathBuf {
        self.root.path().join("policy.local.toml")
    }

    pub fn identity_dir(&self) -> PathBuf {
        self.data.join("identity")
    }
}
