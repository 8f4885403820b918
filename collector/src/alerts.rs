//! Capture alerts beyond "severity 4–5 at once": the categories that alert
//! at once whatever the severity (`capture_instant`; self-harm and suicide
//! by default), and threshold alerts (`capture_threshold`: a device or an
//! account passes N captures of a category within a period, e.g. 5
//! bullying captures in 7 days).
//!
//! Settings come in layers, like `site_settings`: the built-in defaults,
//! under `collector.toml` (`[alerts]`, `[sites."NAME".alerts]`), under
//! what the console set for the site (both lists together, kept by
//! `AlertStore`). The store reads them in the batch's transaction
//! (`store/sqlite/incidents.rs` `record_capture`), so an alert commits
//! with the capture that causes it, once: a resent capture changes
//! nothing, and `should_alert` refuses a second alert for a subject and
//! category while its last one is within the threshold's period.
//!
//! Privacy: a threshold alert names the device, category and count, never
//! the account (which may be a pupil's).

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::site_settings::Source;

/// The notification event kind of a threshold crossing.
pub const CAPTURE_THRESHOLD: &str = "capture_threshold";
/// The notification event kind of a capture in an instant category.
pub const CAPTURE_INSTANT: &str = "capture_instant";

/// Every event kind a route may name, for the console's and CLI's route
/// editors (collector.toml may name others: an unknown kind is simply
/// never raised).
pub const EVENT_KINDS: &[&str] = &[
    "capture_severe",
    CAPTURE_INSTANT,
    CAPTURE_THRESHOLD,
    "device_inactive",
    "mfa_stale",
    "mfa_due_soon",
    "tamper",
];

pub const MAX_THRESHOLD_COUNT: u32 = 1000;
pub const MAX_THRESHOLD_DAYS: u32 = 90;
/// Most instant categories and thresholds a site may have (each capture
/// runs one count query per threshold of its category).
pub const MAX_ENTRIES: usize = 20;
const MAX_CATEGORY_CHARS: usize = 64;

/// N captures of a category within `days`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    pub category: String,
    pub count: u32,
    pub days: u32,
}

impl Threshold {
    pub fn period(&self) -> SignedDuration {
        SignedDuration::from_hours(24 * i64::from(self.days))
    }
}

/// `[alerts]`: what alerts, for every site unless overridden.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertSettings {
    /// Categories whose first capture in an incident alerts at once,
    /// whatever its severity.
    pub instant_categories: Vec<String>,
    pub thresholds: Vec<Threshold>,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            instant_categories: vec!["self-harm".into(), "suicide".into()],
            thresholds: vec![Threshold {
                category: "bullying".into(),
                count: 5,
                days: 7,
            }],
        }
    }
}

/// `[sites."NAME".alerts]`: a site's lists in place of `[alerts]`'s.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertOverrides {
    pub instant_categories: Option<Vec<String>>,
    pub thresholds: Option<Vec<Threshold>>,
}

fn check_category(category: &str) -> Result<(), String> {
    let ok = !category.is_empty()
        && category.chars().count() <= MAX_CATEGORY_CHARS
        && category
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "category '{category}': lower-case letters, digits, '-' and '_' (at most {MAX_CATEGORY_CHARS})"
        ))
    }
}

impl AlertSettings {
    /// Checks the lists: known-shaped categories, each once; thresholds of
    /// 2–1,000 captures in 1–90 days, one per (category, days).
    pub fn check(&self) -> Result<(), String> {
        if self.instant_categories.len() > MAX_ENTRIES || self.thresholds.len() > MAX_ENTRIES {
            return Err(format!("at most {MAX_ENTRIES} categories and thresholds"));
        }
        for (n, category) in self.instant_categories.iter().enumerate() {
            check_category(category)?;
            if self.instant_categories[..n].contains(category) {
                return Err(format!("category '{category}' named twice"));
            }
        }
        for (n, t) in self.thresholds.iter().enumerate() {
            check_category(&t.category)?;
            if !(2..=MAX_THRESHOLD_COUNT).contains(&t.count) {
                return Err(format!(
                    "threshold for '{}': count from 2 to {MAX_THRESHOLD_COUNT}",
                    t.category
                ));
            }
            if !(1..=MAX_THRESHOLD_DAYS).contains(&t.days) {
                return Err(format!(
                    "threshold for '{}': days from 1 to {MAX_THRESHOLD_DAYS}",
                    t.category
                ));
            }
            if self.thresholds[..n]
                .iter()
                .any(|o| o.category == t.category && o.days == t.days)
            {
                return Err(format!(
                    "threshold for '{}' in {} days named twice",
                    t.category, t.days
                ));
            }
        }
        Ok(())
    }

    pub fn is_instant(&self, category: &str) -> bool {
        self.instant_categories.iter().any(|c| c == category)
    }

