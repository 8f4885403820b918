//! False positives teach the policy: from a capture the DSL calls "not a
//! concern", an exclusion for the capture's rule (its matched phrase, its
//! window title, or the website its browser title names) added to the
//! site's policy text as a new version.
//!
//! `with_exclusion` is the pure part: it edits the text in place
//! (`toml_edit`, so the site's comments and layout stay and the policy
//! history's diff shows just the change). A rule the site's text does not
//! hold but takes from the project's default (`extends = "default"`, or
//! no text at all) is copied from the default with the exclusion added:
//! a site rule with the same id replaces the default's. The result is
//! still checked by `policies::save` with the agents' parser before it is
//! stored. Exclusions are per rule, never global: excluding a title from
//! the bullying rule must not silence self-harm on the same page.

use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, value};

use crate::model::CaptureRow;

/// What of a capture is excluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExclusionKind {
    /// The phrase that matched: the rule no longer fires on titles that
    /// hold it.
    Phrase,
    /// The whole window title.
    Title,
    /// The website a browser's title names ("… - BBC News - Mozilla
    /// Firefox" → "BBC News").
    Website,
}

impl ExclusionKind {
    pub const ALL: [ExclusionKind; 3] = [
        ExclusionKind::Phrase,
        ExclusionKind::Title,
        ExclusionKind::Website,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExclusionKind::Phrase => "phrase",
            ExclusionKind::Title => "title",
            ExclusionKind::Website => "website",
        }
    }

    pub fn parse(text: &str) -> Option<ExclusionKind> {
        ExclusionKind::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// The button's words.
    pub fn label(self) -> &'static str {
        match self {
            ExclusionKind::Phrase => "exclude this phrase",
            ExclusionKind::Title => "exclude this window title",
            ExclusionKind::Website => "exclude this site",
        }
    }

    /// The text to exclude from this capture, when it has one.
    pub fn text_of(self, capture: &CaptureRow) -> Option<String> {
        if capture.kind != "snapshot" || capture.rule_id.is_empty() {
            return None;
        }
        let text = match self {
            ExclusionKind::Phrase => capture.matched_text.trim().to_owned(),
            ExclusionKind::Title => capture.window_title.trim().to_owned(),
            ExclusionKind::Website => website_of(&capture.window_title)?,
        };
        // The policy refuses an exclusion without letters or digits.
        text.chars().any(char::is_alphanumeric).then_some(text)
    }
}

/// Browsers' names as they end a window title.
const BROWSERS: &[&str] = &[
    "mozilla firefox",
    "firefox",
    "google chrome",
    "chromium",
    "microsoft edge",
    "microsoft\u{200b} edge",
    "safari",
    "brave",
    "opera",
    "vivaldi",
];

/// The website a browser's window title names: the part before the
/// browser's name ("Page - Site - Browser" → "Site"). None when the title
/// is not a browser's or names no site.
pub fn website_of(title: &str) -> Option<String> {
    let joined = [" — ", " – ", " | "]
        .iter()
        .fold(title.to_owned(), |t, separator| t.replace(separator, " - "));
    let parts: Vec<&str> = joined
        .split(" - ")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let (browser, rest) = parts.split_last()?;
    if !BROWSERS.contains(&browser.to_lowercase().as_str()) {
        return None;
    }
    // "Page - Site - Browser": the site is the last part before the
    // browser; "Page - Browser" names no site.
    match rest {
        [_, .., site] => Some((*site).to_owned()),
        _ => None,
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExclusionError {
    #[error("the site's policy is not valid TOML: {0}")]
    NotToml(String),
    #[error(
        "rule '{0}' is in neither the site's policy nor the default it extends; edit the policy by hand"
    )]
    NoSuchRule(String),
    #[error("the site's policy disables rule '{0}'")]
    Disabled(String),
    #[error("rule '{rule}' already excludes \"{text}\"")]
    AlreadyExcluded { rule: String, text: String },
}

