//! Typed settings for `corral serve`: `Settings`, and one module per section with its
//! defaults and its validation (`server`, `aws`, `jobs` with `reconcile`, `auth`, `notify`,
//! `terraform`; the policy is `domain::Policy`).
//!
//! Sources, lowest precedence first: built-in defaults, the optional TOML file given by
//! `--config` / `CORRAL_CONFIG`, then environment variables `CORRAL_<KEY>` with `__` between
//! nested keys (`CORRAL_JOBS__CONCURRENCY=8`, `CORRAL_POLICY__MAX_COUNT=3`), then command-line
//! flags. Unknown keys in the file are errors, so a typo never silently keeps a default.
//!
//! Durations say their unit in their name (`_secs`, `_ms`). Settings named before that
//! (`RENAMED`: `jobs.retry_delay`, …) are still read under their old names, from the file and
//! from the environment, with a warning naming what was written; a source that gives both
//! names of one setting is refused.
//!
//! A few variables have short names that scripts rely on: `CORRAL_JOB_MAX_ATTEMPTS`
//! (`jobs.max_attempts`), `CORRAL_JOB_RETRY_DELAY` (`jobs.retry_delay_secs`) and
//! `CORRAL_RECONCILE_INTERVAL` (`reconcile.interval_secs`).

mod auth;
mod aws;
mod env;
mod jobs;
mod notify;
mod server;
mod terraform;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

use crate::domain::Policy;

pub use auth::AuthSettings;
pub use aws::{AwsSettings, Bucket, RateLimits};
pub use jobs::{JobSettings, ReconcileSettings};
pub use notify::{NotifySettings, SmtpTls};
pub use server::ServerSettings;
pub use terraform::{TerraformSettings, plain_http_to_another_host};

/// Settings renamed to say their unit: section, old name, new name.
const RENAMED: [(&str, &str, &str); 6] = [
    ("jobs", "retry_delay", "retry_delay_secs"),
    ("jobs", "retry_max_delay", "retry_max_delay_secs"),
    ("jobs", "transient_budget", "transient_budget_secs"),
    ("notify", "retry_delay", "retry_delay_secs"),
    ("notify", "retry_max_delay", "retry_max_delay_secs"),
    ("reconcile", "interval", "interval_secs"),
];

/// A source of settings whose `RENAMED` keys are read as their new names, each with a warning
/// that names the key as the source spells it (`spell`, which errors use too) and the source
/// (`origin`); both names in one source is an error, as a reader could not tell which one
/// counts.
struct Renamed<P> {
    source: P,
    spell: fn(path: &[&str]) -> String,
    origin: String,
}

impl<P: Provider> Provider for Renamed<P> {
    fn metadata(&self) -> Metadata {
        let spell = self.spell;
        let mut metadata =
            self.source.metadata().interpolater(move |_: &Profile, path: &[&str]| spell(path));
        metadata.name = self.origin.clone().into();
        metadata
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut data = self.source.data()?;
        for dict in data.values_mut() {
            for (section, old, new) in RENAMED {
                let Some(Value::Dict(_, table)) = dict.get_mut(section) else { continue };
                let Some(value) = table.remove(old) else { continue };
                let (was, is) = ((self.spell)(&[section, old]), (self.spell)(&[section, new]));
                if table.contains_key(new) {
                    return Err(figment::Error::from(format!(
                        "{was} and {is} are one setting: keep {is} only"
                    )));
                }
                tracing::warn!(
                    "{was} (in {}) is an old name: it is read as {is}, its name now; rename it",
                    self.origin
                );
                table.insert(new.to_string(), value);
            }
        }
        Ok(data)
    }
}

