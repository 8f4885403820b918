//! Login sessions on this device, for the device-activity rule.
//!
//! A [`SessionSource`] lists the sessions open now; [`track`] compares
//! successive lists and produces start and end events (each with the
//! account, uid, kind and, where the platform tells, the active time). The
//! sessions the tracker believes open (its `Ledger`) are kept in the outbox
//! state (`State::session_ledger`), so a restart of the agent neither
//! repeats a start nor loses an end.
//!
//! Platforms:
//! - Linux with systemd-logind: `loginctl` (which asks logind over D-Bus)
//!   gives sessions with type, class, remote flag, seat and idle hint.
//! - Linux without logind: the utmp file (`/run/utmp`, configurable), read
//!   directly; no idle information, so active time is the session length.
//! - Windows (WTS session notifications) and macOS are not implemented; they
//!   plug in behind the same trait.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::AgentConfig;
use crate::outbox::Outbox;
use crate::state::{State, Stored};
use crate::task::{TaskContext, WriteTrouble};
use hallmonitor_proto::v1;
use hallmonitor_report::{ComplianceReport, MfaStatus};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// How someone is logged in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Graphical,
    Console,
    Remote,
}

impl Kind {
    fn wire(self) -> v1::session_event::Kind {
        match self {
            Kind::Graphical => v1::session_event::Kind::Graphical,
            Kind::Console => v1::session_event::Kind::Console,
            Kind::Remote => v1::session_event::Kind::Remote,
        }
    }
}

/// A session open now, as a source sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveSession {
    /// Unique on this device across reboots (the source includes the boot
    /// or the start time).
    pub id: String,
    /// The id the platform uses (logind session id, tty), for locking.
    pub platform_id: String,
    pub account: String,
    pub uid: u32,
    pub kind: Kind,
    pub seat: String,
    pub started_at: Timestamp,
    /// Whether the platform says the session is idle now.
    pub idle: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loginctl: {0}")]
    Logind(String),
}

pub trait SessionSource: Send + Sync {
    fn name(&self) -> &'static str;
    fn sessions(&self) -> Result<Vec<LiveSession>, SessionError>;
}

/// The source the configuration asks for.
pub fn source(config: &crate::config::SessionsConfig) -> Box<dyn SessionSource> {
    use crate::config::SessionSourceKind;
    let utmp = || -> Box<dyn SessionSource> {
        Box::new(Utmp {
            path: config.utmp_path.clone(),
        })
    };
    match config.source {
        SessionSourceKind::Utmp => utmp(),
        SessionSourceKind::Logind => Box::new(Logind),
        SessionSourceKind::Auto if Path::new("/run/systemd/seats").exists() => Box::new(Logind),
        SessionSourceKind::Auto => utmp(),
    }
}

// ------------------------------------------------------------------ utmp

/// The utmp file: one 384-byte `struct utmpx` per record (glibc, 64-bit
/// Linux; times are 32-bit there for compatibility).
pub struct Utmp {
    pub path: PathBuf,
}

const UTMP_RECORD: usize = 384;
const USER_PROCESS: i16 = 7;

impl SessionSource for Utmp {
    fn name(&self) -> &'static str {
        "utmp"
    }

    fn sessions(&self) -> Result<Vec<LiveSession>, SessionError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            // No utmp: nobody has logged in since boot.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(SessionError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        // A trailing partial record (being written) is ignored.
        Ok(bytes
            .chunks_exact(UTMP_RECORD)
            .filter_map(parse_utmp_record)
            .collect())
    }
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn parse_utmp_record(r: &[u8]) -> Option<LiveSession> {
    let kind = i16::from_ne_bytes([r[0], r[1]]);
    if kind != USER_PROCESS {
        return None;
    }
    let line = c_string(&r[8..40]);
    let user = c_string(&r[44..76]);
    let host = c_string(&r[76..332]);
    let seconds = i32::from_ne_bytes([r[340], r[341], r[342], r[343]]);
    if user.is_empty() {
        return None;
    }
    let started_at = Timestamp::from_second(i64::from(seconds)).ok()?;
    // X displays log in on ":0"-style lines or hosts; a host name otherwise
    // means ssh or telnet.
    let kind = if line.starts_with(':') || host.starts_with(':') {
        Kind::Graphical
    } else if !host.is_empty() {
        Kind::Remote
    } else {
        Kind::Console
    };
    Some(LiveSession {
        id: format!("utmp:{line}:{seconds}"),
        platform_id: line.clone(),
        uid: crate::accounts::uid_of(&user).unwrap_or(u32::MAX),
        account: user,
        kind,
        seat: String::new(),
        started_at,
        idle: false,
    })
}

// ---------------------------------------------------------------- logind

/// systemd-logind, through `loginctl` (which talks to logind over D-Bus).
pub struct Logind;

