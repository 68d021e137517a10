//! One module per job kind, and the helpers they share.
//!
//! Every kind is written as a reconciler: observe what the cloud has, take the missing step,
//! record what the cloud reports. Running a kind twice, or resuming it after a crash at any
//! point, never repeats a step that already took effect.

mod change_state;
mod create_instances;
mod prelaunch;
mod refresh;
mod tag;
mod terraform;

use std::collections::HashMap;
use std::time::Duration;

use crate::cloud::CloudInstance;
use crate::domain::{Backend, InstanceState, JobKind};
use crate::jobs::{JobError, JobRun};
use crate::storage::{InstanceRecord, Observation, ObservedAttributes};

pub use create_instances::CreatePayload;

pub use refresh::refresh_region;

/// Arguments of a `delete_key_pair` job: the key pair and every region it may be in.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DeleteKeyPairPayload {
    pub name: String,
    pub regions: Vec<String>,
}
pub use tag::TagPayload;

/// Runs one attempt of a job.
pub async fn run(run: &JobRun<'_>) -> Result<(), JobError> {
    match run.job.job.kind {
        JobKind::CreateInstances => {
            let payload: CreatePayload = serde_json::from_value(run.job.job.payload.clone())
                .map_err(|err| JobError::Permanent(format!("unreadable job payload: {err}")))?;
            match payload.backend {
                Backend::Aws => create_instances::run(run, &payload).await,
                Backend::Terraform => terraform::create(run, &payload).await,
            }
        }
        JobKind::RefreshInstances => refresh::run(run).await,
        JobKind::TagInstances => tag::run(run).await,
        JobKind::DeleteKeyPair => {
            let payload: DeleteKeyPairPayload = serde_json::from_value(run.job.job.payload.clone())
                .map_err(|err| JobError::Permanent(format!("unreadable job payload: {err}")))?;
            let mut deleted = Vec::new();
            for region in &payload.regions {
                if run.ctx.provider.delete_key_pair(region, &payload.name).await? {
                    deleted.push(region.as_str());
                }
            }
            run.step(format!(
                "key pair {}: deleted in {}; looked in {}",
                payload.name,
                if deleted.is_empty() { "no region".to_string() } else { deleted.join(", ") },
                payload.regions.join(", ")
            ))
            .await;
            Ok(())
        }
        JobKind::Reconcile => {
            let summary = crate::jobs::reconcile_all(run.ctx).await?;
            run.step(format!(
                "reconciled {} instance(s): {} drifted, {} missing, {} orphan(s)",
                summary.instances, summary.drifted, summary.missing, summary.orphans
            ))
            .await;
            Ok(())
        }
        kind => {
            let action = kind.action().expect("every other kind is an action");
            change_state::run(run, action).await
        }
    }
}

fn observation(instance: &InstanceRecord, seen: &CloudInstance) -> Observation {
    Observation {
        instance_id: instance.id.clone(),
        cloud_id: seen.cloud_id.clone(),
        state: seen.state,
        public_ip: seen.public_ip.clone(),
        private_ip: seen.private_ip.clone(),
        attributes: Some(ObservedAttributes {
            name: seen.tags.get("Name").cloned(),
            instance_type: seen.instance_type.clone(),
            vcpus: None,
            key_name: seen.key_name.clone(),
            tags: crate::domain::user_tags(&seen.tags),
            security_groups: seen.security_groups.clone(),
            storage_gb: None,
        }),
        authoritative: false,
    }
}

/// Describes `instances` (all in `region`) and records what the cloud reports; instances the
/// cloud does not know are left out of the result.
async fn observe(
    run: &JobRun<'_>,
    region: &str,
    instances: &[InstanceRecord],
) -> Result<Vec<Observation>, JobError> {
    let ctx = run.ctx;
    let cloud_ids: Vec<String> = instances.iter().filter_map(|i| i.cloud_id.clone()).collect();
    let seen = ctx.describer.describe(region, &cloud_ids).await?;
    let observations: Vec<Observation> = instances
        .iter()
        .filter_map(|instance| {
            let cloud = seen.iter().find(|c| Some(&c.cloud_id) == instance.cloud_id.as_ref())?;
            Some(observation(instance, cloud))
        })
        .collect();
    ctx.store.record_observations(&observations).await?;
    Ok(observations)
}

