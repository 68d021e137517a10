//! Terraform as a backend: the configuration corral writes for a workspace, and running the
//! `terraform` executable on it.
//!
//! A workspace is one create request (named by its job id). Every run gets a fresh working
//! directory with a generated `main.tf.json`; the state lives in corral's database, reached
//! through the HTTP backend protocol (`api::terraform_state`) with a token that opens that
//! workspace only, so a lost working directory loses nothing. Output is captured with every
//! secret the run was given replaced by `[redacted]`.
//!
//! A run never outlives corral: it is killed when its job's future is dropped (shutdown,
//! timeout), and, through util-linux's `setpriv --pdeathsig KILL`, when corral itself is killed
//! with SIGKILL. Otherwise a run could go on applying while the job's next attempt, elsewhere
//! or after a restart, runs the same workspace again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::auth::Authenticator;
use crate::cloud::{SecurityGroupSpec, TAG_INSTANCE_ID, TAG_JOB_ID, TAG_NAMESPACE};
use crate::config::TerraformSettings;
use crate::domain::LaunchSpec;

/// Resource name of the security group a request with ingress rules gets.
pub const SECURITY_GROUP: &str = "aws_security_group.ingress";
/// How long a run waits for the workspace's lock when another run holds it.
const LOCK_TIMEOUT: &str = "-lock-timeout=120s";
/// Longest a single terraform command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Most output kept per command, from its end.
const MAX_OUTPUT: usize = 12 * 1024;

/// Environment variables a run takes from corral's own environment, when set: what finds
/// programs and trusted certificates, and the Go runtime's memory settings. Nothing else of
/// corral's environment (database URL, secrets, `TF_LOG`, `TF_CLI_ARGS`, proxies) reaches
/// Terraform.
const INHERITED_ENV: [&str; 6] =
    ["PATH", "SSL_CERT_FILE", "SSL_CERT_DIR", "AWS_CA_BUNDLE", "GOGC", "GOMEMLIMIT"];
/// Go's garbage collector target for a run when corral's environment sets none. Most of a
/// command's CPU goes into loading the AWS provider's schema, a few hundred megabytes of
/// short-lived objects: at 400 (Go's default is 100) a plan takes about a third less CPU for
/// about a fifth more peak memory (~750 MB instead of ~630 MB with provider 5.100).
const DEFAULT_GOGC: &str = "400";

/// How this process runs Terraform.
pub struct Terraform {
    binary: PathBuf,
    /// `setpriv`, if it can give a run the parent-death signal.
    setpriv: Option<PathBuf>,
    cli_config: Option<PathBuf>,
    proxy: Option<String>,
    state_url: String,
    work_dir: PathBuf,
    /// Providers fetched once for every run: a directory only corral's user can open.
    plugin_cache: PathBuf,
    auth: Arc<Authenticator>,
}

impl Terraform {
    /// The executable `binary` names (a path, or a name on `PATH`), if it exists.
    pub fn locate(binary: &str) -> Option<PathBuf> {
        if binary.contains('/') {
            let path = PathBuf::from(binary);
            return path.is_file().then_some(path);
        }
        let paths = std::env::var_os("PATH")?;
        std::env::split_paths(&paths).map(|dir| dir.join(binary)).find(|path| path.is_file())
    }

    /// Runs `binary` with `settings`; the plugin cache goes under `data_dir`.
    pub async fn new(
        settings: &TerraformSettings,
        binary: PathBuf,
        state_url: String,
        data_dir: &Path,
        auth: Arc<Authenticator>,
    ) -> Terraform {
        let setpriv = match Terraform::locate("setpriv") {
            Some(setpriv) if gives_parent_death_signal(&setpriv).await => Some(setpriv),
            _ => {
                tracing::warn!(
                    "setpriv --pdeathsig (util-linux) is unavailable: a terraform run would go on \
                     if corral were killed with SIGKILL"
                );
                None
            }
        };
        Terraform {
            binary,
            setpriv,
            cli_config: settings.cli_config.as_ref().map(PathBuf::from),
            proxy: settings.proxy.clone(),
            state_url: state_url.trim_end_matches('/').to_string(),
            work_dir: settings.work_dir.as_ref().map_or_else(std::env::temp_dir, PathBuf::from),
            plugin_cache: data_dir.join("terraform-plugins"),
            auth,
        }
    }

