//! Notifications: telling the head teacher, DSL, technicians and staff.
//!
//! Flags and reminders write a `notification_events` row in the same
//! transaction that creates them. The worker (`run`, in `serve`) turns new
//! events into messages for the site's recipients by the configured routes
//! (`expand`), sends due immediate messages (`deliver`: claimed with a
//! lease, so several collector instances on one database send each once;
//! failures retried with exponential backoff, then dead-lettered), and once
//! a day at the site's digest time gathers the digest messages for each
//! address into one (`digest`).
//!
//! Privacy: messages name the site, device, kind, severity, time and a
//! console link. They never hold a snapshot, a pupil's name, or matched
//! text of severity 3 or more.

mod email;
mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::{CollectorConfig, NotificationSettings, Route};
use crate::model::{Channel, Role, Site, Timing};
use crate::store::{NewNotification, Notification, NotificationEvent, Result, Store};

pub use email::Mailer;

/// Sends messages over their channel.
pub struct Sender {
    mailer: Option<Mailer>,
}

impl Sender {
    pub fn new(settings: &NotificationSettings) -> anyhow::Result<Sender> {
        Ok(Sender {
            mailer: email::Mailer::new(&settings.smtp)?,
        })
    }

    async fn send(&self, message: &Notification) -> std::result::Result<(), String> {
        match message.channel {
            Channel::Email => match &self.mailer {
                Some(mailer) => mailer.send(message).await,
                // Not claimed without a mailer; kept for safety.
                None => Err("no SMTP server configured ([notifications.smtp] host)".into()),
            },
            Channel::Webhook => webhook::post(message).await,
        }
    }
}

/// The worker: expand, deliver, digest, until shutdown.
pub async fn run(
    store: Arc<dyn Store>,
    config: Arc<CollectorConfig>,
    sender: Arc<Sender>,
    wake: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) {
    let owner = format!("collector-{}", uuid::Uuid::now_v7());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = wake.notified() => {}
            _ = shutdown.cancelled() => return,
        }
        let now = Timestamp::now();
        if let Err(e) = expand(&*store, &config, now).await {
            tracing::error!(error = %e, "notifications: expanding events failed");
        }
        if let Err(e) = digest_due(&*store, &config, now).await {
            tracing::error!(error = %e, "notifications: digest failed");
        }
        if let Err(e) = deliver(&*store, &config.notifications, &sender, &owner, now).await {
            tracing::error!(error = %e, "notifications: delivery failed");
        }
    }
}

/// Turns new events into messages, one transaction per event.
pub async fn expand(store: &dyn Store, config: &CollectorConfig, now: Timestamp) -> Result<u64> {
    let mut queued = 0;
    for event in store.new_notification_events(100).await? {
        let messages = plan(store, config, &event).await?;
        queued += store
            .queue_notifications(Some(event.id), &messages, now)
            .await?;
    }
    Ok(queued)
}

/// The messages an event should produce.
async fn plan(
    store: &dyn Store,
    config: &CollectorConfig,
    event: &NotificationEvent,
) -> Result<Vec<NewNotification>> {
    let device = match &event.device {
        Some(id) => store.device(id).await?,
        None => None,
    };
    let site = store
        .sites()
        .await?
        .into_iter()
        .find(|s| s.id == event.site);
    let Some(site) = site else {
        return Ok(Vec::new());
    };
    let recipients = store.recipients(Some(site.id)).await?;
    let content = Content::for_event(&config.notifications, &site, event, device.as_ref());
    let routes = routes_for(store, config, site.id).await?;
    let mut messages = Vec::new();
    for route in routes.iter().filter(|r| r.kind == event.kind) {
        for role in &route.roles {
            if *role == Role::StaffMember {
                // The account concerned, by the address the directory holds.
                let email = store
                    .directory(site.id)
                    .await?
                    .into_iter()
                    .find(|a| a.username == event.account.to_lowercase())
                    .map(|a| a.email)
                    .filter(|e| !e.is_empty());
                if let Some(address) = email {
                    messages.push(content.message(
                        &site,
                        Channel::Email,
                        &address,
                        "json",
                        "",
                        route.timing,
                    ));
                }
                continue;
            }
            for r in recipients.iter().filter(|r| r.role == *role) {
                messages.push(content.message(
                    &site,
                    r.channel,
                    &r.address,
                    &r.webhook_format,
                    &r.webhook_secret,
                    route.timing,
                ));
            }
        }
    }
    Ok(messages)
}

