//! `tag_instances`: applies a name and tags changed by `PATCH /v1/instances/{id}` to the
//! cloud. Setting tags and removing keys are idempotent, so a resumed job simply does both
//! again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::jobs::{JobError, JobRun};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TagPayload {
    pub name: String,
    /// Every user tag the instance should carry.
    pub tags: BTreeMap<String, String>,
    /// User tag keys the change removed.
    pub removed: Vec<String>,
}

pub async fn run(run: &JobRun<'_>) -> Result<(), JobError> {
    let outcome = apply(run).await;
    if let Err(err) = &outcome
        && run.is_final(err)
    {
        restore(run).await;
    }
    outcome
}

/// After a final failure, the record (changed when the request was admitted) takes the name
/// and tags the cloud has, so that what the change did not do is neither claimed nor, at the
/// next reconcile pass, reported as drift.
async fn restore(run: &JobRun<'_>) {
    let mut by_region: std::collections::BTreeMap<&str, Vec<_>> = Default::default();
    for instance in &run.job.instances {
        by_region.entry(instance.region.as_str()).or_default().push(instance.clone());
    }
    for (region, instances) in by_region {
        let cloud_ids: Vec<String> = instances.iter().filter_map(|i| i.cloud_id.clone()).collect();
        let seen = match run.ctx.provider.describe(region, &cloud_ids).await {
            Ok(seen) => seen,
            Err(err) => {
                run.step(format!("{region}: the cloud's names and tags could not be read: {err}"))
                    .await;
                continue;
            }
        };
        let observations: Vec<_> = instances
            .iter()
            .filter_map(|instance| {
                let cloud =
                    seen.iter().find(|c| Some(&c.cloud_id) == instance.cloud_id.as_ref())?;
                Some(crate::storage::Observation {
                    authoritative: true,
                    ..super::observation(instance, cloud)
                })
            })
            .collect();
        match run.ctx.store.record_observations(&observations).await {
            Ok(()) => {
                run.step(format!("{region}: the record keeps the names and tags the cloud has"))
            }
            Err(err) => {
                run.step(format!("{region}: recording the cloud's names and tags failed: {err}"))
            }
        }
        .await;
    }
}

async fn apply(run: &JobRun<'_>) -> Result<(), JobError> {
    let payload: TagPayload = serde_json::from_value(run.job.job.payload.clone())
        .map_err(|err| JobError::Permanent(format!("unreadable job payload: {err}")))?;
    let mut tags = payload.tags.clone();
    tags.insert("Name".to_string(), payload.name.clone());
    for instance in &run.job.instances {
        let Some(cloud_id) = instance.cloud_id.clone() else {
            return Err(JobError::Permanent(format!(
                "instance {} was never launched",
                instance.id
            )));
        };
        let ids = [cloud_id.clone()];
        run.ctx.provider.tag(&instance.region, &ids, &tags).await?;
        if !payload.removed.is_empty() {
            run.ctx.provider.untag(&instance.region, &ids, &payload.removed).await?;
        }
        run.step(format!(
            "{cloud_id}: named '{}' with {} tag(s){}",
            payload.name,
            payload.tags.len(),
            if payload.removed.is_empty() {
                String::new()
            } else {
                format!(", removed {}", payload.removed.join(", "))
            }
        ))
        .await;
    }
    Ok(())
}
