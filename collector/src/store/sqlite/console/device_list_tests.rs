//! The device list's filters read columns the database derives (migration
//! 0014: `os_name`, `online_until`, `compliance`). These tests put devices
//! on each edge and check that every filter picks exactly the devices the
//! model picks: `DeviceRecord::connectivity`, the stored verdict, and the
//! facts' OS name (case-insensitive part, as SQLite's `LIKE`).

use jiff::{SignedDuration, Timestamp};

use crate::model::{Connectivity, DeviceFacts, DeviceId, SiteId};
use crate::rules::activity::{ActivityEvaluation, ActivityStatus};
use crate::store::sqlite::SqliteStore;
use crate::store::sqlite::testing::store_with_device;
use crate::store::{
    ActivityStore, ActivityVerdict, ConsoleStore, DeviceFilter, DeviceQuery, DeviceRecord,
    DeviceStore, Enrollment, IngestStore,
};

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap() + SignedDuration::from_secs(secs)
}

const NOW: i64 = 100_000;

/// One device on an edge: its OS name, when it was last seen (milliseconds
/// before NOW), its heartbeat interval, and its verdicts in order (the last
/// one stands).
struct Case {
    name: &'static str,
    os: &'static str,
    seen_ms_before_now: Option<i64>,
    interval_secs: i64,
    verdicts: &'static [ActivityStatus],
}

use ActivityStatus::*;

// One row per edge case, so the table reads as one.
#[rustfmt::skip]
const CASES: &[Case] = &[
    Case { name: "never seen, no verdict", os: "Ubuntu", seen_ms_before_now: None, interval_secs: 60, verdicts: &[] },
    Case { name: "no OS name", os: "", seen_ms_before_now: Some(0), interval_secs: 60, verdicts: &[Compliant] },
    Case { name: "seen just now", os: "Debian GNU/Linux", seen_ms_before_now: Some(0), interval_secs: 60, verdicts: &[Grace] },
    Case { name: "exactly three heartbeats ago", os: "ubuntu", seen_ms_before_now: Some(180_000), interval_secs: 60, verdicts: &[AtRisk] },
    Case { name: "a millisecond past three heartbeats", os: "Ubuntu", seen_ms_before_now: Some(180_001), interval_secs: 60, verdicts: &[NonCompliant] },
    Case { name: "interval 0 counts as 1 s, at the edge", os: "Fedora", seen_ms_before_now: Some(3_000), interval_secs: 0, verdicts: &[Disabled] },
    Case { name: "interval 0 counts as 1 s, past it", os: "Fedora", seen_ms_before_now: Some(3_001), interval_secs: 0, verdicts: &[Compliant] },
    Case { name: "long interval, long ago but online", os: "Windows 11", seen_ms_before_now: Some(2_999_999), interval_secs: 1_000, verdicts: &[NonCompliant] },
    Case { name: "seen in the future (clock skew)", os: "Ubuntu", seen_ms_before_now: Some(-60_000), interval_secs: 60, verdicts: &[Compliant] },
    Case { name: "verdict changed", os: "Ubuntu", seen_ms_before_now: Some(999_000), interval_secs: 60, verdicts: &[Compliant, NonCompliant] },
    Case { name: "verdict changed back", os: "Debian", seen_ms_before_now: Some(1), interval_secs: 60, verdicts: &[NonCompliant, Compliant, Compliant] },
    Case { name: "seen long ago, no verdict", os: "Ubuntu", seen_ms_before_now: Some(86_400_000), interval_secs: 60, verdicts: &[] },
];

fn verdict(
    device: &DeviceId,
    site: SiteId,
    status: ActivityStatus,
    at: Timestamp,
) -> ActivityVerdict {
    ActivityVerdict {
        device: device.clone(),
        site,
        evaluation: ActivityEvaluation {
            status,
            as_of: at,
            window_start: at - SignedDuration::from_hours(24 * 28),
            used: SignedDuration::from_mins(5),
            breach_at: None,
            grace_until: None,
        },
        next_check_at: at + SignedDuration::from_hours(1),
        required_minutes: 60,
        auto_disable: false,
    }
}

