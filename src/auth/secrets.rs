//! Secrets at rest and in transit: Argon2id password hashes, API keys (random, stored as a
//! SHA-256 digest, named by a public prefix), random strings, and constant-time comparison.

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::Rng;
use rand::distributions::Alphanumeric;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every API key starts with this, so that secret scanners and people recognise one.
pub const API_KEY_PREFIX: &str = "crl_";
/// Random characters after `crl_` that identify a key (stored in clear, shown in lists).
const KEY_ID_LEN: usize = 8;
/// Random characters of the secret part (~190 bits).
const KEY_SECRET_LEN: usize = 32;

/// Too many passwords are being hashed at once; the request may be retried in a moment.
#[derive(Debug, thiserror::Error)]
#[error("the server is busy checking passwords; retry in a moment")]
pub struct Busy;

/// Hashes a password with Argon2id and a random salt, off the async runtime.
pub async fn hash_password(password: String) -> Result<String, Busy> {
    hashing(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .expect("Argon2id with its default parameters hashes any password")
    })
    .await
}

/// Whether `password` matches `hash`, off the async runtime. A malformed hash never matches.
pub async fn verify_password(hash: String, password: String) -> Result<bool, Busy> {
    hashing(move || {
        PasswordHash::new(&hash).is_ok_and(|parsed| {
            Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok()
        })
    })
    .await
}

/// Runs one Argon2 computation (~19 MiB and a core for tens of milliseconds) on a blocking
/// thread, at most one per core at a time. A few more wait their turn, briefly; beyond that
/// the caller is told `Busy` at once, so a flood of logins cannot exhaust memory or threads.
async fn hashing<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, Busy> {
    use std::sync::LazyLock;
    use std::sync::atomic::{AtomicUsize, Ordering};
    static CORES: LazyLock<usize> =
        LazyLock::new(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    static SLOTS: LazyLock<tokio::sync::Semaphore> =
        LazyLock::new(|| tokio::sync::Semaphore::new(*CORES));
    static WAITING: AtomicUsize = AtomicUsize::new(0);
    const WAIT: std::time::Duration = std::time::Duration::from_secs(5);

    let permit = match SLOTS.try_acquire() {
        Ok(permit) => permit,
        Err(_) => {
            /// Counts one waiter for as long as it lives, however its request ends.
            struct Waiting;
            impl Drop for Waiting {
                fn drop(&mut self) {
                    WAITING.fetch_sub(1, Ordering::SeqCst);
                }
            }
            let waiting = Waiting;
            if WAITING.fetch_add(1, Ordering::SeqCst) >= 4 * *CORES {
                return Err(Busy);
            }
            let permit = tokio::time::timeout(WAIT, SLOTS.acquire()).await;
            drop(waiting);
            permit.map_err(|_| Busy)?.expect("the semaphore is never closed")
        }
    };
    // The permit goes with the work: a request that is dropped meanwhile (its client gone)
    // does not free the place while the hash still runs.
    let result = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await;
    Ok(result.expect("password hashing does not panic"))
}

/// `len` random letters and digits from the operating system's generator.
pub fn random_string(len: usize) -> String {
    rand::rngs::OsRng.sample_iter(&Alphanumeric).take(len).map(char::from).collect()
}

/// A new API key and its prefix: `crl_<8 id chars>_<32 secret chars>`.
pub fn new_api_key() -> (String, String) {
    let prefix = format!("{API_KEY_PREFIX}{}", random_string(KEY_ID_LEN));
    let key = format!("{prefix}_{}", random_string(KEY_SECRET_LEN));
    (key, prefix)
}

/// The prefix of something shaped like an API key, to look it up by.
pub fn api_key_prefix(key: &str) -> Option<&str> {
    let prefix_len = API_KEY_PREFIX.len() + KEY_ID_LEN;
    let well_formed = key.starts_with(API_KEY_PREFIX)
        && key.len() == prefix_len + 1 + KEY_SECRET_LEN
        && key.as_bytes()[prefix_len] == b'_'
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    well_formed.then(|| &key[..prefix_len])
}

/// The digest under which a key is stored. Keys are long random strings, so a fast hash is
/// enough: there is nothing to guess from a leaked digest.
pub fn digest(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two secrets (or their digests) in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_password_verifies_against_its_hash_only() {
        let hash = hash_password("correct horse battery".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(!hash.contains("correct horse"));
        assert!(verify_password(hash.clone(), "correct horse battery".into()).await.unwrap());
        assert!(!verify_password(hash, "correct horse battery!".into()).await.unwrap());
        assert!(!verify_password("not a hash".into(), "x".into()).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_hashes_is_refused_beyond_a_short_queue() {
        let hash = hash_password("correct horse battery".into()).await.unwrap();
        let checks = (0..64).map(|_| {
            let hash = hash.clone();
            tokio::spawn(async move { verify_password(hash, "a guess".into()).await })
        });
        let outcomes = futures_util::future::join_all(checks).await;
        let busy = outcomes.iter().filter(|o| matches!(o, Ok(Err(Busy)))).count();
        let checked = outcomes.iter().filter(|o| matches!(o, Ok(Ok(false)))).count();
        assert!(busy > 0, "64 hashes at once were all queued");
        assert!(checked > 0 && busy + checked == 64, "{checked} checked, {busy} busy");
    }

    #[test]
    fn api_keys_carry_a_prefix_that_finds_them() {
        let (key, prefix) = new_api_key();
        assert_eq!(api_key_prefix(&key), Some(prefix.as_str()));
        assert_eq!(prefix.len(), 12);
        assert_ne!(new_api_key().0, key);
        assert_eq!(api_key_prefix("crl_short"), None);
        assert_eq!(api_key_prefix(&key.replace("crl_", "xyz_")), None);
        assert_eq!(api_key_prefix(&format!("{key}x")), None);
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(&digest("a"), &digest("a")));
        assert!(!same_secret(&digest("a"), &digest("b")));
        assert!(!same_secret("abc", "abcd"));
    }
}
