//! A site's device-activity thresholds and evidence retention, in layers:
//! the project's built-in defaults, under `collector.toml` (`[activity]`,
//! `[sites."NAME".activity]`, `[captures]`), under what the console set
//! for the site (a `SiteOverride`, kept by the store).
//!
//! Every reader of a site's rule or retention goes through `activity_rule`
//! and `retention` here (the rule pass, hence the compliance report and
//! the state sent to agents; the console's device page; the evidence
//! purge), so a value set in the console is the value in force.
//!
//! A console override holds all five values together (the form shows
//! them all), so it is valid on its own whatever `collector.toml` says;
//! clearing it returns the site to `collector.toml`. The session rules
//! (accounts counted, remote logins) stay in `collector.toml`.

use std::collections::HashMap;

use jiff::SignedDuration;

use crate::config::{ActivitySettings, CaptureSettings, CollectorConfig, SiteActivityRule};
use crate::model::SiteId;
use crate::rules::activity::ActivityThresholds;

/// The five values, as plain data (any values; see `SiteOverride`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteValues {
    pub window_days: u32,
    pub required_minutes: u32,
    pub warning_days: u32,
    pub auto_disable: bool,
    pub retention_days: u32,
}

/// Values that passed `SiteOverride::new`'s checks: what the store keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteOverride(SiteValues);

/// A field of the form, named in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    WindowDays,
    RequiredMinutes,
    WarningDays,
    AutoDisable,
    RetentionDays,
}

impl Field {
    pub const ALL: [Field; 5] = [
        Field::RequiredMinutes,
        Field::WindowDays,
        Field::WarningDays,
        Field::AutoDisable,
        Field::RetentionDays,
    ];

    /// The form field's (and `collector.toml` key's) name.
    pub fn name(self) -> &'static str {
        match self {
            Field::WindowDays => "window_days",
            Field::RequiredMinutes => "required_minutes",
            Field::WarningDays => "warning_days",
            Field::AutoDisable => "auto_disable",
            Field::RetentionDays => "retention_days",
        }
    }

    /// Its label on the page.
    pub fn label(self) -> &'static str {
        match self {
            Field::WindowDays => "Window (days)",
            Field::RequiredMinutes => "Required logged-in minutes in the window",
            Field::WarningDays => "Warning (days before a breach)",
            Field::AutoDisable => "Disable non-compliant devices without approval",
            Field::RetentionDays => "Keep evidence of closed incidents (days)",
        }
    }

    pub fn value(self, v: &SiteValues) -> String {
        match self {
            Field::WindowDays => v.window_days.to_string(),
            Field::RequiredMinutes => v.required_minutes.to_string(),
            Field::WarningDays => v.warning_days.to_string(),
            Field::AutoDisable => if v.auto_disable { "yes" } else { "no" }.to_owned(),
            Field::RetentionDays => v.retention_days.to_string(),
        }
    }
}

/// Why a field's value was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: Field,
    pub message: String,
}

pub const MAX_WINDOW_DAYS: u32 = 365;
pub const MAX_RETENTION_DAYS: u32 = 3650;
/// Fewest days the console may keep evidence of closed incidents: the
/// technicians who may change this must not be able to make safeguarding
/// evidence vanish behind the DSL's back (collector.toml, set by whoever
/// runs the collector, may go lower).
pub const MIN_RETENTION_DAYS: u32 = 30;

impl SiteOverride {
    /// Checks the values together: window 1–365 days; required minutes
    /// from 1 to the window's length; warning shorter than the window;
    /// retention 30–3,650 days. Every refused field is named.
    pub fn new(v: SiteValues) -> Result<SiteOverride, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut refuse = |field, message: String| errors.push(FieldError { field, message });
        if !(1..=MAX_WINDOW_DAYS).contains(&v.window_days) {
            refuse(
                Field::WindowDays,
                format!("from 1 to {MAX_WINDOW_DAYS} days"),
            );
        } else {
            let most = v.window_days * 24 * 60;
            if !(1..=most).contains(&v.required_minutes) {
                refuse(
                    Field::RequiredMinutes,
                    format!(
                        "from 1 to {most} minutes (the window's {} days)",
                        v.window_days
                    ),
                );
            }
            if v.warning_days >= v.window_days {
                refuse(
                    Field::WarningDays,
                    format!(
                        "from 0 to {} days (less than the window)",
                        v.window_days - 1
                    ),
                );
            }
        }
        if !(MIN_RETENTION_DAYS..=MAX_RETENTION_DAYS).contains(&v.retention_days) {
            refuse(
                Field::RetentionDays,
                format!("from {MIN_RETENTION_DAYS} to {MAX_RETENTION_DAYS} days"),
            );
        }
        if errors.is_empty() {
            Ok(SiteOverride(v))
        } else {
            Err(errors)
        }
    }

    pub fn values(&self) -> SiteValues {
        self.0
    }
}

