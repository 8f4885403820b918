//! SQLite: sessions, activity verdicts, flags and commands.

use async_trait::async_trait;
use jiff::Timestamp;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::{SqliteStore, enforcement, instant, millis, optional_instant};
use crate::flags::{
    FlagAction, FlagError, FlagKind, FlagRecord, FlagState, FlagTransition, VerdictDecision,
    next_state,
};
use crate::model::{
    CommandKind, CommandRecord, DeviceId, Enforcement, SessionKind, SessionRecord, SiteId,
};
use crate::rules::activity::ActivityStatus;
use crate::store::{
    ActivityChanges, ActivityInput, ActivityVerdict, DeviceFilter, Result, StoreError,
    StoredActivity,
};

/// Applies a session event: the first report creates the row, later ones
/// (updates, the end) fill in what they know. Called inside `record_batch`.
pub(super) async fn upsert_session(
    tx: &mut SqliteConnection,
    device: &DeviceId,
    session: &SessionRecord,
    at: Timestamp,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO sessions (device_id, session_id, account, uid, kind, started_at, ended_at, active_secs, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (device_id, session_id) DO UPDATE SET \
           ended_at = coalesce(excluded.ended_at, sessions.ended_at), \
           active_secs = max(sessions.active_secs, excluded.active_secs), \
           started_at = min(sessions.started_at, excluded.started_at), \
           updated_at = excluded.updated_at",
    )
    .bind(device.as_str())
    .bind(&session.session_id)
    .bind(&session.account)
    .bind(i64::from(session.uid))
    .bind(session.kind.as_str())
    .bind(millis(session.started_at))
    .bind(session.ended_at.map(millis))
    .bind(session.active_secs as i64)
    .bind(millis(at))
    .execute(&mut *tx)
    .await?;
    // A session that ended closes its monitoring gaps, even if the agent
    // never sent their END (lost with a replaced outbox, or the check
    // turned off).
    if let Some(ended_at) = session.ended_at {
        sqlx::query(
            "UPDATE monitoring_gaps SET ended_at = max(started_at, ?) \
             WHERE device_id = ? AND session_id = ? AND ended_at IS NULL",
        )
        .bind(millis(ended_at))
        .bind(device.as_str())
        .bind(&session.session_id)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Records the site-local days a batch's sessions cover (each from its
/// start to its end, or to its start plus its active time while open; at
/// most 40 days) in `device_days`, counting each new (day, device) in
/// `site_days`. Once per batch (inside `record_batch`): one lookup of the
/// site's zone and one row per distinct day, not per session.
pub(super) async fn mark_days_in_use(
    tx: &mut SqliteConnection,
    device: &DeviceId,
    sessions: &[&SessionRecord],
) -> Result<()> {
    if sessions.is_empty() {
        return Ok(());
    }
    let Some((site, zone)): Option<(i64, String)> = sqlx::query_as(
        "SELECT s.id, s.timezone FROM devices d JOIN sites s ON s.id = d.site_id WHERE d.id = ?",
    )
    .bind(device.as_str())
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(());
    };
    let tz = jiff::tz::TimeZone::get(&zone).unwrap_or(jiff::tz::TimeZone::UTC);
    let mut days = std::collections::BTreeSet::new();
    for session in sessions {
        let end = session.ended_at.unwrap_or_else(|| {
            session.started_at
                + jiff::SignedDuration::from_secs(session.active_secs.min(86_400 * 40) as i64)
        });
        let mut day = session.started_at.to_zoned(tz.clone()).date();
        let last = end.max(session.started_at).to_zoned(tz.clone()).date();
        for _ in 0..40 {
            days.insert(day);
            if day >= last {
                break;
            }
            let Ok(next) = day.tomorrow() else { break };
            day = next;
        }
    }
    for day in days {
        let inserted = sqlx::query(
            "INSERT OR IGNORE INTO device_days (day, device_id, site_id) VALUES (?, ?, ?)",
        )
        .bind(day.to_string())
        .bind(device.as_str())
        .bind(site)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 1 {
            sqlx::query(
                "INSERT INTO site_days (site_id, day, devices) VALUES (?, ?, 1) \
                 ON CONFLICT (site_id, day) DO UPDATE SET devices = devices + 1",
            )
            .bind(site)
            .bind(day.to_string())
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(())
}

/// Applies an agent's report on a command: completes the command, moves
/// the device's enforcement state, and confirms the flag that asked for a
/// disable. Called inside `record_batch`.
pub(super) async fn apply_enforcement_result(
    tx: &mut SqliteConnection,
    device: &DeviceId,
    command_id: &str,
    kind: CommandKind,
    ok: bool,
    detail: &str,
    at: Timestamp,
) -> Result<()> {
    let command = sqlx::query(
        "UPDATE commands SET completed_at = ?, ok = ?, detail = ? \
         WHERE id = ? AND device_id = ? AND completed_at IS NULL RETURNING flag_id",
    )
    .bind(millis(at))
    .bind(ok)
    .bind(detail)
    .bind(command_id)
    .bind(device.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    // A result for a superseded or unknown command changes nothing else.
    let Some(command) = command else {
        return Ok(());
    };
    if !ok {
        tracing::warn!(device_id = %device, command_id, kind = kind.as_str(), detail, "agent could not apply command");
        return Ok(());
    }
    let (from, to) = match kind {
        CommandKind::Disable => (Enforcement::DisablePending, Enforcement::Disabled),
        CommandKind::Enable => (Enforcement::EnablePending, Enforcement::Enabled),
    };
    sqlx::query("UPDATE devices SET enforcement = ? WHERE id = ? AND enforcement = ?")
        .bind(to.as_str())
        .bind(device.as_str())
        .bind(from.as_str())
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE device_activity SET next_check_at = 0 WHERE device_id = ?")
        .bind(device.as_str())
        .execute(&mut *tx)
        .await?;
    let flag_id: Option<i64> = command.try_get("flag_id")?;
    if let (CommandKind::Disable, Some(flag_id)) = (kind, flag_id) {
        let actor = format!("agent:{device}");
        let reason = if detail.is_empty() {
            "disable applied"
        } else {
            detail
        };
        // Err only when the flag moved on meanwhile (re-enabled, dismissed).
        let _ = transition_in(tx, flag_id, FlagAction::ConfirmDisabled, &actor, reason, at).await?;
    }
    Ok(())
}

fn session_from_row(row: &SqliteRow) -> Result<SessionRecord> {
    Ok(SessionRecord {
        session_id: row.try_get("session_id")?,
        account: row.try_get("account")?,
        uid: row.try_get::<i64, _>("uid")? as u32,
        kind: SessionKind::parse(row.try_get("kind")?),
        started_at: instant(row.try_get("started_at")?)?,
        ended_at: optional_instant(row.try_get("ended_at")?)?,
        active_secs: row.try_get::<i64, _>("active_secs")? as u64,
    })
}

const FLAG_SELECT: &str = "SELECT f.id, f.site_id, s.name AS site, f.device_id, d.hostname, f.kind, f.account, \
     f.state, f.opened_at, f.updated_at, f.summary FROM flags f JOIN sites s ON s.id = f.site_id \
     JOIN devices d ON d.id = f.device_id";

fn flag_from_row(row: &SqliteRow) -> Result<FlagRecord> {
    let kind: String = row.try_get("kind")?;
    let state: String = row.try_get("state")?;
    Ok(FlagRecord {
        id: row.try_get("id")?,
        site_id: SiteId(row.try_get("site_id")?),
        site: row.try_get("site")?,
        device_id: DeviceId::from_string(row.try_get::<String, _>("device_id")?),
        hostname: row.try_get("hostname")?,
        kind: FlagKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("flag kind '{kind}'")))?,
        account: row.try_get("account")?,
        state: FlagState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("flag state '{state}'")))?,
        opened_at: instant(row.try_get("opened_at")?)?,
        updated_at: instant(row.try_get("updated_at")?)?,
        summary: row.try_get("summary")?,
    })
}

