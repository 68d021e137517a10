//! `[terraform]`: the Terraform backend's binary, provider configuration, and the URL its runs
//! reach corral's state API at.

use serde::{Deserialize, Serialize};

use crate::domain::Backend;

/// The Terraform backend: which binary runs, where it finds providers, and how it reaches
/// corral's state API.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TerraformSettings {
    /// Backend of create requests without `?backend=` (`CORRAL_DEFAULT_BACKEND`): `aws` or
    /// `terraform`.
    pub default_backend: Backend,
    /// The terraform executable: a path, or a name looked up on `PATH`.
    pub binary: String,
    /// A Terraform CLI configuration (`TF_CLI_CONFIG_FILE`), e.g. one naming a provider mirror
    /// (`CORRAL_TERRAFORM_CLI_CONFIG`).
    pub cli_config: Option<String>,
    /// Base URL at which Terraform, run by this process's workers, reaches corral's API for
    /// its state (`CORRAL_TERRAFORM_STATE_URL`); default: this process's own listener.
    /// Worker-only processes must set it. `corral serve` checks at start that it reaches
    /// corral there, and warns when it does not.
    pub state_url: Option<String>,
    /// Where each run gets its working directory (default: the system's temporary folder).
    pub work_dir: Option<String>,
    /// An HTTP(S) proxy through which runs reach the cloud and the provider registry
    /// (`HTTPS_PROXY` and `HTTP_PROXY` of each run). Runs never inherit corral's own
    /// environment, proxies included.
    pub proxy: Option<String>,
}

// `Debug` names every field (no `..`), so that a field added later cannot slip out of it, or
// past the redaction of the proxy's password, unnoticed.
impl std::fmt::Debug for TerraformSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let TerraformSettings { default_backend, binary, cli_config, state_url, work_dir, proxy } =
            self;
        f.debug_struct("TerraformSettings")
            .field("default_backend", default_backend)
            .field("binary", binary)
            .field("cli_config", cli_config)
            .field("state_url", state_url)
            .field("work_dir", work_dir)
            .field("proxy", &proxy.as_deref().map(crate::storage::redact_url))
            .finish()
    }
}

impl Default for TerraformSettings {
    fn default() -> TerraformSettings {
        TerraformSettings {
            default_backend: Backend::Aws,
            binary: "terraform".to_string(),
            cli_config: None,
            state_url: None,
            work_dir: None,
            proxy: None,
        }
    }
}

/// Why Terraform runs may not send their state token to `url`: plain HTTP to a host other
/// than this machine would carry it, and the state, in clear over the network. `None` when
/// the URL is fine.
pub fn plain_http_to_another_host(url: &str) -> Option<String> {
    let parsed = match url::Url::parse(url) {
        Ok(parsed) => parsed,
        Err(err) => return Some(format!("'{url}' is not a URL: {err}")),
    };
    let loopback = match parsed.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    (parsed.scheme() == "http" && !loopback).then(|| {
        format!(
            "'{url}' is plain HTTP to another host: Terraform runs would send their state token \
             and the state in clear. Use https:// (serve with server.tls_cert and \
             server.tls_key, or behind a TLS proxy), or a loopback address"
        )
    })
}
