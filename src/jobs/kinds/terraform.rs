//! The Terraform backend's jobs: create, start, stop and terminate by running Terraform on the
//! workspace of the request that created the instances (its create job's id).
//!
//! Each run writes the workspace's configuration afresh from corral's records into a new
//! working directory, then runs `init`, `plan` and `apply` (a terminate plans `-destroy`,
//! targeted at its instances unless it ends the whole request), recording each command's
//! output in the job's history. A failed command is retried as the job is; the last attempt
//! fails with Terraform's error, after terminating the instances tagged with its job id (those
//! its state never named included) and destroying what else the request made. Afterwards
//! the instances are observed through the cloud API, as with the native backend: corral records
//! what the cloud reports, not what Terraform says.
//!
//! Safe to resume after a crash at any point:
//! - the state lives in corral's database; a lock left by an earlier attempt of the same job is
//!   released first (this attempt holds the job's lease, so that run has ended);
//! - instances and the security group an interrupted `apply` made before it could save the
//!   state are found by their `corral:job-id` tag and adopted with `import` blocks, never made
//!   twice;
//! - before any run, the workspace's state is checked to name only what this request made
//!   (its recorded instances, or what carries its `corral:job-id` tag): corral applies the
//!   state under its own cloud identity, so a state naming another instance is refused;
//! - runs on one workspace take turns in job order, so that no run writes a configuration from
//!   records another run is about to change; a job whose turn has not come hands its attempt
//!   back uncounted rather than hold a worker for long.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::cloud::{TAG_INSTANCE_ID, TAG_JOB_ID};
use crate::domain::{Action, InstanceState};
use crate::jobs::kinds::CreatePayload;
use crate::jobs::kinds::prelaunch::{check_cloud_rules, import_key_pair};
use crate::jobs::kinds::wait_for_state;
use crate::jobs::{JobError, JobRun};
use crate::storage::{InstanceRecord, JobView};
use crate::terraform::{
    ConfigInstance, RunOutput, SECURITY_GROUP, Session, Terraform, WorkspaceConfig, configuration,
};

/// The keys a version 4 state, one of its resources, and one of their objects may have.
const STATE_KEYS: &[&str] =
    &["version", "terraform_version", "serial", "lineage", "outputs", "resources", "check_results"];
const RESOURCE_KEYS: &[&str] = &["mode", "type", "name", "provider", "instances", "each"];
const OBJECT_KEYS: &[&str] = &[
    "schema_version",
    "attributes",
    "sensitive_attributes",
    "identity_schema_version",
    "identity",
    "private",
    "dependencies",
    "index_key",
    "create_before_destroy",
    "status",
];

/// Whether `value` is an object with no key outside `known`.
fn known_keys(value: &serde_json::Value, known: &[&str]) -> bool {
    value.as_object().is_some_and(|fields| fields.keys().all(|key| known.contains(&key.as_str())))
}

/// The provider every resource of a corral workspace belongs to, as the state names it.
const AWS_PROVIDER: &str = "provider[\"registry.terraform.io/hashicorp/aws\"]";
/// Longest a job holds its worker waiting for an earlier job on its workspace; then it hands
/// the attempt back (uncounted) so that the worker can run other jobs, the earlier one included.
const TURN_WAIT: Duration = Duration::from_secs(10);

