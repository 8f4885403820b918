//! `Policy::parse` on any text, then matching a title with what it built.
//! Input: the policy text, a NUL, the title (no NUL: no title). A policy
//! that is refused is matched with the project's default instead, so titles
//! are fuzzed either way.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use hallmonitor_policy::{Policy, User, UserKind};
use libfuzzer_sys::fuzz_target;

static DEFAULT: LazyLock<Policy> = LazyLock::new(Policy::default_policy);

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (policy_text, title) = text.split_once('\0').unwrap_or((&text, ""));
    let parsed = Policy::parse(policy_text, Path::new("fuzz.toml"));
    let policy = match &parsed {
        Ok(policy) => policy,
        Err(e) => {
            assert!(e.to_string().starts_with("fuzz.toml: "), "{e}");
            &DEFAULT
        }
    };
    let mut buffer = String::new();
    let some: &[String] = &["year-7".to_owned(), "sen".to_owned()];
    let none: &[String] = &[];
    for kind in [UserKind::Pupil, UserKind::Staff] {
        for groups in [some, none] {
            for m in policy.matches(title, User { kind, groups }, &mut buffer) {
                assert!((1..=5).contains(&m.rule.severity));
            }
        }
    }
});
