//! SQLite: agent signals (kept by `record_batch` in the batch's
//! transaction) and `tamper` flags, opened through `activity::open_flag`
//! (its audit row and notification commit with it). One active tamper flag
//! per device (account ''): a later sign is stored and moves the active
//! flag's `updated_at`, leaving its summary as the first sign wrote it.

use async_trait::async_trait;
use jiff::Timestamp;
use sqlx::{Row, Sqlite, SqliteConnection};

use super::{SqliteStore, activity, instant, millis};
use crate::flags::FlagKind;
use crate::model::{DeviceId, SignalRecord, SiteId, StoredSignal};
use crate::store::{Result, SilentDevice, StoreError};

/// Stores a signal; true when it was new (a resent event is not).
pub(super) async fn record_signal(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    device: &DeviceId,
    seq: u64,
    occurred_at: Timestamp,
    signal: &SignalRecord,
) -> Result<bool> {
    let detail = serde_json::to_string(signal).expect("signals serialise");
    let stored = sqlx::query(
        "INSERT INTO agent_signals (device_id, seq, kind, occurred_at, detail) VALUES (?, ?, ?, ?, ?) \
         ON CONFLICT (device_id, seq) DO NOTHING",
    )
    .bind(device.as_str())
    .bind(seq as i64)
    .bind(signal.signal.as_str())
    .bind(millis(occurred_at))
    .bind(detail)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(stored > 0)
}

/// Opens the device's tamper flag, or moves the active one's `updated_at`.
pub(super) async fn raise(
    tx: &mut SqliteConnection,
    site: SiteId,
    device: &DeviceId,
    summary: &str,
    at: Timestamp,
) -> Result<Option<i64>> {
    let opened = activity::open_flag(tx, site, device, FlagKind::Tamper, "", summary, at).await?;
    match opened {
        Some(id) => tracing::info!(device_id = %device, flag_id = id, "tamper flag opened"),
        None => {
            sqlx::query(
                "UPDATE flags SET updated_at = max(updated_at, ?) WHERE device_id = ? AND kind = 'tamper' \
                 AND account = '' AND state IN ('open', 'disable_approved', 'disabled')",
            )
            .bind(millis(at))
            .bind(device.as_str())
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(opened)
}

#[async_trait]
impl crate::store::TamperStore for SqliteStore {
    async fn agent_signals(&self, device: &DeviceId, limit: usize) -> Result<Vec<StoredSignal>> {
        let rows = sqlx::query(
            "SELECT seq, occurred_at, detail FROM agent_signals WHERE device_id = ? \
             ORDER BY occurred_at DESC, seq DESC LIMIT ?",
        )
        .bind(device.as_str())
        .bind(limit as i64)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.try_get("seq")?;
                let detail: String = row.try_get("detail")?;
                let record = serde_json::from_str(&detail).map_err(|e| {
                    StoreError::Corrupt(format!("agent signal {device}:{seq}: {e}"))
                })?;
                Ok(StoredSignal {
                    seq: seq as u64,
                    occurred_at: instant(row.try_get("occurred_at")?)?,
                    record,
                })
            })
            .collect()
    }

    async fn silent_devices(
        &self,
        seen_from: Timestamp,
        seen_before: Timestamp,
        silent_after: jiff::SignedDuration,
    ) -> Result<Vec<SilentDevice>> {
        // `devices_silent` finds the devices; `flags_device_kind` whether
        // one was flagged since; `mfa_completions_device` the sign-ins
        // mapped to each.
        let rows = sqlx::query(
            "SELECT d.id, d.site_id, d.last_seen_at, EXISTS (SELECT 1 FROM flags f \
             WHERE f.device_id = d.id AND f.kind = 'tamper' AND (f.opened_at > d.last_seen_at \
             OR f.state IN ('open', 'disable_approved', 'disabled'))) AS flagged, \
             (SELECT count(*) FROM mfa_completions m WHERE m.device_id = d.id \
              AND m.completed_at > d.last_seen_at + ?) AS signins \
             FROM devices d WHERE d.status = 'active' AND d.last_seen_at >= ? AND d.last_seen_at < ? \
             ORDER BY d.last_seen_at",
        )
        .bind(silent_after.as_millis() as i64)
        .bind(millis(seen_from))
        .bind(millis(seen_before))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SilentDevice {
                    device: DeviceId::from_string(row.try_get::<String, _>("id")?),
                    site: SiteId(row.try_get("site_id")?),
                    last_seen_at: instant(row.try_get("last_seen_at")?)?,
                    flagged_since: row.try_get("flagged")?,
                    signins_from_device: row.try_get::<i64, _>("signins")? as u64,
                })
            })
            .collect()
    }

    async fn raise_tamper(
        &self,
        site: SiteId,
        device: &DeviceId,
        summary: &str,
        at: Timestamp,
    ) -> Result<Option<i64>> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let opened = raise(&mut tx, site, device, summary, at).await?;
        tx.commit().await?;
        Ok(opened)
    }
}

