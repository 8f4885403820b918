//! Evaluating stored devices: reads each device's sessions and state from
//! the store, applies the site's rule at `as_of`, and (for `refresh`)
//! records the verdicts, which opens, approves or resolves flags.
//!
//! `serve` calls `refresh` for one device when its sessions or command
//! results arrive, and for every device on a timer (time passing alone
//! moves devices from compliant to at risk to non-compliant), so readers
//! (`compliance check`, the console) find current verdicts without a full
//! recompute.

use std::collections::{BTreeMap, HashMap};

use jiff::{SignedDuration, Timestamp};

use crate::config::{CollectorConfig, SiteActivityRule};
use crate::directory::Role;
use crate::model::{DeviceId, SiteId};
use crate::rules::activity::{self, ActivityEvaluation, DeviceActivityContext, Interval};
use crate::rules::mfa::{self, PairVerdict};
use crate::site_settings::{self, SiteOverride};
use crate::store::{
    ActivityChanges, ActivityInput, ActivityVerdict, DeviceFilter, MfaVerdict, Result, Store,
};

/// Devices evaluated per store round trip.
const PAGE: usize = 1_000;

/// One device's verdict with what produced it.
#[derive(Clone, Debug)]
pub struct DeviceVerdict {
    pub input: ActivityInput,
    pub rule: SiteActivityRule,
    pub evaluation: ActivityEvaluation,
    /// The device's (staff account, device) 2FA pairs.
    pub mfa: Vec<PairVerdict>,
}

/// Who is staff at each site: the imported directory, then the configured
/// patterns for accounts not in it.
struct StaffLookup<'a> {
    config: &'a CollectorConfig,
    patterns: Vec<glob::Pattern>,
    sites: HashMap<SiteId, HashMap<String, Role>>,
}

impl StaffLookup<'_> {
    async fn load(&mut self, store: &dyn Store, site: SiteId) -> Result<()> {
        if let std::collections::hash_map::Entry::Vacant(entry) = self.sites.entry(site) {
            let accounts = store
                .directory(site)
                .await?
                .into_iter()
                .flat_map(|a| {
                    // Sign-ins name accounts by email; sessions by username.
                    let mut keys = vec![(a.username.clone(), a.role)];
                    if !a.email.is_empty() {
                        keys.push((a.email.clone(), a.role));
                    }
                    keys
                })
                .collect();
            entry.insert(accounts);
        }
        Ok(())
    }

    fn is_staff(&self, site: SiteId, account: &str) -> bool {
        let account = account.to_lowercase();
        match self.sites.get(&site).and_then(|d| d.get(&account)) {
            Some(role) => *role == Role::Staff,
            None => self.patterns.iter().any(|p| p.matches(&account)),
        }
    }
}

/// The rule for one device from its stored input.
pub fn evaluate_input(
    input: &ActivityInput,
    rule: &SiteActivityRule,
    as_of: Timestamp,
) -> ActivityEvaluation {
    let heartbeat = SignedDuration::from_secs(i64::from(input.heartbeat_interval_secs.max(1)));
    let intervals: Vec<Interval> = input
        .sessions
        .iter()
        .filter_map(|s| s.interval(&rule.sessions, as_of, input.last_seen_at, heartbeat))
        .collect();
    let context = DeviceActivityContext {
        evaluation_start: input
            .reenabled_at
            .map_or(input.enrolled_at, |r| r.max(input.enrolled_at)),
        disabled: input.enforcement.is_disabled(),
    };
    activity::evaluate(context, &intervals, as_of, &rule.thresholds)
}

/// One page of verdicts: devices after `after`, at most `PAGE`.
async fn evaluate_page(
    store: &dyn Store,
    config: &CollectorConfig,
    filter: &DeviceFilter,
    as_of: Timestamp,
    after: Option<&DeviceId>,
) -> Result<Vec<DeviceVerdict>> {
    // The console's thresholds over collector.toml's (`site_settings`).
    let overrides = store.site_overrides().await?;
    let since = as_of - longest_window(config, &overrides);
    let page = store.activity_inputs(filter, since, after, PAGE).await?;
    let ids: Vec<DeviceId> = page.iter().map(|i| i.device.clone()).collect();
    let mut completions: HashMap<DeviceId, BTreeMap<String, Vec<Timestamp>>> = HashMap::new();
    for (device, account, at) in store.mfa_completions_for(&ids, as_of).await? {
        completions
            .entry(device)
            .or_default()
            .entry(account)
            .or_default()
            .push(at);
    }
    let mut staff = StaffLookup {
        config,
        patterns: config.mfa.staff_patterns(),
        sites: HashMap::new(),
    };
    for input in &page {
        staff.load(store, input.site).await?;
    }
    let thresholds = staff.config.mfa.thresholds();
    let none = BTreeMap::new();
    // Each site's rule (glob patterns compiled) once per page, not per
    // device.
    let mut rules: HashMap<SiteId, SiteActivityRule> = HashMap::new();
    Ok(page
        .into_iter()
        .map(|input| {
            let rule = rules
                .entry(input.site)
                .or_insert_with(|| {
                    site_settings::activity_rule(
                        config,
                        &input.site_name,
                        overrides.get(&input.site),
                    )
                })
                .clone();
            let evaluation = evaluate_input(&input, &rule, as_of);
            let mfa = mfa::device_pairs(
                &input.sessions,
                &rule.sessions,
                |account| staff.is_staff(input.site, account),
                completions.get(&input.device).unwrap_or(&none),
                as_of,
                &thresholds,
            );
            DeviceVerdict {
                input,
                rule,
                evaluation,
                mfa,
            }
        })
        .collect())
}

