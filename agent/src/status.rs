//! `status`: what the daemon is doing, read from the identity files and
//! the outbox without disturbing a running daemon.

use jiff::Timestamp;
use serde::Serialize;

use crate::config::AgentConfig;
use crate::enroll::Identity;
use crate::outbox::{self, Outbox};
use crate::state::State;

#[derive(Debug, Serialize)]
pub struct Status {
    pub schema: &'static str,
    pub as_of: Timestamp,
    pub enrolled: bool,
    pub device_id: Option<String>,
    pub site: Option<String>,
    pub collector: String,
    pub daemon_running: bool,
    pub daemon_pid: Option<u32>,
    /// starting, connecting, connected, disconnected, refused (revoked or
    /// pending a technician's approval: `last_error` says which),
    /// clock_wrong (the device's date is outside the validity of the
    /// collector's certificates: `last_error` says what it is) or stopped.
    pub connection: String,
    pub connection_since: Option<String>,
    pub last_error: Option<String>,
    pub queue_depth: u64,
    pub oldest_unsent_at: Option<Timestamp>,
    pub oldest_unsent_age_secs: Option<i64>,
    pub last_successful_send_at: Option<String>,
    pub last_acked_seq: Option<u64>,
    pub next_seq: u64,
    pub corrupt_outbox_moved_to: Option<String>,
    /// Why the daemon could not open the outbox on its last try (a full
    /// disk, an I/O error, another process's lock); it keeps trying and
    /// leaves the file as it is. None once it opened.
    pub outbox_unavailable: Option<String>,
    /// Seconds since the running daemon last managed to write to its
    /// outbox, when that is longer than three heartbeats (a full disk):
    /// events are not being queued. None while writes work.
    pub outbox_writes_failing_secs: Option<u64>,
    /// Bytes the outbox holds, counted against its bound.
    pub outbox_bytes: u64,
    /// Events evicted because the outbox was full, per class, since the
    /// outbox was created.
    pub evicted: std::collections::BTreeMap<String, u64>,
    /// The site policy version the agent holds (0: none received, the
    /// project's default is in force).
    pub policy_site_version: u64,
    /// The local override file, when it exists (it then replaces the
    /// site's policy if it parses; the daemon's log says if not).
    pub policy_override: Option<String>,
    /// Captures from session helpers the daemon refused (a title matching
    /// no rule in force, or over an account's rate limit): forgeries, or a
    /// helper with an outdated policy.
    pub helper_captures_refused: u64,
    /// Events too large to ever send, moved to the outbox's quarantine
    /// table (kept for a technician; the log names kind and size).
    pub quarantined: u64,
}

pub async fn read(config: &AgentConfig, now: Timestamp) -> anyhow::Result<Status> {
    let identity = Identity::load(&config.data_dir)?;
    let mut status = Status {
        schema: "hallmonitor.agent_status.v1",
        as_of: now,
        enrolled: identity.is_some(),
        device_id: identity.as_ref().map(|i| i.device_id.clone()),
        site: identity.as_ref().map(|i| i.site.clone()),
        collector: config.collector.to_string(),
        daemon_running: false,
        daemon_pid: None,
        connection: "stopped".into(),
        connection_since: None,
        last_error: None,
        queue_depth: 0,
        oldest_unsent_at: None,
        oldest_unsent_age_secs: None,
        last_successful_send_at: None,
        last_acked_seq: None,
        next_seq: 1,
        corrupt_outbox_moved_to: None,
        outbox_writes_failing_secs: None,
        outbox_unavailable: std::fs::read_to_string(config.data_dir.join(outbox::UNAVAILABLE_FILE))
            .ok(),
        outbox_bytes: 0,
        evicted: Default::default(),
        policy_site_version: 0,
        policy_override: config
            .capture
            .policy_override
            .exists()
            .then(|| config.capture.policy_override.display().to_string()),
        helper_captures_refused: 0,
        quarantined: 0,
    };
    if !config.data_dir.join(outbox::FILE_NAME).exists() {
        return Ok(status);
    }
    // While the daemon cannot open the outbox, neither may we: say what is
    // known.
    let outbox = match Outbox::open_read_only(&config.data_dir).await {
        Ok(outbox) => outbox,
        Err(_) if status.outbox_unavailable.is_some() => return Ok(status),
        // A disk too full for the daemon to say so either.
        Err(e) if e.is_transient() => {
            status.outbox_unavailable = Some(e.to_string());
            return Ok(status);
        }
        Err(e) => return Err(e.into()),
    };
    let stats = match outbox.stats().await {
        Ok(stats) => stats,
        Err(_) if status.outbox_unavailable.is_some() => return Ok(status),
        // The daemon created the file and has not made its tables (or set
        // its journal mode) yet.
        Err(e)
            if ["no such table", "readonly database"]
                .iter()
                .any(|starting| e.to_string().contains(starting)) =>
        {
            status.connection = "starting".into();
            return Ok(status);
        }
        Err(e) if e.is_transient() => {
            status.outbox_unavailable = Some(e.to_string());
            return Ok(status);
        }
        Err(e) => return Err(e.into()),
    };
    status.queue_depth = stats.depth;
    let state = State::new(&outbox);
    status.evicted = state
        .eviction_totals()
        .await?
        .into_iter()
        .map(|(class, n)| (class.to_owned(), n))
        .collect();
    status.next_seq = stats.next_seq;
    status.oldest_unsent_at = stats.oldest_occurred_at;
    status.oldest_unsent_age_secs = stats
        .oldest_occurred_at
        .map(|t| now.duration_since(t).as_secs());
    // One snapshot of the daemon's state: `connection` and `last_error`
    // are written together and must be read together.
    let snapshot = state.status_snapshot().await?;
    status.last_successful_send_at = snapshot.last_ack_at;
    status.last_acked_seq = snapshot.last_acked_seq;
    status.corrupt_outbox_moved_to = snapshot.corrupt_moved_to;
    status.daemon_pid = snapshot.daemon_pid;
    status.daemon_running = status.daemon_pid.is_some_and(process_alive);
    if status.daemon_running {
        status.connection = snapshot.connection.unwrap_or_else(|| "connecting".into());
        status.connection_since = snapshot.connection_since;
        // The producer writes every heartbeat; since the daemon started if
        // it never managed to.
        let last_write = snapshot.alive_at.max(snapshot.daemon_started_at);
        let allowed = (3 * u64::from(config.heartbeat_interval_secs.get())).max(5);
        status.outbox_writes_failing_secs = last_write
            .map(|t| now.duration_since(t).as_secs().max(0) as u64)
            .filter(|secs| *secs > allowed);
    }
    status.last_error = snapshot.last_error;
    status.quarantined = snapshot.quarantined;
    status.helper_captures_refused = snapshot.captures_refused;
    status.policy_site_version = snapshot.site_policy_version;
    outbox.close().await;
    Ok(status)
}