/// The routes in force at a site: its own (set in the console or with
/// `routes`), or `collector.toml`'s when it has none.
pub async fn routes_for(
    store: &dyn Store,
    config: &CollectorConfig,
    site: crate::model::SiteId,
) -> Result<Vec<Route>> {
    let own = store.site_routes(site).await?;
    if own.is_empty() {
        return Ok(config.notifications.routes.clone());
    }
    Ok(own
        .into_iter()
        .map(|r| Route {
            kind: r.kind,
            roles: vec![r.role],
            timing: r.timing,
        })
        .collect())
}

/// What a message says, before it is addressed.
pub struct Content {
    pub subject: String,
    pub body: String,
    pub payload: serde_json::Value,
}

impl Content {
    fn for_event(
        settings: &NotificationSettings,
        site: &Site,
        event: &NotificationEvent,
        device: Option<&crate::model::DeviceRecord>,
    ) -> Content {
        let zone = jiff::tz::TimeZone::get(&site.timezone).unwrap_or(jiff::tz::TimeZone::UTC);
        let when = event
            .at
            .to_zoned(zone)
            .strftime("%a %-d %b %Y %H:%M %Z")
            .to_string();
        let hostname = device.map_or("unknown device", |d| d.hostname.as_str());
        let device_id = event
            .device
            .as_ref()
            .map_or(String::new(), |d| d.to_string());
        let (headline, what) = match event.kind.as_str() {
            "device_inactive" => (
                format!("device {hostname} inactive: approval needed"),
                "The device has not been logged in to for the required time in the period and has a flag waiting for a decision (approve disabling, or dismiss).".to_owned(),
            ),
            "mfa_stale" => (
                format!("two-step sign-in overdue for {} on {hostname}", event.account),
                "This staff account has not completed two-step sign-in on this device within the period the school's policy requires.".to_owned(),
            ),
            "mfa_due_soon" => (
                format!("your two-step sign-in on {hostname} is due"),
                format!("School policy: complete two-step sign-in on every device you use. Yours on {hostname} expires soon; please sign in with your second factor on it."),
            ),
            "capture_severe" => (
                // The summary is ours ("incident #N: category"): never the
                // matched text, never a name.
                format!("severity {} capture on {hostname}, {}", event.severity, event.summary),
                "A suspicious-activity capture of high severity was taken on this device. Review the incident and its evidence in the console.".to_owned(),
            ),
            "capture_instant" => (
                // Ours ("incident #N: category"), as for capture_severe.
                match event.summary.split_once(": ") {
                    Some((incident, category)) => format!("{category} capture on {hostname}, {incident}"),
                    None => format!("capture on {hostname}, {}", event.summary),
                },
                "A suspicious-activity capture in a category this school asks to hear about at once, whatever its severity, was taken on this device. Review the incident and its evidence in the console.".to_owned(),
            ),
            "capture_threshold" => (
                // Ours: device, category and count, never the account.
                format!("capture threshold passed on {hostname}"),
                format!("{}. Several captures of one category in a short time can matter more than each alone: review the device's incidents in the console.", event.summary),
            ),
            "tamper" => (
                // The summary is ours (what happened and when): never the
                // account, which may be a pupil's.
                format!("possible tampering with the agent on {hostname}"),
                "The agent on this device reported a sign of interference (stopped while the machine kept running, its clock moved, a session helper killed or missing), or it has gone silent while the identity provider saw sign-ins from it. Check the device: is the agent running and up to date, who used it at that time, was it reinstalled or its clock changed? The device page lists its signals. Dismiss the flag with a reason once you know.".to_owned(),
            ),
            "test" => (
                "test message".to_owned(),
                "A test of this recipient's notifications, sent by a technician.".to_owned(),
            ),
            other => (other.replace('_', " "), String::new()),
        };
        let incident = event
            .summary
            .split_once("incident #")
            .and_then(|(_, rest)| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse::<i64>().ok()
            })
            .filter(|_| event.kind.starts_with("capture_"));
        let link = match (settings.console_url.trim_end_matches('/'), event.flag_id) {
            ("", _) => String::new(),
            (base, None) if incident.is_some() => {
                format!("{base}/incidents/{}", incident.unwrap_or_default())
            }
            (base, Some(flag)) => format!("{base}/flags/{flag}"),
            (base, None) if !device_id.is_empty() => format!("{base}/devices/{device_id}"),
            (base, None) => base.to_owned(),
        };
        let subject = format!("[Hall Monitor] {}: {headline}", site.name);
        let mut body = format!("Site: {}\nWhat: {headline}\n", site.name);
        if !device_id.is_empty() {
            body.push_str(&format!("Device: {hostname} ({device_id})\n"));
        }
        if event.severity > 0 {
            body.push_str(&format!("Severity: {}\n", event.severity));
        }
        body.push_str(&format!("When: {when}\n"));
        if let Some(flag) = event.flag_id {
            body.push_str(&format!("Flag: #{flag}\n"));
        }
        if !what.is_empty() {
            body.push_str(&format!("\n{what}\n"));
        }
        if !event.summary.is_empty() && event.severity < 3 {
            body.push_str(&format!("Details: {}\n", event.summary));
        }
        if !link.is_empty() {
            body.push_str(&format!("\nReview: {link}\n"));
        }
        let payload = json!({
            "schema": "hallmonitor.notification.v1",
            "site": site.name,
            "kind": event.kind,
            "severity": event.severity,
            "device_id": device_id,
            "hostname": hostname,
            "flag_id": event.flag_id,
            "at": event.at,
            "summary": headline,
            "link": link,
        });
        Content {
            subject,
            body,
            payload,
        }
    }

    fn message(
        &self,
        site: &Site,
        channel: Channel,
        address: &str,
        webhook_format: &str,
        webhook_secret: &str,
        timing: Timing,
    ) -> NewNotification {
        NewNotification {
            site: site.id,
            channel,
            address: address.into(),
            webhook_format: webhook_format.into(),
            webhook_secret: webhook_secret.into(),
            timing,
            subject: self.subject.clone(),
            body: self.body.clone(),
            payload: self.payload.to_string(),
        }
    }
}

