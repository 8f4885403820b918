//! Incidents: captures of one category on one device by one account, close
//! together in time, gathered for the DSL with the highest severity seen.
//! "Record details in incident log … Secure and keep all evidence."
//!
//! A capture joins the open incident for (device, account, category) when
//! that incident's last capture is within `INCIDENT_WINDOW`; otherwise it
//! opens a new one. Opening an incident of severity 4–5, or raising one to
//! 4–5, queues a `capture_severe` notification (which carries no matched
//! text and no names).

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::model::DeviceId;

/// How close together captures must be to share an incident.
pub const INCIDENT_WINDOW: SignedDuration = SignedDuration::from_hours(24);

#[derive(Clone, Debug, Serialize)]
pub struct IncidentRecord {
    pub id: i64,
    pub site: String,
    pub device_id: DeviceId,
    pub hostname: String,
    pub account: String,
    pub category: String,
    pub severity: i64,
    pub status: String,
    pub opened_at: Timestamp,
    pub last_at: Timestamp,
    pub capture_count: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CaptureRow {
    pub id: i64,
    pub seq: i64,
    pub occurred_at: Timestamp,
    pub rule_id: String,
    pub category: String,
    pub severity: i64,
    pub matched_text: String,
    pub window_title: String,
    pub process_name: String,
    pub account: String,
    pub image_sha256: String,
    pub image_status: String,
    pub no_image_reason: String,
    pub repeat_count: i64,
}
