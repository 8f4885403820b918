//! Sites' suspicious-activity policies: checked with the same parser the
//! agents use before anything is stored, kept as numbered versions, and
//! sent to agents over their streams (`ingest::dispatch_policies`).
//!
//! Saving a text identical to the newest version changes nothing; saving
//! the empty text (`reset`) returns the site to the project's default.
//! Every save is audited with who did it.

use std::path::Path;

use jiff::Timestamp;
use serde_json::json;

use crate::model::Site;
use crate::render::Format;
use crate::store::{PolicyStore, SitePolicy};

#[derive(Debug, thiserror::Error)]
pub enum PolicySaveError {
    /// The text does not parse: file, line and reason.
    #[error(transparent)]
    Invalid(#[from] hallmonitor_policy::PolicyError),
    #[error(
        "{file}: {size} bytes; a policy may be at most {MAX_POLICY_BYTES} bytes (agents receive it in one message)"
    )]
    TooLarge { file: String, size: usize },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The largest policy text accepted: it travels to agents in one stream
/// message (the agent accepts up to 16 MiB), and a 10,000-phrase policy is
/// about 300 KB.
pub const MAX_POLICY_BYTES: usize = 4 * 1024 * 1024;

/// What saving did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Saved {
    New(u64),
    /// The newest version already has this text.
    Unchanged(u64),
}

/// Who saves a policy, for its audit row: the person, and where from (a
/// browser's address, or "cli").
#[derive(Clone, Copy, Debug)]
pub struct Author<'a> {
    pub name: &'a str,
    pub address: &'a str,
}

/// Checks `text` (read from `file`, named in errors) and stores it as the
/// site's next version. Empty text means the project's default.
pub async fn save(
    store: &dyn PolicyStore,
    site: &Site,
    text: &str,
    file: &Path,
    comment: &str,
    author: Author<'_>,
    at: Timestamp,
) -> Result<Saved, PolicySaveError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(PolicySaveError::TooLarge {
            file: file.display().to_string(),
            size: text.len(),
        });
    }
    if !text.is_empty() {
        hallmonitor_policy::Policy::parse(text, file)?;
    }
    let sha256 = crate::evidence::sha256_hex(text.as_bytes());
    if let Some(current) = store.site_policy(site.id, None).await?
        && current.sha256 == sha256
    {
        return Ok(Saved::Unchanged(current.version));
    }
    let version = store
        .save_site_policy(site.id, text, &sha256, comment, author, at)
        .await?;
    tracing::info!(site = %site.name, version, "site policy saved");
    Ok(Saved::New(version))
}

/// The text agents of the site match with: the newest version, or the
/// project's default.
pub fn effective_text(policy: Option<&SitePolicy>) -> &str {
    match policy {
        Some(p) if !p.toml.is_empty() => &p.toml,
        _ => hallmonitor_policy::DEFAULT_POLICY,
    }
}

/// One line of a diff between two policy texts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiffLine {
    /// The same in both: (old line number, new line number, text).
    Same(usize, usize, String),
    /// Only in the older text: (its line number, text).
    Removed(usize, String),
    /// Only in the newer text: (its line number, text).
    Added(usize, String),
    /// Unchanged lines left out between two changes.
    Skipped,
}

/// How many unchanged lines a diff keeps around each change.
const DIFF_CONTEXT: usize = 3;

/// The line diff from `old` to `new` (changes with `DIFF_CONTEXT` lines
/// around them; empty when the texts are the same). Line numbers count
/// from 1. A diff that takes longer than a second is cut short by
/// `similar` into a coarser but still correct one, so two large, unlike
/// policies cannot hold a request.
/// Most lines a diff shows (two 4 MiB policies could otherwise make a
/// page of millions of rows); a longer one ends with `Skipped`.
pub const MAX_DIFF_LINES: usize = 2000;

