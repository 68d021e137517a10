//! Email over SMTP: a plain-text and HTML message per delivery that a person can act on —
//! what happened, to which instances (name, ids, region, addresses, the SSH command when a key
//! pair is set), who did it, and the link to the job.
//!
//! Each message's `Message-ID` is made from the delivery id, which stays the same across
//! retries, so a resend after a crash is recognisable as the same message.

use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{NotifySettings, SmtpTls};
use crate::domain::Notification;

/// Sends mail through the configured SMTP server.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    /// The mailer the settings describe; `None` when no SMTP server is configured.
    pub fn from_settings(settings: &NotifySettings) -> anyhow::Result<Option<Mailer>> {
        let Some(host) = &settings.smtp_host else { return Ok(None) };
        let mut builder = match settings.smtp_tls {
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)?,
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)?,
        };
        builder = builder
            .port(settings.smtp_port())
            .timeout(Some(Duration::from_secs(settings.smtp_timeout_secs)));
        if let (Some(user), Some(password)) = (&settings.smtp_user, &settings.smtp_password) {
            let password = secrecy::ExposeSecret::expose_secret(password).to_string();
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        let from = settings
            .smtp_from
            .parse()
            .map_err(|err| anyhow::anyhow!("CORRAL_SMTP_FROM '{}': {err}", settings.smtp_from))?;
        Ok(Some(Mailer { transport: builder.build(), from }))
    }

    /// Mails `notification` to `to`; an error says why it was not accepted.
    pub async fn send(
        &self,
        to: &str,
        delivery_id: &str,
        notification: &Notification,
        job_link: Option<&str>,
    ) -> Result<(), String> {
        let to: Mailbox =
            to.parse().map_err(|err| format!("'{to}' is not an email address: {err}"))?;
        let rendered = render(notification, job_link);
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(rendered.subject)
            .message_id(Some(format!("<{delivery_id}@corral>")))
            .multipart(MultiPart::alternative_plain_html(rendered.text, rendered.html))
            .map_err(|err| format!("building the message: {err}"))?;
        self.transport.send(message).await.map_err(|err| format!("SMTP: {err}"))?;
        Ok(())
    }
}

/// An email's subject and bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Writes the email for `notification`; `job_link` is where the job can be looked at.
pub fn render(notification: &Notification, job_link: Option<&str>) -> Rendered {
    let event: Option<crate::domain::EventType> = notification.event.parse().ok();
    let headline = event.map_or("changed", |event| event.headline());
    let names = notification.instance_names();
    let subject = format!("[corral] {}: {names}", notification.event);
    let summary = match (&notification.job_kind, notification.error.is_some()) {
        (Some(kind), true) => format!("Job {kind} failed for {names}."),
        _ => format!("{} {names} {} {headline}.", noun(notification), verb(notification)),
    };

    let mut facts: Vec<(&str, String)> = vec![("Event", notification.event.clone())];
    if let Some(namespace) = &notification.namespace {
        facts.push(("Namespace", namespace.clone()));
    }
    facts.push((
        "By",
        match &notification.credential {
            Some(credential) => format!("{} ({credential})", notification.actor),
            None => notification.actor.clone(),
        },
    ));
    facts.push(("When", notification.occurred_at.format("%Y-%m-%d %H:%M:%S UTC").to_string()));
    if let Some(job_id) = &notification.job_id {
        facts.push(("Job", job_id.clone()));
        if let Some(link) = job_link {
            facts.push(("API link", link.to_string()));
        }
    }
    if let Some(error) = &notification.error {
        facts.push(("Error", error.clone()));
    }
    for drift in &notification.drift {
        let show = |value: &Option<String>| value.clone().unwrap_or_else(|| "none".to_string());
        facts.push((
            "Change",
            format!("{}: {} -> {}", drift.field, show(&drift.old_value), show(&drift.new_value)),
        ));
    }

    let mut text = format!("{summary}\n\n");
    for (label, value) in &facts {
        text.push_str(&format!("{:<10} {value}\n", format!("{label}:")));
    }
    let mut html =
        format!("<html><body style=\"font-family: sans-serif\"><p>{}</p><table>", escape(&summary));
    for (label, value) in &facts {
        let value = if *label == "API link" && value.starts_with("http") {
            format!("<a href=\"{0}\">{0}</a>", escape(value))
        } else {
            escape(value)
        };
        html.push_str(&format!("<tr><th align=\"left\">{label}</th><td>{value}</td></tr>"));
    }
    html.push_str("</table>");
    if let (Some(job_id), Some(_)) = (&notification.job_id, job_link) {
        // There is no page for people yet: the link is the API's, which says so.
        let note = format!(
            "The API link answers JSON to a client that sends an API key; in a terminal, \
             corral jobs get {job_id} shows the job."
        );
        text.push_str(&format!("\n{note}\n"));
        html.push_str(&format!("<p>{}</p>", escape(&note)));
    }

    if !notification.instances.is_empty() {
        text.push_str("\nInstances:\n");
        html.push_str("<h3>Instances</h3><ul>");
        for instance in &notification.instances {
            let cloud_id = instance.cloud_id.as_deref().unwrap_or("not launched");
            let show = |ip: &Option<String>| ip.clone().unwrap_or_else(|| "none".to_string());
            let lines = [
                format!("{} ({cloud_id}, corral id {})", instance.name, instance.id),
                format!(
                    "region {}, type {}, state {}",
                    instance.region, instance.instance_type, instance.state
                ),
                format!(
                    "public IP {}, private IP {}",
                    show(&instance.public_ip),
                    show(&instance.private_ip)
                ),
            ];
            let ssh = instance.ssh_command();
            text.push_str(&format!("  {}\n", lines[0]));
            for line in &lines[1..] {
                text.push_str(&format!("    {line}\n"));
            }
            if let Some(ssh) = &ssh {
                text.push_str(&format!("    {ssh}\n"));
            }
            html.push_str(&format!(
                "<li><b>{}</b><br>{}<br>{}",
                escape(&lines[0]),
                escape(&lines[1]),
                escape(&lines[2])
            ));
            if let Some(ssh) = &ssh {
                html.push_str(&format!("<br><code>{}</code>", escape(ssh)));
            }
            html.push_str("</li>");
        }
        html.push_str("</ul>");
    }
    html.push_str("</body></html>");
    Rendered { subject, text, html }
}

