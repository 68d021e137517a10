//! The client commands: one clap subcommand per API resource, each a thin layer over the HTTP
//! API that prints what it answered.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::cli::client::{Client, Failure, Outcome};
use crate::cli::output::{Column, Out, scalar};
use crate::cli::wait;

#[derive(Debug, Subcommand)]
pub enum InstancesCommand {
    /// Lists instances, following every page (newest first).
    ///
    /// Examples:
    ///   corral instances list --state running --tag team=blue
    ///   corral instances list -o json | jq '.[].public_ip'
    List(ListInstances),
    /// Shows instances by corral id or EC2 id (i-…).
    ///
    /// Example: corral instances get i-0123456789abcdef0
    Get(Ids),
    /// Creates instances (one job); with --count N, named NAME-1 … NAME-N.
    ///
    /// Example:
    ///   corral instances create web --ami ami-04681a1dbd79675a5 --instance-type t3.micro \
    ///     --storage-gb 8 --count 2 --tag team=blue --wait
    Create(CreateInstances),
    /// Starts instances (one job for all of them).
    ///
    /// Example: corral instances start i-0abc,i-0def --wait
    Start(Action),
    /// Stops instances (one job for all of them).
    ///
    /// Example: corral instances stop web-1-id web-2-id --wait
    Stop(Action),
    /// Reboots instances (one job for all of them).
    Reboot(Action),
    /// Terminates instances after showing them and asking (or with --yes).
    ///
    /// Example: corral instances terminate i-0abc --yes --wait
    Terminate(Terminate),
    /// Renames an instance or changes its tags (applied in the cloud by a job).
    ///
    /// Example: corral instances update i-0abc --name web-blue --tag team=blue
    Update(UpdateInstance),
}

#[derive(Debug, Args)]
pub struct ListInstances {
    #[arg(long)]
    pub namespace: Option<String>,
    /// provisioning, pending, running, stopping, stopped, shutting-down, terminated, failed, missing
    #[arg(long)]
    pub state: Option<String>,
    /// Only instances with this tag (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    #[arg(long)]
    pub name: Option<String>,
    /// At most this many instances.
    #[arg(long)]
    pub limit: Option<usize>,
}

#[derive(Debug, Args)]
pub struct Ids {
    /// Ids, space- or comma-separated.
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,
}

