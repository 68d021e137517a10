//! `create_instances`: launch the desired instances of one request in one call and wait until
//! the cloud reports them running.
//!
//! Steps, each safe to repeat:
//! 1. adopt: if an earlier attempt started a launch (`launch_started_at`, written before the
//!    call), find what it launched (tag `corral:job-id`, in any state) and record it;
//! 2. launch: if none exist, check the cloud-dependent policy rules (AMI owner, architecture),
//!    then call RunInstances once for all of them with the ClientToken persisted at enqueue time.
//!    EC2 answers a repeated token with the instances of the first call, so a launch whose answer
//!    was lost is not repeated; its two refusals of a token are final: `IdempotentParameterMismatch`
//!    (the token was used for a different launch) and `IdempotentInstanceTerminated` (the first
//!    launch's instances are gone). Neither is guessed around: the job fails and says so;
//! 3. tag each instance with its own `Name` and `corral:instance-id` (several per call only);
//! 4. wait for `running` and record state and IPs as the cloud reports them.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::cloud::CloudError;
use crate::cloud::{
    CloudInstance, LaunchRequest, SecurityGroupSpec, TAG_INSTANCE_ID, TAG_JOB_ID, TAG_NAMESPACE,
};
use crate::domain::{Backend, InstanceState, LaunchSpec};
use crate::jobs::kinds::prelaunch::{check_cloud_rules, import_key_pair};
use crate::jobs::kinds::{observation, wait_for_state};
use crate::jobs::{JobContext, JobError, JobRun};
use crate::storage::{InstanceRecord, JobView};

/// Arguments of a `create_instances` job, stored with it at enqueue time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatePayload {
    pub spec: LaunchSpec,
    /// EC2 ClientToken: the same for every attempt, so EC2 itself refuses to launch twice.
    pub client_token: String,
    /// Which engine launches the instances.
    #[serde(default)]
    pub backend: Backend,
}

/// Creates the request's instances through the AWS API (`payload.backend` is `aws`).
pub async fn run(run: &JobRun<'_>, payload: &CreatePayload) -> Result<(), JobError> {
    let (ctx, job) = (run.ctx, run.job);
    let spec = &payload.spec;
    let region = spec.region.as_str();
    let mut instances = job.instances.clone();
    instances.sort_by_key(|instance| instance.launch_index);

    let mut known_tags: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    if instances.iter().any(|instance| instance.cloud_id.is_none()) {
        // Until a launch has started there is nothing to find, and the lookup is not made.
        let launched = match job.job.launch_started_at {
            None => Vec::new(),
            Some(_) => ctx.provider.find_tagged(region, TAG_JOB_ID, &job.job.id).await?,
        };
        if launched.is_empty() {
            let launched = match launch(run, payload, instances.len()).await {
                Ok(launched) => launched,
                Err(err) => {
                    if run.is_final(&err) {
                        delete_own_security_group(run, spec).await;
                    }
                    return Err(err);
                }
            };
            adopt(ctx, &mut instances, launched, &mut known_tags).await?;
        } else if launched.len() == instances.len() {
            run.step(format!(
                "found the {} instance(s) an earlier attempt launched: {}",
                launched.len(),
                launched.iter().map(|i| i.cloud_id.as_str()).collect::<Vec<_>>().join(", ")
            ))
            .await;
            adopt(ctx, &mut instances, launched, &mut known_tags).await?;
        } else {
            // The cloud's listing catches up with its launches; waiting is not a failure.
            return Err(JobError::Transient(format!(
                "found {} of the {} instances an earlier attempt launched; waiting for the rest to \
                 become visible",
                launched.len(),
                instances.len()
            )));
        }
    }

    if instances.len() > 1 {
        let mut tagged = 0;
        for instance in &instances {
            let cloud_id = instance.cloud_id.clone().expect("adopted instances have cloud ids");
            let wanted = own_tags(instance);
            let has = known_tags.get(&cloud_id);
            if has.is_some_and(|tags| wanted.iter().all(|(k, v)| tags.get(k) == Some(v))) {
                continue;
            }
            ctx.provider.tag(region, &[cloud_id], &wanted).await?;
            tagged += 1;
        }
        if tagged > 0 {
            run.step(format!("tagged {tagged} instance(s) with their names and corral ids")).await;
        }
    }

    wait_for_state(run, region, &instances, InstanceState::Running).await
}

