//! The "agent silent since" rule's glue: reads the devices that stopped
//! reporting and what their users did since from the store, decides with
//! `tamper::on_silence` (pure, with `as_of`) and opens the flags. The rules
//! loop runs it hourly.
//!
//! Work is bounded: only devices last seen between `silent_after` and
//! `silent_after` + 28 days before `as_of` are read (a device silent longer
//! has been flagged already or is the device-activity rule's), each with
//! one indexed query, and a device flagged since it went silent is
//! skipped before that query.

use jiff::Timestamp;

use crate::config::TamperSettings;
use crate::store::{Result, TamperStore};
use crate::tamper::{SILENCE_LOOKBACK, Silence, on_silence, silence_window};

/// Opens a tamper flag for each device whose agent went silent while its
/// users signed in elsewhere; the ids of the flags opened.
pub async fn check_silent_devices(
    store: &dyn TamperStore,
    settings: &TamperSettings,
    as_of: Timestamp,
) -> Result<Vec<i64>> {
    let silent_after = settings.silent_after();
    let seen_before = as_of.saturating_sub(silent_after).unwrap_or(as_of);
    let seen_from = seen_before
        .saturating_sub(SILENCE_LOOKBACK)
        .unwrap_or(seen_before);
    let mut opened = Vec::new();
    for device in store.silent_devices(seen_from, seen_before).await? {
        if device.flagged_since {
            continue;
        }
        let window = silence_window(device.last_seen_at, silent_after);
        let silence = Silence {
            last_seen_at: device.last_seen_at,
            flagged_since: device.flagged_since,
            signins_elsewhere: store.signins_elsewhere(&device, window).await?,
        };
        let Some(summary) = on_silence(&silence, silent_after, as_of) else {
            continue;
        };
        if let Some(id) = store
            .raise_tamper(device.site, &device.device, &summary, as_of)
            .await?
        {
            opened.push(id);
        }
    }
    Ok(opened)
}
