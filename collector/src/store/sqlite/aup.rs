//! SQLite: sites' acceptable-use policies and the answers to them
//! (migration 0023).

use async_trait::async_trait;
use jiff::Timestamp;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{SqliteStore, instant, millis};
use crate::model::{AupAnswerKind, AupAnswerRecord, DeviceId, SiteId};
use crate::store::{AuditEntry, AupAnswerFilter, AupAnswerRow, Result, SiteAup};

fn aup_from_row(row: &SqliteRow) -> Result<SiteAup> {
    Ok(SiteAup {
        site: SiteId(row.try_get("site_id")?),
        version: row.try_get::<i64, _>("version")? as u64,
        toml: row.try_get("aup_toml")?,
        sha256: row.try_get("sha256")?,
        created_at: instant(row.try_get("created_at")?)?,
        created_by: row.try_get("created_by")?,
    })
}

/// Stores an answer from the batch's transaction; a retried event is
/// stored once.
pub(super) async fn record_answer(
    tx: &mut sqlx::SqliteConnection,
    device: &DeviceId,
    seq: u64,
    answer: &AupAnswerRecord,
    received_at: Timestamp,
) -> Result<()> {
    // A device's clock (or a hostile device) cannot date an answer in the
    // future to sit at the top of the list, and an answer to a version its
    // site never had is not one (the event itself is still kept).
    let latest = received_at + crate::rules::mfa::MAX_CLOCK_SKEW;
    let answered_at = answer.answered_at.min(latest);
    sqlx::query(
        "INSERT INTO aup_answers (device_id, seq, site_id, account, version, answer, outcome, answered_at, received_at) \
         SELECT ?, ?, d.site_id, ?, ?, ?, ?, ?, ? FROM devices d WHERE d.id = ? \
         AND EXISTS (SELECT 1 FROM site_aups a WHERE a.site_id = d.site_id AND a.version = ?) \
         ON CONFLICT (device_id, seq) DO NOTHING",
    )
    .bind(device.as_str())
    .bind(seq as i64)
    .bind(&answer.account)
    .bind(answer.version as i64)
    .bind(answer.answer.as_str())
    .bind(&answer.outcome)
    .bind(millis(answered_at))
    .bind(millis(received_at))
    .bind(device.as_str())
    .bind(answer.version as i64)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[async_trait]
impl crate::store::AupStore for SqliteStore {
    async fn save_site_aup(
        &self,
        site: SiteId,
        text: &str,
        sha256: &str,
        author: crate::policies::Author<'_>,
        at: Timestamp,
    ) -> Result<u64> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let version: i64 = sqlx::query_scalar(
            "INSERT INTO site_aups (site_id, version, aup_toml, sha256, created_at, created_by) \
             SELECT ?, coalesce(max(version), 0) + 1, ?, ?, ?, ? FROM site_aups WHERE site_id = ? \
             RETURNING version",
        )
        .bind(site.0)
        .bind(text)
        .bind(sha256)
        .bind(millis(at))
        .bind(author.name)
        .bind(site.0)
        .fetch_one(&mut *tx)
        .await?;
        let target = format!("site {} acceptable-use policy v{version}", site.0);
        let detail = format!("sha256 {sha256}");
        super::audit::write_in(
            &mut tx,
            Some(site),
            &AuditEntry {
                at,
                site: Some(site),
                actor: author.name,
                action: "aup.set",
                target: &target,
                detail: &detail,
                address: author.address,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(version as u64)
    }

    async fn site_aup(&self, site: SiteId, version: Option<u64>) -> Result<Option<SiteAup>> {
        let row = match version {
            Some(v) => {
                sqlx::query("SELECT * FROM site_aups WHERE site_id = ? AND version = ?")
                    .bind(site.0)
                    .bind(v as i64)
                    .fetch_optional(&self.reader)
                    .await?
            }
            None => {
                sqlx::query(
                    "SELECT * FROM site_aups WHERE site_id = ? ORDER BY version DESC LIMIT 1",
                )
                .bind(site.0)
                .fetch_optional(&self.reader)
                .await?
            }
        };
        row.as_ref().map(aup_from_row).transpose()
    }

    async fn site_aup_versions(&self, site: SiteId) -> Result<Vec<SiteAup>> {
        let rows = sqlx::query("SELECT * FROM site_aups WHERE site_id = ? ORDER BY version DESC")
            .bind(site.0)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(aup_from_row).collect()
    }

    async fn current_aup_versions(&self) -> Result<Vec<(SiteId, u64)>> {
        let rows: Vec<(i64, i64)> =
            sqlx::query_as("SELECT site_id, max(version) FROM site_aups GROUP BY site_id")
                .fetch_all(&self.reader)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(site, version)| (SiteId(site), version as u64))
            .collect())
    }

    async fn aup_answers(&self, filter: &AupAnswerFilter) -> Result<Vec<AupAnswerRow>> {
        let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT a.*, d.hostname, s.name AS site_name FROM aup_answers a \
             JOIN devices d ON d.id = a.device_id JOIN sites s ON s.id = a.site_id WHERE 1 = 1",
        );
        if let Some(sites) = &filter.sites {
            if sites.is_empty() {
                return Ok(Vec::new());
            }
            query.push(" AND a.site_id IN (");
            let mut list = query.separated(", ");
            for site in sites {
                list.push_bind(site.0);
            }
            list.push_unseparated(")");
        }
        if let Some(version) = filter.version {
            query.push(" AND a.version = ").push_bind(version as i64);
        }
        if let Some(answer) = filter.answer {
            query.push(" AND a.answer = ").push_bind(answer.as_str());
        }
        query
            .push(" ORDER BY a.answered_at DESC, a.device_id, a.seq LIMIT ")
            .push_bind(i64::from(filter.limit));
        let rows = query.build().fetch_all(&self.reader).await?;
        rows.iter()
            .map(|row| {
                let answer: String = row.try_get("answer")?;
                Ok(AupAnswerRow {
                    device: DeviceId::from_string(&row.try_get::<String, _>("device_id")?),
                    hostname: row.try_get("hostname")?,
                    site: row.try_get("site_name")?,
                    record: AupAnswerRecord {
                        account: row.try_get("account")?,
                        version: row.try_get::<i64, _>("version")? as u64,
                        // The table's CHECK allows only these two.
                        answer: AupAnswerKind::parse(&answer).unwrap_or(AupAnswerKind::Decline),
                        answered_at: instant(row.try_get("answered_at")?)?,
                        outcome: row.try_get("outcome")?,
                    },
                    received_at: instant(row.try_get("received_at")?)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Event, EventBody, Seq};
    use crate::store::sqlite::testing::store_with_device;
    use crate::store::{AupStore, IngestStore};

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn answer(seq: u64, account: &str, version: u64, kind: AupAnswerKind) -> Event {
        Event {
            seq: Seq(seq),
            event_id: format!("e{seq}"),
            occurred_at: at("2026-11-30T08:00:00Z"),
            body: EventBody::AupAnswer(AupAnswerRecord {
                account: account.into(),
                version,
                answer: kind,
                answered_at: at("2026-11-30T08:00:00Z")
                    + jiff::SignedDuration::from_secs(seq as i64),
                outcome: String::new(),
            }),
        }
    }

    #[tokio::test]
    async fn answers_are_stored_once_and_filtered() {
        let dir = tempfile::tempdir().unwrap();
        let now = at("2026-11-30T09:00:00Z");
        let (store, site, device) = store_with_device(dir.path(), now).await;
        let author = crate::policies::Author {
            name: "tech",
            address: "cli",
        };
        for text in ["text = \"a\"\n", "text = \"b\"\n"] {
            store
                .save_site_aup(site.id, text, "h", author, now)
                .await
                .unwrap();
        }
        let mut from_the_future = answer(4, "pupil3", 2, AupAnswerKind::Accept);
        if let EventBody::AupAnswer(a) = &mut from_the_future.body {
            a.answered_at = at("2030-01-01T00:00:00Z");
        }
        let batch = [
            answer(1, "pupil1", 1, AupAnswerKind::Accept),
            answer(2, "pupil2", 1, AupAnswerKind::Decline),
            answer(3, "pupil1", 2, AupAnswerKind::Decline),
            // A version the site never had: not an answer.
            answer(5, "pupil4", 9, AupAnswerKind::Accept),
            from_the_future,
        ];
        store.record_batch(&device, &batch, now).await.unwrap();
        let future = store
            .aup_answers(&AupAnswerFilter {
                limit: 100,
                ..AupAnswerFilter::default()
            })
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.record.account == "pupil3")
            .unwrap();
        assert_eq!(
            future.record.answered_at,
            now + crate::rules::mfa::MAX_CLOCK_SKEW,
            "a time ahead of the collector's clock is held to its skew"
        );
        // The rest counts the three ordinary answers.
        sqlx::query("DELETE FROM aup_answers WHERE account = 'pupil3'")
            .execute(&store.writer)
            .await
            .unwrap();
        // The agent retries the batch: nothing doubles.
        store.record_batch(&device, &batch, now).await.unwrap();
        let all = AupAnswerFilter {
            limit: 100,
            ..AupAnswerFilter::default()
        };
        let rows = store.aup_answers(&all).await.unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].record.account, "pupil1", "newest first");
        assert_eq!(rows[0].record.version, 2);
        assert_eq!(rows[0].site, "Cabot");
        let cases = [
            ("version 1", Some(1), None, None, 2),
            ("declines", None, Some(AupAnswerKind::Decline), None, 2),
            (
                "version 1 accepts",
                Some(1),
                Some(AupAnswerKind::Accept),
                None,
                1,
            ),
            ("this site", None, None, Some(vec![site.id]), 3),
            ("another site", None, None, Some(vec![SiteId(999)]), 0),
            ("no sites", None, None, Some(vec![]), 0),
        ];
        for (name, version, answer, sites, expected) in cases {
            let filter = AupAnswerFilter {
                sites,
                version,
                answer,
                limit: 100,
            };
            assert_eq!(
                store.aup_answers(&filter).await.unwrap().len(),
                expected,
                "{name}"
            );
        }
    }

    #[tokio::test]
    async fn versions_count_up_per_site_with_an_audit_row() {
        let dir = tempfile::tempdir().unwrap();
        let now = at("2026-11-30T09:00:00Z");
        let (store, site, _) = store_with_device(dir.path(), now).await;
        let author = crate::policies::Author {
            name: "tech",
            address: "cli",
        };
        assert_eq!(
            store
                .save_site_aup(site.id, "text = \"a\"\n", "h1", author, now)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .save_site_aup(site.id, "text = \"b\"\n", "h2", author, now)
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            store.current_aup_versions().await.unwrap(),
            vec![(site.id, 2)]
        );
        assert_eq!(
            store
                .site_aup(site.id, Some(1))
                .await
                .unwrap()
                .unwrap()
                .sha256,
            "h1"
        );
        assert_eq!(
            store
                .site_aup(site.id, None)
                .await
                .unwrap()
                .unwrap()
                .version,
            2
        );
        assert_eq!(store.site_aup_versions(site.id).await.unwrap().len(), 2);
        let audited: i64 =
            sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'aup.set'")
                .fetch_one(&store.reader)
                .await
                .unwrap();
        assert_eq!(audited, 2);
    }
}
