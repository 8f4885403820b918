//! The suspicious-activity policy and matching what the user is looking at
//! (window and tab titles) against it.
//!
//! A policy is TOML: rules with an id, a category, a severity 1–5, phrases,
//! exclusions (so "Anti-Bullying Week" does not trigger bullying) and a
//! scope (pupils, staff or all), plus exclusions for every rule. The
//! project's documented default is `policy/default.toml`; a site's policy
//! either replaces it or, with `extends = "default"`, adds to it (a rule
//! with a default rule's id replaces that rule; `disable` drops default
//! rules by id).
//!
//! This crate is shared: the collector validates a site's policy with it
//! before storing and sending it; the agent matches titles with it.
//!
//! Rules can be narrowed to groups of users (year groups, staff, SEN, as
//! the site's directory names them): a rule's `groups`, and per category
//! `[categories.<name>] groups` / `skip_groups`. `ignored_words` (pupils'
//! first names that collide with slang) do not fire: a phrase hit lying
//! wholly inside one does not count, while a longer phrase that includes
//! it still does (so one name cannot silence "pro ana").
//!
//! Matching is on normalised text: case folded, accents removed (NFKD),
//! common letter substitutions undone (`k1ll` → `kill`, `@` → `a`), and
//! everything that is not a letter or digit turned into one space, so
//! spacing and punctuation do not matter. Phrases are normalised the same
//! way and matched on word boundaries, all at once with one Aho-Corasick
//! automaton, never by a loop over rules. Ignored words are patterns of the
//! same automaton, so the title is still read once.

use std::collections::BTreeMap;
use std::path::Path;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use serde::Deserialize;

pub mod aup;
mod normalise;
pub use normalise::normalise;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default = "one")]
    version: u64,
    /// Exclusions that silence every rule.
    #[serde(default)]
    exclusions: Vec<String>,
    #[serde(default)]
    rules: Vec<RuleSpec>,
    /// "default": start from the project's default policy.
    #[serde(default)]
    extends: Option<toml::Spanned<String>>,
    /// Rule ids of the extended policy to leave out.
    #[serde(default)]
    disable: Vec<toml::Spanned<String>>,
    /// Minutes of earlier window titles sent with a capture (0: none).
    #[serde(default)]
    context_minutes: Option<toml::Spanned<i64>>,
    /// Words shown to the user when a capture is taken (absent: silent).
    #[serde(default)]
    capture_notice: Option<toml::Spanned<String>>,
    /// Words (pupils' first names…) blanked out of titles before matching.
    #[serde(default)]
    ignored_words: Vec<toml::Spanned<String>>,
    /// Per category: which groups its rules apply to.
    #[serde(default)]
    categories: BTreeMap<toml::Spanned<String>, CategorySpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CategorySpec {
    /// Only users in one of these groups (empty: everyone).
    #[serde(default)]
    groups: Vec<toml::Spanned<String>>,
    /// Never users in any of these groups.
    #[serde(default)]
    skip_groups: Vec<toml::Spanned<String>>,
}

fn one() -> u64 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    id: String,
    category: String,
    severity: u8,
    phrases: Vec<String>,
    #[serde(default)]
    exclusions: Vec<String>,
    #[serde(default)]
    scope: Scope,
    /// Only users in one of these groups (empty: everyone in scope).
    #[serde(default)]
    groups: Vec<toml::Spanned<String>>,
}

/// Whose activity a rule applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    #[default]
    All,
    Pupils,
    Staff,
}

/// Who is at the keyboard, as far as the agent knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserKind {
    Pupil,
    Staff,
}

/// The user whose screen is matched: staff or pupil, and the groups the
/// site's directory puts them in (normalised names, see [`group_name`]).
#[derive(Clone, Copy, Debug)]
pub struct User<'a> {
    pub kind: UserKind,
    pub groups: &'a [String],
}

impl User<'static> {
    /// A user in no group.
    pub fn without_groups(kind: UserKind) -> User<'static> {
        User { kind, groups: &[] }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub category: String,
    pub severity: u8,
    pub scope: Scope,
    pub audience: Audience,
}

/// Which groups a rule applies to, from the rule and its category; all
/// empty: everyone its scope allows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audience {
    /// The rule's `groups`: the user must be in one (empty: anyone).
    pub groups: Vec<String>,
    /// Its category's `groups`: the user must be in one (empty: anyone).
    pub category_groups: Vec<String>,
    /// Its category's `skip_groups`: a user in any is left out.
    pub skip_groups: Vec<String>,
}

impl Audience {
    pub fn includes(&self, groups: &[String]) -> bool {
        let in_any = |wanted: &[String]| wanted.iter().any(|g| groups.contains(g));
        (self.groups.is_empty() || in_any(&self.groups))
            && (self.category_groups.is_empty() || in_any(&self.category_groups))
            && !in_any(&self.skip_groups)
    }
}

impl Rule {
    /// Whether this rule applies to `user` (scope and groups).
    pub fn applies_to(&self, user: User<'_>) -> bool {
        let in_scope = matches!(
            (self.scope, user.kind),
            (Scope::All, _) | (Scope::Pupils, UserKind::Pupil) | (Scope::Staff, UserKind::Staff)
        );
        in_scope && self.audience.includes(user.groups)
    }
}

/// A rule that fired on a title.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match<'a> {
    pub rule: &'a Rule,
    /// The phrase as the policy writes it.
    pub phrase: &'a str,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct PolicyError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

/// Minutes of window-title context a capture carries unless the policy
/// says otherwise (`context_minutes`).
pub const DEFAULT_CONTEXT_MINUTES: u32 = 60;

/// The longest context a policy may ask for: a school day.
pub const MAX_CONTEXT_MINUTES: u32 = 8 * 60;