/// Creates the request's instances with `terraform apply`.
pub async fn create(run: &JobRun<'_>, payload: &CreatePayload) -> Result<(), JobError> {
    let (ctx, job) = (run.ctx, run.job);
    let terraform = terraform(run)?;
    let spec = &payload.spec;
    let region = spec.region.as_str();
    let workspace = job.job.id.as_str();
    let mut instances = job.instances.clone();
    instances.sort_by_key(|instance| instance.launch_index);

    let (_, instance_type) = check_cloud_rules(run, spec).await?;
    import_key_pair(run, spec).await?;

    check_state(run, workspace, region, &instances).await?;
    let mut imports = Vec::new();
    if job.job.launch_started_at.is_some() {
        release_stale_lock(run, workspace).await?;
        // What an interrupted apply made before it could save the state.
        for cloud in ctx.provider.find_tagged(region, TAG_JOB_ID, workspace).await? {
            let ended =
                matches!(cloud.state, InstanceState::Terminated | InstanceState::ShuttingDown);
            let owner = cloud.tags.get(TAG_INSTANCE_ID);
            if let Some(instance) = instances.iter().find(|i| Some(&i.id) == owner)
                && !ended
            {
                imports.push((format!("aws_instance.{}", resource(instance)), cloud.cloud_id));
            }
        }
        if !spec.ingress.is_empty() {
            let groups = ctx
                .provider
                .find_security_groups(region, TAG_JOB_ID, &[workspace.to_string()])
                .await?;
            imports.extend(groups.into_iter().map(|(id, _)| (SECURITY_GROUP.to_string(), id)));
        }
        if !imports.is_empty() {
            let adopted: Vec<&str> = imports.iter().map(|(_, id)| id.as_str()).collect();
            run.step(format!(
                "adopting what an earlier attempt made, by its corral:job-id tag: {}",
                adopted.join(", ")
            ))
            .await;
        }
    }
    // Recorded before anything is made, so that every later attempt looks for it.
    if !ctx.store.mark_launch_started(&job.job.id, run.worker).await? {
        return Err(JobError::Retryable("the job's lease was lost before the apply".to_string()));
    }

    let endpoint = ctx.provider.endpoint_url();
    let config = WorkspaceConfig {
        workspace,
        state_address: terraform.state_address(workspace),
        endpoint_url: endpoint.as_deref(),
        spec,
        instances: instances.iter().map(|i| config_instance(i, Some("running"))).collect(),
        burstable: instance_type.burstable,
        imports,
    };
    let session = match apply(run, terraform, &config, &[]).await {
        Ok(session) => session,
        Err(err) => {
            if run.is_final(&err) {
                // Nothing of a request that failed for good is left behind. Its instances go
                // first, by tag: the destroy could not see those an interrupted attempt made,
                // and they would hold the security group it deletes.
                terminate_tagged(run, region, workspace).await;
                let destroy = WorkspaceConfig { imports: Vec::new(), ..config };
                if let Err(cleanup) = apply(run, terraform, &destroy, &["-destroy".into()]).await {
                    run.step(format!("what the failed run made could not be destroyed: {cleanup}"))
                        .await;
                }
            }
            return Err(err);
        }
    };

    let outputs = session
        .outputs()
        .await
        .map_err(|err| JobError::Retryable(format!("running terraform output: {err}")))?
        .map_err(|err| JobError::Retryable(format!("terraform output failed: {err}")))?;
    for instance in &mut instances {
        let id = outputs["instances"]["value"][resource(instance)]["id"].as_str();
        let Some(id) = id.filter(|id| id.starts_with("i-")) else {
            return Err(JobError::Retryable(format!(
                "terraform applied, but its outputs name no instance for {} ({})",
                instance.name, instance.id
            )));
        };
        instance.cloud_id = Some(id.to_string());
    }
    let made: Vec<&str> = instances.iter().filter_map(|i| i.cloud_id.as_deref()).collect();
    run.step(format!("terraform made {}", made.join(", "))).await;
    wait_for_state(run, region, &instances, InstanceState::Running).await
}

/// Starts, stops or terminates Terraform-backed instances, one workspace at a time.
pub async fn change(
    run: &JobRun<'_>,
    action: Action,
    instances: Vec<InstanceRecord>,
) -> Result<(), JobError> {
    let ctx = run.ctx;
    let terraform = terraform(run)?;
    let mut by_workspace: BTreeMap<String, Vec<InstanceRecord>> = BTreeMap::new();
    for instance in instances {
        by_workspace.entry(instance.created_by_job.clone()).or_default().push(instance);
    }
    for (workspace, acting) in by_workspace {
        let create = wait_for_turn(run, &workspace).await?;
        let payload: CreatePayload = serde_json::from_value(create.job.payload.clone())
            .map_err(|err| JobError::Permanent(format!("unreadable create payload: {err}")))?;
        let spec = &payload.spec;
        let region = spec.region.as_str();
        let instance_type = ctx.catalog.instance_type(region, &spec.instance_type).await?;
        release_stale_lock(run, &workspace).await?;
        check_state(run, &workspace, region, &create.instances).await?;

        // Everything of the workspace that still exists stays declared; only the instances
        // this job acts on get a state resource.
        let live: Vec<&InstanceRecord> = create
            .instances
            .iter()
            .filter(|i| {
                // An instance the cloud no longer has stays out: declaring it would make
                // Terraform create it again.
                i.cloud_id.is_some()
                    && !matches!(
                        i.state,
                        InstanceState::Terminated
                            | InstanceState::ShuttingDown
                            | InstanceState::Failed
                            | InstanceState::Missing
                    )
            })
            .collect();
        let acting_ids: Vec<&str> = acting.iter().map(|i| i.id.as_str()).collect();
        let target = match action {
            Action::Start => Some("running"),
            Action::Stop => Some("stopped"),
            _ => None,
        };
        let config_instances = live
            .iter()
            .map(|i| config_instance(i, target.filter(|_| acting_ids.contains(&i.id.as_str()))))
            .collect();
        let endpoint = ctx.provider.endpoint_url();
        let config = WorkspaceConfig {
            workspace: &workspace,
            state_address: terraform.state_address(&workspace),
            endpoint_url: endpoint.as_deref(),
            spec,
            instances: config_instances,
            burstable: instance_type.burstable,
            imports: Vec::new(),
        };
        let plan_args: Vec<String> = match action {
            Action::Terminate if live.iter().all(|i| acting_ids.contains(&i.id.as_str())) => {
                vec!["-destroy".to_string()]
            }
            Action::Terminate => std::iter::once("-destroy".to_string())
                .chain(acting.iter().map(|i| format!("-target=aws_instance.{}", resource(i))))
                .collect(),
            _ => Vec::new(),
        };
        apply(run, terraform, &config, &plan_args).await?;
        let target_state = action.target_state().expect("reboots go through the native API");
        wait_for_state(run, region, &acting, target_state).await?;
    }
    Ok(())
}

