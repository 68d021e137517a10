//! Job kinds and statuses: the durable units of work behind every mutating request.

use std::fmt;
use std::str::FromStr;

use crate::domain::Action;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    CreateInstances,
    StartInstances,
    StopInstances,
    RebootInstances,
    TerminateInstances,
    RefreshInstances,
    Reconcile,
    /// Applies an instance's name and tags, changed by a request, in the cloud.
    TagInstances,
    /// Deletes a key pair corral no longer holds from every region it may have been imported to.
    DeleteKeyPair,
}

impl JobKind {
    pub const ALL: [JobKind; 9] = [
        JobKind::CreateInstances,
        JobKind::StartInstances,
        JobKind::StopInstances,
        JobKind::RebootInstances,
        JobKind::TerminateInstances,
        JobKind::RefreshInstances,
        JobKind::Reconcile,
        JobKind::TagInstances,
        JobKind::DeleteKeyPair,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::CreateInstances => "create_instances",
            JobKind::StartInstances => "start_instances",
            JobKind::StopInstances => "stop_instances",
            JobKind::RebootInstances => "reboot_instances",
            JobKind::TerminateInstances => "terminate_instances",
            JobKind::RefreshInstances => "refresh_instances",
            JobKind::Reconcile => "reconcile",
            JobKind::TagInstances => "tag_instances",
            JobKind::DeleteKeyPair => "delete_key_pair",
        }
    }

    /// The audit log's action for a request that stores this job.
    pub fn audit_action(self) -> &'static str {
        match self {
            JobKind::CreateInstances => "instance.create",
            JobKind::StartInstances => "instance.start",
            JobKind::StopInstances => "instance.stop",
            JobKind::RebootInstances => "instance.reboot",
            JobKind::TerminateInstances => "instance.terminate",
            JobKind::RefreshInstances => "instance.refresh",
            JobKind::Reconcile => "reconcile",
            JobKind::TagInstances => "instance.update",
            JobKind::DeleteKeyPair => "key_pair.delete",
        }
    }

    pub fn for_action(action: Action) -> JobKind {
        match action {
            Action::Start => JobKind::StartInstances,
            Action::Stop => JobKind::StopInstances,
            Action::Reboot => JobKind::RebootInstances,
            Action::Terminate => JobKind::TerminateInstances,
        }
    }

    /// The lifecycle action this job applies, `None` for creation and refresh.
    pub fn action(self) -> Option<Action> {
        match self {
            JobKind::CreateInstances
            | JobKind::RefreshInstances
            | JobKind::Reconcile
            | JobKind::TagInstances
            | JobKind::DeleteKeyPair => None,
            JobKind::StartInstances => Some(Action::Start),
            JobKind::StopInstances => Some(Action::Stop),
            JobKind::RebootInstances => Some(Action::Reboot),
            JobKind::TerminateInstances => Some(Action::Terminate),
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| format!("unknown job kind '{s}'"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl JobStatus {
    pub const ALL: [JobStatus; 4] =
        [JobStatus::Queued, JobStatus::Running, JobStatus::Succeeded, JobStatus::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL.into_iter().find(|status| status.as_str() == s).ok_or_else(|| {
            format!("unknown job status '{s}'; allowed: queued, running, succeeded, failed")
        })
    }
}
