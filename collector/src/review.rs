//! The DSL's review of each capture: "monitoring must pick up incidents
//! urgently, take prompt action and record the outcome" (DfE filtering and
//! monitoring standards).
//!
//! ```text
//! new ──► triaged ──► false_positive | no_concern | concern | escalated
//!  │                        ▲                   │
//!  └────────────────────────┘   reopen ──► triaged
//! ```
//!
//! A capture starts `new`. The DSL triages it, or closes it at once when
//! the snapshot is plain enough; closing needs an outcome (and may carry a
//! reference in the school's own record system, MyConcern or CPOMS). A
//! closed capture can be reopened (to `triaged`). The DSL may regrade a
//! capture 1–5; the rule's severity (the pregrade) is never changed. Notes
//! can be added at any time. The first move out of `new` stamps the
//! capture with how long it waited (`first_review_ms`), for the report's
//! median and 90th percentile.
//!
//! `decide` is the whole rule and is pure; the store applies its
//! `Decision` (new status, grade, outcome and one history row per change)
//! in one transaction.
//!
//! An incident stays open or closed as the DSL sets it; it counts as
//! *reviewed* when every one of its captures is closed (`IncidentReview`).

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// Longest outcome or note kept (characters).
pub const MAX_TEXT_CHARS: usize = 4000;
/// Longest reference in the school's record system (characters).
pub const MAX_REFERENCE_CHARS: usize = 200;

#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum CaptureStatus {
    /// Nobody has reviewed it yet.
    #[default]
    New,
    /// Looked at; the outcome is not known yet.
    Triaged,
    /// The rule matched something it should not have.
    FalsePositive,
    /// A true match, no safeguarding concern.
    NoConcern,
    /// A concern handled by the school's internal procedure.
    Concern,
    /// Illegal or child-protection: CEOP, the police, the local
    /// authority designated officer.
    Escalated,
}

impl CaptureStatus {
    pub const ALL: [CaptureStatus; 6] = [
        CaptureStatus::New,
        CaptureStatus::Triaged,
        CaptureStatus::FalsePositive,
        CaptureStatus::NoConcern,
        CaptureStatus::Concern,
        CaptureStatus::Escalated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CaptureStatus::New => "new",
            CaptureStatus::Triaged => "triaged",
            CaptureStatus::FalsePositive => "false_positive",
            CaptureStatus::NoConcern => "no_concern",
            CaptureStatus::Concern => "concern",
            CaptureStatus::Escalated => "escalated",
        }
    }

    pub fn parse(text: &str) -> Option<CaptureStatus> {
        CaptureStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// How a person reads it (words, never a colour alone).
    pub fn label(self) -> &'static str {
        match self {
            CaptureStatus::New => "New",
            CaptureStatus::Triaged => "Triaged",
            CaptureStatus::FalsePositive => "False positive",
            CaptureStatus::NoConcern => "No concern",
            CaptureStatus::Concern => "Concern (internal procedure)",
            CaptureStatus::Escalated => "Escalated (CEOP, police or LADO)",
        }
    }

    /// The four outcomes: the capture's review is finished.
    pub fn is_closed(self) -> bool {
        matches!(
            self,
            CaptureStatus::FalsePositive
                | CaptureStatus::NoConcern
                | CaptureStatus::Concern
                | CaptureStatus::Escalated
        )
    }
}

/// A DSL's grade, 1 (lowest) to 5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grade(u8);