/// Sends the due immediate messages this instance can claim.
pub async fn deliver(
    store: &dyn Store,
    settings: &NotificationSettings,
    sender: &Sender,
    owner: &str,
    now: Timestamp,
) -> Result<(u64, u64)> {
    let lease = now + SignedDuration::from_secs(120);
    let (mut sent, mut failed) = (0, 0);
    let channels: &[Channel] = if sender.mailer.is_some() {
        &[Channel::Email, Channel::Webhook]
    } else {
        &[Channel::Webhook]
    };
    for message in store
        .claim_notifications(owner, now, lease, 50, channels)
        .await?
    {
        match sender.send(&message).await {
            Ok(()) => {
                store
                    .notification_sent(message.id, Timestamp::now())
                    .await?;
                tracing::info!(notification_id = message.id, channel = %message.channel, "notification sent");
                sent += 1;
            }
            Err(error) => {
                let attempts = message.attempts as u32 + 1;
                let retry_at = (attempts < settings.max_attempts).then(|| {
                    let delay = settings
                        .retry_initial_secs
                        .saturating_mul(1u64 << attempts.min(30).saturating_sub(1))
                        .min(settings.retry_max_secs);
                    Timestamp::now() + SignedDuration::from_secs(delay as i64)
                });
                tracing::warn!(notification_id = message.id, attempts, dead = retry_at.is_none(), %error, "notification not sent");
                store
                    .notification_failed(message.id, &error, retry_at)
                    .await?;
                failed += 1;
            }
        }
    }
    Ok((sent, failed))
}