    pub fn thresholds_for<'a>(&'a self, category: &'a str) -> impl Iterator<Item = &'a Threshold> {
        self.thresholds
            .iter()
            .filter(move |t| t.category == category)
    }

    /// The stored (and form) text of the categories: one per line.
    pub fn categories_text(&self) -> String {
        self.instant_categories.join("\n")
    }

    /// The stored (and form) text of the thresholds: "category count days"
    /// per line.
    pub fn thresholds_text(&self) -> String {
        self.thresholds
            .iter()
            .map(|t| format!("{} {} {}", t.category, t.count, t.days))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Reads the two texts (the console's form, the stored row): categories
    /// separated by lines or commas; thresholds one "category count days"
    /// per line. Checked as `check` does; errors name the line.
    pub fn parse(categories: &str, thresholds: &str) -> Result<AlertSettings, String> {
        let instant_categories = categories
            .split([',', '\n'])
            .map(|c| c.trim().to_lowercase())
            .filter(|c| !c.is_empty())
            .collect();
        let mut list = Vec::new();
        for (n, line) in thresholds.lines().enumerate() {
            let words: Vec<&str> = line
                .split([' ', '\t', ','])
                .filter(|w| !w.is_empty())
                .collect();
            match words.as_slice() {
                [] => continue,
                [category, count, days] => {
                    let (Ok(count), Ok(days)) = (count.parse::<u32>(), days.parse::<u32>()) else {
                        return Err(format!(
                            "thresholds line {}: count and days are whole numbers",
                            n + 1
                        ));
                    };
                    list.push(Threshold {
                        category: category.to_lowercase(),
                        count,
                        days,
                    });
                }
                _ => {
                    return Err(format!(
                        "thresholds line {}: expected \"category count days\", e.g. \"bullying 5 7\"",
                        n + 1
                    ));
                }
            }
        }
        let settings = AlertSettings {
            instant_categories,
            thresholds: list,
        };
        settings.check()?;
        Ok(settings)
    }
}

/// `collector.toml`'s layer, as the store holds it: `[alerts]` and each
/// site's `[sites."NAME".alerts]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileAlerts {
    pub global: AlertSettings,
    pub sites: BTreeMap<String, AlertOverrides>,
}

/// A site's alert settings in force, with where each list comes from
/// (instant categories, thresholds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectiveAlerts {
    pub settings: AlertSettings,
    pub sources: (Source, Source),
}

impl FileAlerts {
    pub fn from_config(config: &crate::config::CollectorConfig) -> FileAlerts {
        FileAlerts {
            global: config.alerts.clone(),
            sites: config
                .sites
                .iter()
                .map(|(name, s)| (name.clone(), s.alerts.clone()))
                .collect(),
        }
    }

    /// What `collector.toml` gives the site, over the built-in defaults.
    pub fn for_site(&self, site: &str) -> EffectiveAlerts {
        let defaults = AlertSettings::default();
        let own = self.sites.get(site);
        fn pick<T: PartialEq>(own: Option<&Vec<T>>, file: &Vec<T>, default: &Vec<T>) -> Source {
            match own {
                Some(_) => Source::CollectorToml,
                None if file != default => Source::CollectorToml,
                None => Source::Default,
            }
        }
        let categories = own.and_then(|o| o.instant_categories.as_ref());
        let thresholds = own.and_then(|o| o.thresholds.as_ref());
        EffectiveAlerts {
            settings: AlertSettings {
                instant_categories: categories
                    .unwrap_or(&self.global.instant_categories)
                    .clone(),
                thresholds: thresholds.unwrap_or(&self.global.thresholds).clone(),
            },
            sources: (
                pick(
                    categories,
                    &self.global.instant_categories,
                    &defaults.instant_categories,
                ),
                pick(thresholds, &self.global.thresholds, &defaults.thresholds),
            ),
        }
    }

    /// The settings in force: the console's override when the site has
    /// one, else `collector.toml`'s.
    pub fn effective(&self, site: &str, console: Option<AlertSettings>) -> EffectiveAlerts {
        match console {
            Some(settings) => EffectiveAlerts {
                settings,
                sources: (Source::Console, Source::Console),
            },
            None => self.for_site(site),
        }
    }
}

/// Whether a capture at `at` that brings the subject's count of the
/// category within the period to `count` is a new crossing of
/// `threshold`: enough captures, and no alert for the same subject,
/// category and period already within the period of `at` (before or after:
/// captures of a device that was offline arrive late). `nearest_alert` is
/// the stored alert closest to `at`.
pub fn should_alert(
    count: u64,
    threshold: &Threshold,
    nearest_alert: Option<Timestamp>,
    at: Timestamp,
) -> bool {
    if count < u64::from(threshold.count) {
        return false;
    }
    match nearest_alert {
        None => true,
        Some(last) => at.duration_since(last).abs() >= threshold.period(),
    }
}

/// Who a threshold counts captures of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    Device,
    Account,
}