    /// The base URL at which runs reach corral's API for their state.
    pub fn state_url(&self) -> &str {
        &self.state_url
    }

    /// Whether this process reaches corral's API at the state URL, as its runs will
    /// (`reaches_corral`).
    pub async fn check_state_url(&self) -> Result<(), String> {
        reaches_corral(&self.state_url).await
    }

    /// Where Terraform reads and writes the state of `workspace`.
    pub fn state_address(&self, workspace: &str) -> String {
        format!("{}/v1/terraform/state/{workspace}", self.state_url)
    }

    /// A fresh working directory for a run of job `job_id` on `workspace`, with the cloud
    /// credentials `cloud_env` and a state token for that workspace alone. The run's
    /// environment is made here, from nothing: see `INHERITED_ENV`.
    pub async fn session(
        &self,
        workspace: &str,
        job_id: &str,
        cloud_env: Vec<(String, String)>,
    ) -> std::io::Result<Session> {
        // File system calls run off the async runtime, here and when the session is dropped.
        let (work_dir, cache) = (self.work_dir.clone(), self.plugin_cache.clone());
        let dir = tokio::task::spawn_blocking(move || {
            private_dir(&cache)?;
            std::fs::create_dir_all(&work_dir)?;
            tempfile::Builder::new().prefix("corral-tf-").tempdir_in(&work_dir)
        })
        .await
        .map_err(std::io::Error::other)??;
        let token = self.auth.workspace_token(workspace, job_id, 6 * 3600);
        let mut secrets = vec![token.clone(), format!("corral:{token}")];
        secrets.extend(
            cloud_env
                .iter()
                .filter(|(name, _)| name != "AWS_ACCESS_KEY_ID")
                .map(|(_, value)| value.clone()),
        );
        let mut env: Vec<(String, String)> = INHERITED_ENV
            .iter()
            .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
            .collect();
        if !env.iter().any(|(name, _)| name == "GOGC") {
            env.push(("GOGC".to_string(), DEFAULT_GOGC.to_string()));
        }
        env.extend(cloud_env);
        env.extend([
            ("HOME".to_string(), dir.path().display().to_string()),
            ("TF_HTTP_USERNAME".to_string(), "corral".to_string()),
            ("TF_HTTP_PASSWORD".to_string(), token),
            ("TF_IN_AUTOMATION".to_string(), "1".to_string()),
            ("TF_INPUT".to_string(), "0".to_string()),
            ("CHECKPOINT_DISABLE".to_string(), "1".to_string()),
            ("TF_PLUGIN_CACHE_DIR".to_string(), self.plugin_cache.display().to_string()),
        ]);
        if let Some(config) = &self.cli_config {
            env.push(("TF_CLI_CONFIG_FILE".to_string(), config.display().to_string()));
        }
        if let Some(proxy) = &self.proxy {
            for name in ["HTTPS_PROXY", "HTTP_PROXY"] {
                env.push((name.to_string(), proxy.clone()));
            }
            // corral's own state API is reached directly.
            let host = url::Url::parse(&self.state_url)
                .ok()
                .and_then(|url| url.host_str().map(str::to_string));
            env.push(("NO_PROXY".to_string(), host.unwrap_or_default()));
        }
        let mut program = Vec::new();
        if let Some(setpriv) = &self.setpriv {
            program.extend([setpriv.clone(), "--pdeathsig".into(), "KILL".into(), "--".into()]);
        }
        program.push(self.binary.clone());
        Ok(Session { dir: Some(dir), program, env, secrets: redacted_forms(secrets) })
    }
}

/// Whether corral's state API answers at `base_url`: asked without credentials, its state
/// route answers as corral's does (`401` with a problem document), which no other server, and
/// no corral process that serves no API (`--role worker`), does. The error says what happened
/// instead.
pub async fn reaches_corral(base_url: &str) -> Result<(), String> {
    let url = format!("{}/v1/terraform/state/reachability-check", base_url.trim_end_matches('/'));
    let tls = crate::tls_client_config().map_err(|err| format!("no TLS client: {err:#}"))?;
    // Runs reach the state API directly (`NO_PROXY`), and so does this check.
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(std::time::Duration::from_secs(5))
        .no_proxy()
        .build()
        .map_err(|err| format!("no HTTP client: {err}"))?;
    let answer = client.get(&url).send().await.map_err(|err| {
        format!("GET {url} from this server failed: {}", crate::error_chain(&err))
    })?;
    let status = answer.status();
    let problem = answer
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .is_some_and(|kind| kind.as_bytes().starts_with(b"application/problem+json"));
    if status == reqwest::StatusCode::UNAUTHORIZED && problem {
        Ok(())
    } else {
        Err(format!("GET {url} answered {status}, not as corral's state API does"))
    }
}

