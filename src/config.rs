//! Typed settings for `corral serve`, one struct per section.
//!
//! Sources, lowest precedence first: built-in defaults, the optional TOML file given by
//! `--config` / `CORRAL_CONFIG`, then environment variables `CORRAL_<KEY>` with `__` between
//! nested keys (`CORRAL_JOBS__CONCURRENCY=8`, `CORRAL_POLICY__MAX_COUNT=3`), then command-line
//! flags. Unknown keys in the file are errors, so a typo never silently keeps a default.
//!
//! A few variables have short names that scripts rely on: `CORRAL_JOB_MAX_ATTEMPTS`
//! (`jobs.max_attempts`), `CORRAL_JOB_RETRY_DELAY` (`jobs.retry_delay`, seconds) and
//! `CORRAL_RECONCILE_INTERVAL` (`reconcile.interval`, seconds).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::domain::{Backend, Policy};

/// Top-level keys that environment variables may set; other `CORRAL_*` variables (client
/// settings, test harness settings) are not part of the server's configuration.
const ENV_KEYS: [&str; 12] = [
    "listen",
    "server",
    "database_url",
    "data_dir",
    "role",
    "aws",
    "jobs",
    "reconcile",
    "policy",
    "auth",
    "notify",
    "terraform",
];

/// Short environment names and the keys they set.
const ENV_ALIASES: [(&str, &str); 15] = [
    ("default_backend", "terraform__default_backend"),
    ("terraform_cli_config", "terraform__cli_config"),
    ("terraform_state_url", "terraform__state_url"),
    ("admin_password", "auth__admin_password"),
    ("smtp_host", "notify__smtp_host"),
    ("smtp_port", "notify__smtp_port"),
    ("smtp_user", "notify__smtp_user"),
    ("smtp_password", "notify__smtp_password"),
    ("smtp_tls", "notify__smtp_tls"),
    ("smtp_from", "notify__smtp_from"),
    ("notify_email", "notify__email"),
    ("webhook_allow_private", "notify__webhook_allow_private"),
    ("job_max_attempts", "jobs__max_attempts"),
    ("job_retry_delay", "jobs__retry_delay"),
    ("reconcile_interval", "reconcile__interval"),
];

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

/// How the HTTP listener treats connections: TLS, the proxies in front of it, and the limits
/// that keep one client from holding the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// PEM certificate chain and private key: with both, `serve` speaks HTTPS itself
    /// (`CORRAL_SERVER__TLS_CERT`, `CORRAL_SERVER__TLS_KEY`).
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    /// Address ranges of reverse proxies (e.g. `10.0.0.0/8`): for connections from them, the
    /// client is read from `X-Forwarded-For` (login throttling, `"cidr": "caller"`). Empty:
    /// the header is ignored, as any client could write it.
    pub trusted_proxies: Vec<String>,
    /// Longest a client may take to send a request's headers, from connecting or from its
    /// previous answer (an idle connection is closed after it).
    pub header_timeout_secs: u64,
    /// Longest a request may take until its answer starts (answered `503` past it); `?wait=`
    /// adds the longest wait, and an event stream goes on once it has started.
    pub request_timeout_secs: u64,
    /// Connections served at once; further ones are answered `503` and closed.
    pub max_connections: usize,
    /// Event streams (`/v1/jobs/{id}/events`) open at once, in all and per caller; further
    /// ones are answered `429`.
    pub max_event_streams: usize,
    pub max_event_streams_per_caller: usize,
}

impl Default for ServerSettings {
    fn default() -> ServerSettings {
        ServerSettings {
            tls_cert: None,
            tls_key: None,
            trusted_proxies: Vec::new(),
            header_timeout_secs: 30,
            request_timeout_secs: 60,
            max_connections: 1024,
            max_event_streams: 256,
            max_event_streams_per_caller: 16,
        }
    }
}

impl ServerSettings {
    /// The trusted proxies' ranges, or what is wrong with them.
    pub fn trusted_proxies(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.trusted_proxies
            .iter()
            .map(|cidr| {
                let cidr = cidr.trim();
                cidr.parse::<ipnet::IpNet>()
                    .or_else(|_| cidr.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| {
                        format!(
                            "server.trusted_proxies: '{cidr}' is not an address range; expected \
                             e.g. 10.0.0.0/8 or fd00::/8"
                        )
                    })
            })
            .collect()
    }

    fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(problem) = self.trusted_proxies() {
            problems.push(problem);
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            problems.push(
                "server.tls_cert and server.tls_key go together: set both or neither".to_string(),
            );
        }
        for (name, value) in [
            ("header_timeout_secs", self.header_timeout_secs as usize),
            ("request_timeout_secs", self.request_timeout_secs as usize),
            ("max_connections", self.max_connections),
            ("max_event_streams", self.max_event_streams),
            ("max_event_streams_per_caller", self.max_event_streams_per_caller),
        ] {
            if value == 0 {
                problems.push(format!("server.{name}: must be at least 1"));
            }
        }
        problems
    }
}

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
    /// its state (`CORRAL_TERRAFORM_STATE_URL`); default: `notify.public_url`, else this
    /// process's own listener. Worker-only processes must set one of them.
    pub state_url: Option<String>,
    /// Where each run gets its working directory (default: the system's temporary folder).
    pub work_dir: Option<String>,
    /// An HTTP(S) proxy through which runs reach the cloud and the provider registry
    /// (`HTTPS_PROXY` and `HTTP_PROXY` of each run). Runs never inherit corral's own
    /// environment, proxies included.
    pub proxy: Option<String>,
}

// Both `Debug`s name every field (no `..`), so that a field added later cannot slip out of
// them, or past the redaction, unnoticed.
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsSettings {
    /// Send every EC2 call here instead of AWS, e.g. a local emulator. The standard
    /// `AWS_ENDPOINT_URL` variable does the same.
    pub endpoint_url: Option<String>,
    /// Static credentials; when absent, the standard AWS credential chain is used.
    pub access_key_id: Option<String>,
    #[serde(skip_serializing)]
    pub secret_access_key: Option<SecretString>,
    /// Time limit for one attempt of one cloud call.
    pub call_timeout_secs: u64,
    /// How long AMI and instance-type facts are cached.
    pub catalog_ttl_secs: u64,
    /// Client-side rate limits per region, sized like EC2's own token buckets.
    pub rate_limits: RateLimits,
}

/// Token buckets (`burst` calls at once, `per_second` refill) per API class and region.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// RunInstances and StartInstances.
    pub launch: Bucket,
    /// Other mutating calls: Stop, Reboot, Terminate, CreateTags.
    pub mutate: Bucket,
    /// Describe calls.
    pub describe: Bucket,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    pub burst: f64,
    pub per_second: f64,
}

impl Default for RateLimits {
    fn default() -> RateLimits {
        RateLimits {
            launch: Bucket { burst: 5.0, per_second: 2.0 },
            mutate: Bucket { burst: 50.0, per_second: 5.0 },
            describe: Bucket { burst: 100.0, per_second: 20.0 },
        }
    }
}

impl Default for AwsSettings {
    fn default() -> AwsSettings {
        AwsSettings {
            endpoint_url: None,
            access_key_id: None,
            secret_access_key: None,
            call_timeout_secs: 30,
            catalog_ttl_secs: 3600,
            rate_limits: RateLimits::default(),
        }
    }
}

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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobSettings {
    /// Jobs run at the same time by this process.
    pub concurrency: usize,
    /// Attempts before a job that keeps failing is parked as `failed`. Transient failures
    /// (throttling, 5xx, connection errors, timeouts) are not counted: they are retried until
    /// they have lasted `transient_budget`.
    pub max_attempts: i64,
    /// Seconds a job's transient failures in a row may last before it is parked as `failed`.
    pub transient_budget: f64,
    /// Seconds before the first retry (`CORRAL_JOB_RETRY_DELAY`); doubles with every attempt
    /// up to `retry_max_delay`.
    pub retry_delay: f64,
    pub retry_max_delay: f64,
    /// How often idle workers look for due jobs when nothing wakes them.
    pub poll_interval_ms: u64,
    /// Lease on a claimed job; renewed while the job runs, so a dead worker's job is re-claimed.
    pub lease_secs: u64,
    /// At shutdown, how long running jobs may take to finish before they are handed back.
    pub shutdown_grace_secs: f64,
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
            transient_budget: 600.0,
            retry_delay: 2.0,
            retry_max_delay: 300.0,
            poll_interval_ms: 1_000,
            lease_secs: 60,
            shutdown_grace_secs: 10.0,
            state_poll_initial_ms: 1_000,
            state_poll_max_ms: 10_000,
            state_wait_timeout_secs: 600,
        }
    }
}

impl JobSettings {
    /// Delay before the attempt after `attempts` failed ones: base × 2^(attempts-1), capped.
    pub fn backoff(&self, attempts: i64) -> Duration {
        backoff(self.retry_delay, self.retry_max_delay, attempts)
    }

    /// Delay after the `failures`-th transient failure in a row: as `backoff`, at most 30 s, so
    /// that a cloud that recovers is noticed soon.
    pub fn transient_backoff(&self, failures: i64) -> Duration {
        backoff(self.retry_delay, self.retry_max_delay.min(TRANSIENT_MAX_DELAY), failures)
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }
}