fn process_alive(pid: u32) -> bool {
    // Signal 0 checks existence and permission without sending anything.
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 has no side effects.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

pub fn render_text(s: &Status) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<22} {v}\n"));
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    line(
        "enrolled",
        match (&s.device_id, &s.site) {
            (Some(id), Some(site)) => format!("yes, as {id} (site {site})"),
            _ => "no".into(),
        },
    );
    line("collector", s.collector.clone());
    line(
        "daemon",
        match (s.daemon_running, s.daemon_pid) {
            (true, Some(pid)) => format!("running (pid {pid})"),
            _ => "not running".into(),
        },
    );
    line(
        "connection",
        match &s.connection_since {
            Some(since) => format!("{} since {since}", s.connection),
            None => s.connection.clone(),
        },
    );
    line("queue depth", format!("{} event(s)", s.queue_depth));
    line(
        "oldest unsent",
        match (s.oldest_unsent_at, s.oldest_unsent_age_secs) {
            (Some(at), Some(age)) => format!("{at} ({age} s ago)"),
            _ => "-".into(),
        },
    );
    line("last successful send", dash(&s.last_successful_send_at));
    line(
        "last acked sequence",
        s.last_acked_seq
            .map(|n| n.to_string())
            .unwrap_or_else(|| "-".into()),
    );
    line("last error", dash(&s.last_error));
    if let Some(why) = &s.outbox_unavailable {
        line("outbox unavailable", why.clone());
    }
    if let Some(secs) = s.outbox_writes_failing_secs {
        line(
            "outbox writes failing",
            format!("for {secs} s (disk full?): nothing new is queued; the daemon retries"),
        );
    }
    let evicted: Vec<String> = s
        .evicted
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(c, n)| format!("{n} {c}"))
        .collect();
    line(
        "evicted (outbox full)",
        if evicted.is_empty() {
            "none".into()
        } else {
            evicted.join(", ")
        },
    );
    if let Some(moved) = &s.corrupt_outbox_moved_to {
        line("corrupt outbox moved", moved.clone());
    }
    if s.quarantined > 0 {
        line("quarantined (too large)", s.quarantined.to_string());
    }
    if s.helper_captures_refused > 0 {
        line(
            "helper captures refused",
            s.helper_captures_refused.to_string(),
        );
    }
    line(
        "policy",
        match (&s.policy_override, s.policy_site_version) {
            (Some(path), _) => format!("local override {path}"),
            (None, 0) => "project default (no site policy received)".into(),
            (None, v) => format!("site policy version {v}"),
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn status_while_the_daemon_is_creating_its_outbox_says_starting() {
        let dir = tempfile::tempdir().unwrap();
        let config = AgentConfig {
            data_dir: dir.path().to_path_buf(),
            ..AgentConfig::default()
        };
        // The daemon creates the file (0600) before SQLite writes to it.
        std::fs::write(dir.path().join(outbox::FILE_NAME), b"").unwrap();
        let status = read(&config, Timestamp::now()).await.unwrap();
        assert_eq!(status.queue_depth, 0);
    }
}
