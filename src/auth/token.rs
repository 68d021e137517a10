//! Access tokens: JWTs signed with HS256, naming the user by id, valid for a configured time.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id.
    pub sub: String,
    /// The username, for people reading the token.
    pub name: String,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    /// The user's credentials version when the token was issued: a password change since
    /// then ends the token.
    #[serde(default)]
    pub ver: i64,
}

const ISSUER: &str = "corral";

pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl TokenKeys {
    pub fn new(secret: &[u8]) -> TokenKeys {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        validation.leeway = 5;
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// A token for user `id` named `name` at credentials version `ver`, valid for
    /// `ttl_secs` from now.
    pub fn issue(&self, id: &str, name: &str, ttl_secs: u64, ver: i64) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: id.to_string(),
            name: name.to_string(),
            iat: now,
            exp: now + ttl_secs as i64,
            iss: ISSUER.to_string(),
            ver,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    /// The claims of a token this server signed and that has not expired.
    pub fn verify(&self, token: &str) -> Result<Claims, &'static str> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|err| match err.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => "the token has expired",
                _ => "the token is invalid",
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_until_they_expire_and_only_with_their_key() {
        let keys = TokenKeys::new(b"0123456789abcdef0123456789abcdef");
        let token = keys.issue("u1", "alice", 60, 0);
        let claims = keys.verify(&token).unwrap();
        assert_eq!((claims.sub.as_str(), claims.name.as_str()), ("u1", "alice"));

        let other = TokenKeys::new(b"another key, also 32 bytes long!");
        assert_eq!(other.verify(&token).unwrap_err(), "the token is invalid");

        let mut tampered = token.clone();
        let flip = tampered.len() - 3;
        let replacement = if &tampered[flip..flip + 1] == "A" { "B" } else { "A" };
        tampered.replace_range(flip..flip + 1, replacement);
        assert!(keys.verify(&tampered).is_err());

        let expired = {
            let now = chrono::Utc::now().timestamp();
            let claims = Claims {
                sub: "u1".into(),
                name: "alice".into(),
                iat: now - 3600,
                exp: now - 1800,
                iss: ISSUER.into(),
                ver: 0,
            };
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding).unwrap()
        };
        assert_eq!(keys.verify(&expired).unwrap_err(), "the token has expired");
    }
}
