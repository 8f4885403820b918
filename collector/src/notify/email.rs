//! Email over SMTP with lettre: STARTTLS or implicit TLS through rustls,
//! authentication, a pooled connection.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::SmtpSettings;
use crate::model::SmtpSecurity;
use crate::store::Notification;

pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: lettre::message::Mailbox,
}

impl Mailer {
    /// None when no SMTP host is configured.
    pub fn new(settings: &SmtpSettings) -> anyhow::Result<Option<Mailer>> {
        if settings.host.is_empty() {
            return Ok(None);
        }
        let builder = match settings.security {
            SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&settings.host)?,
            SmtpSecurity::Starttls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&settings.host)?
            }
            SmtpSecurity::None => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.host)
            }
        };
        let mut builder = builder
            .port(settings.port)
            .timeout(Some(Duration::from_secs(settings.timeout_secs)));
        if !settings.username.is_empty() {
            let password = if settings.password_file.is_empty() {
                String::new()
            } else {
                std::fs::read_to_string(&settings.password_file)
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "notifications.smtp.password_file {}: {e}",
                            settings.password_file
                        )
                    })?
                    .trim()
                    .to_owned()
            };
            builder = builder.credentials(Credentials::new(settings.username.clone(), password));
        }
        let from = settings
            .from
            .parse()
            .map_err(|e| anyhow::anyhow!("notifications.smtp.from '{}': {e}", settings.from))?;
        Ok(Some(Mailer {
            transport: builder.build(),
            from,
        }))
    }

    pub async fn send(&self, message: &Notification) -> Result<(), String> {
        let to = message
            .address
            .parse()
            .map_err(|e| format!("address '{}': {e}", message.address))?;
        let email = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(&message.subject)
            .header(ContentType::TEXT_PLAIN)
            .body(message.body.clone())
            .map_err(|e| e.to_string())?;
        self.transport
            .send(email)
            .await
            .map(|_| ())
            .map_err(|e| format!("SMTP: {e}"))
    }
}
