//! The audit log and console accounts.

use async_trait::async_trait;
use jiff::Timestamp;

use super::{SqliteStore, millis};
use crate::model::SiteId;
use crate::store::{AuditEntry, Result, StoreError};

#[async_trait]
impl crate::store::AuditStore for SqliteStore {
    async fn create_console_user(
        &self,
        username: &str,
        password_hash: &str,
        role: &str,
        site: Option<SiteId>,
        at: Timestamp,
    ) -> Result<()> {
        let done = sqlx::query(
            "INSERT INTO console_users (username, password_hash, role, site_id, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(username)
        .bind(password_hash)
        .bind(role)
        .bind(site.map(|s| s.0))
        .bind(millis(at))
        .execute(&self.writer)
        .await;
        match done {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::UserExists(username.into()))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn append_audit(&self, entry: AuditEntry<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(millis(entry.at))
        .bind(entry.actor)
        .bind(entry.action)
        .bind(entry.target)
        .bind(entry.detail)
        .execute(&self.writer)
        .await?;
        Ok(())
    }
}
