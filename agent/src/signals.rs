//! Signals about the agent itself (`AgentSignal`): its own life (started,
//! stopped, upgraded, reconfigured) and signs that someone interfered with
//! it: the previous run ended without stopping, the wall clock jumped, a
//! session helper went away while its session stayed open. A pupil with a
//! shell can kill their own helper or (with a root password) the daemon,
//! edit its configuration or move the clock; whatever they do, the next
//! start, heartbeat tick or helper check says so, through the outbox like
//! any event, and the collector shows it to a technician.
//!
//! The decisions are pure functions (`at_start`, `ClockWatch::observe`,
//! `helpers_gone`) with table tests; `watch` is the task that applies them
//! while the daemon runs. What a run needs to know of the previous one
//! (left running? its version, boot, configuration) is in the outbox's
//! state table (`State::previous_run`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hallmonitor_proto::v1;
use jiff::{SignedDuration, Timestamp};

use crate::config::AgentConfig;
use crate::gaps::HelperPresence;
use crate::sessions::{Kind, Ledger};
use crate::state::State;
use crate::task::TaskContext;

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A session's helper going away is reported at most once in this long.
const GONE_REPEAT: Duration = Duration::from_secs(3600);

/// What the previous daemon left in the state table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PreviousRun {
    /// It recorded its start and never its stop.
    pub left_running: bool,
    /// Its producer's last write.
    pub alive_at: Option<Timestamp>,
    /// None: an agent from before these were kept (or a new outbox).
    pub agent_version: Option<String>,
    pub boot_id: Option<String>,
    pub config_sha256: Option<String>,
    pub executable_sha256: Option<String>,
}

/// What this daemon runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThisRun {
    pub agent_version: String,
    /// The kernel's boot id ("" when unreadable).
    pub boot_id: String,
    /// SHA-256 (hex) of the configuration file ("" when there is none).
    pub config_sha256: String,
    pub config_path: Option<PathBuf>,
    /// SHA-256 (hex) of the running executable ("" when unreadable).
    pub executable_sha256: String,
}

impl ThisRun {
    pub fn current(config: &AgentConfig) -> ThisRun {
        ThisRun {
            agent_version: AGENT_VERSION.to_owned(),
            boot_id: boot_id(),
            config_sha256: file_sha256(config.source.as_deref()),
            config_path: config.source.clone(),
            // The file this process runs, even if it was since replaced.
            executable_sha256: file_sha256(Some(Path::new("/proc/self/exe"))),
        }
    }

    fn config_name(&self) -> String {
        self.config_path
            .as_deref()
            .map_or_else(String::new, |p| p.display().to_string())
    }
}

/// The kernel's id of this boot ("" when unreadable: never a match).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_owned())
        .unwrap_or_default()
}

/// SHA-256 (hex) of a file's content; "" when there is no file or it
/// cannot be read.
pub fn file_sha256(path: Option<&Path>) -> String {
    path.and_then(|p| std::fs::read(p).ok())
        .map(|bytes| crate::tls::sha256_hex(&bytes))
        .unwrap_or_default()
}

/// The signals a start owes: how the previous run ended, what changed
/// since, and the start itself, in that order.
pub fn at_start(previous: &PreviousRun, this: &ThisRun) -> Vec<v1::AgentSignal> {
    use v1::agent_signal::Kind as K;
    let signal = |kind: K| v1::AgentSignal {
        kind: kind as i32,
        agent_version: this.agent_version.clone(),
        ..Default::default()
    };
    let mut signals = Vec::new();
    if previous.left_running {
        signals.push(v1::AgentSignal {
            last_alive_at: previous.alive_at.map(wire),
            same_boot: !this.boot_id.is_empty()
                && previous.boot_id.as_deref() == Some(this.boot_id.as_str()),
            ..signal(K::StoppedUncleanly)
        });
    }
    let replaced = match (&previous.executable_sha256, this.executable_sha256.as_str()) {
        (Some(before), now) => !before.is_empty() && !now.is_empty() && before != now,
        (None, _) => false,
    };
    match &previous.agent_version {
        Some(version) if *version != this.agent_version => signals.push(v1::AgentSignal {
            previous_agent_version: version.clone(),
            ..signal(K::Upgraded)
        }),
        Some(version) if replaced => signals.push(v1::AgentSignal {
            previous_agent_version: version.clone(),
            detail: format!("the executable changed, its version ({version}) did not"),
            ..signal(K::Upgraded)
        }),
        _ => {}
    }
    if let Some(sha256) = &previous.config_sha256
        && *sha256 != this.config_sha256
    {
        signals.push(config_changed(this, sha256, &this.config_sha256));
    }
    signals.push(signal(K::Started));
    signals
}

