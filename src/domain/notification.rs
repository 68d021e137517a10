//! Lifecycle events that people and systems are told about, and what each one carries.
//!
//! An event is decided where the change that causes it is recorded (a finished job, drift found
//! by the reconciler) and stored with it; delivering it by email or webhook is `notify`'s job.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::JobKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventType {
    InstanceCreated,
    InstanceStarted,
    InstanceStopped,
    InstanceRebooted,
    InstanceTerminated,
    /// The reconciler found a change corral did not make.
    InstanceDrifted,
    JobFailed,
}

impl EventType {
    pub const ALL: [EventType; 7] = [
        EventType::InstanceCreated,
        EventType::InstanceStarted,
        EventType::InstanceStopped,
        EventType::InstanceRebooted,
        EventType::InstanceTerminated,
        EventType::InstanceDrifted,
        EventType::JobFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::InstanceCreated => "instance.created",
            EventType::InstanceStarted => "instance.started",
            EventType::InstanceStopped => "instance.stopped",
            EventType::InstanceRebooted => "instance.rebooted",
            EventType::InstanceTerminated => "instance.terminated",
            EventType::InstanceDrifted => "instance.drifted",
            EventType::JobFailed => "job.failed",
        }
    }

    /// The event a job announces when it ends: its lifecycle event when it succeeded,
    /// `job.failed` when it failed; nothing for jobs people did not ask about (refresh,
    /// reconcile, retagging) when they succeed.
    pub fn for_finished_job(kind: JobKind, succeeded: bool) -> Option<EventType> {
        if !succeeded {
            return Some(EventType::JobFailed);
        }
        match kind {
            JobKind::CreateInstances => Some(EventType::InstanceCreated),
            JobKind::StartInstances => Some(EventType::InstanceStarted),
            JobKind::StopInstances => Some(EventType::InstanceStopped),
            JobKind::RebootInstances => Some(EventType::InstanceRebooted),
            JobKind::TerminateInstances => Some(EventType::InstanceTerminated),
            JobKind::RefreshInstances
            | JobKind::Reconcile
            | JobKind::TagInstances
            | JobKind::DeleteKeyPair => None,
        }
    }

    /// What happened, in a few words, for subjects and summaries.
    pub fn headline(self) -> &'static str {
        match self {
            EventType::InstanceCreated => "created",
            EventType::InstanceStarted => "started",
            EventType::InstanceStopped => "stopped",
            EventType::InstanceRebooted => "rebooted",
            EventType::InstanceTerminated => "terminated",
            EventType::InstanceDrifted => "changed outside corral",
            EventType::JobFailed => "failed",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = String;

    fn from_str(value: &str) -> Result<EventType, String> {
        EventType::ALL.into_iter().find(|event| event.as_str() == value).ok_or_else(|| {
            let known: Vec<&str> = EventType::ALL.iter().map(|event| event.as_str()).collect();
            format!("unknown event '{value}'; known events: {}", known.join(", "))
        })
    }
}

/// An event as receivers get it: the JSON body of a webhook, and what an email describes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Stable across retries: receivers drop duplicates by it.
    pub id: String,
    #[serde(rename = "type")]
    pub event: String,
    pub occurred_at: DateTime<Utc>,
    pub namespace: Option<String>,
    /// Who caused it: a username, or `system`.
    pub actor: String,
    /// Which of the actor's credentials did: an API key's prefix, or `token`.
    #[serde(default)]
    pub credential: Option<String>,
    pub job_id: Option<String>,
    /// The job's kind, when a job caused the event.
    pub job_kind: Option<String>,
    pub instances: Vec<NotifiedInstance>,
    /// Why the job failed (`job.failed`).
    pub error: Option<String>,
    /// What changed (`instance.drifted`): every field one reconcile pass found changed on the
    /// instance, each with its old and new value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<DriftChange>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifiedInstance {
    pub id: String,
    pub cloud_id: Option<String>,
    pub name: String,
    pub region: String,
    pub instance_type: String,
    pub state: String,
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
    pub key_name: Option<String>,
    /// The user the instance is logged in to as; absent while not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_user: Option<String>,
}