/// The longest pause between two tries of a job failing transiently, in seconds.
const TRANSIENT_MAX_DELAY: f64 = 30.0;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileSettings {
    /// Seconds between two reconcile passes (`CORRAL_RECONCILE_INTERVAL`); 0 turns the
    /// periodic pass off (forced refreshes still work).
    pub interval: f64,
}

impl Default for ReconcileSettings {
    fn default() -> ReconcileSettings {
        ReconcileSettings { interval: 60.0 }
    }
}

/// Email and webhook notifications. The SMTP keys and the recipients have short environment
/// names: `CORRAL_SMTP_HOST`, `CORRAL_SMTP_PORT`, `CORRAL_SMTP_USER`, `CORRAL_SMTP_PASSWORD`,
/// `CORRAL_SMTP_TLS`, `CORRAL_SMTP_FROM`, `CORRAL_NOTIFY_EMAIL`, and
/// `CORRAL_WEBHOOK_ALLOW_PRIVATE`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifySettings {
    /// SMTP server; email is off without it.
    pub smtp_host: Option<String>,
    /// Defaults by `smtp_tls`: 25 (`none`), 587 (`starttls`), 465 (`tls`).
    pub smtp_port: Option<u16>,
    pub smtp_user: Option<String>,
    #[serde(skip_serializing)]
    pub smtp_password: Option<SecretString>,
    pub smtp_tls: SmtpTls,
    /// The sender, e.g. `corral <corral@example.com>`.
    pub smtp_from: String,
    /// Addresses told about every event, comma-separated or a list.
    #[serde(deserialize_with = "comma_separated")]
    pub email: Vec<String>,
    /// Lets webhooks reach loopback, link-local and private addresses (off: an SSRF guard).
    pub webhook_allow_private: bool,
    /// Time limit of one webhook call, and of one SMTP conversation.
    pub webhook_timeout_secs: u64,
    pub smtp_timeout_secs: u64,
    /// Attempts per delivery before it is parked as dead.
    pub max_attempts: i64,
    /// Seconds before the first retry; doubles with every attempt up to `retry_max_delay`.
    pub retry_delay: f64,
    pub retry_max_delay: f64,
    /// How often idle delivery workers look for due deliveries.
    pub poll_interval_ms: u64,
    /// The address people reach this corral at, for links in emails; by default the
    /// listening address.
    pub public_url: Option<String>,
    /// Most subscriptions one namespace may hold, webhooks and email subscriptions counted
    /// together (`CORRAL_NOTIFY__MAX_SUBSCRIPTIONS_PER_NAMESPACE`); a create past it is refused
    /// with 422. Global subscriptions, which only admins make, are not counted or capped. 0
    /// leaves namespaces none of their own.
    pub max_subscriptions_per_namespace: u32,
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain text, for a relay on loopback.
    None,
    /// Upgrade a plain connection (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

impl Default for NotifySettings {
    fn default() -> NotifySettings {
        NotifySettings {
            smtp_host: None,
            smtp_port: None,
            smtp_user: None,
            smtp_password: None,
            smtp_tls: SmtpTls::Starttls,
            smtp_from: "corral <corral@localhost>".to_string(),
            email: Vec::new(),
            webhook_allow_private: false,
            webhook_timeout_secs: 10,
            smtp_timeout_secs: 30,
            max_attempts: 10,
            retry_delay: 5.0,
            retry_max_delay: 900.0,
            poll_interval_ms: 1_000,
            public_url: None,
            max_subscriptions_per_namespace: 50,
        }
    }
}

impl NotifySettings {
    pub fn smtp_port(&self) -> u16 {
        self.smtp_port.unwrap_or(match self.smtp_tls {
            SmtpTls::None => 25,
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
        })
    }

    /// Delay before the attempt after `attempts` failed ones: base × 2^(attempts-1), capped.
    pub fn backoff(&self, attempts: i64) -> Duration {
        backoff(self.retry_delay, self.retry_max_delay, attempts)
    }

    fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.email.is_empty() && self.smtp_host.is_none() {
            problems.push(
                "notify.email (CORRAL_NOTIFY_EMAIL) needs an SMTP server: set CORRAL_SMTP_HOST"
                    .to_string(),
            );
        }
        if self.smtp_user.is_some() != self.smtp_password.is_some() {
            problems.push(
                "CORRAL_SMTP_USER and CORRAL_SMTP_PASSWORD go together: set both or neither"
                    .to_string(),
            );
        }
        if self.smtp_user.is_some() && self.smtp_tls == SmtpTls::None {
            problems.push(
                "CORRAL_SMTP_USER with CORRAL_SMTP_TLS=none would send the password in clear: \
                 use starttls or tls"
                    .to_string(),
            );
        }
        if self.smtp_from.parse::<lettre::message::Mailbox>().is_err() {
            problems
                .push(format!("CORRAL_SMTP_FROM: '{}' is not an email address", self.smtp_from));
        }
        for address in &self.email {
            if address.parse::<lettre::Address>().is_err() {
                problems.push(format!("CORRAL_NOTIFY_EMAIL: '{address}' is not an email address"));
            }
        }
        if self.max_attempts < 1 {
            problems.push("notify.max_attempts: must be at least 1".to_string());
        }
        let (delay, max_delay) = (self.retry_delay, self.retry_max_delay);
        if !delay.is_finite() || !max_delay.is_finite() || delay < 0.0 || max_delay < delay {
            problems.push(
                "notify.retry_delay: must be at least 0 and at most notify.retry_max_delay"
                    .to_string(),
            );
        }
        if self.webhook_timeout_secs == 0 || self.smtp_timeout_secs == 0 {
            problems.push("notify timeouts must be at least 1 second".to_string());
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            problems
                .push(format!("notify.public_url: '{url}' must start with http:// or https://"));
        }
        problems
    }
}

/// `base` × 2^(attempts-1) seconds, at most `max`.
fn backoff(base: f64, max: f64, attempts: i64) -> Duration {
    let exponent = attempts.clamp(1, 30) as i32 - 1;
    Duration::from_secs_f64((base * 2f64.powi(exponent)).min(max).max(0.0))
}

/// Reads a list given as a comma-separated string (as environment variables give it) or as a
/// list; blanks are dropped.
fn comma_separated<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let items = match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(text) => text.split(',').map(str::to_string).collect(),
        OneOrMany::Many(items) => items,
    };
    Ok(items
        .into_iter()
        .map(|item| item.trim().to_string())
        .filter(|item| !item.is_empty())
        .collect())
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
            figment = figment.merge(Toml::file_exact(path));
        }
        let env = Env::prefixed("CORRAL_")
            .map(|key| {
                match ENV_ALIASES.iter().find(|(alias, _)| key.as_str().eq_ignore_ascii_case(alias))
                {
                    Some((_, target)) => (*target).into(),
                    None => key.into(),
                }
            })
            .split("__")
            .filter(|key| {
                let key = key.as_str().to_ascii_lowercase();
                ENV_KEYS.iter().any(|allowed| key.starts_with(allowed))
            });
        let settings: Settings = figment.merge(env).extract().context("invalid configuration")?;
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
        if self.jobs.concurrency == 0 {
            problems.push("jobs.concurrency: must be at least 1".to_string());
        }
        if self.jobs.max_attempts < 1 {
            problems.push("jobs.max_attempts: must be at least 1".to_string());
        }
        if !self.jobs.transient_budget.is_finite() || self.jobs.transient_budget < 0.0 {
            problems
                .push("jobs.transient_budget: must be a number of seconds, at least 0".to_string());
        }
        if !self.jobs.shutdown_grace_secs.is_finite() || self.jobs.shutdown_grace_secs < 0.0 {
            problems.push("jobs.shutdown_grace_secs: must be at least 0".to_string());
        }
        if self.jobs.lease_secs < 3 {
            problems.push("jobs.lease_secs: must be at least 3".to_string());
        }
        let (delay, max_delay) = (self.jobs.retry_delay, self.jobs.retry_max_delay);
        if !delay.is_finite() || !max_delay.is_finite() || delay < 0.0 || max_delay < delay {
            problems.push(
                "jobs.retry_delay: must be at least 0 and at most jobs.retry_max_delay".to_string(),
            );
        }
        if !self.reconcile.interval.is_finite() || self.reconcile.interval < 0.0 {
            problems.push("reconcile.interval: must be at least 0 seconds".to_string());
        }
        let limits = self.aws.rate_limits;
        for (name, bucket) in
            [("launch", limits.launch), ("mutate", limits.mutate), ("describe", limits.describe)]
        {
            if !bucket.burst.is_finite()
                || bucket.burst < 1.0
                || !bucket.per_second.is_finite()
                || bucket.per_second <= 0.0
            {
                problems.push(format!(
                    "aws.rate_limits.{name}: burst must be at least 1 and per_second above 0"
                ));
            }
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

    #[test]
    fn backoff_doubles_and_is_capped() {
        let jobs =
            JobSettings { retry_delay: 0.1, retry_max_delay: 0.35, ..JobSettings::default() };
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
            assert_eq!(settings.jobs.retry_delay, 0.5);
            assert_eq!(settings.reconcile.interval, 15.0);
            assert_eq!(settings.jobs.concurrency, 2);
            Ok(())
        });
    }
}
