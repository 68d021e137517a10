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