/// Evaluates and returns every selected device's verdict (for checks at
/// any `as_of`).
pub async fn evaluate(
    store: &dyn Store,
    config: &CollectorConfig,
    filter: &DeviceFilter,
    as_of: Timestamp,
) -> Result<Vec<DeviceVerdict>> {
    let mut all: Vec<DeviceVerdict> = Vec::new();
    loop {
        let after = all.last().map(|v| v.input.device.clone());
        let page = evaluate_page(store, config, filter, as_of, after.as_ref()).await?;
        let full = page.len() == PAGE;
        all.extend(page);
        if !full {
            return Ok(all);
        }
    }
}

/// Evaluates the selected devices at `as_of` and records the verdicts
/// (opening, approving or resolving flags), a page at a time.
pub async fn refresh(
    store: &dyn Store,
    config: &CollectorConfig,
    filter: &DeviceFilter,
    as_of: Timestamp,
) -> Result<ActivityChanges> {
    let recheck_open = SignedDuration::from_secs(config.evaluate_every_secs.get() as i64);
    let mut changes = ActivityChanges::default();
    let mut after = None;
    loop {
        let page = evaluate_page(store, config, filter, as_of, after.as_ref()).await?;
        let full = page.len() == PAGE;
        after = page.last().map(|v| v.input.device.clone());
        let verdicts: Vec<ActivityVerdict> = page
            .iter()
            .map(|v| ActivityVerdict {
                device: v.input.device.clone(),
                site: v.input.site,
                evaluation: v.evaluation,
                next_check_at: next_check_at(v, recheck_open, &config.mfa.thresholds()),
                required_minutes: v.rule.thresholds.required.as_mins() as u32,
                auto_disable: v.rule.auto_disable,
            })
            .collect();
        if !verdicts.is_empty() {
            let page_changes = store.record_activity(&verdicts, as_of).await?;
            changes.opened.extend(page_changes.opened);
            changes.resolved.extend(page_changes.resolved);
            changes.auto_approved.extend(page_changes.auto_approved);
            let mfa: Vec<MfaVerdict> = page
                .iter()
                .map(|v| MfaVerdict {
                    device: v.input.device.clone(),
                    site: v.input.site,
                    pairs: v.mfa.clone(),
                    as_of,
                })
                .collect();
            let mfa_changes = store.record_mfa(&mfa, as_of).await?;
            changes.opened.extend(mfa_changes.opened);
            changes.resolved.extend(mfa_changes.resolved);
        }
        if !full {
            return Ok(changes);
        }
    }
}

/// Re-evaluates only the devices whose verdict time alone may have
/// changed by `as_of` (or that have none yet): what the periodic pass runs,
/// so its cost follows the devices that change, not the fleet.
pub async fn refresh_due(
    store: &dyn Store,
    config: &CollectorConfig,
    as_of: Timestamp,
) -> Result<ActivityChanges> {
    let mut changes = ActivityChanges::default();
    loop {
        let due = store.devices_due(as_of, PAGE).await?;
        let count = due.len();
        if count == 0 {
            return Ok(changes);
        }
        let filter = DeviceFilter {
            devices: Some(due),
            ..DeviceFilter::default()
        };
        let page = refresh(store, config, &filter, as_of).await?;
        changes.opened.extend(page.opened);
        changes.resolved.extend(page.resolved);
        changes.auto_approved.extend(page.auto_approved);
        if count < PAGE {
            return Ok(changes);
        }
    }
}

