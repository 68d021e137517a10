//! Authentication: who a request comes from.
//!
//! - `secrets`: Argon2id password hashes, API keys (stored as digests, named by a prefix),
//!   constant-time comparison.
//! - `token`: the JWTs `/v1/token` issues (HS256).
//! - `throttle`: refuses logins for a while after repeated failures.
//!
//! `Authenticator` turns the credentials of a request (`X-API-KEY`, or `Authorization: Bearer`)
//! into a `Principal` read fresh from the database, so that a revoked key, a deleted user or a
//! changed role takes effect at the next request. What a principal may do is decided by
//! `domain::identity`, and by the handlers that apply it.

mod secrets;
mod throttle;
mod token;

use std::time::Duration;

use axum::http::HeaderMap;
use base64::Engine;

use crate::config::AuthSettings;
use crate::domain::{Credential, Principal};
use crate::storage::{Actor, StorageError, Store, UserRecord, now_millis};

pub use secrets::{hash_password, new_api_key, random_string, verify_password};

/// Header that carries an API key.
pub const API_KEY_HEADER: &str = "x-api-key";
/// Username of the admin created on first start.
pub const BOOTSTRAP_ADMIN: &str = "admin";
/// Subject prefix of the tokens given to Terraform runs; user ids never start with it.
const WORKSPACE_SUBJECT: &str = "workspace:";
const WRONG_SCHEME: &str = "the Authorization header must be 'Bearer <token>', or 'Basic' with an \
     API key or token as the password";
/// The `settings` row that keeps a generated token signing key.
const JWT_SECRET_SETTING: &str = "jwt_secret";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// Too many failed logins lately; retry after the given time.
    #[error("too many failed logins; retry in {} seconds", .0.as_secs())]
    Throttled(Duration),
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
            Some(secret) => secret.clone(),
            None => store.setting_or_insert(JWT_SECRET_SETTING, &random_string(64)).await?,
        };
        Ok(Authenticator {
            store,
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
    /// or a generated password that is logged this once.
    pub async fn bootstrap(&self, settings: &AuthSettings) -> anyhow::Result<()> {
        let (password, generated) = match &settings.admin_password {
            Some(password) => (password.clone(), false),
            None => (random_string(24), true),
        };
        let now = now_millis();
        let admin = UserRecord {
            id: uuid::Uuid::now_v7().to_string(),
            username: BOOTSTRAP_ADMIN.to_string(),
            password_hash: hash_password(password.clone()).await?,
            admin: true,
            roles: Default::default(),
            created_at: now,
            updated_at: now,
        };
        if !self.store.bootstrap_admin(&admin).await? {
            return Ok(());
        }
        if generated {
            tracing::warn!(
                "created the first admin: username '{BOOTSTRAP_ADMIN}', password '{password}'. \
                 It is shown this once; log in with POST /v1/token and create API keys and users. \
                 Set CORRAL_ADMIN_PASSWORD before the first start to choose it instead."
            );
        } else {
            tracing::info!(
                "created the first admin: username '{BOOTSTRAP_ADMIN}', with the password from \
                 CORRAL_ADMIN_PASSWORD"
            );
        }
        Ok(())
    }

    /// The principal behind a request's credentials: an API key, else a bearer token.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        if let Some(key) = headers.get(API_KEY_HEADER) {
            let key = key.to_str().map_err(|_| AuthError::Unauthenticated("invalid API key"))?;
            return self.authenticate_key(key.trim()).await;
        }
        let Some(authorization) = headers.get(axum::http::header::AUTHORIZATION) else {
            return Err(AuthError::Unauthenticated(
                "credentials required: send an X-API-KEY header, or Authorization: Bearer <token> \
                 from POST /v1/token",
            ));
        };
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
        if let Some(workspace) = claims.sub.strip_prefix(WORKSPACE_SUBJECT) {
            let job_id = claims.name.strip_prefix("job:").unwrap_or(&claims.name).to_string();
            return Ok(Principal {
                user_id: claims.sub.clone(),
                username: claims.name.clone(),
                admin: false,
                roles: Default::default(),
                credential: Credential::Workspace { workspace: workspace.to_string(), job_id },
            });
        }
        let user = self
            .store
            .user_by_id(&claims.sub)
            .await?
            .ok_or(AuthError::Unauthenticated("the token's user no longer exists"))?;
        Ok(principal(user, Credential::Password))
    }

    async fn authenticate_key(&self, key: &str) -> Result<Principal, AuthError> {
        const INVALID: AuthError = AuthError::Unauthenticated("invalid API key");
        let prefix = secrets::api_key_prefix(key).ok_or(INVALID)?;
        let record = self.store.api_key_by_prefix(prefix).await?.ok_or(INVALID)?;
        if !secrets::same_secret(&secrets::digest(key), &record.key_hash) {
            return Err(INVALID);
        }
        if record.revoked_at.is_some() {
            return Err(AuthError::Unauthenticated("the API key has been revoked"));
        }
        if record.expires_at.is_some_and(|at| at <= now_millis()) {
            return Err(AuthError::Unauthenticated("the API key has expired"));
        }
        let user = self.store.user_by_id(&record.user_id).await?.ok_or(INVALID)?;
        Ok(principal(user, Credential::ApiKey { id: record.id, prefix: record.prefix }))
    }

    /// A token for the Terraform run of job `job_id`, valid for `ttl_secs`, that reaches
    /// workspace `workspace` of the state API only.
    pub fn workspace_token(&self, workspace: &str, job_id: &str, ttl_secs: u64) -> String {
        self.keys.issue(
            &format!("{WORKSPACE_SUBJECT}{workspace}"),
            &format!("job:{job_id}"),
            ttl_secs,
        )
    }

    /// Checks a username and password from `address` and issues a token; failures are
    /// counted, and refused with `Throttled` past the limit.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        address: &str,
    ) -> Result<IssuedToken, AuthError> {
        self.throttle.check(username, address).map_err(AuthError::Throttled)?;
        let user = self.store.user_by_name(username).await?;
        let hash = user.as_ref().map_or(&self.decoy_hash, |user| &user.password_hash);
        let matches = verify_password(hash.clone(), password.to_string()).await;
        let Some(user) = user.filter(|_| matches) else {
            self.throttle.record_failure(username, address);
            tracing::info!(username, address, "failed login");
            return Err(AuthError::Unauthenticated("wrong username or password"));
        };
        self.throttle.record_success(username);
        Ok(IssuedToken {
            access_token: self.keys.issue(&user.id, &user.username, self.token_ttl_secs),
            expires_in: self.token_ttl_secs,
        })
    }
}

fn principal(user: UserRecord, credential: Credential) -> Principal {
    Principal {
        user_id: user.id,
        username: user.username,
        admin: user.admin,
        roles: user.roles,
        credential,
    }
}

/// The audit actor of a principal's request.
pub fn actor(principal: &Principal, request_id: Option<String>) -> Actor {
    Actor { name: principal.actor(), request_id }
}

/// The digest an API key is stored under.
pub fn api_key_digest(key: &str) -> String {
    secrets::digest(key)
}
