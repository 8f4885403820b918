//! hallmonitor-session: command-line entry point. Parses arguments,
//! installs logging, connects to the X display and runs the helper's loop
//! until the display goes away.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hallmonitor_capture_protocol::DEFAULT_SOCKET;

/// The session helper: run inside a graphical session (XDG autostart or a
/// systemd user unit), watches the active window and sends
/// suspicious-activity captures to the agent daemon. Needs no
/// configuration file.
#[derive(Parser)]
#[command(name = "hallmonitor-session", version, about, long_about = None)]
struct Cli {
    /// The agent daemon's socket (`[capture] socket` in its configuration).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HALLMONITOR_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = hallmonitor_session::window::X11Windows::connect()
        .map_err(anyhow::Error::from)
        .and_then(|mut windows| hallmonitor_session::run_helper(&mut windows, &cli.socket));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