fn config_changed(this: &ThisRun, before: &str, now: &str) -> v1::AgentSignal {
    v1::AgentSignal {
        kind: v1::agent_signal::Kind::ConfigChanged as i32,
        agent_version: this.agent_version.clone(),
        previous_config_sha256: before.to_owned(),
        config_sha256: now.to_owned(),
        detail: this.config_name(),
        ..Default::default()
    }
}

/// The daemon is stopping because it was asked to; `detail` says why when
/// a task failed.
pub fn stopped(detail: String) -> v1::AgentSignal {
    v1::AgentSignal {
        kind: v1::agent_signal::Kind::Stopped as i32,
        agent_version: AGENT_VERSION.to_owned(),
        detail,
        ..Default::default()
    }
}

/// Compares the wall clock with a clock that counts all time that passed,
/// suspend included (`CLOCK_BOOTTIME`), so a laptop that slept is no jump.
#[derive(Clone, Copy, Debug)]
pub struct ClockWatch {
    wall: Timestamp,
    boot: Duration,
}

/// The wall clock moved `jump_secs` more than the time that passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockJump {
    /// The wall time it should be: the last reading plus the time passed.
    pub corrected: Timestamp,
    pub jump_secs: i64,
}

impl ClockWatch {
    pub fn new(wall: Timestamp, boot: Duration) -> ClockWatch {
        ClockWatch { wall, boot }
    }

    /// A jump larger than `threshold` (either way) since the last reading;
    /// the reading becomes the new base either way.
    pub fn observe(
        &mut self,
        wall: Timestamp,
        boot: Duration,
        threshold: Duration,
    ) -> Option<ClockJump> {
        let passed = SignedDuration::try_from(boot.saturating_sub(self.boot)).unwrap_or_default();
        let moved = wall.duration_since(self.wall);
        let corrected = self.wall.checked_add(passed).unwrap_or(wall);
        *self = ClockWatch::new(wall, boot);
        let jump = moved - passed;
        (jump.unsigned_abs() > threshold).then_some(ClockJump {
            corrected,
            jump_secs: jump.as_secs(),
        })
    }
}

/// Time since boot, suspend included.
pub fn boot_clock() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) } == 0;
    if !ok {
        return Duration::ZERO;
    }
    Duration::new(
        now.tv_sec.max(0) as u64,
        now.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Helper departures (uid, when) older than `confirm` become one
/// `HELPER_GONE` per graphical session of that uid that began before the
/// departure and is still open: a helper that went away because its
/// session ended (a logout) is dropped once the ledger shows the end.
/// Younger departures stay for a later call.
pub fn helpers_gone(
    departures: &mut Vec<(u32, Timestamp)>,
    ledger: &Ledger,
    now: Timestamp,
    confirm: Duration,
) -> Vec<v1::AgentSignal> {
    let mut signals = Vec::new();
    departures.retain(|(uid, at)| {
        if now.duration_since(*at).unsigned_abs() < confirm && now >= *at {
            return true;
        }
        for (id, tracked) in ledger {
            let session = &tracked.session;
            if session.uid == *uid && session.kind == Kind::Graphical && session.started_at <= *at {
                signals.push(v1::AgentSignal {
                    kind: v1::agent_signal::Kind::HelperGone as i32,
                    agent_version: AGENT_VERSION.to_owned(),
                    session_id: id.clone(),
                    account: session.account.clone(),
                    uid: *uid,
                    detail: format!("helper left at {at}"),
                    ..Default::default()
                });
            }
        }
        false
    });
    signals
}

fn wire(t: Timestamp) -> hallmonitor_proto::Timestamp {
    hallmonitor_proto::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    }
}