impl Subject {
    pub fn as_str(self) -> &'static str {
        match self {
            Subject::Device => "device",
            Subject::Account => "account",
        }
    }
}

/// The summary of a threshold alert: device (by the caller's hostname),
/// category and count; never the account.
pub fn threshold_summary(
    subject: Subject,
    count: u64,
    threshold: &Threshold,
    incident: i64,
) -> String {
    let whose = match subject {
        Subject::Device => "on this device",
        Subject::Account => "by one account (the latest on this device)",
    };
    format!(
        "{count} {} captures in {} days {whose}; incident #{incident}",
        threshold.category, threshold.days
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bullying(count: u32, days: u32) -> Threshold {
        Threshold {
            category: "bullying".into(),
            count,
            days,
        }
    }

    #[test]
    fn threshold_crossing_decisions() {
        let at: Timestamp = "2026-11-20T12:00:00Z".parse().unwrap();
        let day = SignedDuration::from_hours(24);
        let t = bullying(5, 7);
        // (name, count, nearest alert, alert?)
        let cases: [(&str, u64, Option<Timestamp>, bool); 8] = [
            ("below the threshold", 4, None, false),
            ("reaches it: alert", 5, None, true),
            (
                "past it with no alert yet (settings lowered)",
                9,
                None,
                true,
            ),
            ("the alert just given: not again", 6, Some(at - day), false),
            (
                "an alert the day before the window ends",
                5,
                Some(at - 6 * day),
                false,
            ),
            (
                "the window has cleared since the alert",
                5,
                Some(at - 7 * day),
                true,
            ),
            (
                "a late capture before a recent alert",
                5,
                Some(at + 2 * day),
                false,
            ),
            (
                "a late capture long before the alert",
                5,
                Some(at + 8 * day),
                true,
            ),
        ];
        for (name, count, nearest, expected) in cases {
            assert_eq!(should_alert(count, &t, nearest, at), expected, "{name}");
        }
    }

    #[test]
    fn settings_parse_and_check() {
        let parsed =
            AlertSettings::parse("Self-harm, suicide\n", "bullying 5 7\n\nviolence,3,1").unwrap();
        assert_eq!(parsed.instant_categories, ["self-harm", "suicide"]);
        assert_eq!(
            parsed.thresholds,
            [
                bullying(5, 7),
                Threshold {
                    category: "violence".into(),
                    count: 3,
                    days: 1
                }
            ]
        );
        assert_eq!(
            AlertSettings::parse(&parsed.categories_text(), &parsed.thresholds_text()).unwrap(),
            parsed
        );
        // (name, categories, thresholds, error contains)
        let refused = [
            ("three words", "", "bullying 5", "line 1"),
            ("not a number", "", "bullying five 7", "whole numbers"),
            (
                "one capture is no threshold",
                "",
                "bullying 1 7",
                "count from 2",
            ),
            ("too long a period", "", "bullying 5 91", "days from 1"),
            ("the same twice", "", "bullying 5 7\nbullying 9 7", "twice"),
            ("a category twice", "drugs, drugs", "", "twice"),
            ("odd characters", "self harm!", "", "lower-case"),
        ];
        for (name, categories, thresholds, error) in refused {
            let got = AlertSettings::parse(categories, thresholds).unwrap_err();
            assert!(got.contains(error), "{name}: {got}");
        }
        AlertSettings::default().check().unwrap();
    }

    #[test]
    fn layers_default_file_console() {
        let mut file = FileAlerts::default();
        let plain = file.for_site("Cabot");
        assert_eq!(plain.settings, AlertSettings::default());
        assert_eq!(plain.sources, (Source::Default, Source::Default));
        file.global.thresholds = vec![bullying(3, 2)];
        file.sites.insert(
            "Cabot".into(),
            AlertOverrides {
                instant_categories: Some(vec!["drugs".into()]),
                thresholds: None,
            },
        );
        let cabot = file.for_site("Cabot");
        assert_eq!(cabot.settings.instant_categories, ["drugs"]);
        assert_eq!(cabot.settings.thresholds, [bullying(3, 2)]);
        assert_eq!(
            cabot.sources,
            (Source::CollectorToml, Source::CollectorToml)
        );
        let other = file.for_site("Other");
        assert_eq!(other.sources, (Source::Default, Source::CollectorToml));
        let console = AlertSettings {
            instant_categories: vec![],
            thresholds: vec![],
        };
        let over = file.effective("Cabot", Some(console.clone()));
        assert_eq!(over.settings, console);
        assert_eq!(over.sources, (Source::Console, Source::Console));
    }

    #[test]
    fn a_threshold_summary_names_no_account() {
        let text = threshold_summary(Subject::Account, 5, &bullying(5, 7), 12);
        assert_eq!(
            text,
            "5 bullying captures in 7 days by one account (the latest on this device); incident #12"
        );
    }
}
