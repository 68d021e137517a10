//! Instance states and the actions that move an instance between them.
//!
//! `InstanceState` mirrors EC2's lifecycle plus two states that exist only in corral:
//! `provisioning` (stored, launch not yet confirmed by the cloud), `failed` (the launch was
//! refused, so no cloud instance exists) and `missing` (the cloud no longer knows the instance;
//! the record stays). States are only ever set from what the cloud reports.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    Provisioning,
    Pending,
    Running,
    Stopping,
    Stopped,
    ShuttingDown,
    Terminated,
    Failed,
    Missing,
}

impl InstanceState {
    pub const ALL: [InstanceState; 9] = [
        InstanceState::Provisioning,
        InstanceState::Pending,
        InstanceState::Running,
        InstanceState::Stopping,
        InstanceState::Stopped,
        InstanceState::ShuttingDown,
        InstanceState::Terminated,
        InstanceState::Failed,
        InstanceState::Missing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Provisioning => "provisioning",
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
            InstanceState::ShuttingDown => "shutting-down",
            InstanceState::Terminated => "terminated",
            InstanceState::Failed => "failed",
            InstanceState::Missing => "missing",
        }
    }

    /// Whether an instance in this state holds its name: it exists in the cloud, or is being
    /// created (not terminated, failed, or missing from the cloud, which nothing can act on).
    /// Names are unique among the instances of a namespace that hold them.
    pub fn holds_name(self) -> bool {
        !matches!(self, InstanceState::Terminated | InstanceState::Failed | InstanceState::Missing)
    }

    /// Maps EC2's `InstanceStateName` strings; `None` for names corral does not know.
    pub fn from_cloud_name(name: &str) -> Option<InstanceState> {
        match name {
            "pending" => Some(InstanceState::Pending),
            "running" => Some(InstanceState::Running),
            "stopping" => Some(InstanceState::Stopping),
            "stopped" => Some(InstanceState::Stopped),
            "shutting-down" => Some(InstanceState::ShuttingDown),
            "terminated" => Some(InstanceState::Terminated),
            _ => None,
        }
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for InstanceState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        InstanceState::ALL.into_iter().find(|state| state.as_str() == s).ok_or_else(|| {
            let allowed: Vec<&str> = InstanceState::ALL.iter().map(|s| s.as_str()).collect();
            format!("unknown state '{s}'; allowed: {}", allowed.join(", "))
        })
    }
}

/// A lifecycle action a user can ask for on an existing instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Start,
    Stop,
    Reboot,
    Terminate,
}

impl Action {
    pub const ALL: [Action; 4] = [Action::Start, Action::Stop, Action::Reboot, Action::Terminate];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Reboot => "reboot",
            Action::Terminate => "terminate",
        }
    }

    /// The recorded states from which EC2 accepts this action.
    pub fn allowed_from(self) -> &'static [InstanceState] {
        use InstanceState::*;
        match self {
            Action::Start => &[Stopped],
            Action::Stop => &[Running],
            Action::Reboot => &[Running],
            Action::Terminate => &[Pending, Running, Stopping, Stopped],
        }
    }

    /// The state the job waits for after the call; `None` when the action keeps the state.
    pub fn target_state(self) -> Option<InstanceState> {
        match self {
            Action::Start => Some(InstanceState::Running),
            Action::Stop => Some(InstanceState::Stopped),
            Action::Reboot => None,
            Action::Terminate => Some(InstanceState::Terminated),
        }
    }

    /// Why the action cannot be applied to an instance in `state`, if it cannot.
    pub fn conflict(self, state: InstanceState) -> Option<String> {
        if self.allowed_from().contains(&state) {
            return None;
        }
        let allowed: Vec<&str> = self.allowed_from().iter().map(|s| s.as_str()).collect();
        Some(format!(
            "cannot {} an instance that is {state}; allowed from: {}",
            self.as_str(),
            allowed.join(", ")
        ))
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|action| action.as_str() == s)
            .ok_or_else(|| format!("unknown action '{s}'; allowed: start, stop, reboot, terminate"))
    }
}

/// One instance that an action cannot be applied to right now, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConflict {
    pub instance_id: String,
    pub reason: String,
}

/// Which engine makes an instance's changes in the cloud: the AWS API directly, or Terraform.
/// The one owner of backend names: requests, namespace settings, configuration and stored
/// rows all read them through `FromStr` (serde too), so that they accept the same names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum Backend {
    #[default]
    Aws,
    Terraform,
}

