//! SQLite: a site's capture alerts and routes set in the console, and the
//! policy exclusions DSLs add from captures (migration 0018). The alerts
//! themselves are decided in the batch's transaction: see
//! `incidents::record_capture`.

use async_trait::async_trait;
use sqlx::{Row, SqliteConnection};

use super::{SqliteStore, instant, millis};
use crate::alerts::AlertSettings;
use crate::model::{Role, SiteId, Timing};
use crate::store::{AuditEntry, PolicyExclusion, Result, SiteRoute, StoreError};

/// The site's alert settings from the console, read inside a transaction.
pub(super) async fn alert_override_in(
    conn: &mut SqliteConnection,
    site: i64,
) -> Result<Option<AlertSettings>> {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT instant_categories, thresholds FROM site_alert_settings WHERE site_id = ?",
    )
    .bind(site)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|(categories, thresholds)| {
        AlertSettings::parse(&categories, &thresholds)
            .map_err(|e| StoreError::Corrupt(format!("site {site} alert settings: {e}")))
    })
    .transpose()
}

/// The row is this site's, whatever `audit.site` says.
async fn audit_in(conn: &mut SqliteConnection, site: SiteId, audit: &AuditEntry<'_>) -> Result<()> {
    super::audit::write_in(conn, Some(site), audit).await
}

fn exclusion_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<PolicyExclusion> {
    Ok(PolicyExclusion {
        id: r.try_get("id")?,
        capture: r.try_get("capture_id")?,
        site: SiteId(r.try_get("site_id")?),
        rule_id: r.try_get("rule_id")?,
        what: r.try_get("what")?,
        version_before: r.try_get::<i64, _>("version_before")? as u64,
        version_after: r.try_get::<i64, _>("version_after")? as u64,
        undone_version: r
            .try_get::<Option<i64>, _>("undone_version")?
            .map(|v| v as u64),
        at: instant(r.try_get("at")?)?,
        actor: r.try_get("actor")?,
    })
}

#[async_trait]
impl crate::store::AlertStore for SqliteStore {
    async fn alert_override(&self, site: SiteId) -> Result<Option<AlertSettings>> {
        let mut conn = self.reader.acquire().await?;
        alert_override_in(&mut conn, site.0).await
    }