impl SessionSource for Logind {
    fn name(&self) -> &'static str {
        "logind"
    }

    fn sessions(&self) -> Result<Vec<LiveSession>, SessionError> {
        let list = loginctl(&["list-sessions", "--no-legend", "--no-pager"])?;
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap_or_default()
            .trim()
            .to_owned();
        let mut sessions = Vec::new();
        for id in list.lines().filter_map(|l| l.split_whitespace().next()) {
            let show = loginctl(&[
                "show-session",
                id,
                "--property=Name,User,Type,Class,Remote,Seat,Timestamp,IdleHint,Active,State",
                "--timestamp=unix",
            ])?;
            let props: BTreeMap<&str, &str> =
                show.lines().filter_map(|l| l.split_once('=')).collect();
            sessions.extend(logind_session(id, &boot, &props));
        }
        Ok(sessions)
    }
}

/// A logind session from its properties; None for what is no user's
/// login: greeters, lock screens, managers, and a session `closing` (the
/// user logged out; a process left running keeps it listed, and it must
/// count neither as use nor as a session its helper left).
fn logind_session(id: &str, boot: &str, props: &BTreeMap<&str, &str>) -> Option<LiveSession> {
    if props.get("Class") != Some(&"user") || props.get("State") == Some(&"closing") {
        return None;
    }
    let kind = match (props.get("Remote"), props.get("Type")) {
        (Some(&"yes"), _) => Kind::Remote,
        (_, Some(&("x11" | "wayland" | "mir"))) => Kind::Graphical,
        _ => Kind::Console,
    };
    let started_at = props
        .get("Timestamp")
        .and_then(|t| t.trim_start_matches('@').parse::<i64>().ok())
        .and_then(|s| Timestamp::from_second(s).ok())
        .unwrap_or_else(Timestamp::now);
    Some(LiveSession {
        id: format!("logind:{boot}:{id}"),
        platform_id: id.to_owned(),
        account: props.get("Name").copied().unwrap_or("").to_owned(),
        uid: props
            .get("User")
            .and_then(|u| u.parse().ok())
            .unwrap_or(u32::MAX),
        kind,
        seat: props.get("Seat").copied().unwrap_or("").to_owned(),
        started_at,
        idle: props.get("IdleHint") == Some(&"yes"),
    })
}

