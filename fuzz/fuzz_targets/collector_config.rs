//! The collector's configuration file: `CollectorConfig::parse` (which
//! validates), then what the rules and notifier read from the result.
#![no_main]

use std::path::Path;

use hallmonitor_collector::config::CollectorConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // read_to_string refuses it before parsing
    };
    match CollectorConfig::parse(text, Path::new("collector.toml")) {
        Ok(config) => {
            for site in config
                .sites
                .keys()
                .map(String::as_str)
                .chain(["no such site"])
            {
                let _ = config.activity_rule(site);
                let _ = config.lock_stale_sessions(site);
            }
            let _ = config.mfa.thresholds();
            assert_eq!(
                config.mfa.staff_patterns().len(),
                config.mfa.staff_accounts.len()
            );
        }
        Err(e) => assert!(e.to_string().starts_with("collector.toml: "), "{e}"),
    }
});