impl Backend {
    /// The names a backend is given by, as shown in documentation and errors.
    pub const NAMES: [&'static str; 2] = ["aws", "terraform"];
    /// Every name `FromStr` accepts: `NAMES` and the older `awscli`.
    pub const ACCEPTED: [&'static str; 3] = ["aws", "awscli", "terraform"];

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Aws => "aws",
            Backend::Terraform => "terraform",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown backend '{0}'; allowed: aws (or awscli), terraform")]
pub struct UnknownBackend(pub String);

impl std::str::FromStr for Backend {
    type Err = UnknownBackend;

    /// `awscli` is the older name of `aws`.
    fn from_str(name: &str) -> Result<Backend, UnknownBackend> {
        match name {
            "aws" | "awscli" => Ok(Backend::Aws),
            "terraform" => Ok(Backend::Terraform),
            _ => Err(UnknownBackend(name.to_string())),
        }
    }
}

impl TryFrom<String> for Backend {
    type Error = UnknownBackend;

    fn try_from(name: String) -> Result<Backend, UnknownBackend> {
        name.parse()
    }
}

/// How to log in to an instance with a key pair and a public address, as `login_user` (which
/// the AMI implies: `domain::login_user`; `ec2-user` while it is not known).
pub fn ssh_command(
    key_name: Option<&str>,
    public_ip: Option<&str>,
    login_user: Option<&str>,
) -> Option<String> {
    let address: std::net::IpAddr = public_ip?.parse().ok()?;
    let user = shell_word(login_user.unwrap_or("ec2-user"));
    Some(format!("ssh -i {} {user}@{address}", shell_word(&format!("{}.pem", key_name?))))
}

/// `text` as one word for a POSIX shell: as it is when it holds only characters no shell
/// treats specially, else in single quotes (a quote inside written `'\''`).
pub fn shell_word(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "._-/+=:@,".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        return text.to_string();
    }
    format!("'{}'", text.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_are_read_alike_from_text_and_from_json() {
        for (name, backend) in
            [("aws", Backend::Aws), ("awscli", Backend::Aws), ("terraform", Backend::Terraform)]
        {
            assert_eq!(name.parse::<Backend>(), Ok(backend), "{name}");
            let json: Backend = serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_eq!(json, backend, "{name}");
        }
        for name in Backend::NAMES {
            assert_eq!(name.parse::<Backend>().unwrap().as_str(), name);
            assert_eq!(serde_json::to_value(name.parse::<Backend>().unwrap()).unwrap(), name);
        }
        let unknown = "Terraform".parse::<Backend>().unwrap_err();
        assert_eq!(
            unknown.to_string(),
            "unknown backend 'Terraform'; allowed: aws (or awscli), terraform"
        );
        let json = serde_json::from_value::<Backend>(serde_json::json!("pulumi")).unwrap_err();
        assert!(json.to_string().contains("unknown backend 'pulumi'"), "{json}");
    }

    #[test]
    fn the_ssh_command_quotes_what_a_shell_would_run() {
        assert_eq!(
            ssh_command(Some("deploy"), Some("203.0.113.9"), None).unwrap(),
            "ssh -i deploy.pem ec2-user@203.0.113.9"
        );
        assert_eq!(
            ssh_command(Some("deploy"), Some("203.0.113.9"), Some("ubuntu")).unwrap(),
            "ssh -i deploy.pem ubuntu@203.0.113.9"
        );
        assert_eq!(
            ssh_command(Some("a;rm -rf ~ $(id)`x`"), Some("203.0.113.9"), None).unwrap(),
            "ssh -i 'a;rm -rf ~ $(id)`x`.pem' ec2-user@203.0.113.9"
        );
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(ssh_command(Some("k"), Some("1.2.3.4; id"), None), None);
    }

    #[test]
    fn every_action_is_checked_against_every_state() {
        // One row per state: the actions allowed from it.
        let table = [
            (InstanceState::Provisioning, ""),
            (InstanceState::Pending, "terminate"),
            (InstanceState::Running, "stop reboot terminate"),
            (InstanceState::Stopping, "terminate"),
            (InstanceState::Stopped, "start terminate"),
            (InstanceState::ShuttingDown, ""),
            (InstanceState::Terminated, ""),
            (InstanceState::Failed, ""),
            (InstanceState::Missing, ""),
        ];
        for (state, expected) in table {
            let allowed: Vec<&str> = Action::ALL
                .into_iter()
                .filter(|action| action.conflict(state).is_none())
                .map(Action::as_str)
                .collect();
            assert_eq!(allowed.join(" "), expected, "actions allowed from {state}");
        }
    }

    #[test]
    fn conflict_message_names_state_and_allowed_states() {
        let message = Action::Start.conflict(InstanceState::Terminated).unwrap();
        assert_eq!(message, "cannot start an instance that is terminated; allowed from: stopped");
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in InstanceState::ALL {
            assert_eq!(state.as_str().parse::<InstanceState>(), Ok(state));
        }
        assert!("exploded".parse::<InstanceState>().unwrap_err().contains("allowed: provisioning"));
    }
}
