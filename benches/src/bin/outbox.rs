//! `outbox`: throughput of the agent's durable outbox, and a filler for
//! backlog tests.
//!
//! ```text
//! outbox bench [--events 100000]        # append one by one, in batches; read + ack
//! outbox fill --data DIR --events N     # queue N session events in an agent's outbox
//! ```
//!
//! The bench runs the real `Outbox` (SQLite, WAL, synchronous=NORMAL) in a
//! temporary directory on the machine's disk and prints events per second
//! for each phase.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand};
use hallmonitor_agent::outbox::{DEFAULT_MAX_BYTES, Outbox};
use hallmonitor_proto::v1;
use jiff::Timestamp;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure append and acknowledge throughput.
    Bench {
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        /// Events per acknowledged batch (the agent's default batch size).
        #[arg(long, default_value_t = 500)]
        batch: usize,
    },
    /// Append N session events to the outbox in DIR (the agent's data
    /// directory; stop the agent first).
    Fill {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        events: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match args.command {
            Command::Bench { events, batch } => bench(events, batch).await,
            Command::Fill { data, events } => fill(data, events).await,
        }
    })
}

fn session(n: u64) -> v1::event::Body {
    let at = Timestamp::now();
    v1::event::Body::Session(v1::SessionEvent {
        phase: v1::session_event::Phase::End as i32,
        session_id: format!("bench-{n}"),
        account: "bench.user".into(),
        uid: 1000,
        kind: v1::session_event::Kind::Graphical as i32,
        seat: "seat0".into(),
        started_at: Some(prost_types::Timestamp {
            seconds: at.as_second() - 3_600,
            nanos: 0,
        }),
        ended_at: Some(prost_types::Timestamp {
            seconds: at.as_second(),
            nanos: 0,
        }),
        active_secs: 2_700,
    })
}

async fn bench(events: u64, batch: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (outbox, _) = Outbox::open(dir.path(), DEFAULT_MAX_BYTES).await?;

    // One event per transaction: how the daemon appends as things happen.
    let started = Instant::now();
    for n in 0..events {
        outbox.append(Timestamp::now(), session(n)).await?;
    }
    report("append (one per commit)", events, started);

    // A burst appended together (e.g. a session helper flushing its queue).
    let started = Instant::now();
    for chunk in (0..events).collect::<Vec<_>>().chunks(100) {
        let bodies = chunk
            .iter()
            .map(|n| (Timestamp::now(), session(*n)))
            .collect();
        outbox.append_all(bodies).await?;
    }
    report("append (100 per commit)", events, started);

    // What the stream does: read a batch, then delete it on the ack.
    let total = events * 2;
    let started = Instant::now();
    let mut after = 0;
    let mut sent = 0u64;
    loop {
        let read = outbox.read_for_send(after, batch).await?;
        let (Some(first), Some(last)) = (read.first(), read.last()) else {
            break;
        };
        outbox.acknowledge(first.seq, last.seq).await?;
        after = last.seq;
        sent += read.len() as u64;
    }
    anyhow::ensure!(sent == total, "read and acknowledged {sent} of {total}");
    report(
        &format!("read + acknowledge ({batch} per ack)"),
        total,
        started,
    );

    // Append and acknowledge interleaved, as a connected agent does.
    let started = Instant::now();
    let mut after = outbox.stats().await?.next_seq - 1;
    for chunk in (0..events).collect::<Vec<_>>().chunks(batch) {
        for n in chunk {
            outbox.append(Timestamp::now(), session(*n)).await?;
        }
        let read = outbox.read_for_send(after, batch).await?;
        if let (Some(first), Some(last)) = (read.first(), read.last()) {
            outbox.acknowledge(first.seq, last.seq).await?;
            after = last.seq;
        }
    }
    report("append one by one + acknowledge per batch", events, started);
    anyhow::ensure!(outbox.stats().await?.depth == 0, "outbox not empty");
    outbox.close().await;
    Ok(())
}

fn report(phase: &str, events: u64, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    println!(
        "outbox: {phase}: {events} events in {secs:.2} s = {:.0} events/s",
        events as f64 / secs
    );
}

async fn fill(data: PathBuf, events: u64) -> anyhow::Result<()> {
    let (outbox, _) = Outbox::open(&data, DEFAULT_MAX_BYTES).await?;
    let all: Vec<u64> = (0..events).collect();
    for chunk in all.chunks(1_000) {
        let bodies = chunk
            .iter()
            .map(|n| (Timestamp::now(), session(*n)))
            .collect();
        outbox.append_all(bodies).await?;
    }
    let stats = outbox.stats().await?;
    outbox.close().await;
    println!(
        "outbox: {} events queued in {}",
        stats.depth,
        data.display()
    );
    Ok(())
}
