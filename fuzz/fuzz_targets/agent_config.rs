//! The agent's configuration file: `AgentConfig::parse`, then the checks
//! `load` applies and the accessors the daemon calls on the result.
#![no_main]

use std::path::Path;

use hallmonitor_agent::config::{AgentConfig, split_host_port};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // read_to_string refuses it before parsing
    };
    let _ = split_host_port(text);
    let path = Path::new("agent.toml");
    match AgentConfig::parse(text, path) {
        Ok(config) => {
            if let Err(e) = config.validate(path) {
                assert!(e.to_string().starts_with("agent.toml: "), "{e}");
            }
            let _ = config.enroll_address();
            let _ = config.ca_fingerprint();
            let _ = config.mfa.compiled();
            let _ = config.enforcement.marker_path(&config.data_dir);
        }
        Err(e) => assert!(e.to_string().starts_with("agent.toml: "), "{e}"),
    }
});