/// Sends each site's digest once a day at its local digest time.
async fn digest_due(store: &dyn Store, config: &CollectorConfig, now: Timestamp) -> Result<()> {
    let at = jiff::civil::Time::strptime("%H:%M", &config.notifications.digest_time)
        .unwrap_or(jiff::civil::Time::midnight());
    for site in store.sites().await? {
        let zone = jiff::tz::TimeZone::get(&site.timezone).unwrap_or(jiff::tz::TimeZone::UTC);
        let local = now.to_zoned(zone);
        let today = local.date().to_string();
        if local.time() < at || store.digest_last_date(site.id).await?.as_deref() == Some(&today) {
            continue;
        }
        digest(store, &site, &today, now).await?;
    }
    Ok(())
}

/// Gathers a site's pending digest messages into one per address (each
/// item once), queued for immediate delivery. Returns how many.
pub async fn digest(
    store: &dyn Store,
    site: &Site,
    local_date: &str,
    now: Timestamp,
) -> Result<usize> {
    let pending = store.pending_digest(site.id).await?;
    let mut by_address: BTreeMap<(Channel, String), Vec<&Notification>> = BTreeMap::new();
    for message in &pending {
        by_address
            .entry((message.channel, message.address.clone()))
            .or_default()
            .push(message);
    }
    let mut digests = Vec::new();
    for ((channel, address), items) in by_address {
        let first = items[0];
        let subject = format!(
            "[Hall Monitor] {}: daily digest, {} item(s)",
            site.name,
            items.len()
        );
        let mut body = format!("Daily digest for {} ({local_date}):\n", site.name);
        for (n, item) in items.iter().enumerate() {
            let title = item
                .subject
                .split_once(": ")
                .map_or(item.subject.as_str(), |(_, t)| t);
            body.push_str(&format!("\n{}. {title}\n", n + 1));
            for line in item.body.lines().filter(|l| {
                l.starts_with("Device:") || l.starts_with("When:") || l.starts_with("Review:")
            }) {
                body.push_str(&format!("   {line}\n"));
            }
        }
        let payload = json!({
            "schema": "hallmonitor.digest.v1",
            "site": site.name,
            "date": local_date,
            "items": items.iter().map(|i| serde_json::from_str::<serde_json::Value>(&i.payload).unwrap_or_default()).collect::<Vec<_>>(),
        });
        digests.push((
            NewNotification {
                site: site.id,
                channel,
                address,
                webhook_format: first.webhook_format.clone(),
                webhook_secret: first.webhook_secret.clone(),
                timing: Timing::Immediate,
                subject,
                body,
                payload: payload.to_string(),
            },
            items.iter().map(|i| i.id).collect(),
        ));
    }
    let count = digests.len();
    store
        .queue_digest(site.id, &digests, local_date, now)
        .await?;
    Ok(count)
}

