//! `console-fixture`: fills a collector's data directory with a large
//! school trust for the console benchmark (`benches/run.sh console`):
//! devices with facts, 28 days of sessions, activity verdicts, flags and
//! incidents with encrypted snapshots. The collector must not be running.
//!
//! ```text
//! console-fixture --data DIR [--devices 50000] [--sessions-per-day 2] [--incidents 200]
//! ```
//!
//! Devices go through the store's enrolment; sessions, verdicts and flags
//! are written with SQL in large transactions (the store's own paths would
//! take an hour for 2.8 million sessions); incidents go through
//! `record_batch` and their images through the evidence store, as ingest
//! does.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use hallmonitor_collector::evidence::EvidenceStore;
use hallmonitor_collector::model::{CaptureRecord, DeviceFacts, DeviceId, Event, EventBody, Seq};
use hallmonitor_collector::store::{DeviceStore, Enrollment, IngestStore, SiteStore};
use jiff::{SignedDuration, Timestamp};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value_t = 50_000)]
    devices: usize,
    #[arg(long, default_value_t = 2)]
    sessions_per_day: usize,
    #[arg(long, default_value_t = 200)]
    incidents: usize,
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let store = hallmonitor_collector::open_store(&args.data).await?;
    let site = store
        .sites()
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no site: run init first"))?;
    let now = Timestamp::now();
    let start = Instant::now();
    let enrolled = now - SignedDuration::from_hours(24 * 60);
    for i in 0..args.devices {
        let facts = DeviceFacts {
            hostname: format!("lab-{i:05}"),
            os_name: ["Debian GNU/Linux", "Ubuntu", "Fedora Linux"][i % 3].into(),
            os_version: "12".into(),
            machine_id: format!("bench-machine-{i}"),
            serial_number: format!("SN{i:06}"),
            agent_version: "0.1.0".into(),
            cpu_model: "Bench CPU".into(),
            cpu_cores: 4,
            memory_total_bytes: 8 << 30,
            ..DeviceFacts::default()
        };
        store
            .save_enrollment(Enrollment::active(
                DeviceId::from_string(format!("dev-bench-{i:05}")),
                site.id,
                facts,
                format!("bench-cert-{i}"),
                enrolled,
            ))
            .await?;
    }
    eprintln!("{} devices in {:.1?}", args.devices, start.elapsed());
    store.close().await;

    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(args.data.join(hallmonitor_collector::DATABASE_FILE))
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
    let pool = sqlx::SqlitePool::connect_with(options).await?;
    let ms = |t: Timestamp| t.as_millisecond();
    let start = Instant::now();
    let mut tx = pool.begin().await?;
    let mut sessions = 0u64;
    for i in 0..args.devices {
        let device = format!("dev-bench-{i:05}");
        // Every third device is barely used (non-compliant), the rest
        // daily.
        let days: i64 = if i % 3 == 0 { 1 } else { 28 };
        for day in 0..days {
            for s in 0..args.sessions_per_day {
                let started = now - SignedDuration::from_hours(24 * day + 3 + 4 * s as i64);
                let ended = started + SignedDuration::from_mins(40);
                sqlx::query(
                    "INSERT INTO sessions (device_id, session_id, account, uid, kind, started_at, ended_at, active_secs, updated_at) \
                     VALUES (?, ?, ?, 1000, 'graphical', ?, ?, 2400, ?)",
                )
                .bind(&device)
                .bind(format!("s-{day}-{s}"))
                .bind(format!("pupil{}", (i + s) % 900))
                .bind(ms(started))
                .bind(ms(ended))
                .bind(ms(ended))
                .execute(&mut *tx)
                .await?;
                sessions += 1;
            }
        }
        let status = if i % 3 == 0 {
            "non_compliant"
        } else {
            "compliant"
        };
        sqlx::query(
            "INSERT INTO device_activity (device_id, status, used_secs, window_start, breach_at, grace_until, as_of, next_check_at) \
             VALUES (?, ?, ?, ?, NULL, NULL, ?, ?)",
        )
        .bind(&device)
        .bind(status)
        .bind(if i % 3 == 0 { 2400 } else { 28 * 2400 })
        .bind(ms(now - SignedDuration::from_hours(24 * 28)))
        .bind(ms(now))
        .bind(ms(now + SignedDuration::from_hours(24)))
        .execute(&mut *tx)
        .await?;
        if i % 3 == 0 && i % 30 == 0 {
            sqlx::query(
                "INSERT INTO flags (site_id, device_id, kind, account, state, opened_at, updated_at, summary) \
                 VALUES (?, ?, 'device_inactive', '', 'open', ?, ?, 'logged in 40 min in 28 days')",
            )
            .bind(site.id.0)
            .bind(&device)
            .bind(ms(now))
            .bind(ms(now))
            .execute(&mut *tx)
            .await?;
        }
        // Half the devices were heard from just now.
        if i % 2 == 0 {
            sqlx::query("UPDATE devices SET last_seen_at = ? WHERE id = ?")
                .bind(ms(now))
                .bind(&device)
                .execute(&mut *tx)
                .await?;
        }
    }
    // The per-day counts ingest keeps, as the migration fills them.
    sqlx::query(
        "INSERT OR IGNORE INTO device_days (day, device_id, site_id) \
         SELECT DISTINCT date(x.started_at / 1000, 'unixepoch'), x.device_id, d.site_id \
         FROM sessions x JOIN devices d ON d.id = x.device_id",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM site_days")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO site_days (site_id, day, devices) \
         SELECT site_id, day, count(*) FROM device_days GROUP BY site_id, day",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    eprintln!(
        "{sessions} sessions, verdicts and flags in {:.1?}",
        start.elapsed()
    );
    pool.close().await;

    let store = hallmonitor_collector::open_store(&args.data).await?;
    let evidence = EvidenceStore::open(&args.data)?;
    let start = Instant::now();
    for n in 0..args.incidents {
        let device = DeviceId::from_string(format!("dev-bench-{:05}", n * 7 % args.devices));
        // A snapshot-sized image (about 150 KB, incompressible).
        let image: Vec<u8> = (0..150_000u32)
            .map(|k| (k.wrapping_mul(2_654_435_761).wrapping_add(n as u32) >> 13) as u8)
            .collect();
        let sha = sha256_hex(&image);
        evidence.put(&image, &sha)?;
        let event = Event {
            seq: Seq(1),
            event_id: format!("bench-capture-{n}"),
            occurred_at: now - SignedDuration::from_mins(n as i64),
            body: EventBody::Capture(CaptureRecord {
                rule_id: "bench-1".into(),
                category: ["self-harm", "gambling", "weapons"][n % 3].into(),
                severity: (n % 5 + 1) as u8,
                matched_text: "bench phrase".into(),
                window_title: "bench window".into(),
                process_name: "firefox".into(),
                account: format!("pupil{n}"),
                image_sha256: sha,
                image_status: "verified".into(),
                no_image_reason: String::new(),
                repeat_count: 0,
                kind: "snapshot".into(),
                file_path: String::new(),
                file_sha256: String::new(),
                policy_version: 0,
                image: Vec::new(),
                context: Vec::new(),
            }),
        };
        store.record_batch(&device, &[event], now).await?;
    }
    eprintln!(
        "{} incidents with snapshots in {:.1?}",
        args.incidents,
        start.elapsed()
    );
    store.close().await;
    Ok(())
}
