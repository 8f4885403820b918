//! SQLite: the site directory, two-step sign-in evidence, 2FA pairs and
//! reminders.

use async_trait::async_trait;
use jiff::Timestamp;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::activity::{notification_event, open_flag, transition_in};
use super::{SqliteStore, instant, millis, optional_instant};
use crate::directory::{DirectoryAccount, Role};
use crate::flags::{FlagAction, FlagKind};
use crate::model::{DeviceId, SiteId};
use crate::rules::mfa::{MAX_CLOCK_SKEW, MfaStatus};
use crate::store::{
    ActivityChanges, DeviceFilter, DirectoryImport, MfaVerdict, NewMfaCompletion, Result,
    StoreError, StoredPair,
};

async fn directory_in(
    executor: &mut sqlx::SqliteConnection,
    site: SiteId,
) -> Result<Vec<DirectoryAccount>> {
    let rows = sqlx::query(
        "SELECT username, role, email, display_name, groups FROM directory_accounts WHERE site_id = ? ORDER BY username",
    )
    .bind(site.0)
    .fetch_all(&mut *executor)
    .await?;
    rows.iter()
        .map(|r| {
            let role: String = r.try_get("role")?;
            Ok(DirectoryAccount {
                username: r.try_get("username")?,
                role: Role::parse(&role)
                    .ok_or_else(|| StoreError::Corrupt(format!("directory role '{role}'")))?,
                email: r.try_get("email")?,
                display_name: r.try_get("display_name")?,
                groups: split_groups(&r.try_get::<String, _>("groups")?),
            })
        })
        .collect()
}

/// The stored `groups` column: names joined by ';' (none may hold one).
fn split_groups(column: &str) -> Vec<String> {
    column
        .split(';')
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .collect()
}

pub(super) async fn record_completions(
    executor: &mut sqlx::SqliteConnection,
    completions: &[NewMfaCompletion],
    at: Timestamp,
) -> Result<u64> {
    let mut inserted = 0;
    for chunk in completions.chunks(500) {
        let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO mfa_completions (site_id, device_id, account, completed_at, source, method, external_id, device_hint, recorded_at) ",
        );
        insert.push_values(chunk, |mut row, c| {
            row.push_bind(c.site.0)
                .push_bind(c.device.as_ref().map(|d| d.as_str().to_owned()))
                .push_bind(c.account.clone())
                .push_bind(millis(c.completed_at))
                .push_bind(c.source.clone())
                .push_bind(c.method.clone())
                .push_bind(c.external_id.clone())
                .push_bind(c.device_hint.clone())
                .push_bind(millis(at));
        });
        insert.push(" ON CONFLICT (source, external_id) DO NOTHING");
        inserted += insert
            .build()
            .execute(&mut *executor)
            .await?
            .rows_affected();
    }
    Ok(inserted)
}