/// The longest `capture_notice`, in characters.
pub const MAX_CAPTURE_NOTICE_CHARS: usize = 200;

/// The longest group name, in characters (after normalising).
pub const MAX_GROUP_NAME_CHARS: usize = 40;

/// Most groups one list (a rule's, a category's) may name.
pub const MAX_GROUPS_PER_LIST: usize = 50;

/// Most `ignored_words` a policy may have, and the longest one.
pub const MAX_IGNORED_WORDS: usize = 2000;
pub const MAX_IGNORED_WORD_CHARS: usize = 60;

/// A group name as stored and compared: trimmed, lower case, runs of
/// spaces as one `-` ("Year 7" → "year-7"); only letters a–z, digits, `-`,
/// `_` and `.`; at most [`MAX_GROUP_NAME_CHARS`]. The directory import and
/// the policy both use it, so "Year 7" in one is `year-7` in the other.
pub fn group_name(raw: &str) -> Result<String, String> {
    let words: Vec<&str> = raw.split_whitespace().collect();
    if words.is_empty() {
        return Err("a group name is empty".into());
    }
    let name = words.join("-").to_lowercase();
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(*c)))
    {
        return Err(format!(
            "group '{}': '{}' is not allowed (letters a-z, digits, '-', '_', '.')",
            raw.trim(),
            bad.escape_default()
        ));
    }
    if name.chars().count() > MAX_GROUP_NAME_CHARS {
        return Err(format!(
            "group '{}' is longer than {MAX_GROUP_NAME_CHARS} characters",
            raw.trim()
        ));
    }
    Ok(name)
}

/// What a pattern of the phrase automaton is.
enum Pattern {
    /// A rule's phrase, as the policy writes it.
    Phrase { rule: usize, written: String },
    /// An ignored word: phrase hits lying wholly inside it do not count.
    Ignored,
}

pub struct Policy {
    pub version: u64,
    /// Minutes of earlier window titles (distinct, in memory in the
    /// helper only) sent with each capture; 0 sends none.
    pub context_minutes: u32,
    /// Shown to the user when a capture is taken; `None`: silent.
    pub capture_notice: Option<String>,
    rules: Vec<Rule>,
    /// Normalised, as matched.
    ignored_words: Vec<String>,
    /// Phrases and ignored words.
    phrases: AhoCorasick,
    /// For each pattern of `phrases`: what it is.
    patterns: Vec<Pattern>,
    exclusions: AhoCorasick,
    /// For each exclusion pattern: the rule it silences (None: all).
    exclusion_rule: Vec<Option<usize>>,
}

/// `site` on top of `base`: base rules first (replaced in place by a site
/// rule with the same id, dropped when disabled), then the site's new
/// rules; exclusions of both.
fn extend(
    base: PolicyFile,
    mut site: PolicyFile,
) -> Result<PolicyFile, (std::ops::Range<usize>, String)> {
    for disabled in &site.disable {
        if !base.rules.iter().any(|r| &r.id == disabled.get_ref()) {
            return Err((
                disabled.span(),
                format!(
                    "disable: the default policy has no rule '{}'",
                    disabled.get_ref()
                ),
            ));
        }
    }
    let mut rules = Vec::new();
    for rule in base.rules {
        if site.disable.iter().any(|d| d.get_ref() == &rule.id) {
            continue;
        }
        match site.rules.iter().position(|r| r.id == rule.id) {
            Some(at) => rules.push(site.rules.remove(at)),
            None => rules.push(rule),
        }
    }
    rules.append(&mut site.rules);
    let mut exclusions = base.exclusions;
    exclusions.append(&mut site.exclusions);
    let mut ignored_words = base.ignored_words;
    ignored_words.append(&mut site.ignored_words);
    // A site's category settings replace the default's for that category.
    let mut categories = base.categories;
    categories.append(&mut site.categories);
    Ok(PolicyFile {
        version: site.version,
        exclusions,
        rules,
        extends: None,
        disable: Vec::new(),
        context_minutes: site.context_minutes,
        capture_notice: site.capture_notice,
        ignored_words,
        categories,
    })
}

impl Policy {
    /// The project's default policy.
    pub fn default_policy() -> Policy {
        Policy::parse(DEFAULT_POLICY, Path::new("policy/default.toml"))
            .expect("the default policy is valid (tested)")
    }