/// The form as posted: text fields, and the checkbox (present when
/// ticked).
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct RawValues {
    #[serde(default)]
    pub window_days: String,
    #[serde(default)]
    pub required_minutes: String,
    #[serde(default)]
    pub warning_days: String,
    #[serde(default)]
    pub auto_disable: Option<String>,
    #[serde(default)]
    pub retention_days: String,
}

/// Reads and checks the form: a field that is not a whole number is named
/// as such; numbers are then checked together (`SiteOverride::new`).
pub fn parse(raw: &RawValues) -> Result<SiteOverride, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut number = |field: Field, text: &str| match text.trim().parse::<u32>() {
        Ok(n) => n,
        Err(_) => {
            errors.push(FieldError {
                field,
                message: "a whole number".to_owned(),
            });
            0
        }
    };
    let values = SiteValues {
        window_days: number(Field::WindowDays, &raw.window_days),
        required_minutes: number(Field::RequiredMinutes, &raw.required_minutes),
        warning_days: number(Field::WarningDays, &raw.warning_days),
        auto_disable: raw.auto_disable.is_some(),
        retention_days: number(Field::RetentionDays, &raw.retention_days),
    };
    if !errors.is_empty() {
        // Range errors only for the fields that were numbers.
        let unread: Vec<Field> = errors.iter().map(|e: &FieldError| e.field).collect();
        if let Err(more) = SiteOverride::new(values) {
            errors.extend(more.into_iter().filter(|e| !unread.contains(&e.field)));
        }
        errors.sort_by_key(|e| Field::ALL.iter().position(|f| *f == e.field));
        return Err(errors);
    }
    SiteOverride::new(values)
}

/// Where an effective value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The project's built-in default (`collector.toml` does not change it).
    Default,
    CollectorToml,
    Console,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::Default => "built-in default",
            Source::CollectorToml => "collector.toml",
            Source::Console => "set in the console",
        }
    }
}

/// A site's values in force, each with where it comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effective {
    pub values: SiteValues,
    /// In `Field::ALL` order.
    pub sources: [Source; 5],
}

impl Effective {
    pub fn source(&self, field: Field) -> Source {
        self.sources[Field::ALL
            .iter()
            .position(|f| *f == field)
            .expect("every field is in ALL")]
    }
}

/// The values `collector.toml` gives the site (over the built-in
/// defaults), each with its source. A value equal to the built-in default
/// counts as the default unless the site's own section sets it.
pub fn from_file(config: &CollectorConfig, site: &str) -> Effective {
    let defaults = ActivitySettings::default();
    let overrides = config.sites.get(site).map(|s| &s.activity);
    let pick = |site_value: Option<u32>, file: u32, default: u32| match site_value {
        Some(v) => (v, Source::CollectorToml),
        None if file != default => (file, Source::CollectorToml),
        None => (file, Source::Default),
    };
    let a = &config.activity;
    let (required_minutes, s_required) = pick(
        overrides.and_then(|o| o.required_minutes),
        a.required_minutes,
        defaults.required_minutes,
    );
    let (window_days, s_window) = pick(
        overrides.and_then(|o| o.window_days),
        a.window_days,
        defaults.window_days,
    );
    let (warning_days, s_warning) = pick(
        overrides.and_then(|o| o.warning_days),
        a.warning_days,
        defaults.warning_days,
    );
    let (auto_disable, s_auto) = match overrides.and_then(|o| o.auto_disable) {
        Some(v) => (v, Source::CollectorToml),
        None if a.auto_disable != defaults.auto_disable => (a.auto_disable, Source::CollectorToml),
        None => (a.auto_disable, Source::Default),
    };
    let (retention_days, s_retention) = pick(
        None,
        config.captures.retention_days,
        CaptureSettings::default().retention_days,
    );
    Effective {
        values: SiteValues {
            window_days,
            required_minutes,
            warning_days,
            auto_disable,
            retention_days,
        },
        sources: [s_required, s_window, s_warning, s_auto, s_retention],
    }
}

