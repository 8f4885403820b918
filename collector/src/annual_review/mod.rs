//! The annual review of monitoring's effectiveness: "senior leaders, the
//! DSL, the IT provider and a governor review monitoring at least once a
//! year, with a record kept" (DfE filtering and monitoring standards).
//!
//! `build` is a pure function from the facts the store hands over
//! (`ReviewInput`: device coverage, flags, captures, incidents, console
//! accounts) to the `hallmonitor.annual_review.v1` document
//! (`AnnualReview`), which the console page, the PDF (`pdf`) and the CLI
//! all render. The document holds counts only: never a pupil's account,
//! a window title or matched text. The staff console accounts that can
//! see monitoring data are named (the review is for senior leaders and
//! governors, who should know who has access).
//!
//! What the store keeps decides what can be shown over time: the rules
//! keep only each device's and each pair's *latest* verdict, so the
//! monthly compliance figures are the flags the rules raised
//! (`device_inactive`, `mfa_stale`): opened in the month, and still active
//! at its end; the verdicts themselves are shown as they stand now.

mod document;
pub mod pdf;
mod period;

pub use document::*;
pub use period::*;

use std::collections::{BTreeMap, BTreeSet};

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::console::access::{Permission, allows};
use crate::model::{ConsoleRole, Site};
use crate::review::CaptureStatus;
use crate::store::{ConsoleStore, ReportStore};

/// The document's schema name, in its `schema` field.
pub const SCHEMA: &str = "hallmonitor.annual_review.v1";

/// Devices count as reporting when heard from in this many days.
pub const DEFAULT_REPORTING_DAYS: i64 = 7;

/// One capture in a period, as the report and the risk profile read it.
/// `account` is used to count distinct accounts and never leaves this
/// crate's aggregation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureFact {
    pub occurred_at: Timestamp,
    pub device: String,
    pub account: String,
    /// The directory names the account staff (else it is counted as a
    /// pupil).
    pub staff: bool,
    pub category: String,
    pub rule_id: String,
    /// The rule's severity (the pregrade).
    pub severity: i64,
    /// The DSL's regrade, when set.
    pub grade: Option<i64>,
    pub status: CaptureStatus,
    /// Milliseconds from the capture to its first review.
    pub first_review_ms: Option<i64>,
}

impl CaptureFact {
    /// The DSL's grade when set, else the rule's severity.
    pub fn effective_grade(&self) -> i64 {
        self.grade.unwrap_or(self.severity)
    }
}

/// One incident that overlaps a period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncidentFact {
    pub opened_at: Timestamp,
    pub category: String,
    pub severity: i64,
    /// `None` while open.
    pub closed_at: Option<Timestamp>,
}

/// One flag that was active at some time in a period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlagSpan {
    pub kind: String,
    pub opened_at: Timestamp,
    /// `None` while active.
    pub closed_at: Option<Timestamp>,
}

/// A site's devices as they stand.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CoverageFacts {
    /// Active (enrolled, not revoked or pending).
    pub enrolled: u64,
    /// Active and heard from since the reporting threshold.
    pub reporting: u64,
    /// Active devices with an open monitoring gap (a graphical session
    /// without a session helper).
    pub helpers_missing: u64,
}

/// A console account that can see a site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessFact {
    pub username: String,
    pub role: ConsoleRole,
}

/// Everything `build` reads, for one or several sites.
#[derive(Clone, Debug)]
pub struct ReviewInput {
    pub sites: Vec<String>,
    /// The zone months are counted in (the first site's).
    pub timezone: String,
    pub period: Period,
    pub generated_at: Timestamp,
    pub reporting_days: i64,
    pub coverage: CoverageFacts,
    /// Devices by their current device-activity verdict.
    pub activity_now: Vec<(String, u64)>,
    /// (staff account, device) pairs by their current 2FA verdict.
    pub mfa_now: Vec<(String, u64)>,
    /// Agent signals in the period (started, stopped uncleanly, clock
    /// jumped, helper gone …), by kind.
    pub signals: Vec<(String, u64)>,
    pub flags: Vec<FlagSpan>,
    pub captures: Vec<CaptureFact>,
    pub incidents: Vec<IncidentFact>,
    pub accounts: Vec<AccessFact>,
}