/// Printed (`Debug`) with the password of its URLs left out; every secret setting is a
/// `SecretString`, which prints as `[REDACTED]`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Address the HTTP API listens on (`CORRAL_LISTEN`).
    pub listen: SocketAddr,
    pub server: ServerSettings,
    /// `sqlite://path` (`CORRAL_DATABASE_URL`); the file and its folder are created if missing.
    pub database_url: String,
    /// Where corral keeps files of its own, made private to its user: the Terraform plugin
    /// cache, the first admin's generated password (`CORRAL_DATA_DIR`; default: the SQLite
    /// database's folder, else `./data`).
    pub data_dir: Option<String>,
    /// What this process does (`CORRAL_ROLE`): serve the API, run jobs, or both.
    pub role: ProcessRole,
    pub aws: AwsSettings,
    pub jobs: JobSettings,
    pub reconcile: ReconcileSettings,
    pub policy: Policy,
    pub auth: AuthSettings,
    pub notify: NotifySettings,
    pub terraform: TerraformSettings,
}

// `Debug` names every field (no `..`), so that a field added later cannot slip out of it, or
// past the redaction, unnoticed (as `TerraformSettings`' does).
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Settings {
            listen,
            server,
            database_url,
            data_dir,
            role,
            aws,
            jobs,
            reconcile,
            policy,
            auth,
            notify,
            terraform,
        } = self;
        f.debug_struct("Settings")
            .field("listen", listen)
            .field("server", server)
            .field("database_url", &crate::storage::redact_url(database_url))
            .field("data_dir", data_dir)
            .field("role", role)
            .field("aws", aws)
            .field("jobs", jobs)
            .field("reconcile", reconcile)
            .field("policy", policy)
            .field("auth", auth)
            .field("notify", notify)
            .field("terraform", terraform)
            .finish()
    }
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            server: ServerSettings::default(),
            database_url: "sqlite://./data/corral.db".to_string(),
            data_dir: None,
            role: ProcessRole::All,
            aws: AwsSettings::default(),
            jobs: JobSettings::default(),
            reconcile: ReconcileSettings::default(),
            policy: Policy::free_tier(),
            auth: AuthSettings::default(),
            notify: NotifySettings::default(),
            terraform: TerraformSettings::default(),
        }
    }
}

/// Which parts of corral a process runs; API and worker processes can scale apart on a shared
/// PostgreSQL database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProcessRole {
    /// The HTTP API only; jobs are run by worker processes.
    Api,
    /// Job workers and the reconciler, with `/health` and `/ready` only.
    Worker,
    /// Both.
    All,
}

impl ProcessRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessRole::Api => "api",
            ProcessRole::Worker => "worker",
            ProcessRole::All => "all",
        }
    }

    pub fn serves_api(self) -> bool {
        matches!(self, ProcessRole::Api | ProcessRole::All)
    }

    pub fn runs_jobs(self) -> bool {
        matches!(self, ProcessRole::Worker | ProcessRole::All)
    }
}

/// `base` × 2^(attempts-1) seconds, at most `max`.
fn backoff(base: f64, max: f64, attempts: i64) -> Duration {
    let exponent = attempts.clamp(1, 30) as i32 - 1;
    Duration::from_secs_f64((base * 2f64.powi(exponent)).min(max).max(0.0))
}

/// The errors of `err`, one per line, each naming the key as its source spells it
/// (`CORRAL_JOBS__CONCURRENCY`, `jobs.concurrency`), an unknown key with the known one closest
/// to it.
fn explain(err: figment::Error) -> String {
    let mut lines = Vec::new();
    for err in err {
        let spelled = |path: &[&str]| match (&err.profile, &err.metadata) {
            (Some(profile), Some(metadata)) => metadata.interpolate(profile, path),
            _ => path.join("."),
        };
        let source = match &err.metadata {
            Some(metadata) => match &metadata.source {
                Some(source) => format!(" in {source}"),
                None => format!(" in {}", metadata.name),
            },
            None => String::new(),
        };
        let path: Vec<&str> = err.path.iter().map(String::as_str).collect();
        lines.push(match &err.kind {
            figment::error::Kind::UnknownField(field, expected) => {
                let mut line = format!("unknown setting {}{source}", spelled(&path));
                if let Some(known) = env::closest(field, expected.iter().copied()) {
                    let mut suggestion = path.clone();
                    suggestion.pop();
                    suggestion.push(known);
                    line.push_str(&format!(": did you mean {}?", spelled(&suggestion)));
                }
                line
            }
            kind if path.is_empty() => format!("{kind}{source}"),
            kind => format!("{}: {kind}{source}", spelled(&path)),
        });
    }
    lines.join("\n  ")
}