/// The earliest instant at which time passing alone can change this
/// verdict: the end of grace, the start of the at-risk week, the breach.
/// A device with an open qualifying session is looked at again after
/// `recheck_open` (its time grows with the agent's heartbeats), and every
/// device at least daily.
fn next_check_at(
    verdict: &DeviceVerdict,
    recheck_open: SignedDuration,
    mfa_thresholds: &mfa::MfaThresholds,
) -> Timestamp {
    use crate::rules::activity::ActivityStatus as S;
    let e = &verdict.evaluation;
    let daily = e.as_of + SignedDuration::from_hours(24);
    let open = verdict
        .input
        .sessions
        .iter()
        .any(|s| s.ended_at.is_none() && verdict.rule.sessions.qualifies(s));
    let by_time = match e.status {
        S::Grace => e.grace_until,
        S::Compliant => e.breach_at.map(|b| b - verdict.rule.thresholds.warning),
        S::AtRisk => e.breach_at,
        S::NonCompliant | S::Disabled => None,
    };
    let soonest = match (by_time, open) {
        (Some(t), true) => t.min(e.as_of + recheck_open),
        (Some(t), false) => t,
        (None, true) => e.as_of + recheck_open,
        (None, false) => daily,
    };
    let mfa_change = verdict
        .mfa
        .iter()
        .filter_map(|p| mfa::next_change(p, mfa_thresholds))
        .min();
    let soonest = mfa_change.map_or(soonest, |m| soonest.min(m));
    // Never in the past (a breach exactly now is handled by this pass).
    soonest
        .min(daily)
        .max(e.as_of + SignedDuration::from_millis(1))
}

/// How far back a page's sessions are read: the longest activity window
/// of any site (collector.toml's or the console's), or the 2FA validity.
fn longest_window(
    config: &CollectorConfig,
    overrides: &HashMap<SiteId, SiteOverride>,
) -> SignedDuration {
    let days = site_settings::longest_window_days(config, overrides).max(config.mfa.validity_days);
    SignedDuration::from_hours(i64::from(days) * 24)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Event, EventBody, Seq, SessionKind, SessionRecord};
    use crate::rules::activity::ActivityStatus;
    use crate::site_settings::SiteValues;
    use crate::store::sqlite::testing::store_with_device;
    use crate::store::{AuditEntry, IngestStore, SiteStore};

    const DAY: i64 = 86_400;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    /// A device enrolled 40 days before `as_of` with 90 minutes of use
    /// 10 days before it: compliant under 60 required minutes. The
    /// console's values change its verdict through the real rule pass (and
    /// the compliance report built from it).
    #[tokio::test]
    async fn the_consoles_thresholds_are_the_ones_the_rule_applies() {
        let dir = tempfile::tempdir().unwrap();
        let (store, site, device) = store_with_device(dir.path(), t(0)).await;
        let as_of = t(40 * DAY);
        let used = t(30 * DAY);
        let session = Event {
            seq: Seq(1),
            event_id: "e1".into(),
            occurred_at: used,
            body: EventBody::Session(SessionRecord {
                session_id: "s1".into(),
                account: "pupil1".into(),
                uid: 1000,
                kind: SessionKind::Graphical,
                started_at: used,
                ended_at: Some(used + SignedDuration::from_mins(90)),
                active_secs: 5_400,
            }),
        };
        store
            .record_batch(&device, &[session], used + SignedDuration::from_mins(90))
            .await
            .unwrap();
        let config = CollectorConfig::default();
        let filter = DeviceFilter::one(device.clone());
        let status = |verdicts: Vec<DeviceVerdict>| verdicts[0].evaluation.status;
        let set = |values: Option<SiteValues>| {
            let store = &store;
            async move {
                let value = values.map(|v| SiteOverride::new(v).unwrap());
                store
                    .set_site_override(
                        site.id,
                        value.as_ref(),
                        AuditEntry {
                            at: as_of,
                            site: Some(site.id),
                            actor: "test",
                            action: "site_settings_set",
                            target: "site Cabot",
                            detail: "",
                            address: "",
                        },
                    )
                    .await
                    .unwrap();
            }
        };
        let values = |required_minutes, window_days| SiteValues {
            window_days,
            required_minutes,
            warning_days: 7,
            auto_disable: false,
            retention_days: 90,
        };
        let cases = [
            (
                "collector.toml's 60 minutes",
                None,
                ActivityStatus::Compliant,
            ),
            (
                "the console's 120 minutes",
                Some(values(120, 28)),
                ActivityStatus::NonCompliant,
            ),
            (
                "the console's 14-day window: the use leaves it within the warning week",
                Some(values(60, 14)),
                ActivityStatus::AtRisk,
            ),
            (
                "the console's 80 minutes",
                Some(values(80, 28)),
                ActivityStatus::Compliant,
            ),
            ("cleared again", None, ActivityStatus::Compliant),
        ];
        for (name, value, want) in cases {
            set(value).await;
            let verdicts = evaluate(&store, &config, &filter, as_of).await.unwrap();
            assert_eq!(status(verdicts), want, "{name}");
            let report = crate::compliance::check(&store, &config, &filter, as_of)
                .await
                .unwrap();
            let required = value.map_or(60, |v| i64::from(v.required_minutes));
            assert_eq!(
                report.devices[0].activity.required_minutes, required,
                "{name}"
            );
        }
        // Recording the verdict opens the device_inactive flag the
        // console's value implies.
        set(Some(values(120, 28))).await;
        let changes = refresh(&store, &config, &filter, as_of).await.unwrap();
        assert_eq!(changes.opened.len(), 1, "{changes:?}");
    }
}
