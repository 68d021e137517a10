//! `[auth]`: the first admin's password, the token signing key and lifetime, and the
//! failed-login throttle.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Password of the `admin` user created on first start with an empty database
    /// (`CORRAL_ADMIN_PASSWORD`); when unset, one is generated and written once to a file only
    /// corral's user can read, in the data directory, and must be changed at first sign-in.
    #[serde(skip_serializing)]
    pub admin_password: Option<SecretString>,
    /// Key that signs access tokens (HS256), at least 32 bytes; when unset, one is generated
    /// and kept in the database, so every process sharing it accepts the same tokens.
    #[serde(skip_serializing)]
    pub jwt_secret: Option<SecretString>,
    /// How long an access token from `/v1/token` is valid.
    pub token_ttl_secs: u64,
    /// Failed logins for one username, then one address, within `login_window_secs` before
    /// further attempts are refused with 429 until the window has passed.
    pub login_failures_per_user: u32,
    pub login_failures_per_address: u32,
    pub login_window_secs: u64,
}

impl Default for AuthSettings {
    fn default() -> AuthSettings {
        AuthSettings {
            admin_password: None,
            jwt_secret: None,
            token_ttl_secs: 1800,
            login_failures_per_user: 5,
            login_failures_per_address: 20,
            login_window_secs: 300,
        }
    }
}

impl AuthSettings {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(secret) = &self.jwt_secret
            && secret.expose_secret().len() < 32
        {
            return Err("auth.jwt_secret must be at least 32 bytes".to_string());
        }
        if let Some(password) = &self.admin_password
            && password.expose_secret().chars().count() < crate::domain::MIN_PASSWORD_LEN
        {
            return Err(format!(
                "CORRAL_ADMIN_PASSWORD (auth.admin_password) must have at least {} characters",
                crate::domain::MIN_PASSWORD_LEN
            ));
        }
        if self.token_ttl_secs == 0 {
            return Err("auth.token_ttl_secs must be positive".to_string());
        }
        Ok(())
    }
}