impl Grade {
    pub fn new(n: i64) -> Result<Grade, ReviewError> {
        match n {
            1..=5 => Ok(Grade(n as u8)),
            _ => Err(ReviewError::GradeOutOfRange(n)),
        }
    }
    pub fn get(self) -> i64 {
        i64::from(self.0)
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error("no capture with id {0}")]
    NotFound(i64),
    #[error("capture {id} is {from}: it cannot become {to}")]
    NotAllowed {
        id: i64,
        from: &'static str,
        to: &'static str,
    },
    #[error("an outcome is required to mark a capture {0}")]
    OutcomeRequired(&'static str),
    #[error("an outcome or reference is given only when a capture is closed")]
    OutcomeWithoutClosing,
    #[error("a grade is 1 to 5, not {0}")]
    GradeOutOfRange(i64),
    #[error("{field} is longer than {max} characters")]
    TooLong { field: &'static str, max: usize },
    #[error("nothing to record: give a status, a different grade or a note")]
    NothingToDo,
}

/// The status machine: whether a capture may go from `from` to `to`.
pub fn next_status(
    id: i64,
    from: CaptureStatus,
    to: CaptureStatus,
) -> Result<CaptureStatus, ReviewError> {
    use CaptureStatus as S;
    let allowed = match (from, to) {
        (S::New, S::Triaged) => true,
        // A plain false positive (or a plain escalation) needs no
        // separate triage step.
        (S::New | S::Triaged, to) if to.is_closed() => true,
        // Reopened: new information, or a closing recorded by mistake.
        (from, S::Triaged) if from.is_closed() => true,
        _ => false,
    };
    if allowed {
        Ok(to)
    } else {
        Err(ReviewError::NotAllowed {
            id,
            from: from.as_str(),
            to: to.as_str(),
        })
    }
}

/// What a DSL asks for one capture; every part optional, at least one
/// needed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReviewRequest {
    pub status: Option<CaptureStatus>,
    pub grade: Option<Grade>,
    /// Required to close; kept with the capture.
    pub outcome: String,
    /// The school's record (MyConcern, CPOMS), when closing.
    pub reference: String,
    pub note: String,
}

/// Where a capture's review stands (what `decide` needs of the store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReviewState {
    pub id: i64,
    pub status: CaptureStatus,
    /// The rule's severity, never changed.
    pub pregrade: i64,
    /// The DSL's grade, when regraded.
    pub grade: Option<i64>,
    pub occurred_at: Timestamp,
    pub first_reviewed_at: Option<Timestamp>,
}

/// One line of a capture's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    Status {
        from: CaptureStatus,
        to: CaptureStatus,
        /// The outcome (closing) or empty.
        outcome: String,
        reference: String,
    },
    Grade {
        /// The grade in force before: the DSL's last, or the pregrade.
        from: i64,
        to: i64,
    },
    Note {
        text: String,
    },
}

/// What the store writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub status: CaptureStatus,
    pub grade: Option<i64>,
    /// `Some` when the status changed: the outcome and reference now in
    /// force (empty when reopened or triaged).
    pub outcome: Option<(String, String)>,
    /// Set on the first move out of `new`: when, and how long after the
    /// capture.
    pub first_review: Option<(Timestamp, SignedDuration)>,
    /// In order: status, grade, note.
    pub changes: Vec<Change>,
}

impl Decision {
    /// The audit log's words for it: what changed, never what was
    /// written (an outcome or note may name a pupil, and administrators
    /// read the audit log too).
    pub fn audit_words(&self, capture: i64) -> String {
        let parts: Vec<String> = self
            .changes
            .iter()
            .map(|change| match change {
                Change::Status {
                    from,
                    to,
                    reference,
                    ..
                } => format!(
                    "status {} -> {}{}",
                    from.as_str(),
                    to.as_str(),
                    if reference.is_empty() {
                        ""
                    } else {
                        " (with a record reference)"
                    }
                ),
                Change::Grade { from, to } => format!("grade {from} -> {to}"),
                Change::Note { .. } => "note added".into(),
            })
            .collect();
        format!("capture {capture}: {}", parts.join("; "))
    }
}

fn bounded(text: &str, field: &'static str, max: usize) -> Result<String, ReviewError> {
    let text = text.trim();
    if text.chars().count() > max {
        return Err(ReviewError::TooLong { field, max });
    }
    Ok(text.to_owned())
}

