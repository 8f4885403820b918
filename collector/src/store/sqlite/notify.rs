//! SQLite: recipients, notification events and the message outbox.

use async_trait::async_trait;
use jiff::Timestamp;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{SqliteStore, instant, millis, optional_instant};
use crate::model::{Channel, DeviceId, NotificationStatus, SiteId};
use crate::store::{NewNotification, Notification, NotificationEvent, Recipient, Result};

fn recipient_from_row(r: &SqliteRow) -> Result<Recipient> {
    Ok(Recipient {
        id: r.try_get("id")?,
        site: SiteId(r.try_get("site_id")?),
        role: r.try_get("role")?,
        channel: r.try_get("channel")?,
        address: r.try_get("address")?,
        webhook_format: r.try_get("webhook_format")?,
        webhook_secret: r.try_get("webhook_secret")?,
    })
}

async fn insert_messages(
    tx: &mut sqlx::SqliteConnection,
    event: Option<i64>,
    messages: &[NewNotification],
    at: Timestamp,
) -> Result<Vec<i64>> {
    let mut ids = Vec::new();
    for m in messages {
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO notifications (event_id, site_id, channel, address, webhook_format, webhook_secret, timing, \
             subject, body, payload, next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (event_id, channel, address, timing) DO NOTHING RETURNING id",
        )
        .bind(event)
        .bind(m.site.0)
        .bind(m.channel)
        .bind(&m.address)
        .bind(&m.webhook_format)
        .bind(&m.webhook_secret)
        .bind(m.timing)
        .bind(&m.subject)
        .bind(&m.body)
        .bind(&m.payload)
        .bind(millis(at))
        .bind(millis(at))
        .fetch_optional(&mut *tx)
        .await?;
        ids.extend(id);
    }
    Ok(ids)
}

fn notification_from_row(r: &SqliteRow) -> Result<Notification> {
    Ok(Notification {
        id: r.try_get("id")?,
        site: SiteId(r.try_get("site_id")?),
        channel: r.try_get("channel")?,
        address: r.try_get("address")?,
        webhook_format: r.try_get("webhook_format")?,
        webhook_secret: r.try_get("webhook_secret")?,
        timing: r.try_get("timing")?,
        subject: r.try_get("subject")?,
        body: r.try_get("body")?,
        payload: r.try_get("payload")?,
        status: r.try_get("status")?,
        attempts: r.try_get("attempts")?,
        next_attempt_at: instant(r.try_get("next_attempt_at")?)?,
        last_error: r.try_get("last_error")?,
        created_at: instant(r.try_get("created_at")?)?,
        sent_at: optional_instant(r.try_get("sent_at")?)?,
    })
}

