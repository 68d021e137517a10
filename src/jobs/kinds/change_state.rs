//! `start_instances`, `stop_instances`, `reboot_instances`, `terminate_instances`: apply one
//! action to many instances with one cloud call per region, then wait for the target state.
//!
//! The job first describes the instances and leaves out those already in the target state, so
//! a resumed job does not repeat calls that took effect.

use std::collections::BTreeMap;

use crate::cloud::TAG_JOB_ID;
use crate::domain::{Action, Backend};
use crate::jobs::kinds::{observe, wait_for_state};
use crate::jobs::{JobError, JobRun};
use crate::storage::InstanceRecord;

pub async fn run(run: &JobRun<'_>, action: Action) -> Result<(), JobError> {
    let job = run.job;
    let mut by_region: BTreeMap<&str, Vec<InstanceRecord>> = BTreeMap::new();
    let mut through_terraform = Vec::new();
    for instance in &job.instances {
        if instance.cloud_id.is_none() {
            return Err(JobError::Permanent(format!(
                "instance {} was never launched",
                instance.id
            )));
        }
        // Terraform has no reboot: those go through the native API.
        if instance.backend == Backend::Terraform && action != Action::Reboot {
            through_terraform.push(instance.clone());
            continue;
        }
        by_region.entry(instance.region.as_str()).or_default().push(instance.clone());
    }
    if !through_terraform.is_empty() {
        super::terraform::change(run, action, through_terraform).await?;
    }
    for (region, instances) in by_region {
        let observations = observe(run, region, &instances).await?;
        if let Some(missing) = instances
            .iter()
            .find(|instance| !observations.iter().any(|seen| seen.instance_id == instance.id))
        {
            return Err(JobError::Permanent(format!(
                "instance {} ({}) no longer exists in {region}",
                missing.id,
                missing.cloud_id.as_deref().unwrap_or_default()
            )));
        }
        let pending: Vec<String> = observations
            .iter()
            .filter(|seen| Some(seen.state) != action.target_state())
            .map(|seen| seen.cloud_id.clone())
            .collect();
        if pending.is_empty() {
            run.step(format!("{region}: every instance is already done")).await;
        } else {
            run.step(format!("{region}: {action} {}", pending.join(", "))).await;
            run.ctx.provider.apply(region, action, &pending).await?;
        }
        match action.target_state() {
            Some(target) => wait_for_state(run, region, &instances, target).await?,
            None => {
                // A reboot keeps the state; record what the cloud reports after it.
                observe(run, region, &instances).await?;
            }
        }
        if action == Action::Terminate {
            delete_unused_security_groups(run, region, &instances).await?;
        }
    }
    Ok(())
}

/// Deletes the security groups corral created for the requests that launched `instances` once
/// none of those requests' instances is left.
async fn delete_unused_security_groups(
    run: &JobRun<'_>,
    region: &str,
    instances: &[InstanceRecord],
) -> Result<(), JobError> {
    let ctx = run.ctx;
    let mut creators: Vec<String> = instances.iter().map(|i| i.created_by_job.clone()).collect();
    creators.sort();
    creators.dedup();
    let in_use = ctx.store.jobs_with_live_instances(&creators).await?;
    creators.retain(|job| !in_use.contains(job));
    for (group_id, job_id) in
        ctx.provider.find_security_groups(region, TAG_JOB_ID, &creators).await?
    {
        ctx.provider.delete_security_group(region, &group_id).await?;
        run.step(format!("deleted security group {group_id} of job {job_id}: no instance uses it"))
            .await;
    }
    Ok(())
}