/// Makes `dir` (and its parents) if missing, and leaves it open to corral's user only.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Each secret as it may appear in output: as given, base64-encoded (an HTTP Basic header
/// Terraform logs) and URL-encoded. Short strings are left out: redacting them would mangle
/// the output without hiding anything.
fn redacted_forms(secrets: Vec<String>) -> Vec<String> {
    use base64::Engine;
    let mut forms = Vec::new();
    for secret in secrets.into_iter().filter(|s| s.len() >= 8) {
        forms.push(base64::engine::general_purpose::STANDARD.encode(&secret));
        forms.push(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&secret));
        let encoded: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        forms.push(encoded.replace('+', "%20"));
        forms.push(encoded);
        forms.push(secret);
    }
    // Longer forms first, so that no part of one is left behind by a shorter one's redaction.
    forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    forms.dedup();
    forms
}

/// Whether `setpriv` knows `--pdeathsig` (util-linux 2.33 and later).
async fn gives_parent_death_signal(setpriv: &Path) -> bool {
    let mut probe = tokio::process::Command::new(setpriv);
    probe.args(["--pdeathsig", "KILL", "--", "true"]).stdout(Stdio::null()).stderr(Stdio::null());
    probe.status().await.is_ok_and(|status| status.success())
}

/// One working directory and the environment its commands run with.
pub struct Session {
    /// Present until the session is dropped.
    dir: Option<tempfile::TempDir>,
    /// The terraform executable, behind `setpriv --pdeathsig KILL --` where available. The
    /// signal follows the thread that started the run; runs start on the runtime's worker
    /// threads (never `spawn_blocking` ones), which live as long as the process.
    program: Vec<PathBuf>,
    env: Vec<(String, String)>,
    secrets: Vec<String>,
}

/// What a command printed (stdout, then stderr; redacted, at most the last 12 KiB), and
/// whether it succeeded.
pub struct RunOutput {
    pub success: bool,
    pub text: String,
}

impl Drop for Session {
    fn drop(&mut self) {
        // Removed off the async runtime where there is one, else here.
        if let (Some(dir), Ok(runtime)) = (self.dir.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn_blocking(move || drop(dir));
        }
    }
}

impl Session {
    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("the directory lives as long as the session").path()
    }

    pub async fn write_config(&self, config: &Value) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(config).expect("JSON serializes");
        tokio::fs::write(self.path().join("main.tf.json"), text).await
    }

    /// `terraform init`, against the state backend.
    pub async fn init(&self) -> std::io::Result<RunOutput> {
        self.run(&["init", "-no-color", "-input=false", LOCK_TIMEOUT]).await
    }

    /// `terraform plan` saved to `plan.out`.
    pub async fn plan(&self, extra: &[String]) -> std::io::Result<RunOutput> {
        let mut args = vec!["plan", "-no-color", "-input=false", LOCK_TIMEOUT, "-out=plan.out"];
        args.extend(extra.iter().map(String::as_str));
        self.run(&args).await
    }

    /// `terraform apply` of the saved plan.
    pub async fn apply(&self) -> std::io::Result<RunOutput> {
        self.run(&["apply", "-no-color", "-input=false", LOCK_TIMEOUT, "plan.out"]).await
    }

    /// `terraform output -json`: every output by name.
    pub async fn outputs(&self) -> std::io::Result<Result<Value, String>> {
        let output = self.run(&["output", "-no-color", "-json"]).await?;
        if !output.success {
            return Ok(Err(output.text));
        }
        Ok(serde_json::from_str(&output.text).map_err(|err| format!("{err}: {}", output.text)))
    }

    async fn run(&self, args: &[&str]) -> std::io::Result<RunOutput> {
        let mut command = tokio::process::Command::new(&self.program[0]);
        command
            .args(&self.program[1..])
            .args(args)
            .current_dir(self.path())
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let output = match tokio::time::timeout(COMMAND_TIMEOUT, command.output()).await {
            Ok(output) => output?,
            Err(_) => {
                return Ok(RunOutput {
                    success: false,
                    text: format!(
                        "terraform {} did not finish within {} minutes and was stopped",
                        args[0],
                        COMMAND_TIMEOUT.as_secs() / 60
                    ),
                });
            }
        };
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        for secret in &self.secrets {
            text = text.replace(secret.as_str(), "[redacted]");
        }
        Ok(RunOutput { success: output.status.success(), text: tail(text.trim(), MAX_OUTPUT) })
    }
}