#[async_trait]
impl crate::store::NotificationStore for SqliteStore {
    async fn add_recipient(&self, r: &Recipient, at: Timestamp) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO recipients (site_id, role, channel, address, webhook_format, webhook_secret, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (site_id, role, channel, address) DO UPDATE SET webhook_format = excluded.webhook_format, \
             webhook_secret = excluded.webhook_secret RETURNING id",
        )
        .bind(r.site.0)
        .bind(r.role)
        .bind(r.channel)
        .bind(&r.address)
        .bind(&r.webhook_format)
        .bind(&r.webhook_secret)
        .bind(millis(at))
        .fetch_one(&self.writer)
        .await?)
    }

    async fn recipients(&self, site: Option<SiteId>) -> Result<Vec<Recipient>> {
        let rows = sqlx::query(
            "SELECT * FROM recipients WHERE (?1 IS NULL OR site_id = ?1) ORDER BY site_id, role, id",
        )
        .bind(site.map(|s| s.0))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(recipient_from_row).collect()
    }

    async fn remove_recipient(&self, site: SiteId, id: i64) -> Result<bool> {
        let done = sqlx::query("DELETE FROM recipients WHERE id = ? AND site_id = ?")
            .bind(id)
            .bind(site.0)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn new_notification_events(&self, limit: usize) -> Result<Vec<NotificationEvent>> {
        let rows = sqlx::query(
            "SELECT * FROM notification_events WHERE expanded_at IS NULL ORDER BY id LIMIT ?",
        )
        .bind(limit as i64)
        .fetch_all(&self.writer)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(NotificationEvent {
                    id: r.try_get("id")?,
                    site: SiteId(r.try_get("site_id")?),
                    kind: r.try_get("kind")?,
                    flag_id: r.try_get("flag_id")?,
                    device: r
                        .try_get::<Option<String>, _>("device_id")?
                        .map(DeviceId::from_string),
                    account: r.try_get("account")?,
                    severity: r.try_get("severity")?,
                    summary: r.try_get("summary")?,
                    at: instant(r.try_get("at")?)?,
                })
            })
            .collect()
    }

    async fn queue_notifications(
        &self,
        event: Option<i64>,
        messages: &[NewNotification],
        at: Timestamp,
    ) -> Result<u64> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let ids = insert_messages(&mut tx, event, messages, at).await?;
        if let Some(event) = event {
            sqlx::query("UPDATE notification_events SET expanded_at = ? WHERE id = ?")
                .bind(millis(at))
                .bind(event)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(ids.len() as u64)
    }

    async fn claim_notifications(
        &self,
        owner: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
        channels: &[Channel],
    ) -> Result<Vec<Notification>> {
        // One statement: SQLite's single writer makes the claim atomic (on
        // PostgreSQL this is SELECT … FOR UPDATE SKIP LOCKED).
        let rows = sqlx::query(
            "UPDATE notifications SET lease_owner = ?1, lease_until = ?2 WHERE id IN ( \
               SELECT id FROM notifications WHERE status = 'pending' AND timing = 'immediate' \
               AND next_attempt_at <= ?3 AND (lease_until IS NULL OR lease_until < ?3) \
               AND instr(?5, ',' || channel || ',') > 0 ORDER BY id LIMIT ?4) \
             RETURNING *",
        )
        .bind(owner)
        .bind(millis(lease_until))
        .bind(millis(now))
        .bind(limit as i64)
        .bind(format!(
            ",{},",
            channels
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(",")
        ))
        .fetch_all(&self.writer)
        .await?;
        let mut claimed: Vec<Notification> = rows
            .iter()
            .map(notification_from_row)
            .collect::<Result<_>>()?;
        claimed.sort_by_key(|n| n.id);
        Ok(claimed)
    }

    async fn notification_sent(&self, id: i64, at: Timestamp) -> Result<()> {
        sqlx::query(
            "UPDATE notifications SET status = 'sent', sent_at = ?, attempts = attempts + 1, lease_owner = NULL, \
             lease_until = NULL, last_error = '' WHERE id = ?",
        )
        .bind(millis(at))
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn notification_failed(
        &self,
        id: i64,
        error: &str,
        retry_at: Option<Timestamp>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE notifications SET attempts = attempts + 1, last_error = ?, lease_owner = NULL, lease_until = NULL, \
             status = CASE WHEN ?2 IS NULL THEN 'dead' ELSE 'pending' END, \
             next_attempt_at = coalesce(?2, next_attempt_at) WHERE id = ?3",
        )
        .bind(error)
        .bind(retry_at.map(millis))
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn pending_digest(&self, site: SiteId) -> Result<Vec<Notification>> {
        let rows = sqlx::query(
            "SELECT * FROM notifications WHERE site_id = ? AND timing = 'digest' AND status = 'pending' ORDER BY id",
        )
        .bind(site.0)
        .fetch_all(&self.writer)
        .await?;
        rows.iter().map(notification_from_row).collect()
    }

    async fn queue_digest(
        &self,
        site: SiteId,
        digests: &[(NewNotification, Vec<i64>)],
        local_date: &str,
        at: Timestamp,
    ) -> Result<()> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        for (message, members) in digests {
            let ids = insert_messages(&mut tx, None, std::slice::from_ref(message), at).await?;
            let Some(digest) = ids.first() else { continue };
            let mut update: QueryBuilder<Sqlite> =
                QueryBuilder::new("UPDATE notifications SET status = 'digested', digest_id = ");
            update
                .push_bind(*digest)
                .push(", sent_at = ")
                .push_bind(millis(at));
            update.push(" WHERE status = 'pending' AND id IN (");
            let mut list = update.separated(", ");
            for id in members {
                list.push_bind(*id);
            }
            list.push_unseparated(")");
            update.build().execute(&mut *tx).await?;
        }
        sqlx::query(
            "INSERT INTO digests (site_id, last_date) VALUES (?, ?) ON CONFLICT (site_id) DO UPDATE SET last_date = excluded.last_date",
        )
        .bind(site.0)
        .bind(local_date)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn digest_last_date(&self, site: SiteId) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT last_date FROM digests WHERE site_id = ?")
                .bind(site.0)
                .fetch_optional(&self.writer)
                .await?,
        )
    }

    async fn list_notifications(
        &self,
        status: Option<NotificationStatus>,
    ) -> Result<Vec<Notification>> {
        let rows = sqlx::query(
            "SELECT * FROM notifications WHERE (?1 IS NULL OR status = ?1) ORDER BY id",
        )
        .bind(status.map(|s| s.as_str()))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(notification_from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;

    use crate::model::{Channel, NotificationStatus, Timing};
    use crate::store::sqlite::testing::store_with_device;
    use crate::store::{NewNotification, NotificationStore};

    fn message(site: crate::model::SiteId, address: &str, timing: &str) -> NewNotification {
        let timing = Timing::parse(timing).unwrap();
        NewNotification {
            site,
            channel: Channel::Email,
            address: address.into(),
            webhook_format: String::new(),
            webhook_secret: String::new(),
            timing,
            subject: format!("to {address}"),
            body: "body".into(),
            payload: String::new(),
        }
    }

    fn t(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000).unwrap() + SignedDuration::from_secs(secs)
    }

    #[tokio::test]
    async fn a_claimed_message_is_leased_to_one_owner_until_the_lease_ends() {
        let dir = tempfile::tempdir().unwrap();
        let (store, site, _) = store_with_device(dir.path(), t(0)).await;
        let queued = store
            .queue_notifications(None, &[message(site.id, "head@school", "immediate")], t(0))
            .await
            .unwrap();
        assert_eq!(queued, 1);
        let a = store
            .claim_notifications("a", t(1), t(61), 10, &[Channel::Email])
            .await
            .unwrap();
        assert_eq!(a.len(), 1);
        let b = store
            .claim_notifications("b", t(30), t(90), 10, &[Channel::Email])
            .await
            .unwrap();
        assert!(b.is_empty(), "leased to a until 61 s");
        assert!(
            store
                .claim_notifications("b", t(62), t(120), 10, &[Channel::Webhook])
                .await
                .unwrap()
                .is_empty(),
            "only the channels asked for"
        );
        let b = store
            .claim_notifications("b", t(62), t(120), 10, &[Channel::Email])
            .await
            .unwrap();
        assert_eq!(b.len(), 1, "a's lease ended: b may send it");
        store.notification_sent(b[0].id, t(63)).await.unwrap();
        assert!(
            store
                .claim_notifications("c", t(200), t(260), 10, &[Channel::Email])
                .await
                .unwrap()
                .is_empty(),
            "sent once"
        );
        let sent = store
            .list_notifications(Some(NotificationStatus::Sent))
            .await
            .unwrap();
        assert_eq!((sent.len(), sent[0].attempts), (1, 1));
    }

    #[tokio::test]
    async fn a_failed_message_waits_for_its_retry_and_dies_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let (store, site, _) = store_with_device(dir.path(), t(0)).await;
        store
            .queue_notifications(None, &[message(site.id, "dsl@school", "immediate")], t(0))
            .await
            .unwrap();
        let id = store
            .claim_notifications("a", t(1), t(61), 10, &[Channel::Email])
            .await
            .unwrap()[0]
            .id;
        store
            .notification_failed(id, "connection refused", Some(t(100)))
            .await
            .unwrap();
        let claim =
            |at: i64| store.claim_notifications("a", t(at), t(at + 60), 10, &[Channel::Email]);
        assert!(claim(99).await.unwrap().is_empty(), "not before its retry");
        assert_eq!(claim(100).await.unwrap().len(), 1);
        store.notification_failed(id, "again", None).await.unwrap();
        assert!(claim(10_000).await.unwrap().is_empty(), "dead");
        let dead = store
            .list_notifications(Some(NotificationStatus::Dead))
            .await
            .unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(
            (dead[0].attempts, dead[0].last_error.as_str()),
            (2, "again")
        );
    }

    #[tokio::test]
    async fn digest_messages_wait_for_the_digest_and_are_gathered_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, site, _) = store_with_device(dir.path(), t(0)).await;
        store
            .queue_notifications(
                None,
                &[
                    message(site.id, "gov@school", "digest"),
                    message(site.id, "gov@school", "digest"),
                ],
                t(0),
            )
            .await
            .unwrap();
        assert!(
            store
                .claim_notifications("a", t(1), t(61), 10, &[Channel::Email])
                .await
                .unwrap()
                .is_empty(),
            "digest messages are not sent one by one"
        );
        let pending = store.pending_digest(site.id).await.unwrap();
        assert_eq!(pending.len(), 2);
        let digest = message(site.id, "gov@school", "immediate");
        let members: Vec<i64> = pending.iter().map(|n| n.id).collect();
        store
            .queue_digest(site.id, &[(digest, members)], "2027-01-15", t(2))
            .await
            .unwrap();
        assert!(store.pending_digest(site.id).await.unwrap().is_empty());
        assert_eq!(
            store.digest_last_date(site.id).await.unwrap().as_deref(),
            Some("2027-01-15")
        );
        let out = store
            .claim_notifications("a", t(3), t(63), 10, &[Channel::Email])
            .await
            .unwrap();
        assert_eq!(out.len(), 1, "one message for the address");
    }
}
