//! The DSL's risk profile of one pupil account or one device over a
//! period: its captures by category and grade (the DSL's regrade when set,
//! else the rule's severity), per week, and a heatmap of which rules fired
//! at which hour of the day (site time). Pure functions over the captures
//! the store returns (`annual_review::CaptureFact`); the console page
//! (`console::report`) adds the open incidents. Pupil-level data: the
//! page needs the Incidents permission and every view is audited.

use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

use crate::annual_review::{CaptureFact, Period};
use crate::model::DeviceId;

/// Whose profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    Account(String),
    Device(DeviceId),
}

/// Captures of one category, by grade 1–5.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CategoryGrades {
    pub category: String,
    pub grades: [u64; 5],
    pub total: u64,
}

/// How often one rule fired at each hour of the day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeatRow {
    pub category: String,
    pub rule_id: String,
    pub hours: [u64; 24],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RiskFigures {
    pub total: u64,
    pub by_category: Vec<CategoryGrades>,
    /// (the week's Monday, `YYYY-MM-DD`, captures), every week of the
    /// period.
    pub weeks: Vec<(String, u64)>,
    /// By category, then rule.
    pub heatmap: Vec<HeatRow>,
}

/// The Mondays (site time) of the weeks that overlap `period`.
pub fn week_starts(period: Period, zone: &TimeZone) -> Vec<(jiff::civil::Date, Timestamp)> {
    let first = period.from.to_zoned(zone.clone()).date();
    let back = i64::from(first.weekday().to_monday_zero_offset());
    let Ok(mut monday) = first.checked_sub(back.days()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    while let Ok(start) = monday.to_zoned(zone.clone()) {
        if start.timestamp() >= period.to {
            break;
        }
        out.push((monday, start.timestamp()));
        let Ok(next) = monday.checked_add(7.days()) else {
            break;
        };
        monday = next;
    }
    out
}

pub fn figures(captures: &[CaptureFact], period: Period, zone: &TimeZone) -> RiskFigures {
    let captures: Vec<&CaptureFact> = captures
        .iter()
        .filter(|c| period.contains(c.occurred_at))
        .collect();
    let mut by_category: BTreeMap<&str, [u64; 5]> = BTreeMap::new();
    let mut heat: BTreeMap<(&str, &str), [u64; 24]> = BTreeMap::new();
    for c in &captures {
        let grade = c.effective_grade().clamp(1, 5) as usize;
        by_category.entry(&c.category).or_default()[grade - 1] += 1;
        let hour = c.occurred_at.to_zoned(zone.clone()).hour() as usize;
        heat.entry((&c.category, &c.rule_id)).or_insert([0; 24])[hour] += 1;
    }
    let weeks = week_starts(period, zone);
    let mut per_week = vec![0u64; weeks.len()];
    for c in &captures {
        // The last week that starts at or before the capture.
        let i = weeks.partition_point(|(_, start)| *start <= c.occurred_at);
        if i > 0 {
            per_week[i - 1] += 1;
        }
    }
    RiskFigures {
        total: captures.len() as u64,
        by_category: by_category
            .into_iter()
            .map(|(category, grades)| CategoryGrades {
                category: category.to_owned(),
                total: grades.iter().sum(),
                grades,
            })
            .collect(),
        weeks: weeks
            .iter()
            .zip(per_week)
            .map(|((monday, _), n)| (monday.to_string(), n))
            .collect(),
        heatmap: heat
            .into_iter()
            .map(|((category, rule_id), hours)| HeatRow {
                category: category.to_owned(),
                rule_id: rule_id.to_owned(),
                hours,
            })
            .collect(),
    }
}

/// A heatmap cell's shade, 0 (none) to 4 (the most in the map).
pub fn shade(count: u64, highest: u64) -> u8 {
    if count == 0 || highest == 0 {
        return 0;
    }
    1 + (count * 3).div_ceil(highest).min(3) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::review::CaptureStatus;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn capture(when: &str, category: &str, rule: &str, severity: i64) -> CaptureFact {
        CaptureFact {
            occurred_at: at(when),
            device: "dev-1".into(),
            account: "pupil1".into(),
            staff: false,
            category: category.into(),
            rule_id: rule.into(),
            severity,
            grade: None,
            status: CaptureStatus::New,
            first_review_ms: None,
        }
    }

    #[test]
    fn an_empty_period_has_its_weeks_and_nothing_else() {
        let london = TimeZone::get("Europe/London").unwrap();
        // Wed 7 Jan to Wed 21 Jan 2026: the weeks of Mon 5, 12 and 19 Jan.
        let period = Period::new(at("2026-01-07T00:00:00Z"), at("2026-01-21T00:00:00Z")).unwrap();
        let f = figures(&[], period, &london);
        assert_eq!(f.total, 0);
        assert!(f.by_category.is_empty() && f.heatmap.is_empty());
        let weeks: Vec<&str> = f.weeks.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(weeks, ["2026-01-05", "2026-01-12", "2026-01-19"]);
        assert!(f.weeks.iter().all(|(_, n)| *n == 0));
    }

    #[test]
    fn grades_weeks_and_local_hours() {
        let london = TimeZone::get("Europe/London").unwrap();
        // Midnight to midnight in London (BST).
        let period = Period::new(at("2026-05-31T23:00:00Z"), at("2026-06-14T23:00:00Z")).unwrap();
        let mut regraded = capture("2026-06-02T08:30:00Z", "bullying", "b-1", 2);
        regraded.grade = Some(4);
        let captures = [
            regraded,
            // 23:30 UTC on Sunday 7 June is 00:30 on Monday 8 June in
            // London: the second week, hour 0.
            capture("2026-06-07T23:30:00Z", "bullying", "b-1", 3),
            capture("2026-06-09T12:00:00Z", "drugs", "d-1", 5),
            // Outside the period.
            capture("2026-06-20T12:00:00Z", "drugs", "d-1", 5),
        ];
        let f = figures(&captures, period, &london);
        assert_eq!(f.total, 3);
        let bullying = &f.by_category[0];
        assert_eq!(bullying.category, "bullying");
        assert_eq!(bullying.grades, [0, 0, 1, 1, 0], "the regrade, not the 2");
        assert_eq!(
            f.weeks,
            [("2026-06-01".into(), 1), ("2026-06-08".into(), 2)]
        );
        let b1 = f.heatmap.iter().find(|r| r.rule_id == "b-1").unwrap();
        assert_eq!(b1.hours[9], 1, "08:30 UTC is 09:30 BST");
        assert_eq!(b1.hours[0], 1);
        assert_eq!(b1.hours.iter().sum::<u64>(), 2);
        let d1 = f.heatmap.iter().find(|r| r.rule_id == "d-1").unwrap();
        assert_eq!(d1.hours[13], 1);
    }

    #[test]
    fn shades() {
        for (count, highest, want) in [
            (0, 0, 0),
            (0, 9, 0),
            (1, 9, 2),
            (9, 9, 4),
            (1, 1, 4),
            (5, 9, 3),
        ] {
            assert_eq!(shade(count, highest), want, "{count}/{highest}");
        }
    }
}