fn noun(notification: &Notification) -> &'static str {
    if notification.instances.len() == 1 { "Instance" } else { "Instances" }
}

fn verb(notification: &Notification) -> &'static str {
    if notification.instances.len() == 1 { "was" } else { "were" }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::NotifiedInstance;

    fn stopped(key_name: Option<&str>) -> Notification {
        Notification {
            id: "e1".into(),
            event: "instance.stopped".into(),
            occurred_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            namespace: Some("alpha".into()),
            actor: "alice".into(),
            credential: Some("crl_AbCd1234".into()),
            job_id: Some("j1".into()),
            job_kind: Some("stop_instances".into()),
            instances: vec![NotifiedInstance {
                id: "c1".into(),
                cloud_id: Some("i-0abc".into()),
                name: "web-1".into(),
                region: "eu-west-1".into(),
                instance_type: "t3.micro".into(),
                state: "stopped".into(),
                public_ip: Some("3.4.5.6".into()),
                private_ip: Some("10.0.0.7".into()),
                key_name: key_name.map(str::to_string),
                login_user: None,
            }],
            error: None,
            drift: Vec::new(),
        }
    }

    #[test]
    fn a_lifecycle_mail_says_what_happened_to_which_instance_and_who_did_it() {
        let mail = render(&stopped(Some("deploy")), Some("https://corral.example/v1/jobs/j1"));
        assert_eq!(mail.subject, "[corral] instance.stopped: web-1");
        assert!(mail.text.starts_with("Instance web-1 was stopped.\n"), "{}", mail.text);
        for expected in [
            "Namespace: alpha",
            "By:        alice (crl_AbCd1234)",
            "When:      2023-11-14 22:13:20 UTC",
            "Job:       j1",
            "API link:  https://corral.example/v1/jobs/j1",
            "The API link answers JSON to a client that sends an API key; in a terminal, corral \
             jobs get j1 shows the job.",
            "web-1 (i-0abc, corral id c1)",
            "region eu-west-1, type t3.micro, state stopped",
            "public IP 3.4.5.6, private IP 10.0.0.7",
            "ssh -i deploy.pem ec2-user@3.4.5.6",
        ] {
            assert!(mail.text.contains(expected), "missing '{expected}' in:\n{}", mail.text);
        }
        assert!(mail.html.contains("<a href=\"https://corral.example/v1/jobs/j1\">"));
        assert!(!render(&stopped(None), None).text.contains("ssh"));
    }

    #[test]
    fn a_failure_mail_carries_the_error_and_html_is_escaped() {
        let mut failed = stopped(None);
        failed.event = "job.failed".into();
        failed.error = Some("gave up after 3 attempts: <Throttled>".into());
        let mail = render(&failed, None);
        assert_eq!(mail.subject, "[corral] job.failed: web-1");
        assert!(mail.text.starts_with("Job stop_instances failed for web-1."), "{}", mail.text);
        assert!(mail.text.contains("Error:     gave up after 3 attempts: <Throttled>"));
        assert!(mail.html.contains("&lt;Throttled&gt;") && !mail.html.contains("<Throttled>"));
    }
}
