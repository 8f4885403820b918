//! Incidents: captures of one category on one device by one account, close
//! together in time, gathered for the DSL with the highest severity seen.
//! "Record details in incident log … Secure and keep all evidence."
//!
//! A capture joins the open incident for (device, account, category) when
//! that incident's last capture is within the incident window
//! (`[captures] incident_window_hours`, default 24); otherwise it
//! opens a new one. Opening an incident of severity 4–5, or raising one to
//! 4–5, queues a `capture_severe` notification (which carries no matched
//! text and no names); `alerts` adds instant categories and thresholds,
//! decided in the same transaction.

use jiff::{SignedDuration, Timestamp};

pub use crate::model::{CaptureRow, IncidentRecord};

/// How close together captures must be to share an incident, unless
/// configured.
pub const DEFAULT_INCIDENT_WINDOW: SignedDuration = SignedDuration::from_hours(24);

/// What a retention purge did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Purge {
    pub captures: u64,
    pub images_removed: u64,
    /// (hash, why) of images not removed: a hash that names no evidence
    /// file (stored before only verified hashes were), or a file that
    /// could not be deleted. The rest are removed all the same.
    pub images_skipped: Vec<(String, String)>,
}

/// Purges captures older than their site's retention period whose
/// incident is closed: their rows, the content of their capture events and
/// (when no other capture uses them) their images. `retention` is each
/// site's period (`site_settings::retention_by_site`).
pub async fn purge_expired(
    store: &dyn crate::store::Store,
    evidence: &crate::evidence::EvidenceStore,
    retention: &[(crate::model::SiteId, SignedDuration)],
    now: Timestamp,
) -> anyhow::Result<Purge> {
    let mut captures = 0;
    let mut expired = Vec::new();
    for (site, period) in retention {
        let before = now - *period;
        // Threshold alert rows name accounts: kept as long as the site's
        // evidence, and as long as the longest threshold may need them.
        let alerts_before = before.min(
            now - SignedDuration::from_hours(24 * i64::from(crate::alerts::MAX_THRESHOLD_DAYS)),
        );
        store.purge_threshold_alerts(*site, alerts_before).await?;
        let site_expired = store.expired_captures(*site, before).await?;
        if site_expired.is_empty() {
            continue;
        }
        let ids: Vec<i64> = site_expired.iter().map(|(id, _)| *id).collect();
        captures += store.purge_captures(&ids, before).await?;
        expired.extend(site_expired);
    }
    if expired.is_empty() {
        return Ok(Purge::default());
    }
    // Images after the rows, so a crash leaves at worst an unreferenced
    // encrypted file, never a capture without its image.
    let mut unused: Vec<&str> = Vec::new();
    for (_, sha) in expired.iter().filter(|(_, sha)| !sha.is_empty()) {
        if !unused.contains(&sha.as_str()) && !store.image_in_use(sha).await? {
            unused.push(sha);
        }
    }
    let removal = evidence.remove_images(unused);
    for (sha, why) in &removal.skipped {
        tracing::warn!(sha256 = ?sha, reason = %why, "evidence image not removed");
    }
    Ok(Purge {
        captures,
        images_removed: removal.removed,
        images_skipped: removal.skipped,
    })
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
        context: Vec::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{EvidenceStore, sha256_hex};
    use crate::model::{CaptureRecord, Event, EventBody, Seq};
    use crate::store::IngestStore;
    use crate::store::{DeviceFilter, IncidentStore};

    fn capture(image_sha256: &str, status: &str) -> CaptureRecord {
        CaptureRecord {
            rule_id: "r".into(),
            category: "bullying".into(),
            severity: 2,
            matched_text: String::new(),
            window_title: String::new(),
            process_name: String::new(),
            account: "pupil1".into(),
            image_sha256: image_sha256.into(),
            image_status: status.into(),
            no_image_reason: String::new(),
            repeat_count: 0,
            kind: "snapshot".into(),
            file_path: String::new(),
            file_sha256: String::new(),
            policy_version: 0,
            image: Vec::new(),
            context: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_stored_hash_that_names_no_file_does_not_stop_the_purge() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pki")).unwrap();
        let evidence = EvidenceStore::open(dir.path()).unwrap();
        let long_ago: Timestamp = "2026-01-10T09:00:00Z".parse().unwrap();
        let (store, site, device) =
            crate::store::sqlite::testing::store_with_device(dir.path(), long_ago).await;
        let image = b"a verified image".to_vec();
        let sha = sha256_hex(&image);
        evidence.put(&image, &sha).unwrap();
        // The first capture holds what an agent declared, as rows stored
        // before only verified hashes were kept can.
        let events: Vec<Event> = [
            capture("zz-not-a-hash", "hash_mismatch"),
            capture(&sha, "verified"),
        ]
        .into_iter()
        .enumerate()
        .map(|(n, c)| Event {
            seq: Seq(n as u64 + 1),
            event_id: format!("e{n}"),
            occurred_at: long_ago,
            body: EventBody::Capture(c),
        })
        .collect();
        store
            .record_batch(&device, &events, long_ago)
            .await
            .unwrap();
        for incident in store
            .list_incidents(&DeviceFilter::default(), None)
            .await
            .unwrap()
        {
            store
                .close_incident(incident.id, "dealt with", long_ago)
                .await
                .unwrap();
        }

        let now: Timestamp = "2026-11-30T09:00:00Z".parse().unwrap();
        let retention = [(site.id, SignedDuration::from_hours(24 * 90))];
        let purge = purge_expired(&store, &evidence, &retention, now)
            .await
            .unwrap();
        assert_eq!(purge.captures, 2);
        assert_eq!(purge.images_removed, 1, "{purge:?}");
        assert_eq!(purge.images_skipped.len(), 1, "{purge:?}");
        assert_eq!(purge.images_skipped[0].0, "zz-not-a-hash");
        assert!(
            evidence.get(&sha).is_err(),
            "the verified image went with its capture, not orphaned"
        );
    }
}
