//! Authentication: who a request comes from.
//!
//! - `secrets`: Argon2id password hashes, API keys (stored as digests, named by a prefix),
//!   constant-time comparison.
//! - `token`: the JWTs `/v1/token` issues (HS256).
//! - `throttle`: refuses logins for a while after repeated failures.
//!
//! `Authenticator` turns the credentials of a request (`X-API-KEY`, or `Authorization: Bearer`)
//! into a `Principal`, from the records `cache` keeps while the identity version they were
//! read under is current, so that a revoked key, a deleted user or a changed role takes effect
//! at the next request. What a principal may do is decided by `domain::identity`, and by the
//! handlers that apply it.

mod cache;
mod secrets;
mod throttle;
mod token;

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use axum::http::HeaderMap;
use base64::Engine;

use crate::config::AuthSettings;
use crate::domain::{Credential, Principal, is_valid_username};
use crate::storage::{Actor, StorageError, Store, UserRecord, now_millis};

pub use secrets::{Busy, hash_password, new_api_key, random_string, verify_password};
pub use throttle::client_key;

/// Header that carries an API key.
pub const API_KEY_HEADER: &str = "x-api-key";
/// Username of the admin created on first start.
pub const BOOTSTRAP_ADMIN: &str = "admin";
/// Subject prefix of the tokens given to Terraform runs; user ids never start with it.
const WORKSPACE_SUBJECT: &str = "workspace:";
const WRONG_SCHEME: &str = "the Authorization header must be 'Bearer <token>', or 'Basic' with an \
     API key or token as the password";