#[derive(Debug, Args)]
pub struct Action {
    /// corral ids or EC2 ids, space- or comma-separated.
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,
    /// Follow the job until it ends.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct Terminate {
    #[command(flatten)]
    pub action: Action,
    /// Do not ask for confirmation.
    #[arg(short, long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct CreateInstances {
    /// Name of the instance, or the prefix of their names with --count.
    pub name: String,
    #[arg(long)]
    pub ami: String,
    #[arg(long)]
    pub instance_type: String,
    /// Root volume size in GiB (default from the policy).
    #[arg(long)]
    pub storage_gb: Option<i64>,
    #[arg(long, default_value_t = 1)]
    pub count: i64,
    #[arg(long)]
    pub region: Option<String>,
    #[arg(long)]
    pub namespace: Option<String>,
    /// Existing EC2 key pair, for SSH.
    #[arg(long)]
    pub key_name: Option<String>,
    /// A tag (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// A file whose contents run at first boot (a shell script or cloud-init).
    #[arg(long, value_name = "FILE")]
    pub user_data_file: Option<std::path::PathBuf>,
    /// Lets traffic in (repeatable): PORT[/udp][=CIDR]; without a CIDR, from this machine's
    /// address alone (as the server sees it). corral makes a security group for the request.
    #[arg(long = "ingress", value_name = "PORT[/PROTO][=CIDR]")]
    pub ingress: Vec<String>,
    /// aws (the AWS API) or terraform; default: the namespace's, else the server's.
    #[arg(long)]
    pub backend: Option<String>,
    /// Sent as Idempotency-Key: the same key never creates twice.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Follow the job until it ends.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct UpdateInstance {
    pub id: String,
    #[arg(long)]
    pub name: Option<String>,
    /// Replaces the instance's tags with these (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Lists jobs, newest first.
    ///
    /// Example: corral jobs list --status failed
    List {
        /// queued, running, succeeded or failed
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Shows jobs.
    Get(Ids),
    /// Follows a job until it ends; exits 1 if it failed.
    ///
    /// Example: corral jobs wait 0193…
    Wait { id: String },
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[arg(long)]
    pub namespace: Option<String>,
    #[arg(long)]
    pub actor: Option<String>,
    /// e.g. instance.create, instance.state, user.update
    #[arg(long)]
    pub action: Option<String>,
    #[arg(long)]
    pub target: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub page: i64,
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
}

#[derive(Debug, Subcommand)]
pub enum NamespacesCommand {
    /// Lists namespaces with their quotas and use.
    List,
    Get {
        name: String,
    },
    /// Creates a namespace (admins).
    ///
    /// Example: corral namespaces create team-a --max-instances 20 --max-vcpus 40
    Create {
        name: String,
        #[arg(long)]
        max_instances: Option<i64>,
        #[arg(long)]
        max_vcpus: Option<i64>,
        /// Backend of create requests that name none (default: the server's).
        #[arg(long, value_parser = ["aws", "terraform"])]
        default_backend: Option<String>,
    },
    /// Sets a namespace's quotas (an omitted one becomes unlimited) and, with
    /// --default-backend only, keeps the quotas and changes the default backend.
    ///
    /// Example: corral namespaces update team-a --default-backend terraform
    Update {
        name: String,
        #[arg(long)]
        max_instances: Option<i64>,
        #[arg(long)]
        max_vcpus: Option<i64>,
        /// Backend of create requests that name none; "server" follows the server's default.
        #[arg(long, value_parser = ["aws", "terraform", "server"])]
        default_backend: Option<String>,
    },
    /// Terminates every instance of a namespace after showing them and asking (or --yes).
    Terminate {
        name: String,
        #[arg(short, long)]
        yes: bool,
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Lists users (admins).
    List,
    Get {
        username: String,
    },
    /// Creates a user; the password is read from stdin (or asked for on a terminal).
    ///
    /// Example: echo 'a long passphrase' | corral users create dana --role team-a=operator
    Create {
        username: String,
        #[arg(long)]
        admin: bool,
        /// A role in a namespace, operator or viewer (repeatable).
        #[arg(long = "role", value_name = "NAMESPACE=ROLE")]
        roles: Vec<String>,
    },
    /// Changes a user's roles, admin flag or (with --password) password, read from stdin.
    Update {
        username: String,
        #[arg(long)]
        admin: Option<bool>,
        /// Replaces the user's roles (repeatable).
        #[arg(long = "role", value_name = "NAMESPACE=ROLE")]
        roles: Vec<String>,
        /// Read a new password from stdin; for one's own account, the current password
        /// first (asked for, or the line before the new one).
        #[arg(long)]
        password: bool,
    },
    Delete {
        username: String,
        #[arg(short, long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyPairsCommand {
    /// Lists key pairs of the namespaces you can see.
    List,
    Get {
        name: String,
    },
    /// Generates a key pair and saves its private key to a new file (mode 0600); corral keeps
    /// only the public key. With --public-key-file, registers that key instead.
    ///
    /// Examples:
    ///   corral keypairs create deploy              # writes ./deploy.pem
    ///   corral keypairs create laptop --public-key-file ~/.ssh/id_ed25519.pub
    Create {
        name: String,
        #[arg(long)]
        namespace: Option<String>,
        /// An OpenSSH public key to register (ssh-ed25519 or ssh-rsa).
        #[arg(long, value_name = "FILE")]
        public_key_file: Option<std::path::PathBuf>,
        /// Where the generated private key goes (default NAME.pem); never overwritten.
        #[arg(long, value_name = "FILE")]
        private_key_file: Option<std::path::PathBuf>,
    },
    /// Forgets a key pair and deletes it in every region (a job).
    Delete {
        name: String,
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApiKeysCommand {
    /// Lists API keys (yours; everyone's for admins).
    List,
    /// Creates an API key acting as you; the key is printed this once.
    ///
    /// Example: corral api-keys create ci --expires-at 2027-06-30T00:00:00Z
    Create {
        name: String,
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// Revokes an API key at once.
    Revoke { id: String },
}

const INSTANCE_COLUMNS: &[Column] = &[
    Column::field("ID", "id"),
    Column::field("CLOUD ID", "cloud_id"),
    Column::field("NAME", "name"),
    Column::field("STATE", "state"),
    Column::field("TYPE", "instance_type"),
    Column::field("REGION", "region"),
    Column::field("PUBLIC IP", "public_ip"),
    Column::field("NAMESPACE", "namespace"),
    Column::field("PRIVATE IP", "private_ip").wide(),
    Column::field("AMI", "ami").wide(),
    Column::field("STORAGE GB", "storage_gb").wide(),
    Column::field("KEY", "key_name").wide(),
    Column::field("TAGS", "tags").wide(),
    Column::field("CREATED", "created_at").wide(),
];

const JOB_COLUMNS: &[Column] = &[
    Column::field("ID", "id"),
    Column::field("KIND", "kind"),
    Column::field("STATUS", "status"),
    Column::field("ATTEMPTS", "attempts"),
    Column::field("NAMESPACE", "namespace"),
    Column::computed("INSTANCES", "instances", |job| {
        let names: Vec<String> =
            job["instances"].as_array().into_iter().flatten().map(|i| scalar(&i["name"])).collect();
        names.join(",")
    }),
    Column::field("CREATED", "created_at"),
    Column::field("ACTOR", "actor").wide(),
    Column::field("FINISHED", "finished_at").wide(),
    Column::field("ERROR", "error").wide(),
];

const NAMESPACE_COLUMNS: &[Column] = &[
    Column::field("NAME", "name"),
    Column::computed("INSTANCES", "instances", |ns| {
        format!("{}/{}", scalar(&ns["usage"]["instances"]), limit(&ns["quota"]["instances"]))
    }),
    Column::computed("VCPUS", "vcpus", |ns| {
        format!("{}/{}", scalar(&ns["usage"]["vcpus"]), limit(&ns["quota"]["vcpus"]))
    }),
    Column::computed("BACKEND", "default_backend", |ns| {
        ns["default_backend"].as_str().unwrap_or("(server)").to_string()
    }),
    Column::field("CREATED", "created_at"),
];

const USER_COLUMNS: &[Column] = &[
    Column::field("USERNAME", "username"),
    Column::field("ADMIN", "admin"),
    Column::field("ROLES", "roles"),
    Column::field("CREATED", "created_at"),
];

const API_KEY_COLUMNS: &[Column] = &[
    Column::field("ID", "id"),
    Column::field("PREFIX", "prefix"),
    Column::field("NAME", "name"),
    Column::field("USER", "username"),
    Column::field("EXPIRES", "expires_at"),
    Column::field("REVOKED", "revoked_at"),
    Column::field("KEY", "key"),
];

const KEY_PAIR_COLUMNS: &[Column] = &[
    Column::field("NAME", "name"),
    Column::field("NAMESPACE", "namespace"),
    Column::field("TYPE", "key_type"),
    Column::field("FINGERPRINT", "fingerprint"),
    Column::field("CREATED", "created_at"),
];

const AUDIT_COLUMNS: &[Column] = &[
    Column::field("ID", "id"),
    Column::field("TIME", "timestamp"),
    Column::field("ACTOR", "actor"),
    Column::field("ACTION", "action"),
    Column::field("TARGET", "target"),
    Column::field("NAMESPACE", "namespace"),
    Column::computed("OLD", "old_value", |event| compact(&event["old_value"])).wide(),
    Column::computed("NEW", "new_value", |event| compact(&event["new_value"])).wide(),
    Column::field("REQUEST", "request_id").wide(),
];

fn limit(value: &Value) -> String {
    if value.is_null() { "∞".to_string() } else { scalar(value) }
}

fn compact(value: &Value) -> String {
    if value.is_null() { String::new() } else { value.to_string() }
}

/// Ids from arguments that may each hold several, comma-separated.
pub fn split_ids(args: &[String]) -> Vec<String> {
    args.iter()
        .flat_map(|arg| arg.split(','))
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .collect()
}

/// `KEY=VALUE` arguments as a map, naming the flag of a malformed one.
fn pairs(flag: &str, args: &[String]) -> Outcome<BTreeMap<String, String>> {
    args.iter()
        .map(|arg| match arg.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
            _ => Err(Failure::usage(format!("--{flag} '{arg}': expected KEY=VALUE"))),
        })
        .collect()
}

fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// `?a=b&c=d` from the pairs whose value is set.
fn query(params: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = params
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|value| format!("{name}={}", encode(value))))
        .collect();
    if parts.is_empty() { String::new() } else { format!("?{}", parts.join("&")) }
}

/// Whether progress can be drawn live (stderr is a terminal).
fn live() -> bool {
    std::io::stderr().is_terminal()
}

/// Prints a job just stored: at once, or after following it with `--wait`; a failed job is a
/// failed command.
pub async fn job_result(client: &Client, out: &Out, job: Value, wait: bool) -> Outcome<()> {
    let job = if wait && !is_finished(&job) {
        wait::follow(client, job["id"].as_str().unwrap_or_default(), live()).await?
    } else {
        job
    };
    print_job(out, &job, wait)?;
    if job["status"] == "failed" {
        return Err(Failure::failed(format!(
            "job {} failed: {}",
            scalar(&job["id"]),
            scalar(&job["error"])
        )));
    }
    Ok(())
}

fn is_finished(job: &Value) -> bool {
    matches!(job["status"].as_str(), Some("succeeded" | "failed"))
}

/// A job: as JSON/YAML; or in a table, followed (once finished) by its instances with their
/// addresses and SSH commands.
fn print_job(out: &Out, job: &Value, finished: bool) -> std::io::Result<()> {
    if out.quiet
        || !matches!(
            out.format,
            crate::cli::output::Format::Table | crate::cli::output::Format::Wide
        )
    {
        return out.item(job, JOB_COLUMNS);
    }
    out.item(job, JOB_COLUMNS)?;
    if !finished {
        return out.line(&format!("follow it with: corral jobs wait {}", scalar(&job["id"])));
    }
    let instances = job["instances"].as_array().cloned().unwrap_or_default();
    if instances.is_empty() {
        return Ok(());
    }
    out.line("")?;
    const FINISHED_COLUMNS: &[Column] = &[
        Column::field("ID", "id"),
        Column::field("CLOUD ID", "cloud_id"),
        Column::field("NAME", "name"),
        Column::field("STATE", "state"),
        Column::field("PUBLIC IP", "public_ip"),
        Column::field("PRIVATE IP", "private_ip"),
    ];
    out.items(&instances, FINISHED_COLUMNS)?;
    for instance in &instances {
        if let Some(ssh) = instance["ssh_command"].as_str()
            && instance["state"] == "running"
        {
            out.line(&format!("{ssh}    # {}", scalar(&instance["name"])))?;
        }
    }
    Ok(())
}

pub async fn instances(client: &Client, out: &Out, command: InstancesCommand) -> Outcome<()> {
    match command {
        InstancesCommand::List(list) => {
            let filters =
                [("namespace", list.namespace), ("state", list.state), ("name", list.name)];
            let mut path = format!("/v1/instances{}", query(&filters));
            for (key, value) in pairs("tag", &list.tags)? {
                path.push(if path.contains('?') { '&' } else { '?' });
                path.push_str(&format!("tag={}", encode(&format!("{key}:{value}"))));
            }
            let items = client.list_all(&path, list.limit).await?;
            out.items(&items, INSTANCE_COLUMNS)?;
        }
        InstancesCommand::Get(ids) => {
            let mut items = Vec::new();
            for id in split_ids(&ids.ids) {
                items.push(client.get(&format!("/v1/instances/{}", encode(&id))).await?);
            }
            show_many(out, &items, INSTANCE_COLUMNS)?;
        }
        InstancesCommand::Create(create) => {
            let body = create_body(&create)?;
            let path = match &create.backend {
                Some(backend) => format!("/v1/instances?backend={}", encode(backend)),
                None => "/v1/instances".to_string(),
            };
            let mut request = client.request(reqwest::Method::POST, &path).json(&body);
            if let Some(key) = &create.idempotency_key {
                request = request.header("idempotency-key", key);
            }
            let job = client.send(request).await?;
            job_result(client, out, job, create.wait).await?;
        }
        InstancesCommand::Start(action) => act(client, out, "start", action).await?,
        InstancesCommand::Stop(action) => act(client, out, "stop", action).await?,
        InstancesCommand::Reboot(action) => act(client, out, "reboot", action).await?,
        InstancesCommand::Terminate(terminate) => {
            if !terminate.yes {
                let ids = split_ids(&terminate.action.ids);
                require_terminal("terminate", ids.len())?;
                let mut doomed = Vec::new();
                for id in ids {
                    doomed.push(client.get(&format!("/v1/instances/{}", encode(&id))).await?);
                }
                confirm(&doomed, "terminate")?;
            }
            act(client, out, "terminate", terminate.action).await?;
        }
        InstancesCommand::Update(update) => {
            let mut body = json!({});
            if let Some(name) = update.name {
                body["name"] = json!(name);
            }
            if !update.tags.is_empty() {
                body["tags"] = json!(pairs("tag", &update.tags)?);
            }
            if body.as_object().is_some_and(|body| body.is_empty()) {
                return Err(Failure::usage("nothing to change: give --name or --tag"));
            }
            let job = client.patch(&format!("/v1/instances/{}", encode(&update.id)), &body).await?;
            job_result(client, out, job, update.wait).await?;
        }
    }
    Ok(())
}

fn create_body(create: &CreateInstances) -> Outcome<Value> {
    if create.count < 1 {
        return Err(Failure::usage("--count must be at least 1"));
    }
    let mut body = json!({
        "ami": create.ami,
        "instance_type": create.instance_type,
        "count": create.count,
    });
    let name_field = if create.count > 1 { "name_prefix" } else { "name" };
    body[name_field] = json!(create.name);
    for (field, value) in [
        ("region", &create.region),
        ("namespace", &create.namespace),
        ("key_name", &create.key_name),
    ] {
        if let Some(value) = value {
            body[field] = json!(value);
        }
    }
    if let Some(storage) = create.storage_gb {
        body["storage_gb"] = json!(storage);
    }
    if !create.tags.is_empty() {
        body["tags"] = json!(pairs("tag", &create.tags)?);
    }
    if let Some(path) = &create.user_data_file {
        let script = std::fs::read_to_string(path)
            .map_err(|err| Failure::usage(format!("--user-data-file {}: {err}", path.display())))?;
        body["user_data"] = json!(script);
    }
    if !create.ingress.is_empty() {
        let rules: Outcome<Vec<Value>> =
            create.ingress.iter().map(|rule| ingress_rule(rule)).collect();
        body["ingress"] = json!(rules?);
    }
    Ok(body)
}

/// `22`, `53/udp=10.0.0.0/8`, `443=0.0.0.0/0` as the API's ingress rule.
fn ingress_rule(text: &str) -> Outcome<Value> {
    let (port, cidr) = text.split_once('=').unwrap_or((text, "caller"));
    let (port, protocol) = port.split_once('/').unwrap_or((port, "tcp"));
    let port: i64 = port.parse().map_err(|_| {
        Failure::usage(format!(
            "--ingress {text}: expected PORT[/PROTO][=CIDR], e.g. 22 or 53/udp=10.0.0.0/8"
        ))
    })?;
    Ok(json!({ "port": port, "protocol": protocol, "cidr": cidr }))
}

/// One job for a lifecycle action on many instances.
async fn act(client: &Client, out: &Out, action: &str, args: Action) -> Outcome<()> {
    let ids = split_ids(&args.ids);
    if ids.is_empty() {
        return Err(Failure::usage("no instance ids given"));
    }
    let job =
        client.post("/v1/instances/actions", &json!({ "action": action, "ids": ids })).await?;
    job_result(client, out, job, args.wait).await
}

/// Refuses to destroy without a terminal to ask on (the caller skips this with `--yes`).
fn require_terminal(verb: &str, count: usize) -> Outcome<()> {
    if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        return Ok(());
    }
    Err(Failure::usage(format!(
        "refusing to {verb} {count} instance(s) without confirmation: no terminal to ask on; \
         pass --yes"
    )))
}

/// Shows what is about to be destroyed and asks.
fn confirm(doomed: &[Value], verb: &str) -> Outcome<()> {
    let headers: Vec<String> =
        ["ID", "CLOUD ID", "NAME", "STATE", "NAMESPACE"].iter().map(|h| h.to_string()).collect();
    let rows: Vec<Vec<String>> = doomed
        .iter()
        .map(|i| {
            ["id", "cloud_id", "name", "state", "namespace"]
                .iter()
                .map(|f| scalar(&i[*f]))
                .collect()
        })
        .collect();
    eprint!("{}", crate::cli::output::table(&headers, &rows));
    if ask(&format!("{verb} these {} instance(s)?", doomed.len()))? {
        Ok(())
    } else {
        Err(Failure::failed("nothing was changed"))
    }
}

/// One item as an item, several as a list.
fn show_many(out: &Out, items: &[Value], columns: &[Column]) -> std::io::Result<()> {
    match items {
        [one] => out.item(one, columns),
        many => out.items(many, columns),
    }
}

pub async fn jobs(client: &Client, out: &Out, command: JobsCommand) -> Outcome<()> {
    match command {
        JobsCommand::List { status, limit } => {
            let items = client
                .list_all(&format!("/v1/jobs{}", query(&[("status", status)])), limit)
                .await?;
            out.items(&items, JOB_COLUMNS)?;
        }
        JobsCommand::Get(ids) => {
            let mut items = Vec::new();
            for id in split_ids(&ids.ids) {
                items.push(client.get(&format!("/v1/jobs/{}", encode(&id))).await?);
            }
            show_many(out, &items, JOB_COLUMNS)?;
        }
        JobsCommand::Wait { id } => {
            let job = client.get(&format!("/v1/jobs/{}", encode(&id))).await?;
            job_result(client, out, job, true).await?;
        }
    }
    Ok(())
}

pub async fn policy(client: &Client, out: &Out) -> Outcome<()> {
    let policy = client.get("/v1/policy").await?;
    match out.format {
        crate::cli::output::Format::Json => out.item(&policy, &[])?,
        _ => out.line(crate::cli::output::yaml(&policy).trim_end())?,
    }
    Ok(())
}

pub async fn audit(client: &Client, out: &Out, args: AuditArgs) -> Outcome<()> {
    let path = format!(
        "/v1/audit{}",
        query(&[
            ("page", Some(args.page.to_string())),
            ("limit", Some(args.limit.to_string())),
            ("namespace", args.namespace),
            ("actor", args.actor),
            ("action", args.action),
            ("target", args.target),
        ])
    );
    let page = client.get(&path).await?;
    let logs = page["logs"].as_array().cloned().unwrap_or_default();
    out.items(&logs, AUDIT_COLUMNS)?;
    if !out.quiet
        && matches!(
            out.format,
            crate::cli::output::Format::Table | crate::cli::output::Format::Wide
        )
    {
        let total = page["total"].as_i64().unwrap_or_default();
        let pages = (total + args.limit - 1) / args.limit.max(1);
        eprintln!("page {} of {pages} ({total} events)", args.page);
    }
    Ok(())
}

pub async fn namespaces(client: &Client, out: &Out, command: NamespacesCommand) -> Outcome<()> {
    match command {
        NamespacesCommand::List => {
            let list = client.get("/v1/namespaces").await?;
            out.items(list["items"].as_array().map_or(&[][..], Vec::as_slice), NAMESPACE_COLUMNS)?;
        }
        NamespacesCommand::Get { name } => {
            out.item(
                &client.get(&format!("/v1/namespaces/{}", encode(&name))).await?,
                NAMESPACE_COLUMNS,
            )?;
        }
        NamespacesCommand::Create { name, max_instances, max_vcpus, default_backend } => {
            let body = json!({
                "name": name,
                "quota": { "instances": max_instances, "vcpus": max_vcpus },
                "default_backend": default_backend,
            });
            out.item(&client.post("/v1/namespaces", &body).await?, NAMESPACE_COLUMNS)?;
        }
        NamespacesCommand::Update { name, max_instances, max_vcpus, default_backend } => {
            let quota = json!({ "instances": max_instances, "vcpus": max_vcpus });
            let body = match default_backend.as_deref() {
                None => json!({ "quota": quota }),
                Some(backend) => {
                    let backend = (backend != "server").then_some(backend);
                    if max_instances.is_none() && max_vcpus.is_none() {
                        json!({ "default_backend": backend })
                    } else {
                        json!({ "quota": quota, "default_backend": backend })
                    }
                }
            };
            let path = format!("/v1/namespaces/{}", encode(&name));
            out.item(&client.patch(&path, &body).await?, NAMESPACE_COLUMNS)?;
        }
        NamespacesCommand::Terminate { name, yes, wait } => {
            if !yes {
                let path = format!("/v1/instances?namespace={}", encode(&name));
                let doomed: Vec<Value> = client
                    .list_all(&path, None)
                    .await?
                    .into_iter()
                    .filter(|i| !matches!(i["state"].as_str(), Some("terminated" | "failed")))
                    .collect();
                if !doomed.is_empty() {
                    require_terminal("terminate", doomed.len())?;
                    confirm(&doomed, "terminate")?;
                }
            }
            let job = client.delete(&format!("/v1/namespaces/{}/instances", encode(&name))).await?;
            job_result(client, out, job, wait).await?;
        }
    }
    Ok(())
}

pub async fn users(client: &Client, out: &Out, command: UsersCommand) -> Outcome<()> {
    match command {
        UsersCommand::List => {
            let list = client.get("/v1/users").await?;
            out.items(list["items"].as_array().map_or(&[][..], Vec::as_slice), USER_COLUMNS)?;
        }
        UsersCommand::Get { username } => {
            out.item(
                &client.get(&format!("/v1/users/{}", encode(&username))).await?,
                USER_COLUMNS,
            )?;
        }
        UsersCommand::Create { username, admin, roles } => {
            let password = read_secret("password for the new user")?;
            let body = json!({ "username": username, "password": password, "admin": admin, "roles": pairs("role", &roles)? });
            out.item(&client.post("/v1/users", &body).await?, USER_COLUMNS)?;
        }
        UsersCommand::Update { username, admin, roles, password } => {
            let mut body = json!({});
            if let Some(admin) = admin {
                body["admin"] = json!(admin);
            }
            if !roles.is_empty() {
                body["roles"] = json!(pairs("role", &roles)?);
            }
            if password {
                let me = client.get("/v1/me").await?;
                if me["username"].as_str() == Some(username.as_str()) {
                    body["current_password"] = json!(read_secret("current password")?);
                }
                body["password"] = json!(read_secret("new password")?);
            }
            let path = format!("/v1/users/{}", encode(&username));
            out.item(&client.patch(&path, &body).await?, USER_COLUMNS)?;
        }
        UsersCommand::Delete { username, yes } => {
            let confirmed = yes
                || (std::io::stdin().is_terminal() && ask(&format!("delete user {username}?"))?);
            if !confirmed {
                return Err(Failure::usage(format!(
                    "not deleting {username} without confirmation; pass --yes"
                )));
            }
            client.delete(&format!("/v1/users/{}", encode(&username))).await?;
            if !out.quiet {
                eprintln!("deleted user {username}");
            }
        }
    }
    Ok(())
}

pub async fn api_keys(client: &Client, out: &Out, command: ApiKeysCommand) -> Outcome<()> {
    match command {
        ApiKeysCommand::List => {
            let list = client.get("/v1/api-keys").await?;
            out.items(list["items"].as_array().map_or(&[][..], Vec::as_slice), API_KEY_COLUMNS)?;
        }
        ApiKeysCommand::Create { name, expires_at } => {
            let body = json!({ "name": name, "expires_at": expires_at });
            let created = client.post("/v1/api-keys", &body).await?;
            if out.quiet {
                out.line(&scalar(&created["key"]))?;
            } else {
                out.item(&created, API_KEY_COLUMNS)?;
                eprintln!("the key is shown this once: keep it now");
            }
        }
        ApiKeysCommand::Revoke { id } => {
            let revoked = client.delete(&format!("/v1/api-keys/{}", encode(&id))).await?;
            out.item(&revoked, API_KEY_COLUMNS)?;
        }
    }
    Ok(())
}

pub async fn key_pairs(client: &Client, out: &Out, command: KeyPairsCommand) -> Outcome<()> {
    match command {
        KeyPairsCommand::List => {
            let list = client.get("/v1/keypairs").await?;
            out.items(list["items"].as_array().map_or(&[][..], Vec::as_slice), KEY_PAIR_COLUMNS)?;
        }
        KeyPairsCommand::Get { name } => {
            let pair = client.get(&format!("/v1/keypairs/{}", encode(&name))).await?;
            out.item(&pair, KEY_PAIR_COLUMNS)?;
        }
        KeyPairsCommand::Create { name, namespace, public_key_file, private_key_file } => {
            let mut body = json!({ "name": name, "namespace": namespace });
            let mut private_file = None;
            match public_key_file {
                Some(path) => {
                    let key = std::fs::read_to_string(&path).map_err(|err| {
                        Failure::usage(format!("--public-key-file {}: {err}", path.display()))
                    })?;
                    body["public_key"] = json!(key.trim());
                }
                None => {
                    // Opened before the request, so that a key is never made with nowhere to go.
                    let path = private_key_file.unwrap_or_else(|| format!("{name}.pem").into());
                    let file = new_private_file(&path)?;
                    private_file = Some((path, file));
                }
            }
            let created = match client.post("/v1/keypairs", &body).await {
                Ok(created) => created,
                Err(failure) => {
                    if let Some((path, _)) = &private_file {
                        let _ = std::fs::remove_file(path);
                    }
                    return Err(failure);
                }
            };
            if let (Some((path, mut file)), Some(key)) =
                (private_file, created["private_key"].as_str())
            {
                std::io::Write::write_all(&mut file, key.as_bytes())?;
                eprintln!(
                    "private key saved to {} (mode 0600); corral does not keep it",
                    path.display()
                );
            }
            out.item(&created, KEY_PAIR_COLUMNS)?;
        }
        KeyPairsCommand::Delete { name, wait } => {
            let job = client.delete(&format!("/v1/keypairs/{}", encode(&name))).await?;
            job_result(client, out, job, wait).await?;
        }
    }
    Ok(())
}

/// A new file only its owner can read; an existing file is never overwritten.
fn new_private_file(path: &std::path::Path) -> Outcome<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(|err| {
        Failure::usage(format!("cannot write the private key to {}: {err}", path.display()))
    })
}

/// A yes/no question on the terminal.
fn ask(question: &str) -> Outcome<bool> {
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

/// A secret: asked for without echo on a terminal, else one line of stdin.
pub fn read_secret(what: &str) -> Outcome<String> {
    let secret = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("{what}: "))?
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    if secret.is_empty() {
        return Err(Failure::usage(format!("no {what} given")));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_may_be_spaced_or_comma_separated() {
        let args = vec!["i-1,i-2".to_string(), " i-3 ".to_string(), ",".to_string()];
        assert_eq!(split_ids(&args), ["i-1", "i-2", "i-3"]);
    }

    #[test]
    fn tags_must_be_key_value_pairs() {
        let good = pairs("tag", &["team=blue".to_string(), "empty=".to_string()]).unwrap();
        assert_eq!(good["team"], "blue");
        assert_eq!(good["empty"], "");
        let bad = pairs("tag", &["team".to_string()]).unwrap_err();
        assert!(bad.message.contains("--tag 'team'"), "{}", bad.message);
    }
}
