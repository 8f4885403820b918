//! `snapshot`: time to capture, downscale and encode the screen (the
//! session helper's real `snapshot::take`), on the X display in `$DISPLAY`.
//!
//! ```text
//! DISPLAY=:99 snapshot [--rounds 20]
//! ```

use std::time::Instant;

use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 20)]
    rounds: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut times = Vec::with_capacity(args.rounds);
    let mut last = None;
    for _ in 0..args.rounds {
        let started = Instant::now();
        let snapshot = hallmonitor_session::snapshot::take(None).map_err(|e| anyhow::anyhow!(e))?;
        times.push(started.elapsed());
        last = Some(snapshot);
    }
    times.sort();
    let last = last.expect("at least one round");
    println!(
        "snapshot: {} rounds, capture + downscale + PNG to {}x{} ({} KiB): p50 {:.0} ms, max {:.0} ms",
        args.rounds,
        last.width,
        last.height,
        last.png.len() / 1024,
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
    Ok(())
}