/// The file in the data directory that holds a generated first admin password.
pub const ADMIN_PASSWORD_FILE: &str = "initial-admin-password";
/// The `settings` row that keeps a generated token signing key.
const JWT_SECRET_SETTING: &str = "jwt_secret";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// Too many failed logins lately; retry after the given time.
    #[error("too many failed logins; retry in {} seconds", .0.as_secs().max(1))]
    Throttled(Duration),
    #[error(transparent)]
    Busy(#[from] Busy),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A token issued for a login.
pub struct IssuedToken {
    pub access_token: String,
    pub expires_in: u64,
}

pub struct Authenticator {
    store: Store,
    cache: cache::PrincipalCache,
    keys: token::TokenKeys,
    token_ttl_secs: u64,
    throttle: throttle::LoginThrottle,
    /// Verified against when a username is unknown, so that timing does not tell which
    /// usernames exist.
    decoy_hash: String,
}

impl Authenticator {
    /// Loads the token signing key (from settings, or the one kept in the database, generated
    /// on first start).
    pub async fn new(store: Store, settings: &AuthSettings) -> anyhow::Result<Authenticator> {
        let secret = match &settings.jwt_secret {
            Some(secret) => secrecy::ExposeSecret::expose_secret(secret).to_string(),
            None => store.setting_or_insert(JWT_SECRET_SETTING, &random_string(64)).await?,
        };
        Ok(Authenticator {
            store,
            cache: Default::default(),
            keys: token::TokenKeys::new(secret.as_bytes()),
            token_ttl_secs: settings.token_ttl_secs,
            throttle: throttle::LoginThrottle::new(
                settings.login_failures_per_user,
                settings.login_failures_per_address,
                Duration::from_secs(settings.login_window_secs),
            ),
            decoy_hash: hash_password(random_string(24)).await?,
        })
    }

    /// On first start with no users, creates the `admin` user, with `CORRAL_ADMIN_PASSWORD`
    /// or a generated password that must be changed at first login. A generated password is
    /// written once to `initial-admin-password` in `data_dir`, readable by corral's user only,
    /// never to the log.
    pub async fn bootstrap(&self, settings: &AuthSettings, data_dir: &Path) -> anyhow::Result<()> {
        let (password, generated) = match &settings.admin_password {
            Some(password) => (secrecy::ExposeSecret::expose_secret(password).to_string(), false),
            None => (random_string(24), true),
        };
        let now = now_millis();
        let admin = UserRecord {
            id: crate::storage::new_id(),
            username: BOOTSTRAP_ADMIN.to_string(),
            password_hash: hash_password(password.clone()).await?,
            admin: true,
            roles: Default::default(),
            credentials_version: 0,
            must_change_password: generated,
            created_at: now,
            updated_at: now,
        };
        if !generated {
            if self.store.bootstrap_admin(&admin).await? {
                tracing::info!(
                    "created the first admin: username '{BOOTSTRAP_ADMIN}', with the password \
                     from CORRAL_ADMIN_PASSWORD"
                );
            }
            return Ok(());
        }
        // Written before the user exists, so that a password is never lost; kept only if the
        // user was made.
        let path = data_dir.join(ADMIN_PASSWORD_FILE);
        let draft = data_dir.join(format!("{ADMIN_PASSWORD_FILE}.new"));
        write_private(&draft, &format!("{password}\n")).with_context(|| {
            format!("writing the first admin's password to {}", draft.display())
        })?;
        if !self.store.bootstrap_admin(&admin).await? {
            std::fs::remove_file(&draft)?;
            return Ok(());
        }
        std::fs::rename(&draft, &path)?;
        tracing::warn!(
            "created the first admin: username '{BOOTSTRAP_ADMIN}'; its generated password is in \
             {} (readable by corral's user only). It must be changed at the first login \
             (`corral login`, then `corral users passwd`, or PATCH /v1/users/{BOOTSTRAP_ADMIN}); \
             delete the file afterwards. Set CORRAL_ADMIN_PASSWORD before the first start to \
             choose the password instead.",
            path.display()
        );
        Ok(())
    }

    /// The principal behind a request's credentials: an API key (`X-API-KEY`) or a token
    /// (`Authorization`). A request with both is let through only when both are valid and
    /// name the same user; it then acts with whichever expires first.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let key = headers.get(API_KEY_HEADER);
        let authorization = headers.get(axum::http::header::AUTHORIZATION);
        match (key, authorization) {
            (None, None) => Err(AuthError::Unauthenticated(
                "credentials required: send an X-API-KEY header, or Authorization: Bearer <token> \
                 from POST /v1/token",
            )),
            (Some(key), None) => self.authenticate_key_header(key).await,
            (None, Some(authorization)) => self.authenticate_authorization(authorization).await,
            (Some(key), Some(authorization)) => {
                let by_key = self.authenticate_key_header(key).await?;
                let by_header = self.authenticate_authorization(authorization).await?;
                if by_key.user_id != by_header.user_id {
                    return Err(AuthError::Unauthenticated(
                        "the X-API-KEY and Authorization headers name different users; send one \
                         credential",
                    ));
                }
                let key_first = match (by_key.expires_at, by_header.expires_at) {
                    (Some(key), Some(header)) => key <= header,
                    (key, header) => key.is_some() || header.is_none(),
                };
                Ok(if key_first { by_key } else { by_header })
            }
        }
    }

    async fn authenticate_key_header(
        &self,
        key: &axum::http::HeaderValue,
    ) -> Result<Principal, AuthError> {
        let key = key.to_str().map_err(|_| AuthError::Unauthenticated("invalid API key"))?;
        self.authenticate_key(key.trim()).await
    }

    async fn authenticate_authorization(
        &self,
        authorization: &axum::http::HeaderValue,
    ) -> Result<Principal, AuthError> {
        let (scheme, value) = authorization
            .to_str()
            .ok()
            .and_then(|value| value.split_once(' '))
            .ok_or(AuthError::Unauthenticated(WRONG_SCHEME))?;
        let token = if scheme.eq_ignore_ascii_case("bearer") {
            value.trim().to_string()
        } else if scheme.eq_ignore_ascii_case("basic") {
            // Terraform's HTTP backend sends username and password: the password is an API key
            // or a token; the username is not used.
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or(AuthError::Unauthenticated(WRONG_SCHEME))?;
            let (_, secret) =
                decoded.split_once(':').ok_or(AuthError::Unauthenticated(WRONG_SCHEME))?;
            if secret.starts_with(secrets::API_KEY_PREFIX) {
                return self.authenticate_key(secret).await;
            }
            secret.to_string()
        } else {
            return Err(AuthError::Unauthenticated(WRONG_SCHEME));
        };
        let claims = self.keys.verify(&token).map_err(AuthError::Unauthenticated)?;
        let expires_at = Some(claims.exp.saturating_mul(1000));
        if let Some(workspace) = claims.sub.strip_prefix(WORKSPACE_SUBJECT) {
            let job_id = claims.name.strip_prefix("job:").unwrap_or(&claims.name).to_string();
            return Ok(Principal {
                user_id: claims.sub.clone(),
                username: claims.name.clone(),
                admin: false,
                roles: Default::default(),
                credential: Credential::Workspace { workspace: workspace.to_string(), job_id },
                expires_at,
                must_change_password: false,
            });
        }
        let version = self.store.identity_version().await?;
        let user = self
            .cache
            .user(&self.store, version, &claims.sub)
            .await?
            .ok_or(AuthError::Unauthenticated("the token's user no longer exists"))?;
        if user.credentials_version != claims.ver {
            return Err(AuthError::Unauthenticated(
                "the token was issued before its user's password changed; log in again",
            ));
        }
        Ok(principal(&user, Credential::Password, expires_at))
    }

    async fn authenticate_key(&self, key: &str) -> Result<Principal, AuthError> {
        const INVALID: AuthError = AuthError::Unauthenticated("invalid API key");
        let prefix = secrets::api_key_prefix(key).ok_or(INVALID)?;
        let version = self.store.identity_version().await?;
        let record = self.cache.api_key(&self.store, version, prefix).await?.ok_or(INVALID)?;
        if !secrets::same_secret(&secrets::digest(key), &record.key_hash) {
            return Err(INVALID);
        }
        if record.revoked_at.is_some() {
            return Err(AuthError::Unauthenticated("the API key has been revoked"));
        }
        if record.expires_at.is_some_and(|at| at <= now_millis()) {
            return Err(AuthError::Unauthenticated("the API key has expired"));
        }
        let user = self.cache.user(&self.store, version, &record.user_id).await?.ok_or(INVALID)?;
        let credential =
            Credential::ApiKey { id: record.id.clone(), prefix: record.prefix.clone() };
        Ok(principal(&user, credential, record.expires_at))
    }

    /// A token for the Terraform run of job `job_id`, valid for `ttl_secs`, that reaches
    /// workspace `workspace` of the state API only.
    pub fn workspace_token(&self, workspace: &str, job_id: &str, ttl_secs: u64) -> String {
        self.keys.issue(
            &format!("{WORKSPACE_SUBJECT}{workspace}"),
            &format!("job:{job_id}"),
            ttl_secs,
            0,
        )
    }

    /// Checks a username and password from `client` and issues a token. The attempt is
    /// counted before the password is hashed; too many failures lately answer `Throttled`.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        client: IpAddr,
    ) -> Result<IssuedToken, AuthError> {
        const WRONG: AuthError = AuthError::Unauthenticated("wrong username or password");
        if !is_valid_username(username) {
            // No such user can exist; nothing is counted or hashed for it.
            return Err(WRONG);
        }
        let attempt = self.throttle.begin(username, client).map_err(AuthError::Throttled)?;
        let user = self.store.user_by_name(username).await?;
        let hash = user.as_ref().map_or(&self.decoy_hash, |user| &user.password_hash);
        let matches = verify_password(hash.clone(), password.to_string()).await?;
        let Some(user) = user.filter(|_| matches) else {
            tracing::info!(username, client = %client, "failed login");
            return Err(WRONG);
        };
        attempt.succeeded();
        Ok(IssuedToken {
            access_token: self.keys.issue(
                &user.id,
                &user.username,
                self.token_ttl_secs,
                user.credentials_version,
            ),
            expires_in: self.token_ttl_secs,
        })
    }

    /// Whether `password` is the password of `username`, for what must prove it again (a
    /// change of one's own password, an API key that outlives the request's credential).
    /// Counted by the login throttle like a login from `client`.
    pub async fn confirm_password(
        &self,
        username: &str,
        password: &str,
        client: IpAddr,
    ) -> Result<bool, AuthError> {
        let attempt = self.throttle.begin(username, client).map_err(AuthError::Throttled)?;
        let Some(user) = self.store.user_by_name(username).await? else { return Ok(false) };
        let matches = verify_password(user.password_hash, password.to_string()).await?;
        if matches {
            attempt.succeeded();
        }
        Ok(matches)
    }
}

/// Writes `text` to a new file at `path` that only this process's user can read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A new file, never one that is there (nor what a link there points to).
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

fn principal(user: &UserRecord, credential: Credential, expires_at: Option<i64>) -> Principal {
    Principal {
        user_id: user.id.clone(),
        username: user.username.clone(),
        admin: user.admin,
        roles: user.roles.clone(),
        credential,
        expires_at,
        must_change_password: user.must_change_password,
    }
}

/// The audit actor of a principal's request.
pub fn actor(principal: &Principal, request_id: Option<String>) -> Actor {
    Actor {
        name: principal.actor(),
        user_id: Some(principal.user_id.clone()),
        credential: Some(principal.credential_name()),
        request_id,
    }
}

/// The digest an API key is stored under.
pub fn api_key_digest(key: &str) -> String {
    secrets::digest(key)
}
