//! Giving heap memory the collector has freed back to the system.
//!
//! A burst of agents (the morning's reconnect storm, a backlog drained
//! after a holiday) allocates hundreds of MiB on the tokio workers: HTTP/2
//! receive buffers, decoded batches, rule evaluations. When the burst ends
//! nearly all of it is freed, but glibc's malloc returns memory to the
//! system only from the top of each arena, so a few live allocations
//! scattered through the arenas keep every page resident. Measured with
//! 2,000 agents, the collector held 4.7 MiB of live heap in 2 GiB of RSS,
//! and each run raised the figure further (BENCHMARKS.md, "Collector
//! memory after repeated load").
//!
//! [`run`] calls `malloc_trim(0)` every `release_memory_every_secs`: it
//! hands every free page of every arena back (`madvise`), keeping the
//! address space, so the next burst reuses it at the cost of page faults.
//! It runs on a blocking thread because it holds each arena's lock while
//! it walks the arena's free chunks (24 to 202 ms after the bursts of
//! 2,000 agents in BENCHMARKS.md). Elsewhere than glibc it does nothing.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// What one release did.
#[derive(Clone, Copy, Debug)]
pub struct Released {
    pub resident_before_bytes: u64,
    pub resident_after_bytes: u64,
    pub took: Duration,
}

impl Released {
    pub fn released_bytes(&self) -> u64 {
        self.resident_before_bytes
            .saturating_sub(self.resident_after_bytes)
    }
}

/// Releases freed memory every `every` until `shutdown`; never when
/// `every` is zero.
pub async fn run(every: Duration, shutdown: CancellationToken) {
    if every.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let released = match tokio::task::spawn_blocking(release).await {
            Ok(released) => released,
            Err(e) => {
                tracing::error!(error = %e, "releasing freed memory failed");
                continue;
            }
        };
        let (released_mib, resident_mib, took_ms) = (
            released.released_bytes() >> 20,
            released.resident_after_bytes >> 20,
            released.took.as_millis() as u64,
        );
        if released_mib >= 16 {
            tracing::info!(
                released_mib,
                resident_mib,
                took_ms,
                "freed memory returned to the system"
            );
        } else {
            tracing::debug!(
                released_mib,
                resident_mib,
                took_ms,
                "freed memory returned to the system"
            );
        }
    }
}

/// Returns the free pages of every malloc arena to the system now.
pub fn release() -> Released {
    let resident_before_bytes = resident_bytes();
    let started = Instant::now();
    trim();
    Released {
        resident_before_bytes,
        resident_after_bytes: resident_bytes(),
        took: started.elapsed(),
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim takes no pointers; it is safe to call from any
    // thread at any time (it takes each arena's lock).
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// This process's resident set, from `/proc/self/statm` (0 elsewhere).
pub fn resident_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// The fragmentation a burst leaves: 128 MiB written in 4 KiB blocks,
    /// one block in 32 kept. `free` cannot give the holes back (they are
    /// not at the top of the heap); `release` must.
    #[test]
    fn release_returns_the_holes_a_burst_leaves() {
        const BLOCK: usize = 4096;
        const BLOCKS: usize = 32 * 1024;
        let mut blocks: Vec<Vec<u8>> = (0..BLOCKS).map(|_| vec![1u8; BLOCK]).collect();
        let kept: Vec<Vec<u8>> = blocks.iter_mut().step_by(32).map(std::mem::take).collect();
        drop(blocks);
        let released = release();
        assert!(
            released.released_bytes() >= 64 << 20,
            "released only {} KiB of about 124 MiB of holes ({released:?})",
            released.released_bytes() >> 10
        );
        assert_eq!(kept.len(), BLOCKS / 32);
        assert!(kept.iter().all(|b| b.len() == BLOCK && b[0] == 1));
    }
}