impl Settings {
    /// `data_dir`, else the folder of the SQLite database file, else `./data`.
    pub fn data_dir(&self) -> std::path::PathBuf {
        if let Some(dir) = &self.data_dir {
            return dir.into();
        }
        let sqlite_file = ["sqlite://", "sqlite:"]
            .iter()
            .find_map(|scheme| self.database_url.strip_prefix(scheme))
            .map(|rest| rest.split('?').next().unwrap_or_default())
            .filter(|file| !file.is_empty() && *file != ":memory:");
        match sqlite_file.and_then(|file| Path::new(file).parent()) {
            Some(parent) if parent.as_os_str().is_empty() => ".".into(),
            Some(parent) => parent.to_path_buf(),
            None => "./data".into(),
        }
    }

    /// Reads defaults, then `config_file` if given, then `CORRAL_*` variables.
    pub fn load(config_file: Option<&Path>) -> anyhow::Result<Settings> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = config_file {
            anyhow::ensure!(path.exists(), "config file {} does not exist", path.display());
            let file = Renamed {
                source: Toml::file_exact(path),
                spell: |path| path.join("."),
                origin: path.display().to_string(),
            };
            figment = figment.merge(file);
        }
        env::check_names(env::variables())
            .map_err(|problems| anyhow::anyhow!("invalid configuration:\n  {problems}"))?;
        let mut settings: Settings = figment
            .merge(env::provider())
            .extract()
            .map_err(|err| anyhow::anyhow!("invalid configuration:\n  {}", explain(err)))?;
        // A policy the configuration changed is no longer the free-tier profile, unless the
        // configuration names its own.
        let free_tier = Policy::free_tier();
        if settings.policy.profile == free_tier.profile && settings.policy != free_tier {
            settings.policy.profile = "custom".to_string();
        }
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let mut problems = self.policy.validate().err().unwrap_or_default();
        if let Err(problem) = self.auth.validate() {
            problems.push(problem);
        }
        problems.extend(self.notify.validate());
        problems.extend(self.server.validate());
        if let Some(url) = &self.terraform.state_url
            && let Some(problem) = plain_http_to_another_host(url)
        {
            problems.push(format!("terraform.state_url: {problem}"));
        }
        problems.extend(self.jobs.validate());
        problems.extend(self.reconcile.validate());
        problems.extend(self.aws.validate());
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

