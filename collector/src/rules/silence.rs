//! The "agent silent since" rule's glue: reads the devices that stopped
//! reporting and what their users did since from the store, decides with
//! `tamper::on_silence` (pure, with `as_of`) and opens the flags. The rules
//! loop runs it hourly.
//!
//! Work is bounded: one statement reads the devices last seen between
//! `silent_after` and `silent_after` + 28 days before `as_of` (a device
//! silent longer has been flagged already or is the device-activity
//! rule's) with their flags and sign-ins through indexes; only a device
//! to flag costs a write.

use jiff::Timestamp;

use crate::config::TamperSettings;
use crate::store::{Result, TamperStore};
use crate::tamper::{SILENCE_LOOKBACK, Silence, on_silence};

/// Opens a tamper flag for each device whose agent went silent while its
/// identity provider saw sign-ins from it; the ids of the flags opened.
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
    let devices = store
        .silent_devices(seen_from, seen_before, silent_after)
        .await?;
    for device in devices {
        let silence = Silence {
            last_seen_at: device.last_seen_at,
            flagged_since: device.flagged_since,
            signins_from_device: device.signins_from_device,
        };
        let Some(summary) = on_silence(&silence, silent_after, as_of) else {
            continue;
        };
        // One device's failure does not stop the others'.
        match store
            .raise_tamper(device.site, &device.device, &summary, as_of)
            .await
        {
            Ok(Some(id)) => opened.push(id),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(device_id = %device.device, error = %e, "cannot open a tamper flag for a silent agent")
            }
        }
    }
    Ok(opened)
}