pub(super) async fn flag(executor: &mut SqliteConnection, id: i64) -> Result<Option<FlagRecord>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("{FLAG_SELECT} WHERE f.id = ?")))
        .bind(id)
        .fetch_optional(&mut *executor)
        .await?;
    row.as_ref().map(flag_from_row).transpose()
}

pub(super) async fn audit_transition(
    tx: &mut SqliteConnection,
    flag_id: i64,
    at: Timestamp,
    actor: &str,
    from: Option<FlagState>,
    to: FlagState,
    reason: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO flag_transitions (flag_id, at, actor, from_state, to_state, reason) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(flag_id)
    .bind(millis(at))
    .bind(actor)
    .bind(from.map(FlagState::as_str))
    .bind(to.as_str())
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A transition with its side effects, inside the caller's transaction.
pub(super) async fn transition_in(
    tx: &mut SqliteConnection,
    id: i64,
    action: FlagAction,
    actor: &str,
    reason: &str,
    at: Timestamp,
) -> Result<Result<FlagRecord, FlagError>> {
    let Some(flag) = flag(tx, id).await? else {
        return Ok(Err(FlagError::NotFound(id)));
    };
    let next = match next_state(id, flag.kind, flag.state, action) {
        Ok(next) => next,
        Err(e) => return Ok(Err(e)),
    };
    if let Err(e) = crate::flags::check_reason(flag.kind, action, reason) {
        return Ok(Err(e));
    }
    sqlx::query("UPDATE flags SET state = ?, updated_at = ? WHERE id = ?")
        .bind(next.as_str())
        .bind(millis(at))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    audit_transition(tx, id, at, actor, Some(flag.state), next, reason).await?;
    let device = &flag.device_id;
    // The device's verdict may change with its enforcement state: due now.
    sqlx::query("UPDATE device_activity SET next_check_at = 0 WHERE device_id = ?")
        .bind(device.as_str())
        .execute(&mut *tx)
        .await?;
    // Decided in `flags::effects`; applied here.
    let effects = crate::flags::effects(flag.kind, flag.state, next);
    if let Some((command, enforcement)) = effects.command {
        issue_command(tx, device, command, reason, Some(id), at).await?;
        set_enforcement(tx, device, enforcement).await?;
    }
    if effects.new_grace_period {
        sqlx::query("UPDATE devices SET reenabled_at = ? WHERE id = ?")
            .bind(millis(at))
            .bind(device.as_str())
            .execute(&mut *tx)
            .await?;
    }
    tracing::info!(flag_id = id, device_id = %device, from = flag.state.as_str(), to = next.as_str(), actor, "flag transition");
    Ok(flag_in(tx, id).await)
}

async fn flag_in(tx: &mut SqliteConnection, id: i64) -> Result<FlagRecord, FlagError> {
    match flag(tx, id).await {
        Ok(Some(flag)) => Ok(flag),
        _ => Err(FlagError::NotFound(id)),
    }
}

async fn set_enforcement(
    tx: &mut SqliteConnection,
    device: &DeviceId,
    state: Enforcement,
) -> Result<()> {
    sqlx::query("UPDATE devices SET enforcement = ? WHERE id = ?")
        .bind(state.as_str())
        .bind(device.as_str())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Queues a command, superseding the device's earlier unfinished ones (the
/// newest decision wins).
async fn issue_command(
    tx: &mut SqliteConnection,
    device: &DeviceId,
    kind: CommandKind,
    reason: &str,
    flag_id: Option<i64>,
    at: Timestamp,
) -> Result<()> {
    sqlx::query(
        "UPDATE commands SET completed_at = ?, ok = 0, detail = 'superseded' \
         WHERE device_id = ? AND completed_at IS NULL",
    )
    .bind(millis(at))
    .bind(device.as_str())
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO commands (id, device_id, kind, reason, flag_id, issued_at) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(format!("cmd-{}", uuid::Uuid::now_v7()))
    .bind(device.as_str())
    .bind(kind.as_str())
    .bind(reason)
    .bind(flag_id)
    .bind(millis(at))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

fn command_from_row(row: &SqliteRow) -> Result<CommandRecord> {
    let kind: String = row.try_get("kind")?;
    Ok(CommandRecord {
        id: row.try_get("id")?,
        device_id: DeviceId::from_string(row.try_get::<String, _>("device_id")?),
        kind: CommandKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("command kind '{kind}'")))?,
        reason: row.try_get("reason")?,
        issued_at: instant(row.try_get("issued_at")?)?,
    })
}

pub(super) async fn commands(
    store: &SqliteStore,
    device: Option<&DeviceId>,
    unsent_only: bool,
) -> Result<Vec<CommandRecord>> {
    let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(
        "SELECT id, device_id, kind, reason, issued_at FROM commands WHERE completed_at IS NULL",
    );
    if let Some(device) = device {
        query
            .push(" AND device_id = ")
            .push_bind(device.as_str().to_owned());
    }
    if unsent_only {
        query.push(" AND sent_at IS NULL");
    }
    query.push(" ORDER BY issued_at, id");
    let rows = query.build().fetch_all(&store.reader).await?;
    rows.iter().map(command_from_row).collect()
}

/// Records something the notifier may need to tell, in the caller's
/// transaction (so a flag and its notification commit together).
#[allow(clippy::too_many_arguments)]
pub(super) async fn notification_event(
    tx: &mut SqliteConnection,
    site: SiteId,
    kind: &str,
    flag_id: Option<i64>,
    device: Option<&DeviceId>,
    account: &str,
    summary: &str,
    at: Timestamp,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO notification_events (site_id, kind, flag_id, device_id, account, summary, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(site.0)
    .bind(kind)
    .bind(flag_id)
    .bind(device.map(|d| d.as_str().to_owned()))
    .bind(account)
    .bind(summary)
    .bind(millis(at))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Opens a flag (the rules' doing) with its audit row and its notification
/// event. None when another collector instance opened it first.
pub(super) async fn open_flag(
    tx: &mut SqliteConnection,
    site: SiteId,
    device: &DeviceId,
    kind: FlagKind,
    account: &str,
    summary: &str,
    at: Timestamp,
) -> Result<Option<i64>> {
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO flags (site_id, device_id, kind, account, state, opened_at, updated_at, summary) \
         VALUES (?, ?, ?, ?, 'open', ?, ?, ?) ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind(site.0)
    .bind(device.as_str())
    .bind(kind.as_str())
    .bind(account)
    .bind(millis(at))
    .bind(millis(at))
    .bind(summary)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = id else { return Ok(None) };
    audit_transition(tx, id, at, "rules", None, FlagState::Open, summary).await?;
    notification_event(
        tx,
        site,
        kind.as_str(),
        Some(id),
        Some(device),
        account,
        summary,
        at,
    )
    .await?;
    Ok(Some(id))
}

#[async_trait]
impl crate::store::ActivityStore for SqliteStore {
    async fn activity_inputs(
        &self,
        filter: &DeviceFilter,
        since: Timestamp,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<Vec<ActivityInput>> {
        let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT d.id, d.site_id, s.name AS site_name, s.timezone, d.hostname, d.enrolled_at, d.reenabled_at, \
             d.last_seen_at, d.heartbeat_interval_secs, d.enforcement FROM devices d JOIN sites s ON s.id = d.site_id WHERE 1 = 1",
        );
        if let Some(site) = filter.site {
            query.push(" AND d.site_id = ").push_bind(site.0);
        }
        if let Some(device) = &filter.device {
            query
                .push(" AND d.id = ")
                .push_bind(device.as_str().to_owned());
        }
        if let Some(devices) = &filter.devices {
            query.push(" AND d.id IN (");
            let mut list = query.separated(", ");
            for device in devices {
                list.push_bind(device.as_str().to_owned());
            }
            list.push_unseparated(if devices.is_empty() { "NULL)" } else { ")" });
        }
        if let Some(after) = after {
            query
                .push(" AND d.id > ")
                .push_bind(after.as_str().to_owned());
        }
        query.push(" ORDER BY d.id LIMIT ").push_bind(limit as i64);
        let devices = query.build().fetch_all(&self.reader).await?;
        let (Some(first), Some(last)) = (devices.first(), devices.last()) else {
            return Ok(Vec::new());
        };
        let first: String = first.try_get("id")?;
        let last: String = last.try_get("id")?;
        // One range query for the page's sessions, grouped below.
        let sessions = sqlx::query(
            "SELECT device_id, session_id, account, uid, kind, started_at, ended_at, active_secs FROM sessions \
             WHERE device_id BETWEEN ? AND ? AND coalesce(ended_at, 9223372036854775807) > ? \
             ORDER BY device_id",
        )
        .bind(&first)
        .bind(&last)
        .bind(millis(since))
        .fetch_all(&self.reader)
        .await?;
        let mut sessions = sessions.iter().peekable();
        let mut inputs = Vec::with_capacity(devices.len());
        for row in &devices {
            let id: String = row.try_get("id")?;
            let mut own = Vec::new();
            while let Some(session) = sessions.peek() {
                let device: String = session.try_get("device_id")?;
                match device.cmp(&id) {
                    std::cmp::Ordering::Less => {
                        sessions.next();
                    }
                    std::cmp::Ordering::Equal => {
                        own.push(session_from_row(session)?);
                        sessions.next();
                    }
                    std::cmp::Ordering::Greater => break,
                }
            }
            inputs.push(ActivityInput {
                device: DeviceId::from_string(id),
                site: SiteId(row.try_get("site_id")?),
                site_name: row.try_get("site_name")?,
                site_timezone: row.try_get("timezone")?,
                hostname: row.try_get("hostname")?,
                enrolled_at: instant(row.try_get("enrolled_at")?)?,
                reenabled_at: optional_instant(row.try_get("reenabled_at")?)?,
                last_seen_at: optional_instant(row.try_get("last_seen_at")?)?,
                heartbeat_interval_secs: row.try_get::<i64, _>("heartbeat_interval_secs")? as u32,
                enforcement: enforcement(row)?,
                sessions: own,
            });
        }
        Ok(inputs)
    }

    async fn record_activity(
        &self,
        verdicts: &[ActivityVerdict],
        at: Timestamp,
    ) -> Result<ActivityChanges> {
        let mut changes = ActivityChanges::default();
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        for verdict in verdicts {
            let e = &verdict.evaluation;
            sqlx::query(
                "INSERT INTO device_activity (device_id, status, used_secs, window_start, breach_at, grace_until, as_of, next_check_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET status = excluded.status, \
                 used_secs = excluded.used_secs, window_start = excluded.window_start, breach_at = excluded.breach_at, \
                 grace_until = excluded.grace_until, as_of = excluded.as_of, next_check_at = excluded.next_check_at",
            )
            .bind(verdict.device.as_str())
            .bind(e.status.as_str())
            .bind(e.used.as_secs())
            .bind(millis(e.window_start))
            .bind(e.breach_at.map(millis))
            .bind(e.grace_until.map(millis))
            .bind(millis(e.as_of))
            .bind(millis(verdict.next_check_at))
            .execute(&mut *tx)
            .await?;
            let active: Option<(i64, String)> = sqlx::query_as(
                "SELECT id, state FROM flags WHERE device_id = ? AND kind = 'device_inactive' AND account = '' \
                 AND state IN ('open', 'disable_approved', 'disabled')",
            )
            .bind(verdict.device.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            let active = match active {
                Some((id, state)) => Some((
                    id,
                    FlagState::parse(&state).ok_or_else(|| {
                        StoreError::Corrupt(format!("flag {id}: state '{state}'"))
                    })?,
                )),
                None => None,
            };
            // Decided in `flags::on_activity_verdict`; applied here.
            match crate::flags::on_activity_verdict(
                e.status,
                active.map(|(_, state)| state),
                verdict.auto_disable,
            ) {
                VerdictDecision::Open { auto_approve } => {
                    let summary = format!(
                        "logged in for {} min in the {} days to {}; {} min required",
                        e.used.as_mins(),
                        (e.as_of.duration_since(e.window_start).as_hours() / 24),
                        e.as_of,
                        verdict.required_minutes
                    );
                    let opened = open_flag(
                        &mut tx,
                        verdict.site,
                        &verdict.device,
                        FlagKind::DeviceInactive,
                        "",
                        &summary,
                        at,
                    )
                    .await?;
                    // Another collector instance opened it meanwhile.
                    let Some(id) = opened else { continue };
                    tracing::info!(device_id = %verdict.device, flag_id = id, "device_inactive flag opened");
                    changes.opened.push(id);
                    if auto_approve {
                        transition_in(
                            &mut tx,
                            id,
                            FlagAction::Approve,
                            "rules",
                            "the site disables inactive devices automatically",
                            at,
                        )
                        .await?
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                        changes.auto_approved.push(id);
                    }
                }
                VerdictDecision::Resolve => {
                    let Some((id, _)) = active else { continue };
                    transition_in(
                        &mut tx,
                        id,
                        FlagAction::Resolve,
                        "rules",
                        &format!("compliant again: {} min in the window", e.used.as_mins()),
                        at,
                    )
                    .await?
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    changes.resolved.push(id);
                }
                VerdictDecision::Nothing => {}
            }
        }
        tx.commit().await?;
        Ok(changes)
    }

    async fn stored_activity(&self, filter: &DeviceFilter) -> Result<Vec<StoredActivity>> {
        let rows = sqlx::query(
            "SELECT a.* FROM device_activity a JOIN devices d ON d.id = a.device_id \
             WHERE (?1 IS NULL OR d.site_id = ?1) AND (?2 IS NULL OR d.id = ?2) ORDER BY a.device_id",
        )
        .bind(filter.site.map(|s| s.0))
        .bind(filter.device.as_ref().map(|d| d.as_str().to_owned()))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                let status: String = row.try_get("status")?;
                Ok(StoredActivity {
                    device: DeviceId::from_string(row.try_get::<String, _>("device_id")?),
                    status: ActivityStatus::parse(&status).ok_or_else(|| {
                        StoreError::Corrupt(format!("activity status '{status}'"))
                    })?,
                    used_secs: row.try_get("used_secs")?,
                    window_start: instant(row.try_get("window_start")?)?,
                    breach_at: optional_instant(row.try_get("breach_at")?)?,
                    grace_until: optional_instant(row.try_get("grace_until")?)?,
                    as_of: instant(row.try_get("as_of")?)?,
                })
            })
            .collect()
    }

    async fn devices_due(&self, at: Timestamp, limit: usize) -> Result<Vec<DeviceId>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT d.id FROM devices d LEFT JOIN device_activity a ON a.device_id = d.id \
             WHERE d.status = 'active' AND (a.device_id IS NULL OR a.next_check_at <= ?) \
             ORDER BY d.id LIMIT ?",
        )
        .bind(millis(at))
        .bind(limit as i64)
        .fetch_all(&self.reader)
        .await?;
        Ok(ids.into_iter().map(DeviceId::from_string).collect())
    }

    async fn list_flags(
        &self,
        filter: &DeviceFilter,
        state: Option<FlagState>,
    ) -> Result<Vec<FlagRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{FLAG_SELECT} WHERE (?1 IS NULL OR f.site_id = ?1) AND (?2 IS NULL OR f.device_id = ?2) \
             AND (?3 IS NULL OR f.state = ?3) ORDER BY f.id"
        )))
        .bind(filter.site.map(|s| s.0))
        .bind(filter.device.as_ref().map(|d| d.as_str().to_owned()))
        .bind(state.map(FlagState::as_str))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(flag_from_row).collect()
    }

    async fn flag(&self, id: i64) -> Result<Option<FlagRecord>> {
        let mut connection = self.reader.acquire().await?;
        flag(&mut connection, id).await
    }

    async fn flag_history(&self, id: i64) -> Result<Vec<FlagTransition>> {
        let rows = sqlx::query(
            "SELECT at, actor, from_state, to_state, reason FROM flag_transitions WHERE flag_id = ? ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                let from: Option<String> = row.try_get("from_state")?;
                let to: String = row.try_get("to_state")?;
                Ok(FlagTransition {
                    at: instant(row.try_get("at")?)?,
                    actor: row.try_get("actor")?,
                    from: from.as_deref().and_then(FlagState::parse),
                    to: FlagState::parse(&to)
                        .ok_or_else(|| StoreError::Corrupt(format!("flag state '{to}'")))?,
                    reason: row.try_get("reason")?,
                })
            })
            .collect()
    }

    async fn transition_flag(
        &self,
        id: i64,
        action: FlagAction,
        actor: &str,
        reason: &str,
        at: Timestamp,
    ) -> Result<Result<FlagRecord, FlagError>> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let outcome = transition_in(&mut tx, id, action, actor, reason, at).await?;
        if outcome.is_ok() {
            tx.commit().await?;
        }
        Ok(outcome)
    }

    async fn pending_commands(&self, device: &DeviceId) -> Result<Vec<CommandRecord>> {
        commands(self, Some(device), false).await
    }

    async fn unsent_commands(&self) -> Result<Vec<CommandRecord>> {
        commands(self, None, true).await
    }

    async fn mark_command_sent(&self, id: &str, at: Timestamp) -> Result<()> {
        sqlx::query("UPDATE commands SET sent_at = coalesce(sent_at, ?) WHERE id = ?")
            .bind(millis(at))
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use jiff::{SignedDuration, Timestamp};

    use crate::flags::{FlagAction, FlagError, FlagState};
    use crate::model::{CommandKind, DeviceId, Enforcement, SiteId};
    use crate::rules::activity::{ActivityEvaluation, ActivityStatus};
    use crate::store::sqlite::testing::store_with_device;
    use crate::store::{ActivityStore, ActivityVerdict, DeviceStore};

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap() + SignedDuration::from_secs(secs)
    }

    fn verdict(
        device: &DeviceId,
        site: SiteId,
        status: ActivityStatus,
        at: Timestamp,
        auto: bool,
    ) -> ActivityVerdict {
        ActivityVerdict {
            device: device.clone(),
            site,
            evaluation: ActivityEvaluation {
                status,
                as_of: at,
                window_start: at - SignedDuration::from_hours(24 * 28),
                used: SignedDuration::from_mins(5),
                breach_at: None,
                grace_until: None,
            },
            next_check_at: at + SignedDuration::from_hours(1),
            required_minutes: 60,
            auto_disable: auto,
        }
    }

    #[tokio::test]
    async fn a_flag_goes_through_its_lifecycle_with_its_commands_and_enforcement() {
        let dir = tempfile::tempdir().unwrap();
        let (store, site, device) = store_with_device(dir.path(), t(0)).await;
        let non_compliant = verdict(&device, site.id, ActivityStatus::NonCompliant, t(10), false);
        let changes = store
            .record_activity(std::slice::from_ref(&non_compliant), t(10))
            .await
            .unwrap();
        assert_eq!(changes.opened.len(), 1);
        let id = changes.opened[0];
        // Evaluated again: still one flag.
        let again = store
            .record_activity(&[non_compliant], t(20))
            .await
            .unwrap();
        assert!(again.opened.is_empty());

        // A transition the state machine refuses changes nothing.
        let refused = store
            .transition_flag(id, FlagAction::Reenable, "cli:t", "", t(30))
            .await
            .unwrap();
        assert!(
            matches!(refused, Err(FlagError::NotAllowed { .. })),
            "{refused:?}"
        );
        assert!(store.pending_commands(&device).await.unwrap().is_empty());

        let approved = store
            .transition_flag(id, FlagAction::Approve, "cli:t", "inactive", t(40))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(approved.state, FlagState::DisableApproved);
        let commands = store.pending_commands(&device).await.unwrap();
        assert_eq!(commands.len(), 1);
        assert_eq!(commands[0].kind, CommandKind::Disable);
        let record = store.device(&device).await.unwrap().unwrap();
        assert_eq!(record.enforcement, Enforcement::DisablePending);

        let reenabled = store
            .transition_flag(id, FlagAction::Reenable, "cli:t", "back", t(50))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reenabled.state, FlagState::Reenabled);
        let record = store.device(&device).await.unwrap().unwrap();
        assert_eq!(record.enforcement, Enforcement::EnablePending);
        assert_eq!(record.reenabled_at, Some(t(50)), "a new grace period");
        let history = store.flag_history(id).await.unwrap();
        assert_eq!(
            history.len(),
            3,
            "opened, approved, re-enabled: {history:?}"
        );
    }

    #[tokio::test]
    async fn verdicts_open_auto_approve_and_resolve_flags() {
        let dir = tempfile::tempdir().unwrap();
        let (store, site, device) = store_with_device(dir.path(), t(0)).await;
        let opened = store
            .record_activity(
                &[verdict(
                    &device,
                    site.id,
                    ActivityStatus::NonCompliant,
                    t(10),
                    false,
                )],
                t(10),
            )
            .await
            .unwrap();
        let resolved = store
            .record_activity(
                &[verdict(
                    &device,
                    site.id,
                    ActivityStatus::Compliant,
                    t(20),
                    false,
                )],
                t(20),
            )
            .await
            .unwrap();
        assert_eq!(resolved.resolved, opened.opened, "compliant again");
        let flag = store.flag(opened.opened[0]).await.unwrap().unwrap();
        assert_eq!(flag.state, FlagState::Dismissed);

        let auto = store
            .record_activity(
                &[verdict(
                    &device,
                    site.id,
                    ActivityStatus::NonCompliant,
                    t(30),
                    true,
                )],
                t(30),
            )
            .await
            .unwrap();
        assert_eq!(auto.auto_approved, auto.opened);
        let flag = store.flag(auto.opened[0]).await.unwrap().unwrap();
        assert_eq!(flag.state, FlagState::DisableApproved);
        // An approved flag is the technician's: compliance does not close it.
        let later = store
            .record_activity(
                &[verdict(
                    &device,
                    site.id,
                    ActivityStatus::Compliant,
                    t(40),
                    true,
                )],
                t(40),
            )
            .await
            .unwrap();
        assert!(later.resolved.is_empty());
    }
}
