//! The helper socket between the agent daemon (`hallmonitor-agent`) and
//! the session helpers (`hallmonitor-session`), one JSON line each way:
//! captures from a helper to the daemon (`HelperCapture`), and the policy
//! in force from the daemon to a helper (`HelperPolicy`).
//!
//! This crate is what the two binaries share, so the daemon links none of
//! the helper's X11 and image code and the helper none of the daemon's
//! TLS, gRPC and SQLite. Fields are only added, with serde defaults, so a
//! helper and a daemon of neighbouring versions still understand each
//! other. No I/O.

use std::path::Path;
use std::time::Duration;

use hallmonitor_policy::{Policy, PolicyError};
use serde::{Deserialize, Serialize};

/// Where the daemon listens for helpers unless configured otherwise
/// (`[capture] socket`; the helper's `--socket`).
pub const DEFAULT_SOCKET: &str = "/run/hallmonitor/agent.sock";

/// Repeats of one rule in one window within this are counted, not
/// captured, unless the daemon says otherwise (`[capture]
/// repeat_window_secs`).
pub const REPEAT_WINDOW: Duration = Duration::from_secs(60);

/// Where the policy in force came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    BuiltIn,
    Site,
    LocalOverride,
}

/// A capture on its way from the helper to the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelperCapture {
    pub rule_id: String,
    pub category: String,
    pub severity: u32,
    pub matched_text: String,
    pub window_title: String,
    pub process_name: String,
    pub pid: u32,
    pub repeat_count: u32,
    pub no_image_reason: String,
    /// The PNG snapshot, base64 (empty when there is none).
    #[serde(default)]
    pub image_png_base64: String,
    /// The version of the policy that matched.
    #[serde(default)]
    pub policy_version: u64,
    /// What was on screen before: the session's distinct active-window
    /// titles within the policy's `context_minutes`, oldest first. Kept
    /// in the helper's memory only and sent only with a capture; absent
    /// from older helpers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub context: Vec<ContextWindow>,
}

/// Most context entries one capture carries (the helper keeps no more;
/// the daemon drops the oldest beyond it).
pub const MAX_CONTEXT_ENTRIES: usize = 200;

/// One window title that was in front before a capture.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextWindow {
    pub title: String,
    pub process_name: String,
    /// Unix milliseconds (UTC) it first and last came to the front.
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
}

/// What the daemon tells a helper: the policy to match with, whether the
/// helper's user counts as staff and the directory groups they are in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelperPolicy {
    pub version: u64,
    pub origin: Origin,
    /// Empty: the project's default.
    pub toml: String,
    pub staff: bool,
    /// The user's groups (normalised names); an older daemon sends none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default = "default_repeat_window_secs")]
    pub repeat_window_secs: u64,
}

fn default_repeat_window_secs() -> u64 {
    REPEAT_WINDOW.as_secs()
}

/// The site's acceptable-use policy as one user is to be shown it: the
/// daemon chooses the audience, so the helper parses no AUP document.
/// Sent only when this account has not answered this version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AupPrompt {
    pub version: u64,
    pub title: String,
    pub text: String,
    /// A decline ends the user's session (the window says so first).
    pub log_out_on_decline: bool,
}

/// A user's answer, helper to daemon. The daemon takes the account from
/// the socket's peer and refuses a version other than the one in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AupAnswer {
    pub version: u64,
    pub accepted: bool,
}

/// One line from the daemon: an AUP prompt or the policy in force (the
/// only line older daemons send).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DaemonLine {
    Aup { aup: AupPrompt },
    Policy(HelperPolicy),
}

/// One line from a helper: an AUP answer or a capture.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HelperLine {
    AupAnswer { aup_answer: AupAnswer },
    Capture(Box<HelperCapture>),
}

/// Parses a policy text as both sides do: empty is the project's default;
/// errors name the text by its origin and version.
pub fn parse_policy(version: u64, origin: Origin, toml: &str) -> Result<Policy, PolicyError> {
    if toml.is_empty() {
        return Ok(Policy::default_policy());
    }
    let name = match origin {
        Origin::LocalOverride => "local policy override".to_owned(),
        _ => format!("site policy version {version}"),
    };
    Policy::parse(toml, Path::new(&name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_daemon_without_a_repeat_window_means_a_minute() {
        let line = r#"{"version":3,"origin":"site","toml":"","staff":false}"#;
        let policy: HelperPolicy = serde_json::from_str(line).unwrap();
        assert_eq!(policy.repeat_window_secs, 60);
        assert_eq!(policy.origin, Origin::Site);
    }

    #[test]
    fn captures_without_context_read_both_ways() {
        let old = r#"{"rule_id":"r","category":"c","severity":5,"matched_text":"m","window_title":"t","process_name":"p","pid":1,"repeat_count":0,"no_image_reason":""}"#;
        let capture: HelperCapture = serde_json::from_str(old).unwrap();
        assert!(capture.context.is_empty());
        let line = serde_json::to_string(&capture).unwrap();
        assert!(!line.contains("context"), "{line}");
    }

    #[test]
    fn lines_are_told_apart_and_plain_policies_and_captures_still_read() {
        let policy = r#"{"version":3,"origin":"site","toml":"","staff":false}"#;
        assert!(matches!(
            serde_json::from_str::<DaemonLine>(policy).unwrap(),
            DaemonLine::Policy(_)
        ));
        let prompt = DaemonLine::Aup {
            aup: AupPrompt {
                version: 2,
                title: "T".into(),
                text: "x".into(),
                log_out_on_decline: true,
            },
        };
        let line = serde_json::to_string(&prompt).unwrap();
        assert_eq!(serde_json::from_str::<DaemonLine>(&line).unwrap(), prompt);
        let answer = HelperLine::AupAnswer {
            aup_answer: AupAnswer {
                version: 2,
                accepted: false,
            },
        };
        let line = serde_json::to_string(&answer).unwrap();
        assert_eq!(line, r#"{"aup_answer":{"version":2,"accepted":false}}"#);
        assert_eq!(serde_json::from_str::<HelperLine>(&line).unwrap(), answer);
        let capture = r#"{"rule_id":"r","category":"c","severity":5,"matched_text":"m","window_title":"t","process_name":"p","pid":1,"repeat_count":0,"no_image_reason":""}"#;
        assert!(matches!(
            serde_json::from_str::<HelperLine>(capture).unwrap(),
            HelperLine::Capture(_)
        ));
    }

    #[test]
    fn a_broken_policy_is_named_by_its_origin() {
        let Err(error) = parse_policy(4, Origin::Site, "[[rules]]\nid = 1\n") else {
            panic!("a broken site policy parsed");
        };
        assert!(
            error.to_string().contains("site policy version 4"),
            "{error}"
        );
        let Err(error) = parse_policy(4, Origin::LocalOverride, "[[rules]]\nid = 1\n") else {
            panic!("a broken override parsed");
        };
        assert!(
            error.to_string().contains("local policy override"),
            "{error}"
        );
        assert!(
            parse_policy(0, Origin::BuiltIn, "").is_ok(),
            "empty is the default"
        );
    }
}