/// A test message to every recipient of `role` at a site, queued for the
/// worker (or `deliver`).
pub async fn queue_test(
    store: &dyn Store,
    config: &CollectorConfig,
    site: &Site,
    role: Role,
    now: Timestamp,
) -> Result<u64> {
    let event = NotificationEvent {
        id: 0,
        site: site.id,
        kind: "test".into(),
        flag_id: None,
        device: None,
        account: String::new(),
        severity: 0,
        summary: String::new(),
        at: now,
    };
    let content = Content::for_event(&config.notifications, site, &event, None);
    let messages: Vec<NewNotification> = store
        .recipients(Some(site.id))
        .await?
        .iter()
        .filter(|r| r.role == role)
        .map(|r| {
            content.message(
                site,
                r.channel,
                &r.address,
                &r.webhook_format,
                &r.webhook_secret,
                Timing::Immediate,
            )
        })
        .collect();
    store.queue_notifications(None, &messages, now).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tamper_flag_is_told_to_the_technician_without_an_account() {
        let config = CollectorConfig::default();
        let routes: Vec<_> = config
            .notifications
            .routes
            .iter()
            .filter(|r| r.kind == "tamper")
            .collect();
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].roles, [Role::Technician]);
        assert_eq!(routes[0].timing, Timing::Immediate);
        let site = Site {
            id: crate::model::SiteId(1),
            name: "Cabot".into(),
            timezone: "Europe/London".into(),
        };
        let event = NotificationEvent {
            id: 1,
            site: site.id,
            kind: "tamper".into(),
            flag_id: Some(7),
            device: Some(crate::model::DeviceId::from_string("dev-1")),
            account: String::new(),
            severity: 0,
            summary: "clock moved forward 1 day at 2027-01-15T08:00:00Z".into(),
            at: Timestamp::from_second(1_800_000_000).unwrap(),
        };
        let content = Content::for_event(&config.notifications, &site, &event, None);
        assert_eq!(
            content.subject,
            "[Hall Monitor] Cabot: possible tampering with the agent on unknown device"
        );
        assert!(
            content.body.contains("Check the device"),
            "{}",
            content.body
        );
        assert!(
            content.body.contains("clock moved forward 1 day"),
            "{}",
            content.body
        );
    }

    fn cabot() -> Site {
        Site {
            id: crate::model::SiteId(1),
            name: "Cabot".into(),
            timezone: "Europe/London".into(),
        }
    }

    #[test]
    fn capture_alerts_name_the_device_category_and_count_never_the_account() {
        let mut settings = CollectorConfig::default().notifications;
        settings.console_url = "https://hm.example/".into();
        // (kind, severity, summary, subject contains, body contains)
        let cases = [
            (
                "capture_threshold",
                0,
                "5 bullying captures in 7 days by one account (the latest on this device); incident #12",
                "capture threshold passed on unknown device",
                "5 bullying captures in 7 days by one account",
            ),
            (
                "capture_instant",
                2,
                "incident #9: self-harm",
                "self-harm capture on unknown device, incident #9",
                "whatever its severity",
            ),
        ];
        for (kind, severity, summary, subject, body) in cases {
            let event = NotificationEvent {
                id: 1,
                site: cabot().id,
                kind: kind.into(),
                flag_id: None,
                device: Some(crate::model::DeviceId::from_string("dev-1")),
                account: String::new(),
                severity,
                summary: summary.into(),
                at: Timestamp::from_second(1_800_000_000).unwrap(),
            };
            let content = Content::for_event(&settings, &cabot(), &event, None);
            assert!(
                content.subject.contains(subject),
                "{kind}: {}",
                content.subject
            );
            assert!(content.body.contains(body), "{kind}: {}", content.body);
            let incident = summary
                .rsplit_once('#')
                .map(|(_, n)| n.trim_end_matches(": self-harm"))
                .unwrap();
            let incident: String = incident.chars().take_while(char::is_ascii_digit).collect();
            assert!(
                content
                    .body
                    .contains(&format!("Review: https://hm.example/incidents/{incident}")),
                "{kind}: {}",
                content.body
            );
        }
    }

    #[tokio::test]
    async fn a_sites_own_routes_replace_collector_tomls() {
        use crate::store::{AlertStore, AuditEntry, SiteRoute};
        let dir = tempfile::tempdir().unwrap();
        let (store, site, _) =
            crate::store::sqlite::testing::store_with_device(dir.path(), Timestamp::now()).await;
        let config = CollectorConfig::default();
        let routes = routes_for(&store, &config, site.id).await.unwrap();
        assert_eq!(routes, config.notifications.routes);
        store
            .add_site_route(
                site.id,
                &SiteRoute {
                    id: 0,
                    kind: "capture_threshold".into(),
                    role: Role::HeadTeacher,
                    timing: Timing::Digest,
                },
                &[],
                AuditEntry {
                    at: Timestamp::now(),
                    site: None,
                    actor: "cli:root",
                    action: "route_added",
                    target: "site Cabot",
                    detail: "",
                    address: "cli",
                },
            )
            .await
            .unwrap();
        let routes = routes_for(&store, &config, site.id).await.unwrap();
        assert_eq!(
            routes,
            [Route {
                kind: "capture_threshold".into(),
                roles: vec![Role::HeadTeacher],
                timing: Timing::Digest,
            }]
        );
    }
}
