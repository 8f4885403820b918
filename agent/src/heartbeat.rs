//! The producer of heartbeats (merged while unsent) and device facts (on
//! start and on change), of an `OutboxReport` of new evictions each tick,
//! and of the liveness mark (`State::set_alive_at`) `status` reads a
//! stalled outbox from.

use std::time::Duration;

use hallmonitor_proto::v1;
use jiff::Timestamp;

use crate::facts;
use crate::state::State;
use crate::task::{TaskContext, WriteTrouble};

pub async fn run(ctx: TaskContext) -> anyhow::Result<()> {
    let TaskContext {
        config,
        outbox,
        wake,
        shutdown,
    } = ctx;
    let interval = config.heartbeat_interval_secs.get();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(u64::from(interval)));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let facts_every = Duration::from_secs(u64::from(config.facts_interval_secs.get()));
    let mut last_facts: Option<v1::DeviceFacts> = None;
    let mut facts_checked = tokio::time::Instant::now();
    let mut trouble = WriteTrouble::default();
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        let now = Timestamp::now();
        // Facts first: a heartbeat merges into an unsent heartbeat only when
        // it is the newest row.
        let mut events = Vec::new();
        if last_facts.is_none() || facts_checked.elapsed() >= facts_every {
            facts_checked = tokio::time::Instant::now();
            let current = facts::collect_for(&config).await;
            let stable = facts::stable_view(&current);
            if last_facts.as_ref() != Some(&stable) {
                events.push((now, v1::event::Body::Facts(current)));
                last_facts = Some(stable);
            }
        }
        let written = async {
            if !events.is_empty() {
                outbox.append_all(events).await?;
            }
            // Evictions while connected (a burst of captures, a slow link)
            // are reported at the next tick rather than at the next
            // reconnection.
            outbox.take_eviction_report().await?;
            let heartbeat = v1::Heartbeat {
                uptime_secs: facts::uptime_secs(),
                interval_secs: interval,
            };
            outbox.append_heartbeat(now, heartbeat).await?;
            // `status` reads a stalled outbox (a full disk) from its age.
            State::new(&outbox).set_alive_at(now).await
        }
        .await;
        match written {
            Ok(()) => {
                trouble.cleared("producer");
                wake.notify_one();
            }
            Err(e) => {
                // A full disk: the facts are sent again once it is not.
                trouble.failed("producer", e)?;
                last_facts = None;
            }
        }
    }
}
