//! Typed settings for `corral serve`, one struct per section.
//!
//! Sources, lowest precedence first: built-in defaults, the optional TOML file given by
//! `--config` / `CORRAL_CONFIG`, then environment variables `CORRAL_<KEY>` with `__` between
//! nested keys (`CORRAL_JOBS__CONCURRENCY=8`, `CORRAL_POLICY__MAX_COUNT=3`), then command-line
//! flags. Unknown keys in the file are errors, so a typo never silently keeps a default.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::domain::Policy;

/// Top-level keys that environment variables may set; other `CORRAL_*` variables (client
/// settings, test harness settings) are not part of the server's configuration.
const ENV_KEYS: [&str; 5] = ["listen", "database_url", "aws", "jobs", "policy"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Address the HTTP API listens on (`CORRAL_LISTEN`).
    pub listen: SocketAddr,
    /// `sqlite://path` (`CORRAL_DATABASE_URL`); the file and its folder are created if missing.
    pub database_url: String,
    pub aws: AwsSettings,
    pub jobs: JobSettings,
    pub policy: Policy,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: "sqlite://./data/corral.db".to_string(),
            aws: AwsSettings::default(),
            jobs: JobSettings::default(),
            policy: Policy::free_tier(),
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsSettings {
    /// Send every EC2 call here instead of AWS, e.g. a local emulator. The standard
    /// `AWS_ENDPOINT_URL` variable does the same.
    pub endpoint_url: Option<String>,
    /// Static credentials; when absent, the standard AWS credential chain is used.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Time limit for one attempt of one cloud call.
    pub call_timeout_secs: u64,
    /// How long AMI and instance-type facts are cached.
    pub catalog_ttl_secs: u64,
}

impl Default for AwsSettings {
    fn default() -> AwsSettings {
        AwsSettings {
            endpoint_url: None,
            access_key_id: None,
            secret_access_key: None,
            call_timeout_secs: 30,
            catalog_ttl_secs: 3600,
        }
    }
}

impl std::fmt::Debug for AwsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsSettings")
            .field("endpoint_url", &self.endpoint_url)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "[redacted]"))
            .field("call_timeout_secs", &self.call_timeout_secs)
            .field("catalog_ttl_secs", &self.catalog_ttl_secs)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobSettings {
    /// Jobs run at the same time by this process.
    pub concurrency: usize,
    /// Attempts before a job that keeps failing transiently is parked as `failed`.
    pub max_attempts: i64,
    /// First retry delay; doubles with every attempt up to `retry_max_delay_ms`.
    pub retry_base_delay_ms: u64,
    pub retry_max_delay_ms: u64,
    /// How often idle workers look for due jobs when nothing wakes them.
    pub poll_interval_ms: u64,
    /// Lease on a claimed job; renewed while the job runs, so a dead worker's job is re-claimed.
    pub lease_secs: u64,
    /// First pause between state polls of a waiting job; doubles up to `state_poll_max_ms`.
    pub state_poll_initial_ms: u64,
    pub state_poll_max_ms: u64,
    /// How long one attempt waits for instances to reach their target state.
    pub state_wait_timeout_secs: u64,
}

impl Default for JobSettings {
    fn default() -> JobSettings {
        JobSettings {
            concurrency: 4,
            max_attempts: 3,
            retry_base_delay_ms: 2_000,
            retry_max_delay_ms: 300_000,
            poll_interval_ms: 1_000,
            lease_secs: 60,
            state_poll_initial_ms: 1_000,
            state_poll_max_ms: 10_000,
            state_wait_timeout_secs: 600,
        }
    }
}

impl JobSettings {
    /// Delay before the attempt after `attempts` failed ones: base × 2^(attempts-1), capped.
    pub fn retry_delay(&self, attempts: i64) -> Duration {
        let exponent = attempts.clamp(1, 20) as u32 - 1;
        let delay = self.retry_base_delay_ms.saturating_mul(1u64 << exponent);
        Duration::from_millis(delay.min(self.retry_max_delay_ms))
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }
}

impl Settings {
    /// Reads defaults, then `config_file` if given, then `CORRAL_*` variables.
    pub fn load(config_file: Option<&Path>) -> anyhow::Result<Settings> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = config_file {
            anyhow::ensure!(path.exists(), "config file {} does not exist", path.display());
            figment = figment.merge(Toml::file_exact(path));
        }
        let env = Env::prefixed("CORRAL_")
            .split("__")
            .filter(|key| ENV_KEYS.iter().any(|allowed| key.as_str().starts_with(allowed)));
        let settings: Settings = figment.merge(env).extract().context("invalid configuration")?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let mut problems = self.policy.validate().err().unwrap_or_default();
        if self.jobs.concurrency == 0 {
            problems.push("jobs.concurrency: must be at least 1".to_string());
        }
        if self.jobs.max_attempts < 1 {
            problems.push("jobs.max_attempts: must be at least 1".to_string());
        }
        if self.jobs.lease_secs < 3 {
            problems.push("jobs.lease_secs: must be at least 3".to_string());
        }
        anyhow::ensure!(problems.is_empty(), "invalid configuration:\n  {}", problems.join("\n  "));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_keeps_the_rest_of_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corral.toml");
        std::fs::write(
            &path,
            "[jobs]\nconcurrency = 9\n[policy]\ninstance_types = [\"t3.micro\"]\n\
             [policy.storage_gb]\nmin = 2\nmax = 20\ndefault = 10\n",
        )
        .unwrap();
        let settings = Settings::load(Some(&path)).unwrap();
        assert_eq!(settings.jobs.concurrency, 9);
        assert_eq!(settings.policy.instance_types, ["t3.micro"]);
        assert_eq!(settings.policy.storage_gb.max, 20);
        assert_eq!(settings.policy.regions, Policy::free_tier().regions);
    }

    #[test]
    fn unknown_keys_and_broken_policies_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corral.toml");
        std::fs::write(&path, "[jobs]\nconcurency = 9\n").unwrap();
        let err = format!("{:#}", Settings::load(Some(&path)).unwrap_err());
        assert!(err.contains("concurency"), "{err}");

        std::fs::write(&path, "[policy]\ndefault_region = \"ap-south-1\"\n").unwrap();
        let err = format!("{:#}", Settings::load(Some(&path)).unwrap_err());
        assert!(err.contains("policy.default_region"), "{err}");
    }

    #[test]
    fn retry_delay_doubles_and_is_capped() {
        let jobs = JobSettings {
            retry_base_delay_ms: 100,
            retry_max_delay_ms: 350,
            ..JobSettings::default()
        };
        let delays: Vec<u128> = (1..=4).map(|n| jobs.retry_delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
    }
}