    pub fn parse(text: &str, file: &Path) -> Result<Policy, PolicyError> {
        let file_name = file.display().to_string();
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let mut spec: PolicyFile = toml::from_str(text).map_err(|e| PolicyError {
            file: file_name.clone(),
            line: e.span().map(|s| line_of(s.start)),
            message: e.message().to_owned(),
        })?;
        let invalid = |message: String| PolicyError {
            file: file_name.clone(),
            line: None,
            message,
        };
        if let Some(base) = spec.extends.take() {
            if base.get_ref() != "default" {
                return Err(PolicyError {
                    file: file_name.clone(),
                    line: Some(line_of(base.span().start)),
                    message: format!(
                        "extends = \"{}\": the only policy to extend is \"default\"",
                        base.get_ref()
                    ),
                });
            }
            let default: PolicyFile =
                toml::from_str(DEFAULT_POLICY).expect("the default policy is valid (tested)");
            spec = extend(default, spec).map_err(|(span, message)| PolicyError {
                file: file_name.clone(),
                line: Some(line_of(span.start)),
                message,
            })?;
        } else if let Some(first) = spec.disable.first() {
            return Err(PolicyError {
                file: file_name.clone(),
                line: Some(line_of(first.span().start)),
                message: "disable needs extends = \"default\"".into(),
            });
        }
        let context_minutes = match &spec.context_minutes {
            None => DEFAULT_CONTEXT_MINUTES,
            Some(minutes) => u32::try_from(*minutes.get_ref())
                .ok()
                .filter(|m| *m <= MAX_CONTEXT_MINUTES)
                .ok_or_else(|| PolicyError {
                    file: file_name.clone(),
                    line: Some(line_of(minutes.span().start)),
                    message: format!(
                        "context_minutes = {}: must be 0 (no context) to {MAX_CONTEXT_MINUTES}",
                        minutes.get_ref()
                    ),
                })?,
        };
        let capture_notice = match &spec.capture_notice {
            None => None,
            Some(notice) => {
                Some(
                    check_notice(notice.get_ref()).map_err(|message| PolicyError {
                        file: file_name.clone(),
                        line: Some(line_of(notice.span().start)),
                        message,
                    })?,
                )
            }
        };
        let located = |span: std::ops::Range<usize>, message: String| PolicyError {
            file: file_name.clone(),
            line: Some(line_of(span.start)),
            message,
        };
        let group_list = |what: &str, list: &[toml::Spanned<String>]| {
            if list.len() > MAX_GROUPS_PER_LIST {
                return Err(located(
                    list[MAX_GROUPS_PER_LIST].span(),
                    format!("{what}: more than {MAX_GROUPS_PER_LIST} groups"),
                ));
            }
            list.iter()
                .map(|g| {
                    group_name(g.get_ref())
                        .map_err(|message| located(g.span(), format!("{what}: {message}")))
                })
                .collect::<Result<Vec<String>, PolicyError>>()
        };
        let mut categories: BTreeMap<&str, (Vec<String>, Vec<String>)> = BTreeMap::new();
        for (name, category) in &spec.categories {
            if !spec.rules.iter().any(|r| &r.category == name.get_ref()) {
                return Err(located(
                    name.span(),
                    format!("categories.{}: no rule has this category", name.get_ref()),
                ));
            }
            let what = format!("categories.{}", name.get_ref());
            categories.insert(
                name.get_ref(),
                (
                    group_list(&format!("{what}.groups"), &category.groups)?,
                    group_list(&format!("{what}.skip_groups"), &category.skip_groups)?,
                ),
            );
        }
        let mut rules = Vec::new();
        let mut phrase_patterns = Vec::new();
        let mut patterns = Vec::new();
        let mut exclusion_patterns = Vec::new();
        let mut exclusion_rule = Vec::new();
        let mut buffer = String::new();
        for exclusion in &spec.exclusions {
            normalise(exclusion, &mut buffer);
            if buffer.trim().is_empty() {
                return Err(invalid(format!(
                    "exclusion '{exclusion}' has no letters or digits"
                )));
            }
            exclusion_patterns.push(buffer.trim().to_owned());
            exclusion_rule.push(None);
        }
        for (n, rule) in spec.rules.iter().enumerate() {
            let name = format!("rules[{n}] ({})", rule.id);
            if rule.id.trim().is_empty() {
                return Err(invalid(format!("rules[{n}]: id is empty")));
            }
            if rules.iter().any(|r: &Rule| r.id == rule.id) {
                return Err(invalid(format!("{name}: id is used twice")));
            }
            if !(1..=5).contains(&rule.severity) {
                return Err(invalid(format!("{name}: severity must be 1 to 5")));
            }
            if rule.phrases.is_empty() {
                return Err(invalid(format!("{name}: no phrases")));
            }
            for phrase in &rule.phrases {
                normalise(phrase, &mut buffer);
                if buffer.trim().is_empty() {
                    return Err(invalid(format!(
                        "{name}: phrase '{phrase}' has no letters or digits"
                    )));
                }
                phrase_patterns.push(buffer.trim().to_owned());
                patterns.push(Pattern::Phrase {
                    rule: n,
                    written: phrase.clone(),
                });
            }
            for exclusion in &rule.exclusions {
                normalise(exclusion, &mut buffer);
                if buffer.trim().is_empty() {
                    return Err(invalid(format!(
                        "{name}: exclusion '{exclusion}' has no letters or digits"
                    )));
                }
                exclusion_patterns.push(buffer.trim().to_owned());
                exclusion_rule.push(Some(n));
            }
            let (category_groups, skip_groups) = categories
                .get(rule.category.as_str())
                .cloned()
                .unwrap_or_default();
            rules.push(Rule {
                id: rule.id.clone(),
                category: rule.category.clone(),
                severity: rule.severity,
                scope: rule.scope,
                audience: Audience {
                    groups: group_list(&format!("{name}: groups"), &rule.groups)?,
                    category_groups,
                    skip_groups,
                },
            });
        }
        if spec.ignored_words.len() > MAX_IGNORED_WORDS {
            return Err(located(
                spec.ignored_words[MAX_IGNORED_WORDS].span(),
                format!("ignored_words: more than {MAX_IGNORED_WORDS} words"),
            ));
        }
        let mut ignored_words = Vec::new();
        for word in &spec.ignored_words {
            let word_text = word.get_ref();
            if word_text.chars().count() > MAX_IGNORED_WORD_CHARS {
                return Err(located(
                    word.span(),
                    format!(
                        "ignored_words: '{word_text}' is longer than {MAX_IGNORED_WORD_CHARS} characters"
                    ),
                ));
            }
            normalise(word_text, &mut buffer);
            let normalised = buffer.trim();
            if normalised.is_empty() {
                return Err(located(
                    word.span(),
                    format!("ignored_words: '{word_text}' has no letters or digits"),
                ));
            }
            if !ignored_words.iter().any(|w| w == normalised) {
                ignored_words.push(normalised.to_owned());
                phrase_patterns.push(normalised.to_owned());
                patterns.push(Pattern::Ignored);
            }
        }
        let build = |patterns: &[String]| {
            AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                // A tenth of a DFA's memory (1.3 MiB against 13 MiB for
                // 10,000 phrases: the helper's budget is 15 MB) and as fast
                // or faster once a title uses many policy words, where the
                // big DFA misses the cache (BENCHMARKS.md).
                .kind(Some(AhoCorasickKind::ContiguousNFA))
                .build(patterns)
                .map_err(|e| invalid(format!("building the matcher: {e}")))
        };
        Ok(Policy {
            version: spec.version,
            context_minutes,
            capture_notice,
            rules,
            ignored_words,
            phrases: build(&phrase_patterns)?,
            patterns,
            exclusions: build(&exclusion_patterns)?,
            exclusion_rule,
        })
    }

