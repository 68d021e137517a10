//! `corral instances`: list, show, create, update, and the lifecycle actions, single and in
//! bulk (`--wait` follows the job).

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{confirm, encode, job_result, pairs, query, require_terminal, show_many, split_ids};
use crate::cli::client::{Client, Failure, Outcome};
use crate::cli::output::{Column, Out, cell};
use crate::wire::InstanceBody;

#[derive(Debug, Subcommand)]
pub enum InstancesCommand {
    /// Lists instances, following every page (newest first): the live ones, unless --all or
    /// --state says otherwise.
    ///
    /// Example: corral instances list --state running --tag team=blue
    ///
    /// Example: corral instances list --all
    ///
    /// Example: corral instances list -o json --namespace team-a
    List(ListInstances),
    /// Shows instances by corral id, EC2 id (i-…) or name.
    ///
    /// Example: corral instances get i-0123456789abcdef0
    Get(Ids),
    /// Creates instances (one job); with --count N, named NAME-1 … NAME-N.
    ///
    /// Example: corral instances create web --ami ami-04681a1dbd79675a5 --instance-type t3.micro --count 2 --tag team=blue --wait
    ///
    /// Example: corral instances create app --ami ami-04681a1dbd79675a5 --instance-type t3.micro --key-name deploy --ingress 22 --backend terraform
    Create(CreateInstances),
    /// Starts instances (one job for all of them).
    ///
    /// Example: corral instances start i-0abc,i-0def --wait
    Start(Action),
    /// Stops instances (one job for all of them).
    ///
    /// Example: corral instances stop i-0abc i-0def --wait
    Stop(Action),
    /// Reboots instances (one job for all of them).
    ///
    /// Example: corral instances reboot i-0abc --wait
    Reboot(Action),
    /// Terminates instances after showing them and asking (or with --yes).
    ///
    /// Example: corral instances terminate i-0abc --yes --wait
    Terminate(Terminate),
    /// Renames an instance or changes its tags (applied in the cloud by a job).
    ///
    /// Example: corral instances update i-0abc --name web-blue --tag team=blue --remove-tag temp
    Update(UpdateInstance),
}

#[derive(Debug, Args)]
pub struct ListInstances {
    #[arg(long)]
    pub namespace: Option<String>,
    /// provisioning, pending, running, stopping, stopped, shutting-down, terminated, failed, missing
    #[arg(long)]
    pub state: Option<String>,
    /// Terminated and failed instances too.
    #[arg(long, conflicts_with = "state")]
    pub all: bool,
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
    /// corral ids, EC2 ids or names, space- or comma-separated. None is nothing to do (a list that
    /// came back empty), not a mistake.
    #[arg(value_name = "ID")]
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
    /// Sets a tag (repeatable); the instance's other tags stay.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Removes a tag (repeatable).
    #[arg(long = "remove-tag", value_name = "KEY")]
    pub remove_tags: Vec<String>,
    #[arg(long)]
    pub wait: bool,
}

const INSTANCE_COLUMNS: &[Column<InstanceBody>] = &[
    Column::new("ID", "id", |i| i.id.clone()),
    Column::new("CLOUD ID", "cloud_id", |i| cell(&i.cloud_id)),
    Column::new("NAME", "name", |i| i.name.clone()),
    Column::new("STATE", "state", |i| i.state.clone()),
    Column::new("TYPE", "instance_type", |i| i.instance_type.clone()),
    Column::new("REGION", "region", |i| i.region.clone()),
    Column::new("PUBLIC IP", "public_ip", |i| cell(&i.public_ip)),
    Column::new("NAMESPACE", "namespace", |i| i.namespace.clone()),
    Column::new("PRIVATE IP", "private_ip", |i: &InstanceBody| cell(&i.private_ip)).wide(),
    Column::new("AMI", "ami", |i: &InstanceBody| i.ami.clone()).wide(),
    Column::new("STORAGE GB", "storage_gb", |i: &InstanceBody| i.storage_gb.to_string()).wide(),
    Column::new("KEY", "key_name", |i: &InstanceBody| cell(&i.key_name)).wide(),
    Column::new("SSH", "ssh_command", |i: &InstanceBody| cell(&i.ssh_command)).wide(),
    Column::new("TAGS", "tags", |i: &InstanceBody| cell(&i.tags)).wide(),
    Column::new("SECURITY GROUPS", "security_groups", |i: &InstanceBody| cell(&i.security_groups))
        .wide(),
    Column::new("CREATED", "created_at", |i: &InstanceBody| cell(&i.created_at)).wide(),
];

pub async fn instances(client: &Client, out: &Out, command: InstancesCommand) -> Outcome<()> {
    match command {
        InstancesCommand::List(list) => {
            let filters = [
                ("namespace", list.namespace),
                ("state", list.state),
                ("name", list.name),
                ("all", list.all.then(|| "true".to_string())),
            ];
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
            let ids = split_ids(&terminate.action.ids);
            if ids.is_empty() {
                return nothing_to("terminate");
            }
            let mut action = terminate.action;
            if !terminate.yes {
                require_terminal("terminate", ids.len())?;
                let mut doomed: Vec<InstanceBody> = Vec::new();
                for id in ids {
                    doomed.push(client.get(&format!("/v1/instances/{}", encode(&id))).await?);
                }
                confirm(&doomed, "terminate")?;
                // What was confirmed is what goes: by id, as a name may have come to mean
                // another instance while the question waited.
                action.ids = doomed.iter().map(|instance| instance.id.clone()).collect();
            }
            act(client, out, "terminate", action).await?;
        }
        InstancesCommand::Update(update) => {
            let mut body = json!({});
            if let Some(name) = update.name {
                body["name"] = json!(name);
            }
            let mut tags: serde_json::Map<String, Value> =
                pairs("tag", &update.tags)?.into_iter().map(|(k, v)| (k, json!(v))).collect();
            for key in &update.remove_tags {
                if tags.insert(key.clone(), Value::Null).is_some_and(|was| !was.is_null()) {
                    return Err(Failure::usage(format!(
                        "--tag and --remove-tag both name '{key}'"
                    )));
                }
            }
            if !tags.is_empty() {
                body["tags"] = Value::Object(tags);
            }
            if body.as_object().is_some_and(|body| body.is_empty()) {
                return Err(Failure::usage(
                    "nothing to change: give --name, --tag or --remove-tag",
                ));
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

/// No ids is no work (a list that came back empty): said on stderr, and a success.
fn nothing_to(action: &str) -> Outcome<()> {
    eprintln!("no instance ids given: nothing to {action} (usage: corral instances {action} ID…)");
    Ok(())
}

/// One job for a lifecycle action on many instances.
async fn act(client: &Client, out: &Out, action: &str, args: Action) -> Outcome<()> {
    let ids = split_ids(&args.ids);
    if ids.is_empty() {
        return nothing_to(action);
    }
    let job =
        client.post("/v1/instances/actions", &json!({ "action": action, "ids": ids })).await?;
    job_result(client, out, job, args.wait).await
}