/// `text` as a literal in Terraform's template syntax: `${` and `%{` would start an
/// interpolation or a directive, in JSON string values and object keys alike, so they are
/// doubled (`$${`, `%%{`), which Terraform reads back as the original text.
pub fn literal(text: &str) -> String {
    text.replace("${", "$${").replace("%{", "%%{")
}

/// `value` with every string and object key in it made `literal`: user text (names, tags,
/// user_data, key names) reaches the cloud as it was given, never evaluated.
fn literal_json(value: Value) -> Value {
    match value {
        Value::String(text) => Value::String(literal(&text)),
        Value::Array(items) => Value::Array(items.into_iter().map(literal_json).collect()),
        Value::Object(fields) => {
            Value::Object(fields.into_iter().map(|(k, v)| (literal(&k), literal_json(v))).collect())
        }
        other => other,
    }
}

/// The last `max` bytes of `text`, cut at a character boundary.
fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("[… earlier output left out]\n{}", &text[start..])
}

/// One instance of a workspace as the configuration declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigInstance {
    /// corral id.
    pub id: String,
    pub name: String,
    /// The user's tags, as corral has them now (a `PATCH` may have changed them since).
    pub tags: BTreeMap<String, String>,
    pub launch_index: i64,
    /// `running` or `stopped` when the run sets the instance's state; `None` leaves it as is.
    pub state: Option<&'static str>,
}

impl ConfigInstance {
    /// Terraform resource name: names may hold characters identifiers may not.
    pub fn resource(&self) -> String {
        format!("i{}", self.launch_index)
    }
}

/// Everything a workspace's `main.tf.json` is written from.
pub struct WorkspaceConfig<'a> {
    pub workspace: &'a str,
    pub state_address: String,
    pub endpoint_url: Option<&'a str>,
    pub spec: &'a LaunchSpec,
    /// The instances that exist or are to be created; the others are left out.
    pub instances: Vec<ConfigInstance>,
    /// Whether the AMI's type is burstable, so that the credit mode applies.
    pub burstable: bool,
    /// Existing cloud objects to adopt into the state: (resource address, cloud id).
    pub imports: Vec<(String, String)>,
}