/// Polls the cloud, with growing pauses, until every instance of `instances` (all in `region`,
/// all with a cloud id) is in `target`; records every observation on the way.
async fn wait_for_state(
    run: &JobRun<'_>,
    region: &str,
    instances: &[InstanceRecord],
    target: InstanceState,
) -> Result<(), JobError> {
    let ctx = run.ctx;
    let settings = &ctx.settings;
    run.step(format!("waiting for {} instance(s) to be {target}", instances.len())).await;
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(settings.state_wait_timeout_secs);
    let mut pause = Duration::from_millis(settings.state_poll_initial_ms);
    let cloud_ids: Vec<String> = instances.iter().filter_map(|i| i.cloud_id.clone()).collect();
    loop {
        let seen: HashMap<String, CloudInstance> = ctx
            .describer
            .describe(region, &cloud_ids)
            .await?
            .into_iter()
            .map(|instance| (instance.cloud_id.clone(), instance))
            .collect();
        let mut observations = Vec::new();
        let mut waiting = Vec::new();
        for instance in instances {
            let cloud_id = instance.cloud_id.as_deref().unwrap_or_default();
            match seen.get(cloud_id) {
                // Just-launched instances can be missing from Describe for a while.
                None => waiting.push(format!("{cloud_id} (not visible yet)")),
                Some(cloud) => {
                    observations.push(observation(instance, cloud));
                    if cloud.state == target {
                        continue;
                    }
                    if is_dead_end(cloud.state, target) {
                        ctx.store.record_observations(&observations).await?;
                        let reason = cloud
                            .state_reason
                            .as_deref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default();
                        return Err(JobError::Permanent(format!(
                            "instance {cloud_id} is {} and cannot become {target}{reason}",
                            cloud.state
                        )));
                    }
                    waiting.push(format!("{cloud_id} ({})", cloud.state));
                }
            }
        }
        ctx.store.record_observations(&observations).await?;
        if waiting.is_empty() {
            let report: Vec<String> = observations
                .iter()
                .map(|seen| {
                    let ip = seen.public_ip.as_deref().or(seen.private_ip.as_deref());
                    format!(
                        "{} {}{}",
                        seen.cloud_id,
                        seen.state,
                        ip.map(|ip| format!(" at {ip}")).unwrap_or_default()
                    )
                })
                .collect();
            run.step(format!("all {target}: {}", report.join(", "))).await;
            return Ok(());
        }
        if tokio::time::Instant::now() + pause > deadline {
            return Err(JobError::Retryable(format!(
                "timed out after {}s waiting for {target}: {}",
                settings.state_wait_timeout_secs,
                waiting.join(", ")
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(settings.state_poll_max_ms));
    }
}

/// Whether an instance in `state` can no longer reach `target` by waiting. Only termination is
/// final: right after StartInstances, EC2's Describe may still report `stopped` for a moment,
/// which a wait must outlast rather than fail on (the wait's own timeout bounds it).
fn is_dead_end(state: InstanceState, target: InstanceState) -> bool {
    use InstanceState::*;
    target != Terminated && matches!(state, ShuttingDown | Terminated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_termination_ends_a_wait_early() {
        use InstanceState::*;
        let cases = [
            (Stopped, Running, false),
            (Stopping, Running, false),
            (Pending, Running, false),
            (ShuttingDown, Running, true),
            (Terminated, Stopped, true),
            (Running, Stopped, false),
            (ShuttingDown, Terminated, false),
        ];
        for (state, target, expected) in cases {
            assert_eq!(is_dead_end(state, target), expected, "{state} waiting for {target}");
        }
    }
}