/// The whole review rule: what `request` does to a capture in `state` at
/// `at`.
pub fn decide(
    state: &ReviewState,
    request: &ReviewRequest,
    at: Timestamp,
) -> Result<Decision, ReviewError> {
    let outcome = bounded(&request.outcome, "the outcome", MAX_TEXT_CHARS)?;
    let reference = bounded(&request.reference, "the reference", MAX_REFERENCE_CHARS)?;
    let note = bounded(&request.note, "the note", MAX_TEXT_CHARS)?;
    let gives_outcome = !(outcome.is_empty() && reference.is_empty());
    let mut decision = Decision {
        status: state.status,
        grade: state.grade,
        outcome: None,
        first_review: None,
        changes: Vec::new(),
    };
    match request.status {
        Some(to) => {
            let to = next_status(state.id, state.status, to)?;
            if to.is_closed() && outcome.is_empty() {
                return Err(ReviewError::OutcomeRequired(to.as_str()));
            }
            if gives_outcome && !to.is_closed() {
                return Err(ReviewError::OutcomeWithoutClosing);
            }
            if state.status == CaptureStatus::New && state.first_reviewed_at.is_none() {
                decision.first_review = Some((at, at.duration_since(state.occurred_at)));
            }
            decision.status = to;
            decision.outcome = Some((outcome.clone(), reference.clone()));
            decision.changes.push(Change::Status {
                from: state.status,
                to,
                outcome,
                reference,
            });
        }
        None if gives_outcome => {
            return Err(ReviewError::OutcomeWithoutClosing);
        }
        None => {}
    }
    let in_force = state.grade.unwrap_or(state.pregrade);
    if let Some(grade) = request.grade
        && grade.get() != in_force
    {
        decision.grade = Some(grade.get());
        decision.changes.push(Change::Grade {
            from: in_force,
            to: grade.get(),
        });
    }
    if !note.is_empty() {
        decision.changes.push(Change::Note { text: note });
    }
    if decision.changes.is_empty() {
        return Err(ReviewError::NothingToDo);
    }
    Ok(decision)
}

/// One history row as stored and shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    pub capture_id: i64,
    pub at: Timestamp,
    pub actor: String,
    #[serde(flatten)]
    pub change: Change,
}

/// An incident's review, from its captures' statuses: how many are new,
/// how many still open, and since when the oldest new one has waited.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IncidentReview {
    /// Captures nobody has reviewed.
    pub unreviewed: i64,
    /// Captures not closed (new or triaged).
    pub open: i64,
    /// When the oldest unreviewed capture was taken.
    pub oldest_unreviewed_at: Option<Timestamp>,
}

impl IncidentReview {
    /// Every capture is closed (an incident of no captures, its evidence
    /// purged, is not called reviewed).
    pub fn reviewed(&self, capture_count: i64) -> bool {
        self.open == 0 && capture_count > 0
    }
}

/// The order the DSL works in: incidents with unreviewed captures first,
/// the longest-waiting first; then the rest, most severe and most recent
/// first.
pub fn review_order(
    a: (&IncidentReview, i64, Timestamp),
    b: (&IncidentReview, i64, Timestamp),
) -> std::cmp::Ordering {
    use std::cmp::Reverse;
    let key = |(review, severity, last): (&IncidentReview, i64, Timestamp)| {
        (
            review.oldest_unreviewed_at.is_none(),
            review.oldest_unreviewed_at,
            Reverse(severity),
            Reverse(last),
        )
    };
    key(a).cmp(&key(b))
}