/// Terminates the live instances tagged with a failed request's job id, those its state never
/// named included: an interrupted attempt's, which a destroy cannot see (Terraform ignores
/// `import` blocks when destroying). Best effort: the job's own error is what it reports.
async fn terminate_tagged(run: &JobRun<'_>, region: &str, workspace: &str) {
    let provider = &run.ctx.provider;
    let live: Vec<String> = match provider.find_tagged(region, TAG_JOB_ID, workspace).await {
        Ok(found) => found
            .into_iter()
            .filter(|i| !matches!(i.state, InstanceState::Terminated | InstanceState::ShuttingDown))
            .map(|instance| instance.cloud_id)
            .collect(),
        Err(err) => {
            run.step(format!("could not look for this request's instances: {err}")).await;
            return;
        }
    };
    if live.is_empty() {
        return;
    }
    let listed = live.join(", ");
    match provider.apply(region, Action::Terminate, &live).await {
        Ok(()) => run.step(format!("terminated {listed}, tagged with this failed request")),
        Err(err) => run.step(format!("{listed} could not be terminated: {err}")),
    }
    .await;
}

fn terraform<'a>(run: &JobRun<'a>) -> Result<&'a Terraform, JobError> {
    run.ctx.terraform.as_deref().ok_or_else(|| {
        JobError::Permanent(
            "the Terraform backend is off in this worker: install terraform (terraform.binary), \
             and on worker-only processes set terraform.state_url"
                .to_string(),
        )
    })
}

fn resource(instance: &InstanceRecord) -> String {
    format!("i{}", instance.launch_index)
}

fn config_instance(instance: &InstanceRecord, state: Option<&'static str>) -> ConfigInstance {
    ConfigInstance {
        id: instance.id.clone(),
        name: instance.name.clone(),
        tags: instance.tags.clone(),
        launch_index: instance.launch_index,
        state,
    }
}

/// Writes the configuration and runs init, plan (with `plan_args`) and apply; every command's
/// output goes to the job's history. Returns the session, for the outputs.
async fn apply(
    run: &JobRun<'_>,
    terraform: &Terraform,
    config: &WorkspaceConfig<'_>,
    plan_args: &[String],
) -> Result<Session, JobError> {
    let credentials = run.ctx.provider.credentials_env().await?;
    let session =
        terraform.session(config.workspace, &run.job.job.id, credentials).await.map_err(|err| {
            JobError::Retryable(format!("making a Terraform working directory: {err}"))
        })?;
    session
        .write_config(&configuration(config))
        .await
        .map_err(|err| JobError::Retryable(format!("writing main.tf.json: {err}")))?;
    let verb = if plan_args.iter().any(|arg| arg == "-destroy") { "destroy" } else { "apply" };
    step(run, "init", session.init().await).await?;
    step(run, &format!("plan {}", plan_args.join(" ")), session.plan(plan_args).await).await?;
    step(run, verb, session.apply().await).await?;
    Ok(session)
}

/// Records a command's output; a failed command fails the attempt with Terraform's error.
async fn step(
    run: &JobRun<'_>,
    command: &str,
    output: std::io::Result<RunOutput>,
) -> Result<(), JobError> {
    let command = command.trim();
    let output = output.map_err(|err| {
        JobError::Retryable(format!("terraform {command} could not be run: {err}"))
    })?;
    let outcome = if output.success { "done" } else { "failed" };
    run.step(format!("terraform {command}: {outcome}\n{}", output.text)).await;
    if output.success {
        return Ok(());
    }
    // Terraform's own error, without the output before it.
    let error = output.text.find("Error:").map_or(output.text.as_str(), |at| &output.text[at..]);
    Err(JobError::Retryable(format!("terraform {command} failed: {}", error.trim())))
}

