//! `rules`: cost of the device-activity rule.
//!
//! ```text
//! rules [--devices 100000] [--sessions-per-day 5]
//! ```
//!
//! 1. Full evaluation: every device's 28 days of sessions (about 5 a day,
//!    30–90 minutes, some overlapping) turned into intervals with the
//!    site's qualification and evaluated at one `as_of`.
//! 2. Incremental: one device re-evaluated after one new session arrives
//!    (what the collector does per device when sessions come in).
//! 3. The same incremental update through the real SQLite store
//!    (`record_batch` of the session + `refresh` of that device), which is
//!    what `serve` runs.

use hallmonitor_collector::store::{ActivityStore, DeviceStore, IngestStore, SiteStore};
use std::hint::black_box;
use std::time::Instant;

use clap::Parser;
use hallmonitor_collector::config::{CollectorConfig, SiteActivityRule};
use hallmonitor_collector::model::{
    DeviceId, Enforcement, Event, EventBody, Seq, SessionKind, SessionRecord, SiteId,
};
use hallmonitor_collector::rules::evaluate::evaluate_input;
use hallmonitor_collector::store::{ActivityInput, DeviceFilter};
use jiff::{SignedDuration, Timestamp};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 100_000)]
    devices: usize,
    #[arg(long, default_value_t = 5)]
    sessions_per_day: u64,
    /// Devices in the store for the SQLite part.
    #[arg(long, default_value_t = 2_000)]
    store_devices: usize,
}

/// A cheap deterministic generator, so runs are comparable.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

fn sessions(rng: &mut Lcg, as_of: Timestamp, per_day: u64) -> Vec<SessionRecord> {
    let mut out = Vec::new();
    for day in 0..28 {
        for n in 0..per_day {
            let start = as_of - SignedDuration::from_hours(24 * (day + 1))
                + SignedDuration::from_mins((8 * 60 + rng.next(9 * 60)) as i64);
            out.push(SessionRecord {
                session_id: format!("d{day}-{n}"),
                account: format!("pupil{}", rng.next(30)),
                uid: 1000 + rng.next(30) as u32,
                kind: SessionKind::Graphical,
                started_at: start,
                ended_at: Some(start + SignedDuration::from_mins(30 + rng.next(60) as i64)),
                active_secs: 1800,
            });
        }
    }
    out
}