/// How long something has waited, in the largest two units a person
/// needs ("3 d 4 h", "2 h 5 min", "under a minute").
pub fn age_words(age: SignedDuration) -> String {
    let minutes = age.as_secs().max(0) / 60;
    let (days, hours, mins) = (minutes / (24 * 60), minutes / 60 % 24, minutes % 60);
    match (days, hours, mins) {
        (0, 0, 0) => "under a minute".into(),
        (0, 0, m) => format!("{m} min"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CaptureStatus as S;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap() + SignedDuration::from_secs(secs)
    }

    #[test]
    fn the_status_machine() {
        // (from, to, allowed)
        let table = [
            ("new to triaged", S::New, S::Triaged, true),
            (
                "new straight to false positive",
                S::New,
                S::FalsePositive,
                true,
            ),
            ("new straight to escalated", S::New, S::Escalated, true),
            ("new stays new", S::New, S::New, false),
            ("triaged to no concern", S::Triaged, S::NoConcern, true),
            ("triaged to concern", S::Triaged, S::Concern, true),
            ("triaged to escalated", S::Triaged, S::Escalated, true),
            ("triaged again", S::Triaged, S::Triaged, false),
            ("never back to new", S::Triaged, S::New, false),
            ("closed reopens to triaged", S::Concern, S::Triaged, true),
            ("escalated reopens", S::Escalated, S::Triaged, true),
            ("closed never to new", S::NoConcern, S::New, false),
            (
                "closed to another outcome only through triage",
                S::Concern,
                S::Escalated,
                false,
            ),
            (
                "false positive to concern",
                S::FalsePositive,
                S::Concern,
                false,
            ),
        ];
        for (name, from, to, allowed) in table {
            let got = next_status(7, from, to);
            assert_eq!(got.is_ok(), allowed, "{name}: {got:?}");
            if !allowed {
                assert_eq!(
                    got,
                    Err(ReviewError::NotAllowed {
                        id: 7,
                        from: from.as_str(),
                        to: to.as_str()
                    }),
                    "{name}"
                );
            }
        }
        // Every pair is decided (nothing panics), and only the four
        // outcomes are closed.
        for from in S::ALL {
            for to in S::ALL {
                let _ = next_status(1, from, to);
            }
        }
        let closed: Vec<_> = S::ALL.into_iter().filter(|s| s.is_closed()).collect();
        assert_eq!(
            closed,
            [S::FalsePositive, S::NoConcern, S::Concern, S::Escalated]
        );
        for s in S::ALL {
            assert_eq!(S::parse(s.as_str()), Some(s));
        }
    }

    fn state(status: CaptureStatus) -> ReviewState {
        ReviewState {
            id: 3,
            status,
            pregrade: 4,
            grade: None,
            occurred_at: t(0),
            first_reviewed_at: None,
        }
    }

    fn request(status: Option<CaptureStatus>) -> ReviewRequest {
        ReviewRequest {
            status,
            ..ReviewRequest::default()
        }
    }

    #[test]
    fn what_a_review_records() {
        let closing = ReviewRequest {
            status: Some(S::Escalated),
            outcome: "  referred to CEOP  ".into(),
            reference: "CPOMS-123".into(),
            grade: Some(Grade::new(5).unwrap()),
            note: "spoke to the pupil".into(),
        };
        // (name, state, request, Ok(number of history rows) or Err)
        let table: Vec<(&str, ReviewState, ReviewRequest, Result<usize, ReviewError>)> = vec![
            ("triage", state(S::New), request(Some(S::Triaged)), Ok(1)),
            (
                "close with everything",
                state(S::Triaged),
                closing.clone(),
                Ok(3),
            ),
            (
                "close without an outcome",
                state(S::Triaged),
                request(Some(S::NoConcern)),
                Err(ReviewError::OutcomeRequired("no_concern")),
            ),
            (
                "a blank outcome is none",
                state(S::Triaged),
                ReviewRequest {
                    outcome: "   ".into(),
                    ..request(Some(S::Concern))
                },
                Err(ReviewError::OutcomeRequired("concern")),
            ),
            (
                "an outcome without closing",
                state(S::New),
                ReviewRequest {
                    outcome: "x".into(),
                    ..request(Some(S::Triaged))
                },
                Err(ReviewError::OutcomeWithoutClosing),
            ),
            (
                "a reference alone",
                state(S::New),
                ReviewRequest {
                    reference: "MC-1".into(),
                    ..request(None)
                },
                Err(ReviewError::OutcomeWithoutClosing),
            ),
            (
                "a note alone, status kept",
                state(S::New),
                ReviewRequest {
                    note: "looked, will talk to form tutor".into(),
                    ..request(None)
                },
                Ok(1),
            ),
            (
                "the pregrade again is no change",
                state(S::New),
                ReviewRequest {
                    grade: Some(Grade::new(4).unwrap()),
                    ..request(None)
                },
                Err(ReviewError::NothingToDo),
            ),
            (
                "a regrade alone",
                state(S::Triaged),
                ReviewRequest {
                    grade: Some(Grade::new(2).unwrap()),
                    ..request(None)
                },
                Ok(1),
            ),
            (
                "nothing",
                state(S::New),
                request(None),
                Err(ReviewError::NothingToDo),
            ),
            (
                "a refused transition records nothing else",
                state(S::Concern),
                ReviewRequest {
                    note: "n".into(),
                    ..request(Some(S::New))
                },
                Err(ReviewError::NotAllowed {
                    id: 3,
                    from: "concern",
                    to: "new",
                }),
            ),
            (
                "a note too long",
                state(S::New),
                ReviewRequest {
                    note: "x".repeat(MAX_TEXT_CHARS + 1),
                    ..request(None)
                },
                Err(ReviewError::TooLong {
                    field: "the note",
                    max: MAX_TEXT_CHARS,
                }),
            ),
        ];
        for (name, state, request, want) in table {
            let got = decide(&state, &request, t(60)).map(|d| d.changes.len());
            assert_eq!(got, want, "{name}");
        }

        let d = decide(&state(S::Triaged), &closing, t(60)).unwrap();
        assert_eq!(d.status, S::Escalated);
        assert_eq!(d.grade, Some(5));
        assert_eq!(
            d.outcome,
            Some(("referred to CEOP".into(), "CPOMS-123".into()))
        );
        assert_eq!(
            d.changes[1],
            Change::Grade { from: 4, to: 5 },
            "from the pregrade"
        );
        assert!(matches!(&d.changes[2], Change::Note { text } if text == "spoke to the pupil"));
        assert_eq!(d.first_review, None, "already out of new");
        assert_eq!(
            d.audit_words(3),
            "capture 3: status triaged -> escalated (with a record reference); grade 4 -> 5; note added",
            "no outcome or note text in the audit log"
        );
    }

    #[test]
    fn the_first_move_out_of_new_is_timed_once() {
        let d = decide(&state(S::New), &request(Some(S::Triaged)), t(5400)).unwrap();
        assert_eq!(
            d.first_review,
            Some((t(5400), SignedDuration::from_mins(90)))
        );
        // A note or a regrade is not a review step.
        let note = ReviewRequest {
            note: "n".into(),
            ..request(None)
        };
        assert_eq!(
            decide(&state(S::New), &note, t(60)).unwrap().first_review,
            None
        );
        // Reopened and closed again: the first review stands.
        let reopened = ReviewState {
            first_reviewed_at: Some(t(100)),
            ..state(S::Triaged)
        };
        let again = ReviewRequest {
            outcome: "o".into(),
            ..request(Some(S::NoConcern))
        };
        assert_eq!(
            decide(&reopened, &again, t(900)).unwrap().first_review,
            None
        );
        // Reopening clears the outcome in force.
        let d = decide(&state(S::Concern), &request(Some(S::Triaged)), t(60)).unwrap();
        assert_eq!(d.outcome, Some((String::new(), String::new())));
    }

    #[test]
    fn unreviewed_incidents_come_first_the_longest_waiting_first() {
        let waiting = |at| IncidentReview {
            unreviewed: 1,
            open: 1,
            oldest_unreviewed_at: Some(at),
        };
        let done = IncidentReview::default();
        let mut list = [
            ("reviewed, severe", &done, 5, t(50)),
            ("new since 20", &waiting(t(20)), 1, t(30)),
            ("reviewed, mild, recent", &done, 2, t(90)),
            ("new since 10", &waiting(t(10)), 2, t(10)),
            ("reviewed, mild, older", &done, 2, t(40)),
        ];
        list.sort_by(|a, b| review_order((a.1, a.2, a.3), (b.1, b.2, b.3)));
        let names: Vec<_> = list.iter().map(|r| r.0).collect();
        assert_eq!(
            names,
            [
                "new since 10",
                "new since 20",
                "reviewed, severe",
                "reviewed, mild, recent",
                "reviewed, mild, older"
            ]
        );
        assert!(done.reviewed(2));
        assert!(!done.reviewed(0), "purged evidence is not a review");
        assert!(!waiting(t(0)).reviewed(1));
    }

    #[test]
    fn ages_in_words() {
        let table = [
            (0, "under a minute"),
            (59, "under a minute"),
            (60, "1 min"),
            (3600 + 300, "1 h 5 min"),
            (86_400 * 3 + 3600 * 4 + 60, "3 d 4 h"),
            (-5, "under a minute"),
        ];
        for (secs, want) in table {
            assert_eq!(age_words(SignedDuration::from_secs(secs)), want, "{secs}");
        }
    }
}
