//! `loadgen`: many simulated agents streaming to one collector over real
//! gRPC and mutual TLS, to measure sustained ingest.
//!
//! Each simulated agent enrols through the real `Enrollment.Enroll` service
//! (its own key, CSR and machine id, via the agent library), then opens its
//! own `Telemetry.Stream` and sends batches of events (heartbeats with one
//! session event in ten) with consecutive sequence numbers, keeping a window
//! of batches in flight and counting acknowledgements. The figure printed is
//! events acknowledged (so committed) per second between the first batch and
//! the last ack, over all agents.
//!
//! ```text
//! loadgen --enroll 127.0.0.1:50052 --telemetry 127.0.0.1:50051 \
//!     --ca-fingerprint HEX --secret SECRET --site NAME \
//!     --agents 200 --events-per-agent 5000 --batch 500
//! ```
//!
//! Identities are kept under `--work DIR` (default: a temporary directory),
//! so a second run against the same collector re-enrols the same machines
//! and continues their sequence numbers.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hallmonitor_benches::{OpenStream, Target, connect, enroll_agents};
use hallmonitor_proto::v1;

#[derive(Parser, Debug, Clone)]
#[command(about = "Simulated agents streaming to a collector over gRPC/mTLS")]
struct Args {
    #[command(flatten)]
    target: Target,
    /// Number of simulated agents (one connection each).
    #[arg(long, default_value_t = 100)]
    agents: usize,
    #[arg(long, default_value_t = 5_000)]
    events_per_agent: u64,
    /// Events per batch.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Batches in flight per agent.
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Enrolments running at once.
    #[arg(long, default_value_t = 8)]
    enroll_concurrency: usize,
    /// Where identities are kept (reused across runs).
    #[arg(long)]
    work: Option<PathBuf>,
    /// Prefix of the simulated machine ids.
    #[arg(long, default_value = "loadgen")]
    machine_prefix: String,
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let temp;
    let work = match &args.work {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };

    let started = Instant::now();
    let target = args.target.clone();
    let identities = enroll_agents(
        &target,
        &args.machine_prefix,
        args.agents,
        args.enroll_concurrency,
        &work,
    )
    .await?;
    let enrol_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "loadgen: enrolled {} agents in {enrol_secs:.1} s",
        identities.len()
    );

    // Connect everyone first so the measurement is of ingest, not of TLS
    // handshakes.
    let mut streams = Vec::with_capacity(identities.len());
    for identity in identities {
        streams.push(connect(&args.target.telemetry, identity, args.window).await?);
    }
    eprintln!("loadgen: {} streams open; sending", streams.len());

    let acked = Arc::new(AtomicU64::new(0));
    let duplicates = Arc::new(AtomicU64::new(0));
    let go = Arc::new(tokio::sync::Barrier::new(streams.len() + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for stream in streams {
        let args = args.clone();
        let acked = acked.clone();
        let duplicates = duplicates.clone();
        let go = go.clone();
        tasks.spawn(async move {
            go.wait().await;
            send_all(&args, stream, &acked, &duplicates).await
        });
    }
    go.wait().await;
    let start = Instant::now();
    let progress = {
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let now = acked.load(Ordering::Relaxed);
                eprintln!("loadgen: {} events/s (last 5 s)", (now - last) / 5);
                last = now;
            }
        })
    };
    while let Some(result) = tasks.join_next().await {
        result.context("agent task")??;
    }
    let secs = start.elapsed().as_secs_f64();
    progress.abort();
    let total = acked.load(Ordering::Relaxed);
    let expected = args.events_per_agent * args.agents as u64;
    if total != expected {
        bail!("acknowledged {total} events, expected {expected}");
    }
    println!(
        "loadgen: agents={} events={} batch={} window={} seconds={:.2} events_per_sec={:.0} duplicates={}",
        args.agents,
        total,
        args.batch,
        args.window,
        secs,
        total as f64 / secs,
        duplicates.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn send_all(
    args: &Args,
    mut stream: OpenStream,
    acked: &AtomicU64,
    duplicates: &AtomicU64,
) -> anyhow::Result<()> {
    let mut remaining = args.events_per_agent;
    let mut in_flight = 0usize;
    let mut batch_id = 0u64;
    loop {
        while in_flight < args.window && remaining > 0 {
            let n = remaining.min(args.batch as u64);
            remaining -= n;
            batch_id += 1;
            let events = (0..n).map(|_| {
                let seq = stream.next_seq;
                stream.next_seq += 1;
                event(seq)
            });
            stream
                .tx
                .send(v1::AgentMessage {
                    body: Some(v1::agent_message::Body::Batch(v1::EventBatch {
                        batch_id,
                        events: events.collect(),
                    })),
                })
                .await
                .context("stream closed")?;
            in_flight += 1;
        }
        if in_flight == 0 {
            return Ok(());
        }
        match stream.inbound.message().await? {
            Some(v1::CollectorMessage {
                body: Some(v1::collector_message::Body::Ack(ack)),
            }) => {
                if ack.rejected > 0 {
                    bail!("collector rejected {} events", ack.rejected);
                }
                in_flight -= 1;
                acked.fetch_add(u64::from(ack.stored + ack.duplicates), Ordering::Relaxed);
                duplicates.fetch_add(u64::from(ack.duplicates), Ordering::Relaxed);
            }
            Some(_) => {}
            None => bail!("the collector closed the stream"),
        }
    }
}

/// Nine heartbeats in ten, one session event in ten: roughly what a
/// school device sends in a day.
fn event(seq: u64) -> v1::Event {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let at = prost_types::Timestamp {
        seconds: now.as_secs() as i64,
        nanos: now.subsec_nanos() as i32,
    };
    let body = if seq.is_multiple_of(10) {
        v1::event::Body::Session(v1::SessionEvent {
            phase: v1::session_event::Phase::End as i32,
            session_id: format!("c{seq}"),
            account: "loadgen.user".into(),
            uid: 1000,
            kind: v1::session_event::Kind::Graphical as i32,
            seat: "seat0".into(),
            started_at: Some(prost_types::Timestamp {
                seconds: at.seconds - 3_600,
                nanos: 0,
            }),
            ended_at: Some(at),
            active_secs: 2_700,
        })
    } else {
        v1::event::Body::Heartbeat(v1::Heartbeat {
            uptime_secs: seq,
            interval_secs: 60,
        })
    };
    v1::Event {
        seq,
        event_id: uuid::Uuid::now_v7().to_string(),
        occurred_at: Some(at),
        body: Some(body),
    }
}