/// The site's values in force: the console's override when there is one.
pub fn effective(
    config: &CollectorConfig,
    site: &str,
    console: Option<&SiteOverride>,
) -> Effective {
    match console {
        Some(o) => Effective {
            values: o.values(),
            sources: [Source::Console; 5],
        },
        None => from_file(config, site),
    }
}

/// The device-activity rule for a site: `collector.toml`'s (sessions,
/// thresholds) with the console's thresholds over it.
pub fn activity_rule(
    config: &CollectorConfig,
    site: &str,
    console: Option<&SiteOverride>,
) -> SiteActivityRule {
    let mut rule = config.activity_rule(site);
    if let Some(o) = console {
        let v = o.values();
        let day = |d: u32| SignedDuration::from_hours(i64::from(d) * 24);
        rule.thresholds = ActivityThresholds {
            window: day(v.window_days),
            required: SignedDuration::from_mins(i64::from(v.required_minutes)),
            warning: day(v.warning_days),
        };
        rule.auto_disable = v.auto_disable;
    }
    rule
}

/// How long evidence of a closed incident is kept at a site.
pub fn retention(config: &CollectorConfig, console: Option<&SiteOverride>) -> SignedDuration {
    let days = console.map_or(config.captures.retention_days, |o| {
        o.values().retention_days
    });
    SignedDuration::from_hours(24 * i64::from(days))
}

/// Every site's retention period, for the evidence purge.
pub async fn retention_by_site(
    store: &dyn crate::store::SiteStore,
    config: &CollectorConfig,
) -> crate::store::Result<Vec<(SiteId, SignedDuration)>> {
    let overrides = store.site_overrides().await?;
    Ok(store
        .sites()
        .await?
        .into_iter()
        .map(|site| (site.id, retention(config, overrides.get(&site.id))))
        .collect())
}

/// The longest activity window of any site (for reading sessions once for
/// a page of devices of several sites).
pub fn longest_window_days(
    config: &CollectorConfig,
    console: &HashMap<SiteId, SiteOverride>,
) -> u32 {
    config
        .sites
        .values()
        .filter_map(|s| s.activity.window_days)
        .chain(console.values().map(|o| o.values().window_days))
        .chain([config.activity.window_days])
        .max()
        .unwrap_or(28)
}

