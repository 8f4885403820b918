//! Sites: create, look up, list; the console's per-site thresholds and
//! retention (`site_settings`).

use std::collections::HashMap;

use async_trait::async_trait;
use jiff::Timestamp;

use super::{SqliteStore, millis, site_from_row};
use crate::model::{Site, SiteId};
use crate::site_settings::{SiteOverride, SiteValues};
use crate::store::{AuditEntry, Result, StoreError};

type OverrideRow = (i64, i64, i64, i64, bool, i64);

/// A stored row, checked again as it is read: a row no form could have
/// written is reported, never used.
fn override_from_row(
    (site, window, required, warning, auto_disable, retention): OverrideRow,
) -> Result<(SiteId, SiteOverride)> {
    let number = |n: i64| u32::try_from(n).unwrap_or(0);
    SiteOverride::new(SiteValues {
        window_days: number(window),
        required_minutes: number(required),
        warning_days: number(warning),
        auto_disable,
        retention_days: number(retention),
    })
    .map(|o| (SiteId(site), o))
    .map_err(|errors| {
        StoreError::Corrupt(format!(
            "site_settings of site {site}: {}",
            errors
                .iter()
                .map(|e| format!("{} {}", e.field.name(), e.message))
                .collect::<Vec<_>>()
                .join("; ")
        ))
    })
}

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

    async fn site_overrides(&self) -> Result<HashMap<SiteId, SiteOverride>> {
        let rows: Vec<OverrideRow> =
            sqlx::query_as("SELECT site_id, window_days, required_minutes, warning_days, auto_disable, retention_days FROM site_settings")
                .fetch_all(&self.reader)
                .await?;
        rows.into_iter().map(override_from_row).collect()
    }

    async fn site_override(&self, site: SiteId) -> Result<Option<SiteOverride>> {
        let row: Option<OverrideRow> = sqlx::query_as(
            "SELECT site_id, window_days, required_minutes, warning_days, auto_disable, retention_days \
             FROM site_settings WHERE site_id = ?",
        )
        .bind(site.0)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.map(override_from_row).transpose()?.map(|(_, o)| o))
    }

    async fn set_site_override(
        &self,
        site: SiteId,
        value: Option<&SiteOverride>,
        audit: AuditEntry<'_>,
    ) -> Result<()> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        match value {
            Some(o) => {
                let v = o.values();
                sqlx::query(
                    "INSERT INTO site_settings (site_id, window_days, required_minutes, warning_days, \
                     auto_disable, retention_days, updated_at, updated_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
                     ON CONFLICT (site_id) DO UPDATE SET window_days = excluded.window_days, \
                     required_minutes = excluded.required_minutes, warning_days = excluded.warning_days, \
                     auto_disable = excluded.auto_disable, retention_days = excluded.retention_days, \
                     updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                )
                .bind(site.0)
                .bind(i64::from(v.window_days))
                .bind(i64::from(v.required_minutes))
                .bind(i64::from(v.warning_days))
                .bind(v.auto_disable)
                .bind(i64::from(v.retention_days))
                .bind(millis(audit.at))
                .bind(audit.actor)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM site_settings WHERE site_id = ?")
                    .bind(site.0)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        // The row is this site's, whatever `audit.site` says.
        super::audit::write_in(&mut tx, Some(site), &audit).await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ConsoleStore, SiteStore};

    fn entry(action: &'static str) -> AuditEntry<'static> {
        AuditEntry {
            at: Timestamp::now(),
            // The store files the row under the site it changes.
            site: None,
            actor: "console:tech1",
            action,
            target: "site Cabot",
            detail: "required_minutes: 60 → 120",
            address: "127.0.0.1",
        }
    }

    #[tokio::test]
    async fn a_site_override_is_set_read_replaced_and_cleared_with_its_audit_row() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("c.db"), true)
            .await
            .unwrap();
        let cabot = store
            .create_site("Cabot", "Europe/London", Timestamp::now())
            .await
            .unwrap();
        let other = store
            .create_site("Other", "UTC", Timestamp::now())
            .await
            .unwrap();
        assert_eq!(store.site_override(cabot.id).await.unwrap(), None);
        let values = SiteValues {
            window_days: 28,
            required_minutes: 120,
            warning_days: 7,
            auto_disable: true,
            retention_days: 30,
        };
        let first = SiteOverride::new(values).unwrap();
        store
            .set_site_override(cabot.id, Some(&first), entry("site_settings_set"))
            .await
            .unwrap();
        assert_eq!(store.site_override(cabot.id).await.unwrap(), Some(first));
        assert_eq!(store.site_override(other.id).await.unwrap(), None);
        let second = SiteOverride::new(SiteValues {
            retention_days: 400,
            ..values
        })
        .unwrap();
        store
            .set_site_override(cabot.id, Some(&second), entry("site_settings_set"))
            .await
            .unwrap();
        let all = store.site_overrides().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[&cabot.id], second);
        store
            .set_site_override(cabot.id, None, entry("site_settings_cleared"))
            .await
            .unwrap();
        assert_eq!(store.site_override(cabot.id).await.unwrap(), None);
        assert!(store.site_overrides().await.unwrap().is_empty());
        let audit = store
            .audit_entries(&crate::store::AuditQuery {
                sites: crate::store::AuditSites::All,
                actor: String::new(),
                action: "site_settings".into(),
                before: None,
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(audit.len(), 3);
        assert_eq!(audit[0].action, "site_settings_cleared");
        assert_eq!(audit[0].address, "127.0.0.1");
        assert!(audit.iter().all(|a| a.site == Some(cabot.id)));

        // A row no form could write is reported, not used.
        sqlx::query("INSERT INTO site_settings VALUES (?, 0, 60, 7, 0, 90, 0, 'x')")
            .bind(other.id.0)
            .execute(&store.writer)
            .await
            .unwrap();
        assert!(matches!(
            store.site_override(other.id).await,
            Err(StoreError::Corrupt(_))
        ));
    }
}