/// Refuses to run Terraform on a workspace whose state names anything this request did not
/// make: a resource of a type corral never declares, or an instance or security group that is
/// neither recorded for the request (`records`) nor tagged with its job id. Terraform would
/// otherwise stop, change or destroy it under corral's cloud identity.
async fn check_state(
    run: &JobRun<'_>,
    workspace: &str,
    region: &str,
    records: &[InstanceRecord],
) -> Result<(), JobError> {
    let Some(state) = run.ctx.store.terraform_state(workspace).await? else { return Ok(()) };
    let refuse = |what: String| {
        JobError::Permanent(format!(
            "the Terraform state of workspace {workspace} names {what}, which this request did \
             not make: corral does not run Terraform on it (an admin can repair the state at \
             /v1/terraform/state/{workspace})"
        ))
    };
    let state: serde_json::Value = serde_json::from_str(&state)
        .map_err(|err| refuse(format!("something unreadable ({err})")))?;
    // The state format corral's terraform writes, and nothing else: an older format, modules
    // or another provider (which `init` would fetch and run) are refused, and so is any key
    // Terraform knows no other way (it also reads keys in another letter case).
    if state["version"] != 4 || !known_keys(&state, STATE_KEYS) {
        return Err(refuse("a state in another form than version 4 writes".to_string()));
    }
    let (mut instances, mut groups) = (Vec::new(), Vec::new());
    let resources = state["resources"].as_array().map(Vec::as_slice).unwrap_or_default();
    for resource in resources {
        let kind = resource["type"].as_str().unwrap_or_default();
        let name = resource["name"].as_str().unwrap_or_default();
        if resource["mode"] != "managed"
            || !known_keys(resource, RESOURCE_KEYS)
            || resource["provider"] != AWS_PROVIDER
        {
            return Err(refuse(format!("the resource {kind}.{name} outside corral's own form")));
        }
        let (found, attribute) = match kind {
            "aws_instance" => (&mut instances, "id"),
            "aws_ec2_instance_state" => (&mut instances, "instance_id"),
            "aws_security_group" => (&mut groups, "id"),
            _ => return Err(refuse(format!("the resource {kind}.{name}"))),
        };
        let objects = resource["instances"].as_array().map(Vec::as_slice).unwrap_or_default();
        for object in objects {
            let attributes = &object["attributes"];
            // The provider reads an instance state by its id: both must name the instance.
            let consistent = attribute == "id" || attributes["id"] == attributes[attribute];
            if !known_keys(object, OBJECT_KEYS) || !attributes.is_object() || !consistent {
                return Err(refuse(format!(
                    "the resource {kind}.{name} outside corral's own form"
                )));
            }
            found.push(attributes[attribute].as_str().unwrap_or_default().to_string());
        }
    }
    instances.retain(|id| !records.iter().any(|r| r.cloud_id.as_deref() == Some(id)));
    instances.sort();
    instances.dedup();
    let provider = &run.ctx.provider;
    if !instances.is_empty() {
        let tagged = provider.find_tagged(region, TAG_JOB_ID, workspace).await?;
        instances.retain(|id| !tagged.iter().any(|t| &t.cloud_id == id));
        if let Some(foreign) = instances.first() {
            return Err(refuse(format!("instance '{foreign}'")));
        }
    }
    if !groups.is_empty() {
        let tagged =
            provider.find_security_groups(region, TAG_JOB_ID, &[workspace.to_string()]).await?;
        groups.retain(|id| !tagged.iter().any(|(t, _)| t == id));
        if let Some(foreign) = groups.first() {
            return Err(refuse(format!("security group '{foreign}'")));
        }
    }
    Ok(())
}

/// Releases the workspace's lock when an earlier attempt of this job left it.
async fn release_stale_lock(run: &JobRun<'_>, workspace: &str) -> Result<(), JobError> {
    if run.ctx.store.release_job_lock(workspace, &run.job.job.id).await? {
        run.step(format!("released the lock an earlier attempt of this job left on {workspace}"))
            .await;
    }
    Ok(())
}

/// Waits until no earlier job owns an instance of `workspace`: runs on one workspace take
/// turns in the order their jobs were made (job ids grow with time). Returns the workspace's
/// create job as it is then, with its instances; `NotYet` after `TURN_WAIT`.
async fn wait_for_turn(run: &JobRun<'_>, workspace: &str) -> Result<JobView, JobError> {
    let deadline = tokio::time::Instant::now() + TURN_WAIT;
    loop {
        let create = run.ctx.store.get_job(workspace).await?.ok_or_else(|| {
            JobError::Permanent(format!("the create job {workspace} of these instances is gone"))
        })?;
        let earlier = create.instances.iter().find_map(|i| {
            i.active_job_id.clone().filter(|owner| owner.as_str() < run.job.job.id.as_str())
        });
        let Some(earlier) = earlier else { return Ok(create) };
        if tokio::time::Instant::now() >= deadline {
            return Err(JobError::NotYet(format!(
                "waiting for job {earlier}, which works on Terraform workspace {workspace} first"
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