/// While the daemon runs: the clock and the configuration file at every
/// heartbeat interval, and helpers that went away, as often as sessions
/// are polled. `config_sha256` is the file as this run read it.
pub async fn watch(
    ctx: TaskContext,
    presence: Arc<HelperPresence>,
    this: ThisRun,
) -> anyhow::Result<()> {
    let TaskContext {
        config,
        outbox,
        wake,
        shutdown,
    } = ctx;
    let poll = Duration::from_secs(u64::from(config.sessions.poll_secs.get()));
    let heartbeat = Duration::from_secs(u64::from(config.heartbeat_interval_secs.get()));
    // Twice the session poll: by then a logout shows in the ledger.
    let confirm = (poll * 2).max(Duration::from_secs(2));
    let threshold = Duration::from_secs(u64::from(config.tamper.clock_jump_secs));
    let mut tick = tokio::time::interval(poll.min(heartbeat).max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut clock = ClockWatch::new(Timestamp::now(), boot_clock());
    let mut clock_checked = tokio::time::Instant::now();
    let mut config_sha256 = this.config_sha256.clone();
    let mut departures: Vec<(u32, Timestamp)> = Vec::new();
    // Sessions reported as left by their helper within the hour: a helper
    // restarted in a loop is one signal an hour, not a stream of them
    // (they are never evicted from the outbox).
    let mut reported: HashMap<String, tokio::time::Instant> = HashMap::new();
    let state = State::new(&outbox);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        let now = Timestamp::now();
        let mut signals: Vec<(Timestamp, v1::AgentSignal)> = Vec::new();
        // One pending departure per user: a helper restarted in a loop is
        // one signal per confirmation period, not one per restart.
        for (uid, at) in presence.take_departures() {
            if !departures.iter().any(|(pending, _)| *pending == uid) {
                departures.push((uid, at));
            }
        }
        if !departures.is_empty() {
            match state.session_ledger().await {
                Ok(ledger) => {
                    let ledger = ledger.or_default();
                    reported.retain(|_, at| at.elapsed() < GONE_REPEAT);
                    for gone in helpers_gone(&mut departures, &ledger, now, confirm) {
                        if reported.contains_key(&gone.session_id) {
                            tracing::debug!(session = %gone.session_id, "a session helper went away again within the hour");
                            continue;
                        }
                        reported.insert(gone.session_id.clone(), tokio::time::Instant::now());
                        tracing::warn!(session = %gone.session_id, uid = gone.uid, "a session helper went away while its session stayed open");
                        signals.push((now, gone));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the session ledger; will retry"),
            }
        }
        if clock_checked.elapsed() >= heartbeat {
            clock_checked = tokio::time::Instant::now();
            let observed = clock.observe(now, boot_clock(), threshold);
            if let Some(jump) = observed.filter(|_| !threshold.is_zero()) {
                tracing::warn!(
                    jump_secs = jump.jump_secs,
                    "the wall clock jumped; reported"
                );
                // The earlier of the two: a jump ahead, or the return
                // from one, must not stamp this event in the future.
                signals.push((
                    jump.corrected.min(now),
                    v1::AgentSignal {
                        kind: v1::agent_signal::Kind::ClockJumped as i32,
                        agent_version: AGENT_VERSION.to_owned(),
                        clock_jump_secs: jump.jump_secs,
                        detail: format!("the wall clock read {now}"),
                        ..Default::default()
                    },
                ));
            }
            let current = file_sha256(this.config_path.as_deref());
            if current != config_sha256 {
                tracing::warn!(file = %this.config_name(), "the configuration file changed; it takes effect at the next start; reported");
                signals.push((now, config_changed(&this, &config_sha256, &current)));
                config_sha256 = current;
            }
        }
        if signals.is_empty() {
            continue;
        }
        let changed_config = signals
            .iter()
            .any(|(_, s)| s.kind == v1::agent_signal::Kind::ConfigChanged as i32);
        let bodies = signals
            .into_iter()
            .map(|(at, signal)| (at, v1::event::Body::AgentSignal(signal)))
            .collect();
        if let Err(e) = outbox.append_all(bodies).await {
            // Lost only if the disk stays full: said, and the daemon goes on.
            tracing::error!(error = %e, "cannot queue a tamper signal");
            continue;
        }
        wake.notify_one();
        if changed_config && let Err(e) = state.set_config_sha256(&config_sha256).await {
            tracing::warn!(error = %e, "cannot record the configuration's new hash");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::{LiveSession, Tracked};
    use v1::agent_signal::Kind as K;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn this() -> ThisRun {
        ThisRun {
            agent_version: "0.3.0".into(),
            boot_id: "boot-b".into(),
            config_sha256: "cfg-2".into(),
            config_path: Some("/etc/hallmonitor/agent.toml".into()),
            executable_sha256: "exe-2".into(),
        }
    }

    fn kinds(signals: &[v1::AgentSignal]) -> Vec<K> {
        signals
            .iter()
            .map(|s| K::try_from(s.kind).unwrap())
            .collect()
    }

    #[test]
    fn what_a_start_reports() {
        let alive = at("2026-11-30T10:00:00Z");
        let clean = PreviousRun {
            left_running: false,
            alive_at: Some(alive),
            agent_version: Some("0.3.0".into()),
            boot_id: Some("boot-a".into()),
            config_sha256: Some("cfg-2".into()),
            executable_sha256: Some("exe-2".into()),
        };
        let rows: &[(&str, PreviousRun, &[K])] = &[
            ("first start ever", PreviousRun::default(), &[K::Started]),
            ("clean stop, nothing changed", clean.clone(), &[K::Started]),
            (
                "killed, machine rebooted",
                PreviousRun {
                    left_running: true,
                    ..clean.clone()
                },
                &[K::StoppedUncleanly, K::Started],
            ),
            (
                "upgraded",
                PreviousRun {
                    agent_version: Some("0.2.0".into()),
                    ..clean.clone()
                },
                &[K::Upgraded, K::Started],
            ),
            (
                "the executable replaced, same version",
                PreviousRun {
                    executable_sha256: Some("exe-1".into()),
                    ..clean.clone()
                },
                &[K::Upgraded, K::Started],
            ),
            (
                "an agent from before executables were hashed",
                PreviousRun {
                    executable_sha256: None,
                    ..clean.clone()
                },
                &[K::Started],
            ),
            (
                "configuration edited",
                PreviousRun {
                    config_sha256: Some("cfg-1".into()),
                    ..clean.clone()
                },
                &[K::ConfigChanged, K::Started],
            ),
            (
                "all at once",
                PreviousRun {
                    left_running: true,
                    agent_version: Some("0.2.0".into()),
                    config_sha256: Some(String::new()),
                    ..clean.clone()
                },
                &[
                    K::StoppedUncleanly,
                    K::Upgraded,
                    K::ConfigChanged,
                    K::Started,
                ],
            ),
        ];
        for (name, previous, expected) in rows {
            assert_eq!(kinds(&at_start(previous, &this())), *expected, "{name}");
        }
    }

    #[test]
    fn an_unclean_stop_says_when_and_whether_the_machine_kept_running() {
        let previous = PreviousRun {
            left_running: true,
            alive_at: Some(at("2026-11-30T10:00:00Z")),
            boot_id: Some("boot-b".into()),
            ..Default::default()
        };
        let signals = at_start(&previous, &this());
        assert!(signals[0].same_boot, "same boot id: the process was killed");
        assert_eq!(
            signals[0].last_alive_at.unwrap().seconds,
            at("2026-11-30T10:00:00Z").as_second()
        );
        let rebooted = PreviousRun {
            boot_id: Some("boot-a".into()),
            ..previous.clone()
        };
        assert!(!at_start(&rebooted, &this())[0].same_boot);
        let unknown = ThisRun {
            boot_id: String::new(),
            ..this()
        };
        let unread = PreviousRun {
            boot_id: Some(String::new()),
            ..previous
        };
        assert!(
            !at_start(&unread, &unknown)[0].same_boot,
            "two unreadable boot ids are no match"
        );
    }

    #[test]
    fn a_changed_configuration_names_its_file_and_both_hashes() {
        let previous = PreviousRun {
            config_sha256: Some("cfg-1".into()),
            ..Default::default()
        };
        let signal = &at_start(&previous, &this())[0];
        assert_eq!(signal.previous_config_sha256, "cfg-1");
        assert_eq!(signal.config_sha256, "cfg-2");
        assert_eq!(signal.detail, "/etc/hallmonitor/agent.toml");
    }

    #[test]
    fn clock_jumps_are_told_from_time_passing() {
        let threshold = Duration::from_secs(300);
        let start = at("2026-11-30T10:00:00Z");
        let boot = Duration::from_secs(1_000);
        let secs = |s: u64| Duration::from_secs(s);
        let plus = |s: i64| start.checked_add(SignedDuration::from_secs(s)).unwrap();
        // (name, wall after, boot clock after, expected jump)
        let rows: &[(&str, Timestamp, Duration, Option<i64>)] = &[
            ("a minute passes", plus(60), boot + secs(60), None),
            ("NTP slews a little", plus(64), boot + secs(60), None),
            (
                "a laptop slept an hour",
                plus(3_600),
                boot + secs(3_600),
                None,
            ),
            (
                "set a day ahead",
                plus(60 + 86_400),
                boot + secs(60),
                Some(86_400),
            ),
            (
                "set two hours back",
                plus(60 - 7_200),
                boot + secs(60),
                Some(-7_200),
            ),
            (
                "just over the threshold",
                plus(361),
                boot + secs(60),
                Some(301),
            ),
        ];
        for (name, wall, after, expected) in rows {
            let mut watch = ClockWatch::new(start, boot);
            let jump = watch.observe(*wall, *after, threshold);
            assert_eq!(jump.map(|j| j.jump_secs), *expected, "{name}");
            if let Some(jump) = jump {
                assert_eq!(jump.corrected, plus(60), "{name}: the time it should be");
            }
        }
    }

    #[test]
    fn a_jump_is_reported_once() {
        let start = at("2026-11-30T10:00:00Z");
        let mut watch = ClockWatch::new(start, Duration::from_secs(10));
        let ahead = start.checked_add(SignedDuration::from_hours(25)).unwrap();
        let threshold = Duration::from_secs(300);
        assert!(
            watch
                .observe(ahead, Duration::from_secs(70), threshold)
                .is_some()
        );
        let later = ahead.checked_add(SignedDuration::from_secs(60)).unwrap();
        assert!(
            watch
                .observe(later, Duration::from_secs(130), threshold)
                .is_none()
        );
    }

    fn ledger(sessions: &[(&str, u32, Kind, Timestamp)]) -> Ledger {
        sessions
            .iter()
            .map(|(id, uid, kind, started_at)| {
                let session = LiveSession {
                    id: id.to_string(),
                    platform_id: id.to_string(),
                    account: format!("user{uid}"),
                    uid: *uid,
                    kind: *kind,
                    seat: String::new(),
                    started_at: *started_at,
                    idle: false,
                };
                (
                    id.to_string(),
                    Tracked {
                        session,
                        active_secs: 0,
                        last_poll: *started_at,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_helper_gone_while_its_session_stays_open_is_reported_once_confirmed() {
        let logged_in = at("2026-11-30T09:00:00Z");
        let left = at("2026-11-30T10:00:00Z");
        let confirm = Duration::from_secs(20);
        let later = |s: i64| left.checked_add(SignedDuration::from_secs(s)).unwrap();
        let open = ledger(&[
            ("s1", 1001, Kind::Graphical, logged_in),
            ("tty2", 1001, Kind::Console, logged_in),
            ("s2", 1002, Kind::Graphical, logged_in),
            ("s3", 1001, Kind::Graphical, later(5)),
        ]);
        let mut departures = vec![(1001, left)];
        assert!(
            helpers_gone(&mut departures, &open, later(10), confirm).is_empty(),
            "not confirmed yet"
        );
        assert_eq!(departures.len(), 1, "kept for later");
        let signals = helpers_gone(&mut departures, &open, later(20), confirm);
        assert_eq!(kinds(&signals), [K::HelperGone]);
        assert_eq!(
            signals[0].session_id, "s1",
            "only the graphical session that held it"
        );
        assert_eq!(signals[0].uid, 1001);
        assert!(departures.is_empty());

        // A logout: the helper leaves and the session ends.
        let mut departures = vec![(1002, left)];
        let logged_out = ledger(&[("s1", 1001, Kind::Graphical, logged_in)]);
        assert!(helpers_gone(&mut departures, &logged_out, later(20), confirm).is_empty());
        assert!(departures.is_empty(), "dropped once decided");
    }
}
