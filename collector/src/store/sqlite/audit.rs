//! The audit log (written here; read by `console.rs`).

use async_trait::async_trait;

use sqlx::SqliteConnection;

use super::{SqliteStore, millis};
use crate::model::SiteId;
use crate::store::{AuditEntry, Result};

/// Writes `entry` as a row of `site` (None: collector-wide), whatever
/// `entry.site` says, on `conn`: inside the caller's transaction when the
/// change it records is written there too.
pub(super) async fn write_in(
    conn: &mut SqliteConnection,
    site: Option<SiteId>,
    entry: &AuditEntry<'_>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (at, site_id, actor, action, target, detail, address) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(millis(entry.at))
    .bind(site.map(|s| s.0))
    .bind(entry.actor)
    .bind(entry.action)
    .bind(entry.target)
    .bind(entry.detail)
    .bind(entry.address)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[async_trait]
impl crate::store::AuditStore for SqliteStore {
    async fn append_audit(&self, entry: AuditEntry<'_>) -> Result<()> {
        let mut conn = self.writer.acquire().await?;
        write_in(&mut conn, entry.site, &entry).await
    }
}

#[cfg(test)]
mod tests {
    use jiff::{SignedDuration, Timestamp};

    use super::*;
    use crate::model::SiteId;
    use crate::store::{AuditQuery, AuditRecord, AuditSites, AuditStore, ConsoleStore, SiteStore};

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap() + SignedDuration::from_secs(secs)
    }

    fn query(sites: AuditSites, limit: usize) -> AuditQuery {
        AuditQuery {
            sites,
            actor: String::new(),
            action: String::new(),
            before: None,
            limit,
        }
    }

    fn targets(rows: &[AuditRecord]) -> Vec<&str> {
        rows.iter().map(|r| r.target.as_str()).collect()
    }

    #[tokio::test]
    async fn a_site_reads_its_own_rows_and_only_every_site_reads_collector_wide_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("c.db"), true)
            .await
            .unwrap();
        let a = store.create_site("A", "UTC", t(0)).await.unwrap().id;
        let b = store.create_site("B", "UTC", t(0)).await.unwrap().id;
        // Oldest first: a1, b1, wide1, a2, b2, a3.
        let rows: [(Option<SiteId>, &str, &str); 6] = [
            (Some(a), "incident_viewed", "a1"),
            (Some(b), "incident_viewed", "b1"),
            (None, "console_user_added", "wide1"),
            (Some(a), "flag_approved", "a2"),
            (Some(b), "incident_viewed", "b2"),
            (Some(a), "incident_viewed", "a3"),
        ];
        for (i, (site, action, target)) in rows.into_iter().enumerate() {
            store
                .append_audit(AuditEntry {
                    at: t(i as i64),
                    site,
                    actor: if site == Some(b) {
                        "console:dsl-b"
                    } else {
                        "console:dsl-a"
                    },
                    action,
                    target,
                    detail: "",
                    address: "127.0.0.1",
                })
                .await
                .unwrap();
        }
        let read = |q: AuditQuery| {
            let store = &store;
            async move { store.audit_entries(&q).await.unwrap() }
        };

        let only_a = read(query(AuditSites::Only(vec![a]), 10)).await;
        assert_eq!(targets(&only_a), ["a3", "a2", "a1"]);
        assert!(only_a.iter().all(|r| r.site == Some(a)));
        assert_eq!(
            targets(&read(query(AuditSites::Only(vec![b, a, b]), 10)).await),
            ["a3", "b2", "a2", "b1", "a1"],
            "several sites merge newest first, a site named twice counts once"
        );
        assert_eq!(
            targets(&read(query(AuditSites::Only(vec![a, b]), 2)).await),
            ["a3", "b2"]
        );
        assert!(read(query(AuditSites::Only(vec![]), 10)).await.is_empty());
        assert_eq!(
            targets(&read(query(AuditSites::CollectorWide, 10)).await),
            ["wide1"]
        );
        let everything = read(query(AuditSites::All, 10)).await;
        assert_eq!(
            targets(&everything),
            ["a3", "b2", "a2", "wide1", "b1", "a1"]
        );
        assert_eq!(everything[3].site, None);

        // Keyset pages and the filters keep to the scope.
        let first = read(query(AuditSites::Only(vec![a, b]), 2)).await;
        let next = read(AuditQuery {
            before: Some(first[1].id),
            ..query(AuditSites::Only(vec![a, b]), 2)
        })
        .await;
        assert_eq!(targets(&next), ["a2", "b1"]);
        let viewed = read(AuditQuery {
            action: "incident".into(),
            ..query(AuditSites::Only(vec![a]), 10)
        })
        .await;
        assert_eq!(targets(&viewed), ["a3", "a1"]);
        let by_b = read(AuditQuery {
            actor: "dsl-b".into(),
            ..query(AuditSites::Only(vec![a]), 10)
        })
        .await;
        assert!(by_b.is_empty());
    }

    #[tokio::test]
    async fn a_sites_page_is_read_from_its_index_without_sorting() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("c.db"), true)
            .await
            .unwrap();
        let plan: Vec<String> = sqlx::query(
            "EXPLAIN QUERY PLAN SELECT id FROM audit_log \
             WHERE site_id = 1 AND id < 500 ORDER BY id DESC LIMIT 100",
        )
        .fetch_all(&store.reader)
        .await
        .unwrap()
        .iter()
        .map(|r| sqlx::Row::get::<String, _>(r, "detail"))
        .collect();
        let plan = plan.join("; ");
        assert!(plan.contains("audit_log_site"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }
}
