//! The identity-provider sign-in imports, `signins::parse`: the first byte
//! chooses the format (Entra CSV, Entra JSON, Google CSV), the rest is the
//! file.
#![no_main]

use hallmonitor_collector::signins::{SigninFormat, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((first, file)) = data.split_first() else {
        return;
    };
    let format = match first % 3 {
        0 => SigninFormat::EntraCsv,
        1 => SigninFormat::EntraJson,
        _ => SigninFormat::GoogleCsv,
    };
    match parse(format, file, "fuzz.export", jiff::Timestamp::MAX) {
        Ok(rows) => {
            for row in rows {
                assert!(!row.external_id.is_empty());
            }
        }
        Err(e) => assert!(e.to_string().starts_with("fuzz.export: "), "{e}"),
    }
});
