//! Sites: create, look up, list.

use async_trait::async_trait;
use jiff::Timestamp;

use super::{SqliteStore, millis, site_from_row};
use crate::model::Site;
use crate::store::{Result, StoreError};

#[async_trait]
impl crate::store::SiteStore for SqliteStore {
    async fn create_site(&self, name: &str, timezone: &str, at: Timestamp) -> Result<Site> {
        let row = sqlx::query("INSERT INTO sites (name, timezone, created_at) VALUES (?, ?, ?) RETURNING id, name, timezone")
            .bind(name)
            .bind(timezone)
            .bind(millis(at))
            .fetch_one(&self.writer)
            .await;
        match row {
            Ok(row) => site_from_row(&row),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::SiteExists(name.into()))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn site_by_name(&self, name: &str) -> Result<Option<Site>> {
        let row = sqlx::query("SELECT id, name, timezone FROM sites WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(site_from_row).transpose()
    }

    async fn sites(&self) -> Result<Vec<Site>> {
        let rows = sqlx::query("SELECT id, name, timezone FROM sites ORDER BY id")
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(site_from_row).collect()
    }
}
