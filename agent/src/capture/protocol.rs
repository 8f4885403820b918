//! The helper socket's messages, one JSON line each: captures from a
//! session helper to the daemon (`HelperCapture`), and the policy in
//! force from the daemon to a helper (`HelperPolicy`). Both processes use
//! these types; fields are only added, with serde defaults, so a helper
//! and a daemon of neighbouring versions still understand each other.

use serde::{Deserialize, Serialize};

use super::REPEAT_WINDOW;
use crate::policy::Origin;

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
}

/// What the daemon tells a helper: the policy to match with and whether
/// the helper's user counts as staff.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelperPolicy {
    pub version: u64,
    pub origin: Origin,
    /// Empty: the project's default.
    pub toml: String,
    pub staff: bool,
    #[serde(default = "default_repeat_window_secs")]
    pub repeat_window_secs: u64,
}

fn default_repeat_window_secs() -> u64 {
    REPEAT_WINDOW.as_secs()
}