fn input(device: usize, sessions: Vec<SessionRecord>, as_of: Timestamp) -> ActivityInput {
    ActivityInput {
        device: DeviceId::from_string(format!("dev-{device:06}")),
        site: SiteId(1),
        site_name: "Bench".into(),
        site_timezone: "Europe/London".into(),
        hostname: format!("laptop-{device}"),
        enrolled_at: as_of - SignedDuration::from_hours(24 * 365),
        reenabled_at: None,
        last_seen_at: Some(as_of),
        heartbeat_interval_secs: 60,
        enforcement: Enforcement::Enabled,
        sessions,
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let as_of: Timestamp = "2026-11-24T12:00:00Z".parse()?;
    let rule: SiteActivityRule = CollectorConfig::default().activity_rule("Bench");
    let mut rng = Lcg(42);

    let inputs: Vec<ActivityInput> = (0..args.devices)
        .map(|d| input(d, sessions(&mut rng, as_of, args.sessions_per_day), as_of))
        .collect();
    let total_sessions: usize = inputs.iter().map(|i| i.sessions.len()).sum();

    // 1. Full evaluation.
    let started = Instant::now();
    let mut non_compliant = 0;
    for input in &inputs {
        let e = evaluate_input(black_box(input), &rule, as_of);
        non_compliant += usize::from(!e.status.passes());
    }
    let full = started.elapsed();
    println!(
        "rules: full evaluation of {} devices ({} sessions): {:.3} s ({} non-compliant)",
        args.devices,
        total_sessions,
        full.as_secs_f64(),
        non_compliant
    );

    // 2. Incremental: one new session on one device, re-evaluated.
    let rounds = 10_000;
    let mut device = inputs[0].clone();
    let started = Instant::now();
    for n in 0..rounds {
        let start = as_of - SignedDuration::from_mins(90);
        device.sessions.push(SessionRecord {
            session_id: format!("new-{n}"),
            account: "pupil1".into(),
            uid: 1001,
            kind: SessionKind::Graphical,
            started_at: start,
            ended_at: Some(start + SignedDuration::from_mins(45)),
            active_secs: 2700,
        });
        black_box(evaluate_input(&device, &rule, as_of));
        device.sessions.pop();
    }
    println!(
        "rules: incremental re-evaluation of one device ({} sessions): {:.1} µs",
        device.sessions.len() + 1,
        started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
    );

    store_round_trip(&args, as_of)
}

/// The path `serve` takes for one device when a session arrives, on a
/// real SQLite file.
fn store_round_trip(args: &Args, as_of: Timestamp) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let store = hallmonitor_collector::store::SqliteStore::open(&dir.path().join("c.db"), true).await?;
        let site = store.create_site("Bench", "Europe/London", as_of).await?;
        let mut rng = Lcg(7);
        let mut ids = Vec::new();
        for d in 0..args.store_devices {
            let id = DeviceId::from_string(format!("dev-{d:06}"));
            store
                .save_enrollment(hallmonitor_collector::store::Enrollment::active(
                    id.clone(),
                    site.id,
                    Default::default(),
                    format!("{d:064}"),
                    as_of - SignedDuration::from_hours(24 * 365),
                ))
                .await?;
            let events: Vec<Event> = sessions(&mut rng, as_of, args.sessions_per_day)
                .into_iter()
                .enumerate()
                .map(|(n, s)| Event {
                    seq: Seq(n as u64 + 1),
                    event_id: format!("e{n}"),
                    occurred_at: s.started_at,
                    body: EventBody::Session(s),
                })
                .collect();
            store.record_batch(&id, &events, as_of).await?;
            ids.push(id);
        }
        let config = CollectorConfig::default();
        let started = Instant::now();
        hallmonitor_collector::rules::evaluate::refresh(&store, &config, &DeviceFilter::default(), as_of).await?;
        println!(
            "rules: SQLite refresh of all {} devices ({} sessions each): {:.3} s",
            args.store_devices,
            28 * args.sessions_per_day,
            started.elapsed().as_secs_f64()
        );
        let due = store.devices_due(as_of + SignedDuration::from_mins(1), 10_000).await?.len();
        let started = Instant::now();
        let changes = hallmonitor_collector::rules::evaluate::refresh_due(&store, &config, as_of + SignedDuration::from_mins(1)).await?;
        println!("rules: devices due a minute later: {due}");
        println!(
            "rules: SQLite periodic pass a minute later (only devices due): {:.1} ms ({} flags opened)",
            started.elapsed().as_secs_f64() * 1e3,
            changes.opened.len()
        );
        let rounds = 200;
        let started = Instant::now();
        for n in 0..rounds {
            let id = &ids[n % ids.len()];
            let start = as_of - SignedDuration::from_mins(90);
            let event = Event {
                seq: Seq(1_000 + n as u64),
                event_id: format!("new-{n}"),
                occurred_at: start,
                body: EventBody::Session(SessionRecord {
                    session_id: format!("new-{n}"),
                    account: "pupil1".into(),
                    uid: 1001,
                    kind: SessionKind::Graphical,
                    started_at: start,
                    ended_at: Some(start + SignedDuration::from_mins(45)),
                    active_secs: 2700,
                }),
            };
            store.record_batch(id, &[event], as_of).await?;
            let filter = DeviceFilter::one(id.clone());
            hallmonitor_collector::rules::evaluate::refresh(&store, &config, &filter, as_of).await?;
        }
        println!(
            "rules: SQLite commit of one session + refresh of its device: {:.2} ms",
            started.elapsed().as_secs_f64() * 1e3 / rounds as f64
        );
        store.close().await;
        anyhow::Ok(())
    })
}
