//! Sites' acceptable-use policies (AUP): checked with the parser the
//! agents use (`hallmonitor-policy`'s `aup`) before anything is stored,
//! kept as numbered versions, sent to agents over their streams
//! (`ingest::dispatch_aups`), and the answers users gave, as the agents
//! reported them (`AupAnswer` events, stored by `record_batch`).
//!
//! A document that does not parse is refused with its file, line and
//! field, and the newest good version stays the one agents are sent.
//! Saving a text identical to the newest version changes nothing. Every
//! save is audited with who did it. Answers carry the account, which is
//! pupil-level data: they go to the console's answers page, the CLI and
//! nowhere else (not the logs, not notifications).

use std::path::Path;

use jiff::Timestamp;
use serde::Serialize;

use crate::model::Site;
use crate::policies::{Author, Saved};
use crate::store::{AupAnswerRow, AupStore};

/// The largest AUP document accepted, in bytes.
pub const MAX_AUP_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AupSaveError {
    /// The text does not parse: file, line and field.
    #[error(transparent)]
    Invalid(#[from] hallmonitor_policy::PolicyError),
    #[error("{file}: {size} bytes; an acceptable-use policy may be at most {MAX_AUP_BYTES} bytes")]
    TooLarge { file: String, size: usize },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Checks `text` (read from `file`, named in errors) and stores it as the
/// site's next AUP version.
pub async fn save(
    store: &dyn AupStore,
    site: &Site,
    text: &str,
    file: &Path,
    author: Author<'_>,
    at: Timestamp,
) -> Result<Saved, AupSaveError> {
    let file_name = file.display().to_string();
    if text.len() > MAX_AUP_BYTES {
        return Err(AupSaveError::TooLarge {
            file: file_name,
            size: text.len(),
        });
    }
    hallmonitor_policy::aup::Aup::parse(text, &file_name)?;
    let sha256 = crate::evidence::sha256_hex(text.as_bytes());
    if let Some(current) = store.site_aup(site.id, None).await?
        && current.sha256 == sha256
    {
        return Ok(Saved::Unchanged(current.version));
    }
    let version = store
        .save_site_aup(site.id, text, &sha256, author, at)
        .await?;
    tracing::info!(site = %site.name, version, "acceptable-use policy saved");
    Ok(Saved::New(version))
}

/// `hallmonitor.aup_answers.v1`: the answers as the CLI prints them.
#[derive(Debug, Serialize)]
pub struct AnswersDocument {
    pub schema: &'static str,
    pub answers: Vec<AnswerLine>,
}

#[derive(Debug, Serialize)]
pub struct AnswerLine {
    pub site: String,
    pub device_id: String,
    pub hostname: String,
    pub account: String,
    pub version: u64,
    pub answer: &'static str,
    pub outcome: String,
    pub answered_at: Timestamp,
    pub received_at: Timestamp,
}

impl AnswersDocument {
    pub fn new(rows: &[AupAnswerRow]) -> AnswersDocument {
        AnswersDocument {
            schema: "hallmonitor.aup_answers.v1",
            answers: rows
                .iter()
                .map(|row| AnswerLine {
                    site: row.site.clone(),
                    device_id: row.device.to_string(),
                    hostname: row.hostname.clone(),
                    account: row.record.account.clone(),
                    version: row.record.version,
                    answer: row.record.answer.as_str(),
                    outcome: row.record.outcome.clone(),
                    answered_at: row.record.answered_at,
                    received_at: row.received_at,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::testing::store_with_device;

    #[tokio::test]
    async fn a_broken_document_is_refused_and_the_last_good_version_stays() {
        let dir = tempfile::tempdir().unwrap();
        let now: Timestamp = "2026-11-30T09:00:00Z".parse().unwrap();
        let (store, site, _) = store_with_device(dir.path(), now).await;
        let author = Author {
            name: "tech",
            address: "cli",
        };
        let file = Path::new("aup.toml");
        let good = "title = \"Rules\"\ntext = \"Be kind.\"\n";
        assert!(matches!(
            save(&store, &site, good, file, author, now).await.unwrap(),
            Saved::New(1)
        ));
        assert!(matches!(
            save(&store, &site, good, file, author, now).await.unwrap(),
            Saved::Unchanged(1)
        ));
        let broken = "title = \"Rules\"\ntext = \"Be kind.\"\ndecline = \"shout\"\n";
        let error = save(&store, &site, broken, file, author, now)
            .await
            .unwrap_err();
        assert!(
            error.to_string().starts_with("aup.toml: line 3:"),
            "{error}"
        );
        let huge = format!("text = \"{}\"\n", "x".repeat(MAX_AUP_BYTES));
        assert!(matches!(
            save(&store, &site, &huge, file, author, now).await,
            Err(AupSaveError::TooLarge { .. })
        ));
        assert_eq!(
            store
                .site_aup(site.id, None)
                .await
                .unwrap()
                .unwrap()
                .version,
            1
        );
    }
}
