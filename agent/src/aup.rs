//! The site's acceptable-use policy (AUP) on this device: which version is
//! in force, who has answered it, and what an answer does.
//!
//! The collector sends the AUP like the site policy (`AupUpdate`, checked
//! against its SHA-256 and parsed with `hallmonitor-policy`'s `aup` before
//! it replaces anything); the last good one is kept in the outbox's state
//! table across restarts, so a document that does not parse changes
//! nothing. Each helper connection asks `prompt_for` whether its account
//! still has to answer the version in force; an answer (`answer`) is
//! believed only for the account of the socket's peer and the version in
//! force, recorded once per account and version (durably, before the event
//! is queued), queued in the outbox as an `AupAnswer` event, and a decline
//! under `decline = "log_out"` ends that user's logind session with
//! `[enforcement] end_session_command`.

use std::collections::BTreeSet;
use std::sync::Arc;

use hallmonitor_capture_protocol::AupPrompt;
use hallmonitor_policy::PolicyError;
use hallmonitor_policy::aup::{Aup, Decline};
use hallmonitor_proto::v1;
use jiff::Timestamp;
use tokio::sync::watch;

use crate::outbox::Outbox;
use crate::state::State;

/// The AUP in force: its version and parsed document.
#[derive(Clone, Debug)]
pub struct AupInForce {
    pub version: u64,
    pub aup: Arc<Aup>,
}

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("acceptable-use policy version {version}: SHA-256 does not match its text")]
    Hash { version: u64 },
    #[error(transparent)]
    Invalid(#[from] PolicyError),
    #[error(transparent)]
    Outbox(#[from] crate::outbox::OutboxError),
}

/// The daemon's AUP state, shared by the stream (updates) and the helper
/// connections (prompts and answers).
pub struct AupHub {
    tx: watch::Sender<Option<AupInForce>>,
}

/// How both sides name an AUP version in errors.
fn file_name(version: u64) -> String {
    format!("acceptable-use policy version {version}")
}

impl AupHub {
    /// The hub with the AUP kept from an earlier run, if any.
    pub async fn load(outbox: &Outbox) -> anyhow::Result<AupHub> {
        let mut first = None;
        if let Some(held) = State::new(outbox).aup().await? {
            match Aup::parse(&held.toml, &file_name(held.version)) {
                Ok(aup) => {
                    first = Some(AupInForce {
                        version: held.version,
                        aup: Arc::new(aup),
                    })
                }
                Err(e) => tracing::error!(error = %e, "stored acceptable-use policy unusable"),
            }
        }
        Ok(AupHub {
            tx: watch::Sender::new(first),
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<AupInForce>> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Option<AupInForce> {
        self.tx.borrow().clone()
    }

    /// The version held (0 = none), for the hello.
    pub fn version(&self) -> u64 {
        self.tx.borrow().as_ref().map_or(0, |a| a.version)
    }

    /// Applies an AUP the collector sent: checked, kept, then in force. On
    /// error nothing changes: the last good version stays.
    pub async fn apply(&self, update: &v1::AupUpdate, outbox: &Outbox) -> Result<(), UpdateError> {
        if crate::tls::sha256_hex(update.aup_toml.as_bytes()) != update.sha256 {
            return Err(UpdateError::Hash {
                version: update.version,
            });
        }
        let aup = Aup::parse(&update.aup_toml, &file_name(update.version))?;
        State::new(outbox)
            .set_aup(update.version, &update.aup_toml)
            .await?;
        self.tx.send_replace(Some(AupInForce {
            version: update.version,
            aup: Arc::new(aup),
        }));
        tracing::info!(version = update.version, "acceptable-use policy applied");
        Ok(())
    }
}

/// What a user in `groups` is to be asked, when `answered` (the newest
/// version they answered) is older than the version in force and the AUP
/// has a text for them.
pub fn prompt_for(
    in_force: &AupInForce,
    groups: &BTreeSet<String>,
    answered: u64,
) -> Option<AupPrompt> {
    if answered >= in_force.version {
        return None;
    }
    let prompt = in_force.aup.select(groups)?;
    Some(AupPrompt {
        version: in_force.version,
        title: prompt.title.clone(),
        text: prompt.text.clone(),
        log_out_on_decline: prompt.decline == Decline::LogOut,
    })
}

/// What the daemon makes of a helper's answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Recorded; end the session when `log_out`.
    Record { accepted: bool, log_out: bool },
    /// Not the version in force, or nothing asked of this user.
    Refused(&'static str),
    /// This account answered this version already.
    AlreadyAnswered,
}

/// Judges an answer from the helper of a user in `groups`, pure: only the
/// version in force, asked of this user and not yet answered counts.
pub fn judge(
    in_force: Option<&AupInForce>,
    groups: &BTreeSet<String>,
    answered: u64,
    version: u64,
    accepted: bool,
) -> Verdict {
    let Some(in_force) = in_force else {
        return Verdict::Refused("no acceptable-use policy in force");
    };
    if version != in_force.version {
        return Verdict::Refused("not the version in force");
    }
    if answered >= version {
        return Verdict::AlreadyAnswered;
    }
    let Some(prompt) = in_force.aup.select(groups) else {
        return Verdict::Refused("nothing is asked of this user");
    };
    Verdict::Record {
        accepted,
        log_out: !accepted && prompt.decline == Decline::LogOut,
    }
}

/// The answer as an event body.
pub fn answer_event(
    account: &str,
    version: u64,
    accepted: bool,
    at: Timestamp,
    outcome: String,
) -> v1::event::Body {
    let answer = if accepted {
        v1::AupAnswerKind::Accept
    } else {
        v1::AupAnswerKind::Decline
    };
    v1::event::Body::AupAnswer(v1::AupAnswer {
        account: account.to_owned(),
        version,
        answer: answer as i32,
        answered_at: Some(hallmonitor_proto::Timestamp {
            seconds: at.as_second(),
            nanos: at.subsec_nanosecond(),
        }),
        outcome,
    })
}

/// The logind session a process of `uid` belongs to, from its cgroup:
/// only the exact path logind gives a session,
/// `/user.slice/user-UID.slice/session-N.scope`, which root owns. A
/// `session-N.scope` anywhere else (a user may name scopes under their own
/// `user@UID.service`) is no session.
pub fn session_of_cgroup(cgroup: &str, uid: u32) -> Option<String> {
    let prefix = format!("/user.slice/user-{uid}.slice/session-");
    cgroup.lines().find_map(|line| {
        // cgroup v2's line is `0::PATH`; v1 lines name a controller.
        let path = line.splitn(3, ':').nth(2)?;
        let id = path.strip_prefix(&prefix)?.strip_suffix(".scope")?;
        (!id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .then(|| id.to_owned())
    })
}

/// Which sessions to end for `account`: of the sessions the session source
/// lists for it (never anyone else's), the helper's own when its cgroup
/// names one of them, else all of them.
pub fn sessions_to_end(listed: Vec<String>, from_cgroup: Option<String>) -> Vec<String> {
    match from_cgroup {
        Some(own) if listed.contains(&own) => vec![own],
        _ => listed,
    }
}

/// Ends the session of a user who declined: the session of the helper
/// process `pid` when logind placed it in one of the account's sessions,
/// else the account's sessions the session source lists. Returns what
/// happened, for the event.
pub async fn end_sessions(
    config: &crate::config::AgentConfig,
    account: &str,
    uid: u32,
    pid: Option<i32>,
) -> String {
    let mut from_cgroup = None;
    if let Some(pid) = pid
        && let Ok(cgroup) = tokio::fs::read_to_string(format!("/proc/{pid}/cgroup")).await
    {
        from_cgroup = session_of_cgroup(&cgroup, uid);
    }
    let source = crate::sessions::source(&config.sessions);
    let listed = match tokio::task::spawn_blocking(move || source.sessions()).await {
        Ok(Ok(sessions)) => sessions
            .into_iter()
            .filter(|s| s.account == account)
            .map(|s| s.platform_id)
            .collect(),
        _ => Vec::new(),
    };
    let targets = sessions_to_end(listed, from_cgroup);
    if targets.is_empty() {
        return "no session found to end".into();
    }
    let Some((program, args)) = config.enforcement.end_session_command.split_first() else {
        return "session not ended: no end_session_command".into();
    };
    let mut ended = Vec::new();
    let mut failed = Vec::new();
    for session in &targets {
        let status = tokio::process::Command::new(program)
            .args(args)
            .arg(session)
            .status()
            .await;
        match status {
            Ok(s) if s.success() => ended.push(session.clone()),
            Ok(s) => failed.push(format!("{session} ({s})")),
            Err(e) => failed.push(format!("{session} ({e})")),
        }
    }
    match (ended.is_empty(), failed.is_empty()) {
        (false, true) => format!("session {} ended", ended.join(", ")),
        (true, _) => format!("session not ended: {}", failed.join(", ")),
        (false, false) => format!(
            "session {} ended; not ended: {}",
            ended.join(", "),
            failed.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hallmonitor_policy::aup::builtin_groups;

    fn in_force(version: u64, text: &str) -> AupInForce {
        AupInForce {
            version,
            aup: Arc::new(Aup::parse(text, "test").unwrap()),
        }
    }

    const PUPILS_LOG_OUT: &str = "text = \"all\"\n[[audiences]]\ngroups = [\"pupils\"]\ntext = \"p\"\ndecline = \"log_out\"\n";

    #[test]
    fn a_version_is_asked_until_answered() {
        let aup = in_force(3, PUPILS_LOG_OUT);
        let pupil = builtin_groups(false);
        let prompt = prompt_for(&aup, &pupil, 2).unwrap();
        assert_eq!((prompt.version, prompt.text.as_str()), (3, "p"));
        assert!(prompt.log_out_on_decline);
        assert!(prompt_for(&aup, &pupil, 3).is_none(), "answered");
        let staff = prompt_for(&aup, &builtin_groups(true), 0).unwrap();
        assert_eq!(staff.text, "all");
        assert!(!staff.log_out_on_decline);
    }

    #[test]
    fn only_an_answer_to_the_version_in_force_counts() {
        let aup = in_force(3, PUPILS_LOG_OUT);
        let pupil = builtin_groups(false);
        let staff = builtin_groups(true);
        let only_pupils = in_force(3, "[[audiences]]\ngroups = [\"pupils\"]\ntext = \"p\"\n");
        /// Name, AUP in force, user's groups, version answered, version
        /// of the answer, accepted, verdict.
        type Case<'a> = (
            &'a str,
            Option<&'a AupInForce>,
            &'a BTreeSet<String>,
            u64,
            u64,
            bool,
            Verdict,
        );
        let cases: &[Case] = &[
            (
                "accept",
                Some(&aup),
                &pupil,
                0,
                3,
                true,
                Verdict::Record {
                    accepted: true,
                    log_out: false,
                },
            ),
            (
                "pupil declines: log out",
                Some(&aup),
                &pupil,
                2,
                3,
                false,
                Verdict::Record {
                    accepted: false,
                    log_out: true,
                },
            ),
            (
                "staff decline is recorded only",
                Some(&aup),
                &staff,
                0,
                3,
                false,
                Verdict::Record {
                    accepted: false,
                    log_out: false,
                },
            ),
            (
                "an older version",
                Some(&aup),
                &pupil,
                0,
                2,
                true,
                Verdict::Refused("not the version in force"),
            ),
            (
                "a future version",
                Some(&aup),
                &pupil,
                0,
                4,
                true,
                Verdict::Refused("not the version in force"),
            ),
            (
                "twice",
                Some(&aup),
                &pupil,
                3,
                3,
                false,
                Verdict::AlreadyAnswered,
            ),
            (
                "no AUP",
                None,
                &pupil,
                0,
                1,
                true,
                Verdict::Refused("no acceptable-use policy in force"),
            ),
            (
                "not asked of staff",
                Some(&only_pupils),
                &staff,
                0,
                3,
                true,
                Verdict::Refused("nothing is asked of this user"),
            ),
        ];
        for (name, aup, groups, answered, version, accepted, expected) in cases {
            assert_eq!(
                judge(*aup, groups, *answered, *version, *accepted),
                *expected,
                "{name}"
            );
        }
    }

    #[test]
    fn the_logind_session_is_read_from_the_cgroup() {
        let cases = [
            (
                "v2",
                "0::/user.slice/user-1000.slice/session-3.scope\n",
                Some("3"),
            ),
            (
                "v1 controller line",
                "12:pids:/user.slice/user-1000.slice/session-c2.scope\n0::/x\n",
                Some("c2"),
            ),
            (
                "the user's own manager",
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice\n",
                None,
            ),
            (
                "a scope the user named session-c1",
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/session-c1.scope\n",
                None,
            ),
            (
                "another uid's session",
                "0::/user.slice/user-1001.slice/session-4.scope\n",
                None,
            ),
            (
                "nested deeper",
                "0::/user.slice/user-1000.slice/session-3.scope/x\n",
                None,
            ),
            (
                "empty id",
                "0::/user.slice/user-1000.slice/session-.scope\n",
                None,
            ),
            (
                "odd characters",
                "0::/user.slice/user-1000.slice/session-1;rm.scope\n",
                None,
            ),
            ("nothing", "", None),
        ];
        for (name, cgroup, expected) in cases {
            assert_eq!(
                session_of_cgroup(cgroup, 1000).as_deref(),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn only_the_accounts_own_sessions_are_ended() {
        let listed = || vec!["3".to_owned(), "7".to_owned()];
        let cases = [
            ("its own, named by the cgroup", Some("7"), vec!["7"]),
            ("a session not the account's", Some("c1"), vec!["3", "7"]),
            ("no cgroup session", None, vec!["3", "7"]),
        ];
        for (name, cgroup, expected) in cases {
            assert_eq!(
                sessions_to_end(listed(), cgroup.map(str::to_owned)),
                expected,
                "{name}"
            );
        }
        assert!(sessions_to_end(Vec::new(), Some("3".into())).is_empty());
    }

    #[tokio::test]
    async fn a_broken_update_keeps_the_last_good_version() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = crate::outbox::Outbox::open(dir.path(), crate::outbox::DEFAULT_MAX_BYTES)
            .await
            .unwrap();
        let hub = AupHub::load(&outbox).await.unwrap();
        assert_eq!(hub.version(), 0);
        let good = "title = \"T\"\ntext = \"be kind\"\n";
        let update = |version: u64, text: &str| v1::AupUpdate {
            version,
            aup_toml: text.into(),
            sha256: crate::tls::sha256_hex(text.as_bytes()),
        };
        hub.apply(&update(1, good), &outbox).await.unwrap();
        let broken = "title = \"T\"\n\ntext = 3\n";
        let error = hub.apply(&update(2, broken), &outbox).await.unwrap_err();
        assert!(
            error
                .to_string()
                .contains("acceptable-use policy version 2: line 3"),
            "{error}"
        );
        let mut forged = update(3, good);
        forged.sha256 = "00".into();
        assert!(matches!(
            hub.apply(&forged, &outbox).await,
            Err(UpdateError::Hash { version: 3 })
        ));
        assert_eq!(hub.version(), 1);
        let reloaded = AupHub::load(&outbox).await.unwrap();
        assert_eq!(reloaded.version(), 1, "kept across restarts");
    }
}
