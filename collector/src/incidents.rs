//! Incidents: captures of one category on one device by one account, close
//! together in time, gathered for the DSL with the highest severity seen.
//! "Record details in incident log … Secure and keep all evidence."
//!
//! A capture joins the open incident for (device, account, category) when
//! that incident's last capture is within the incident window
//! (`[captures] incident_window_hours`, default 24); otherwise it
//! opens a new one. Opening an incident of severity 4–5, or raising one to
//! 4–5, queues a `capture_severe` notification (which carries no matched
//! text and no names).

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::model::DeviceId;

/// How close together captures must be to share an incident, unless
/// configured.
pub const DEFAULT_INCIDENT_WINDOW: SignedDuration = SignedDuration::from_hours(24);

/// Purges captures older than the retention period whose incident is
/// closed: their rows, the content of their capture events and (when no
/// other capture uses them) their images. Returns how many captures went.
pub async fn purge_expired(
    store: &dyn crate::store::Store,
    evidence: &crate::evidence::EvidenceStore,
    retention: SignedDuration,
    now: Timestamp,
) -> anyhow::Result<u64> {
    let before = now - retention;
    let expired = store.expired_captures(before).await?;
    if expired.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = expired.iter().map(|(id, _)| *id).collect();
    let purged = store.purge_captures(&ids, before).await?;
    // Images after the rows, so a crash leaves at worst an unreferenced
    // encrypted file, never a capture without its image.
    for (_, sha) in expired.iter().filter(|(_, sha)| !sha.is_empty()) {
        if !store.image_in_use(sha).await? {
            evidence.remove(sha)?;
        }
    }
    Ok(purged)
}

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
    /// snapshot or file
    pub kind: String,
    pub file_path: String,
    pub file_sha256: String,
    pub policy_version: i64,
}

/// What an event adds to an incident: a capture as it is, a file alert as
/// evidence without a snapshot (the file's path and SHA-256; its name
/// stands as the matched text). None for other events.
pub fn evidence_of(
    body: &crate::model::EventBody,
) -> Option<std::borrow::Cow<'_, crate::model::CaptureRecord>> {
    use crate::model::{CaptureRecord, EventBody};
    use std::borrow::Cow;
    let EventBody::FileAlert {
        path,
        rule_id,
        category,
        severity,
        account,
        sha256,
    } = body
    else {
        return match body {
            EventBody::Capture(capture) => Some(Cow::Borrowed(capture)),
            _ => None,
        };
    };
    let name = std::path::Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.clone());
    Some(Cow::Owned(CaptureRecord {
        rule_id: rule_id.clone(),
        category: category.clone(),
        severity: (*severity).clamp(1, 5) as u8,
        matched_text: name,
        window_title: String::new(),
        process_name: String::new(),
        account: account.clone(),
        image_sha256: String::new(),
        image_status: "no_image".into(),
        no_image_reason: "file alert: the evidence is the file's path and SHA-256".into(),
        repeat_count: 0,
        kind: "file".into(),
        file_path: path.clone(),
        file_sha256: sha256.clone(),
        policy_version: 0,
        image: Vec::new(),
    }))
}
