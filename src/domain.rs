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
/// Applies an update's `changes` to `map`: a value sets its key, `None` removes it, and a key
/// the changes leave out stays (how every `PATCH` treats roles, tags and quotas).
pub fn merge<K: Ord, V>(
    map: &mut std::collections::BTreeMap<K, V>,
    changes: impl IntoIterator<Item = (K, Option<V>)>,
) {
    for (key, value) in changes {
        match value {
            Some(value) => map.insert(key, value),
            None => map.remove(&key),
        };
    }
}

#[cfg(test)]
#[test]
fn a_merge_sets_removes_and_keeps() {
    let mut map = std::collections::BTreeMap::from([("a", 1), ("b", 2), ("c", 3)]);
    merge(&mut map, [("a", Some(10)), ("b", None), ("d", Some(4)), ("e", None)]);
    assert_eq!(map, std::collections::BTreeMap::from([("a", 10), ("c", 3), ("d", 4)]));
}

pub use policy::{
    AmiRule, CpuCredits, CreateRequest, ImageFacts, IngressRequest, IngressRule, InstanceTypeFacts,
    KEY_NAME_RULE, LaunchSpec, Policy, StorageRange, Violation, check_name_and_tags,
    is_valid_instance_name, is_valid_key_name, is_valid_namespace, login_user, user_tags,
};
