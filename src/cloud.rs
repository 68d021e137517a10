//! Talking to the cloud: the `Provider` trait that jobs call, the cloud-neutral types it speaks,
//! and the one error type every implementation maps its failures into.
//!
//! - `aws` implements `Provider` with the official AWS SDK; it is the only module that imports
//!   `aws_sdk_*`.
//! - `Catalog` caches what rarely changes (AMI and instance-type facts) in front of a provider.
//! - `DescribeBatcher` merges the state polls of all waiting jobs of a region into one call.
//! - `limiter` holds the token buckets that keep a process inside EC2's request budget.
//!
//! Only jobs call a provider; API handlers never do.

mod aws;
mod batcher;
mod catalog;
#[cfg(test)]
pub mod fake;
mod limiter;

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::domain::{
    Action, CpuCredits, ImageFacts, IngressRule, InstanceState, InstanceTypeFacts,
};

pub use aws::AwsProvider;
pub use batcher::DescribeBatcher;
pub use catalog::Catalog;

/// Tag keys corral puts on every instance it launches.
pub const TAG_INSTANCE_ID: &str = "corral:instance-id";
pub const TAG_JOB_ID: &str = "corral:job-id";
pub const TAG_NAMESPACE: &str = "corral:namespace";

/// An instance as the cloud reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudInstance {
    pub cloud_id: String,
    pub state: InstanceState,
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
    pub ami: Option<String>,
    pub instance_type: Option<String>,
    /// Position of the instance within the launch call that created it.
    pub launch_index: i64,
    pub tags: BTreeMap<String, String>,
    /// Why the cloud moved the instance to its current state, when it says.
    pub state_reason: Option<String>,
    pub key_name: Option<String>,
    /// Ids of the security groups attached, sorted.
    pub security_groups: Vec<String>,
    /// The EBS volume at the root device; `Provider::volume_sizes` tells its size.
    pub root_volume: Option<String>,
}

/// One launch call for `count` identical instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchRequest {
    /// Idempotency token, persisted before the call so a retried call cannot launch twice.
    pub client_token: String,
    pub count: i64,
    pub ami: String,
    pub instance_type: String,
    pub storage_gb: i64,
    pub root_device_name: Option<String>,
    pub key_name: Option<String>,
    pub security_group_ids: Vec<String>,
    pub user_data: Option<String>,
    /// Set for burstable instance types only.
    pub cpu_credits: Option<CpuCredits>,
    /// Tags applied to every instance of the call and to its volumes.
    pub tags: BTreeMap<String, String>,
}

/// The security group corral creates for one request: found again by its `corral:job-id` tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroupSpec {
    /// Group name, unique in the VPC: `corral-<job id>`.
    pub name: String,
    pub description: String,
    pub rules: Vec<IngressRule>,
    /// Includes `corral:job-id` and `corral:namespace`.
    pub tags: BTreeMap<String, String>,
}

impl SecurityGroupSpec {
    /// The group of create request (job) `job_id` in `namespace`, letting in `rules`; both
    /// backends make it so.
    pub fn for_request(job_id: &str, namespace: &str, rules: &[IngressRule]) -> SecurityGroupSpec {
        SecurityGroupSpec {
            name: format!("corral-{job_id}"),
            description: format!("corral: ingress of job {job_id} in {namespace}"),
            rules: rules.to_vec(),
            tags: BTreeMap::from([
                (TAG_JOB_ID.to_string(), job_id.to_string()),
                (TAG_NAMESPACE.to_string(), namespace.to_string()),
            ]),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudError {
    /// The cloud asked us to slow down; retry later.
    #[error("throttled by the cloud API ({code}): {message}")]
    Throttled { code: String, message: String },
    /// Network trouble, timeouts or a server-side failure; retrying may succeed.
    #[error("transient cloud failure: {0}")]
    Transient(String),
    /// The cloud refused the request itself (unknown AMI or key pair, bad parameter, …);
    /// retrying cannot help.
    #[error("{code}: {message}")]
    Rejected { code: String, message: String },
}

impl CloudError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, CloudError::Throttled { .. } | CloudError::Transient(_))
    }
}

