//! The vocabulary of corral: instances, their states and the actions between them, jobs,
//! and the policy that every request must satisfy.
//!
//! Everything here is pure: no IO, no database, HTTP or cloud SDK types. Validation returns every
//! problem it finds, never only the first, so that a client can fix a request in one round trip.

mod instance;
mod job;
mod policy;

pub use instance::{Action, InstanceState, StateConflict};
pub use job::{JobKind, JobStatus};
pub use policy::{
    AmiRule, CpuCredits, CreateRequest, ImageFacts, InstanceTypeFacts, LaunchSpec, Policy,
    StorageRange, Violation,
};