/// Checks the cloud-dependent policy rules, then launches `count` instances in one call.
async fn launch(
    run: &JobRun<'_>,
    payload: &CreatePayload,
    count: usize,
) -> Result<Vec<CloudInstance>, JobError> {
    let (ctx, job): (&JobContext, &JobView) = (run.ctx, run.job);
    let spec = &payload.spec;
    let region = spec.region.as_str();
    let (image, instance_type) = check_cloud_rules(run, spec).await?;

    let mut tags = spec.tags.clone();
    tags.insert(TAG_JOB_ID.to_string(), job.job.id.clone());
    tags.insert(TAG_NAMESPACE.to_string(), spec.namespace.clone());
    if let [only] = job.instances.as_slice() {
        tags.extend(own_tags(only));
    }
    let mut security_group_ids = spec.security_group_ids.clone();
    security_group_ids.extend(prepare_access(run, spec).await?);
    let request = LaunchRequest {
        client_token: payload.client_token.clone(),
        count: count as i64,
        ami: spec.ami.clone(),
        instance_type: spec.instance_type.clone(),
        storage_gb: spec.storage_gb,
        root_device_name: image.root_device_name.clone(),
        key_name: spec.key_name.clone(),
        security_group_ids,
        user_data: spec.user_data.clone(),
        cpu_credits: instance_type.burstable.then_some(spec.cpu_credits),
        tags,
    };
    // Recorded before the call, so that every later attempt looks for what it launched.
    if !ctx.store.mark_launch_started(&job.job.id, run.worker).await? {
        return Err(JobError::Retryable("the job's lease was lost before the launch".to_string()));
    }
    run.step(format!(
        "launching {count} {} instance(s) from {} in {region} (ClientToken {})",
        spec.instance_type, spec.ami, payload.client_token
    ))
    .await;
    let launched = match ctx.provider.launch(region, &request).await {
        Ok(launched) => launched,
        Err(CloudError::Rejected { code, message })
            if code == "IdempotentParameterMismatch" || code == "IdempotentInstanceTerminated" =>
        {
            return Err(JobError::Permanent(format!(
                "{code}: {message}; an earlier launch with this job's ClientToken exists but its \
                 instances cannot be found by their corral:job-id tag, so the outcome of the launch \
                 is unknown and the job stops rather than launch again; look for instances tagged \
                 corral:job-id={} (GET /v1/orphans)",
                job.job.id
            )));
        }
        Err(err) => return Err(err.into()),
    };
    run.step(format!(
        "launched {}",
        launched.iter().map(|i| i.cloud_id.as_str()).collect::<Vec<_>>().join(", ")
    ))
    .await;
    if launched.len() != count {
        return Err(JobError::Permanent(format!(
            "the cloud launched {} instances instead of {count}: {}",
            launched.len(),
            launched.iter().map(|i| i.cloud_id.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(launched)
}

/// Makes what the instances need to be reached exist before they launch: the key pair, when
/// corral holds its public key (imported into the region on first use), and the request's own
/// security group when it asks for ingress rules. Returns the group's id. Both steps find what an
/// earlier attempt made instead of making it twice.
async fn prepare_access(run: &JobRun<'_>, spec: &LaunchSpec) -> Result<Option<String>, JobError> {
    let (ctx, job) = (run.ctx, run.job);
    let region = spec.region.as_str();
    import_key_pair(run, spec).await?;
    if spec.ingress.is_empty() {
        return Ok(None);
    }
    let group = SecurityGroupSpec::for_request(&job.job.id, &spec.namespace, &spec.ingress);
    let group_id = ctx.provider.ensure_security_group(region, &group).await?;
    let rules: Vec<String> =
        spec.ingress.iter().map(|r| format!("{}/{} from {}", r.protocol, r.port, r.cidr)).collect();
    run.step(format!("security group {group_id} lets in {}", rules.join(", "))).await;
    Ok(Some(group_id))
}

/// Deletes the security group made for a request whose launch failed for good, so that it does
/// not outlive the request. Best effort: the job's own error is what the job reports.
async fn delete_own_security_group(run: &JobRun<'_>, spec: &LaunchSpec) {
    if spec.ingress.is_empty() {
        return;
    }
    let (ctx, region) = (run.ctx, spec.region.as_str());
    let job_id = run.job.job.id.clone();
    let groups = match ctx.provider.find_security_groups(region, TAG_JOB_ID, &[job_id]).await {
        Ok(groups) => groups,
        Err(err) => {
            run.step(format!("could not look for this request's security group: {err}")).await;
            return;
        }
    };
    for (group_id, _) in groups {
        match ctx.provider.delete_security_group(region, &group_id).await {
            Ok(()) => {
                run.step(format!("deleted security group {group_id}: nothing launched")).await
            }
            Err(err) => run.step(format!("security group {group_id} is left: {err}")).await,
        }
    }
}

/// Pairs launched cloud instances with the stored ones and records their cloud ids at once, so
/// that no later failure can lose track of them. An instance already tagged with a corral id is
/// matched by it; the others by launch index.
async fn adopt(
    ctx: &JobContext,
    instances: &mut [InstanceRecord],
    mut launched: Vec<CloudInstance>,
    known_tags: &mut HashMap<String, BTreeMap<String, String>>,
) -> Result<(), JobError> {
    launched.sort_by_key(|cloud| cloud.launch_index);
    let mut by_corral_id: HashMap<String, CloudInstance> = HashMap::new();
    let mut untagged = Vec::new();
    for cloud in launched {
        match cloud.tags.get(TAG_INSTANCE_ID) {
            Some(id) if instances.iter().any(|i| &i.id == id) => {
                by_corral_id.insert(id.clone(), cloud);
            }
            _ => untagged.push(cloud),
        }
    }
    let mut untagged = untagged.into_iter();
    let mut observations = Vec::new();
    for instance in instances.iter_mut() {
        let Some(cloud) = by_corral_id.remove(&instance.id).or_else(|| untagged.next()) else {
            return Err(JobError::Permanent(format!(
                "no launched instance could be matched to {}",
                instance.id
            )));
        };
        observations.push(observation(instance, &cloud));
        instance.cloud_id = Some(cloud.cloud_id.clone());
        known_tags.insert(cloud.cloud_id.clone(), cloud.tags);
    }
    ctx.store.record_observations(&observations).await?;
    Ok(())
}

/// Tags whose values differ per instance.
fn own_tags(instance: &InstanceRecord) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("Name".to_string(), instance.name.clone()),
        (TAG_INSTANCE_ID.to_string(), instance.id.clone()),
    ])
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::cloud::fake::FakeProvider;
    use crate::cloud::{Catalog, DescribeBatcher};
    use crate::config::JobSettings;
    use crate::domain::{CreateRequest, JobKind, Policy};
    use crate::storage::{NewJob, Store, now_millis};

    struct Harness {
        ctx: JobContext,
        fake: Arc<FakeProvider>,
        _dir: tempfile::TempDir,
    }

    async fn harness(fake: FakeProvider) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("t.db").display()))
            .await
            .unwrap();
        let fake = Arc::new(fake);
        let provider: Arc<dyn crate::cloud::Provider> = fake.clone();
        let settings = JobSettings {
            state_poll_initial_ms: 1,
            state_poll_max_ms: 5,
            ..JobSettings::default()
        };
        let ctx = JobContext {
            store,
            catalog: std::sync::Arc::new(Catalog::new(provider.clone(), Duration::from_secs(60))),
            describer: DescribeBatcher::new(provider.clone(), Duration::ZERO),
            provider,
            policy: Policy::free_tier(),
            settings,
            terraform: None,
        };
        Harness { ctx, fake, _dir: dir }
    }

    /// Stores a create job for `count` instances and claims it, as a worker would.
    async fn claimed_job(ctx: &JobContext, count: i64) -> JobView {
        let request = CreateRequest {
            name_prefix: Some("unit".into()),
            count: Some(count),
            ami: Some("ami-12345678".into()),
            instance_type: Some("t3.micro".into()),
            ..CreateRequest::default()
        };
        let spec = ctx.policy.check_request(&request).unwrap();
        let job_id = crate::storage::new_id();
        let now = now_millis();
        let instances: Vec<InstanceRecord> = (0..spec.names.len())
            .map(|idx| InstanceRecord::desired(&spec, &job_id, idx, 2, now))
            .collect();
        let payload = CreatePayload { spec, client_token: "token-1".into(), backend: Backend::Aws };
        let job = NewJob {
            id: job_id,
            kind: JobKind::CreateInstances,
            payload: serde_json::to_value(&payload).unwrap(),
            max_attempts: 3,
            actor: crate::storage::Actor::system(),
            namespace: Some("default".into()),
        };
        ctx.store.insert_create_job(&job, &instances, None).await.unwrap();
        ctx.store.claim_job("unit-worker", now_millis() + 60_000).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn slow_pending_and_late_visibility_are_waited_out() {
        let fake = FakeProvider::default();
        {
            let mut state = fake.state.lock().unwrap();
            state.pending_polls = 3;
            state.invisible_polls = 2;
        }
        let h = harness(fake).await;
        let job = claimed_job(&h.ctx, 2).await;

        crate::jobs::kinds::run(&JobRun { ctx: &h.ctx, job: &job, worker: "unit-worker" })
            .await
            .unwrap();

        let view = h.ctx.store.get_job(&job.job.id).await.unwrap().unwrap();
        for instance in &view.instances {
            assert_eq!(instance.state, InstanceState::Running);
            assert_eq!(instance.public_ip.as_deref(), Some("203.0.113.10"));
        }
        assert_eq!(h.fake.calls("launch"), 1);
        // Two polls without the instances, three while pending, one running.
        assert_eq!(h.fake.calls("describe"), 6);
    }

    #[tokio::test]
    async fn a_first_attempt_launches_without_looking_for_earlier_launches() {
        let h = harness(FakeProvider::default()).await;
        let job = claimed_job(&h.ctx, 1).await;

        crate::jobs::kinds::run(&JobRun { ctx: &h.ctx, job: &job, worker: "unit-worker" })
            .await
            .unwrap();

        assert_eq!(h.fake.calls("find_tagged"), 0);
        assert_eq!(h.fake.calls("launch"), 1);
        let view = h.ctx.store.get_job(&job.job.id).await.unwrap().unwrap();
        assert!(view.job.launch_started_at.is_some(), "recorded for later attempts");
    }

    /// Claims `job` again as a later attempt after its launch had started.
    async fn resumed(ctx: &JobContext, job: &JobView) -> JobView {
        assert!(ctx.store.mark_launch_started(&job.job.id, "unit-worker").await.unwrap());
        ctx.store.get_job(&job.job.id).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn a_resumed_job_adopts_what_an_earlier_attempt_launched() {
        let h = harness(FakeProvider::default()).await;
        let job = claimed_job(&h.ctx, 2).await;
        let job = resumed(&h.ctx, &job).await;
        for (idx, instance) in job.instances.iter().enumerate() {
            h.fake.insert(CloudInstance {
                cloud_id: format!("i-earlier{idx}"),
                state: InstanceState::Running,
                public_ip: None,
                private_ip: None,
                ami: None,
                instance_type: None,
                launch_index: idx as i64,
                tags: BTreeMap::from([
                    (TAG_JOB_ID.to_string(), job.job.id.clone()),
                    (TAG_INSTANCE_ID.to_string(), instance.id.clone()),
                ]),
                state_reason: None,
                key_name: None,
                security_groups: Vec::new(),
                root_volume: None,
            });
        }

        crate::jobs::kinds::run(&JobRun { ctx: &h.ctx, job: &job, worker: "unit-worker" })
            .await
            .unwrap();

        assert_eq!(h.fake.calls("launch"), 0, "nothing is launched twice");
        let view = h.ctx.store.get_job(&job.job.id).await.unwrap().unwrap();
        let cloud_ids: Vec<_> =
            view.instances.iter().map(|i| i.cloud_id.clone().unwrap()).collect();
        assert_eq!(cloud_ids, ["i-earlier0", "i-earlier1"]);
    }

    #[tokio::test]
    async fn a_refused_client_token_stops_the_job_instead_of_guessing() {
        for code in ["IdempotentParameterMismatch", "IdempotentInstanceTerminated"] {
            let fake = FakeProvider::default();
            fake.state.lock().unwrap().launch_error =
                Some(CloudError::Rejected { code: code.into(), message: "token reused".into() });
            let h = harness(fake).await;
            let job = claimed_job(&h.ctx, 1).await;

            let err =
                crate::jobs::kinds::run(&JobRun { ctx: &h.ctx, job: &job, worker: "unit-worker" })
                    .await
                    .unwrap_err();

            let JobError::Permanent(message) = err else { panic!("{code} must be permanent") };
            assert!(message.starts_with(&format!("{code}: token reused")), "{message}");
            assert!(message.contains("the outcome of the launch is unknown"), "{message}");
        }
    }

    #[tokio::test]
    async fn instances_found_partly_are_waited_for_not_relaunched() {
        let h = harness(FakeProvider::default()).await;
        let job = claimed_job(&h.ctx, 2).await;
        let job = resumed(&h.ctx, &job).await;
        h.fake.insert(CloudInstance {
            cloud_id: "i-onlyone".into(),
            state: InstanceState::Running,
            public_ip: None,
            private_ip: None,
            ami: None,
            instance_type: None,
            launch_index: 0,
            tags: BTreeMap::from([(TAG_JOB_ID.to_string(), job.job.id.clone())]),
            state_reason: None,
            key_name: None,
            security_groups: Vec::new(),
            root_volume: None,
        });

        let err =
            crate::jobs::kinds::run(&JobRun { ctx: &h.ctx, job: &job, worker: "unit-worker" })
                .await
                .unwrap_err();

        assert!(matches!(err, JobError::Transient(_)), "{err:?}");
        assert_eq!(h.fake.calls("launch"), 0);
    }
}
