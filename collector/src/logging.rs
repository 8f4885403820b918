//! The collector's log: `HALLMONITOR_LOG` levels on stderr, with repeated
//! lines limited per call site. A loop that fails fast (an accept loop with
//! its descriptors exhausted, a peer sending garbage) must not write
//! hundreds of megabytes a minute and fill the disk the database lives on:
//! each call site may log `PER_WINDOW` lines a second; the rest are
//! counted and summed up in one line when the site logs again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::Metadata;
use tracing::callsite::Identifier;
use tracing_subscriber::layer::{Context, Filter};

/// Lines one call site may log per window.
const PER_WINDOW: u32 = 20;
const WINDOW: Duration = Duration::from_secs(1);

/// Installs the subscriber for the whole process.
pub fn init() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let levels = EnvFilter::try_from_env("HALLMONITOR_LOG").unwrap_or_else(|_| "info".into());
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(tracing_subscriber::filter::FilterExt::and(
            levels,
            RepeatLimit::default(),
        ));
    tracing_subscriber::registry().with(lines).init();
}

/// A per-call-site limit on log lines (see the module).
#[derive(Default)]
pub struct RepeatLimit {
    sites: Mutex<HashMap<Identifier, Site>>,
}

struct Site {
    window_start: Instant,
    lines: u32,
    dropped: u64,
}

/// What to do with one line.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    Write,
    /// Write it, after saying how many lines of this site were dropped.
    WriteAfterDropping(u64),
    Drop,
}

impl RepeatLimit {
    pub fn admit(&self, site: Identifier, now: Instant) -> Admit {
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        let site = sites.entry(site).or_insert(Site {
            window_start: now,
            lines: 0,
            dropped: 0,
        });
        if now.saturating_duration_since(site.window_start) >= WINDOW {
            site.window_start = now;
            site.lines = 0;
        }
        if site.lines >= PER_WINDOW {
            site.dropped += 1;
            return Admit::Drop;
        }
        site.lines += 1;
        match std::mem::take(&mut site.dropped) {
            0 => Admit::Write,
            n => Admit::WriteAfterDropping(n),
        }
    }
}

impl<S> Filter<S> for RepeatLimit {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        if !meta.is_event() {
            return true;
        }
        match self.admit(meta.callsite(), Instant::now()) {
            Admit::Write => true,
            Admit::Drop => false,
            Admit::WriteAfterDropping(n) => {
                // Not through tracing: this runs inside its dispatch.
                eprintln!(
                    "{} WARN {}: {n} repeated log line(s) from {}:{} were dropped (more than {PER_WINDOW} a second)",
                    jiff::Timestamp::now(),
                    meta.target(),
                    meta.file().unwrap_or("?"),
                    meta.line().unwrap_or(0),
                );
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_site_logs_its_share_a_second_and_the_dropped_lines_are_counted() {
        let limit = RepeatLimit::default();
        let flood = tracing::callsite::Identifier(&FLOOD);
        let other = tracing::callsite::Identifier(&OTHER);
        let start = Instant::now();
        let written = (0..1000)
            .filter(|_| limit.admit(flood.clone(), start) != Admit::Drop)
            .count();
        assert_eq!(written, PER_WINDOW as usize);
        assert_eq!(limit.admit(other, start), Admit::Write, "sites are apart");
        assert_eq!(
            limit.admit(flood.clone(), start + WINDOW),
            Admit::WriteAfterDropping(1000 - u64::from(PER_WINDOW))
        );
        assert_eq!(limit.admit(flood, start + WINDOW), Admit::Write);
    }

    struct Site(#[allow(dead_code)] u8);
    impl tracing::Callsite for Site {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            unreachable!("not asked in these tests")
        }
    }
    static FLOOD: Site = Site(1);
    static OTHER: Site = Site(2);
}
