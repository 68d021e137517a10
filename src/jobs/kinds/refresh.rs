//! `refresh_instances`, and the comparison the periodic reconciler shares with it: describe
//! instances, record what the cloud reports, and note what changed behind corral's back.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::cloud::{CloudInstance, TAG_JOB_ID};
use crate::domain::InstanceState;
use crate::jobs::kinds::observation;
use crate::jobs::{JobContext, JobError, JobRun};
use crate::storage::{InstanceRecord, OrphanRecord, Reconciliation, now_millis};

pub async fn run(run: &JobRun<'_>) -> Result<(), JobError> {
    let mut by_region: BTreeMap<&str, Vec<InstanceRecord>> = BTreeMap::new();
    for instance in run.job.instances.iter().filter(|i| i.cloud_id.is_some()) {
        by_region.entry(instance.region.as_str()).or_default().push(instance.clone());
    }
    for (region, instances) in by_region {
        let outcome = refresh_region(run.ctx, region, &instances, None).await?;
        run.step(format!(
            "{region}: refreshed {} instance(s); {} drifted, {} missing",
            instances.len(),
            outcome.drifted,
            outcome.missing
        ))
        .await;
    }
    Ok(())
}

/// Sizes of the root volumes of the `known` instances the cloud returned (`seen`), in one
/// batched call. A cloud that does not tell them (a policy without `ec2:DescribeVolumes`, an
/// outage) leaves them unknown, and storage unjudged, rather than failing the pass.
async fn volume_sizes(
    ctx: &JobContext,
    region: &str,
    known: &[InstanceRecord],
    seen: &HashMap<String, CloudInstance>,
) -> HashMap<String, i64> {
    let volumes: Vec<String> = known
        .iter()
        .filter_map(|instance| seen.get(instance.cloud_id.as_deref()?)?.root_volume.clone())
        .collect();
    if volumes.is_empty() {
        return HashMap::new();
    }
    match ctx.provider.volume_sizes(region, &volumes).await {
        Ok(sizes) => sizes,
        Err(err) => {
            tracing::warn!(region, error = %err, "volume sizes unknown: storage is not compared");
            HashMap::new()
        }
    }
}

/// What a refresh of one region found.
#[derive(Debug, Default)]
pub struct RegionOutcome {
    /// Changes made behind corral's back (`storage::Store::record_reconciliation` judges them).
    pub drifted: usize,
    /// Instances the cloud no longer knows.
    pub missing: usize,
    /// Instances tagged by corral that it has no record of (when orphans were scanned for).
    pub orphans: usize,
}

/// Compares `known` (instances of `region` with a cloud id) with the cloud and records the
/// result. With `unfinished_jobs`, also scans the region for orphans: non-terminated instances
/// tagged `corral:job-id` that corral has no record of, leaving out those of jobs still running
/// (their launch may not be recorded yet).
pub async fn refresh_region(
    ctx: &JobContext,
    region: &str,
    known: &[InstanceRecord],
    unfinished_jobs: Option<&HashSet<String>>,
) -> Result<RegionOutcome, JobError> {
    let observed_at = now_millis();
    let mut seen: HashMap<String, CloudInstance> = HashMap::new();
    if unfinished_jobs.is_some() {
        for instance in ctx.provider.find_tag_key(region, TAG_JOB_ID).await? {
            seen.insert(instance.cloud_id.clone(), instance);
        }
    }
    let unseen: Vec<String> = known
        .iter()
        .filter_map(|i| i.cloud_id.clone())
        .filter(|id| !seen.contains_key(id))
        .collect();
    if !unseen.is_empty() {
        for instance in ctx.provider.describe(region, &unseen).await? {
            seen.insert(instance.cloud_id.clone(), instance);
        }
    }

    let sizes = volume_sizes(ctx, region, known, &seen).await;
    let mut reconciliation =
        Reconciliation { observed_at: Some(observed_at), ..Default::default() };
    for instance in known {
        let cloud_id = instance.cloud_id.as_deref().unwrap_or_default();
        let Some(cloud) = seen.get(cloud_id) else {
            reconciliation.missing.push(instance.id.clone());
            continue;
        };
        let mut observed = observation(instance, cloud);
        if let Some(attributes) = observed.attributes.as_mut() {
            attributes.storage_gb =
                cloud.root_volume.as_ref().and_then(|volume| sizes.get(volume)).copied();
            // The quota counts the vCPUs of the type the instance has now.
            if let Some(instance_type) = &cloud.instance_type
                && (*instance_type != instance.instance_type || instance.vcpus == 0)
            {
                attributes.vcpus = match ctx.catalog.instance_type(region, instance_type).await {
                    Ok(facts) => Some(i64::from(facts.vcpus)),
                    Err(_) => None,
                };
            }
        }
        reconciliation.observations.push(observed);
    }

    if let Some(unfinished_jobs) = unfinished_jobs {
        let known_ids: HashSet<&str> = known.iter().filter_map(|i| i.cloud_id.as_deref()).collect();
        let candidates: Vec<&CloudInstance> = seen
            .values()
            .filter(|cloud| cloud.state != InstanceState::Terminated)
            .filter(|cloud| {
                cloud.tags.get(TAG_JOB_ID).is_some_and(|job| !unfinished_jobs.contains(job))
            })
            .filter(|cloud| !known_ids.contains(cloud.cloud_id.as_str()))
            .collect();
        let ids: Vec<String> = candidates.iter().map(|c| c.cloud_id.clone()).collect();
        let recorded: HashSet<String> =
            ctx.store.known_cloud_ids(&ids).await?.into_iter().collect();
        let now = now_millis();
        let orphans = candidates
            .into_iter()
            .filter(|cloud| !recorded.contains(&cloud.cloud_id))
            .map(|cloud| OrphanRecord {
                cloud_id: cloud.cloud_id.clone(),
                region: region.to_string(),
                state: cloud.state,
                ami: cloud.ami.clone(),
                instance_type: cloud.instance_type.clone(),
                public_ip: cloud.public_ip.clone(),
                private_ip: cloud.private_ip.clone(),
                tags: cloud.tags.clone(),
                first_seen: now,
                last_seen: now,
            })
            .collect();
        reconciliation.orphans = Some((region.to_string(), orphans));
    }
    let drift = ctx.store.record_reconciliation(&reconciliation).await?;
    Ok(RegionOutcome {
        drifted: drift.len(),
        missing: reconciliation.missing.len(),
        orphans: reconciliation.orphans.map(|(_, orphans)| orphans.len()).unwrap_or_default(),
    })
}