    async fn set_alert_override(
        &self,
        site: SiteId,
        value: Option<&AlertSettings>,
        audit: AuditEntry<'_>,
    ) -> Result<()> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        match value {
            Some(settings) => {
                sqlx::query(
                    "INSERT INTO site_alert_settings (site_id, instant_categories, thresholds, updated_at, updated_by) \
                     VALUES (?, ?, ?, ?, ?) ON CONFLICT (site_id) DO UPDATE SET \
                     instant_categories = excluded.instant_categories, thresholds = excluded.thresholds, \
                     updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                )
                .bind(site.0)
                .bind(settings.categories_text())
                .bind(settings.thresholds_text())
                .bind(millis(audit.at))
                .bind(audit.actor)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM site_alert_settings WHERE site_id = ?")
                    .bind(site.0)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        audit_in(&mut tx, site, &audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn site_routes(&self, site: SiteId) -> Result<Vec<SiteRoute>> {
        let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
            "SELECT id, kind, role, timing FROM site_routes WHERE site_id = ? ORDER BY kind, id",
        )
        .bind(site.0)
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|(id, kind, role, timing)| {
                Ok(SiteRoute {
                    id,
                    kind,
                    role: Role::parse(&role)
                        .ok_or_else(|| StoreError::Corrupt(format!("site route role '{role}'")))?,
                    timing: Timing::parse(&timing).ok_or_else(|| {
                        StoreError::Corrupt(format!("site route timing '{timing}'"))
                    })?,
                })
            })
            .collect()
    }

    async fn add_site_route(
        &self,
        site: SiteId,
        route: &SiteRoute,
        seed: &[crate::config::Route],
        audit: AuditEntry<'_>,
    ) -> Result<bool> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let held: i64 = sqlx::query_scalar("SELECT count(*) FROM site_routes WHERE site_id = ?")
            .bind(site.0)
            .fetch_one(&mut *tx)
            .await?;
        let insert = "INSERT INTO site_routes (site_id, kind, role, timing, created_at, created_by) \
                      VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING";
        if held == 0 {
            for r in seed {
                for role in &r.roles {
                    sqlx::query(insert)
                        .bind(site.0)
                        .bind(&r.kind)
                        .bind(role.as_str())
                        .bind(r.timing.as_str())
                        .bind(millis(audit.at))
                        .bind(audit.actor)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        let added = sqlx::query(insert)
            .bind(site.0)
            .bind(&route.kind)
            .bind(route.role.as_str())
            .bind(route.timing.as_str())
            .bind(millis(audit.at))
            .bind(audit.actor)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if !added && held > 0 {
            return Ok(false);
        }
        audit_in(&mut tx, site, &audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn remove_site_route(
        &self,
        site: SiteId,
        id: i64,
        audit: AuditEntry<'_>,
    ) -> Result<bool> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let done = sqlx::query("DELETE FROM site_routes WHERE site_id = ? AND id = ?")
            .bind(site.0)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        audit_in(&mut tx, site, &audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn clear_site_routes(&self, site: SiteId, audit: AuditEntry<'_>) -> Result<u64> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let done = sqlx::query("DELETE FROM site_routes WHERE site_id = ?")
            .bind(site.0)
            .execute(&mut *tx)
            .await?;
        audit_in(&mut tx, site, &audit).await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn record_policy_exclusion(&self, e: &PolicyExclusion) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO policy_exclusions (capture_id, site_id, rule_id, what, version_before, version_after, at, actor) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(e.capture)
        .bind(e.site.0)
        .bind(&e.rule_id)
        .bind(&e.what)
        .bind(e.version_before as i64)
        .bind(e.version_after as i64)
        .bind(millis(e.at))
        .bind(&e.actor)
        .fetch_one(&self.writer)
        .await?)
    }

    async fn policy_exclusions(&self, captures: &[i64]) -> Result<Vec<PolicyExclusion>> {
        let mut found = Vec::new();
        for capture in captures {
            let rows =
                sqlx::query("SELECT * FROM policy_exclusions WHERE capture_id = ? ORDER BY id")
                    .bind(capture)
                    .fetch_all(&self.reader)
                    .await?;
            for row in &rows {
                found.push(exclusion_from_row(row)?);
            }
        }
        Ok(found)
    }

    async fn policy_exclusion(&self, id: i64) -> Result<Option<PolicyExclusion>> {
        sqlx::query("SELECT * FROM policy_exclusions WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.reader)
            .await?
            .as_ref()
            .map(exclusion_from_row)
            .transpose()
    }

    async fn purge_threshold_alerts(&self, site: SiteId, before: jiff::Timestamp) -> Result<u64> {
        Ok(
            sqlx::query(
                "DELETE FROM capture_threshold_alerts WHERE site_id = ? AND crossed_at < ?",
            )
            .bind(site.0)
            .bind(millis(before))
            .execute(&self.writer)
            .await?
            .rows_affected(),
        )
    }

    async fn exclusion_undone(&self, id: i64, version: u64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE policy_exclusions SET undone_version = ? WHERE id = ? AND undone_version IS NULL",
        )
        .bind(version as i64)
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use jiff::{SignedDuration, Timestamp};

    use crate::alerts::{AlertSettings, Threshold};
    use crate::model::{CaptureRecord, Event, EventBody, Role, Seq, Timing};
    use crate::store::sqlite::testing::snapshot;
    use crate::store::{AlertStore, AuditEntry, IngestStore, NotificationStore, SiteRoute};

    fn capture(category: &str, severity: u8, account: &str) -> CaptureRecord {
        CaptureRecord {
            rule_id: "r".into(),
            matched_text: "nobody likes you".into(),
            window_title: "nobody likes you - Chat".into(),
            account: account.into(),
            ..snapshot(category, severity)
        }
    }

    fn audit(action: &'static str) -> AuditEntry<'static> {
        AuditEntry {
            at: Timestamp::now(),
            site: None,
            actor: "console:admin",
            action,
            target: "site Cabot",
            detail: "",
            address: "127.0.0.1",
        }
    }

    /// (kind, summary) of the events not yet expanded.
    async fn events(store: &super::SqliteStore) -> Vec<(String, String)> {
        store
            .new_notification_events(100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.kind, e.summary))
            .collect()
    }

    #[tokio::test]
    async fn a_threshold_alerts_once_per_crossing_and_again_after_the_window_clears() {
        let dir = tempfile::tempdir().unwrap();
        let start: Timestamp = "2026-11-02T09:00:00Z".parse().unwrap();
        let (store, site, device) =
            crate::store::sqlite::testing::store_with_device(dir.path(), start).await;
        let hour = SignedDuration::from_hours(1);
        let day = SignedDuration::from_hours(24);
        let mut seq = 0;
        let mut send = async |at: Timestamp, c: CaptureRecord| {
            seq += 1;
            let event = Event {
                seq: Seq(seq),
                event_id: format!("e{seq}"),
                occurred_at: at,
                body: EventBody::Capture(c),
            };
            store
                .record_batch(&device, std::slice::from_ref(&event), at)
                .await
                .unwrap();
            // Resent: applied once.
            store.record_batch(&device, &[event], at).await.unwrap();
        };
        // Four bullying captures in a day, and one of another category.
        for n in 0..4 {
            send(start + n * hour, capture("bullying", 3, "pupil1")).await;
        }
        send(start + 5 * hour, capture("drugs", 2, "pupil1")).await;
        assert!(
            events(&store).await.is_empty(),
            "{:?}",
            events(&store).await
        );
        // The fifth: one alert, naming no account.
        send(start + 6 * hour, capture("bullying", 2, "pupil1")).await;
        let got = events(&store).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "capture_threshold");
        assert!(
            got[0]
                .1
                .starts_with("5 bullying captures in 7 days on this device"),
            "{got:?}"
        );
        assert!(!got[0].1.contains("pupil1"));
        // The sixth and seventh: not again.
        send(start + 7 * hour, capture("bullying", 2, "pupil1")).await;
        send(start + day, capture("bullying", 2, "pupil1")).await;
        assert_eq!(events(&store).await.len(), 1);
        // A week after the alert, five more in a day: a new crossing.
        for n in 0..5 {
            send(start + 8 * day + n * hour, capture("bullying", 2, "pupil1")).await;
        }
        let got = events(&store).await;
        assert_eq!(got.len(), 2, "{got:?}");
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM capture_threshold_alerts")
            .fetch_one(&store.reader)
            .await
            .unwrap();
        // Device and account crossed together each time: one event, two rows.
        assert_eq!(rows, 4);

        // A console override replaces collector.toml's thresholds.
        let settings = AlertSettings {
            instant_categories: vec![],
            thresholds: vec![Threshold {
                category: "drugs".into(),
                count: 2,
                days: 1,
            }],
        };
        store
            .set_alert_override(site.id, Some(&settings), audit("alert_settings_set"))
            .await
            .unwrap();
        assert_eq!(store.alert_override(site.id).await.unwrap(), Some(settings));
        send(start + 20 * day, capture("drugs", 2, "pupil2")).await;
        assert_eq!(events(&store).await.len(), 2);
        send(start + 20 * day + hour, capture("drugs", 2, "pupil2")).await;
        let got = events(&store).await;
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(
            got[2].1.starts_with("2 drugs captures in 1 days"),
            "{got:?}"
        );

        // The retention purge takes the alert rows (which name accounts),
        // once no threshold's period can need them.
        let alert_rows = async || -> i64 {
            sqlx::query_scalar("SELECT count(*) FROM capture_threshold_alerts")
                .fetch_one(&store.reader)
                .await
                .unwrap()
        };
        std::fs::create_dir_all(dir.path().join("pki")).unwrap();
        let evidence = crate::evidence::EvidenceStore::open(dir.path()).unwrap();
        let retention = [(site.id, 30 * day)];
        crate::incidents::purge_expired(&store, &evidence, &retention, start + 60 * day)
            .await
            .unwrap();
        assert_eq!(
            alert_rows().await,
            6,
            "kept while a 90-day threshold could need them"
        );
        crate::incidents::purge_expired(&store, &evidence, &retention, start + 200 * day)
            .await
            .unwrap();
        assert_eq!(alert_rows().await, 0);
    }

    #[tokio::test]
    async fn an_instant_category_alerts_whatever_the_severity_once_per_incident() {
        let dir = tempfile::tempdir().unwrap();
        let start: Timestamp = "2026-11-02T09:00:00Z".parse().unwrap();
        let (store, _site, device) =
            crate::store::sqlite::testing::store_with_device(dir.path(), start).await;
        let events_of = |c: CaptureRecord, seq: u64, at: Timestamp| Event {
            seq: Seq(seq),
            event_id: format!("e{seq}"),
            occurred_at: at,
            body: EventBody::Capture(c),
        };
        let minute = SignedDuration::from_mins(1);
        store
            .record_batch(
                &device,
                &[
                    events_of(capture("self-harm", 2, "pupil1"), 1, start),
                    events_of(capture("self-harm", 2, "pupil1"), 2, start + minute),
                    // Severe: capture_severe only, not both.
                    events_of(capture("suicide", 5, "pupil1"), 3, start + minute),
                    // Not an instant category, not severe: nothing.
                    events_of(capture("drugs", 2, "pupil1"), 4, start + minute),
                ],
                start + minute,
            )
            .await
            .unwrap();
        let got = events(&store).await;
        assert_eq!(
            got.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["capture_instant", "capture_severe"],
            "{got:?}"
        );
        assert!(got[0].1.ends_with(": self-harm"), "{got:?}");
    }

    #[tokio::test]
    async fn site_routes_start_from_collector_toml_and_clear_back_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, site, _) =
            crate::store::sqlite::testing::store_with_device(dir.path(), Timestamp::now()).await;
        assert!(store.site_routes(site.id).await.unwrap().is_empty());
        let seed = crate::config::NotificationSettings::default().routes;
        let route = SiteRoute {
            id: 0,
            kind: "capture_threshold".into(),
            role: Role::HeadTeacher,
            timing: Timing::Digest,
        };
        assert!(
            store
                .add_site_route(site.id, &route, &seed, audit("route_added"))
                .await
                .unwrap()
        );
        let routes = store.site_routes(site.id).await.unwrap();
        let seeded: usize = seed.iter().map(|r| r.roles.len()).sum();
        assert_eq!(routes.len(), seeded + 1);
        assert!(
            !store
                .add_site_route(site.id, &route, &seed, audit("route_added"))
                .await
                .unwrap(),
            "the same route twice"
        );
        let id = routes
            .iter()
            .find(|r| r.kind == "capture_threshold" && r.role == Role::HeadTeacher)
            .unwrap()
            .id;
        assert!(
            store
                .remove_site_route(site.id, id, audit("route_removed"))
                .await
                .unwrap()
        );
        assert!(
            !store
                .remove_site_route(site.id, id, audit("route_removed"))
                .await
                .unwrap()
        );
        assert_eq!(store.site_routes(site.id).await.unwrap().len(), seeded);
        store
            .clear_site_routes(site.id, audit("routes_cleared"))
            .await
            .unwrap();
        assert!(store.site_routes(site.id).await.unwrap().is_empty());
    }
}