fn add_to(rule: &mut Table, rule_id: &str, text: &str) -> Result<(), ExclusionError> {
    let exclusions = rule
        .entry("exclusions")
        .or_insert(value(Array::new()))
        .as_array_mut()
        .ok_or_else(|| {
            ExclusionError::NotToml(format!("rule '{rule_id}': exclusions is not a list"))
        })?;
    if exclusions.iter().any(|v| v.as_str() == Some(text)) {
        return Err(ExclusionError::AlreadyExcluded {
            rule: rule_id.to_owned(),
            text: text.to_owned(),
        });
    }
    exclusions.push(text);
    Ok(())
}

fn id_of(table: &Table) -> Option<&str> {
    table.get("id").and_then(Item::as_str)
}

/// The site's policy text with `text` added to the exclusions of rule
/// `rule_id` (see the module's docs). `site_text` empty: the project's
/// default.
pub fn with_exclusion(
    site_text: &str,
    default_text: &str,
    rule_id: &str,
    text: &str,
    note: &str,
) -> Result<String, ExclusionError> {
    let source = if site_text.trim().is_empty() {
        "extends = \"default\"\n"
    } else {
        site_text
    };
    let mut doc: DocumentMut = source
        .parse()
        .map_err(|e: toml_edit::TomlError| ExclusionError::NotToml(e.to_string()))?;
    let mut found = false;
    if let Some(rules) = doc.get_mut("rules").and_then(Item::as_array_of_tables_mut) {
        for rule in rules.iter_mut().filter(|t| id_of(t) == Some(rule_id)) {
            add_to(rule, rule_id, text)?;
            found = true;
        }
    }
    if found {
        return Ok(doc.to_string());
    }
    if doc.get("extends").and_then(Item::as_str) != Some("default") {
        return Err(ExclusionError::NoSuchRule(rule_id.to_owned()));
    }
    let disabled = doc
        .get("disable")
        .and_then(Item::as_array)
        .is_some_and(|d| d.iter().any(|v| v.as_str() == Some(rule_id)));
    if disabled {
        return Err(ExclusionError::Disabled(rule_id.to_owned()));
    }
    let default: DocumentMut = default_text
        .parse()
        .map_err(|e: toml_edit::TomlError| ExclusionError::NotToml(e.to_string()))?;
    let Some(mut rule) = default
        .get("rules")
        .and_then(Item::as_array_of_tables)
        .and_then(|rules| rules.iter().find(|t| id_of(t) == Some(rule_id)))
        .cloned()
    else {
        return Err(ExclusionError::NoSuchRule(rule_id.to_owned()));
    };
    add_to(&mut rule, rule_id, text)?;
    rule.set_position(None);
    rule.decor_mut().set_prefix(format!(
        "\n# Rule '{rule_id}' of the default policy, with an exclusion: {}\n",
        note.replace(['\n', '\r'], " ")
    ));
    match doc.get_mut("rules").and_then(Item::as_array_of_tables_mut) {
        Some(rules) => rules.push(rule),
        None => {
            let mut rules = ArrayOfTables::new();
            rules.push(rule);
            doc.insert("rules", Item::ArrayOfTables(rules));
        }
    }
    Ok(doc.to_string())
}