/// The configuration in Terraform's JSON syntax: the HTTP state backend, the AWS provider for
/// the region (endpoints overridden for an emulator), one `aws_instance` per instance with the
/// tags, storage, key, security groups and user_data the native backend would use, the request's
/// security group when it has ingress rules, `aws_ec2_instance_state` for the instances whose
/// state the run sets, and an output of every instance's id and addresses.
pub fn configuration(config: &WorkspaceConfig<'_>) -> Value {
    let spec = config.spec;
    let mut provider = json!({ "region": literal(&spec.region) });
    if let Some(url) = config.endpoint_url {
        provider["endpoints"] = json!({ "ec2": url });
        provider["skip_credentials_validation"] = json!(true);
        provider["skip_requesting_account_id"] = json!(true);
        provider["skip_metadata_api_check"] = json!(true);
    }
    let mut resources = serde_json::Map::new();
    if !spec.ingress.is_empty() {
        let rule = |from: u16, protocol: &str, v4: Vec<&str>, v6: Vec<&str>| {
            json!({
                "from_port": from, "to_port": from, "protocol": protocol,
                "cidr_blocks": v4, "ipv6_cidr_blocks": v6, "description": "",
                "prefix_list_ids": [], "security_groups": [], "self": false,
            })
        };
        let group =
            SecurityGroupSpec::for_request(config.workspace, &spec.namespace, &spec.ingress);
        let ingress: Vec<Value> = group
            .rules
            .iter()
            .map(|r| {
                let (v4, v6) = if r.is_ipv6() {
                    (vec![], vec![r.cidr.as_str()])
                } else {
                    (vec![r.cidr.as_str()], vec![])
                };
                rule(r.port, &r.protocol, v4, v6)
            })
            .collect();
        let mut egress = rule(0, "-1", vec!["0.0.0.0/0"], vec![]);
        egress["to_port"] = json!(0);
        resources.insert(
            "aws_security_group".to_string(),
            literal_json(json!({ "ingress": {
                "name": group.name,
                "description": group.description,
                "ingress": ingress,
                "egress": [egress],
                "tags": group.tags,
            }})),
        );
    }
    let mut instances = serde_json::Map::new();
    let mut states = serde_json::Map::new();
    let mut outputs = serde_json::Map::new();
    for instance in &config.instances {
        let resource = instance.resource();
        let mut tags: BTreeMap<&str, &str> =
            instance.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        tags.insert("Name", &instance.name);
        tags.insert(TAG_INSTANCE_ID, &instance.id);
        tags.insert(TAG_JOB_ID, config.workspace);
        tags.insert(TAG_NAMESPACE, &spec.namespace);
        let mut body = json!({
            "ami": spec.ami,
            "instance_type": spec.instance_type,
            "tags": tags,
            "volume_tags": tags,
            "root_block_device": {
                "volume_size": spec.storage_gb,
                "volume_type": "gp3",
                "delete_on_termination": true,
            },
        });
        if let Some(key_name) = &spec.key_name {
            body["key_name"] = json!(key_name);
        }
        if let Some(user_data) = &spec.user_data {
            body["user_data"] = json!(user_data);
        }
        if config.burstable {
            body["credit_specification"] = json!({ "cpu_credits": spec.cpu_credits.as_str() });
        }
        // Everything so far came from the request; corral's own references come after.
        let mut body = literal_json(body);
        let mut security_groups: Vec<Value> =
            spec.security_group_ids.iter().map(|id| json!(literal(id))).collect();
        if !spec.ingress.is_empty() {
            security_groups.push(json!(format!("${{{SECURITY_GROUP}.id}}")));
        }
        if !security_groups.is_empty() {
            body["vpc_security_group_ids"] = Value::Array(security_groups);
        }
        if let Some(state) = instance.state {
            states.insert(
                resource.clone(),
                json!({ "instance_id": format!("${{aws_instance.{resource}.id}}"), "state": state }),
            );
        }
        outputs.insert(
            resource.clone(),
            json!({
                "id": format!("${{aws_instance.{resource}.id}}"),
                "public_ip": format!("${{aws_instance.{resource}.public_ip}}"),
                "private_ip": format!("${{aws_instance.{resource}.private_ip}}"),
            }),
        );
        instances.insert(resource, body);
    }
    if !instances.is_empty() {
        resources.insert("aws_instance".to_string(), Value::Object(instances));
    }
    if !states.is_empty() {
        resources.insert("aws_ec2_instance_state".to_string(), Value::Object(states));
    }
    let mut document = json!({
        "terraform": {
            "required_providers": { "aws": { "source": "hashicorp/aws", "version": ">= 5.0" } },
            "backend": { "http": {
                "address": config.state_address,
                "lock_address": config.state_address,
                "unlock_address": config.state_address,
            }},
        },
        "provider": { "aws": provider },
        "output": { "instances": { "value": outputs } },
    });
    if !resources.is_empty() {
        document["resource"] = Value::Object(resources);
    }
    if !config.imports.is_empty() {
        document["import"] =
            config.imports.iter().map(|(to, id)| json!({ "to": to, "id": literal(id) })).collect();
    }
    document
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CpuCredits, IngressRule};

    fn spec() -> LaunchSpec {
        LaunchSpec {
            names: vec!["web-1".into(), "web-2".into()],
            namespace: "alpha".into(),
            region: "us-east-1".into(),
            ami: "ami-0123".into(),
            instance_type: "t3.micro".into(),
            storage_gb: 12,
            key_name: Some("deploy".into()),
            security_group_ids: vec!["sg-0aa".into()],
            user_data: Some("#!/bin/sh\necho hi\n".into()),
            tags: BTreeMap::from([("team".into(), "blue".into())]),
            cpu_credits: CpuCredits::Standard,
            ingress: vec![IngressRule {
                port: 22,
                protocol: "tcp".into(),
                cidr: "1.2.3.4/32".into(),
            }],
        }
    }

    #[test]
    fn the_configuration_declares_what_the_native_backend_would_launch() {
        let spec = spec();
        let instances = vec![
            ConfigInstance {
                id: "c1".into(),
                name: "web-1".into(),
                tags: spec.tags.clone(),
                launch_index: 0,
                state: Some("running"),
            },
            ConfigInstance {
                id: "c2".into(),
                name: "web-2".into(),
                tags: BTreeMap::new(),
                launch_index: 1,
                state: None,
            },
        ];
        let config = configuration(&WorkspaceConfig {
            workspace: "job-1",
            state_address: "http://127.0.0.1:1/v1/terraform/state/job-1".into(),
            endpoint_url: Some("http://127.0.0.1:2"),
            spec: &spec,
            instances,
            burstable: true,
            imports: vec![("aws_instance.i1".into(), "i-0abc".into())],
        });

        let http = &config["terraform"]["backend"]["http"];
        assert_eq!(http["address"], "http://127.0.0.1:1/v1/terraform/state/job-1");
        assert!(http.get("password").is_none(), "credentials come from the environment");
        assert_eq!(config["provider"]["aws"]["endpoints"]["ec2"], "http://127.0.0.1:2");
        let web1 = &config["resource"]["aws_instance"]["i0"];
        assert_eq!(web1["tags"]["Name"], "web-1");
        assert_eq!(web1["tags"]["corral:instance-id"], "c1");
        assert_eq!(web1["tags"]["corral:job-id"], "job-1");
        assert_eq!(web1["tags"]["team"], "blue");
        assert_eq!(web1["root_block_device"]["volume_size"], 12);
        assert_eq!(web1["key_name"], "deploy");
        assert_eq!(web1["user_data"], "#!/bin/sh\necho hi\n");
        assert_eq!(web1["credit_specification"]["cpu_credits"], "standard");
        assert_eq!(
            web1["vpc_security_group_ids"],
            json!(["sg-0aa", "${aws_security_group.ingress.id}"])
        );
        let group = &config["resource"]["aws_security_group"]["ingress"];
        assert_eq!(group["ingress"][0]["cidr_blocks"], json!(["1.2.3.4/32"]));
        assert_eq!(group["egress"][0]["protocol"], "-1");
        let states = config["resource"]["aws_ec2_instance_state"].as_object().unwrap();
        assert_eq!(states.keys().collect::<Vec<_>>(), ["i0"], "only the instances the run sets");
        assert_eq!(states["i0"]["instance_id"], "${aws_instance.i0.id}");
        assert_eq!(config["import"], json!([{ "to": "aws_instance.i1", "id": "i-0abc" }]));
        assert_eq!(config["output"]["instances"]["value"]["i1"]["id"], "${aws_instance.i1.id}");
    }

    #[test]
    fn user_text_is_never_a_template() {
        let mut spec = spec();
        spec.user_data = Some("echo ${file(\"/etc/passwd\")} %{if true}x%{endif}".into());
        spec.tags = BTreeMap::from([("${k}".into(), "$${v} %%{w}".into())]);
        spec.security_group_ids = vec!["sg-${x}".into()];
        let instances = vec![ConfigInstance {
            id: "c1".into(),
            name: "web-1".into(),
            tags: spec.tags.clone(),
            launch_index: 0,
            state: None,
        }];
        let config = configuration(&WorkspaceConfig {
            workspace: "job-1",
            state_address: "http://127.0.0.1:1/v1/terraform/state/job-1".into(),
            endpoint_url: None,
            spec: &spec,
            instances,
            burstable: false,
            imports: Vec::new(),
        });
        let web1 = &config["resource"]["aws_instance"]["i0"];
        assert_eq!(web1["user_data"], "echo $${file(\"/etc/passwd\")} %%{if true}x%%{endif}");
        assert_eq!(web1["tags"]["$${k}"], "$$${v} %%%{w}");
        assert_eq!(web1["volume_tags"]["$${k}"], "$$${v} %%%{w}");
        // corral's own references stay references.
        assert_eq!(
            web1["vpc_security_group_ids"],
            json!(["sg-$${x}", "${aws_security_group.ingress.id}"])
        );
    }

    #[test]
    fn without_an_emulator_the_provider_talks_to_aws() {
        let mut spec = spec();
        spec.ingress.clear();
        spec.security_group_ids.clear();
        let config = configuration(&WorkspaceConfig {
            workspace: "job-1",
            state_address: "https://corral.example/v1/terraform/state/job-1".into(),
            endpoint_url: None,
            spec: &spec,
            instances: Vec::new(),
            burstable: false,
            imports: Vec::new(),
        });
        assert_eq!(config["provider"]["aws"], json!({ "region": "us-east-1" }));
        assert!(config.get("resource").is_none() && config.get("import").is_none());
    }

    #[tokio::test]
    async fn a_run_has_its_credentials_and_nothing_else_of_corrals_environment() {
        let dir = tempfile::tempdir().unwrap();
        // A stand-in for terraform that prints what it was given: its arguments, its
        // credentials as given and encoded, and every variable of its environment.
        let binary = dir.path().join("terraform");
        std::fs::write(
            &binary,
            "#!/bin/sh\necho \"$1 token=$TF_HTTP_PASSWORD secret=$AWS_SECRET_ACCESS_KEY \
             id=$AWS_ACCESS_KEY_ID config=$TF_CLI_CONFIG_FILE\"\n\
             printf 'basic=%s\\n' \"$(printf '%s' \"corral:$TF_HTTP_PASSWORD\" | base64 -w0)\"\n\
             echo url=wJalrXUtnFEMI%2FK7MDENG\n\
             echo home=$HOME\n\
             echo gogc=$GOGC\n\
             env | cut -d= -f1 | sed 's/^/variable /'\nexit 3\n",
        )
        .unwrap();
        std::fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = crate::storage::Store::connect(&url).await.unwrap();
        let auth =
            Authenticator::new(store, &crate::config::AuthSettings::default()).await.unwrap();
        let settings = TerraformSettings {
            cli_config: Some("/etc/mirror.tfrc".into()),
            work_dir: Some(dir.path().join("runs").display().to_string()),
            ..TerraformSettings::default()
        };
        let data_dir = dir.path().join("data");
        let terraform =
            Terraform::new(&settings, binary, "http://h:1/".into(), &data_dir, Arc::new(auth))
                .await;
        assert_eq!(terraform.state_address("ws-1"), "http://h:1/v1/terraform/state/ws-1");
        let credentials = vec![
            ("AWS_ACCESS_KEY_ID".to_string(), "AKIDEXAMPLE".to_string()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), "wJalrXUtnFEMI/K7MDENG".to_string()),
        ];

        let session = terraform.session("ws-1", "job-1", credentials).await.unwrap();
        let output = session.init().await.unwrap();

        assert!(!output.success);
        assert!(session.path().starts_with(dir.path().join("runs")));
        let lines: Vec<&str> = output.text.lines().collect();
        assert_eq!(
            lines[..3],
            [
                "init token=[redacted] secret=[redacted] id=AKIDEXAMPLE config=/etc/mirror.tfrc",
                "basic=[redacted]",
                "url=[redacted]",
            ]
        );
        assert_eq!(lines[3], format!("home={}", session.path().display()));
        // Go's collector runs less often than its default unless corral's environment says.
        let gogc = std::env::var("GOGC").unwrap_or_else(|_| DEFAULT_GOGC.to_string());
        assert_eq!(lines[4], format!("gogc={gogc}"));
        // The test process has CARGO_*, RUST_* and more: none of it reaches the run.
        let allowed = |name: &str| {
            INHERITED_ENV.contains(&name)
                || ["HOME", "CHECKPOINT_DISABLE", "PWD", "SHLVL", "OLDPWD", "_"].contains(&name)
                || name.starts_with("TF_")
                || name.starts_with("AWS_")
        };
        let variables: Vec<&str> =
            lines.iter().filter_map(|line| line.strip_prefix("variable ")).collect();
        assert!(variables.contains(&"TF_HTTP_PASSWORD"), "{variables:?}");
        let leaked: Vec<&&str> = variables.iter().filter(|name| !allowed(name)).collect();
        assert!(leaked.is_empty(), "the run inherited {leaked:?}");
        // The provider cache is corral's user's alone.
        let cache = std::fs::metadata(data_dir.join("terraform-plugins")).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&cache.permissions()) & 0o777, 0o700);
    }

    #[test]
    fn long_output_keeps_its_end() {
        let text = format!("{}END", "é".repeat(10_000));
        let kept = tail(&text, 101);
        assert!(kept.ends_with("END") && kept.starts_with("[… earlier output left out]"));
    }
}
