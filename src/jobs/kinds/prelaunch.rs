//! The steps both backends take before they launch a request's instances: the policy rules
//! that need the cloud's facts (AMI owner and architecture, the type's vCPUs), and importing the
//! request's key pair into its region.

use std::collections::BTreeMap;

use crate::cloud::TAG_NAMESPACE;
use crate::domain::{ImageFacts, InstanceTypeFacts, LaunchSpec};
use crate::jobs::{JobError, JobRun};

/// Checks the policy rules that need the cloud's facts about the AMI and instance type, and
/// records the type's vCPUs; returns those facts.
pub async fn check_cloud_rules(
    run: &JobRun<'_>,
    spec: &LaunchSpec,
) -> Result<(ImageFacts, InstanceTypeFacts), JobError> {
    let ctx = run.ctx;
    let region = spec.region.as_str();
    let image = ctx.catalog.image(region, &spec.ami).await?;
    let instance_type = ctx.catalog.instance_type(region, &spec.instance_type).await?;
    let violations = ctx.policy.check_image(spec, &image, &instance_type);
    if !violations.is_empty() {
        let messages: Vec<String> = violations.iter().map(|v| v.to_string()).collect();
        return Err(JobError::Permanent(format!("policy violation: {}", messages.join("; "))));
    }
    // The request may have been admitted without the vCPU count (no vCPU quota, cloud not
    // asked); record it now so that later quotas count these instances right, with the user
    // the AMI is logged in to as.
    let login_user = crate::domain::login_user(&ctx.policy.ami_rule(region), &image);
    let vcpus = i64::from(instance_type.vcpus);
    ctx.store.record_launch_facts(&run.job.job.id, vcpus, &login_user).await?;
    Ok((image, instance_type))
}

/// Imports the request's key pair into its region when corral holds the public key and the
/// region does not have it yet.
pub async fn import_key_pair(run: &JobRun<'_>, spec: &LaunchSpec) -> Result<(), JobError> {
    let ctx = run.ctx;
    let region = spec.region.as_str();
    if let Some(key_name) = &spec.key_name
        && let Some(pair) = ctx.store.find_key_pair(key_name).await?
    {
        let tags = BTreeMap::from([(TAG_NAMESPACE.to_string(), pair.namespace.clone())]);
        if ctx.provider.ensure_key_pair(region, &pair.name, &pair.public_key, &tags).await? {
            run.step(format!(
                "imported key pair {} into {region} ({})",
                pair.name, pair.fingerprint
            ))
            .await;
        }
    }
    Ok(())
}
