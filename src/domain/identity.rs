//! Who is asking: the principal behind a request, its roles per namespace, and the rules that
//! decide what it may see and do.
//!
//! An admin may do everything in every namespace. Other users hold a role per namespace:
//! `operator` creates and changes instances there, `viewer` reads. A namespace a principal holds
//! no role in is invisible to it: its instances answer 404, never a 403 that would confirm they
//! exist.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A role in one namespace; `Operator` includes everything `Viewer` may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::Operator, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(value: &str) -> Result<Role, String> {
        match value {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            other => Err(format!("unknown role '{other}'; allowed: operator, viewer")),
        }
    }
}

/// How a principal proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A password, or a token issued for one.
    Password,
    /// An API key, named by its prefix.
    ApiKey { id: String, prefix: String },
    /// A token corral gave the Terraform run of one job: it reaches that job's workspace of
    /// Terraform state and nothing else.
    Workspace { workspace: String, job_id: String },
}

/// An authenticated user, as one request acts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub username: String,
    pub admin: bool,
    pub roles: BTreeMap<String, Role>,
    pub credential: Credential,
    /// When the credential stops working (Unix milliseconds); `None`: until revoked. What it
    /// makes (an API key) expires no later.
    pub expires_at: Option<i64>,
    /// The user's password was generated: nothing but choosing one is allowed.
    pub must_change_password: bool,
}

/// What a principal may do in one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The namespace is invisible: answer as if what was asked for did not exist.
    Hidden,
    /// Visible, but the role does not allow the operation.
    Denied,
    Allowed,
}

impl Principal {
    /// The name the audit log, jobs and notifications record: the user's name (a Terraform
    /// run's token: `job:<id>`).
    pub fn actor(&self) -> String {
        match &self.credential {
            Credential::Password | Credential::ApiKey { .. } => self.username.clone(),
            Credential::Workspace { job_id, .. } => format!("job:{job_id}"),
        }
    }

    /// Which of the user's credentials acted, recorded beside the actor: an API key's prefix
    /// (`crl_…`), `token` (from `/v1/token`), or `workspace token`.
    pub fn credential_name(&self) -> String {
        match &self.credential {
            Credential::Password => "token".to_string(),
            Credential::ApiKey { prefix, .. } => prefix.clone(),
            Credential::Workspace { .. } => "workspace token".to_string(),
        }
    }

    /// Whether the principal may do what `needed` allows in `namespace`.
    pub fn access(&self, namespace: &str, needed: Role) -> Access {
        if self.admin {
            return Access::Allowed;
        }
        match self.roles.get(namespace) {
            None => Access::Hidden,
            Some(role) if *role >= needed => Access::Allowed,
            Some(_) => Access::Denied,
        }
    }

    /// The namespaces the principal may read; `None` means all of them (an admin).
    pub fn visible_namespaces(&self) -> Option<Vec<String>> {
        (!self.admin).then(|| self.roles.keys().cloned().collect())
    }
}

/// Usernames: 1-63 characters of lowercase letters, digits, '.', '_' and '-'.
pub fn is_valid_username(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
}

/// Usernames no one may take, because the audit log and jobs name corral itself or a
/// credential with them: `system`, `corral`, `root`, `anonymous`, and the `crl_` prefix of
/// API keys.
pub fn is_reserved_username(name: &str) -> bool {
    ["system", "corral", "root", "anonymous"].contains(&name) || name.starts_with("crl_")
}

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 12;

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(admin: bool, roles: &[(&str, Role)]) -> Principal {
        Principal {
            user_id: "u1".into(),
            username: "alice".into(),
            admin,
            roles: roles.iter().map(|(ns, role)| (ns.to_string(), *role)).collect(),
            credential: Credential::Password,
            expires_at: None,
            must_change_password: false,
        }
    }

    #[test]
    fn roles_grant_their_namespace_only_and_hide_the_others() {
        let viewer = principal(false, &[("alpha", Role::Viewer)]);
        assert_eq!(viewer.access("alpha", Role::Viewer), Access::Allowed);
        assert_eq!(viewer.access("alpha", Role::Operator), Access::Denied);
        assert_eq!(viewer.access("beta", Role::Viewer), Access::Hidden);

        let operator = principal(false, &[("alpha", Role::Operator)]);
        assert_eq!(operator.access("alpha", Role::Operator), Access::Allowed);
        assert_eq!(operator.access("alpha", Role::Viewer), Access::Allowed);
        assert_eq!(operator.access("beta", Role::Operator), Access::Hidden);
        assert_eq!(operator.visible_namespaces(), Some(vec!["alpha".to_string()]));

        let admin = principal(true, &[]);
        assert_eq!(admin.access("anything", Role::Operator), Access::Allowed);
        assert_eq!(admin.visible_namespaces(), None);
    }

    #[test]
    fn an_api_key_acts_as_its_user_and_is_named_as_the_credential() {
        let mut key = principal(false, &[]);
        key.credential = Credential::ApiKey { id: "k1".into(), prefix: "crl_ab12cd34".into() };
        assert_eq!((key.actor(), key.credential_name()), ("alice".into(), "crl_ab12cd34".into()));
        let token = principal(false, &[]);
        assert_eq!((token.actor(), token.credential_name()), ("alice".into(), "token".into()));
    }

    #[test]
    fn usernames_are_checked() {
        assert!(is_valid_username("alice.smith-2"));
        assert!(is_reserved_username("system") && is_reserved_username("crl_ab12cd34"));
        assert!(!is_reserved_username("systems"));
        assert!(!is_valid_username("Alice"));
        assert!(!is_valid_username(""));
        assert!(!is_valid_username(&"a".repeat(64)));
    }
}