    /// Bytes the matcher's automata use.
    pub fn memory_usage(&self) -> usize {
        self.phrases.memory_usage() + self.exclusions.memory_usage()
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The ignored words, normalised, in policy order.
    pub fn ignored_words(&self) -> &[String] {
        &self.ignored_words
    }

    /// The rules `title` triggers for this user (scope and groups), each
    /// once (first phrase found), in policy order. `buffer` is reused
    /// between calls.
    pub fn matches<'a>(
        &'a self,
        title: &str,
        user: User<'_>,
        buffer: &mut String,
    ) -> Vec<Match<'a>> {
        normalise(title, buffer);
        let bytes = buffer.as_bytes();
        // Patterns are unpadded (so the automaton's prefilter can skip
        // ahead); a hit counts only on word boundaries. The buffer starts
        // and ends with a space, so the neighbours exist.
        let whole_words = |start: usize, end: usize| bytes[start - 1] == b' ' && bytes[end] == b' ';
        // Phrase hits are kept until every ignored word is known: one
        // that ends later (a longer name) can still cover an earlier hit.
        let mut hits: Vec<(std::ops::Range<usize>, usize)> = Vec::new();
        let mut ignored: Vec<std::ops::Range<usize>> = Vec::new();
        for hit in self.phrases.find_overlapping_iter(buffer.as_str()) {
            if !whole_words(hit.start(), hit.end()) {
                continue;
            }
            match self.patterns[hit.pattern().as_usize()] {
                Pattern::Ignored => ignored.push(hit.range()),
                Pattern::Phrase { .. } => hits.push((hit.range(), hit.pattern().as_usize())),
            }
        }
        let mut fired: Vec<(usize, &'a str)> = Vec::new();
        for (range, pattern) in hits {
            // A hit that lies wholly inside an ignored word (the pupil's
            // name "Charlie", not the slang) does not count; a longer
            // phrase that merely includes it ("pro ana" with "Ana"
            // ignored) still does, so one name cannot silence a phrase.
            if ignored
                .iter()
                .any(|i| i.start <= range.start && range.end <= i.end)
            {
                continue;
            }
            let Pattern::Phrase { rule, written } = &self.patterns[pattern] else {
                continue;
            };
            if !fired.iter().any(|(r, _)| r == rule) && self.rules[*rule].applies_to(user) {
                fired.push((*rule, written));
            }
        }
        if fired.is_empty() {
            return Vec::new();
        }
        let mut silenced_all = false;
        let mut silenced: Vec<usize> = Vec::new();
        for hit in self.exclusions.find_overlapping_iter(buffer.as_str()) {
            if !whole_words(hit.start(), hit.end()) {
                continue;
            }
            match self.exclusion_rule[hit.pattern().as_usize()] {
                None => silenced_all = true,
                Some(rule) => silenced.push(rule),
            }
        }
        if silenced_all {
            return Vec::new();
        }
        fired.sort_by_key(|(rule, _)| *rule);
        fired
            .into_iter()
            .filter(|(rule, _)| !silenced.contains(rule))
            .map(|(rule, phrase)| Match {
                rule: &self.rules[rule],
                phrase,
            })
            .collect()
    }
}