fn loginctl(args: &[&str]) -> Result<String, SessionError> {
    let output = std::process::Command::new("loginctl")
        .args(args)
        .output()
        .map_err(|e| SessionError::Logind(e.to_string()))?;
    if !output.status.success() {
        return Err(SessionError::Logind(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

// --------------------------------------------------------------- tracker

/// A session the tracker has reported as started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracked {
    pub session: LiveSession,
    /// Active (not idle) seconds counted so far.
    pub active_secs: u64,
    pub last_poll: Timestamp,
}

/// Open sessions as last reported, keyed by session id. Kept in the
/// outbox state (`State::session_ledger`), read by the monitoring-gap
/// check too.
pub type Ledger = BTreeMap<String, Tracked>;

/// Compares the sessions open `now` with the ledger; updates it and
/// returns the events to queue (starts, then ends).
pub fn track(ledger: &mut Ledger, live: Vec<LiveSession>, now: Timestamp) -> Vec<v1::SessionEvent> {
    let mut events = Vec::new();
    let live: BTreeMap<String, LiveSession> = live.into_iter().map(|s| (s.id.clone(), s)).collect();
    for (id, session) in &live {
        match ledger.get_mut(id) {
            Some(tracked) => {
                if !session.idle {
                    let secs = now.duration_since(tracked.last_poll).as_secs().max(0) as u64;
                    tracked.active_secs += secs;
                }
                tracked.last_poll = now;
                tracked.session.idle = session.idle;
            }
            None => {
                let tracked = Tracked {
                    session: session.clone(),
                    active_secs: 0,
                    last_poll: now.max(session.started_at),
                };
                events.push(event(&tracked, v1::session_event::Phase::Start, None));
                ledger.insert(id.clone(), tracked);
            }
        }
    }
    let ended: Vec<String> = ledger
        .keys()
        .filter(|id| !live.contains_key(*id))
        .cloned()
        .collect();
    for id in ended {
        if let Some(tracked) = ledger.remove(&id) {
            // It ended somewhere since the last poll; the last poll is the
            // latest instant we know it was open.
            let end = tracked.last_poll;
            events.push(event(&tracked, v1::session_event::Phase::End, Some(end)));
        }
    }
    events
}

fn event(
    tracked: &Tracked,
    phase: v1::session_event::Phase,
    ended_at: Option<Timestamp>,
) -> v1::SessionEvent {
    let s = &tracked.session;
    v1::SessionEvent {
        phase: phase as i32,
        session_id: s.id.clone(),
        account: s.account.clone(),
        uid: s.uid,
        kind: s.kind.wire() as i32,
        seat: s.seat.clone(),
        started_at: Some(wire(s.started_at)),
        ended_at: ended_at.map(wire),
        active_secs: tracked.active_secs,
    }
}

fn wire(t: Timestamp) -> hallmonitor_proto::Timestamp {
    hallmonitor_proto::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    }
}

/// Polls the session source and queues start and end events. The ledger
/// of open sessions is kept in the outbox state so a restart neither
/// repeats a start nor loses an end.
pub async fn watch(ctx: TaskContext) -> anyhow::Result<()> {
    let TaskContext {
        config,
        outbox,
        wake,
        shutdown,
    } = ctx;
    let source: Arc<dyn SessionSource> = Arc::from(source(&config.sessions));
    tracing::info!(source = source.name(), "tracking login sessions");
    let state = State::new(&outbox);
    let mut ledger: Ledger = match state.session_ledger().await? {
        Stored::Present(ledger) => ledger,
        Stored::Unreadable(e) => {
            tracing::warn!(error = %e, "session ledger unreadable; starting afresh");
            Ledger::new()
        }
        Stored::Absent => Ledger::new(),
    };
    let mut poll = tokio::time::interval(Duration::from_secs(u64::from(
        config.sessions.poll_secs.get(),
    )));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    let mut trouble = WriteTrouble::default();
    loop {
        tokio::select! {
            _ = poll.tick() => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        let reader = source.clone();
        let live = match tokio::task::spawn_blocking(move || reader.sessions()).await? {
            Ok(live) => {
                warned = false;
                live
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "cannot read login sessions; will retry");
                    warned = true;
                }
                continue;
            }
        };
        let now = Timestamp::now();
        let before = ledger.clone();
        let events = track(&mut ledger, live, now);
        let starts: Vec<String> = events
            .iter()
            .filter(|e| e.phase == v1::session_event::Phase::Start as i32)
            .map(|e| e.session_id.clone())
            .collect();
        let written = async {
            if !events.is_empty() {
                let bodies = events
                    .into_iter()
                    .map(|e| (now, v1::event::Body::Session(e)))
                    .collect();
                outbox.append_all(bodies).await?;
                wake.notify_one();
            }
            state.set_session_ledger(&ledger).await
        }
        .await;
        if let Err(e) = written {
            // The next poll finds the same changes again and queues them
            // (again, if only the ledger failed: the collector applies a
            // session event once).
            trouble.failed("sessions", e)?;
            ledger = before;
            continue;
        }
        trouble.cleared("sessions");
        for id in starts {
            if let Some(tracked) = ledger.get(&id) {
                stale_mfa_login(&config, &outbox, &tracked.session).await;
            }
        }
    }
}

/// A staff account whose two-step sign-in on this device is stale (as the
/// collector last said) has logged in: tell them, and lock the session if
/// the site asks for it.
async fn stale_mfa_login(config: &AgentConfig, outbox: &Outbox, session: &LiveSession) {
    let state = State::new(outbox);
    let Ok(Some(json)) = state.compliance_json().await else {
        return;
    };
    let Ok(report) = serde_json::from_str::<ComplianceReport>(&json) else {
        return;
    };
    let account = session.account.to_lowercase();
    let stale = report
        .mfa_pairs()
        .any(|p| p.account == account && p.status == MfaStatus::Stale);
    if !stale {
        return;
    }
    tracing::info!(uid = session.uid, session = %session.platform_id, "staff login with stale two-step sign-in");
    let fill = |arg: &String| {
        arg.replace("{account}", &session.account)
            .replace("{uid}", &session.uid.to_string())
    };
    if let Some((program, args)) = config.mfa.notify_command.split_first() {
        let status = tokio::process::Command::new(fill(program))
            .args(args.iter().map(fill))
            .status()
            .await;
        if !matches!(status, Ok(s) if s.success()) {
            tracing::warn!(?status, "could not show the two-step sign-in notice");
        }
    }
    let lock = state.lock_stale_mfa_sessions().await.unwrap_or(false);
    if lock
        && !config.enforcement.admin_accounts.contains(&session.account)
        && let Some((program, args)) = config.enforcement.lock_session_command.split_first()
    {
        let status = tokio::process::Command::new(program)
            .args(args)
            .arg(&session.platform_id)
            .status()
            .await;
        if !matches!(status, Ok(s) if s.success()) {
            tracing::warn!(?status, "could not lock the session");
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    #[test]
    fn logind_sessions_that_are_no_login_are_skipped() {
        let props =
            |class: &'static str, state: &'static str| -> BTreeMap<&'static str, &'static str> {
                [
                    ("Name", "pupil1"),
                    ("User", "1001"),
                    ("Type", "x11"),
                    ("Class", class),
                    ("Remote", "no"),
                    ("Timestamp", "@1796076000"),
                    ("State", state),
                ]
                .into_iter()
                .collect()
            };
        let rows = [
            ("an active login", "user", "active", true),
            (
                "in the background (another user in front)",
                "user",
                "online",
                true,
            ),
            (
                "logged out, a process left behind",
                "user",
                "closing",
                false,
            ),
            ("the login screen", "greeter", "active", false),
        ];
        for (name, class, state, counted) in rows {
            let session = logind_session("4", "boot", &props(class, state));
            assert_eq!(session.is_some(), counted, "{name}");
        }
        let session = logind_session("4", "boot", &props("user", "active")).unwrap();
        assert_eq!(session.kind, Kind::Graphical);
        assert_eq!(session.id, "logind:boot:4");
        assert_eq!(session.uid, 1001);
    }

    /// A utmp record as glibc writes it.
    pub fn utmp_record(kind: i16, line: &str, user: &str, host: &str, seconds: i32) -> Vec<u8> {
        let mut r = vec![0u8; UTMP_RECORD];
        r[0..2].copy_from_slice(&kind.to_ne_bytes());
        r[4..8].copy_from_slice(&1234i32.to_ne_bytes());
        r[8..8 + line.len()].copy_from_slice(line.as_bytes());
        r[44..44 + user.len()].copy_from_slice(user.as_bytes());
        r[76..76 + host.len()].copy_from_slice(host.as_bytes());
        r[340..344].copy_from_slice(&seconds.to_ne_bytes());
        r
    }

    #[test]
    fn utmp_records_become_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("utmp");
        let mut file = Vec::new();
        file.extend(utmp_record(2, "~", "reboot", "6.1.0", 1_790_000_000)); // BOOT_TIME
        file.extend(utmp_record(USER_PROCESS, "tty1", "root", "", 1_790_000_100));
        file.extend(utmp_record(
            USER_PROCESS,
            ":0",
            "pupil1",
            ":0",
            1_790_000_200,
        ));
        file.extend(utmp_record(
            USER_PROCESS,
            "pts/0",
            "tech",
            "10.0.0.5",
            1_790_000_300,
        ));
        file.extend(utmp_record(8, "pts/1", "", "", 1_790_000_400)); // DEAD_PROCESS
        file.extend(&[0u8; 100]); // a partial record being written
        std::fs::write(&path, file).unwrap();
        let sessions = Utmp { path }.sessions().unwrap();
        let summary: Vec<(&str, Kind, &str)> = sessions
            .iter()
            .map(|s| (s.account.as_str(), s.kind, s.id.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                ("root", Kind::Console, "utmp:tty1:1790000100"),
                ("pupil1", Kind::Graphical, "utmp::0:1790000200"),
                ("tech", Kind::Remote, "utmp:pts/0:1790000300"),
            ]
        );
        assert_eq!(sessions[0].uid, 0, "root's uid from the user database");
        assert_eq!(sessions[1].uid, u32::MAX, "unknown account");
    }

    #[test]
    fn missing_utmp_means_no_sessions() {
        let source = Utmp {
            path: "/nonexistent/utmp".into(),
        };
        assert!(source.sessions().unwrap().is_empty());
    }

    fn live(id: &str, idle: bool) -> LiveSession {
        LiveSession {
            id: id.into(),
            platform_id: id.into(),
            account: "pupil1".into(),
            uid: 1001,
            kind: Kind::Graphical,
            seat: "seat0".into(),
            started_at: "2026-11-24T09:00:00Z".parse().unwrap(),
            idle,
        }
    }

    #[test]
    fn tracker_reports_start_once_counts_active_time_and_ends() {
        let t = |s: &str| -> Timestamp { s.parse().unwrap() };
        let mut ledger = Ledger::new();
        let events = track(
            &mut ledger,
            vec![live("a", false)],
            t("2026-11-24T09:00:10Z"),
        );
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].phase, v1::session_event::Phase::Start as i32);
        assert!(
            track(
                &mut ledger,
                vec![live("a", false)],
                t("2026-11-24T09:01:10Z")
            )
            .is_empty()
        );
        // Idle for the next minute: not counted.
        assert!(
            track(
                &mut ledger,
                vec![live("a", true)],
                t("2026-11-24T09:02:10Z")
            )
            .is_empty()
        );
        let events = track(&mut ledger, vec![], t("2026-11-24T09:03:10Z"));
        assert_eq!(events.len(), 1);
        let end = &events[0];
        assert_eq!(end.phase, v1::session_event::Phase::End as i32);
        assert_eq!(end.active_secs, 60);
        assert_eq!(
            end.ended_at.unwrap().seconds,
            t("2026-11-24T09:02:10Z").as_second()
        );
        assert!(ledger.is_empty());
    }
}