#[cfg(test)]
mod tests {
    use jiff::{SignedDuration, Timestamp};

    use crate::config::TamperSettings;
    use crate::flags::{FlagAction, FlagError, FlagKind, FlagState};
    use crate::model::{
        DeviceFacts, DeviceId, Event, EventBody, GapRecord, Seq, SessionKind, SessionRecord,
        SignalKind, SignalRecord,
    };
    use crate::store::sqlite::testing::store_with_device;
    use crate::store::{
        ActivityStore, DeviceFilter, DeviceStore, Enrollment, IngestStore, MfaStore,
        NewMfaCompletion, NotificationStore, TamperStore,
    };

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    const HOUR: i64 = 3600;
    const DAY: i64 = 24 * HOUR;

    fn event(seq: u64, at: Timestamp, body: EventBody) -> Event {
        Event {
            seq: Seq(seq),
            event_id: format!("e{seq}"),
            occurred_at: at,
            body,
        }
    }

    fn signal(seq: u64, at: Timestamp, record: SignalRecord) -> Event {
        event(seq, at, EventBody::AgentSignal(record))
    }

    fn session(id: &str, account: &str, start: Timestamp) -> EventBody {
        EventBody::Session(SessionRecord {
            session_id: id.into(),
            account: account.into(),
            uid: 1001,
            kind: SessionKind::Graphical,
            started_at: start,
            ended_at: Some(start + SignedDuration::from_hours(1)),
            active_secs: 3600,
        })
    }

    async fn tamper_flags(store: &super::SqliteStore) -> Vec<crate::flags::FlagRecord> {
        store
            .list_flags(&DeviceFilter::default(), None)
            .await
            .unwrap()
            .into_iter()
            .filter(|f| f.kind == FlagKind::Tamper)
            .collect()
    }