/// Enrols one device per case and brings it to the case's state through
/// the writers ingest and the rule pass use.
async fn store_with_cases(dir: &std::path::Path) -> SqliteStore {
    let (store, site, _) = store_with_device(dir, t(0)).await;
    let now = t(NOW);
    for (n, case) in CASES.iter().enumerate() {
        let id = DeviceId::from_string(format!("dev-{n:02}"));
        let facts = DeviceFacts {
            hostname: format!("host-{n:02}"),
            machine_id: format!("m-{n}"),
            os_name: case.os.into(),
            ..DeviceFacts::default()
        };
        store
            .save_enrollment(Enrollment::active(
                id.clone(),
                site.id,
                facts,
                format!("cert-{n}"),
                t(0),
            ))
            .await
            .unwrap();
        if let Some(before) = case.seen_ms_before_now {
            let seen = now - SignedDuration::from_millis(before);
            store
                .record_hello(&id, case.interval_secs.max(1) as u32, 0, seen)
                .await
                .unwrap();
        }
        if case.interval_secs < 1 {
            // No writer stores an interval under 1 s; an old row might.
            sqlx::query("UPDATE devices SET heartbeat_interval_secs = ? WHERE id = ?")
                .bind(case.interval_secs)
                .bind(id.as_str())
                .execute(&store.writer)
                .await
                .unwrap();
        }
        for (k, status) in case.verdicts.iter().enumerate() {
            store
                .record_activity(&[verdict(&id, site.id, *status, t(k as i64))], t(k as i64))
                .await
                .unwrap();
        }
    }
    store
}

/// Every device (the fixture's dev-1 included), with its stored status.
async fn everything(store: &SqliteStore) -> Vec<(DeviceRecord, Option<ActivityStatus>)> {
    let devices = store
        .device_page(&DeviceQuery {
            limit: 1_000,
            ..DeviceQuery::default()
        })
        .await
        .unwrap();
    let verdicts = store
        .stored_activity(&DeviceFilter::default())
        .await
        .unwrap();
    devices
        .into_iter()
        .map(|d| {
            let status = verdicts.iter().find(|v| v.device == d.id).map(|v| v.status);
            (d, status)
        })
        .collect()
}

fn queries() -> Vec<DeviceQuery> {
    let mut queries = Vec::new();
    for os in ["", "ubuntu", "UBUN", "debian gnu", "%", "_"] {
        for connectivity in [
            None,
            Some(Connectivity::Online),
            Some(Connectivity::Offline),
        ] {
            for compliance in [
                None,
                Some(Grace),
                Some(Compliant),
                Some(AtRisk),
                Some(NonCompliant),
                Some(Disabled),
            ] {
                queries.push(DeviceQuery {
                    os: os.into(),
                    connectivity,
                    compliance,
                    now: Some(t(NOW)),
                    limit: 1_000,
                    ..DeviceQuery::default()
                });
            }
        }
    }
    queries
}

fn model_picks(
    query: &DeviceQuery,
    devices: &[(DeviceRecord, Option<ActivityStatus>)],
) -> Vec<String> {
    devices
        .iter()
        .filter(|(d, status)| {
            d.facts
                .os_name
                .to_lowercase()
                .contains(&query.os.to_lowercase())
                && query
                    .connectivity
                    .is_none_or(|c| d.connectivity(t(NOW)) == c)
                && query.compliance.is_none_or(|c| *status == Some(c))
        })
        .map(|(d, _)| d.hostname.clone())
        .collect()
}

