//! The agent's authentication-log reader: each line as a system log line
//! and as a line of the PAM hook's own log, with the default patterns; and
//! each line as a journal entry (`journalctl --output=json`).
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use hallmonitor_agent::authlog::{Pattern, journal, parse_line};
use hallmonitor_agent::config::MfaConfig;
use jiff::Timestamp;
use libfuzzer_sys::fuzz_target;

static PATTERNS: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    MfaConfig::default()
        .compiled()
        .expect("the defaults compile")
});

fuzz_target!(|data: &[u8]| {
    let now: Timestamp = "2026-11-24T12:00:00Z".parse().unwrap();
    // The reader decodes lines lossily and strips the line ending.
    let text = String::from_utf8_lossy(data);
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        for log in [
            "/var/log/auth.log",
            "/var/lib/hallmonitor-agent/mfa-hook.log",
        ] {
            if let Some((account, _method, _at)) = parse_line(Path::new(log), line, &PATTERNS, now)
            {
                assert!(!account.is_empty());
            }
        }
        if let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) {
            let _ = journal::entry_accepted(&entry, &PATTERNS);
        }
    }
});
