//! The site directory CSV import, `directory::parse_directory`.
#![no_main]

use hallmonitor_collector::directory::parse_directory;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_directory(data, "fuzz.csv") {
        Ok(accounts) => {
            for a in accounts {
                assert!(!a.username.is_empty() && !a.username.contains(char::is_whitespace));
            }
        }
        Err(e) => assert!(e.to_string().starts_with("fuzz.csv: "), "{e}"),
    }
});
