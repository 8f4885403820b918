//! Sequence numbers: AUTOINCREMENT never reuses one, and on every
//! connection `raise_sequence_floor` keeps them above what the collector
//! committed, renumbering a new outbox's pending events once.

use super::state_table::{set_state_in, state_number};
use super::{Outbox, Result};
use crate::state::key;

impl Outbox {
    /// Called on every connection with the highest sequence number the
    /// collector has committed for this device. Makes the next number
    /// greater than it, and, the first time an outbox meets the collector,
    /// renumbers its pending events above it too: an outbox that replaced a
    /// lost or corrupt one restarts at 1, and events numbered below what
    /// the collector holds would be ignored as duplicates. Renumbering is
    /// safe then because nothing is sent before this hello. Returns whether
    /// anything changed.
    pub async fn raise_sequence_floor(&self, committed: u64) -> Result<bool> {
        let _books = self.books.lock().await;
        let mut tx = self.pool.begin().await.map_err(self.db())?;
        let verified = state_number(&mut tx, key::SEQUENCE_VERIFIED)
            .await
            .map_err(self.db())?
            == 1;
        let mut last: i64 = sqlx::query_scalar(
            "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'outbox'",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(self.db())?;
        let oldest: Option<i64> = sqlx::query_scalar("SELECT min(seq) FROM outbox")
            .fetch_one(&mut *tx)
            .await
            .map_err(self.db())?;
        let committed = committed as i64;
        let mut changed = false;
        if let Some(oldest) = oldest.filter(|o| !verified && *o <= committed) {
            let offset = committed + 1 - oldest;
            // Through negatives, so no row collides with another mid-update.
            sqlx::query("UPDATE outbox SET seq = -seq")
                .execute(&mut *tx)
                .await
                .map_err(self.db())?;
            sqlx::query("UPDATE outbox SET seq = ? - seq")
                .bind(offset)
                .execute(&mut *tx)
                .await
                .map_err(self.db())?;
            last += offset;
            changed = true;
            tracing::warn!(
                committed,
                offset,
                "outbox is new to the collector: pending events renumbered"
            );
        }
        if last < committed {
            last = committed;
            changed = true;
        }
        if changed {
            let updated = sqlx::query("UPDATE sqlite_sequence SET seq = ? WHERE name = 'outbox'")
                .bind(last)
                .execute(&mut *tx)
                .await
                .map_err(self.db())?;
            if updated.rows_affected() == 0 {
                sqlx::query("INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)")
                    .bind(last)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.db())?;
            }
        }
        set_state_in(&mut tx, key::SEQUENCE_VERIFIED, "1")
            .await
            .map_err(self.db())?;
        tx.commit().await.map_err(self.db())?;
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::DEFAULT_MAX_BYTES;
    use crate::outbox::test_events::heartbeat;
    use jiff::Timestamp;

    #[tokio::test]
    async fn a_new_outbox_renumbers_pending_events_above_the_collector_once() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = Outbox::open(dir.path(), DEFAULT_MAX_BYTES).await.unwrap();
        let t = Timestamp::now();
        // A replacement outbox queued three events before reaching the
        // collector, which already holds up to 100.
        assert_eq!(
            outbox
                .append_all((1..=3).map(|n| (t, heartbeat(n))).collect())
                .await
                .unwrap(),
            [1, 2, 3]
        );
        assert!(outbox.raise_sequence_floor(100).await.unwrap());
        let seqs: Vec<u64> = outbox
            .read_after(0, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [101, 102, 103]);
        assert_eq!(outbox.append(t, heartbeat(4)).await.unwrap(), Some(104));
        // Once verified, pending events are never renumbered again (they may
        // have been sent).
        assert!(!outbox.raise_sequence_floor(102).await.unwrap());
        let seqs: Vec<u64> = outbox
            .read_after(0, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [101, 102, 103, 104]);
    }

    #[tokio::test]
    async fn floor_jumps_past_collector_high_water_mark() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = Outbox::open(dir.path(), DEFAULT_MAX_BYTES).await.unwrap();
        assert!(outbox.raise_sequence_floor(41).await.unwrap());
        assert_eq!(
            outbox.append(Timestamp::now(), heartbeat(1)).await.unwrap(),
            Some(42)
        );
        assert!(
            !outbox.raise_sequence_floor(10).await.unwrap(),
            "never lowers"
        );
        assert_eq!(
            outbox.append(Timestamp::now(), heartbeat(1)).await.unwrap(),
            Some(43)
        );
    }
}
