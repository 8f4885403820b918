//! The period a review or a risk profile covers, read from the forms'
//! and the command line's days in a site's zone, and its calendar months.

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};
use serde::Serialize;

/// `[from, to)`, `from` before `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Period {
    pub from: Timestamp,
    pub to: Timestamp,
}

/// Why a period was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeriodError {
    #[error("the period must end after it starts")]
    Backwards,
    #[error("the period may be at most {0} days long")]
    TooLong(i64),
}

/// The longest period a report or profile covers.
pub const MAX_PERIOD_DAYS: i64 = 3 * 366;

impl Period {
    pub fn new(from: Timestamp, to: Timestamp) -> Result<Period, PeriodError> {
        if from >= to {
            return Err(PeriodError::Backwards);
        }
        if to.duration_since(from) > SignedDuration::from_hours(24 * MAX_PERIOD_DAYS) {
            return Err(PeriodError::TooLong(MAX_PERIOD_DAYS));
        }
        Ok(Period { from, to })
    }

    /// The `days` before `now`, to `now`.
    pub fn last_days(now: Timestamp, days: i64) -> Period {
        Period {
            from: now - SignedDuration::from_hours(24 * days),
            to: now,
        }
    }

    /// The default: the last twelve months (365 days).
    pub fn last_year(now: Timestamp) -> Period {
        Period::last_days(now, 365)
    }

    pub fn contains(&self, at: Timestamp) -> bool {
        self.from <= at && at < self.to
    }
}

/// `from`..`to` (days in `zone`, both included), or the `default_days`
/// before `now`.
pub fn period_of(
    from: &str,
    to: &str,
    zone: &TimeZone,
    now: Timestamp,
    default_days: i64,
) -> Result<Period, String> {
    let day = |text: &str, name: &str| -> Result<Option<jiff::civil::Date>, String> {
        match text.trim() {
            "" => Ok(None),
            text => text
                .parse()
                .map(Some)
                .map_err(|_| format!("{name}: '{text}' is not a date (YYYY-MM-DD)")),
        }
    };
    let start = |d: jiff::civil::Date| {
        d.to_zoned(zone.clone())
            .map(|z| z.timestamp())
            .map_err(|e| e.to_string())
    };
    let (from, to) = (day(from, "from")?, day(to, "to")?);
    let end = match to {
        Some(d) => start(d.tomorrow().map_err(|e| e.to_string())?)?,
        None => now,
    };
    let begin = match from {
        Some(d) => start(d)?,
        None => end - jiff::SignedDuration::from_hours(24 * default_days),
    };
    Period::new(begin, end).map_err(|e| e.to_string())
}

/// "1 Dec 2025 to 30 Nov 2026" (the last day included).
pub fn period_words(period: Period, zone: &TimeZone) -> String {
    let last = period.to - jiff::SignedDuration::from_millis(1);
    format!(
        "{} to {}",
        period.from.to_zoned(zone.clone()).strftime("%-d %b %Y"),
        last.to_zoned(zone.clone()).strftime("%-d %b %Y")
    )
}

/// The calendar months (in `zone`) that overlap `period`, each clipped to
/// it: (`YYYY-MM`, start, end).
pub fn months(period: Period, zone: &TimeZone) -> Vec<(String, Timestamp, Timestamp)> {
    let mut out = Vec::new();
    let first = period.from.to_zoned(zone.clone()).date().first_of_month();
    let mut month = first;
    while let Ok(start) = month.to_zoned(zone.clone()) {
        let start = start.timestamp();
        if start >= period.to {
            break;
        }
        let Ok(next) = month.checked_add(1.month()) else {
            break;
        };
        let end = next
            .to_zoned(zone.clone())
            .map_or(period.to, |z| z.timestamp());
        out.push((
            month.strftime("%Y-%m").to_string(),
            start.max(period.from),
            end.min(period.to),
        ));
        month = next;
    }
    out
}
