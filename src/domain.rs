//! The vocabulary of corral: instances, their states and the actions between them, jobs,
//! the policy that every request must satisfy, and who may do what.
//!
//! Everything here is pure: no IO, no database, HTTP or cloud SDK types. Validation returns every
//! problem it finds, never only the first, so that a client can fix a request in one round trip.

mod identity;
mod instance;
mod job;
mod notification;
mod policy;

pub use identity::{
    Access, Credential, MIN_PASSWORD_LEN, Principal, Role, is_reserved_username, is_valid_username,
};
pub use instance::{Action, Backend, InstanceState, StateConflict, UnknownBackend, ssh_command};
pub use job::{JobKind, JobStatus};
pub use notification::{DriftChange, EventType, Notification, NotifiedInstance, subscribed};
pub use policy::{
    AmiRule, CpuCredits, CreateRequest, ImageFacts, IngressRequest, IngressRule, InstanceTypeFacts,
    KEY_NAME_RULE, LaunchSpec, Policy, StorageRange, Violation, check_name_and_tags,
    is_valid_key_name, is_valid_namespace,
};