    #[tokio::test]
    async fn signals_are_stored_once_and_signs_of_interference_open_one_tamper_flag() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _site, device) = store_with_device(dir.path(), t(0)).await;
        let killed = SignalRecord {
            same_boot: true,
            last_alive_at: Some(t(50)),
            account: "pupil.name".into(),
            ..SignalRecord::new(SignalKind::StoppedUncleanly)
        };
        let batch = [
            signal(1, t(100), SignalRecord::new(SignalKind::Started)),
            signal(2, t(101), killed),
        ];
        let outcome = store.record_batch(&device, &batch, t(110)).await.unwrap();
        assert_eq!(outcome.stored, 2);
        let flags = tamper_flags(&store).await;
        assert_eq!(flags.len(), 1);
        let flag = &flags[0];
        assert_eq!(flag.state, FlagState::Open);
        assert_eq!(flag.account, "");
        assert!(flag.summary.contains("stopped without shutting down"));
        assert!(!flag.summary.contains("pupil"));
        // Its notification is queued with it, naming no account.
        let events = store.new_notification_events(10).await.unwrap();
        let tamper: Vec<_> = events.iter().filter(|e| e.kind == "tamper").collect();
        assert_eq!(tamper.len(), 1);
        assert_eq!(tamper[0].account, "");
        assert_eq!(tamper[0].flag_id, Some(flag.id));

        // Resent: nothing new. A further sign while the flag is active is
        // stored and only moves the flag's updated_at.
        let resent = store.record_batch(&device, &batch, t(120)).await.unwrap();
        assert_eq!(resent.duplicates, 2);
        let jump = SignalRecord {
            clock_jump_secs: 86_400,
            ..SignalRecord::new(SignalKind::ClockJumped)
        };
        let gap = GapRecord {
            gap: "no_session_helper".into(),
            session_id: "4".into(),
            account: "pupil.name".into(),
            uid: 1001,
            started_at: t(150),
            ended_at: None,
        };
        store
            .record_batch(
                &device,
                &[
                    signal(3, t(200), jump),
                    event(4, t(210), EventBody::MonitoringGap(gap)),
                ],
                t(220),
            )
            .await
            .unwrap();
        let flags = tamper_flags(&store).await;
        assert_eq!(flags.len(), 1);
        assert_eq!(flags[0].updated_at, t(220));
        assert_eq!(flags[0].summary, flag.summary);

        let signals = store.agent_signals(&device, 20).await.unwrap();
        let kinds: Vec<_> = signals.iter().map(|s| s.record.signal).collect();
        assert_eq!(
            kinds,
            [
                SignalKind::ClockJumped,
                SignalKind::StoppedUncleanly,
                SignalKind::Started
            ]
        );
        assert_eq!(signals[0].record.clock_jump_secs, 86_400);
        assert_eq!(store.agent_signals(&device, 1).await.unwrap().len(), 1);

        // Only a person closes it, with a reason.
        let approve = store
            .transition_flag(flag.id, FlagAction::Approve, "cli:t", "x", t(300))
            .await
            .unwrap();
        assert!(matches!(approve, Err(FlagError::NotAllowed { .. })));
        let no_reason = store
            .transition_flag(flag.id, FlagAction::Dismiss, "cli:t", " ", t(300))
            .await
            .unwrap();
        assert_eq!(no_reason.unwrap_err(), FlagError::ReasonRequired("dismiss"));
        let dismissed = store
            .transition_flag(
                flag.id,
                FlagAction::Dismiss,
                "cli:t",
                "agent reinstalled",
                t(300),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(dismissed.state, FlagState::Dismissed);

        // A new sign after the dismissal opens a new flag; ordinary life
        // (stopped, upgraded) and a closed gap do not.
        let helper_gone = SignalRecord {
            session_id: "5".into(),
            ..SignalRecord::new(SignalKind::HelperGone)
        };
        store
            .record_batch(
                &device,
                &[
                    signal(5, t(400), SignalRecord::new(SignalKind::Stopped)),
                    signal(6, t(401), SignalRecord::new(SignalKind::Upgraded)),
                ],
                t(410),
            )
            .await
            .unwrap();
        assert_eq!(tamper_flags(&store).await.len(), 1);
        store
            .record_batch(&device, &[signal(7, t(500), helper_gone)], t(510))
            .await
            .unwrap();
        let flags = tamper_flags(&store).await;
        assert_eq!(flags.len(), 2);
        assert!(flags.iter().any(|f| {
            f.state == FlagState::Open
                && f.summary
                    .contains("session helper went away while session 5")
        }));
    }

    #[tokio::test]
    async fn a_silent_device_the_identity_provider_sees_in_use_is_flagged_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, site, laptop) = store_with_device(dir.path(), t(0)).await;
        let other = DeviceId::from_string("dev-2");
        store
            .save_enrollment(Enrollment::active(
                other.clone(),
                site.id,
                DeviceFacts {
                    machine_id: "m-2".into(),
                    ..DeviceFacts::default()
                },
                "01".into(),
                t(0),
            ))
            .await
            .unwrap();
        // Alice used the laptop; it last reported at t(HOUR).
        store
            .record_batch(
                &laptop,
                &[event(1, t(0), session("s1", "Alice", t(0)))],
                t(HOUR),
            )
            .await
            .unwrap();
        let settings = TamperSettings::default();
        let check = |as_of| {
            let store = store.clone();
            let settings = settings.clone();
            async move {
                crate::rules::silence::check_silent_devices(&store, &settings, as_of)
                    .await
                    .unwrap()
            }
        };
        // Silent, and Alice signs in on another device and from a phone
        // (an import mapped to no device): the laptop may simply be off.
        assert!(check(t(3 * DAY)).await.is_empty());
        store
            .record_batch(
                &other,
                &[event(1, t(2 * DAY), session("s9", "Alice", t(2 * DAY)))],
                t(2 * DAY),
            )
            .await
            .unwrap();
        let completion = |device: Option<DeviceId>, id: &str, at: Timestamp| NewMfaCompletion {
            site: site.id,
            device,
            account: "alice".into(),
            completed_at: at,
            source: "entra".into(),
            method: "app".into(),
            external_id: id.into(),
            device_hint: String::new(),
        };
        store
            .record_mfa_completions(&[completion(None, "x0", t(2 * DAY))], t(2 * DAY))
            .await
            .unwrap();
        assert!(check(t(3 * DAY)).await.is_empty());
        // The identity provider saw sign-ins from the laptop itself after
        // the threshold: it is in use while its agent is silent.
        store
            .record_mfa_completions(
                &[
                    completion(Some(laptop.clone()), "x1", t(2 * DAY + HOUR)),
                    completion(Some(laptop.clone()), "x2", t(2 * DAY + 2 * HOUR)),
                ],
                t(2 * DAY + 2 * HOUR),
            )
            .await
            .unwrap();
        // Not before the threshold has passed.
        assert!(check(t(HOUR + 23 * HOUR)).await.is_empty());
        // Nor while an earlier sign's flag is still open; once a person
        // dismissed that one, the silence is flagged.
        let earlier = store
            .raise_tamper(site.id, &laptop, "clock moved", t(HOUR / 2))
            .await
            .unwrap()
            .unwrap();
        assert!(check(t(3 * DAY)).await.is_empty());
        store
            .transition_flag(
                earlier,
                FlagAction::Dismiss,
                "cli:t",
                "daylight saving",
                t(3 * DAY),
            )
            .await
            .unwrap()
            .unwrap();
        let opened = check(t(3 * DAY)).await;
        assert_eq!(opened.len(), 1);
        let flag = store.flag(opened[0]).await.unwrap().unwrap();
        assert_eq!(flag.device_id, laptop);
        assert_eq!(
            flag.summary,
            "agent silent since 2027-01-15T09:00:00Z; the identity provider saw 2 sign-ins from this device since"
        );
        assert!(!flag.summary.to_lowercase().contains("alice"));
        // Not again while it is open, nor once a person dismissed it.
        assert!(check(t(3 * DAY + HOUR)).await.is_empty());
        store
            .transition_flag(flag.id, FlagAction::Dismiss, "cli:t", "on loan", t(4 * DAY))
            .await
            .unwrap()
            .unwrap();
        assert!(check(t(5 * DAY)).await.is_empty());
        // The other device went silent too, but nobody signed in from it.
        let flags = tamper_flags(&store).await;
        assert_eq!(flags.len(), 2);
        assert!(flags.iter().all(|f| f.device_id == laptop));
        // Devices silent past the lookback are no longer read.
        assert!(
            store
                .silent_devices(
                    t(40 * DAY),
                    t(41 * DAY),
                    jiff::SignedDuration::from_hours(24)
                )
                .await
                .unwrap()
                .is_empty()
        );
    }
}