/// One line per changed value, "name: old → new", for the audit log.
pub fn changes(before: &SiteValues, after: &SiteValues) -> String {
    Field::ALL
        .iter()
        .filter(|f| f.value(before) != f.value(after))
        .map(|f| format!("{}: {} → {}", f.name(), f.value(before), f.value(after)))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(window: u32, required: u32, warning: u32, retention: u32) -> SiteValues {
        SiteValues {
            window_days: window,
            required_minutes: required,
            warning_days: warning,
            auto_disable: false,
            retention_days: retention,
        }
    }

    #[test]
    fn values_are_checked_together_and_errors_name_the_field() {
        use Field::*;
        let cases: [(&str, SiteValues, &[Field]); 11] = [
            ("the defaults", values(28, 60, 7, 90), &[]),
            ("smallest", values(1, 1, 0, 30), &[]),
            (
                "evidence kept less than 30 days",
                values(28, 60, 7, 29),
                &[RetentionDays],
            ),
            ("largest", values(365, 365 * 1440, 364, 3650), &[]),
            ("no window", values(0, 60, 7, 90), &[WindowDays]),
            ("window over a year", values(366, 60, 7, 90), &[WindowDays]),
            ("no minutes", values(28, 0, 7, 90), &[RequiredMinutes]),
            (
                "more minutes than the window has",
                values(1, 1441, 0, 90),
                &[RequiredMinutes],
            ),
            (
                "warning as long as the window",
                values(7, 60, 7, 90),
                &[WarningDays],
            ),
            ("no retention", values(28, 60, 7, 0), &[RetentionDays]),
            (
                "several at once",
                values(2, 5000, 2, 3651),
                &[RequiredMinutes, WarningDays, RetentionDays],
            ),
        ];
        for (name, v, want) in cases {
            let got: Vec<Field> = match SiteOverride::new(v) {
                Ok(o) => {
                    assert_eq!(o.values(), v, "{name}");
                    vec![]
                }
                Err(errors) => errors.iter().map(|e| e.field).collect(),
            };
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn the_form_names_fields_that_are_not_numbers() {
        let raw = |window: &str, required: &str, retention: &str| RawValues {
            window_days: window.into(),
            required_minutes: required.into(),
            warning_days: "7".into(),
            auto_disable: Some("on".into()),
            retention_days: retention.into(),
        };
        let ok = parse(&raw(" 28 ", "120", "30")).unwrap().values();
        assert_eq!(
            ok,
            SiteValues {
                auto_disable: true,
                ..values(28, 120, 7, 30)
            }
        );
        let errors = parse(&raw("four weeks", "-5", "0")).unwrap_err();
        let named: Vec<(Field, &str)> = errors
            .iter()
            .map(|e| (e.field, e.message.as_str()))
            .collect();
        assert_eq!(
            named,
            [
                (Field::RequiredMinutes, "a whole number"),
                (Field::WindowDays, "a whole number"),
                (Field::RetentionDays, "from 30 to 3650 days"),
            ]
        );
        assert!(parse(&RawValues::default()).is_err(), "an empty form");
    }

    #[test]
    fn layers_defaults_then_collector_toml_then_the_console() {
        let file =
            |text: &str| CollectorConfig::parse(text, std::path::Path::new("c.toml")).unwrap();
        let console = SiteOverride::new(SiteValues {
            auto_disable: true,
            ..values(14, 120, 3, 30)
        })
        .unwrap();
        use Source::*;
        // (name, collector.toml, console override, values, their sources)
        type Case<'a> = (
            &'a str,
            &'a str,
            Option<&'a SiteOverride>,
            SiteValues,
            [Source; 5],
        );
        let cases: [Case; 4] = [
            ("built-in", "", None, values(28, 60, 7, 90), [Default; 5]),
            (
                "collector.toml, all sites and this site",
                "[activity]\nrequired_minutes = 90\n[captures]\nretention_days = 60\n[sites.\"Cabot\".activity]\nwindow_days = 28\n",
                None,
                values(28, 90, 7, 60),
                [
                    CollectorToml,
                    CollectorToml,
                    Default,
                    Default,
                    CollectorToml,
                ],
            ),
            (
                "another site's section does not apply",
                "[sites.\"Other\".activity]\nwindow_days = 30\n",
                None,
                values(28, 60, 7, 90),
                [Default; 5],
            ),
            (
                "the console over collector.toml",
                "[activity]\nrequired_minutes = 90\n",
                Some(&console),
                SiteValues {
                    auto_disable: true,
                    ..values(14, 120, 3, 30)
                },
                [Console; 5],
            ),
        ];
        for (name, text, over, want, sources) in cases {
            let config = file(text);
            let got = effective(&config, "Cabot", over);
            assert_eq!(got.values, want, "{name}");
            assert_eq!(got.sources, sources, "{name}");
            let rule = activity_rule(&config, "Cabot", over);
            assert_eq!(
                rule.thresholds.required.as_mins(),
                i64::from(want.required_minutes),
                "{name}"
            );
            assert_eq!(
                rule.thresholds.window.as_hours(),
                24 * i64::from(want.window_days),
                "{name}"
            );
            assert_eq!(
                rule.thresholds.warning.as_hours(),
                24 * i64::from(want.warning_days),
                "{name}"
            );
            assert_eq!(rule.auto_disable, want.auto_disable, "{name}");
            assert_eq!(
                retention(&config, over).as_hours(),
                24 * i64::from(want.retention_days),
                "{name}"
            );
        }
        // The session rules stay collector.toml's.
        let config = file("[activity]\ncount_remote = true\n");
        assert!(
            activity_rule(&config, "Cabot", Some(&console))
                .sessions
                .count_remote
        );
        let mut map = HashMap::new();
        map.insert(SiteId(1), console);
        assert_eq!(longest_window_days(&file(""), &map), 28);
        let long = SiteOverride::new(values(90, 60, 7, 90)).unwrap();
        map.insert(SiteId(2), long);
        assert_eq!(longest_window_days(&file(""), &map), 90);
    }

    #[test]
    fn the_audit_names_each_change_with_old_and_new() {
        let before = values(28, 60, 7, 90);
        let after = SiteValues {
            auto_disable: true,
            ..values(28, 120, 7, 90)
        };
        assert_eq!(
            changes(&before, &after),
            "required_minutes: 60 → 120; auto_disable: no → yes"
        );
        assert_eq!(changes(&before, &before), "");
    }
}
