//! The schools' rules, as pure functions of stored facts and an `as_of`
//! instant (`activity`), and the glue that evaluates them for stored
//! devices and records the verdicts (`evaluate`); `silence` runs the
//! "agent silent since" rule (its decisions in `crate::tamper`).

pub mod activity;
pub mod evaluate;
pub mod mfa;
pub mod silence;