/// The `p`th percentile (0 < p ≤ 100) by nearest rank: the smallest value
/// with at least p % of the values at or below it. `None` when empty.
/// The median is `percentile(_, 50)` (the lower middle of an even count).
pub fn percentile(values: &[i64], p: u32) -> Option<i64> {
    if values.is_empty() || p == 0 || p > 100 {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    // ceil(p/100 · n), at least 1.
    let rank = (p as usize * n).div_ceil(100).max(1);
    Some(sorted[rank - 1])
}

/// The review from its facts.
pub fn build(input: &ReviewInput) -> AnnualReview {
    let zone = TimeZone::get(&input.timezone).unwrap_or(TimeZone::UTC);
    let period = input.period;
    let in_period: Vec<&CaptureFact> = input
        .captures
        .iter()
        .filter(|c| period.contains(c.occurred_at))
        .collect();

    let tamper_flags = input
        .flags
        .iter()
        .filter(|f| f.kind == "tamper" && period.contains(f.opened_at))
        .count() as u64;
    let coverage = Coverage {
        enrolled: input.coverage.enrolled,
        reporting: input.coverage.reporting,
        reporting_days: input.reporting_days,
        silent: input
            .coverage
            .enrolled
            .saturating_sub(input.coverage.reporting),
        helpers_running: input
            .coverage
            .reporting
            .saturating_sub(input.coverage.helpers_missing),
        helpers_missing: input.coverage.helpers_missing,
        tamper_flags,
        agent_signals: input
            .signals
            .iter()
            .map(|(k, n)| Count {
                key: k.clone(),
                count: *n,
            })
            .collect(),
    };

    let months = months(period, &zone)
        .into_iter()
        .map(|(month, start, end)| {
            let opened = |kind: &str| {
                input
                    .flags
                    .iter()
                    .filter(|f| f.kind == kind && start <= f.opened_at && f.opened_at < end)
                    .count() as u64
            };
            let at_end = |kind: &str| {
                input
                    .flags
                    .iter()
                    .filter(|f| {
                        f.kind == kind && f.opened_at < end && f.closed_at.is_none_or(|c| c >= end)
                    })
                    .count() as u64
            };
            MonthCompliance {
                month,
                inactive_opened: opened("device_inactive"),
                inactive_at_end: at_end("device_inactive"),
                mfa_stale_opened: opened("mfa_stale"),
                mfa_stale_at_end: at_end("mfa_stale"),
            }
        })
        .collect();
    let to_counts = |pairs: &[(String, u64)]| {
        pairs
            .iter()
            .map(|(k, n)| Count {
                key: k.clone(),
                count: *n,
            })
            .collect::<Vec<_>>()
    };

    let mut by_grade = BTreeMap::new();
    let mut by_category = BTreeMap::new();
    let mut alerts_by_severity = BTreeMap::new();
    let mut outcomes: BTreeMap<&str, u64> =
        CaptureStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    let mut pupils = BTreeSet::new();
    let mut staff = BTreeSet::new();
    let mut waits = Vec::new();
    for c in &in_period {
        *by_grade.entry(c.effective_grade()).or_insert(0) += 1;
        *by_category.entry(c.category.clone()).or_insert(0) += 1;
        *alerts_by_severity.entry(c.severity).or_insert(0) += 1;
        *outcomes.entry(c.status.as_str()).or_insert(0) += 1;
        if c.staff {
            staff.insert(c.account.as_str());
        } else {
            pupils.insert(c.account.as_str());
        }
        if let Some(ms) = c.first_review_ms {
            waits.push(ms);
        }
    }
    let reviewed = in_period
        .iter()
        .filter(|c| c.first_review_ms.is_some() || c.status != CaptureStatus::New)
        .count() as u64;

    let mut incident_severity = BTreeMap::new();
    let mut incident_category = BTreeMap::new();
    let mut opened = 0;
    for i in input
        .incidents
        .iter()
        .filter(|i| period.contains(i.opened_at))
    {
        opened += 1;
        *incident_severity.entry(i.severity).or_insert(0) += 1;
        *incident_category.entry(i.category.clone()).or_insert(0) += 1;
    }
    let open_at_end = input
        .incidents
        .iter()
        .filter(|i| i.opened_at < period.to && i.closed_at.is_none_or(|c| c >= period.to))
        .count() as u64;

    let mut by_role = BTreeMap::new();
    let mut staff_access: Vec<StaffAccess> = input
        .accounts
        .iter()
        .map(|a| {
            *by_role.entry(a.role.as_str()).or_insert(0) += 1;
            StaffAccess {
                username: a.username.clone(),
                role: a.role.as_str().to_owned(),
                sees_captures: allows(a.role, Permission::Incidents),
                sees_devices: allows(a.role, Permission::Devices),
            }
        })
        .collect();
    staff_access.sort_by(|a, b| (&a.role, &a.username).cmp(&(&b.role, &b.username)));
    let seeing_captures = staff_access.iter().filter(|a| a.sees_captures).count() as u64;

    AnnualReview {
        schema: SCHEMA,
        sites: input.sites.clone(),
        timezone: input.timezone.clone(),
        from: period.from,
        to: period.to,
        generated_at: input.generated_at,
        coverage,
        compliance: Compliance {
            activity_now: to_counts(&input.activity_now),
            mfa_now: to_counts(&input.mfa_now),
            months,
        },
        captures: Captures {
            total: in_period.len() as u64,
            by_grade: counts(by_grade),
            by_category: counts(by_category.clone()),
        },
        incidents: Incidents {
            opened,
            by_severity: counts(incident_severity),
            by_category: counts(incident_category),
            open_at_end,
        },
        accounts_affected: AccountsAffected {
            pupils: pupils.len() as u64,
            staff: staff.len() as u64,
        },
        review: ReviewTimes {
            reviewed,
            not_reviewed: in_period.len() as u64 - reviewed,
            median_ms: percentile(&waits, 50),
            p90_ms: percentile(&waits, 90),
            outcomes: counts(outcomes),
        },
        access: Access {
            by_role: counts(by_role),
            staff: staff_access.clone(),
        },
        freedom_of_information: FreedomOfInformation {
            alerts_by_severity: counts(alerts_by_severity),
            alerts_by_category: counts(by_category),
            staff_accounts_with_access: staff_access.len() as u64,
            staff_accounts_seeing_captures: seeing_captures,
        },
    }
}

/// Reads the facts of `sites` over `period` from the store and builds the
/// review (the console page, its PDF and `hallmonitor-collector report`).
pub async fn gather<S>(
    store: &S,
    sites: &[Site],
    period: Period,
    now: Timestamp,
    reporting_days: i64,
) -> crate::store::Result<AnnualReview>
where
    S: ReportStore + ConsoleStore + ?Sized,
{
    let mut input = ReviewInput {
        sites: sites.iter().map(|s| s.name.clone()).collect(),
        timezone: sites
            .first()
            .map_or("UTC".to_owned(), |s| s.timezone.clone()),
        period,
        generated_at: now,
        reporting_days,
        coverage: CoverageFacts::default(),
        activity_now: Vec::new(),
        mfa_now: Vec::new(),
        signals: Vec::new(),
        flags: Vec::new(),
        captures: Vec::new(),
        incidents: Vec::new(),
        accounts: Vec::new(),
    };
    let mut activity = BTreeMap::new();
    let mut mfa = BTreeMap::new();
    let mut signals = BTreeMap::new();
    let since = now - SignedDuration::from_hours(24 * reporting_days);
    for site in sites {
        let coverage = store.coverage(site.id, since).await?;
        input.coverage.enrolled += coverage.enrolled;
        input.coverage.reporting += coverage.reporting;
        input.coverage.helpers_missing += coverage.helpers_missing;
        let (a, m) = store.verdicts_now(site.id).await?;
        for (k, n) in a {
            *activity.entry(k).or_insert(0) += n;
        }
        for (k, n) in m {
            *mfa.entry(k).or_insert(0) += n;
        }
        for (k, n) in store.signals_in_period(site.id, period).await? {
            *signals.entry(k).or_insert(0) += n;
        }
        input
            .flags
            .extend(store.flags_in_period(site.id, period).await?);
        input
            .captures
            .extend(store.captures_in_period(site.id, period).await?);
        input
            .incidents
            .extend(store.incidents_in_period(site.id, period).await?);
    }
    input.activity_now = activity.into_iter().collect();
    input.mfa_now = mfa.into_iter().collect();
    input.signals = signals.into_iter().collect();
    input.accounts = store
        .console_users()
        .await?
        .into_iter()
        .filter(|u| !u.disabled && sites.iter().any(|s| u.sees_site(s.id)))
        .map(|u| AccessFact {
            username: u.username,
            role: u.role,
        })
        .collect();
    Ok(build(&input))
}

/// A duration in milliseconds as people read it ("3 h 20 min", "45 s").
pub fn duration_words(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    let (days, hours, mins) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (days, hours, mins) {
        (0, 0, 0) => format!("{secs} s"),
        (0, 0, m) => format!("{m} min"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

#[cfg(test)]
mod tests;