/// The policy version's comment: why, from which capture (no matched
/// text: the version's diff shows it to whoever may read the policy).
pub fn comment(kind: ExclusionKind, rule_id: &str, capture: i64, incident: i64) -> String {
    format!(
        "Not a concern (capture #{capture}, incident #{incident}): {} from rule '{rule_id}'",
        kind.label()
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use hallmonitor_policy::{DEFAULT_POLICY, Policy, User, UserKind};

    use super::*;

    fn fires(text: &str, title: &str) -> Vec<String> {
        let policy = Policy::parse(text, Path::new("t.toml")).unwrap();
        let mut buffer = String::new();
        policy
            .matches(title, User::without_groups(UserKind::Pupil), &mut buffer)
            .iter()
            .map(|m| m.rule.id.clone())
            .collect()
    }

    #[test]
    fn websites_of_browser_titles() {
        let cases = [
            (
                "page, site, browser",
                "kys meme - Reddit - Mozilla Firefox",
                Some("Reddit"),
            ),
            (
                "chrome",
                "nobody likes you | Chat - Google Chrome",
                Some("Chat"),
            ),
            ("no site", "nobody likes you - Mozilla Firefox", None),
            ("not a browser", "nobody likes you - Notes - gedit", None),
            ("no separators", "kys", None),
        ];
        for (name, title, site) in cases {
            assert_eq!(website_of(title).as_deref(), site, "{name}");
        }
    }

    #[test]
    fn an_exclusion_is_added_where_the_rule_is() {
        let own = "# Cabot's policy\nversion = 3\n\n[[rules]]\nid = \"cabot-1\" # ours\ncategory = \"bullying\"\nseverity = 2\nphrases = [\"loser\"]\n";
        // (name, site text, rule, text, result contains, then the title no longer fires)
        let cases = [
            (
                "the site's own rule, no exclusions yet",
                own,
                "cabot-1",
                "Drama club loser game",
                "exclusions = [\"Drama club loser game\"]",
            ),
            (
                "a default rule, no site text",
                "",
                "bullying",
                "Chat",
                "extends = \"default\"",
            ),
            (
                "a default rule, site extends it",
                "extends = \"default\"\nexclusions = [\"x\"]\n",
                "bullying",
                "Chat",
                "[[rules]]",
            ),
        ];
        for (name, site, rule, text, contains) in cases {
            let new = with_exclusion(site, DEFAULT_POLICY, rule, text, "capture #4").unwrap();
            assert!(new.contains(contains), "{name}: {new}");
            // Comments and the rest kept.
            if !site.is_empty() {
                assert!(
                    new.starts_with(site.lines().next().unwrap()),
                    "{name}: {new}"
                );
            }
            let before = if site.is_empty() {
                DEFAULT_POLICY
            } else {
                site
            };
            let title = format!("{text} loser nobody likes you - Chat - Mozilla Firefox");
            assert!(
                fires(before, &title).iter().any(|r| r == rule),
                "{name}: fired before"
            );
            assert!(
                !fires(&new, &title).iter().any(|r| r == rule),
                "{name}: still fires: {new}"
            );
            // Other rules untouched.
            assert_eq!(
                fires(&new, "how to self harm").len(),
                fires(before, "how to self harm").len(),
                "{name}"
            );
        }
        // The copied default rule says where it came from.
        let new = with_exclusion("", DEFAULT_POLICY, "bullying", "Chat", "capture #4").unwrap();
        assert!(
            new.contains("# Rule 'bullying' of the default policy, with an exclusion: capture #4"),
            "{new}"
        );
        // A second exclusion on the copied rule goes into it.
        let again =
            with_exclusion(&new, DEFAULT_POLICY, "bullying", "Forum", "capture #5").unwrap();
        assert_eq!(again.matches("[[rules]]").count(), 1, "{again}");
        assert!(again.contains("\"Chat\", \"Forum\""), "{again}");
    }

    #[test]
    fn refusals() {
        let standalone = "[[rules]]\nid = \"a\"\ncategory = \"drugs\"\nseverity = 2\nphrases = [\"weed\"]\nexclusions = [\"garden\"]\n";
        let cases = [
            ("not toml", "[[rules", "a", "x", "not valid TOML"),
            (
                "a rule the site does not have and no default",
                standalone,
                "bullying",
                "x",
                "neither",
            ),
            (
                "already excluded",
                standalone,
                "a",
                "garden",
                "already excludes",
            ),
            (
                "disabled",
                "extends = \"default\"\ndisable = [\"bullying\"]\n",
                "bullying",
                "x",
                "disables",
            ),
            ("no such rule anywhere", "", "nope", "x", "neither"),
        ];
        for (name, site, rule, text, error) in cases {
            let got = with_exclusion(site, DEFAULT_POLICY, rule, text, "n").unwrap_err();
            assert!(got.to_string().contains(error), "{name}: {got}");
        }
    }

    #[test]
    fn a_toml_special_title_is_quoted() {
        let text = "say \"hi\" \\ [x] = y";
        let new = with_exclusion("", DEFAULT_POLICY, "bullying", text, "n").unwrap();
        Policy::parse(&new, Path::new("t.toml")).unwrap();
        let doc: DocumentMut = new.parse().unwrap();
        let rule = doc["rules"]
            .as_array_of_tables()
            .unwrap()
            .iter()
            .next()
            .unwrap();
        let last = rule["exclusions"]
            .as_array()
            .unwrap()
            .iter()
            .last()
            .unwrap();
        assert_eq!(last.as_str(), Some(text));
    }
}