#[async_trait]
impl crate::store::MfaStore for SqliteStore {
    async fn import_directory(
        &self,
        site: SiteId,
        accounts: &[DirectoryAccount],
        at: Timestamp,
    ) -> Result<DirectoryImport> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let existing = directory_in(&mut tx, site).await?;
        let mut summary = DirectoryImport::default();
        for account in accounts {
            match existing.iter().find(|e| e.username == account.username) {
                Some(e) if e == account => summary.unchanged += 1,
                Some(_) => summary.updated += 1,
                None => summary.added += 1,
            }
        }
        summary.removed = existing
            .iter()
            .filter(|e| !accounts.iter().any(|a| a.username == e.username))
            .count() as u64;
        sqlx::query("DELETE FROM directory_accounts WHERE site_id = ?")
            .bind(site.0)
            .execute(&mut *tx)
            .await?;
        for chunk in accounts.chunks(500) {
            let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO directory_accounts (site_id, username, role, email, display_name, groups, imported_at) ",
            );
            insert.push_values(chunk, |mut row, a| {
                row.push_bind(site.0)
                    .push_bind(a.username.clone())
                    .push_bind(a.role.as_str())
                    .push_bind(a.email.clone())
                    .push_bind(a.display_name.clone())
                    .push_bind(a.groups.join(";"))
                    .push_bind(millis(at));
            });
            insert.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(summary)
    }

    async fn directory(&self, site: SiteId) -> Result<Vec<DirectoryAccount>> {
        let mut connection = self.reader.acquire().await?;
        directory_in(&mut connection, site).await
    }

    async fn account_groups_on_device(
        &self,
        device: &DeviceId,
    ) -> Result<Vec<(String, Vec<String>)>> {
        // Only accounts with a session on this device, from its own site's
        // directory: a device never learns the rest of the school.
        let rows = sqlx::query(
            "SELECT d.username, d.groups FROM directory_accounts d \
             JOIN devices v ON v.id = ? AND d.site_id = v.site_id \
             WHERE d.groups <> '' AND d.username IN (SELECT DISTINCT account FROM sessions WHERE device_id = ?) \
             ORDER BY d.username",
        )
        .bind(device.as_str())
        .bind(device.as_str())
        .fetch_all(&self.reader)
        .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        // Only the groups the site's policy or acceptable-use policy in
        // force name: a group that changes nothing on the device (SEN, say)
        // never reaches it, whatever sessions it reports.
        let documents: Vec<(String,)> = sqlx::query_as(
            "SELECT toml FROM (SELECT p.policy_toml AS toml FROM site_policies p JOIN devices v ON v.id = ? AND p.site_id = v.site_id \
             ORDER BY p.version DESC LIMIT 1) \
             UNION ALL SELECT toml FROM (SELECT a.aup_toml AS toml FROM site_aups a JOIN devices v ON v.id = ? AND a.site_id = v.site_id \
             ORDER BY a.version DESC LIMIT 1)",
        )
        .bind(device.as_str())
        .bind(device.as_str())
        .fetch_all(&self.reader)
        .await?;
        let named: std::collections::BTreeSet<String> = documents
            .iter()
            .flat_map(|(toml,)| hallmonitor_policy::named_groups(toml))
            .collect();
        let mut accounts = Vec::new();
        for r in &rows {
            let groups: Vec<String> = split_groups(&r.try_get::<String, _>("groups")?)
                .into_iter()
                .filter(|g| named.contains(g))
                .collect();
            if !groups.is_empty() {
                accounts.push((r.try_get("username")?, groups));
            }
        }
        Ok(accounts)
    }

    async fn record_mfa_completions(
        &self,
        completions: &[NewMfaCompletion],
        at: Timestamp,
    ) -> Result<u64> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let inserted = record_completions(&mut tx, completions, at).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    async fn mfa_completions_for(
        &self,
        devices: &[DeviceId],
        as_of: Timestamp,
    ) -> Result<Vec<(DeviceId, String, Timestamp)>> {
        if devices.is_empty() {
            return Ok(Vec::new());
        }
        let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT device_id, account, max(completed_at) AS last FROM mfa_completions WHERE completed_at <= ",
        );
        query.push_bind(millis(as_of));
        query.push(" AND completed_at <= recorded_at + ");
        query.push_bind(MAX_CLOCK_SKEW.as_millis() as i64);
        query.push(" AND device_id IN (");
        let mut list = query.separated(", ");
        for device in devices {
            list.push_bind(device.as_str().to_owned());
        }
        query.push(") GROUP BY device_id, account");
        let rows = query.build().fetch_all(&self.reader).await?;
        rows.iter()
            .map(|r| {
                Ok((
                    DeviceId::from_string(r.try_get::<String, _>("device_id")?),
                    r.try_get("account")?,
                    instant(r.try_get("last")?)?,
                ))
            })
            .collect()
    }

    async fn record_mfa(&self, verdicts: &[MfaVerdict], at: Timestamp) -> Result<ActivityChanges> {
        let mut changes = ActivityChanges::default();
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        for verdict in verdicts {
            let device = verdict.device.as_str();
            sqlx::query("DELETE FROM mfa_pairs WHERE device_id = ?")
                .bind(device)
                .execute(&mut *tx)
                .await?;
            // Open flags of accounts that no longer use the device are closed.
            let open: Vec<(i64, String)> = sqlx::query_as(
                "SELECT id, account FROM flags WHERE device_id = ? AND kind = 'mfa_stale' AND state = 'open'",
            )
            .bind(device)
            .fetch_all(&mut *tx)
            .await?;
            for (id, account) in open {
                if !verdict.pairs.iter().any(|p| p.account == account) {
                    transition_in(
                        &mut tx,
                        id,
                        FlagAction::Resolve,
                        "rules",
                        "the account has not used this device within the period",
                        at,
                    )
                    .await?
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    changes.resolved.push(id);
                }
            }
            for pair in &verdict.pairs {
                sqlx::query(
                    "INSERT INTO mfa_pairs (device_id, account, site_id, status, last_mfa, expires_at, last_session_at, as_of) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(device)
                .bind(&pair.account)
                .bind(verdict.site.0)
                .bind(pair.status.as_str())
                .bind(pair.last_mfa.map(millis))
                .bind(pair.expires_at.map(millis))
                .bind(millis(pair.last_session_at))
                .bind(millis(verdict.as_of))
                .execute(&mut *tx)
                .await?;
                let active: Option<(i64, String)> = sqlx::query_as(
                    "SELECT id, state FROM flags WHERE device_id = ? AND kind = 'mfa_stale' AND account = ? \
                     AND state IN ('open', 'disable_approved', 'disabled')",
                )
                .bind(device)
                .bind(&pair.account)
                .fetch_optional(&mut *tx)
                .await?;
                match (pair.status, active) {
                    (MfaStatus::Stale, None) => {
                        let summary = match pair.last_mfa {
                            Some(last) => format!(
                                "last two-step sign-in on this device {last}, older than allowed"
                            ),
                            None => "no two-step sign-in on this device on record".to_owned(),
                        };
                        let opened = open_flag(
                            &mut tx,
                            verdict.site,
                            &verdict.device,
                            FlagKind::MfaStale,
                            &pair.account,
                            &summary,
                            at,
                        )
                        .await?;
                        // Another collector instance opened it meanwhile.
                        let Some(id) = opened else { continue };
                        changes.opened.push(id);
                    }
                    (MfaStatus::Fresh | MfaStatus::DueSoon, Some((id, state)))
                        if state == "open" =>
                    {
                        transition_in(
                            &mut tx,
                            id,
                            FlagAction::Resolve,
                            "rules",
                            "two-step sign-in completed",
                            at,
                        )
                        .await?
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                        changes.resolved.push(id);
                    }
                    _ => {}
                }
                if let (MfaStatus::DueSoon, Some(expires)) = (pair.status, pair.expires_at) {
                    let queued = sqlx::query(
                        "INSERT INTO mfa_reminders (site_id, device_id, account, expires_at, queued_at) \
                         VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_id, account, expires_at) DO NOTHING",
                    )
                    .bind(verdict.site.0)
                    .bind(device)
                    .bind(&pair.account)
                    .bind(millis(expires))
                    .bind(millis(at))
                    .execute(&mut *tx)
                    .await?;
                    if queued.rows_affected() == 1 {
                        notification_event(
                            &mut tx,
                            verdict.site,
                            "mfa_due_soon",
                            None,
                            Some(&verdict.device),
                            &pair.account,
                            &format!("two-step sign-in on this device expires {expires}"),
                            at,
                        )
                        .await?;
                    }
                }
            }
        }
        tx.commit().await?;
        Ok(changes)
    }

    async fn mfa_pairs(
        &self,
        filter: &DeviceFilter,
        status: Option<MfaStatus>,
    ) -> Result<Vec<StoredPair>> {
        let rows = sqlx::query(
            "SELECT p.*, d.hostname, s.name AS site FROM mfa_pairs p JOIN devices d ON d.id = p.device_id \
             JOIN sites s ON s.id = p.site_id \
             WHERE (?1 IS NULL OR p.site_id = ?1) AND (?2 IS NULL OR p.device_id = ?2) AND (?3 IS NULL OR p.status = ?3) \
             ORDER BY s.name, p.account, d.hostname",
        )
        .bind(filter.site.map(|s| s.0))
        .bind(filter.device.as_ref().map(|d| d.as_str().to_owned()))
        .bind(status.map(MfaStatus::as_str))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                let status: String = r.try_get("status")?;
                Ok(StoredPair {
                    device_id: DeviceId::from_string(r.try_get::<String, _>("device_id")?),
                    hostname: r.try_get("hostname")?,
                    site: r.try_get("site")?,
                    account: r.try_get("account")?,
                    status: match status.as_str() {
                        "fresh" => MfaStatus::Fresh,
                        "due_soon" => MfaStatus::DueSoon,
                        "stale" => MfaStatus::Stale,
                        other => return Err(StoreError::Corrupt(format!("2FA status '{other}'"))),
                    },
                    last_mfa: optional_instant(r.try_get("last_mfa")?)?,
                    expires_at: optional_instant(r.try_get("expires_at")?)?,
                    last_session_at: instant(r.try_get("last_session_at")?)?,
                    as_of: instant(r.try_get("as_of")?)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{IngestStore, MfaStore};
    use jiff::SignedDuration;

    use super::*;
    use crate::rules::mfa::{MfaThresholds, status};

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// One pair's history: (completed at, recorded at) of each completion.
    struct Case {
        name: &'static str,
        history: Vec<(Timestamp, Timestamp)>,
        as_of: Timestamp,
        want_last: Option<Timestamp>,
        want_status: MfaStatus,
    }

    #[tokio::test]
    async fn newest_completion_is_taken_at_or_before_as_of_and_future_stamps_never_count() {
        let dir = tempfile::tempdir().unwrap();
        let (store, site, device) =
            crate::store::sqlite::testing::store_with_device(dir.path(), t("2026-01-01T00:00:00Z"))
                .await;

        let as_of = t("2026-11-24T12:00:00Z");
        let day = SignedDuration::from_hours(24);
        let minute = SignedDuration::from_mins(1);
        let same = |at: Timestamp| (at, at);
        let cases = [
            Case {
                name: "never",
                history: vec![],
                as_of,
                want_last: None,
                want_status: MfaStatus::Stale,
            },
            Case {
                name: "a newer completion after as_of hides none before it",
                history: vec![same(as_of - day * 10), same(as_of + day)],
                as_of,
                want_last: Some(as_of - day * 10),
                want_status: MfaStatus::Fresh,
            },
            Case {
                name: "history: the newest of several before as_of",
                history: vec![
                    same(as_of - day * 50),
                    same(as_of - day * 40),
                    same(as_of - day * 44),
                ],
                as_of,
                want_last: Some(as_of - day * 40),
                want_status: MfaStatus::DueSoon,
            },
            Case {
                name: "only completion after as_of: none yet",
                history: vec![same(as_of + SignedDuration::from_secs(1))],
                as_of,
                want_last: None,
                want_status: MfaStatus::Stale,
            },
            Case {
                name: "exactly at as_of counts",
                history: vec![same(as_of)],
                as_of,
                want_last: Some(as_of),
                want_status: MfaStatus::Fresh,
            },
            Case {
                name: "stamped within the skew of its recording counts",
                history: vec![(as_of - day, as_of - day - minute * 5)],
                as_of,
                want_last: Some(as_of - day),
                want_status: MfaStatus::Fresh,
            },
            Case {
                name: "stamped beyond the skew of its recording never counts, even once reached",
                history: vec![
                    same(as_of - day * 46),
                    (
                        as_of - day,
                        as_of - day - minute * 5 - SignedDuration::from_secs(1),
                    ),
                ],
                as_of,
                want_last: Some(as_of - day * 46),
                want_status: MfaStatus::Stale,
            },
            Case {
                name: "ten years ahead recorded today does not keep the pair fresh in ten years",
                history: vec![
                    same(as_of - day * 3650 - day * 2),
                    (as_of - day, as_of - day * 3650),
                ],
                as_of,
                want_last: Some(as_of - day * 3652),
                want_status: MfaStatus::Stale,
            },
            Case {
                name: "a completion recorded after as_of but made before it counts",
                history: vec![(as_of - day * 3, as_of + day)],
                as_of,
                want_last: Some(as_of - day * 3),
                want_status: MfaStatus::Fresh,
            },
        ];
        for (n, case) in cases.iter().enumerate() {
            let account = format!("staff{n}");
            for (k, (completed_at, recorded_at)) in case.history.iter().enumerate() {
                let completion = NewMfaCompletion {
                    site: site.id,
                    device: Some(device.clone()),
                    account: account.clone(),
                    completed_at: *completed_at,
                    source: "test".into(),
                    method: String::new(),
                    external_id: format!("{n}-{k}"),
                    device_hint: String::new(),
                };
                store
                    .record_mfa_completions(&[completion], *recorded_at)
                    .await
                    .unwrap();
            }
        }
        for (n, case) in cases.iter().enumerate() {
            let account = format!("staff{n}");
            let found = store
                .mfa_completions_for(std::slice::from_ref(&device), case.as_of)
                .await
                .unwrap();
            let last = found
                .iter()
                .find(|(d, a, _)| *d == device && *a == account)
                .map(|(_, _, at)| *at);
            assert_eq!(last, case.want_last, "{}", case.name);
            assert_eq!(
                status(last, case.as_of, &MfaThresholds::default()),
                case.want_status,
                "{}",
                case.name
            );
        }
    }

    /// The symptom end to end through the rule evaluation: a teacher who
    /// completed two-step sign-in ten days ago, and once more after
    /// `as_of`, is fresh at `as_of` (it read "never", so stale).
    #[tokio::test]
    async fn a_completion_after_as_of_does_not_make_the_pair_stale() {
        use crate::directory::{DirectoryAccount, Role};
        use crate::model::{Event, EventBody, Seq, SessionKind, SessionRecord};

        let dir = tempfile::tempdir().unwrap();
        let enrolled = t("2026-01-01T00:00:00Z");
        let (store, site, device) =
            crate::store::sqlite::testing::store_with_device(dir.path(), enrolled).await;
        let teacher = DirectoryAccount {
            username: "j.smith".into(),
            role: Role::Staff,
            email: String::new(),
            display_name: String::new(),
            groups: Vec::new(),
        };
        store
            .import_directory(site.id, &[teacher], enrolled)
            .await
            .unwrap();
        let as_of = t("2026-11-24T12:00:00Z");
        let day = SignedDuration::from_hours(24);
        let session = SessionRecord {
            session_id: "s1".into(),
            account: "j.smith".into(),
            uid: 1001,
            kind: SessionKind::Graphical,
            started_at: as_of - day * 5,
            ended_at: Some(as_of - day * 5 + SignedDuration::from_hours(2)),
            active_secs: 7200,
        };
        let event = Event {
            seq: Seq(1),
            event_id: "e1".into(),
            occurred_at: as_of - day * 5,
            body: EventBody::Session(session),
        };
        store
            .record_batch(&device, &[event], as_of - day * 5)
            .await
            .unwrap();
        for (n, at) in [as_of - day * 10, as_of + day].into_iter().enumerate() {
            let completion = NewMfaCompletion {
                site: site.id,
                device: Some(device.clone()),
                account: "j.smith".into(),
                completed_at: at,
                source: "test".into(),
                method: String::new(),
                external_id: n.to_string(),
                device_hint: String::new(),
            };
            store
                .record_mfa_completions(&[completion], at)
                .await
                .unwrap();
        }

        let config = crate::config::CollectorConfig::default();
        let verdicts =
            crate::rules::evaluate::evaluate(&store, &config, &DeviceFilter::one(device), as_of)
                .await
                .unwrap();
        let pairs = &verdicts[0].mfa;
        assert_eq!(pairs.len(), 1, "{pairs:?}");
        assert_eq!(pairs[0].last_mfa, Some(as_of - day * 10));
        assert_eq!(pairs[0].status, MfaStatus::Fresh);
    }

    /// Groups are stored per site, replaced with each import, and a device
    /// learns only those of accounts that have had sessions on it.
    #[tokio::test]
    async fn groups_are_imported_replaced_and_given_only_to_devices_used() {
        use crate::directory::parse_directory;
        use crate::model::{Event, EventBody, Seq, SessionKind, SessionRecord};
        use crate::store::{PolicyStore, SiteStore};

        let dir = tempfile::tempdir().unwrap();
        let at = t("2026-11-01T00:00:00Z");
        let (store, site, device) =
            crate::store::sqlite::testing::store_with_device(dir.path(), at).await;
        let other = store
            .create_site("Brook", "Europe/London", at)
            .await
            .unwrap();
        let csv = "username,role,groups\n\
                   pupil1,pupil,Year 7;SEN\n\
                   pupil2,pupil,Year 8\n\
                   pupil3,pupil,Year 7\n\
                   j.smith,staff,\n";
        let accounts = parse_directory(csv.as_bytes(), "mis.csv").unwrap();
        store
            .import_directory(site.id, &accounts, at)
            .await
            .unwrap();
        // The other school names pupil3 too, in another group.
        let theirs =
            parse_directory(b"username,role,groups\npupil3,pupil,Brook Y9\n", "b.csv").unwrap();
        store.import_directory(other.id, &theirs, at).await.unwrap();
        let stored = store.directory(site.id).await.unwrap();
        let groups_of = |name: &str| {
            stored
                .iter()
                .find(|a| a.username == name)
                .map(|a| a.groups.clone())
                .unwrap()
        };
        assert_eq!(groups_of("pupil1"), ["sen", "year-7"]);
        assert!(groups_of("j.smith").is_empty());
        assert!(
            store
                .account_groups_on_device(&device)
                .await
                .unwrap()
                .is_empty(),
            "no sessions yet"
        );

        let events: Vec<Event> = ["pupil1", "pupil3", "j.smith", "stranger"]
            .iter()
            .enumerate()
            .map(|(n, account)| Event {
                seq: Seq(n as u64 + 1),
                event_id: format!("e{n}"),
                occurred_at: at,
                body: EventBody::Session(SessionRecord {
                    session_id: format!("s{n}"),
                    account: (*account).into(),
                    uid: 1001 + n as u32,
                    kind: SessionKind::Graphical,
                    started_at: at,
                    ended_at: Some(at + SignedDuration::from_hours(1)),
                    active_secs: 3600,
                }),
            })
            .collect();
        store.record_batch(&device, &events, at).await.unwrap();
        assert!(
            store
                .account_groups_on_device(&device)
                .await
                .unwrap()
                .is_empty(),
            "the site's policy names no group yet: the device learns none"
        );
        let policy = "extends = \"default\"\n[[rules]]\nid = \"y\"\ncategory = \"gaming\"\n\
                      severity = 1\nphrases = [\"x\"]\ngroups = [\"Year 7\", \"Year 8\"]\n\
                      [categories.drugs]\nskip_groups = [\"SEN\"]\n";
        let author = crate::policies::Author {
            name: "test",
            address: "test",
        };
        store
            .save_site_policy(site.id, policy, "sha", "", author, at)
            .await
            .unwrap();
        let on_device = store.account_groups_on_device(&device).await.unwrap();
        assert_eq!(
            on_device,
            [
                (
                    "pupil1".to_owned(),
                    vec!["sen".to_owned(), "year-7".to_owned()]
                ),
                ("pupil3".to_owned(), vec!["year-7".to_owned()]),
            ],
            "pupil2 never used it; no groups for j.smith; not the other site's"
        );

        let again = parse_directory(
            b"username,role,groups\npupil1,pupil,Year 8\npupil3,pupil,Year 7\n",
            "mis.csv",
        )
        .unwrap();
        let summary = store.import_directory(site.id, &again, at).await.unwrap();
        assert_eq!(
            (summary.updated, summary.unchanged, summary.removed),
            (1, 1, 2)
        );
        let on_device = store.account_groups_on_device(&device).await.unwrap();
        assert_eq!(
            on_device[0],
            ("pupil1".to_owned(), vec!["year-8".to_owned()]),
            "replaced"
        );
    }
}