#[tokio::test]
async fn each_filter_picks_the_devices_the_model_picks() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_cases(dir.path()).await;
    let devices = everything(&store).await;
    assert_eq!(devices.len(), CASES.len() + 1);
    // The cases' own expectations, so the model is not only compared with
    // itself.
    let online: Vec<&str> = devices
        .iter()
        .filter(|(d, _)| d.connectivity(t(NOW)) == Connectivity::Online)
        .map(|(d, _)| d.hostname.as_str())
        .collect();
    assert_eq!(
        online,
        [
            "host-01", "host-02", "host-03", "host-05", "host-07", "host-08", "host-10"
        ]
    );
    for query in queries() {
        let got: Vec<String> = store
            .device_page(&query)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.hostname)
            .collect();
        let want = model_picks(&query, &devices);
        assert_eq!(
            got,
            want,
            "os {:?}, {:?}, {:?}: {}",
            query.os,
            query.connectivity,
            query.compliance,
            describe(&want)
        );
    }
}

/// Names the cases a list of hostnames stands for, for a failing assertion.
fn describe(hostnames: &[String]) -> String {
    let names: Vec<&str> = hostnames
        .iter()
        .filter_map(|h| h.strip_prefix("host-")?.parse::<usize>().ok())
        .map(|n| CASES[n].name)
        .collect();
    format!("want {names:?}")
}

#[tokio::test]
async fn filtered_pages_follow_the_keyset() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_cases(dir.path()).await;
    let devices = everything(&store).await;
    for query in queries() {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .device_page(&DeviceQuery {
                    after: after.clone(),
                    limit: 2,
                    ..query.clone()
                })
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            after = Some((last.hostname.clone(), last.id.to_string()));
            seen.extend(page.into_iter().map(|d| d.hostname));
        }
        assert_eq!(
            seen,
            model_picks(&query, &devices),
            "{:?} {:?}",
            query.os,
            query.compliance
        );
    }
}

/// Migration 0014 fills `compliance` from the verdicts stored before it.
#[tokio::test]
async fn the_migration_backfills_compliance() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let before_0014 = sqlx::migrate::Migrator {
        migrations: super::super::MIGRATIONS
            .migrations
            .iter()
            .filter(|m| m.version < 14)
            .cloned()
            .collect(),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    before_0014.run(&pool).await.unwrap();
    sqlx::query("INSERT INTO sites (id, name, timezone, created_at) VALUES (1, 'Cabot', 'UTC', 0)")
        .execute(&pool)
        .await
        .unwrap();
    for (n, status) in [Some("non_compliant"), Some("compliant"), None]
        .iter()
        .enumerate()
    {
        sqlx::query(
            "INSERT INTO devices (id, site_id, machine_id, serial_number, hostname, enrolled_at, cert_sha256, \
             facts_json, facts_updated_at) VALUES (?, 1, '', '', ?, 0, ?, ?, 0)",
        )
        .bind(format!("dev-{n}"))
        .bind(format!("host-{n}"))
        .bind(format!("cert-{n}"))
        .bind(serde_json::to_string(&DeviceFacts { os_name: "Ubuntu".into(), ..DeviceFacts::default() }).unwrap())
        .execute(&pool)
        .await
        .unwrap();
        if let Some(status) = status {
            sqlx::query(
                "INSERT INTO device_activity (device_id, status, used_secs, window_start, as_of, next_check_at) \
                 VALUES (?, ?, 0, 0, 0, 0)",
            )
            .bind(format!("dev-{n}"))
            .bind(status)
            .execute(&pool)
            .await
            .unwrap();
        }
    }
    pool.close().await;
    let store = SqliteStore::open(&path, false).await.unwrap();
    let page = |compliance| DeviceQuery {
        compliance,
        os: "ubuntu".into(),
        limit: 10,
        ..DeviceQuery::default()
    };
    let hostnames =
        |devices: Vec<DeviceRecord>| devices.into_iter().map(|d| d.hostname).collect::<Vec<_>>();
    let non_compliant = store.device_page(&page(Some(NonCompliant))).await.unwrap();
    assert_eq!(hostnames(non_compliant), ["host-0"]);
    let compliant = store.device_page(&page(Some(Compliant))).await.unwrap();
    assert_eq!(hostnames(compliant), ["host-1"]);
    let all = store.device_page(&page(None)).await.unwrap();
    assert_eq!(hostnames(all), ["host-0", "host-1", "host-2"]);
}
