//! `policy`: matching window titles against a large suspicious-activity
//! policy.
//!
//! ```text
//! policy [--phrases 10000] [--titles 2000000]
//! ```
//!
//! Builds a policy of `--phrases` two- and three-word phrases in 100 rules
//! (deterministic, drawn from a 3,000-word vocabulary), then matches
//! `--titles` window titles of 40–90 characters (mixed case, punctuation,
//! 1 in 100 holding a phrase, 1 in 50 with accents) and prints titles per
//! second. The real `Policy` is used, normalisation included.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use clap::Parser;
use hallmonitor_policy::{Policy, User, UserKind};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    phrases: usize,
    #[arg(long, default_value_t = 2_000_000)]
    titles: usize,
    /// Percentage of title words taken from the policy's own vocabulary
    /// (the rest from a separate one, as ordinary titles are mostly words
    /// no phrase starts with). 100 is the adversarial case.
    #[arg(long, default_value_t = 10)]
    overlap: usize,
}

struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % below as u64) as usize
    }
}

fn word(n: usize, syllables: &[&str; 16]) -> String {
    let mut w = String::new();
    let mut n = n + 17;
    while n > 0 {
        w.push_str(syllables[n % 16]);
        n /= 16;
    }
    w
}

const POLICY_SYLLABLES: [&str; 16] = [
    "ka", "lo", "mi", "re", "to", "su", "na", "vi", "pe", "do", "ga", "zu", "bri", "sto", "wen",
    "qua",
];
const TITLE_SYLLABLES: [&str; 16] = [
    "the", "and", "for", "ing", "ment", "ion", "er", "al", "ly", "ou", "ch", "sh", "th", "ow",
    "ex", "im",
];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rng = Lcg(3);
    let vocabulary: Vec<String> = (0..3_000).map(|n| word(n, &POLICY_SYLLABLES)).collect();
    let ordinary: Vec<String> = (0..3_000).map(|n| word(n, &TITLE_SYLLABLES)).collect();
    let phrases: Vec<String> = (0..args.phrases)
        .map(|_| {
            let len = 2 + rng.next(2);
            (0..len)
                .map(|_| vocabulary[rng.next(vocabulary.len())].clone())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let mut toml = String::from("version = 1\n");
    for (rule, chunk) in phrases.chunks(args.phrases.div_ceil(100)).enumerate() {
        toml.push_str(&format!(
            "[[rules]]\nid = \"r{rule}\"\ncategory = \"c{}\"\nseverity = {}\nphrases = {:?}\nexclusions = [\"awareness week {rule}\"]\n",
            rule % 6,
            1 + rule % 5,
            chunk
        ));
    }
    let started = Instant::now();
    let policy = Policy::parse(&toml, Path::new("bench-policy.toml"))?;
    println!(
        "policy: built {} phrases in {} rules in {:.0} ms; matcher memory {:.1} MiB",
        args.phrases,
        policy.rules().len(),
        started.elapsed().as_secs_f64() * 1e3,
        policy.memory_usage() as f64 / 1048576.0
    );
    let titles: Vec<String> = (0..10_000)
        .map(|n| {
            let mut t = String::new();
            while t.len() < 40 + rng.next(50) {
                let w = if rng.next(100) < args.overlap {
                    &vocabulary[rng.next(vocabulary.len())]
                } else {
                    &ordinary[rng.next(ordinary.len())]
                };
                if n % 3 == 0 {
                    t.push_str(&w.to_uppercase());
                } else {
                    t.push_str(w);
                }
                t.push_str([" ", " - ", ": ", ", "][rng.next(4)]);
            }
            if n % 100 == 0 {
                t.push_str(&phrases[rng.next(phrases.len())]);
            }
            if n % 50 == 0 {
                t.push_str(" café résumé");
            }
            t.push_str(" — Mozilla Firefox");
            t
        })
        .collect();
    let mut buffer = String::new();
    let mut hits = 0usize;
    let started = Instant::now();
    for n in 0..args.titles {
        hits += policy
            .matches(
                black_box(&titles[n % titles.len()]),
                User::without_groups(UserKind::Pupil),
                &mut buffer,
            )
            .len();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "policy: {} titles ({}% of words from the policy's vocabulary) against {} phrases in {:.2} s = {:.0} titles/s ({} matches)",
        args.titles,
        args.overlap,
        args.phrases,
        secs,
        args.titles as f64 / secs,
        hits
    );
    Ok(())
}