    /// The defaults are merged under what the file and the environment give, key by key: a
    /// file that sets the AMI rule of one region keeps the default rule (`*`) for the others,
    /// and a half-given table keeps the defaults of the keys it leaves out. (Loading the file
    /// straight into the structs would drop both: every other region would then take any AMI.)
    #[test]
    #[allow(clippy::result_large_err, reason = "figment's Jail fixes the closure's error type")]
    fn what_a_file_leaves_out_of_a_table_keeps_its_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "corral.toml",
                "[policy.amis.eu-west-1]\nowners = [\"123456789012\"]\n\
                 [policy.storage_gb]\nmax = 20\n\
                 [aws.rate_limits.launch]\nburst = 7\n",
            )?;
            let settings =
                Settings::load(Some(Path::new("corral.toml"))).map_err(|err| format!("{err:#}"))?;
            let free_tier = Policy::free_tier();
            assert_eq!(settings.policy.amis["eu-west-1"].owners, ["123456789012"]);
            assert_eq!(settings.policy.amis.get("*"), free_tier.amis.get("*"), "the * rule stays");
            assert_eq!(settings.policy.ami_rule("us-east-1"), free_tier.ami_rule("us-east-1"));
            assert_eq!(settings.policy.storage_gb.max, 20);
            assert_eq!(settings.policy.storage_gb.min, free_tier.storage_gb.min);
            assert_eq!(settings.aws.rate_limits.launch.burst, 7.0);
            assert_eq!(
                settings.aws.rate_limits.launch.per_second,
                RateLimits::default().launch.per_second
            );
            Ok(())
        });
    }

    /// What `f` logs at warn, and what it returns.
    fn warnings_of<T>(f: impl FnOnce() -> T) -> (T, String) {
        use std::sync::{Arc, Mutex};
        let written = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = written.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let value = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        (value, text)
    }

    /// The names settings had before they said their unit still work, from the file and from
    /// the environment, each with a warning naming it as written; the environment still wins
    /// over the file, and giving both names in one source is refused.
    #[test]
    #[allow(clippy::result_large_err, reason = "figment's Jail fixes the closure's error type")]
    fn old_names_of_settings_still_work_with_a_warning() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "corral.toml",
                "[jobs]\nretry_delay = 7\nretry_max_delay = 70\n[reconcile]\ninterval = 9\n\
                 [notify]\nretry_max_delay = 99\n",
            )?;
            jail.set_env("CORRAL_JOBS__TRANSIENT_BUDGET", "5");
            jail.set_env("CORRAL_NOTIFY__RETRY_DELAY", "3");
            jail.set_env("CORRAL_JOBS__RETRY_MAX_DELAY_SECS", "80");
            let (settings, warnings) =
                warnings_of(|| Settings::load(Some(Path::new("corral.toml"))));
            let settings = settings.map_err(|err| format!("{err:#}"))?;
            assert_eq!(settings.jobs.retry_delay_secs, 7.0);
            assert_eq!(settings.jobs.retry_max_delay_secs, 80.0, "the environment wins");
            assert_eq!(settings.jobs.transient_budget_secs, 5.0);
            assert_eq!(settings.reconcile.interval_secs, 9.0);
            assert_eq!(settings.notify.retry_delay_secs, 3.0);
            assert_eq!(settings.notify.retry_max_delay_secs, 99.0);
            for named in [
                "jobs.retry_delay (in corral.toml) is an old name: it is read as \
                 jobs.retry_delay_secs, its name now",
                "reconcile.interval (in corral.toml)",
                "CORRAL_JOBS__TRANSIENT_BUDGET (in the environment) is an old name: it is read \
                 as CORRAL_JOBS__TRANSIENT_BUDGET_SECS",
                "CORRAL_NOTIFY__RETRY_DELAY (in the environment) is an old name",
            ] {
                assert!(warnings.contains(named), "{named} in {warnings}");
            }
            assert!(!warnings.contains("RETRY_MAX_DELAY_SECS (in"), "{warnings}");

            jail.create_file("both.toml", "[jobs]\nretry_delay = 1\nretry_delay_secs = 2\n")?;
            let err = format!("{:#}", Settings::load(Some(Path::new("both.toml"))).unwrap_err());
            assert!(
                err.contains("jobs.retry_delay and jobs.retry_delay_secs are one setting"),
                "{err}"
            );
            jail.set_env("CORRAL_RECONCILE__INTERVAL", "1");
            jail.set_env("CORRAL_RECONCILE_INTERVAL", "2");
            let err = format!("{:#}", Settings::load(None).unwrap_err());
            assert!(
                err.contains("CORRAL_RECONCILE__INTERVAL and CORRAL_RECONCILE_INTERVAL are one"),
                "{err}"
            );
            Ok(())
        });
    }

    /// `/v1/policy` names the profile in force: `free-tier` only while the configuration
    /// changes nothing of it, else `custom` or the name the configuration gives.
    #[test]
    #[allow(clippy::result_large_err, reason = "figment's Jail fixes the closure's error type")]
    fn a_changed_policy_is_not_called_free_tier() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            let profile = |text: &str| -> Result<String, String> {
                std::fs::write("corral.toml", text).map_err(|err| err.to_string())?;
                let settings = Settings::load(Some(Path::new("corral.toml")))
                    .map_err(|err| format!("{err:#}"))?;
                Ok(settings.policy.profile)
            };
            assert_eq!(profile("[jobs]\nconcurrency = 2\n")?, "free-tier");
            assert_eq!(profile("[policy]\nmax_count = 3\n")?, "custom");
            assert_eq!(profile("[policy]\nprofile = \"prod\"\nmax_count = 3\n")?, "prod");
            Ok(())
        });
    }

    #[test]
    fn a_remote_state_url_over_plain_http_is_refused() {
        for url in ["http://10.0.0.5:8080", "http://corral.internal"] {
            let settings = Settings {
                terraform: TerraformSettings { state_url: Some(url.into()), ..Default::default() },
                ..Settings::default()
            };
            let err = format!("{:#}", settings.validate().unwrap_err());
            assert!(err.contains("terraform.state_url") && err.contains("plain HTTP"), "{err}");
        }
        for url in ["https://corral.internal", "http://127.0.0.1:8080", "http://localhost:1"] {
            assert_eq!(plain_http_to_another_host(url), None, "{url}");
        }
    }

    #[test]
    fn server_settings_name_what_is_wrong() {
        let settings = Settings {
            server: ServerSettings {
                trusted_proxies: vec!["10.0.0.0/8".into(), "not-a-range".into()],
                tls_cert: Some("cert.pem".into()),
                max_connections: 0,
                ..ServerSettings::default()
            },
            ..Settings::default()
        };
        let err = format!("{:#}", settings.validate().unwrap_err());
        for expected in ["'not-a-range'", "server.tls_key", "server.max_connections"] {
            assert!(err.contains(expected), "{expected} in {err}");
        }
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
    #[allow(clippy::result_large_err, reason = "figment's Jail fixes the closure's error type")]
    fn broken_notification_settings_name_the_variable() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CORRAL_NOTIFY_EMAIL", "ops@example.com,not-an-address");
            jail.set_env("CORRAL_SMTP_USER", "corral");
            let err = format!("{:#}", Settings::load(None).unwrap_err());
            assert!(err.contains("CORRAL_SMTP_HOST"), "{err}");
            assert!(err.contains("'not-an-address'"), "{err}");
            assert!(err.contains("CORRAL_SMTP_PASSWORD"), "{err}");
            Ok(())
        });
    }

    /// A typo in an environment variable is refused with the name it was likely meant as, and
    /// every error names the key as its source spells it; the CLI's and the test harness's
    /// variables are not settings and pass.
    #[test]
    #[allow(clippy::result_large_err, reason = "figment's Jail fixes the closure's error type")]
    fn unknown_variables_are_refused_and_errors_name_keys_as_written() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            let load_err = || format!("{:#}", Settings::load(None).unwrap_err());
            for name in ["CORRAL_SERVER", "CORRAL_API_KEY", "CORRAL_PROFILE", "CORRAL_TEST_X"] {
                jail.set_env(name, "https://corral.example.com");
            }
            // What Kubernetes gives every pod for Services named corral and corral-db.
            for (name, value) in [
                ("CORRAL_SERVICE_HOST", "10.0.0.7"),
                ("CORRAL_SERVICE_PORT", "8080"),
                ("CORRAL_SERVICE_PORT_HTTP", "8080"),
                ("CORRAL_PORT", "tcp://10.0.0.7:8080"),
                ("CORRAL_PORT_8080_TCP", "tcp://10.0.0.7:8080"),
                ("CORRAL_PORT_8080_TCP_ADDR", "10.0.0.7"),
                ("CORRAL_PORT_8080_TCP_PROTO", "tcp"),
                ("CORRAL_DB_PORT_5432_TCP_PORT", "5432"),
                ("CORRAL_DB_SERVICE_HOST", "10.0.0.8"),
            ] {
                jail.set_env(name, value);
            }
            jail.set_env("CORRAL_SMTP_PORT", "2525");
            let settings = Settings::load(None).map_err(|err| format!("{err:#}"))?;
            assert_eq!(settings.notify.smtp_port, Some(2525), "a known name is read, not skipped");
            // A name shaped like a link whose value is not one is a mistake, and said so.
            jail.set_env("CORRAL_PORT", "9090");
            let err = format!("{:#}", Settings::load(None).unwrap_err());
            assert!(err.contains("unknown environment variable CORRAL_PORT"), "{err}");
            jail.set_env("CORRAL_PORT", "tcp://10.0.0.7:8080");

            jail.set_env("CORRAL_SMTP_HOSTT", "smtp.example.com");
            jail.set_env("CORRAL_NOTHING_LIKE_IT", "1");
            let err = load_err();
            assert!(
                err.contains(
                    "unknown environment variable CORRAL_SMTP_HOSTT: did you mean \
                              CORRAL_SMTP_HOST?"
                ),
                "{err}"
            );
            assert!(err.contains("unknown environment variable CORRAL_NOTHING_LIKE_IT:"), "{err}");
            assert!(!err.contains("CORRAL_NOTHING_LIKE_IT: did you mean"), "{err}");
            jail.clear_env();

            jail.set_env("CORRAL_JOBS", "3");
            assert!(load_err().contains("CORRAL_JOBS names a section"), "{}", load_err());
            jail.clear_env();

            jail.set_env("CORRAL_POLICY__MAX_CONT", "3");
            let err = load_err();
            assert!(
                err.contains(
                    "unknown setting CORRAL_POLICY__MAX_CONT in the environment: did \
                              you mean CORRAL_POLICY__MAX_COUNT?"
                ),
                "{err}"
            );
            assert!(!err.contains("default."), "{err}");
            jail.clear_env();

            jail.set_env("CORRAL_JOB_MAX_ATTEMPTS", "many");
            let err = load_err();
            assert!(err.contains("CORRAL_JOB_MAX_ATTEMPTS: invalid type"), "{err}");
            jail.clear_env();

            jail.create_file("corral.toml", "[policy]\nmax_cont = 3\n")?;
            let err = format!("{:#}", Settings::load(Some(Path::new("corral.toml"))).unwrap_err());
            assert!(
                err.contains("unknown setting policy.max_cont in ")
                    && err.contains("corral.toml: did you mean policy.max_count?"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let jobs = JobSettings {
            retry_delay_secs: 0.1,
            retry_max_delay_secs: 0.35,
            ..JobSettings::default()
        };
        let delays: Vec<u128> = (1..=4).map(|n| jobs.backoff(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
    }

    #[test]
    #[allow(clippy::result_large_err, reason = "figment's Jail fixes the closure's error type")]
    fn short_environment_names_set_their_keys() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CORRAL_JOB_MAX_ATTEMPTS", "7");
            jail.set_env("CORRAL_JOB_RETRY_DELAY", "0.5");
            jail.set_env("CORRAL_RECONCILE_INTERVAL", "15");
            jail.set_env("CORRAL_JOBS__CONCURRENCY", "2");
            jail.set_env("CORRAL_SMTP_HOST", "smtp.gmail.com");
            jail.set_env("CORRAL_SMTP_TLS", "tls");
            jail.set_env("CORRAL_NOTIFY_EMAIL", "ops@example.com, dev@example.com");
            jail.set_env("CORRAL_WEBHOOK_ALLOW_PRIVATE", "true");
            let settings = Settings::load(None).map_err(|err| format!("{err:#}"))?;
            assert_eq!(settings.notify.smtp_host.as_deref(), Some("smtp.gmail.com"));
            assert_eq!(settings.notify.smtp_port(), 465);
            assert_eq!(settings.notify.email, ["ops@example.com", "dev@example.com"]);
            assert!(settings.notify.webhook_allow_private);
            assert_eq!(settings.jobs.max_attempts, 7);
            assert_eq!(settings.jobs.retry_delay_secs, 0.5);
            assert_eq!(settings.reconcile.interval_secs, 15.0);
            assert_eq!(settings.jobs.concurrency, 2);
            Ok(())
        });
    }
}
