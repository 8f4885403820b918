//! The `hallmonitor.annual_review.v1` document: counts only, shared by
//! the console page, the PDF and `hallmonitor-collector report`.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Serialize;

/// A figure with its name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Count {
    pub key: String,
    pub count: u64,
}

pub(super) fn counts<K: ToString>(map: BTreeMap<K, u64>) -> Vec<Count> {
    map.into_iter()
        .map(|(k, count)| Count {
            key: k.to_string(),
            count,
        })
        .collect()
}

/// The annual review, `hallmonitor.annual_review.v1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AnnualReview {
    pub schema: &'static str,
    pub sites: Vec<String>,
    pub timezone: String,
    pub from: Timestamp,
    pub to: Timestamp,
    pub generated_at: Timestamp,
    pub coverage: Coverage,
    pub compliance: Compliance,
    pub captures: Captures,
    pub incidents: Incidents,
    pub accounts_affected: AccountsAffected,
    pub review: ReviewTimes,
    pub access: Access,
    pub freedom_of_information: FreedomOfInformation,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Coverage {
    pub enrolled: u64,
    /// Heard from in the last `reporting_days` days.
    pub reporting: u64,
    pub reporting_days: i64,
    /// Enrolled but not heard from in `reporting_days` days.
    pub silent: u64,
    /// Reporting devices without an open monitoring gap.
    pub helpers_running: u64,
    /// Devices with an open monitoring gap (no session helper in a
    /// graphical session).
    pub helpers_missing: u64,
    /// Tamper flags opened in the period.
    pub tamper_flags: u64,
    /// What agents said about themselves in the period, by kind.
    pub agent_signals: Vec<Count>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Compliance {
    /// Devices by their device-activity verdict now.
    pub activity_now: Vec<Count>,
    /// Staff (account, device) pairs by their 2FA verdict now.
    pub mfa_now: Vec<Count>,
    /// One row per calendar month (site time) of the period.
    pub months: Vec<MonthCompliance>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MonthCompliance {
    /// `YYYY-MM`.
    pub month: String,
    pub inactive_opened: u64,
    /// `device_inactive` flags active at the month's end (or the period's).
    pub inactive_at_end: u64,
    pub mfa_stale_opened: u64,
    pub mfa_stale_at_end: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Captures {
    pub total: u64,
    /// By grade: the DSL's when set, else the rule's severity.
    pub by_grade: Vec<Count>,
    pub by_category: Vec<Count>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Incidents {
    /// Opened in the period.
    pub opened: u64,
    pub by_severity: Vec<Count>,
    pub by_category: Vec<Count>,
    /// Open at the period's end.
    pub open_at_end: u64,
}

/// Distinct accounts with a capture in the period: counts, never names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccountsAffected {
    pub pupils: u64,
    pub staff: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReviewTimes {
    /// Captures of the period reviewed at least once.
    pub reviewed: u64,
    pub not_reviewed: u64,
    /// Capture to first review, milliseconds (nearest rank).
    pub median_ms: Option<i64>,
    pub p90_ms: Option<i64>,
    /// Captures by where their review stands (new, triaged and the four
    /// outcomes).
    pub outcomes: Vec<Count>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Access {
    /// Enabled console accounts that can see the site(s), per role.
    pub by_role: Vec<Count>,
    /// Those accounts, by name (staff, never pupils).
    pub staff: Vec<StaffAccess>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StaffAccess {
    pub username: String,
    pub role: String,
    /// Sees pupil-level captures (snapshots, matched text).
    pub sees_captures: bool,
    /// Sees devices and the accounts that use them.
    pub sees_devices: bool,
}

/// The figures a freedom-of-information request usually asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FreedomOfInformation {
    /// Alerts (captures) by the rule's severity, as they were raised.
    pub alerts_by_severity: Vec<Count>,
    pub alerts_by_category: Vec<Count>,
    /// Enabled staff console accounts that can see any monitoring data.
    pub staff_accounts_with_access: u64,
    /// Of those, the ones that can see pupil-level captures.
    pub staff_accounts_seeing_captures: u64,
}
