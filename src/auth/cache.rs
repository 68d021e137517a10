//! Principals kept in memory: users with their roles, and API keys, as read under one identity
//! version (`Store::identity_version`). Every write that changes a user, a role binding or an
//! API key raises that version in its own transaction, and an entry read under an older one is
//! never used, so that a revoked key, a deleted user or a changed role applies at the very next
//! request, on every process, while an unchanged principal costs no query (SQLite) or one
//! primary-key read (PostgreSQL). Only records that exist are kept (unknown keys and users are
//! asked of the database each time), at most `CAPACITY` of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::storage::{ApiKeyRecord, StorageError, Store, UserRecord};

/// Entries kept at most; past it the cache starts empty again.
const CAPACITY: usize = 10_000;

#[derive(Default)]
pub(super) struct PrincipalCache {
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    /// The identity version every entry was read under.
    version: i64,
    users: HashMap<String, Arc<UserRecord>>,
    /// By key prefix.
    keys: HashMap<String, Arc<ApiKeyRecord>>,
}

impl Entries {
    fn len(&self) -> usize {
        self.users.len() + self.keys.len()
    }
}

impl PrincipalCache {
    /// The user with `id`, as of identity version `version` (read before this call).
    pub(super) async fn user(
        &self,
        store: &Store,
        version: i64,
        id: &str,
    ) -> Result<Option<Arc<UserRecord>>, StorageError> {
        if let Some(user) = self.current(version, |entries| entries.users.get(id).cloned()) {
            return Ok(Some(user));
        }
        let Some(user) = store.user_by_id(id).await? else { return Ok(None) };
        let user = Arc::new(user);
        self.keep(version, |entries| {
            entries.users.insert(id.to_string(), user.clone());
        });
        Ok(Some(user))
    }

    /// The API key whose prefix is `prefix`, as of identity version `version`.
    pub(super) async fn api_key(
        &self,
        store: &Store,
        version: i64,
        prefix: &str,
    ) -> Result<Option<Arc<ApiKeyRecord>>, StorageError> {
        if let Some(key) = self.current(version, |entries| entries.keys.get(prefix).cloned()) {
            return Ok(Some(key));
        }
        let Some(key) = store.api_key_by_prefix(prefix).await? else { return Ok(None) };
        let key = Arc::new(key);
        self.keep(version, |entries| {
            entries.keys.insert(prefix.to_string(), key.clone());
        });
        Ok(Some(key))
    }

    fn current<T>(&self, version: i64, find: impl FnOnce(&Entries) -> Option<T>) -> Option<T> {
        let entries = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if entries.version == version { find(&entries) } else { None }
    }

    /// Keeps what was read under `version`, unless a newer version is known by now (what was
    /// read may already be out of date); a newer `version` than the entries' empties them.
    fn keep(&self, version: i64, insert: impl FnOnce(&mut Entries)) {
        let mut entries = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if version < entries.version {
            return;
        }
        if version > entries.version || entries.len() >= CAPACITY {
            *entries = Entries { version, ..Entries::default() };
        }
        insert(&mut entries);
    }
}
