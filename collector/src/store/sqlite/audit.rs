//! The audit log (written here; read by `console.rs`).

use async_trait::async_trait;

use super::{SqliteStore, millis};
use crate::store::{AuditEntry, Result};

#[async_trait]
impl crate::store::AuditStore for SqliteStore {
    async fn append_audit(&self, entry: AuditEntry<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, target, detail, address) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(millis(entry.at))
        .bind(entry.actor)
        .bind(entry.action)
        .bind(entry.target)
        .bind(entry.detail)
        .bind(entry.address)
        .execute(&self.writer)
        .await?;
        Ok(())
    }
}
