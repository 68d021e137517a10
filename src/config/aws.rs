//! `[aws]`: where EC2 calls go, with which credentials, how long they may take, how long
//! catalog facts are cached, and the client-side rate limits per region.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsSettings {
    /// Send every EC2 call here instead of AWS, e.g. a local emulator. The standard
    /// `AWS_ENDPOINT_URL` variable does the same.
    pub endpoint_url: Option<String>,
    /// Static credentials; when absent, the standard AWS credential chain is used.
    pub access_key_id: Option<String>,
    #[serde(skip_serializing)]
    pub secret_access_key: Option<SecretString>,
    /// Time limit for one attempt of one cloud call.
    pub call_timeout_secs: u64,
    /// How long AMI and instance-type facts are cached.
    pub catalog_ttl_secs: u64,
    /// Client-side rate limits per region, sized like EC2's own token buckets.
    pub rate_limits: RateLimits,
}

/// Token buckets (`burst` calls at once, `per_second` refill) per API class and region.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// RunInstances and StartInstances.
    pub launch: Bucket,
    /// Other mutating calls: Stop, Reboot, Terminate, CreateTags.
    pub mutate: Bucket,
    /// Describe calls.
    pub describe: Bucket,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    pub burst: f64,
    pub per_second: f64,
}

impl Default for RateLimits {
    fn default() -> RateLimits {
        RateLimits {
            launch: Bucket { burst: 5.0, per_second: 2.0 },
            mutate: Bucket { burst: 50.0, per_second: 5.0 },
            describe: Bucket { burst: 100.0, per_second: 20.0 },
        }
    }
}

impl Default for AwsSettings {
    fn default() -> AwsSettings {
        AwsSettings {
            endpoint_url: None,
            access_key_id: None,
            secret_access_key: None,
            call_timeout_secs: 30,
            catalog_ttl_secs: 3600,
            rate_limits: RateLimits::default(),
        }
    }
}

impl AwsSettings {
    pub(super) fn validate(&self) -> Vec<String> {
        let limits = self.rate_limits;
        let mut problems = Vec::new();
        for (name, bucket) in
            [("launch", limits.launch), ("mutate", limits.mutate), ("describe", limits.describe)]
        {
            if !bucket.burst.is_finite()
                || bucket.burst < 1.0
                || !bucket.per_second.is_finite()
                || bucket.per_second <= 0.0
            {
                problems.push(format!(
                    "aws.rate_limits.{name}: burst must be at least 1 and per_second above 0"
                ));
            }
        }
        problems
    }
}