pub fn diff(old: &str, new: &str) -> Vec<DiffLine> {
    let diff = similar::TextDiff::configure()
        .timeout(std::time::Duration::from_secs(1))
        .diff_lines(old, new);
    let mut lines = Vec::new();
    for (n, group) in diff.grouped_ops(DIFF_CONTEXT).iter().enumerate() {
        if n > 0 {
            lines.push(DiffLine::Skipped);
        }
        for op in group {
            for change in diff.iter_changes(op) {
                if lines.len() >= MAX_DIFF_LINES {
                    lines.push(DiffLine::Skipped);
                    return lines;
                }
                let text = change.value().trim_end_matches(['\n', '\r']).to_owned();
                let (old_line, new_line) = (
                    change.old_index().map(|i| i + 1),
                    change.new_index().map(|i| i + 1),
                );
                lines.push(match (change.tag(), old_line, new_line) {
                    (similar::ChangeTag::Delete, Some(o), _) => DiffLine::Removed(o, text),
                    (similar::ChangeTag::Insert, _, Some(n)) => DiffLine::Added(n, text),
                    (_, o, n) => DiffLine::Same(o.unwrap_or(0), n.unwrap_or(0), text),
                });
            }
        }
    }
    lines
}

/// `policy history`: every version, newest first, and how many of the
/// site's devices hold each.
pub fn history_report(
    site: &Site,
    history: &[SitePolicy],
    devices: &[(u64, u64)],
    format: Format,
) -> String {
    let held = |version: u64| {
        devices
            .iter()
            .find(|(v, _)| *v == version)
            .map_or(0, |(_, n)| *n)
    };
    match format {
        Format::Json => {
            let versions: Vec<_> = history
                .iter()
                .map(|p| {
                    json!({
                        "version": p.version,
                        "sha256": p.sha256,
                        "default": p.toml.is_empty(),
                        "comment": p.comment,
                        "created_at": p.created_at,
                        "created_by": p.created_by,
                        "devices": held(p.version),
                    })
                })
                .collect();
            let report = json!({
                "schema": "hallmonitor.policies.v1",
                "site": site.name,
                "current_version": history.first().map_or(0, |p| p.version),
                "versions": versions,
                "devices_by_version": devices.iter().map(|(v, n)| json!({"version": v, "devices": n})).collect::<Vec<_>>(),
            });
            let mut text = serde_json::to_string_pretty(&report).expect("plain data serialises");
            text.push('\n');
            text
        }
        Format::Table => {
            let mut out = String::new();
            if history.is_empty() {
                out.push_str(&format!(
                    "{}: no policy saved; agents use the project's default.\n",
                    site.name
                ));
            }
            for p in history {
                out.push_str(&format!(
                    "v{:<4} {}  {:<20} {:>5} device(s)  {}{}\n",
                    p.version,
                    p.created_at.strftime("%Y-%m-%d %H:%M UTC"),
                    p.created_by,
                    held(p.version),
                    if p.toml.is_empty() {
                        "(project default) "
                    } else {
                        ""
                    },
                    p.comment
                ));
            }
            let elsewhere: u64 = devices
                .iter()
                .filter(|(v, _)| !history.iter().any(|p| p.version == *v))
                .map(|(_, n)| n)
                .sum();
            if elsewhere > 0 {
                out.push_str(&format!(
                    "{elsewhere} device(s) have not received any of these yet.\n"
                ));
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SiteId;
    use crate::store::SqliteStore;
    use crate::store::{PolicyStore, SiteStore};

    const T: Author<'static> = Author {
        name: "t",
        address: "cli",
    };
    const RULE: &str = "extends = \"default\"\n[[rules]]\nid = \"local\"\ncategory = \"c\"\nseverity = 2\nphrases = [\"zebra\"]\n";

    #[test]
    fn diffs_mark_each_changed_line_with_its_number() {
        use DiffLine::*;
        let same = |o, n, t: &str| Same(o, n, t.to_owned());
        let cases: [(&str, &str, &str, Vec<DiffLine>); 4] = [
            ("identical", "a\nb\n", "a\nb\n", vec![]),
            (
                "one line changed",
                "a\nb\nc\n",
                "a\nB\nc\n",
                vec![
                    same(1, 1, "a"),
                    Removed(2, "b".into()),
                    Added(2, "B".into()),
                    same(3, 3, "c"),
                ],
            ),
            (
                "added at the end without a final newline",
                "a\n",
                "a\nz",
                vec![same(1, 1, "a"), Added(2, "z".into())],
            ),
            (
                "far-apart changes keep three lines around each",
                "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n",
                "x\n2\n3\n4\n5\n6\n7\n8\n9\ny\n",
                vec![
                    Removed(1, "1".into()),
                    Added(1, "x".into()),
                    same(2, 2, "2"),
                    same(3, 3, "3"),
                    same(4, 4, "4"),
                    Skipped,
                    same(7, 7, "7"),
                    same(8, 8, "8"),
                    same(9, 9, "9"),
                    Removed(10, "10".into()),
                    Added(10, "y".into()),
                ],
            ),
        ];
        for (name, old, new, want) in cases {
            assert_eq!(diff(old, new), want, "{name}");
        }
    }

    #[tokio::test]
    async fn the_history_without_texts_counts_bytes_and_lines_as_rust_does() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("c.db"), true)
            .await
            .unwrap();
        let site = store
            .create_site("Cabot", "Europe/London", Timestamp::now())
            .await
            .unwrap();
        let no_final_newline = format!("{RULE}# café, no newline at the end");
        let texts = [RULE, no_final_newline.as_str(), ""];
        for (n, text) in texts.iter().enumerate() {
            let saved = save(
                &store,
                &site,
                text,
                Path::new("p.toml"),
                &n.to_string(),
                T,
                Timestamp::now(),
            )
            .await
            .unwrap();
            assert_eq!(saved, Saved::New(n as u64 + 1));
        }
        let versions = store.site_policy_versions(site.id).await.unwrap();
        let got: Vec<(u64, u64, u64)> = versions
            .iter()
            .map(|v| (v.version, v.bytes, v.lines))
            .collect();
        let want: Vec<(u64, u64, u64)> = texts
            .iter()
            .enumerate()
            .rev()
            .map(|(n, t)| (n as u64 + 1, t.len() as u64, t.lines().count() as u64))
            .collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn saves_are_checked_versioned_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("c.db"), true)
            .await
            .unwrap();
        let site = store
            .create_site("Cabot", "Europe/London", Timestamp::now())
            .await
            .unwrap();
        let now = Timestamp::now();
        let file = Path::new("cabot.toml");
        let err = save(
            &store,
            &site,
            "[[rules]]\nid = \"x\"\nsevrity = 2\n",
            file,
            "",
            T,
            now,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("cabot.toml: line 3: "), "{err}");
        assert!(
            store.site_policy(site.id, None).await.unwrap().is_none(),
            "nothing stored"
        );
        let huge = format!("{RULE}# {}\n", "x".repeat(MAX_POLICY_BYTES));
        let err = save(&store, &site, &huge, file, "", T, now)
            .await
            .unwrap_err();
        assert!(matches!(err, PolicySaveError::TooLarge { .. }), "{err}");
        assert_eq!(
            save(&store, &site, RULE, file, "first", T, now)
                .await
                .unwrap(),
            Saved::New(1)
        );
        assert_eq!(
            save(&store, &site, RULE, file, "again", T, now)
                .await
                .unwrap(),
            Saved::Unchanged(1)
        );
        assert_eq!(
            save(&store, &site, "", file, "reset", T, now)
                .await
                .unwrap(),
            Saved::New(2)
        );
        let newest = store.site_policy(site.id, None).await.unwrap().unwrap();
        assert_eq!(
            effective_text(Some(&newest)),
            hallmonitor_policy::DEFAULT_POLICY
        );
        let first = store.site_policy(site.id, Some(1)).await.unwrap().unwrap();
        assert_eq!(effective_text(Some(&first)), RULE);
        assert_eq!(
            store.current_policy_versions().await.unwrap(),
            vec![(SiteId(site.id.0), 2)]
        );
    }
}
