//! `[notify]`: email (SMTP) and webhook notifications: the server, the recipients, the SSRF
//! guard, timeouts, retries, and the cap on subscriptions per namespace.

use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::backoff;

/// Email and webhook notifications. The SMTP keys and the recipients have short environment
/// names: `CORRAL_SMTP_HOST`, `CORRAL_SMTP_PORT`, `CORRAL_SMTP_USER`, `CORRAL_SMTP_PASSWORD`,
/// `CORRAL_SMTP_TLS`, `CORRAL_SMTP_FROM`, `CORRAL_NOTIFY_EMAIL`, and
/// `CORRAL_WEBHOOK_ALLOW_PRIVATE`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifySettings {
    /// SMTP server; email is off without it.
    pub smtp_host: Option<String>,
    /// Defaults by `smtp_tls`: 25 (`none`), 587 (`starttls`), 465 (`tls`).
    pub smtp_port: Option<u16>,
    pub smtp_user: Option<String>,
    #[serde(skip_serializing)]
    pub smtp_password: Option<SecretString>,
    pub smtp_tls: SmtpTls,
    /// The sender, e.g. `corral <corral@example.com>`.
    pub smtp_from: String,
    /// Addresses told about every event, comma-separated or a list.
    #[serde(deserialize_with = "comma_separated")]
    pub email: Vec<String>,
    /// Lets webhooks reach loopback, link-local and private addresses (off: an SSRF guard).
    pub webhook_allow_private: bool,
    /// Time limit of one webhook call, and of one SMTP conversation.
    pub webhook_timeout_secs: u64,
    pub smtp_timeout_secs: u64,
    /// Attempts per delivery before it is parked as dead.
    pub max_attempts: i64,
    /// Seconds before the first retry; doubles with every attempt up to `retry_max_delay_secs`.
    pub retry_delay_secs: f64,
    pub retry_max_delay_secs: f64,
    /// How often idle delivery workers look for due deliveries.
    pub poll_interval_ms: u64,
    /// The address people reach this corral at, for links in emails; by default the
    /// listening address.
    pub public_url: Option<String>,
    /// Most subscriptions one namespace may hold, webhooks and email subscriptions counted
    /// together (`CORRAL_NOTIFY__MAX_SUBSCRIPTIONS_PER_NAMESPACE`); a create past it is refused
    /// with 422. Global subscriptions, which only admins make, are not counted or capped. 0
    /// leaves namespaces none of their own.
    pub max_subscriptions_per_namespace: u32,
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain text, for a relay on loopback.
    None,
    /// Upgrade a plain connection (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

impl Default for NotifySettings {
    fn default() -> NotifySettings {
        NotifySettings {
            smtp_host: None,
            smtp_port: None,
            smtp_user: None,
            smtp_password: None,
            smtp_tls: SmtpTls::Starttls,
            smtp_from: "corral <corral@localhost>".to_string(),
            email: Vec::new(),
            webhook_allow_private: false,
            webhook_timeout_secs: 10,
            smtp_timeout_secs: 30,
            max_attempts: 10,
            retry_delay_secs: 5.0,
            retry_max_delay_secs: 900.0,
            poll_interval_ms: 1_000,
            public_url: None,
            max_subscriptions_per_namespace: 50,
        }
    }
}

impl NotifySettings {
    pub fn smtp_port(&self) -> u16 {
        self.smtp_port.unwrap_or(match self.smtp_tls {
            SmtpTls::None => 25,
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
        })
    }

    /// Delay before the attempt after `attempts` failed ones: base × 2^(attempts-1), capped.
    pub fn backoff(&self, attempts: i64) -> Duration {
        backoff(self.retry_delay_secs, self.retry_max_delay_secs, attempts)
    }

    pub(super) fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.email.is_empty() && self.smtp_host.is_none() {
            problems.push(
                "notify.email (CORRAL_NOTIFY_EMAIL) needs an SMTP server: set CORRAL_SMTP_HOST"
                    .to_string(),
            );
        }
        if self.smtp_user.is_some() != self.smtp_password.is_some() {
            problems.push(
                "CORRAL_SMTP_USER and CORRAL_SMTP_PASSWORD go together: set both or neither"
                    .to_string(),
            );
        }
        if self.smtp_user.is_some() && self.smtp_tls == SmtpTls::None {
            problems.push(
                "CORRAL_SMTP_USER with CORRAL_SMTP_TLS=none would send the password in clear: \
                 use starttls or tls"
                    .to_string(),
            );
        }
        if self.smtp_from.parse::<lettre::message::Mailbox>().is_err() {
            problems
                .push(format!("CORRAL_SMTP_FROM: '{}' is not an email address", self.smtp_from));
        }
        for address in &self.email {
            if address.parse::<lettre::Address>().is_err() {
                problems.push(format!("CORRAL_NOTIFY_EMAIL: '{address}' is not an email address"));
            }
        }
        if self.max_attempts < 1 {
            problems.push("notify.max_attempts: must be at least 1".to_string());
        }
        let (delay, max_delay) = (self.retry_delay_secs, self.retry_max_delay_secs);
        if !delay.is_finite() || !max_delay.is_finite() || delay < 0.0 || max_delay < delay {
            problems.push(
                "notify.retry_delay_secs: must be at least 0 and at most notify.retry_max_delay_secs"
                    .to_string(),
            );
        }
        if self.webhook_timeout_secs == 0 || self.smtp_timeout_secs == 0 {
            problems.push("notify timeouts must be at least 1 second".to_string());
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            problems
                .push(format!("notify.public_url: '{url}' must start with http:// or https://"));
        }
        problems
    }
}

/// Reads a list given as a comma-separated string (as environment variables give it) or as a
/// list; blanks are dropped.
fn comma_separated<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let items = match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(text) => text.split(',').map(str::to_string).collect(),
        OneOrMany::Many(items) => items,
    };
    Ok(items
        .into_iter()
        .map(|item| item.trim().to_string())
        .filter(|item| !item.is_empty())
        .collect())
}