/// A `capture_notice` as it will be shown: one line of at most
/// `MAX_CAPTURE_NOTICE_CHARS` characters, no control characters.
fn check_notice(notice: &str) -> Result<String, String> {
    let trimmed = notice.trim();
    if trimmed.is_empty() {
        return Err("capture_notice is empty (leave it out for no notice)".into());
    }
    if trimmed.chars().count() > MAX_CAPTURE_NOTICE_CHARS {
        return Err(format!(
            "capture_notice is longer than {MAX_CAPTURE_NOTICE_CHARS} characters"
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err("capture_notice must be one line without control characters".into());
    }
    Ok(trimmed.to_owned())
}

/// The group names a stored policy or acceptable-use document (`toml`,
/// already validated) gives a meaning: rules' `groups`, categories'
/// `groups` and `skip_groups`, audiences' `groups`; normalised as the
/// directory names them. The collector tells a device only about these
/// groups of its users, so a device never learns a group (SEN, say) that
/// changes nothing it does.
pub fn named_groups(toml: &str) -> std::collections::BTreeSet<String> {
    let mut named = std::collections::BTreeSet::new();
    let Ok(document) = toml.parse::<toml::Table>() else {
        return named;
    };
    let mut take = |list: Option<&toml::Value>| {
        for name in list
            .and_then(toml::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(toml::Value::as_str)
        {
            if let Ok(name) = group_name(name) {
                named.insert(name);
            }
        }
    };
    for section in ["rules", "audiences"] {
        for entry in document
            .get(section)
            .and_then(toml::Value::as_array)
            .into_iter()
            .flatten()
        {
            take(entry.get("groups"));
        }
    }
    for category in document
        .get("categories")
        .and_then(toml::Value::as_table)
        .into_iter()
        .flat_map(|t| t.values())
    {
        take(category.get("groups"));
        take(category.get("skip_groups"));
    }
    named
}

/// The project's default policy (documented in the file itself).
pub const DEFAULT_POLICY: &str = include_str!("../default.toml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_groups_a_document_names() {
        let policy = r#"
            ignored_words = ["sen"]
            [[rules]]
            id = "a"
            category = "gaming"
            severity = 1
            phrases = ["x"]
            groups = ["Year 7"]
            [categories.drugs]
            skip_groups = ["Sixth Form"]
            [categories.gaming]
            groups = ["year-8", "year 7"]
        "#;
        let named: Vec<String> = named_groups(policy).into_iter().collect();
        assert_eq!(named, ["sixth-form", "year-7", "year-8"]);
        let aup = "text = \"t\"\n[[audiences]]\ngroups = [\"SEN\", \"pupils\"]\ntext = \"p\"\n";
        let named: Vec<String> = named_groups(aup).into_iter().collect();
        assert_eq!(named, ["pupils", "sen"]);
        assert!(named_groups("not = [toml").is_empty());
        assert!(named_groups("").is_empty());
    }

    fn policy(text: &str) -> Policy {
        Policy::parse(text, Path::new("policy.toml")).unwrap()
    }

    const SAMPLE: &str = r#"
        exclusions = ["Safer Internet Day"]
        [[rules]]
        id = "bullying-1"
        category = "bullying"
        severity = 3
        phrases = ["kill yourself", "nobody likes you"]
        exclusions = ["anti-bullying week"]
        [[rules]]
        id = "self-harm-1"
        category = "self-harm"
        severity = 5
        phrases = ["kill myself", "self harm"]
        [[rules]]
        id = "staff-only"
        category = "adult"
        severity = 2
        phrases = ["casino"]
        scope = "staff"
    "#;

    #[test]
    fn table() {
        let p = policy(SAMPLE);
        let mut buffer = String::new();
        let cases: &[(&str, &str, UserKind, &[&str])] = &[
            (
                "plain phrase",
                "how to KILL MYSELF - Google Search",
                UserKind::Pupil,
                &["self-harm-1"],
            ),
            (
                "leetspeak",
                "k1ll mys3lf",
                UserKind::Pupil,
                &["self-harm-1"],
            ),
            (
                "accents and spacing",
                "sélf   HARM?! tips",
                UserKind::Pupil,
                &["self-harm-1"],
            ),
            (
                "punctuation between words",
                "self-harm",
                UserKind::Pupil,
                &["self-harm-1"],
            ),
            ("word boundary", "selfharmony music", UserKind::Pupil, &[]),
            (
                "inside another word",
                "skill myselfish",
                UserKind::Pupil,
                &[],
            ),
            ("harmless", "Year 8 maths homework", UserKind::Pupil, &[]),
            (
                "rule exclusion",
                "Anti-Bullying Week: nobody likes you? posters",
                UserKind::Pupil,
                &[],
            ),
            (
                "exclusion of one rule only",
                "Anti-Bullying Week and self harm",
                UserKind::Pupil,
                &["self-harm-1"],
            ),
            (
                "global exclusion",
                "Safer Internet Day: kill myself myths",
                UserKind::Pupil,
                &[],
            ),
            (
                "two rules",
                "nobody likes you, I want to kill myself",
                UserKind::Pupil,
                &["bullying-1", "self-harm-1"],
            ),
            ("scope staff, pupil", "online casino", UserKind::Pupil, &[]),
            (
                "scope staff, staff",
                "online casino",
                UserKind::Staff,
                &["staff-only"],
            ),
        ];
        for (name, title, user, want) in cases {
            let got: Vec<&str> = p
                .matches(title, User::without_groups(*user), &mut buffer)
                .iter()
                .map(|m| m.rule.id.as_str())
                .collect();
            assert_eq!(&got, want, "{name}: '{title}'");
        }
    }

    #[test]
    fn group_names_are_normalised_or_refused() {
        let forty = "a".repeat(40);
        let forty_one = "a".repeat(41);
        let cases: &[(&str, &str, Result<&str, &str>)] = &[
            ("spaces become one dash", "  Year 7 ", Ok("year-7")),
            ("tabs and runs of spaces", "Year\t \t7", Ok("year-7")),
            ("upper case", "SEN", Ok("sen")),
            (
                "dots and underscores",
                "staff_2026.support",
                Ok("staff_2026.support"),
            ),
            ("forty characters", &forty, Ok(&forty)),
            ("forty-one characters", &forty_one, Err("longer than 40")),
            ("empty", "", Err("empty")),
            ("only spaces", "   ", Err("empty")),
            (
                "the directory's separator",
                "year;7",
                Err("';' is not allowed"),
            ),
            ("not a slug letter", "élèves", Err("is not allowed")),
            ("a control character", "year\u{7}", Err("is not allowed")),
        ];
        for (name, raw, want) in cases {
            let got = group_name(raw);
            match (want, &got) {
                (Ok(want), Ok(got)) => assert_eq!(want, got, "{name}"),
                (Err(want), Err(got)) => assert!(got.contains(want), "{name}: {got}"),
                _ => panic!("{name}: want {want:?}, got {got:?}"),
            }
        }
    }

    const GROUPS: &str = r#"
        ignored_words = ["Charlie", "Mary Jane", "  "]
        [[rules]]
        id = "slang"
        category = "drugs"
        severity = 2
        phrases = ["charlie", "snow", "mary jane", "buy charlie"]
        [[rules]]
        id = "gaming-y7"
        category = "gaming"
        severity = 1
        phrases = ["fortnite"]
        groups = ["Year 7"]
        [[rules]]
        id = "loans-staff-y7"
        category = "money"
        severity = 1
        phrases = ["payday loan"]
        scope = "staff"
        groups = ["year-7"]
        [[rules]]
        id = "self-harm"
        category = "self-harm"
        severity = 5
        phrases = ["kill myself"]
        [[rules]]
        id = "self-harm-y8"
        category = "self-harm"
        severity = 4
        phrases = ["pro ana"]
        groups = ["year-8", "sen"]
        [[rules]]
        id = "dating"
        category = "adult"
        severity = 2
        phrases = ["dating site"]
        [categories.self-harm]
        groups = ["Year 7", "year-8"]
        [categories.adult]
        skip_groups = ["sixth-form"]
    "#;

    #[test]
    fn groups_and_ignored_words() {
        // The "  " ignored word has no letters: refused, so drop it here
        // (tested below) and check matching on the rest.
        let p = policy(&GROUPS.replace(", \"  \"]", "]"));
        let mut buffer = String::new();
        let g = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let (y7, y8, y9, sen, sixth, none) = (
            g(&["year-7"]),
            g(&["year-8"]),
            g(&["year-9"]),
            g(&["sen", "year-9"]),
            g(&["sixth-form", "year-7"]),
            g(&[]),
        );
        use UserKind::{Pupil, Staff};
        // (name, title, user kind, user groups, rules that fire)
        type Case<'a> = (&'a str, &'a str, UserKind, &'a [String], &'a [&'a str]);
        let cases: &[Case] = &[
            (
                "rule group: in it",
                "Fortnite battle pass",
                Pupil,
                &y7,
                &["gaming-y7"],
            ),
            (
                "rule group: not in it",
                "Fortnite battle pass",
                Pupil,
                &y8,
                &[],
            ),
            (
                "rule group: in no group",
                "Fortnite battle pass",
                Pupil,
                &none,
                &[],
            ),
            (
                "rule group and scope: staff in it",
                "payday loan",
                Staff,
                &y7,
                &["loans-staff-y7"],
            ),
            (
                "rule group and scope: pupil in it",
                "payday loan",
                Pupil,
                &y7,
                &[],
            ),
            (
                "category groups: in one",
                "how to kill myself",
                Pupil,
                &y8,
                &["self-harm"],
            ),
            (
                "category groups: in none",
                "how to kill myself",
                Pupil,
                &y9,
                &[],
            ),
            (
                "category groups: no groups at all",
                "how to kill myself",
                Pupil,
                &none,
                &[],
            ),
            (
                "rule and category groups: both",
                "pro ana tips",
                Pupil,
                &y8,
                &["self-harm-y8"],
            ),
            (
                "rule group but not category's",
                "pro ana tips",
                Pupil,
                &sen,
                &[],
            ),
            (
                "category's group but not rule's",
                "pro ana tips",
                Pupil,
                &y7,
                &[],
            ),
            ("skip group", "best dating site", Pupil, &sixth, &[]),
            ("not skipped", "best dating site", Pupil, &y9, &["dating"]),
            (
                "not skipped, no groups",
                "best dating site",
                Staff,
                &none,
                &["dating"],
            ),
            (
                "ignored word is a phrase",
                "Charlie's birthday party",
                Pupil,
                &none,
                &[],
            ),
            (
                "ignored word, leetspeak",
                "CH4RL1E - Google Docs",
                Pupil,
                &none,
                &[],
            ),
            (
                "ignored word, another phrase still fires",
                "Charlie: snow day!",
                Pupil,
                &none,
                &["slang"],
            ),
            (
                "ignored word, another rule still fires",
                "Charlie, how to kill myself",
                Pupil,
                &y7,
                &["self-harm"],
            ),
            (
                "a longer phrase holding an ignored word still fires",
                "buy charlie online",
                Pupil,
                &none,
                &["slang"],
            ),
            (
                "ignored word only as a whole word",
                "charlies angels snow",
                Pupil,
                &none,
                &["slang"],
            ),
            ("not the word itself", "charlies angels", Pupil, &none, &[]),
            (
                "ignored words of two words",
                "Mary Jane Smith homework",
                Pupil,
                &none,
                &[],
            ),
            (
                "half of an ignored pair",
                "jane is selling mary jane",
                Pupil,
                &none,
                &[],
            ),
        ];
        for (name, title, kind, groups, want) in cases {
            let user = User {
                kind: *kind,
                groups,
            };
            let got: Vec<&str> = p
                .matches(title, user, &mut buffer)
                .iter()
                .map(|m| m.rule.id.as_str())
                .collect();
            assert_eq!(&got, want, "{name}: '{title}'");
        }
        assert_eq!(p.ignored_words(), ["charlie", "mary jane"]);
        assert_eq!(p.rules()[1].audience.groups, ["year-7"], "normalised");
    }

    #[test]
    fn group_and_ignored_word_mistakes_name_the_line() {
        let rule = "[[rules]]\nid = \"a\"\ncategory = \"x\"\nseverity = 2\nphrases = [\"y\"]\n";
        let many_groups = format!(
            "{rule}groups = [{}]\n",
            (0..51)
                .map(|n| format!("\"g{n}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let many_words = format!(
            "ignored_words = [{}]\n",
            (0..2001)
                .map(|n| format!("\"w{n}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let long_word = format!("ignored_words = [\"{}\"]\n", "a".repeat(61));
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "empty group",
                format!("{rule}groups = [\"\"]\n"),
                "line 6: rules[0] (a): groups: a group name is empty",
            ),
            (
                "bad group",
                format!("{rule}groups = [\"year 7!\"]\n"),
                "line 6: rules[0] (a): groups: group 'year 7!': '!' is not allowed",
            ),
            (
                "too many groups",
                many_groups,
                "line 6: rules[0] (a): groups: more than 50 groups",
            ),
            (
                "ignored word without letters",
                GROUPS.to_owned(),
                "line 2: ignored_words: '  ' has no letters",
            ),
            (
                "long ignored word",
                long_word,
                "line 1: ignored_words: 'aaa",
            ),
            (
                "too many ignored words",
                many_words,
                "line 1: ignored_words: more than 2000 words",
            ),
            (
                "unknown category",
                format!("{rule}\n[categories.nope]\ngroups = [\"sen\"]\n"),
                "line 7: categories.nope: no rule has this category",
            ),
            (
                "empty category group",
                format!("{rule}\n[categories.x]\nskip_groups = [\"sen\", \" \"]\n"),
                "line 8: categories.x.skip_groups: a group name is empty",
            ),
            (
                "unknown category key",
                format!("{rule}\n[categories.x]\nwho = [\"sen\"]\n"),
                "line 8",
            ),
            (
                "groups not a list",
                format!("{rule}groups = \"sen\"\n"),
                "line 6",
            ),
        ];
        for (name, text, want) in cases {
            let err = Policy::parse(&text, Path::new("site.toml"))
                .err()
                .unwrap_or_else(|| panic!("{name}: parsed"))
                .to_string();
            assert!(
                err.starts_with("site.toml: ") && err.contains(want),
                "{name}: {err}"
            );
        }
        // Groups no directory knows yet are fine: the policy may come first.
        policy(&format!("{rule}groups = [\"year-13\"]\n"));
    }

    #[test]
    fn a_site_scopes_default_categories_and_adds_ignored_words() {
        let p = policy(
            "extends = \"default\"\nignored_words = [\"Kys\"]\n[categories.drugs]\nskip_groups = [\"staff\"]\n",
        );
        let mut buffer = String::new();
        let staff = ["staff".to_owned()];
        let ids = |title: &str, groups: &[String], buffer: &mut String| -> Vec<String> {
            let user = User {
                kind: UserKind::Pupil,
                groups,
            };
            p.matches(title, user, buffer)
                .iter()
                .map(|m| m.rule.id.clone())
                .collect()
        };
        assert!(
            ids("buy cocaine", &staff, &mut buffer).is_empty(),
            "skipped group"
        );
        assert_eq!(ids("buy cocaine", &[], &mut buffer), ["drugs"]);
        assert!(ids("kys", &[], &mut buffer).is_empty(), "ignored word");
        assert_eq!(ids("kys nobody likes you", &[], &mut buffer), ["bullying"]);
    }

    #[test]
    fn bad_policies_are_refused_with_file_and_line() {
        let cases = [
            (
                "[[rules]]\nid = \"a\"\ncategory = \"x\"\nseverity = 9\nphrases = [\"y\"]\n",
                "severity must be 1 to 5",
            ),
            (
                "[[rules]]\nid = \"a\"\ncategory = \"x\"\nseverity = 2\nphrases = []\n",
                "no phrases",
            ),
            (
                "[[rules]]\nid = \"a\"\ncategory = \"x\"\nseverity = 2\nphrases = [\"?!\"]\n",
                "has no letters",
            ),
            ("\n\n[[rules]]\nid = \"a\"\nbogus = 1\n", "line 5"),
        ];
        for (text, want) in cases {
            let err = Policy::parse(text, Path::new("/etc/hallmonitor/policy.toml"))
                .err()
                .expect(want)
                .to_string();
            assert!(err.starts_with("/etc/hallmonitor/policy.toml: "), "{err}");
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn context_minutes_and_capture_notice() {
        // (name, policy text, (context minutes, notice) or an error's words)
        type Case<'a> = (&'a str, &'a str, Result<(u32, Option<&'a str>), &'a str>);
        let cases: &[Case] = &[
            ("absent: an hour, silent", "", Ok((60, None))),
            (
                "zero turns context off",
                "context_minutes = 0\n",
                Ok((0, None)),
            ),
            ("a school day", "context_minutes = 480\n", Ok((480, None))),
            (
                "more than a day",
                "\ncontext_minutes = 481\n",
                Err("line 2: context_minutes = 481"),
            ),
            (
                "negative",
                "context_minutes = -1\n",
                Err("line 1: context_minutes = -1"),
            ),
            ("not a number", "context_minutes = \"60\"\n", Err("line 1")),
            (
                "a notice",
                "capture_notice = \"  This screen was recorded for safeguarding.  \"\n",
                Ok((60, Some("This screen was recorded for safeguarding."))),
            ),
            (
                "an empty notice",
                "\n\ncapture_notice = \" \"\n",
                Err("line 3: capture_notice is empty"),
            ),
            (
                "a notice on two lines",
                "capture_notice = \"a\\nb\"\n",
                Err("line 1: capture_notice must be one line"),
            ),
        ];
        for (name, text, want) in cases {
            let got = Policy::parse(text, Path::new("policy.toml"))
                .map(|p| (p.context_minutes, p.capture_notice))
                .map_err(|e| e.to_string());
            match (want, got) {
                (Ok((minutes, notice)), Ok((got_minutes, got_notice))) => {
                    assert_eq!(
                        (*minutes, notice.map(str::to_owned)),
                        (got_minutes, got_notice),
                        "{name}"
                    )
                }
                (Err(want), Err(got)) => assert!(got.contains(want), "{name}: {got}"),
                (want, got) => panic!("{name}: want {want:?}, got {got:?}"),
            }
        }
        let long = format!("capture_notice = \"{}\"\n", "a".repeat(201));
        assert!(Policy::parse(&long, Path::new("p.toml")).is_err());
        let extended =
            policy("extends = \"default\"\ncontext_minutes = 15\ncapture_notice = \"Seen\"\n");
        assert_eq!(extended.context_minutes, 15);
        assert_eq!(extended.capture_notice.as_deref(), Some("Seen"));
    }

    #[test]
    fn a_site_policy_extends_the_default() {
        let site = r#"
            extends = "default"
            version = 7
            disable = ["drugs"]
            exclusions = ["cabot drama club"]
            [[rules]]
            id = "self-harm-suicide"
            category = "self-harm"
            severity = 5
            phrases = ["zebra protocol"]
            [[rules]]
            id = "gambling"
            category = "gambling"
            severity = 2
            phrases = ["online casino"]
        "#;
        let p = policy(site);
        let default = Policy::default_policy();
        assert_eq!(p.version, 7);
        assert_eq!(
            p.rules().len(),
            default.rules().len() - 1 + 1,
            "one dropped, one added"
        );
        let mut buffer = String::new();
        let ids = |title: &str, buffer: &mut String| -> Vec<String> {
            p.matches(title, User::without_groups(UserKind::Pupil), buffer)
                .iter()
                .map(|m| m.rule.id.clone())
                .collect()
        };
        assert_eq!(
            ids("zebra protocol", &mut buffer),
            ["self-harm-suicide"],
            "replaced rule"
        );
        assert!(
            ids("how to kill myself", &mut buffer).is_empty(),
            "its old phrases went with it"
        );
        assert_eq!(ids("online casino", &mut buffer), ["gambling"], "new rule");
        assert!(ids("buy cocaine", &mut buffer).is_empty(), "disabled");
        assert_eq!(
            ids("where to buy a zombie knife", &mut buffer),
            ["violence-weapons"],
            "untouched rule"
        );
        assert!(
            ids("Anti-Bullying Week nobody likes you", &mut buffer).is_empty(),
            "default exclusions kept"
        );
        assert!(
            ids("cabot drama club: online casino night", &mut buffer).is_empty(),
            "site exclusions added"
        );
    }

    #[test]
    fn extension_mistakes_name_the_line() {
        let cases = [
            ("extends = \"strict\"\n", "line 1", "only policy to extend"),
            (
                "\nextends = \"default\"\ndisable = [\"no-such-rule\"]\n",
                "line 3",
                "no rule 'no-such-rule'",
            ),
            ("disable = [\"drugs\"]\n", "line 1", "needs extends"),
        ];
        for (text, line, message) in cases {
            let err = Policy::parse(text, Path::new("site.toml"))
                .err()
                .expect(message)
                .to_string();
            assert!(
                err.contains(line) && err.contains(message),
                "{message}: {err}"
            );
        }
    }

    #[test]
    fn the_default_policy_loads_and_covers_the_categories() {
        let p = Policy::parse(DEFAULT_POLICY, Path::new("policy.default.toml")).unwrap();
        for category in [
            "self-harm",
            "bullying",
            "radicalisation",
            "adult",
            "violence",
            "drugs",
        ] {
            assert!(
                p.rules().iter().any(|r| r.category == category),
                "{category}"
            );
        }
        let mut buffer = String::new();
        assert!(
            p.matches(
                "Anti-Bullying Week assembly",
                User::without_groups(UserKind::Pupil),
                &mut buffer
            )
            .is_empty()
        );
        assert!(
            !p.matches(
                "how to kill myself",
                User::without_groups(UserKind::Pupil),
                &mut buffer
            )
            .is_empty()
        );
    }

    /// TOML-ish lines from the keys a policy has, with values that are
    /// sometimes right, so generated files get past the TOML parser.
    fn policy_lines() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::string::string_regex(
            "(\\[\\[rules\\]\\]\n|id = \"[a-z-]{0,4}\"\n|category = \"[a-z]{0,3}\"\n|severity = -?[0-9]{1,3}\n|phrases = \\[(\"[^\"\\\\]{0,6}\",? ?){0,3}\\]\n|exclusions = \\[\"[^\"\\\\]{0,6}\"\\]\n|scope = \"(all|pupils|staff|x)\"\n|extends = \"(default|strict)\"\n|disable = \\[\"(drugs|bullying|nope)\"\\]\n|version = [0-9]{1,3}\n|groups = \\[(\"[^\"\\\\]{0,6}\",? ?){0,3}\\]\n|ignored_words = \\[(\"[^\"\\\\]{0,6}\",? ?){0,3}\\]\n|\\[categories\\.[a-z]{0,3}\\]\n|skip_groups = \\[\"[^\"\\\\]{0,6}\"\\]\n|\\PC{0,8}\n){0,10}",
        )
        .expect("a valid expression")
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(256))]

        /// Any text is a policy or an error naming the file (and a line
        /// that exists); whatever parses matches any title without panicking.
        #[test]
        fn any_text_parses_or_is_refused_with_the_file(
            text in proptest::prop_oneof![proptest::arbitrary::any::<String>(), policy_lines()],
            title in "\\PC{0,40}",
        ) {
            match Policy::parse(&text, Path::new("site.toml")) {
                Ok(p) => {
                    let mut buffer = String::new();
                    for m in p.matches(&title, User { kind: UserKind::Staff, groups: &["year-7".to_owned()] }, &mut buffer) {
                        proptest::prop_assert!((1..=5).contains(&m.rule.severity));
                    }
                }
                Err(e) => {
                    proptest::prop_assert!(e.to_string().starts_with("site.toml: "), "{}", e);
                    if let Some(line) = e.line {
                        proptest::prop_assert!(line >= 1 && line <= text.lines().count() + 1, "{}", e);
                    }
                }
            }
        }

        /// The default policy matches any title without panicking (titles
        /// are whatever a web page calls itself).
        #[test]
        fn any_title_is_matched(title in proptest::arbitrary::any::<String>()) {
            let p = default_policy_once();
            let mut buffer = String::new();
            let _ = p.matches(&title, User::without_groups(UserKind::Pupil), &mut buffer);
        }
    }

    fn default_policy_once() -> &'static Policy {
        static DEFAULT: std::sync::LazyLock<Policy> =
            std::sync::LazyLock::new(Policy::default_policy);
        &DEFAULT
    }
}
