//! SQLite: sites' suspicious-activity policies.

use async_trait::async_trait;
use jiff::Timestamp;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::{SqliteStore, instant, millis};
use crate::model::SiteId;
use crate::store::{Result, SitePolicy};

fn from_row(row: &SqliteRow) -> Result<SitePolicy> {
    Ok(SitePolicy {
        site: SiteId(row.try_get("site_id")?),
        version: row.try_get::<i64, _>("version")? as u64,
        toml: row.try_get("policy_toml")?,
        sha256: row.try_get("sha256")?,
        comment: row.try_get("comment")?,
        created_at: instant(row.try_get("created_at")?)?,
        created_by: row.try_get("created_by")?,
    })
}

#[async_trait]
impl crate::store::PolicyStore for SqliteStore {
    async fn save_site_policy(
        &self,
        site: SiteId,
        text: &str,
        sha256: &str,
        comment: &str,
        author: crate::policies::Author<'_>,
        at: Timestamp,
    ) -> Result<u64> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let version: i64 = sqlx::query_scalar(
            "INSERT INTO site_policies (site_id, version, policy_toml, sha256, comment, created_at, created_by) \
             SELECT ?, coalesce(max(version), 0) + 1, ?, ?, ?, ?, ? FROM site_policies WHERE site_id = ? \
             RETURNING version",
        )
        .bind(site.0)
        .bind(text)
        .bind(sha256)
        .bind(comment)
        .bind(millis(at))
        .bind(author.name)
        .bind(site.0)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO audit_log (at, site_id, actor, action, target, detail, address) VALUES (?, ?, ?, 'policy.set', ?, ?, ?)",
        )
        .bind(millis(at))
        .bind(site.0)
        .bind(author.name)
        .bind(format!("site {} policy v{version}", site.0))
        .bind(format!("sha256 {sha256}; {comment}"))
        .bind(author.address)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(version as u64)
    }

    async fn site_policy(&self, site: SiteId, version: Option<u64>) -> Result<Option<SitePolicy>> {
        let row =
            match version {
                Some(v) => {
                    sqlx::query("SELECT * FROM site_policies WHERE site_id = ? AND version = ?")
                        .bind(site.0)
                        .bind(v as i64)
                        .fetch_optional(&self.reader)
                        .await?
                }
                None => sqlx::query(
                    "SELECT * FROM site_policies WHERE site_id = ? ORDER BY version DESC LIMIT 1",
                )
                .bind(site.0)
                .fetch_optional(&self.reader)
                .await?,
            };
        row.as_ref().map(from_row).transpose()
    }

    async fn site_policy_history(&self, site: SiteId) -> Result<Vec<SitePolicy>> {
        let rows =
            sqlx::query("SELECT * FROM site_policies WHERE site_id = ? ORDER BY version DESC")
                .bind(site.0)
                .fetch_all(&self.reader)
                .await?;
        rows.iter().map(from_row).collect()
    }

    async fn site_policy_versions(&self, site: SiteId) -> Result<Vec<crate::store::PolicyVersion>> {
        let rows = sqlx::query(
            "SELECT version, length(CAST(policy_toml AS BLOB)) AS bytes, \
                    length(policy_toml) - length(replace(policy_toml, char(10), '')) \
                      + (substr(policy_toml, -1) NOT IN ('', char(10))) AS lines, \
                    comment, created_at, created_by \
             FROM site_policies WHERE site_id = ? ORDER BY version DESC",
        )
        .bind(site.0)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(crate::store::PolicyVersion {
                    version: row.try_get::<i64, _>("version")? as u64,
                    bytes: row.try_get::<i64, _>("bytes")? as u64,
                    lines: row.try_get::<i64, _>("lines")? as u64,
                    comment: row.try_get("comment")?,
                    created_at: instant(row.try_get("created_at")?)?,
                    created_by: row.try_get("created_by")?,
                })
            })
            .collect()
    }

    async fn current_policy_versions(&self) -> Result<Vec<(SiteId, u64)>> {
        let rows: Vec<(i64, i64)> =
            sqlx::query_as("SELECT site_id, max(version) FROM site_policies GROUP BY site_id")
                .fetch_all(&self.reader)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(site, version)| (SiteId(site), version as u64))
            .collect())
    }

    async fn device_policy_versions(&self, site: SiteId) -> Result<Vec<(u64, u64)>> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT policy_version, count(*) FROM devices WHERE site_id = ? GROUP BY policy_version ORDER BY policy_version DESC",
        )
        .bind(site.0)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(v, n)| (v as u64, n as u64))
            .collect())
    }
}
