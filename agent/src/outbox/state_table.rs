//! The outbox file's `state` table, raw: text values by key, written and
//! read alone or (for the outbox's own counters) inside its transactions.
//! `crate::state` gives it types and owns its keys.

use std::collections::HashMap;

use sqlx::{QueryBuilder, Row, Sqlite};

use super::{Outbox, Result};

impl Outbox {
    pub(crate) async fn set_state(&self, key: &str, value: &str) -> Result<()> {
        self.set_states(&[(key, value)]).await
    }

    pub(crate) async fn set_states(&self, pairs: &[(&str, &str)]) -> Result<()> {
        let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new("INSERT INTO state (key, value) ");
        insert.push_values(pairs, |mut row, (k, v)| {
            row.push_bind(k.to_string()).push_bind(v.to_string());
        });
        insert.push(" ON CONFLICT (key) DO UPDATE SET value = excluded.value");
        insert
            .build()
            .execute(&self.pool)
            .await
            .map_err(self.db())?;
        Ok(())
    }

    pub(crate) async fn state(&self, key: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT value FROM state WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.db())
    }

    /// Several keys read in one statement: a consistent snapshot, so a
    /// reader never pairs one writer's `connection` with another's
    /// `last_error`.
    pub(crate) async fn states(&self, keys: &[&str]) -> Result<HashMap<String, String>> {
        let mut select: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT key, value FROM state WHERE key IN (");
        let mut list = select.separated(", ");
        for key in keys {
            list.push_bind(key.to_string());
        }
        select.push(")");
        let rows = select
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(self.db())?;
        Ok(rows
            .into_iter()
            .map(|row| (row.get("key"), row.get("value")))
            .collect())
    }
}

pub(super) async fn state_number(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    key: &str,
) -> sqlx::Result<u64> {
    let value: Option<String> = sqlx::query_scalar("SELECT value FROM state WHERE key = ?")
        .bind(key)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
}

pub(super) async fn set_state_in(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    key: &str,
    value: &str,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        .bind(key)
        .bind(value)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
