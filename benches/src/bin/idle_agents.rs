//! `idle_agents`: many simulated agents connected to one collector and
//! mostly idle, as a school's fleet is: what each connection costs the
//! collector, how fast a heartbeat is acknowledged under that load, and
//! how long the fleet takes to get back after the collector restarts.
//!
//! Each agent enrols through the real service (identities kept under
//! `--work`, so later runs skip enrolment), opens its own mutual-TLS
//! stream, and sends a one-heartbeat batch every `--heartbeat-secs`
//! (spread evenly over the fleet), timing each until its ack. A stream
//! that ends is reopened after a random 1–`--reconnect-max-secs` s back-off
//! (as the agent does), retrying until it is back.
//!
//! Prints `idle_agents: all N connected in S s` once every agent is
//! connected (then the caller samples the collector's memory), after each
//! collector restart `idle_agents: all N reconnected in S s after the
//! first disconnect`, and every `--report-secs` the heartbeat round trips
//! of that period (p50, p95, max). Runs until killed or `--hold-secs`.
//!
//! ```text
//! idle_agents --enroll … --telemetry … --ca-fingerprint … --secret … --site … --agents 20000
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use hallmonitor_benches::{Target, connect, enroll_agents, now_wire};
use hallmonitor_proto::v1;

#[derive(Parser, Debug, Clone)]
struct Args {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Where identities are kept (reused across runs).
    #[arg(long)]
    work: PathBuf,
    #[arg(long, default_value_t = 16)]
    enroll_concurrency: usize,
    /// Connections being opened at once (first connection only).
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    #[arg(long, default_value_t = 60)]
    heartbeat_secs: u64,
    #[arg(long, default_value_t = 30)]
    reconnect_max_secs: u64,
    #[arg(long, default_value_t = 60)]
    report_secs: u64,
    /// Stop after this long (0: run until killed).
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
}

#[derive(Default)]
struct Fleet {
    connected: AtomicUsize,
    round_trips: Mutex<Vec<Duration>>,
    /// When the first stream of a disconnection wave ended.
    wave_started: Mutex<Option<Instant>>,
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let identities = enroll_agents(
        &args.target,
        "idle",
        args.agents,
        args.enroll_concurrency,
        &args.work,
    )
    .await?;
    eprintln!(
        "idle_agents: {} identities ready in {:.1} s",
        identities.len(),
        started.elapsed().as_secs_f64()
    );
    let fleet = Arc::new(Fleet::default());
    let opening = Arc::new(tokio::sync::Semaphore::new(args.connect_concurrency.max(1)));
    let started = Instant::now();
    let count = identities.len();
    for (n, identity) in identities.into_iter().enumerate() {
        let (args, fleet, opening) = (args.clone(), fleet.clone(), opening.clone());
        // Each agent's heartbeats fall at its own point of the interval.
        let offset = Duration::from_millis(args.heartbeat_secs * 1000 * n as u64 / count as u64);
        tokio::spawn(async move { agent(args, identity, offset, fleet, opening).await });
    }
    let mut all_once = false;
    let mut report = tokio::time::interval(Duration::from_secs(args.report_secs.max(1)));
    report.tick().await;
    let mut check = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = check.tick() => {
                let connected = fleet.connected.load(Ordering::Relaxed);
                if connected < count {
                    continue;
                }
                if !all_once {
                    all_once = true;
                    println!("idle_agents: all {count} connected in {:.1} s", started.elapsed().as_secs_f64());
                } else if let Some(wave) = fleet.wave_started.lock().unwrap().take() {
                    println!(
                        "idle_agents: all {count} reconnected in {:.1} s after the first disconnect",
                        wave.elapsed().as_secs_f64()
                    );
                }
            }
            _ = report.tick() => {
                let mut trips = std::mem::take(&mut *fleet.round_trips.lock().unwrap());
                trips.sort();
                if let Some(max) = trips.last() {
                    let pick = |q: f64| trips[((trips.len() as f64 - 1.0) * q).round() as usize];
                    let ms = |d: Duration| d.as_secs_f64() * 1e3;
                    println!(
                        "idle_agents: {} heartbeats acknowledged in {} s: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms; {} connected",
                        trips.len(), args.report_secs, ms(pick(0.5)), ms(pick(0.95)), ms(*max),
                        fleet.connected.load(Ordering::Relaxed)
                    );
                }
            }
        }
        if args.hold_secs > 0 && started.elapsed() >= Duration::from_secs(args.hold_secs) {
            return Ok(());
        }
    }
}

/// One agent, for ever: connect, heartbeat, reconnect after a back-off.
async fn agent(
    args: Args,
    identity: hallmonitor_agent::enroll::Identity,
    offset: Duration,
    fleet: Arc<Fleet>,
    opening: Arc<tokio::sync::Semaphore>,
) {
    let mut first = true;
    loop {
        let opened = if first {
            let _permit = opening.acquire().await;
            connect(&args.target.telemetry, identity.clone(), 2).await
        } else {
            connect(&args.target.telemetry, identity.clone(), 2).await
        };
        match opened {
            Ok(stream) => {
                first = false;
                fleet.connected.fetch_add(1, Ordering::Relaxed);
                let ended = heartbeats(&args, stream, offset, &fleet).await;
                fleet.connected.fetch_sub(1, Ordering::Relaxed);
                fleet
                    .wave_started
                    .lock()
                    .unwrap()
                    .get_or_insert_with(Instant::now);
                let _ = ended;
            }
            Err(_) if first => {
                // The collector is still taking the others' handshakes.
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(_) => {}
        }
        let most = args.reconnect_max_secs.max(1) * 1000;
        let back_off = 1000 + rand_below(most.saturating_sub(1000).max(1));
        tokio::time::sleep(Duration::from_millis(back_off)).await;
    }
}

/// Sends a heartbeat every interval and times its ack, until the stream
/// ends.
async fn heartbeats(
    args: &Args,
    mut stream: hallmonitor_benches::OpenStream,
    offset: Duration,
    fleet: &Fleet,
) -> anyhow::Result<()> {
    let interval = Duration::from_secs(args.heartbeat_secs.max(1));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
    let mut batch_id = 0;
    loop {
        ticks.tick().await;
        batch_id += 1;
        let seq = stream.next_seq;
        stream.next_seq += 1;
        let sent = Instant::now();
        stream
            .tx
            .send(v1::AgentMessage {
                body: Some(v1::agent_message::Body::Batch(v1::EventBatch {
                    batch_id,
                    events: vec![v1::Event {
                        seq,
                        event_id: uuid::Uuid::now_v7().to_string(),
                        occurred_at: Some(now_wire()),
                        body: Some(v1::event::Body::Heartbeat(v1::Heartbeat {
                            uptime_secs: seq,
                            interval_secs: args.heartbeat_secs as u32,
                        })),
                    }],
                })),
            })
            .await?;
        loop {
            match stream.inbound.message().await? {
                Some(v1::CollectorMessage {
                    body: Some(v1::collector_message::Body::Ack(ack)),
                }) if ack.batch_id == batch_id => {
                    fleet.round_trips.lock().unwrap().push(sent.elapsed());
                    break;
                }
                Some(_) => {}
                None => anyhow::bail!("the collector closed the stream"),
            }
        }
    }
}

/// A number in [0, n) from the clock's low bits: enough to spread
/// reconnections, no generator needed.
fn rand_below(n: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos() as u64;
    (nanos ^ (nanos >> 7).wrapping_mul(0x9E37_79B9)) % n
}