impl NotifiedInstance {
    /// How to log in, when the instance has a key pair and a public address.
    pub fn ssh_command(&self) -> Option<String> {
        crate::domain::ssh_command(
            self.key_name.as_deref(),
            self.public_ip.as_deref(),
            self.login_user.as_deref(),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftChange {
    pub field: String,
    pub old_value: Option<String>,
    pub new_value: Option<String>,
}

impl Notification {
    /// The names of the instances, shortened after three.
    pub fn instance_names(&self) -> String {
        let names: Vec<&str> = self.instances.iter().map(|i| i.name.as_str()).collect();
        match names.len() {
            0 => "no instance".to_string(),
            1..=3 => names.join(", "),
            n => format!("{} and {} more", names[..3].join(", "), n - 3),
        }
    }
}

/// Whether a subscription to `events` (empty: all) wants `event`.
pub fn subscribed(events: &[EventType], event: EventType) -> bool {
    events.is_empty() || events.contains(&event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_announce_their_lifecycle_event_or_their_failure() {
        let cases = [
            (JobKind::CreateInstances, true, Some("instance.created")),
            (JobKind::StopInstances, true, Some("instance.stopped")),
            (JobKind::TerminateInstances, true, Some("instance.terminated")),
            (JobKind::RefreshInstances, true, None),
            (JobKind::TagInstances, true, None),
            (JobKind::StartInstances, false, Some("job.failed")),
            (JobKind::Reconcile, false, Some("job.failed")),
        ];
        for (kind, succeeded, expected) in cases {
            let event = EventType::for_finished_job(kind, succeeded).map(EventType::as_str);
            assert_eq!(event, expected, "{kind:?} succeeded={succeeded}");
        }
    }

    #[test]
    fn event_names_parse_back_and_unknown_ones_list_the_known() {
        for event in EventType::ALL {
            assert_eq!(event.as_str().parse::<EventType>(), Ok(event));
        }
        let err = "instance.exploded".parse::<EventType>().unwrap_err();
        assert!(err.contains("instance.exploded") && err.contains("job.failed"), "{err}");
    }

    #[test]
    fn an_empty_subscription_wants_everything() {
        assert!(subscribed(&[], EventType::JobFailed));
        let only = vec![EventType::InstanceStopped];
        assert!(subscribed(&only, EventType::InstanceStopped));
        assert!(!subscribed(&only, EventType::InstanceStarted));
    }

    #[test]
    fn names_are_shortened_and_ssh_needs_a_key_and_an_address() {
        let instance = |name: &str| NotifiedInstance {
            id: "i".into(),
            cloud_id: None,
            name: name.into(),
            region: "us-east-1".into(),
            instance_type: "t3.micro".into(),
            state: "running".into(),
            public_ip: Some("3.4.5.6".into()),
            private_ip: None,
            key_name: None,
            login_user: None,
        };
        let mut event = Notification {
            id: "e".into(),
            event: "instance.created".into(),
            occurred_at: Utc::now(),
            namespace: None,
            actor: "alice".into(),
            credential: None,
            job_id: None,
            job_kind: None,
            instances: ["a", "b", "c", "d", "e"].map(instance).to_vec(),
            error: None,
            drift: Vec::new(),
        };
        assert_eq!(event.instance_names(), "a, b, c and 2 more");
        event.instances.truncate(2);
        assert_eq!(event.instance_names(), "a, b");
        assert_eq!(event.instances[0].ssh_command(), None);
        event.instances[0].key_name = Some("deploy".into());
        assert_eq!(event.instances[0].ssh_command().unwrap(), "ssh -i deploy.pem ec2-user@3.4.5.6");
    }
}
