//! API tokens, stored as SHA-256.

use async_trait::async_trait;
use jiff::Timestamp;
use sqlx::Row;

use super::{SqliteStore, instant, millis, optional_instant};
use crate::model::SiteId;
use crate::store::{NewApiToken, Result};

const TOKEN_SELECT: &str = "SELECT t.id, t.site_id, s.name AS site, t.label, t.role, t.all_sites, t.created_by, t.created_at, t.revoked_at, t.last_used_at \
     FROM api_tokens t JOIN sites s ON s.id = t.site_id";

fn token_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<crate::store::ApiTokenInfo> {
    Ok(crate::store::ApiTokenInfo {
        id: r.try_get("id")?,
        site: r.try_get("site")?,
        site_id: SiteId(r.try_get("site_id")?),
        label: r.try_get("label")?,
        role: r.try_get("role")?,
        all_sites: r.try_get("all_sites")?,
        created_by: r.try_get("created_by")?,
        created_at: instant(r.try_get("created_at")?)?,
        revoked_at: optional_instant(r.try_get("revoked_at")?)?,
        last_used_at: optional_instant(r.try_get("last_used_at")?)?,
    })
}

#[async_trait]
impl crate::store::ApiTokenStore for SqliteStore {
    async fn create_api_token(&self, token: NewApiToken<'_>, at: Timestamp) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO api_tokens (site_id, token_sha256, label, role, all_sites, created_by, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(token.site.0)
        .bind(token.token_sha256)
        .bind(token.label)
        .bind(token.role)
        .bind(token.all_sites)
        .bind(token.created_by)
        .bind(millis(at))
        .fetch_one(&self.writer)
        .await?)
    }

    async fn list_api_tokens(
        &self,
        site: Option<SiteId>,
    ) -> Result<Vec<crate::store::ApiTokenInfo>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{TOKEN_SELECT} WHERE (?1 IS NULL OR t.site_id = ?1) ORDER BY t.id"
        )))
        .bind(site.map(|s| s.0))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    async fn revoke_api_token(&self, site: SiteId, id: i64, at: Timestamp) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND site_id = ? AND revoked_at IS NULL",
        )
        .bind(millis(at))
        .bind(id)
        .bind(site.0)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn use_api_token(
        &self,
        token_sha256: &str,
        at: Timestamp,
    ) -> Result<Option<crate::store::ApiTokenInfo>> {
        // Looked up on a reader: a stranger's wrong tokens never reach
        // the single writer. `last_used_at` is written at most once a
        // minute per token.
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{TOKEN_SELECT} WHERE t.token_sha256 = ? AND t.revoked_at IS NULL"
        )))
        .bind(token_sha256)
        .fetch_optional(&self.reader)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let mut token = token_from_row(&row)?;
        let stale = token
            .last_used_at
            .is_none_or(|used| at.duration_since(used) >= jiff::SignedDuration::from_mins(1));
        if stale {
            sqlx::query("UPDATE api_tokens SET last_used_at = ? WHERE id = ?")
                .bind(millis(at))
                .bind(token.id)
                .execute(&self.writer)
                .await?;
            token.last_used_at = Some(at);
        }
        Ok(Some(token))
    }
}