/// The operations jobs need from a cloud. Every call is for one region; implementations batch
/// ids where the cloud allows it and follow every page of results.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// A short human description of where calls go, for logs and `/status`.
    fn describe_endpoint(&self) -> String;

    /// The URL calls go to instead of the cloud's own (an emulator); `None` for the cloud.
    fn endpoint_url(&self) -> Option<String> {
        None
    }

    /// The credentials this provider calls with, as the environment variables other tools
    /// (Terraform's AWS provider) read them.
    async fn credentials_env(&self) -> Result<Vec<(String, String)>, CloudError>;

    /// Facts about an AMI; `Rejected` with the cloud's message when it does not exist.
    async fn describe_image(&self, region: &str, ami: &str) -> Result<ImageFacts, CloudError>;

    /// Facts about an instance type; `Rejected` when the region does not offer it.
    async fn describe_instance_type(
        &self,
        region: &str,
        instance_type: &str,
    ) -> Result<InstanceTypeFacts, CloudError>;

    /// Every instance, in any state, carrying tag `key` with `value`.
    async fn find_tagged(
        &self,
        region: &str,
        key: &str,
        value: &str,
    ) -> Result<Vec<CloudInstance>, CloudError>;

    /// Launches `request.count` instances in one call, all or none.
    async fn launch(
        &self,
        region: &str,
        request: &LaunchRequest,
    ) -> Result<Vec<CloudInstance>, CloudError>;

    async fn tag(
        &self,
        region: &str,
        cloud_ids: &[String],
        tags: &BTreeMap<String, String>,
    ) -> Result<(), CloudError>;

    /// Removes the tags with these keys from the given instances.
    async fn untag(
        &self,
        region: &str,
        cloud_ids: &[String],
        keys: &[String],
    ) -> Result<(), CloudError>;

    /// Every instance, in any state, carrying a tag with key `key`, following every page.
    async fn find_tag_key(&self, region: &str, key: &str)
    -> Result<Vec<CloudInstance>, CloudError>;

    /// Describes the given instances; ids the cloud does not know are left out of the result.
    async fn describe(
        &self,
        region: &str,
        cloud_ids: &[String],
    ) -> Result<Vec<CloudInstance>, CloudError>;

    /// Sizes in GiB of the given EBS volumes, by id; ids the cloud does not know are left out.
    async fn volume_sizes(
        &self,
        region: &str,
        volume_ids: &[String],
    ) -> Result<std::collections::HashMap<String, i64>, CloudError>;

    /// Applies one lifecycle action to many instances of a region in one call.
    async fn apply(
        &self,
        region: &str,
        action: Action,
        cloud_ids: &[String],
    ) -> Result<(), CloudError>;

    /// Imports `public_key` as key pair `name` unless the region has it already; returns whether
    /// it imported. A key pair of that name without the `corral:namespace` tag was not imported
    /// by corral: it is `Rejected`, never replaced.
    async fn ensure_key_pair(
        &self,
        region: &str,
        name: &str,
        public_key: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<bool, CloudError>;

    /// Deletes key pair `name` if corral imported it (it carries the `corral:namespace` tag);
    /// returns whether it did. A key pair of that name that corral did not import is left alone,
    /// and one that does not exist is not an error.
    async fn delete_key_pair(&self, region: &str, name: &str) -> Result<bool, CloudError>;

    /// The id of the group `spec` describes, created in the region's default VPC if its
    /// `corral:job-id` tag finds none, with every rule of `spec` authorised.
    async fn ensure_security_group(
        &self,
        region: &str,
        spec: &SecurityGroupSpec,
    ) -> Result<String, CloudError>;

    /// Security groups carrying tag `key` with one of `values`, as (group id, tag value).
    async fn find_security_groups(
        &self,
        region: &str,
        key: &str,
        values: &[String],
    ) -> Result<Vec<(String, String)>, CloudError>;

    /// Deletes a security group; one that does not exist is not an error, one still in use is
    /// `Transient` (the network interfaces of terminated instances linger for a while).
    async fn delete_security_group(&self, region: &str, group_id: &str) -> Result<(), CloudError>;
}
