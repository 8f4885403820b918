//! `alert_latency`: time from a severity-5 capture leaving an agent to the
//! SMTP server accepting the alert email.
//!
//! ```text
//! alert_latency --enroll … --telemetry … --ca-fingerprint … --secret … --site … \
//!     --maildir DIR [--captures 100]
//! ```
//!
//! One simulated agent (real enrolment, mTLS stream) sends captures one at
//! a time, each opening a new incident (a different account), and waits for
//! the email to appear in the Maildir of the SMTP server (aiosmtpd with
//! `aiosmtpd.handlers.Mailbox`); the collector must have one head-teacher
//! recipient. Prints p50, p95 and max.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use hallmonitor_benches::{Target, connect, enroll_agents, now_wire};
use hallmonitor_proto::v1;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    target: Target,
    /// The SMTP server's Maildir (its `new/` folder is watched).
    #[arg(long)]
    maildir: PathBuf,
    #[arg(long, default_value_t = 100)]
    captures: usize,
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

fn mails(maildir: &std::path::Path) -> usize {
    std::fs::read_dir(maildir.join("new")).map_or(0, |d| d.count())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let target = args.target.clone();
    let identity = enroll_agents(&target, "alert-latency", 1, 1, work.path())
        .await?
        .remove(0);
    let mut stream = connect(&args.target.telemetry, identity, 4).await?;
    let image = b"\x89PNG\r\n\x1a\n bench screen ".repeat(2_000);
    let sha: String = ring::digest::digest(&ring::digest::SHA256, &image)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut latencies = Vec::with_capacity(args.captures);
    for n in 0..args.captures {
        let before = mails(&args.maildir);
        let seq = stream.next_seq;
        stream.next_seq += 1;
        let event = v1::Event {
            seq,
            event_id: uuid::Uuid::now_v7().to_string(),
            occurred_at: Some(now_wire()),
            body: Some(v1::event::Body::Capture(v1::Capture {
                rule_id: "bench".into(),
                category: "self-harm".into(),
                severity: 5,
                matched_text: "bench".into(),
                account: format!("bench-account-{n}"),
                image_png: image.clone(),
                image_sha256: sha.clone(),
                ..Default::default()
            })),
        };
        let started = Instant::now();
        stream
            .tx
            .send(v1::AgentMessage {
                body: Some(v1::agent_message::Body::Batch(v1::EventBatch {
                    batch_id: n as u64 + 1,
                    events: vec![event],
                })),
            })
            .await?;
        let deadline = started + Duration::from_secs(30);
        while mails(&args.maildir) <= before {
            anyhow::ensure!(
                Instant::now() < deadline,
                "no email for capture {n} within 30 s"
            );
            // Drain acks and state messages so the stream never stalls.
            let _ = tokio::time::timeout(Duration::from_millis(2), stream.inbound.message()).await;
        }
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "alert_latency: {} severity-5 captures, capture sent → SMTP accepted: p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms",
        latencies.len(),
        pick(0.5).as_secs_f64() * 1e3,
        pick(0.95).as_secs_f64() * 1e3,
        latencies.last().map_or(0.0, |l| l.as_secs_f64() * 1e3)
    );
    Ok(())
}
